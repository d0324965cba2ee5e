"""Spectral clipping maps on (..., m, n) tensors: soft_clip (SPECTRA's H_c) and hard_clip.

soft:  sigma -> sigma / sqrt(1 + sigma^2/c^2),  H_c(X) = X (I + X^T X / c^2)^{-1/2}
hard:  sigma -> min(sigma, c)
1-D inputs use the vector rule (the 1 x n case): u / sqrt(1 + ||u||^2/c^2) and u * min(1, c/||u||).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import batch_threshold, check_positive_int, check_tensor, check_threshold
from .exact import hard_clip_svd, soft_clip_svd
from .newton_schulz import soft_clip_newton_schulz

SOFT_METHODS = ("auto", "polar", "newton_schulz", "svd")
HARD_METHODS = ("auto", "polar", "svd")


def _check_method(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise ValueError(f"method must be one of {allowed}, got {method!r}")


def _vector_rule(u: Tensor, c: float | Tensor, hard: bool) -> tuple[Tensor, Tensor]:
    uf = u.float()
    norm = uf.norm(dim=-1, keepdim=True)
    cc = c.to(u.device, torch.float32)[..., None] if isinstance(c, Tensor) else c
    scale = torch.clamp(cc / norm.clamp_min(1e-30), max=1.0) if hard else torch.rsqrt(1 + (norm / cc) ** 2)
    return (uf * scale).to(u.dtype), norm.squeeze(-1)


def soft_clip(X: Tensor, c: float | Tensor, *, method: str = "auto", steps: int | None = None,
              dtype: torch.dtype | None = None, return_bound: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """SPECTRA's soft spectral clip H_c(X) = X (I + X^T X / c^2)^{-1/2} of each trailing matrix.

    Args:
        X: (..., m, n) floating tensor (float32/bfloat16/float16/float64); 1-D uses the vector rule.
        c: threshold > 0, a float or a tensor of shape X.shape[:-2] (broadcast over the batch).
        method: "auto" | "polar" | "newton_schulz" (the authors' iteration, 10 steps) | "svd" (exact).
        steps: iteration count for the iterative methods (default: the method's own).
        dtype: compute dtype for the iteration (default: the method's documented choice).
        return_bound: also return an upper-bound estimate of sigma_max per matrix (shape X.shape[:-2]),
            computed anyway by the iterative methods (exact for "svd").

    Returns the clipped tensor in X's dtype (and the bound when asked). NaN in gives NaN out.
    """
    check_tensor(X, "X", min_dim=1)
    check_threshold(c, "c")
    check_positive_int(steps, "steps")
    _check_method(method, SOFT_METHODS)
    if X.dim() == 1:
        Y, norm = _vector_rule(X, c, hard=False)
        return (Y, norm) if return_bound else Y
    transposed = X.shape[-2] > X.shape[-1]
    Xw = X.mT if transposed else X
    if method in ("svd", "auto", "polar"):
        Y = soft_clip_svd(Xw, c)
        bound = torch.linalg.matrix_norm(Xw.double(), ord=2).float()
    else:
        cb = batch_threshold(c, Xw, dtype or torch.bfloat16)
        Y, bound = soft_clip_newton_schulz(Xw, cb, steps=steps or 10, dtype=dtype or torch.bfloat16)
    Y = (Y.mT if transposed else Y).to(X.dtype)
    return (Y, bound) if return_bound else Y


def hard_clip(X: Tensor, c: float | Tensor, *, method: str = "auto", steps: int | None = None,
              dtype: torch.dtype | None = None, return_bound: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Hard spectral clip sigma -> min(sigma, c) of each trailing matrix (same arguments as soft_clip)."""
    check_tensor(X, "X", min_dim=1)
    check_threshold(c, "c")
    check_positive_int(steps, "steps")
    _check_method(method, HARD_METHODS)
    if X.dim() == 1:
        Y, norm = _vector_rule(X, c, hard=True)
        return (Y, norm) if return_bound else Y
    Y = hard_clip_svd(X, c)
    bound = torch.linalg.matrix_norm(X.double(), ord=2).float()
    return (Y, bound) if return_bound else Y
