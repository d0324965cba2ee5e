"""The clipping threshold schedule c_t of SPECTRA (SPEC 1.4), shared by the optimizers and pre-clipping.

c_t = c * w_t * d_t with

- warmup factor w_t = peak_lr / lr_t while the learning rate is still warming up (so c_t * lr_t stays
  equal to c * peak_lr and the step size of clipped directions does not grow with the warmup), 1 after.
  The warmup phase is the first ``warmup_steps`` steps when that is given, otherwise the steps before the
  group's lr first reaches its peak lr (the optimizers track this per param group). A zero lr gives
  c_t = inf (no clipping; the step is zero anyway).
- decay factor d_t: 1, except in the last ``decay_fraction`` of ``total_steps`` (when given), where with
  progress p in [0, 1] and final scale f it falls from 1 to f along ``shape``:
  linear 1 - (1-f) p;  sqrt 1 - (1-f) sqrt(p);  square 1 - (1-f) p^2;  cosine f + (1-f)(1 + cos(pi p))/2;
  exp f + (1-f)(e^{-5p} - e^{-5})/(1 - e^{-5}).
  The SPECTRA 780M scripts decay c to 0 with sqrt over the last 20% (decay_fraction=0.2, final_scale=0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._validate import check_choice, check_nonnegative

DECAY_SHAPES = ("linear", "sqrt", "square", "cosine", "exp")
_EXP_RATE = 5.0


@dataclass(frozen=True)
class ClipSchedule:
    """Configuration of the threshold schedule (see the module docstring for the formulas).

    Args:
        warmup: apply the warmup rule c_t = c * peak_lr / lr_t (the authors' default).
        warmup_steps: length of the warmup phase; None = until the lr first reaches its peak (tracked by
            the optimizer; stateless callers such as ``clip_grad_spectral_`` need an explicit value).
        total_steps: training length; None = no decay phase.
        decay_fraction: fraction of ``total_steps`` at the end over which c decays (0 < fraction <= 1).
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
        if not isinstance(self.warmup, bool):
            raise ValueError(f"warmup must be True or False, got {self.warmup!r}")
        for name in ("warmup_steps", "total_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
        fraction = self.decay_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {fraction!r}")
        check_choice(self.shape, "shape", DECAY_SHAPES)
        check_nonnegative(self.final_scale, "final_scale")

    def decay_factor(self, step: int) -> float:
        """d_t for the 0-based ``step`` about to be taken.

        Written with ``**`` rather than math.sqrt / math.exp: under torch.compile the step counter is a symbolic
        integer, and these stay symbolic (no recompile per step), where the math functions did not.
        """
        if self.total_steps is None:
            return 1.0
        start = self.total_steps - self.decay_fraction * self.total_steps
        if step < start:
            return 1.0
        p = min(1.0, (step - start) / (self.total_steps - start))
        f = self.final_scale
        if self.shape == "linear":
            return 1 - (1 - f) * p
        if self.shape == "sqrt":
            return 1 - (1 - f) * p ** 0.5
        if self.shape == "square":
            return 1 - (1 - f) * p * p
        if self.shape == "cosine":
            return f + (1 - f) * (1 + math.cos(math.pi * p)) / 2
        tail = math.exp(-_EXP_RATE)
        return f + (1 - f) * (math.e ** (-_EXP_RATE * p) - tail) / (1 - tail)

    def factor(self, step: int, lr: float, peak_lr: float, warmup_done: bool = False) -> tuple[float, bool]:
        """(c_t / c, warmup_done after this step) for the 0-based ``step`` at learning rate ``lr``.

        ``warmup_done`` carries the "lr has reached its peak" flag between calls when ``warmup_steps`` is None.
        """
        lr, peak_lr = float(lr), float(peak_lr)
        if self.warmup_steps is not None:
            in_warmup = step < self.warmup_steps
        else:
            in_warmup = not warmup_done and lr < peak_lr
            warmup_done = not in_warmup
        scale = self.decay_factor(step)
        if self.warmup and in_warmup:
            scale = math.inf if lr == 0 else scale * peak_lr / lr
        return scale, warmup_done


#: The param-group keys that hold a group's threshold schedule, in ClipSchedule's field order.
SCHEDULE_KEYS = ("clip_warmup", "clip_warmup_steps", "clip_total_steps", "clip_decay_fraction", "clip_decay_shape",
                 "clip_final_scale")


def schedule_settings(schedule: ClipSchedule) -> dict[str, Any]:
    """The param-group keys (SCHEDULE_KEYS) of a schedule."""
    return dict(zip(SCHEDULE_KEYS, (schedule.warmup, schedule.warmup_steps, schedule.total_steps,
                                    schedule.decay_fraction, schedule.shape, schedule.final_scale)))


_SCHEDULES: dict[tuple, ClipSchedule] = {}


def group_schedule(group: dict[str, Any]) -> ClipSchedule:
    """The (validated) schedule a param group holds in its SCHEDULE_KEYS; built once per distinct setting."""
    key = tuple(group[k] for k in SCHEDULE_KEYS)
    schedule = _SCHEDULES.get(key)
    if schedule is None:
        schedule = _SCHEDULES[key] = ClipSchedule(*key)
    return schedule


def prepare_group(group: dict[str, Any], lr: float) -> None:
    """Add the schedule's bookkeeping keys to a param group (they round-trip through state_dict)."""
    group.setdefault("clip_step", 0)
    group.setdefault("clip_warmup_done", False)
    group.setdefault("lr_at_construction", lr)


def peak_lr_of(group: dict[str, Any]) -> float:
    """The warmup rule's peak lr of a group: its ``peak_lr`` when set, else ``initial_lr`` (set by torch LR
    schedulers), else the lr it had when it was added to the optimizer."""
    if group.get("peak_lr") is not None:
        return group["peak_lr"]
    return group.get("initial_lr", group["lr_at_construction"])


def group_threshold(schedule: ClipSchedule, group: dict[str, Any]) -> float:
    """c_t of a param group for the step about to be taken (advances the group's schedule bookkeeping)."""
    factor, group["clip_warmup_done"] = schedule.factor(group["clip_step"], group["lr"], peak_lr_of(group),
                                                        group["clip_warmup_done"])
    group["clip_step"] += 1
    return group["clip_c"] * factor
