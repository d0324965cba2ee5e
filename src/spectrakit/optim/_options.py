"""The SPECTRA clip settings a param group holds, checked with errors that name the group key.

Keys: clip, clip_c, clip_method, clip_steps, clip_dtype, clip_apply_to, clip_exclude, vector_rule, scale,
peak_lr and the threshold schedule's ``threshold_schedule.GROUP_KEYS``. Held in the groups, they round-trip through
state_dict, survive deepcopy and pickling, and may differ per group.
"""

from __future__ import annotations

from typing import Any

import torch

from ._selection import check_selection, is_clipped
from ._validate import check_choice, check_positive
from .directions import Direction
from .engine import StepPlan
from .scale import SCALE_CONVENTIONS
from .threshold_schedule import ClipSchedule, check_peak_lr
from .transforms import TRANSFORMS, VECTOR_RULES, TransformOptions, transform_named

CLIP_METHODS = ("auto", "polar", "newton_schulz", "svd")
CLIP_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def clip_kinds() -> tuple[str, ...]:
    """The ``clip`` values Spectra and SpectraWrapper accept: every registered transform without a per-parameter
    ``finish`` stage (the built-in ones are ``CLIP_KINDS``)."""
    return tuple(name for name, t in TRANSFORMS.items() if t.finish is None)


def exclude_patterns(exclude: Any) -> tuple[str, ...]:
    """``clip_exclude`` as a tuple of patterns (one string is one pattern)."""
    return (exclude,) if isinstance(exclude, str) else tuple(exclude)


def check_clip_options(group: dict[str, Any]) -> None:
    """Raise ValueError naming the key unless every clip setting of ``group`` is valid."""
    clip = group["clip"]
    if clip is None:
        check_choice(group["clip_method"], "clip_method", CLIP_METHODS)
    else:
        stateless = clip_kinds()
        if clip not in stateless:
            raise ValueError(f"clip must be None or one of {stateless} (the registered transforms without "
                             f"per-parameter state), got {clip!r}")
        transform_named(clip).check_method(group["clip_method"])
    check_positive(group["clip_c"], "clip_c")
    steps = group["clip_steps"]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"clip_steps must be None or an integer >= 1, got {steps!r}")
    if group["clip_dtype"] is not None and group["clip_dtype"] not in CLIP_DTYPES:
        raise ValueError(f"clip_dtype must be None or one of {CLIP_DTYPES}, got {group['clip_dtype']!r}")
    check_selection(group["clip_apply_to"], exclude_patterns(group["clip_exclude"]))
    check_choice(group["vector_rule"], "vector_rule", VECTOR_RULES)
    check_choice(group["scale"], "scale", SCALE_CONVENTIONS)
    check_peak_lr(group)
    ClipSchedule.from_group(group)


def clip_plan(group: dict[str, Any], direction: Direction | None, batch: int) -> StepPlan:
    """The engine's plan for a group's clip settings (``direction`` None: the caller supplies the directions)."""
    clip, apply_to, exclude = group["clip"], group["clip_apply_to"], group["clip_exclude"]
    return StepPlan(direction, None if clip is None else transform_named(clip),
                    TransformOptions(group["clip_method"], group["clip_steps"], group["clip_dtype"],
                                     vector_rule=group["vector_rule"]),
                    batch, group["scale"], lambda name, p: is_clipped(name, p, apply_to, exclude), record_c=True)
