"""The exact-SVD oracle of the tests, written from the definitions with ``torch.linalg.svd`` in float64.

For X = U diag(s) V^T (the thin SVD of every trailing matrix of X), a spectral map is

    f(X) = U diag(f(s)) V^T,

so SPECTRA's soft clip is f(s) = s / sqrt(1 + s^2/c^2), the hard clip f(s) = min(s, c) and the polar factor
(msign) f(s) = 1. It is independent of the code under test: nothing here comes from spectrakit (in particular
not from ``spectrakit.linalg.exact``). Every function computes and returns float64, whatever X's dtype; a
caller that compares in X's dtype casts the result itself. A vector x is the 1 x n matrix, whose one singular
value is ||x||: f(x) = f(||x||) x / ||x||.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _as_matrices(X: Tensor) -> tuple[Tensor, bool]:
    """X in float64, a vector as the 1 x n matrix; and whether it was a vector."""
    X = X.detach().double()
    return (X[None], True) if X.dim() == 1 else (X, False)


def svd(X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(U, s, V^T): the thin SVD of every trailing matrix of X in float64, s descending (a vector: 1 x n)."""
    A, _ = _as_matrices(X)
    return torch.linalg.svd(A, full_matrices=False)


def spectral_map(X: Tensor, f: Callable[[Tensor], Tensor]) -> Tensor:
    """U diag(f(s)) V^T of every trailing matrix of X, in float64 (``f`` maps the descending s, shape [..., k])."""
    A, vector = _as_matrices(X)
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    Y = (U * f(s).unsqueeze(-2)) @ Vh
    return Y[0] if vector else Y


def soft_clip(X: Tensor, c: float) -> Tensor:
    """SPECTRA's H_c(X) = U diag(s / sqrt(1 + s^2/c^2)) V^T."""
    return spectral_map(X, lambda s: s / torch.sqrt(1 + (s / c) ** 2))


def hard_clip(X: Tensor, c: float) -> Tensor:
    """U diag(min(s, c)) V^T."""
    return spectral_map(X, lambda s: s.clamp(max=c))


def polar(X: Tensor) -> Tensor:
    """The polar factor msign(X) = U V^T (X of full rank: a zero singular value has no defined sign)."""
    return spectral_map(X, torch.ones_like)


def singular_values(X: Tensor) -> Tensor:
    """The singular values of every trailing matrix of X, descending, float64, shape [..., min(m, n)] (a vector:
    [||x||])."""
    return torch.linalg.svdvals(_as_matrices(X)[0])


def spectral_norm(X: Tensor) -> Tensor:
    """||X||_2 = s_1 of every trailing matrix of X (float64, shape X.shape[:-2]; a vector: its 2-norm)."""
    return singular_values(X)[..., 0]


def top_pair(X: Tensor) -> Tensor:
    """u_1 v_1^T of every trailing matrix of X: the unit-spectral-norm rank-one direction of its top singular
    pair (the gradient of ||X||_2 where s_1 > s_2)."""
    U, _, Vh = svd(X)
    return U[..., :, :1] @ Vh[..., :1, :]
