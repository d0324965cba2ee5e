"""SpectraWrapper: SPECTRA around any torch optimizer with decoupled weight decay (the authors' approach).

Each step saves a copy X_k of every clipped parameter, lets the wrapped optimizer step to X', recovers
its direction from the change and replaces the step by the clipped one (SPEC 1.1):

    U       = ((1 - lr*wd) X_k - X') / lr
    X_{k+1} = (1 - lr*wd) X_k - alpha_shape * lr * clip_{c_t}(U)

Memory cost: one full copy of the clipped parameters during each step (freed afterwards) plus one
direction-sized temporary, on top of the wrapped optimizer's own state. The recovered U also carries the
rounding error of the subtraction (relative ~eps(dtype) * ||X|| / (lr ||U||)): prefer the native
``Spectra`` for the optimizers it implements (AdamW, Signum, MARS, AdEMAMix, momentum); use the wrapper
for the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._selection import ClipSelection
from ._validate import check_choice, check_positive
from .scale import SCALE_CONVENTIONS, shape_scale
from .schedule import ClipSchedule, group_threshold, prepare_group
from .stats import record_clip_statistics
from .transforms import CLIP_KINDS, VECTOR_RULES, check_method, spectral_transform


class SpectraWrapper(Optimizer):
    """Wrap ``optimizer`` so that its step on each clipped parameter becomes the SPECTRA step.

    The wrapper shares the wrapped optimizer's ``param_groups`` and ``state`` (LR schedulers and checkpoints
    see one optimizer); per-group ``clip`` and ``clip_c`` may be set in those groups.

    Args:
        optimizer: a torch optimizer whose step is X' = (1 - lr*wd) X - lr * U with lr and wd read from its
            param groups ("lr", "weight_decay"), e.g. torch.optim.AdamW. With ``decoupled_weight_decay=False``
            the whole change is taken as the direction (U = (X - X')/lr), for optimizers whose weight decay is
            part of the gradient (SGD, Adam) or that have none.
        clip, clip_c, clip_method, clip_steps, clip_dtype, clip_apply_to, clip_exclude, vector_rule, scale:
            as in ``Spectra``.
        clip_warmup, clip_warmup_steps, clip_total_steps, clip_decay_fraction, clip_decay_shape, clip_final_scale:
            the threshold schedule, as in ``Spectra``.
        peak_lr, track_stats: as in ``Spectra``.

    Parameter names (for ``clip_exclude`` and statistics) come from the wrapped optimizer's "param_names"
    when it was built from named parameters, else "group<i>.param<j>". A closure is evaluated by the wrapper
    (with gradients enabled) before the wrapped optimizer steps. Groups with lr = 0 are left as the wrapped
    optimizer stepped them (there is no direction to recover).
    """

    def __init__(self, optimizer: Optimizer, *, clip: str | None = "soft", clip_c: float = 10.0,
                 clip_method: str = "auto", clip_steps: int | None = None, clip_dtype: torch.dtype | None = None,
                 clip_apply_to: str = "all", clip_exclude: Iterable[str] = (), vector_rule: str = "smooth",
                 scale: str = "keller", clip_warmup: bool = True, clip_warmup_steps: int | None = None,
                 clip_total_steps: int | None = None, clip_decay_fraction: float = 0.1,
                 clip_decay_shape: str = "sqrt", clip_final_scale: float = 0.0, peak_lr: float | None = None,
                 decoupled_weight_decay: bool = True, track_stats: bool = False) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if clip is not None:
            check_choice(clip, "clip", CLIP_KINDS)
            check_method(clip, clip_method)
        check_positive(clip_c, "clip_c")
        check_choice(vector_rule, "vector_rule", VECTOR_RULES)
        check_choice(scale, "scale", SCALE_CONVENTIONS)
        if peak_lr is not None:
            check_positive(peak_lr, "peak_lr")
        self.optimizer = optimizer
        self.clip_method, self.clip_steps, self.clip_dtype = clip_method, clip_steps, clip_dtype
        self.vector_rule, self.scale, self.track_stats = vector_rule, scale, track_stats
        self.decoupled_weight_decay = decoupled_weight_decay
        self._selection = ClipSelection(clip_apply_to, clip_exclude)
        self._schedule = ClipSchedule(clip_warmup, clip_warmup_steps, clip_total_steps, clip_decay_fraction,
                                      clip_decay_shape, clip_final_scale)
        self._group_defaults = {"clip": clip, "clip_c": clip_c, "peak_lr": peak_lr}
        self._statistics: dict[str, Tensor] = {}
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self._link()

    def _link(self) -> None:
        """Share the wrapped optimizer's groups and state (also after it reloaded them)."""
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state
        self.defaults = self.optimizer.defaults

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the wrapped optimizer (if it is not one of its groups already) with SPECTRA's keys."""
        if not any(param_group is g for g in self.optimizer.param_groups):
            self.optimizer.add_param_group(param_group)
            param_group = self.optimizer.param_groups[-1]
        for key, value in self._group_defaults.items():
            param_group.setdefault(key, value)
        if param_group["clip"] is not None:
            check_choice(param_group["clip"], "clip", CLIP_KINDS)
            check_method(param_group["clip"], self.clip_method)
        check_positive(param_group["clip_c"], "clip_c")
        prepare_group(param_group, param_group["lr"])

    def set_clip_schedule(self, *, total_steps: int | None = None, decay_fraction: float = 0.1,
                          shape: str = "sqrt", final_scale: float = 0.0, warmup: bool = True,
                          warmup_steps: int | None = None) -> None:
        """Replace the threshold schedule (see ``schedule.ClipSchedule``)."""
        self._schedule = ClipSchedule(warmup, warmup_steps, total_steps, decay_fraction, shape, final_scale)

    def statistics(self) -> dict[str, Tensor]:
        """As ``Spectra.statistics()`` (empty unless ``track_stats=True``)."""
        return dict(self._statistics)

    def _named(self, index: int, group: dict[str, Any]) -> list[tuple[str, Tensor]]:
        names = group.get("param_names") or [f"group{index}.param{j}" for j in range(len(group["params"]))]
        return list(zip(names, group["params"]))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """Evaluate ``closure`` (if any), step the wrapped optimizer, then replace its step by the clipped one."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        saved = []
        for index, group in enumerate(self.param_groups):
            if group["clip"] is None:
                continue
            c = group_threshold(self._schedule, group)
            if float(group["lr"]) == 0:
                continue
            if self.track_stats:
                self._statistics[f"clip_c/group{index}"] = torch.tensor(c)
            for name, p in self._named(index, group):
                if p.grad is not None and self._selection(name, p):
                    saved.append((group, name, p, p.detach().clone(), c))
        self.optimizer.step()
        for group, name, p, previous, c in saved:
            lr = group["lr"]
            decay = 1 - lr * group.get("weight_decay", 0.0) if self.decoupled_weight_decay else 1.0
            previous.mul_(decay)
            direction = previous.sub(p).div_(lr)
            if c == 0:
                p.copy_(previous)
                continue
            update, bound = spectral_transform(direction, group["clip"], c, method=self.clip_method,
                                               steps=self.clip_steps, dtype=self.clip_dtype,
                                               vector_rule=self.vector_rule, need_bound=self.track_stats)
            p.copy_(previous).add_(update, alpha=-lr * shape_scale(p.shape, self.scale))
            if self.track_stats:
                record_clip_statistics(self._statistics, name, update, bound, group["clip"], c)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict (its groups carry the wrapper's schedule bookkeeping)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)
        self._link()

    def __repr__(self) -> str:
        return f"SpectraWrapper({self.optimizer!r})"
