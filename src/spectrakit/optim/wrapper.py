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

from ._options import check_clip_options, clip_plan, exclude_patterns
from .engine import transform_and_step, without_host_reads
from .spectral_optimizer import check_real_floating, evaluate_closure, scalar_lr
from .stats import threshold_tensor
from .sync_free import (
    check_sync_free,
    count_skipped,
    found_nonfinite,
    masked_step,
    resolve_sync_free,
    skip_counter,
    zeros_initial,
)
from .threshold_schedule import GROUP_KEYS, ClipSchedule, group_threshold, prepare_group, set_schedule


class SpectraWrapper(Optimizer):
    """Wrap ``optimizer`` so that its step on each clipped parameter becomes the SPECTRA step.

    The wrapper shares the wrapped optimizer's ``param_groups``, ``state`` and ``defaults`` (LR schedulers and
    checkpoints see one optimizer). Every setting below except ``track_stats`` is a param-group key of the same
    name (``decoupled_weight_decay``: "clip_decoupled_weight_decay", as torch's AdamW has a key of that name),
    added to the wrapped optimizer's defaults and groups, so it may differ per group and round-trips through
    ``state_dict``; deepcopy and pickle copy the wrapped optimizer with it.

    Args:
        optimizer: a torch optimizer whose step is X' = (1 - lr*wd) X - lr * U with lr and wd read from its
            param groups ("lr", "weight_decay"), e.g. torch.optim.AdamW. lr may be a number or a 0-d /
            1-element tensor.
        clip, clip_c, clip_method, clip_steps, clip_dtype, clip_apply_to, clip_exclude, vector_rule, scale:
            as in ``Spectra``.
        clip_warmup, clip_warmup_steps, clip_total_steps, clip_decay_fraction, clip_decay_shape, clip_final_scale:
            the threshold schedule, as in ``Spectra``.
        peak_lr, track_stats: as in ``Spectra``.
        decoupled_weight_decay: True: U = ((1 - lr*wd) X - X') / lr as above. False: the whole change is the
            direction (U = (X - X')/lr), for optimizers whose weight decay is part of the gradient (SGD, Adam)
            or that have none.
        sync_free: as in ``SpectralOptimizer`` (an attribute, not a group key): True makes the wrapper's own
            work free of host reads (no ``float(lr)``; a tensor lr stays on the device, lr = 0 selected there)
            and skips a step with a NaN or Inf gradient by masking parameters and the wrapped optimizer's state
            back, counted in ``skipped_steps`` (a 0-d int64 tensor on the device; not in ``state_dict``, which
            is the wrapped optimizer's). The wrapped optimizer's own reads stay its own (torch.optim.AdamW
            reads its step count unless ``capturable=True``). None: True when the parameters live on an
            accelerator. False: the wrapped optimizer's steps as they are (no check).

    Parameter names (for ``clip_exclude`` and statistics) come from the wrapped optimizer's "param_names"
    when it was built from named parameters, else "group<i>.param<j>". A closure is evaluated by the wrapper
    (with gradients enabled) before the wrapped optimizer steps. Groups with lr = 0 are left as the wrapped
    optimizer stepped them (there is no direction to recover). Hooks registered on the wrapper and the global
    optimizer hooks fire once per call, with the wrapper as the optimizer; the wrapped optimizer's own hooks
    still fire.
    """

    sync_free: bool | None = None  # (class defaults: wrappers pickled before the option existed)
    skipped_steps: int | Tensor = 0

    def __init__(self, optimizer: Optimizer, *, clip: str | None = "soft", clip_c: float = 10.0,
                 clip_method: str = "auto", clip_steps: int | None = None, clip_dtype: torch.dtype | None = None,
                 clip_apply_to: str = "all", clip_exclude: Iterable[str] = (), vector_rule: str = "smooth",
                 scale: str = "keller", clip_warmup: bool = True, clip_warmup_steps: int | None = None,
                 clip_total_steps: int | None = None, clip_decay_fraction: float = 0.1,
                 clip_decay_shape: str = "sqrt", clip_final_scale: float = 0.0, peak_lr: float | None = None,
                 decoupled_weight_decay: bool = True, track_stats: bool = False,
                 sync_free: bool | None = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        options = {"clip": clip, "clip_c": clip_c, "clip_method": clip_method, "clip_steps": clip_steps,
                   "clip_dtype": clip_dtype, "clip_apply_to": clip_apply_to,
                   "clip_exclude": exclude_patterns(clip_exclude), "vector_rule": vector_rule, "scale": scale,
                   "peak_lr": peak_lr, "clip_decoupled_weight_decay": decoupled_weight_decay,
                   "clip_warmup": clip_warmup, "clip_warmup_steps": clip_warmup_steps,
                   "clip_total_steps": clip_total_steps, "clip_decay_fraction": clip_decay_fraction,
                   "clip_decay_shape": clip_decay_shape, "clip_final_scale": clip_final_scale}
        _check_group(options)
        check_sync_free(sync_free)
        self.optimizer = optimizer
        self.track_stats = track_stats
        self.sync_free = sync_free
        self.skipped_steps: int | Tensor = 0
        self._statistics: dict[str, Tensor] = {}
        optimizer.defaults.update(options)
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self._link()
        params = [p for group in self.param_groups for p in group["params"]]
        if params and resolve_sync_free(sync_free, params):
            self.skipped_steps = skip_counter(0, params[0].device)

    def _link(self) -> None:
        """Share the wrapped optimizer's groups, state and defaults (also after it reloaded them)."""
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state
        self.defaults = self.optimizer.defaults

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer.__getstate__ keeps only defaults, state and param_groups; the wrapped optimizer carries
        # those (deepcopy and pickle copy it once, so the copy's groups and state are shared as here)
        return {"optimizer": self.optimizer, "track_stats": self.track_stats, "sync_free": self.sync_free,
                "skipped_steps": self.skipped_steps}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({**state, "defaults": state["optimizer"].defaults, "_statistics": {}})
        self._link()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the wrapped optimizer (if it is not one of its groups already) with SPECTRA's keys."""
        groups = self.optimizer.param_groups
        index = next((i for i, g in enumerate(groups) if g is param_group), len(groups))
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for name, p in self._named(index, {**param_group, "params": params}):
            if isinstance(p, Tensor):
                check_real_floating(name, p, "SpectraWrapper")
        if index == len(groups):
            _check_group({**self.optimizer.defaults, **param_group})  # before the wrapped optimizer keeps it
            self.optimizer.add_param_group(param_group)
            param_group = self.optimizer.param_groups[-1]
        _prepare(param_group, self.optimizer.defaults)

    def set_clip_schedule(self, *, total_steps: int | None = None, decay_fraction: float = 0.1,
                          shape: str = "sqrt", final_scale: float = 0.0, warmup: bool = True,
                          warmup_steps: int | None = None) -> None:
        """Replace the threshold schedule of every group and of groups added later (``ClipSchedule``)."""
        set_schedule(self.defaults, self.param_groups,
                     ClipSchedule(warmup, warmup_steps, total_steps, decay_fraction, shape, final_scale))

    def statistics(self) -> dict[str, Tensor]:
        """As ``Spectra.statistics()`` (empty unless ``track_stats=True``)."""
        return dict(self._statistics)

    def _named(self, index: int, group: dict[str, Any]) -> list[tuple[str, Tensor]]:
        names = group.get("param_names") or [f"group{index}.param{j}" for j in range(len(group["params"]))]
        return list(zip(names, group["params"]))

    def _inner_step(self) -> None:
        """Step the wrapped optimizer with its own step hooks but not the global ones (they fire for the wrapper)."""
        inner = self.optimizer
        step = getattr(type(inner).step, "__wrapped__", None)  # Optimizer's hook-running wrapper around step
        if step is None:
            inner.step()
            return
        args: tuple[Any, ...] = (inner,)
        kwargs: dict[str, Any] = {}
        for hook in list(inner._optimizer_step_pre_hooks.values()):
            result = hook(inner, args, kwargs)
            if result is not None:
                args, kwargs = result
        step(*args, **kwargs)
        inner._optimizer_step_code()
        for hook in list(inner._optimizer_step_post_hooks.values()):
            hook(inner, args, kwargs)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """Evaluate ``closure`` (if any), step the wrapped optimizer, then replace its step by the clipped one."""
        loss = evaluate_closure(closure)
        self._statistics.clear()  # statistics() describes the last step only
        params = [p for group in self.param_groups for p in group["params"]]
        if not resolve_sync_free(self.sync_free, params):
            self._clipped_step(False)
            return loss
        touched = [p for p in params if p.grad is not None]
        if not touched:
            self._clipped_step(True)
            return loss
        found_inf = found_nonfinite([p.grad for p in touched])
        masked_step(lambda: self._clipped_step(True), touched, self.state, found_inf, zeros_initial)
        self.skipped_steps = count_skipped(self.skipped_steps, found_inf)
        return loss

    def _clipped_step(self, sync_free: bool) -> None:
        """The wrapped optimizer's step, replaced by the clipped one on the clipped parameters; ``sync_free``: no
        host read (a tensor lr stays on the device)."""
        saved = []
        for index, group in enumerate(self.param_groups):
            if group["clip"] is None:
                continue
            c = group_threshold(None, group, on_device=sync_free)
            if not (sync_free and isinstance(group["lr"], Tensor)) and float(group["lr"]) == 0:
                continue
            if self.track_stats:
                self._statistics[f"clip_c/group{index}"] = threshold_tensor(c)
            plan = clip_plan(group, None, 1)
            plan = without_host_reads(plan) if sync_free else plan
            for name, p in self._named(index, group):
                if p.grad is not None and plan.selected(name, p):
                    saved.append((group, plan, name, p, p.detach().clone(), c))
        self._inner_step()
        for group, plan, name, p, previous, c in saved:
            if sync_free and isinstance(group["lr"], Tensor):  # lr = 0: a zero direction and a zero step
                lr = scalar_lr(group["lr"])
                divisor = torch.where(lr == 0, 1.0, lr)
            else:
                lr = divisor = float(group["lr"])
            if group["clip_decoupled_weight_decay"]:
                previous.mul_(1 - lr * group.get("weight_decay", 0.0))
            direction = previous.sub(p).div_(divisor)
            p.copy_(previous)  # the decay is in ``previous``: the step below adds the clipped direction only
            transform_and_step(plan, c, [(name, p)], direction, None, group, lr, 0.0,
                               self._statistics if self.track_stats else None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict (its groups carry the wrapper's settings and schedule bookkeeping);
        the wrapper's state-dict hooks run around it."""
        for pre_hook in list(self._optimizer_state_dict_pre_hooks.values()):
            pre_hook(self)
        state_dict = self.optimizer.state_dict()
        for post_hook in list(self._optimizer_state_dict_post_hooks.values()):
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load into the wrapped optimizer (the wrapper's load hooks run around it); groups saved without the
        wrapper's settings (e.g. by the bare optimizer) take the wrapper's defaults."""
        for pre_hook in list(self._optimizer_load_state_dict_pre_hooks.values()):
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        self.optimizer.load_state_dict(state_dict)
        self._link()
        for group in self.param_groups:
            _prepare(group, self.defaults)
        for post_hook in list(self._optimizer_load_state_dict_post_hooks.values()):
            post_hook(self)

    def __repr__(self) -> str:
        return f"SpectraWrapper({self.optimizer!r})"


_SETTINGS = ("clip", "clip_c", "clip_method", "clip_steps", "clip_dtype", "clip_apply_to", "clip_exclude",
             "vector_rule", "scale", "peak_lr", "clip_decoupled_weight_decay", *GROUP_KEYS.values())


def _check_group(group: dict[str, Any]) -> None:
    """The wrapper's settings of one group (errors name the key)."""
    check_clip_options(group)
    if not isinstance(group["clip_decoupled_weight_decay"], bool):
        raise ValueError("clip_decoupled_weight_decay (decoupled_weight_decay) must be True or False, got "
                         f"{group['clip_decoupled_weight_decay']!r}")
    lr = group.get("lr")
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(f"lr must be a number or a 0-d / 1-element tensor, got a tensor of shape {tuple(lr.shape)}")


def _prepare(group: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Fill a group's missing settings from ``defaults``, check them and add the schedule's bookkeeping."""
    for key in _SETTINGS:
        group.setdefault(key, defaults[key])
    group["clip_exclude"] = exclude_patterns(group["clip_exclude"])
    _check_group(group)
    prepare_group(group, group["lr"])
