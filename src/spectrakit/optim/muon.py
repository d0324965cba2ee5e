"""Muon (Jordan et al. 2024): momentum orthogonalized by the matrix sign, for hidden matrices.

    M <- beta M + (1 - beta) G            (EMA momentum; Nesterov direction (1 - beta) G + beta M)
    X <- (1 - lr*wd) X - lr * alpha_shape * msign(direction)

msign(U) = U (U^T U)^{-1/2} (all singular values -> 1) by a polar iteration (Polar Express by default,
Keller's quintic with ``ns_coefficients="keller"``). alpha_shape follows ``scale`` ("keller"
sqrt(max(1, rows/cols)), "moonlight" 0.2 sqrt(max(rows, cols)) to reuse AdamW's lr and wd, "spectral"
sqrt(rows/cols), "none"). By default 1-D parameters, embeddings and the output head go to the internal AdamW
rule (fallback=("vectors", "embeddings", "head")). SPECTRA's limit c -> 0 with alpha -> infinity:
``Spectra(base="momentum", clip="normalize")`` takes the same steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ._validate import check_choice, check_positive, check_unit_interval
from .directions import direction_named
from .engine import SpectralEngine, StepPlan
from .scale import SCALE_CONVENTIONS
from .transforms import TransformOptions, transform_named

_MUON_FALLBACK = ("vectors", "embeddings", "head")


class Muon(SpectralEngine):
    """Muon for a whole model: hidden matrices take the msign rule, the rest the internal AdamW rule.

    Args:
        params: an ``nn.Module``, tensors, (name, tensor) pairs or param-group dicts. Groups may override lr,
            weight_decay, ``rule`` and every setting below but ``track_stats``, ``fallback*``, ``adamw_*`` and
            ``nonfinite`` (they live in the groups: saved by ``state_dict``, kept by ``copy.deepcopy``).
        lr: learning rate of the msign rule, a number or a one-element tensor (0.02 is Keller's default with
            scale="keller").
        momentum, nesterov: EMA momentum coefficient and Nesterov direction.
        weight_decay: decoupled weight decay of the msign rule.
        scale: "keller" | "moonlight" | "spectral" | "none" (see the module docstring).
        ns_coefficients: "polar_express" (default, 8 steps) | "keller" (5 steps) | a sequence of (a, b, c).
        ns_steps: number of polar steps (None: the coefficient set's default).
        ns_dtype: compute dtype of the iteration (None: bfloat16 on CUDA and on CPUs with AMX tiles or
            AVX512-BF16, float32 elsewhere, see ``spectrakit.linalg.capability``).
        ns_method: "polar" (the iteration above) | "svd" (exact polar factor, slow; for tests).
        batch: how many same-shape matrices one msign call stacks (within a memory budget of 2^25 elements).
        adamw_lr: learning rate of the AdamW groups (default 3e-4; None = the group's lr).
        fallback, fallback_patterns, adamw_betas, adamw_eps, adamw_weight_decay, nonfinite, sync_free: see
            SpectralOptimizer.
        track_stats: record ``statistics()``: "sigma_max/<name>" = ||direction||_F (an upper bound on its
            sigma_max) per matrix, no host sync.
    """

    def __init__(self, params: Any, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, *, scale: str = "keller", ns_coefficients: Any = "polar_express",
                 ns_steps: int | None = None, ns_dtype: torch.dtype | None = None, ns_method: str = "polar",
                 batch: int = 8, fallback: Iterable[str] = _MUON_FALLBACK, fallback_patterns: Iterable[str] = (),
                 adamw_lr: float | None = 3e-4, adamw_betas: tuple[float, float] = (0.9, 0.95),
                 adamw_eps: float = 1e-8, adamw_weight_decay: float | None = None, nonfinite: str | None = None,
                 sync_free: bool | None = None,
                 track_stats: bool = False) -> None:
        settings = {"momentum": momentum, "nesterov": nesterov, "scale": scale, "ns_coefficients": ns_coefficients,
                    "ns_steps": ns_steps, "ns_dtype": ns_dtype, "ns_method": ns_method, "batch": batch}
        _check_muon(settings)
        self.track_stats = track_stats
        defaults = {"lr": lr, "weight_decay": weight_decay, **settings, **self._rule_settings()}
        super().__init__(params, defaults, fallback=fallback, fallback_patterns=fallback_patterns, adamw_lr=adamw_lr,
                         adamw_betas=adamw_betas, adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay,
                         nonfinite=nonfinite, sync_free=sync_free)

    def _check_settings(self, settings: dict[str, Any]) -> None:
        """Every constructor setting but ``track_stats``, ``nonfinite``, ``fallback*`` and ``adamw_*`` may be set by
        a group; each group is checked as the constructor's."""
        _check_muon(settings)

    def _rule_settings(self) -> dict[str, Any]:
        """Settings of a subclass's rule added to the defaults (checked by its ``add_param_group``)."""
        return {}

    def _plan(self, group: dict[str, Any]) -> StepPlan:
        return StepPlan(direction_named("momentum"), transform_named("normalize"), _ns_options(group),
                        group["batch"], group["scale"], _every_parameter)


def _ns_options(group: dict[str, Any]) -> TransformOptions:
    """The msign iteration of a Muon-family group (ns_method, ns_steps, ns_dtype, ns_coefficients)."""
    return TransformOptions("svd" if group["ns_method"] == "svd" else "polar", group["ns_steps"], group["ns_dtype"],
                            group["ns_coefficients"])


def _every_parameter(name: str, p: torch.Tensor) -> bool:
    return True


def _check_muon(settings: dict[str, Any]) -> None:
    """Validate Muon's settings (the constructor's, or a param group's merged over the defaults)."""
    check_unit_interval(settings["momentum"], "momentum")
    if not isinstance(settings["nesterov"], bool):
        raise ValueError(f"nesterov must be True or False, got {settings['nesterov']!r}")
    check_choice(settings["scale"], "scale", SCALE_CONVENTIONS)
    check_choice(settings["ns_method"], "ns_method", ("polar", "svd"))
    coefficients = settings["ns_coefficients"]
    if isinstance(coefficients, str):
        check_choice(coefficients, "ns_coefficients", ("polar_express", "keller"))
    elif not (isinstance(coefficients, Sequence) and coefficients
              and all(isinstance(t, Sequence) and len(t) == 3 for t in coefficients)):
        raise ValueError("ns_coefficients must be 'polar_express', 'keller' or a non-empty sequence of (a, b, c), "
                         f"got {coefficients!r}")
    steps = settings["ns_steps"]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"ns_steps must be None or an integer >= 1, got {steps!r}")
    dtype = settings["ns_dtype"]
    if dtype is not None and dtype not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        raise ValueError(f"ns_dtype must be None or a floating torch dtype, got {dtype!r}")
    batch = settings["batch"]
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")


class NorMuon(Muon):
    """NorMuon (Li et al. 2025, arXiv 2510.05491): Muon with per-row second-moment normalisation of the
    orthogonalised update, rescaled to a fixed update RMS.

        M <- b1 M + (1 - b1) G                       (EMA momentum; Nesterov optional, off as in the paper)
        O = msign(M)
        v <- b2 v + (1 - b2) mean_cols(O * O)        (one second moment per row / neuron, starting at 0)
        O' = O / (sqrt(v) + eps)
        X <- (1 - lr*wd) X - lr * update_scale * sqrt(m n) * O' / ||O'||_F

    The update RMS is ``update_scale * lr`` (0.2, as Moonlight's Muon), so AdamW-like learning rates and weight
    decay carry over and the rule needs no rectangular scale. Routing, the msign iteration (``ns_*``), ``batch``
    and the AdamW options are Muon's; embeddings, the head and vectors go to the internal AdamW rule by default.

    Args:
        lr: learning rate (AdamW-like; default 3e-3).
        momentum: b1 (0.95). beta2: b2 of the row second moments (0.95). nesterov: Muon's Nesterov direction.
        eps: added to sqrt(v). update_scale: the update RMS per unit lr (0.2).
        adamw_lr: learning rate of the AdamW groups (None: the group's lr, since lr is AdamW-like here).
        The other arguments are :class:`Muon`'s (``scale`` is fixed to "none": the RMS matching replaces it).
    """

    def __init__(self, params: Any, lr: float = 3e-3, momentum: float = 0.95, beta2: float = 0.95,
                 nesterov: bool = False, weight_decay: float = 0.0, *, eps: float = 1e-8, update_scale: float = 0.2,
                 adamw_lr: float | None = None, **kwargs: Any) -> None:
        if "scale" in kwargs:
            raise ValueError("NorMuon takes no scale: its update RMS is update_scale * lr whatever the shape")
        self._normuon = {"beta2": beta2, "eps": eps, "update_scale": update_scale}
        _check_normuon(self._normuon)
        super().__init__(params, lr, momentum, nesterov, weight_decay, scale="none", adamw_lr=adamw_lr, **kwargs)
        del self._normuon

    def _rule_settings(self) -> dict[str, Any]:
        return dict(self._normuon)

    def _check_settings(self, settings: dict[str, Any]) -> None:
        """Muon's settings, beta2, eps and update_scale."""
        super()._check_settings(settings)
        _check_normuon(settings)

    def _plan(self, group: dict[str, Any]) -> StepPlan:
        return StepPlan(direction_named("momentum"), transform_named("normalize_rows"), _ns_options(group),
                        group["batch"], "none", _every_parameter)


def _check_normuon(settings: dict[str, Any]) -> None:
    check_unit_interval(settings["beta2"], "beta2")
    check_positive(settings["eps"], "eps")
    check_positive(settings["update_scale"], "update_scale")
