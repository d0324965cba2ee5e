"""The spectral transforms T(U) of a direction: soft clip, hard clip, normalize (msign), with a bound.

``spectral_transform(U, kind, c, ...)`` takes one tensor U (a matrix, a batch of matrices stacked on the
leading dims, a vector or a scalar) and returns (T(U), sigma_bound) where sigma_bound is the estimate of
sigma_max(U) that the method computes anyway (per trailing matrix; ||u|| for vectors). Vectors use the
1 x n case of the matrix maps:

- soft:      u / sqrt(1 + ||u||^2/c^2)  (``vector_rule="smooth"``), or the authors' parity rule
             ``vector_rule="authors"``: u unchanged when ||u|| <= c, the smooth rule above c (no host sync:
             a torch.where on device).
- hard:      u * min(1, c/||u||);   normalize: u / ||u|| (0 stays 0).

Methods: "auto" / "polar" / "newton_schulz" / "svd" as in spectrakit.linalg. For normalize, "svd" is the
exact polar factor, "newton_schulz" the Keller quintic and "auto"/"polar" Polar Express (``coefficients``
overrides the set). ``dtype`` None means each linalg function's own default (msign: bfloat16 on CUDA,
float32 elsewhere).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..linalg import hard_clip, msign, msign_svd, soft_clip
from ..linalg.clip import HARD_METHODS, SOFT_METHODS

CLIP_KINDS = ("soft", "hard", "normalize")
VECTOR_RULES = ("smooth", "authors")
NORMALIZE_METHODS = ("auto", "polar", "newton_schulz", "svd")


def check_method(kind: str, method: str, name: str = "clip_method") -> None:
    """Raise ValueError naming the argument ``name`` unless ``method`` exists for clip ``kind``."""
    allowed = {"soft": SOFT_METHODS, "hard": HARD_METHODS, "normalize": NORMALIZE_METHODS}[kind]
    if method not in allowed:
        raise ValueError(f"{name} must be one of {allowed} for clip={kind!r}, got {method!r}")


def _vector_transform(u: Tensor, kind: str, c: float, vector_rule: str) -> tuple[Tensor, Tensor]:
    uf = u.float()
    norm = torch.linalg.vector_norm(uf)
    if kind == "normalize":
        scale = 1 / norm.clamp_min(1e-30)
    elif kind == "hard":
        scale = torch.clamp(c / norm.clamp_min(1e-30), max=1.0)
    else:
        scale = torch.rsqrt(1 + (norm / c) ** 2)
        if vector_rule == "authors":
            scale = torch.where(norm <= c, torch.ones_like(scale), scale)
    return (uf * scale).to(u.dtype), norm


def spectral_transform(U: Tensor, kind: str, c: float, *, method: str = "auto", steps: int | None = None,
                       dtype: torch.dtype | None = None, coefficients: Any = None,
                       vector_rule: str = "smooth", vector: bool | None = None,
                       need_bound: bool = True) -> tuple[Tensor, Tensor | None]:
    """(T(U), sigma_bound) for one direction tensor; ``c`` is ignored by normalize.

    ``vector``: treat U as one vector (default: U.dim() < 2). c = inf returns U unchanged (soft/hard).
    ``need_bound=False`` lets normalize skip its extra Frobenius norm (the bound is then None).
    """
    if vector if vector is not None else U.dim() < 2:
        return _vector_transform(U, kind, c, vector_rule)
    if kind != "normalize" and c == math.inf:  # not math.isinf: c may be a symbolic float under torch.compile
        return U, torch.linalg.matrix_norm(U.float())
    if kind == "soft":
        return soft_clip(U, c, method=method, steps=steps, dtype=dtype, return_bound=True)
    if kind == "hard":
        return hard_clip(U, c, method=method, steps=steps, dtype=dtype, return_bound=True)
    # Frobenius norm: an upper bound on sigma_max, computed only when asked
    bound = torch.linalg.matrix_norm(U.float()) if need_bound else None
    if method == "svd":
        return msign_svd(U), bound
    if coefficients is None:
        coefficients = "keller" if method == "newton_schulz" else "polar_express"
    return msign(U, coefficients=coefficients, steps=steps, dtype=dtype), bound
