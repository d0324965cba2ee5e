"""Warm-startable power iterations: the block power iteration (top-k triplets) and its k = 1 case, and
top_singular.

:func:`block_power_iteration` runs T steps from V (..., n, k):  P = X V;  U = QR(P);  W = X^T U;
s = column norms of W;  V = W / s  (with an optional Rayleigh-Ritz rotation of (U, W) inside the block).
Then U diag(s) V^T = U U^T X, s <= sigma_max (with the rotation, s_i <= sigma_i), and U spans the power
subspace span(X (X^T X)^(T-1) V_0). :func:`spectral_norm` is its k = 1 case (u = X v / ||X v||,
v = X^T u / ||X^T u||) with a last half step, sigma = ||X v|| <= sigma_max; polar_clip's ratio estimate runs
the k = 1 case on the symmetric G = X X^T.

:func:`top_singular` is the same subspace iteration with its own rounding: V is re-orthonormalised by a QR
each step (V = QR(X^T U)) and the triplets come from an SVD of the k x n matrix U^T X after one more
half step (the Rayleigh-Ritz step above, by SVD instead of an eigendecomposition). In exact arithmetic
top_singular(X, k, iters=T) = block_power_iteration(X.float(), V_0, T + 1) up to signs; it keeps its own
rounding because SSO's retraction divides by its sigma, and SSO's trajectories are pinned bitwise.

All run a fixed number of iterations (no host synchronisation) and return the right vectors a caller
passes back next time, so a slowly drifting matrix needs only one or two iterations per call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import check_positive_int, check_tensor

_TINY = 1e-30


def _random_start(X: Tensor, shape: tuple[int, ...], seed: int = 0) -> Tensor:
    gen = torch.Generator(device=X.device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=X.device, dtype=torch.float32)


def block_power_iteration(X: Tensor, V: Tensor, iters: int, rayleigh_ritz: bool = True
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """``iters`` block power steps on X (..., m, n) from V (..., n, k): P = X V; U = QR(P); W = X^T U;
    s = ||W columns||; V = W / s. Returns (U (..., m, k) orthonormal, s (..., k), V (..., n, k) unit columns)
    with U diag(s) V^T = U U^T X. Warm-start the next call with the returned V.

    The products run in X's dtype (no float32 copy of a low-precision X), the rest in float32 or wider.

    The QR basis U spans the top-k subspace long before its columns align with the individual singular
    vectors (they converge at the rates s_{i+1}/s_i, slow for spikes of similar size), and until they do,
    s are not singular values and V is not orthogonal. ``rayleigh_ritz`` rotates (U, W) by the eigenvectors
    of the k x k matrix W^T W (= U^T X X^T U) so that (U, s, V) are the exact singular triplets of U U^T X.
    """
    check_tensor(X, "X", min_dim=2)
    check_positive_int(iters, "iters", allow_none=False)
    if not isinstance(V, Tensor) or V.dim() != X.dim() or V.shape[:-1] != (*X.shape[:-2], X.shape[-1]) \
            or not 1 <= V.shape[-1] <= min(X.shape[-2:]):
        raise ValueError(f"V must have shape {(*X.shape[:-2], X.shape[-1])} + (k,) with 1 <= k <= min(m, n) = "
                         f"{min(X.shape[-2:])}, got {tuple(V.shape) if isinstance(V, Tensor) else type(V).__name__}")
    dtype = torch.promote_types(X.dtype, torch.float32)
    for _ in range(iters):  # products in X's dtype, the rest in >= float32
        U = torch.linalg.qr((X @ V.to(X.dtype)).to(dtype)).Q
        W = (X.mT @ U.to(X.dtype)).to(dtype)
        if rayleigh_ritz:
            _, Z = torch.linalg.eigh((W.mT @ W).double())  # ascending eigenvalues
            Z = Z.flip(-1).to(W.dtype)
            U, W = U @ Z, W @ Z
        s = torch.linalg.vector_norm(W, dim=-2)
        V = W / s.clamp_min(_TINY)[..., None, :]
    return U, s, V


def spectral_norm(X: Tensor, *, iters: int = 10, v0: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Estimate sigma_max of each trailing matrix of X (..., m, n) by power iteration in float32.

    The k = 1 case of :func:`block_power_iteration` (``iters`` times u = X v / ||X v||, v = X^T u / ||X^T u||,
    from ``v0`` of shape (..., n); a fixed-seed Gaussian when None), then a last half step. Returns
    (sigma, u, v) with sigma = ||X v|| <= sigma_max, u = X v / sigma; pass ``v`` back as ``v0`` to
    warm-start. A zero matrix gives sigma = 0.
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
    v = block_power_iteration(Xf, v[..., None], iters, rayleigh_ritz=False)[2][..., 0]
    Xv = (Xf @ v.unsqueeze(-1)).squeeze(-1)
    sigma = Xv.norm(dim=-1)
    return sigma, Xv / sigma.clamp_min(_TINY)[..., None], v


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
