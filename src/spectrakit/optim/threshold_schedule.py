"""The clipping threshold schedule c_t of SPECTRA (SPEC 1.4, the authors' code), shared by the optimizers and
pre-clipping.

c_t = c * w_t * d_t with

- warmup factor w_t = peak_lr / lr_t while the learning rate is still warming up (so c_t * lr_t stays
  equal to c * peak_lr and the step size of clipped directions does not grow with the warmup), 1 after.
  The warmup phase is the first ``warmup_steps`` steps when that is given, otherwise the steps before the
  group's lr first reaches its peak lr or first falls (the optimizers track this per param group). A zero
  lr gives c_t = inf (no clipping; the step is zero anyway). The peak lr of a group is its ``peak_lr`` when
  set, else the ``max_lr`` OneCycleLR stores in it, else ``initial_lr`` (LinearLR, LambdaLR, SequentialLR and
  the harness keep the peak there), else its lr when it was added to the optimizer (``peak_lr_of``).
- decay factor d_t: 1, except in the last D = int(decay_fraction * total_steps) steps of ``total_steps``
  (when given), where with progress p = (t - (total_steps - D)) / D in [0, 1] and final scale f it falls
  from 1 to f along ``shape``:
  linear 1 - (1-f) p;  sqrt 1 - (1-f) sqrt(p);  square 1 - (1-f) p^2;  cosine f + (1-f)(1 + cos(pi p))/2;
  exp f^p (1 - p when f = 0).
  The SPECTRA 780M scripts decay c to 0 with sqrt over the last 20% (decay_fraction=0.2, final_scale=0).

Optimizers keep the schedule in their param groups (``GROUP_KEYS``: clip_warmup, clip_warmup_steps, ...,
so it round-trips through state_dict and may differ per group) with the bookkeeping of ``prepare_group``, and
call ``group_threshold(None, group)`` once per group and step.

Written with ``**`` rather than math.sqrt / math.exp: under torch.compile the step counter is a symbolic
integer, and these stay symbolic (no recompile per step), where the math functions did not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from ._validate import check_choice, check_nonnegative, check_positive

DECAY_SHAPES = ("linear", "sqrt", "square", "cosine", "exp")
# ClipSchedule field -> the param-group key (and constructor argument of the optimizers) that holds it
GROUP_KEYS = {"warmup": "clip_warmup", "warmup_steps": "clip_warmup_steps", "total_steps": "clip_total_steps",
              "decay_fraction": "clip_decay_fraction", "shape": "clip_decay_shape",
              "final_scale": "clip_final_scale"}


def _check(values: dict[str, Any], names: dict[str, str]) -> None:
    """Validate schedule fields; ``names`` maps each field to the name the error message uses."""
    if not isinstance(values["warmup"], bool):
        raise ValueError(f"{names['warmup']} must be True or False, got {values['warmup']!r}")
    for field in ("warmup_steps", "total_steps"):
        value = values[field]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{names[field]} must be None or an integer >= 1, got {value!r}")
    fraction = values["decay_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"{names['decay_fraction']} must be in (0, 1], got {fraction!r}")
    check_choice(values["shape"], names["shape"], DECAY_SHAPES)
    check_nonnegative(values["final_scale"], names["final_scale"])


def decay_factor(step: int, total_steps: int | None, decay_fraction: float, shape: str, final_scale: float) -> float:
    """d_t for the 0-based ``step`` about to be taken (the module docstring's formulas)."""
    if total_steps is None:
        return 1.0
    decay_steps = int(decay_fraction * total_steps)
    start = total_steps - decay_steps
    if decay_steps == 0 or step < start:
        return 1.0
    p = min(1.0, (step - start) / decay_steps)
    f = final_scale
    if shape == "linear":
        return 1 - (1 - f) * p
    if shape == "sqrt":
        return 1 - (1 - f) * p ** 0.5
    if shape == "square":
        return 1 - (1 - f) * p * p
    if shape == "cosine":
        return f + (1 - f) * (1 + math.cos(math.pi * p)) / 2
    return f ** p if f > 0 else 1 - p


def threshold_factor(step: int, lr: float, peak_lr: float, warmup_done: bool, prev_lr: float | None, *,
                     warmup: bool, warmup_steps: int | None, total_steps: int | None, decay_fraction: float,
                     shape: str, final_scale: float) -> tuple[float, bool]:
    """(c_t / c, warmup_done after this step) for the 0-based ``step`` at learning rate ``lr``.

    ``warmup_done`` and ``prev_lr`` (the previous step's lr, None at the first) carry the detection of the
    warmup's end between steps when ``warmup_steps`` is None.
    """
    if warmup_steps is not None:
        in_warmup = step < warmup_steps
    else:
        in_warmup = not warmup_done and lr < peak_lr and (prev_lr is None or lr >= prev_lr)
        warmup_done = not in_warmup
    scale = decay_factor(step, total_steps, decay_fraction, shape, final_scale)
    if warmup and in_warmup:
        scale = math.inf if lr == 0 else scale * peak_lr / lr
    return scale, warmup_done


@dataclass(frozen=True)
class ClipSchedule:
    """Configuration of the threshold schedule (see the module docstring for the formulas).

    Args:
        warmup: apply the warmup rule c_t = c * peak_lr / lr_t (the authors' default).
        warmup_steps: length of the warmup phase; None = until the lr first reaches its peak or falls (tracked
            by the optimizer; stateless callers such as ``clip_grad_spectral_`` need an explicit value).
        total_steps: training length; None = no decay phase.
        decay_fraction: fraction of ``total_steps`` at the end over which c decays (0 < fraction <= 1; the
            decay lasts int(decay_fraction * total_steps) steps).
        shape: "linear" | "sqrt" | "square" | "cosine" | "exp".
        final_scale: c_t / c at the end of training (>= 0; 0 decays the clipped update to zero).
    """

    warmup: bool = True
    warmup_steps: int | None = None
    total_steps: int | None = None
    decay_fraction: float = 0.1
    shape: str = "sqrt"
    final_scale: float = 0.0

    def __post_init__(self) -> None:
        _check(self._values(), {f: f for f in GROUP_KEYS})

    def _values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_group(cls, group: dict[str, Any]) -> ClipSchedule:
        """The schedule a param group holds (its ``GROUP_KEYS``); errors name the group key."""
        values = {field: group[key] for field, key in GROUP_KEYS.items()}
        _check(values, GROUP_KEYS)
        return cls(**values)

    def group_options(self) -> dict[str, Any]:
        """The schedule as param-group entries (``GROUP_KEYS``)."""
        return {key: getattr(self, field) for field, key in GROUP_KEYS.items()}

    def decay_factor(self, step: int) -> float:
        """d_t for the 0-based ``step`` about to be taken."""
        return decay_factor(step, self.total_steps, self.decay_fraction, self.shape, self.final_scale)

    def factor(self, step: int, lr: float, peak_lr: float, warmup_done: bool = False,
               prev_lr: float | None = None) -> tuple[float, bool]:
        """(c_t / c, warmup_done after this step); see ``threshold_factor``."""
        return threshold_factor(step, float(lr), float(peak_lr), warmup_done, prev_lr, **self._values())


def set_schedule(defaults: dict[str, Any], groups: list[dict[str, Any]], schedule: ClipSchedule) -> None:
    """Write ``schedule`` into an optimizer's defaults (groups added later) and into every one of its groups."""
    options = schedule.group_options()
    defaults.update(options)
    for group in groups:
        group.update(options)


def prepare_group(group: dict[str, Any], lr: float) -> None:
    """Add the schedule's bookkeeping keys to a param group (they round-trip through state_dict)."""
    group.setdefault("clip_step", 0)
    group.setdefault("clip_warmup_done", False)
    group.setdefault("clip_prev_lr", None)
    group.setdefault("lr_at_construction", float(lr))


def check_peak_lr(group: dict[str, Any]) -> None:
    """A group's ``peak_lr`` must be None or a number > 0."""
    if group.get("peak_lr") is not None:
        check_positive(group["peak_lr"], "peak_lr")


def peak_lr_of(group: dict[str, Any], *, keep_tensors: bool = False) -> float | Tensor:
    """The warmup rule's peak lr of a group: its ``peak_lr`` when set, else ``max_lr`` (OneCycleLR, whose
    ``initial_lr`` is max_lr / div_factor), else ``initial_lr`` (the other torch LR schedulers and the harness),
    else the lr it had when it was added to the optimizer. ``keep_tensors``: a tensor value is returned as a
    0-d tensor (not read on the host)."""
    for key in ("peak_lr", "max_lr", "initial_lr"):
        value = group.get(key)
        if value is not None:
            return value.detach().reshape(()) if keep_tensors and isinstance(value, Tensor) else float(value)
    return float(group["lr_at_construction"])


def device_threshold_factor(step: int, lr: Tensor, peak_lr: float | Tensor, warmup_done: bool | Tensor,
                            prev_lr: float | Tensor | None, *, warmup: bool, warmup_steps: int | None,
                            total_steps: int | None, decay_fraction: float, shape: str,
                            final_scale: float) -> tuple[float | Tensor, bool | Tensor]:
    """``threshold_factor`` for a tensor ``lr`` without reading it: the factor (and, when ``warmup_steps`` is
    None, the warmup detection) as 0-d tensors on lr's device."""
    scale = decay_factor(step, total_steps, decay_fraction, shape, final_scale)
    lr = lr.detach().reshape(())
    if warmup_steps is not None:
        if not (warmup and step < warmup_steps):
            return scale, warmup_done
        in_warmup: Tensor | bool = True
    else:
        done = (warmup_done if isinstance(warmup_done, Tensor)
                else torch.full((), warmup_done, dtype=torch.bool, device=lr.device))  # a fill, not a copy
        in_warmup = (lr < peak_lr) & ~done
        if prev_lr is not None:
            in_warmup = in_warmup & (lr >= prev_lr)
        warmup_done = ~in_warmup
        if not warmup:
            return scale, warmup_done
    warming = torch.where(lr == 0, math.inf, scale * peak_lr / lr)
    return torch.where(in_warmup, warming, scale) if isinstance(in_warmup, Tensor) else warming, warmup_done


def group_threshold(schedule: ClipSchedule | None, group: dict[str, Any], *,
                    on_device: bool = False) -> float | Tensor:
    """c_t of a param group for the step about to be taken (advances the group's schedule bookkeeping).

    ``schedule``: None = the schedule the group holds (``GROUP_KEYS``), else that schedule. ``on_device``
    (sync-free steps): a tensor lr is not read on the host; c_t is then a 0-d tensor on its device, and the
    warmup detection (``clip_warmup_done``, ``clip_prev_lr``) is kept in tensors too.
    """
    options = ({field: group[key] for field, key in GROUP_KEYS.items()} if schedule is None
               else schedule._values())
    if on_device and isinstance(group["lr"], Tensor):
        lr = group["lr"].detach().reshape(()).clone()
        factor, group["clip_warmup_done"] = device_threshold_factor(
            group["clip_step"], lr, peak_lr_of(group, keep_tensors=True), group["clip_warmup_done"],
            group.get("clip_prev_lr"), **options)
        group["clip_step"] += 1
        group["clip_prev_lr"] = lr
        return group["clip_c"] * factor
    lr = float(group["lr"])
    factor, group["clip_warmup_done"] = threshold_factor(
        group["clip_step"], lr, peak_lr_of(group), group["clip_warmup_done"], group.get("clip_prev_lr"),
        **options)
    group["clip_step"] += 1
    group["clip_prev_lr"] = lr
    return group["clip_c"] * factor
