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

from ._chunks import chunks_by_key, stack_key
from ._validate import check_choice, check_unit_interval
from .base import SpectralOptimizer, decoupled_step
from .directions import momentum_direction
from .scale import SCALE_CONVENTIONS, shape_scale
from .transforms import spectral_transform

_MUON_FALLBACK = ("vectors", "embeddings", "head")


class Muon(SpectralOptimizer):
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
        ns_dtype: compute dtype of the iteration (None: bfloat16 on CUDA, float32 elsewhere).
        ns_method: "polar" (the iteration above) | "svd" (exact polar factor, slow; for tests).
        batch: how many same-shape matrices one msign call stacks (matrices above 2^22 elements: never).
        adamw_lr: learning rate of the AdamW groups (default 3e-4; None = the group's lr).
        fallback, fallback_patterns, adamw_betas, adamw_eps, adamw_weight_decay, nonfinite: see SpectralOptimizer.
        track_stats: record ``statistics()``: "sigma_max/<name>" = ||direction||_F (an upper bound on its
            sigma_max) per matrix, no host sync.
    """

    def __init__(self, params: Any, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, *, scale: str = "keller", ns_coefficients: Any = "polar_express",
                 ns_steps: int | None = None, ns_dtype: torch.dtype | None = None, ns_method: str = "polar",
                 batch: int = 8, fallback: Iterable[str] = _MUON_FALLBACK, fallback_patterns: Iterable[str] = (),
                 adamw_lr: float | None = 3e-4, adamw_betas: tuple[float, float] = (0.9, 0.95),
                 adamw_eps: float = 1e-8, adamw_weight_decay: float | None = None, nonfinite: str = "raise",
                 track_stats: bool = False) -> None:
        settings = {"momentum": momentum, "nesterov": nesterov, "scale": scale, "ns_coefficients": ns_coefficients,
                    "ns_steps": ns_steps, "ns_dtype": ns_dtype, "ns_method": ns_method, "batch": batch}
        _check_settings(settings)
        self.track_stats = track_stats
        defaults = {"lr": lr, "weight_decay": weight_decay, **settings}
        super().__init__(params, defaults, fallback=fallback, fallback_patterns=fallback_patterns, adamw_lr=adamw_lr,
                         adamw_betas=adamw_betas, adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay,
                         nonfinite=nonfinite)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking the settings it overrides (every constructor setting but ``track_stats``,
        ``nonfinite``, ``fallback*`` and ``adamw_*``)."""
        merged = {**self.defaults, **param_group}
        _check_settings({k: merged[k] for k in _SETTING_KEYS})
        super().add_param_group(param_group)

    def _spectral_step(self, group: dict[str, Any]) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        named = [(n, p) for n, p in zip(group["param_names"], group["params"]) if p.grad is not None]
        vectors = [[item] for item in named if item[1].dim() < 2]
        matrices = chunks_by_key([item for item in named if item[1].dim() >= 2],
                                 lambda item: stack_key(item[1]), group["batch"])
        method = "svd" if group["ns_method"] == "svd" else "polar"
        for chunk in vectors + matrices:
            directions = [momentum_direction(p.grad, self.state[p], group["momentum"], group["nesterov"])
                          for _, p in chunk]
            stacked = directions[0] if len(chunk) == 1 else torch.stack(directions)
            orthogonal, bound = spectral_transform(
                stacked, "normalize", 1.0, method=method, steps=group["ns_steps"], dtype=group["ns_dtype"],
                coefficients=group["ns_coefficients"], vector=chunk[0][1].dim() < 2, need_bound=self.track_stats)
            for i, (name, p) in enumerate(chunk):
                decoupled_step(p, orthogonal if len(chunk) == 1 else orthogonal[i], lr, wd,
                               shape_scale(p.shape, group["scale"]))
                if self.track_stats:
                    self._statistics[f"sigma_max/{name}"] = (bound if len(chunk) == 1 else bound[i]).amax()


_SETTING_KEYS = ("momentum", "nesterov", "scale", "ns_coefficients", "ns_steps", "ns_dtype", "ns_method", "batch")


def _check_settings(settings: dict[str, Any]) -> None:
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
