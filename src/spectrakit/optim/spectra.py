"""SPECTRA: spectral clipping of any base optimizer's direction (Jiang, Semenov, Stich 2026, arXiv 2603.14315).

Update of every clipped parameter X (SPEC 1.1):

    U_k     = base direction (AdamW, Signum, MARS, AdEMAMix, momentum or Lion; see ``directions``)
    X_{k+1} = (1 - lr*wd) X_k - alpha_shape * lr * clip_{c_t}(U_k)

computed natively: U_k comes straight from the base rule (no parameter copy, no recovery by subtraction),
so the optimizer state is exactly the base optimizer's. ``clip_c`` maps each trailing matrix's singular
values sigma -> sigma / sqrt(1 + sigma^2/c^2) (soft, the paper's default), min(sigma, c) (hard) or 1
(normalize, Muon's limit). alpha_shape follows ``scale`` (default "keller" = sqrt(max(1, rows/cols)),
the authors' code) and is 1 for vectors; parameters that are not clipped take the plain base step.
c_t follows the threshold schedule of ``threshold_schedule.ClipSchedule`` (warmup rule c*peak_lr/lr_t; optional decay).

Frank-Wolfe reading (paper): with constant c and lr, ||X_k||_2 <= (1 - lr wd)^k ||X_0||_2
+ (1 - (1 - lr wd)^k) * alpha_shape * c / wd for the soft and hard clips.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ._options import check_clip_options, clip_plan, exclude_patterns
from .directions import base_options, check_hyperparameters, direction_named
from .engine import SpectralEngine, StepPlan
from .threshold_schedule import GROUP_KEYS, ClipSchedule, group_threshold, prepare_group, set_schedule


class Spectra(SpectralEngine):
    """SPECTRA over a base optimizer, for a whole model in one object.

    Args:
        params: an ``nn.Module``, tensors, (name, tensor) pairs or param-group dicts. Groups may override
            lr, weight_decay, ``rule`` ("spectral" | "adamw") and every setting below but ``track_stats``,
            ``fallback*``, ``adamw_*`` and ``nonfinite`` (they live in the groups, so they are saved by
            ``state_dict`` and kept by ``copy.deepcopy``).
        lr: learning rate, a number or a one-element tensor (the peak lr of the threshold warmup unless a group
            sets ``peak_lr`` or a torch LR scheduler set ``initial_lr``).
        base: a registered direction (``directions.DIRECTIONS``): "adamw" | "signum" | "mars" | "ademamix" |
            "momentum" | "lion".
        weight_decay: decoupled weight decay lambda (X <- (1 - lr*lambda) X).
        betas, eps, momentum, dampening, nesterov, gamma, vector_betas, alpha, alpha_warmup, beta3_warmup:
            the base's hyperparameters (None = the base's default, ``DIRECTIONS[base].defaults``); passing
            one the base does not use raises ValueError.
        clip: "soft" | "hard" | "normalize" | None (None: the plain base optimizer).
        clip_c: threshold c > 0 (per group via ``clip_c`` in a param group).
        clip_method: "auto" (default, our accurate fast method) | "polar" | "newton_schulz" (the authors'
            10-step iteration, for parity; soft only) | "svd" (exact).
        clip_steps, clip_dtype: iteration count and compute dtype of the matrix function (None = its default).
        clip_apply_to: "all" (default, as in the paper: 1-D parameters use the vector rule) | "matrices".
        clip_exclude: regular expressions on parameter names whose parameters take the unclipped step.
        vector_rule: "smooth" (u / sqrt(1 + ||u||^2/c^2)) | "authors" (u unchanged below c; parity option).
        scale: rectangular scale after clipping: "keller" (default, authors) | "moonlight" | "spectral" | "none".
        clip_batch: how many same-shape matrices one matrix-function call stacks (more = fewer, larger kernels;
            costs that many directions of temporary memory; 16: the attention matrices of 4 layers in one call,
            ~3% off the tiny preset's step against 8); a stack holds at most 2^25 elements
            (``_chunks.STACK_BUDGET``), so large matrices stack fewer at a time.
        clip_warmup, clip_warmup_steps, clip_total_steps, clip_decay_fraction, clip_decay_shape, clip_final_scale:
            the threshold schedule (``threshold_schedule.ClipSchedule``); also ``set_clip_schedule``.
        peak_lr: default peak lr of the warmup rule for every group (None: see ``lr``).
        track_stats: record ``statistics()`` each step (a few reductions per matrix, no host sync).
        fallback, fallback_patterns, adamw_*, nonfinite, sync_free: see ``SpectralOptimizer`` (default: nothing goes to
            the internal AdamW rule, as in the paper's runs).

    Threshold schedule: c_t = clip_c * warmup factor * decay factor, evaluated per group at each step from
    the group's current lr and its own peak lr; drive the decay by giving ``clip_total_steps`` (or calling
    ``set_clip_schedule(total_steps=...)``) and step the optimizer once per training step.

    ``statistics()`` (with ``track_stats=True``): "clip_c/group<i>" (c_t), "sigma_max/<name>" (the
    sigma_max estimate of U computed by the clip method: an upper bound for the iterative methods, exact for
    "svd"; for normalize the Frobenius norm; the largest over a stack of matrices) and
    "clipped_fraction/<name>" = ||clip_c(U)||_F^2 / (c^2 q) with q the number of singular values (1 for
    vectors): the mean over singular directions of (f(sigma)/c)^2, a smooth count of the directions at or
    above c: each sigma << c counts ~0, sigma = c counts 1/2 (soft) or 1 (hard), sigma >> c counts ~1.
    """

    def __init__(self, params: Any, lr: float = 1e-3, *, base: str = "adamw", weight_decay: float = 0.1,
                 betas: tuple[float, ...] | None = None, eps: float | None = None, momentum: float | None = None,
                 dampening: float | None = None, nesterov: bool | None = None, gamma: float | None = None,
                 vector_betas: tuple[float, float] | None = None, alpha: float | None = None,
                 alpha_warmup: int | None = None, beta3_warmup: int | None = None,
                 clip: str | None = "soft", clip_c: float = 10.0, clip_method: str = "auto",
                 clip_steps: int | None = None, clip_dtype: torch.dtype | None = None, clip_apply_to: str = "all",
                 clip_exclude: Iterable[str] = (), vector_rule: str = "smooth", scale: str = "keller",
                 clip_batch: int = 16, clip_warmup: bool = True, clip_warmup_steps: int | None = None,
                 clip_total_steps: int | None = None, clip_decay_fraction: float = 0.1,
                 clip_decay_shape: str = "sqrt", clip_final_scale: float = 0.0, peak_lr: float | None = None,
                 track_stats: bool = False, fallback: Iterable[str] = (), fallback_patterns: Iterable[str] = (),
                 adamw_lr: float | None = None, adamw_betas: tuple[float, float] = (0.9, 0.95),
                 adamw_eps: float = 1e-8, adamw_weight_decay: float | None = None, nonfinite: str | None = None,
                 sync_free: bool | None = None) -> None:
        direction_named(base)
        given = {"betas": betas, "eps": eps, "momentum": momentum, "dampening": dampening, "nesterov": nesterov,
                 "gamma": gamma, "vector_betas": vector_betas, "alpha": alpha, "alpha_warmup": alpha_warmup,
                 "beta3_warmup": beta3_warmup}
        clip_exclude = exclude_patterns(clip_exclude)
        settings = {"base": base, "clip": clip, "clip_c": clip_c, "clip_method": clip_method,
                    "clip_steps": clip_steps, "clip_dtype": clip_dtype, "clip_apply_to": clip_apply_to,
                    "clip_exclude": clip_exclude, "vector_rule": vector_rule, "scale": scale,
                    "clip_batch": clip_batch, "peak_lr": peak_lr,
                    **ClipSchedule(clip_warmup, clip_warmup_steps, clip_total_steps, clip_decay_fraction,
                                   clip_decay_shape, clip_final_scale).group_options()}
        _check_settings(settings)
        self.track_stats = track_stats
        defaults = {"lr": lr, "weight_decay": weight_decay, **base_options(base, given), **settings}
        super().__init__(params, defaults, fallback=fallback, fallback_patterns=fallback_patterns, adamw_lr=adamw_lr,
                         adamw_betas=adamw_betas, adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay,
                         nonfinite=nonfinite, sync_free=sync_free)

    # ------------------------------------------------------------------------------------- configuration
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking the settings it overrides (any constructor setting but ``track_stats``,
        ``nonfinite``, ``fallback*`` and ``adamw_*``); a group that names another ``base`` gets that base's
        defaults for the hyperparameters it does not set."""
        group = dict(param_group)
        if "clip_exclude" in group:
            group["clip_exclude"] = exclude_patterns(group["clip_exclude"])
        base = group.get("base", self.defaults["base"])
        if base != self.defaults["base"]:
            for key, value in direction_named(base).defaults.items():
                group.setdefault(key, value)
        self._check_settings({**self.defaults, **group})  # before the schedule bookkeeping reads the group
        prepare_group(group, group.get("lr", self.defaults["lr"]))
        super().add_param_group(group)

    def _check_settings(self, settings: dict[str, Any]) -> None:
        """Spectra's settings and the base's hyperparameters of a group (merged over the defaults)."""
        _check_settings({k: settings[k] for k in _SETTING_KEYS})
        check_hyperparameters(settings["base"], settings)

    def set_clip_schedule(self, *, total_steps: int | None = None, decay_fraction: float = 0.1,
                          shape: str = "sqrt", final_scale: float = 0.0, warmup: bool = True,
                          warmup_steps: int | None = None) -> None:
        """Replace the threshold schedule of every group (see ``threshold_schedule.ClipSchedule``), e.g. once the run
        length is known; per group, set the ``clip_*`` schedule keys of that group instead."""
        set_schedule(self.defaults, self.param_groups,
                     ClipSchedule(warmup, warmup_steps, total_steps, decay_fraction, shape, final_scale))

    @property
    def clip_schedule(self) -> ClipSchedule:
        """The threshold schedule of the defaults (groups may override it)."""
        return ClipSchedule.from_group(self.defaults)

    # ---------------------------------------------------------------------------------------------- step
    def _plan(self, group: dict[str, Any]) -> StepPlan:
        return clip_plan(group, direction_named(group["base"]), group["clip_batch"])

    def _threshold(self, group: dict[str, Any]) -> float | torch.Tensor:
        return group_threshold(None, group, on_device=self._sync_free_step)


#: The settings of ``Spectra`` that live in param groups (besides lr, weight_decay and the base's options).
_SETTING_KEYS = ("base", "clip", "clip_c", "clip_method", "clip_steps", "clip_dtype", "clip_apply_to",
                 "clip_exclude", "vector_rule", "scale", "clip_batch", "peak_lr", *GROUP_KEYS.values())


def _check_settings(settings: dict[str, Any]) -> None:
    """Validate Spectra's settings (the constructor's, or a param group's merged over the defaults)."""
    direction_named(settings["base"])
    check_clip_options(settings)
    batch = settings["clip_batch"]
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"clip_batch must be an integer >= 1, got {batch!r}")
