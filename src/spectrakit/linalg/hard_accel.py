"""The accelerator hard clip: float32 products only, no host reads; the soft clip first, then well-conditioned maps.

With t = sigma/c, the soft clip H = H_c(X) (``restart.soft_clip_restart``, accurate in float32 to ~eps t; its
fixed schedule here covers sigma_max/c <= ``restart.HARD_MAX_RATIO`` = 1e4, one step more than the soft clip's) has
singular values c h, h = t / sqrt(1 + t^2) in [0, 1), and the same singular vectors as X. In terms of h,

    min(sigma, c) = c h phi(h^2),   phi(x) = 1 / sqrt(max(x, 1 - x)) = (1/2 + |x - 1/2|)^{-1/2},

(for t <= 1, x = h^2 <= 1/2 and c h / sqrt(1 - h^2) = sigma; for t >= 1, c h / h = c). So, with W = H H^T / c^2
and E = 2 W - I (eigenvalues e = 2 h^2 - 1 = (t^2 - 1)/(t^2 + 1) in [-1, 1)),

    hard_c(X) = B^{-1/2} H,   B = (I + |E|) / 2,   |E| = E sign(E).

Every matrix here is O(1) and well conditioned, so float32 rounding adds only ~eps: W's eigenvalues lie in
[0, 1], B's in [1/2, 1] and phi is bounded by sqrt(2). (Forming X X^T / c^2 instead would carry errors
~eps (sigma_max/c)^2 into the singular values next to c.) The only ratio-dependent error is the soft clip's.
sign(E) is resolved for |e| >= SIGN_LOW: singular values with |t - 1| <~ SIGN_LOW are clipped with a relative
error <~ SIGN_LOW (|e| is underestimated by at most |e| there).

Normalisation: E and B are divided by upper bounds of their spectral norms computed from their squares,
gamma = sqrt(min(Gershgorin(E^2), ||E^2||_F)) (at least 1) and beta likewise from B^2, not by the exact 1: far
beyond the soft clip's range its output overshoots (h up to ~2 measured at sigma_max/c >= 1e6), and a polynomial
iteration started above 1 diverges. The schedules start from each matrix's own lower ends (SIGN_LOW / gamma,
(2 beta)^{-1/2}); their fixed lengths cover gamma and beta up to MAX_LOOSENESS (beyond, the kink and B^{-1/2}
are resolved less finely; the result stays finite). The sign steps use Polar Express's safety factor.

Matmul cost on top of the soft clip: W (2 m^2 n, row-blocked for wide X as in restart), the final product
(2 m^2 n), and m x m products: E^2, 3 per sign step (9 steps), |E|, B^2, ~4 per inverse square root step (3):
measured (meta device, FlopCounterMode) 64 GFLOP per 768 x 768 call (the soft clip: 29; the float64 path this
replaces: 101) and 77 per 768 x 3072 call (37; 106).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .coefficients import GRID_PER_DECADE, grid_index, steps_for_index
from .gram_iteration import gather_schedule, inverse_sqrt, symmetric_sign
from .restart import HARD_MAX_RATIO, SAFETY, TOL, _gram, soft_clip_restart
from .symmetric import symmetric_matmul

#: sign(E) converges (to TOL) for eigenvalues of E with |e| >= SIGN_LOW; below it |E| is only partly resolved.
SIGN_LOW = 2e-4
#: The fixed schedule lengths cover bounds gamma and beta up to this (exact: 1).
MAX_LOOSENESS = 8.0


def _index(l: float) -> int:
    """coefficients.grid_index for a Python float (no tensor)."""
    return math.ceil(-GRID_PER_DECADE * math.log10(l) - 1e-3)


@torch.compiler.assume_constant_result
def fixed_steps() -> tuple[int, int]:
    """(sign steps, inverse square root steps) of the fixed schedules: Python integers, no tensor is read."""
    return _fixed_steps()


@functools.cache
def _fixed_steps() -> tuple[int, int]:
    bound = MAX_LOOSENESS * SAFETY
    return steps_for_index(_index(SIGN_LOW / bound), TOL), steps_for_index(_index((2 * bound) ** -0.5), TOL)


def _bound(A: Tensor) -> Tensor:
    """Upper bound (B,) on the largest eigenvalue of a symmetric positive semidefinite A: min(Gershgorin,
    ||A||_F)."""
    return torch.minimum(torch.linalg.vector_norm(A, ord=1, dim=-1).amax(-1), torch.linalg.matrix_norm(A))


def hard_clip_restart(X: Tensor, c: Tensor, *, steps: int | None, adaptive: bool) -> tuple[Tensor, Tensor]:
    """(hard clip of X at c, sigma_bound) for a (B, m <= n) float32 batch X and c of shape (B,); float32.

    ``steps`` and ``adaptive`` are those of the soft clip (``soft_clip_restart``); the sign and the inverse
    square root use fixed schedules (no host read).
    """
    H, bound = soft_clip_restart(X, c, steps=steps, adaptive=adaptive, max_ratio=HARD_MAX_RATIO)
    K = H / c.float()[:, None, None]  # singular values h in [0, 1): no over- or underflow in K K^T
    E = 2 * _gram(K)
    E.diagonal(dim1=-2, dim2=-1).sub_(1.0)
    E2 = symmetric_matmul(E, E)
    gamma = _bound(E2).sqrt().clamp(min=1.0)[:, None, None] * SAFETY
    sign_steps, root_steps = fixed_steps()
    sign = gather_schedule(grid_index(SIGN_LOW / gamma.flatten()), sign_steps, torch.float32, TOL, adaptive=False)
    S = symmetric_sign(E / gamma, sign, E2 / (gamma * gamma), safety=SAFETY)
    B = 0.5 * symmetric_matmul(E, S)  # |E| / 2
    B.diagonal(dim1=-2, dim2=-1).add_(0.5)
    B2 = symmetric_matmul(B, B)
    beta = _bound(B2).sqrt()[:, None, None] * SAFETY
    root = gather_schedule(grid_index((0.5 / beta).sqrt().flatten()), root_steps, torch.float32, TOL, False)
    Q = inverse_sqrt(B / beta, B2 / (beta * beta), root)
    return (Q * beta.rsqrt()) @ H, bound
