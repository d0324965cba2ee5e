"""Warm-startable power iteration (top singular value) and block power iteration (top-k triplets).

Both run a fixed number of iterations (no host synchronisation) and return the right vectors a caller
passes back as ``v0`` next time, so a slowly drifting matrix needs only one or two iterations per call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import check_positive_int, check_tensor

_TINY = 1e-30


def _normalize(x: Tensor, dim: int = -1) -> Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp_min(_TINY)


def _random_start(X: Tensor, shape: tuple[int, ...], seed: int = 0) -> Tensor:
    gen = torch.Generator(device=X.device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=X.device, dtype=torch.float32)


def spectral_norm(X: Tensor, *, iters: int = 10, v0: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Estimate sigma_max of each trailing matrix of X (..., m, n) by power iteration in float32.

    Iterates v <- X^T X v / ||X^T X v|| ``iters`` times from ``v0`` (shape (..., n); a fixed-seed Gaussian
    when None). Returns (sigma, u, v) with sigma = ||X v|| <= sigma_max, u = X v / sigma; pass ``v`` back as
    ``v0`` to warm-start. A zero matrix gives sigma = 0.
    """
    check_tensor(X, "X", min_dim=2)
    check_positive_int(iters, "iters", allow_none=False)
    Xf = X.float()
    n = X.shape[-1]
    if v0 is None:
        v = _random_start(X, (*X.shape[:-2], n))
    else:
        if v0.shape != (*X.shape[:-2], n):
            raise ValueError(f"v0 must have shape {(*X.shape[:-2], n)}, got {tuple(v0.shape)}")
        v = v0.float()
    v = _normalize(v)
    for _ in range(iters):
        u = _normalize((Xf @ v.unsqueeze(-1)).squeeze(-1))
        v = _normalize((Xf.mT @ u.unsqueeze(-1)).squeeze(-1))
    Xv = (Xf @ v.unsqueeze(-1)).squeeze(-1)
    sigma = Xv.norm(dim=-1)
    return sigma, _normalize(Xv), v


def top_singular(X: Tensor, k: int, *, iters: int = 2, v0: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k singular triplets of X (..., m, n) by block power iteration with QR, in float32.

    Each iteration: Q = qr(X V); V = qr(X^T Q). A final Rayleigh-Ritz step (SVD of the small k x n
    matrix Q^T X) orders the triplets. ``v0`` (..., n, k) warm-starts; without it a fixed-seed Gaussian
    block (a randomized range finder) is used. Returns (U (..., m, k), S (..., k), V (..., n, k)).
    """
    check_tensor(X, "X", min_dim=2)
    check_positive_int(iters, "iters", allow_none=False)
    m, n = X.shape[-2:]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(m, n):
        raise ValueError(f"k must be an integer in [1, min(m, n)] = [1, {min(m, n)}], got {k!r}")
    Xf = X.float()
    if v0 is None:
        V = _random_start(X, (*X.shape[:-2], n, k))
    else:
        if v0.shape != (*X.shape[:-2], n, k):
            raise ValueError(f"v0 must have shape {(*X.shape[:-2], n, k)}, got {tuple(v0.shape)}")
        V = v0.float()
    V = torch.linalg.qr(V).Q
    for _ in range(iters):
        Q = torch.linalg.qr(Xf @ V).Q
        V = torch.linalg.qr(Xf.mT @ Q).Q
    Q = torch.linalg.qr(Xf @ V).Q
    Ub, S, Vh = torch.linalg.svd(Q.mT @ Xf, full_matrices=False)
    return Q @ Ub, S, Vh.mT
