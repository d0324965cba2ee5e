"""Exact spectral maps through the SVD: the test oracle and a small-matrix fallback."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import _sharded


def spectral_map_svd(X: Tensor, f: Callable[[Tensor], Tensor], dtype: torch.dtype = torch.float64) -> Tensor:
    """U f(S) V^T for X = U S V^T, computed in ``dtype`` (float64 by default); output in X's dtype."""
    if _sharded.is_sharded(X):  # FSDP2 / tensor-parallel input: evaluated by spectrakit.distributed (see _sharded)
        return _sharded.call(spectral_map_svd, X, f, dtype)
    return spectral_map_svd_with_norm(X, f, dtype)[0]


def spectral_map_svd_with_norm(X: Tensor, f: Callable[[Tensor], Tensor],
                               dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """(U f(S) V^T, sigma_max) for each trailing matrix; a matrix with NaN/Inf gives NaN for both."""
    Xd = X.to(dtype)
    finite = torch.isfinite(Xd).all(-1, keepdim=True).all(-2, keepdim=True)  # NaN/Inf in -> NaN out, no sync
    U, S, Vh = torch.linalg.svd(torch.where(finite, Xd, 0), full_matrices=False)
    Y = (U * f(S).unsqueeze(-2)) @ Vh
    smax = S[..., 0] if S.shape[-1] else S.new_zeros(S.shape[:-1])
    return torch.where(finite, Y, float("nan")).to(X.dtype), torch.where(finite[..., 0, 0], smax, float("nan"))


def soft_clip_svd(X: Tensor, c: float | Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """H_c(X) = U diag(s / sqrt(1 + s^2/c^2)) V^T exactly. ``c``: float or tensor of shape X.shape[:-2]."""
    c_ = c.to(X.device, dtype)[..., None] if isinstance(c, Tensor) else c
    return spectral_map_svd(X, lambda s: s / torch.sqrt(1 + (s / c_) ** 2), dtype)


def hard_clip_svd(X: Tensor, c: float | Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """U diag(min(s, c)) V^T exactly."""
    c_ = c.to(X.device, dtype)[..., None] if isinstance(c, Tensor) else c
    return spectral_map_svd(X, lambda s: torch.minimum(s, torch.as_tensor(c_, dtype=s.dtype, device=s.device)), dtype)


def msign_svd(X: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """U V^T exactly (zero singular values map to zero)."""
    return spectral_map_svd(X, lambda s: (s > 0).to(s.dtype), dtype)
