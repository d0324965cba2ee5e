"""The accelerator soft clip: float32 (or bfloat16) products only, no host reads, one restart.

H_c(X) = (I + G/c^2)^{-1/2} X with G = X X^T (wide orientation, m <= n) is c times the top block of
msign(A_0), A_0 = [X^T/c; I] / sqrt(alpha), whose singular values lie in [l, 1], l = alpha^{-1/2}, when alpha
bounds lambda_max(I + G/c^2) (SPEC 1.2). Why not iterate on the Gram matrix alone: G rounded to float32 carries
absolute errors ~ eps sigma_max^2, i.e. relative errors ~ eps r^2 (r = sigma_max/c) in the eigenvalues of
R_0 = A_0^T A_0 = (I + G/c^2)/alpha near 1/alpha, and a converged Gram-space iteration passes them to the
result (8e-3 at r = 1e3, overflow at 1e4). Three phases keep every error at ~ eps r instead:

1. Gram phase: K = RESTART_AFTER Polar Express steps of ``gram_iteration.inverse_sqrt`` on the float32 R_0 give
   Q = prod_t p_t(R_t), symmetrised. While the iteration is far from converged Q is a polynomial of moderate
   slope in R_0, so the rounding of G perturbs A_K = A_0 Q only by ~ eps times that slope (measured: the
   restart after K = 3 steps gives 1.5e-4 at r = 1e3 and 3.4e-4 at r = 1e4; after 5-7 steps, 2e-3 at 1e3).
2. Restart: Y = Q X and R_K = A_K^T A_K = (Y Y^T/c^2 + Q^2)/alpha, formed from O(1) quantities (absolute
   errors ~ eps against eigenvalues >= l_K^2, l_K the schedule's lower end after K steps).
3. Factor phase: R_K = L L^T (float32 Cholesky, no error check, so no host read), msign(L^T) by
   ``gram_iteration.polar_factor`` for the remaining steps (it recomputes its Gram matrix from the iterate: errors
   ~ eps/l_K), and R_K^{-1/2} = L^{-T} msign(L^T) (a triangular solve). Then
   msign(A_0) = A_K R_K^{-1/2}, so H_c(X) = R_K^{-1/2} Y / sqrt(alpha).

Matmul cost, counting 2 m^2 n per m x n product with an m x m or n x m one: X X^T, Y = Q X, Y Y^T and the final
product (8 m^2 n; the two Gram products use at least 4 row blocks when n >= 4 m, 62.5% of the work each, 56% with
the 8 blocks of m >= 768: ``symmetric.symmetric_matmul``, as do all the symmetric m x m products from 512 on, on every
device), plus ~ 3 m x m products per step, against the authors' 10-step method's 4 m^2 n + 60 m^3 (SPEC 1.3).
The fast mode (bfloat16 products) is ``fast_clip``; it shares the stacked problem (``stacked_problem``) built here.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from .coefficients import GRID_PER_DECADE, grid_index, grid_lower_ends, polar_schedule, steps_for_index
from .gram_iteration import gather_schedule, inverse_sqrt, polar_factor
from .symmetric import block_count, symmetric_matmul

#: Steps of the Gram phase before the restart (measured best of 1..4 at r = 1e3..1e5 in float32).
RESTART_AFTER = 3
#: The fixed schedule (no host read) covers sigma_max/c up to this ratio exactly (3 + 5 steps); one decade past
#: it, at 1e4, it still meets 1e-2 (measured worst 7.5e-3 in float32 and 3xTF32, flat/spiky/log-spaced/
#: rank-deficient spectra; 3 + 6 steps, covering 1e4, give 4.4e-4 for ~8% more matmul FLOPs per call). Beyond,
#: the small singular values are under-resolved (0.26 at 1e5), but the result stays finite with its top
#: singular value within 1e-3 of c (``covered_index``, ``within_exact_bound``).
MAX_RATIO = 3e3
#: What the hard clip's soft clip covers (hard_accel.py: its accuracy target at 1e4 is 2e-3).
HARD_MAX_RATIO = 1e4
#: The factor phase assumes its lower end is this fraction of l_K / sqrt(bound): the rounding of G moves the
#: small eigenvalues of R_K (measured: without it, 1.4e-3 on a flat spectrum at 1e4; with it, 4e-6).
MARGIN = 0.5
#: Tolerance of the schedules (the iteration's own relative error), below the 1e-3 target.
TOL = 3e-4
#: Upper bounds are inflated by this factor (as in polar_clip: rounding must not push a value above 1).
SAFETY = 1.01
#: Wide Gram products X X^T (n >= WIDE * m) use row blocks on every device (each block is a large product).
WIDE = 4


@torch.compiler.assume_constant_result  # torch.compile takes it as a constant instead of tracing the solve
def fixed_steps(max_ratio: float = MAX_RATIO, tol: float = TOL) -> tuple[int, int]:
    """(Gram-phase steps, factor-phase steps) of the fixed schedule: what the stack's lower end at
    sigma_max/c = max_ratio needs (the factor phase restarts from MARGIN times the grid point below l_K / u_K)."""
    return _fixed_steps(max_ratio, tol)


@functools.cache
def _fixed_steps(max_ratio: float, tol: float) -> tuple[int, int]:
    l = 1 / ((1 + max_ratio**2) ** 0.5 * SAFETY)
    j = next(i for i, g in enumerate(grid_lower_ends()) if g <= l)
    head = min(RESTART_AFTER, steps_for_index(j, tol))
    lk = grid_lower_ends()[j]
    for a, b, c in polar_schedule(lk, tol=tol)[:head]:
        lk = lk * (a + b * lk**2 + c * lk**4)
    uk = 2 - lk if head else 1.0
    jk = next(i for i, g in enumerate(grid_lower_ends()) if g <= MARGIN * lk / uk)
    return head, steps_for_index(jk, tol)


@torch.compiler.assume_constant_result
def covered_index(steps: int, tol: float = TOL) -> int:
    """The largest grid index whose schedule converges within ``steps`` steps. Matrices whose lower end lies
    below that grid point (beyond the range the steps cover) take its schedule: their small singular values
    are then under-resolved (mapped below their exact value), never pushed above 1."""
    return _covered_index(steps, tol)


@functools.cache
def _covered_index(steps: int, tol: float) -> int:
    return max(j for j in range(len(grid_lower_ends())) if steps_for_index(j, tol) <= steps)


def _gram(X: Tensor) -> Tensor:
    """X X^T, row-blocked as ``symmetric.block_count`` says, and into at least 4 blocks when n >= WIDE m."""
    m, n = X.shape[-2:]
    return symmetric_matmul(X, X.mT, blocks=max(4, block_count(m, X.dtype)) if n >= WIDE * m else None)


def _scale(X: Tensor) -> Tensor:
    """||X||_F per matrix (B,) in float32 without overflow (max |x| first, then the norm of X / max |x|),
    at least 1e-37 (a zero matrix then maps to zero)."""
    amax = X.abs().amax(dim=(-2, -1)).float().clamp_min(1e-30)
    return (amax * torch.linalg.vector_norm(X.float() / amax[:, None, None], dim=(-2, -1))).clamp_min(1e-37)


def lower_end_after(idx: Tensor, coeffs: Tensor) -> Tensor:
    """Image of the grid points idx (B,) under the schedule's steps coeffs (steps, B, 3): l <- l p(l^2)."""
    l = torch.pow(10.0, idx.float() / -GRID_PER_DECADE)
    for step in coeffs.unbind(0):
        a, b, c = step.unbind(-1)
        l = l * (a + l * l * (b + c * l * l))
    return l


class StackedProblem(NamedTuple):
    """The normalised stack of one batch: X / ||X||_F in the product dtype, R_0 = (I + G/c^2)/alpha and R_0^2
    (float32), w = 1/(alpha c^2) and 1/alpha (both (B, 1, 1)), alpha^{-1/2}, the grid index of the stack's lower end
    max(alpha^{-1/2}, the floor given), ||X||_F (B,) and the bound on lambda_max(G) (B,),
    G = (X / ||X||_F)(X / ||X||_F)^T."""
    Xn: Tensor
    R: Tensor
    R2: Tensor
    w: Tensor
    inv: Tensor
    root_inv: Tensor
    idx: Tensor
    scale: Tensor
    bound: Tensor


def stacked_problem(X: Tensor, c: Tensor, dtype: torch.dtype, lowest_end: float = 0.0) -> StackedProblem:
    """Build the stacked problem of a (B, m <= n) batch with the products G = X X^T and G^2 in ``dtype``; the grid
    index is that of max(alpha^{-1/2}, ``lowest_end``) (the fast mode's floor).

    bound = min(Gershgorin(G), ||G^2||_F^{1/2}) >= lambda_max(G), alpha = (1 + bound/c^2) SAFETY; every term is
    formed so that nothing under- or overflows at any ratio (bound >= 1/m as ||X||_F = 1; c^2 may underflow to 0,
    and then only the negligible identity terms lose it)."""
    s = _scale(X)
    Xn = (X.float() / s[:, None, None]).to(dtype)
    cs = (c.float() / s).clamp(max=1e15)[:, None, None]  # c / ||X||_F (1e15 for X = 0)
    c2 = cs * cs  # underflows to 0 from sigma_max/c ~ 1e19 on
    Gd = _gram(Xn)
    G, G2 = Gd.float(), symmetric_matmul(Gd, Gd).float()
    bound = torch.minimum(torch.linalg.vector_norm(G, ord=1, dim=-1).amax(-1), torch.linalg.matrix_norm(G2).sqrt())
    w = 1 / ((c2 + bound[:, None, None]) * SAFETY)
    inv = w * c2  # 1/alpha
    root_inv = cs * w.sqrt()  # alpha^{-1/2}, formed without c^2 (no underflow)
    R = G * w
    R.diagonal(dim1=-2, dim2=-1).add_(inv[:, :, 0])
    R2 = torch.addcmul(G2 * (w * w), G, 2 * w * inv)
    R2.diagonal(dim1=-2, dim2=-1).add_((inv * inv)[:, :, 0])
    lower = root_inv.flatten() if lowest_end == 0 else root_inv.flatten().clamp(min=lowest_end)
    return StackedProblem(Xn, R, R2, w, inv, root_inv, grid_index(lower), s, bound)


def soft_clip_restart(X: Tensor, c: Tensor, *, steps: int | None, adaptive: bool,
                      max_ratio: float = MAX_RATIO) -> tuple[Tensor, Tensor]:
    """(H_c(X), sigma_bound) for a (B, m <= n) batch X and c of shape (B,); float32 products, result in float32.

    ``steps``: total steps (Gram phase + factor phase); default: the longest need in the batch when
    ``adaptive`` (one host read), else ``fixed_steps(max_ratio)`` (covers sigma_max/c <= max_ratio).
    """
    p = stacked_problem(X, c, torch.float32)
    fixed = fixed_steps(max_ratio) if steps is None and not adaptive else None
    k = min(RESTART_AFTER, steps) if steps is not None else (fixed[0] if fixed else RESTART_AFTER)
    head = gather_schedule(p.idx, k, torch.float32, TOL, adaptive=False)
    Q = inverse_sqrt(p.R, p.R2, head)
    Q = 0.5 * (Q + Q.mT)
    Y = Q @ p.Xn
    RK = _gram(Y) * p.w + symmetric_matmul(Q, Q) * p.inv
    RK = 0.5 * (RK + RK.mT)
    # normalise by an upper bound of lambda_max(R_K); the factor phase's lower end is the image of the grid
    # point under the Gram phase's steps, over the square root of that bound
    beta = torch.minimum(torch.linalg.vector_norm(RK, ord=1, dim=-1).amax(-1), torch.linalg.matrix_norm(RK)) * SAFETY
    RK = RK / beta[:, None, None]
    lk = lower_end_after(p.idx, head.coeffs)
    tail_steps = fixed[1] if fixed else (None if steps is None else steps - k)
    tail_idx = grid_index(MARGIN * lk / beta.sqrt())
    if tail_steps is not None:  # a row cut short would end mid-way, where its iterates overshoot 1 (up to 2)
        tail_idx = tail_idx.clamp(max=covered_index(tail_steps))
    tail = gather_schedule(tail_idx, tail_steps, torch.float32, TOL, adaptive)
    # Cholesky without error check (no host read); where it fails (R_K singular to working precision, far
    # beyond MAX_RATIO), the factor of R_K + delta I is used instead
    eye = torch.eye(RK.shape[-1], dtype=RK.dtype, device=RK.device)
    L, info = torch.linalg.cholesky_ex(RK)
    L = torch.where((info == 0)[:, None, None], L, torch.linalg.cholesky_ex(RK + 2**-16 * eye).L)
    # L^T's Gram matrix L L^T is R_K up to the factorisation's backward error (~eps ||R_K||): only the first
    # polynomial sees the difference, and polar_factor recomputes its Gram matrix from the iterate after it
    # (measured: the same errors as with L L^T formed, to two digits, at every ratio)
    U = polar_factor(L.mT, RK, symmetric_matmul(RK, RK), tail)
    M = torch.linalg.solve_triangular(L.mT, U, upper=True)
    out = (M @ Y) * (p.root_inv / beta[:, None, None].sqrt() * p.scale[:, None, None])
    return within_exact_bound(out, p.scale, c.float() * X.shape[-2] ** 0.5), p.bound.sqrt() * p.scale


def within_exact_bound(H: Tensor, x_norm: Tensor, c_root_m: Tensor) -> Tensor:
    """H scaled down where ||H||_F exceeds min(||X||_F, c sqrt(m)), which bounds every exact H_c(X)
    (sigma -> sigma / sqrt(1 + sigma^2/c^2) <= min(sigma, c)): a no-op within the covered range, and a bound on
    what rounding can make of an unresolved problem (reduced-precision products far beyond MAX_RATIO)."""
    limit = torch.minimum(x_norm, c_root_m)
    norm = _scale(H)  # no overflow at any scale of H
    return H * torch.where(norm > limit, limit / norm, 1.0)[:, None, None]
