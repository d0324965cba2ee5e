"""Polynomial iterations on small symmetric (Gram-space) matrices, with per-matrix coefficient schedules.

Every iterate is a polynomial in the starting matrix, so all of them commute; the loops below use that
to stay in the m x m space. Coefficients come from ``coefficients.schedule_table`` gathered by each
matrix's grid index, so one batched loop serves matrices with different spectra (no host sync).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from .coefficients import (
    NEWTON_SCHULZ_CUBIC,
    direct_lower_ends,
    direct_products,
    direct_table,
    quintic_steps,
    schedule_table,
    steps_for_index,
)
from .symmetric import symmetric_addmm, symmetric_matmul


class Schedule(NamedTuple):
    """Per-matrix coefficients (steps, B, 3) and, per step, whether any matrix uses a quintic term (c != 0);
    steps without one skip the squared iterate."""
    coeffs: Tensor
    quintic: tuple[bool, ...]


def gather_schedule(idx: Tensor, steps: int | None, dtype: torch.dtype, tol: float, adaptive: bool) -> Schedule:
    """Row ``idx[b]`` of the table for each matrix, cut or padded (with the cubic) to the loop length.

    Loop length: ``steps`` if given; else the longest need in the batch when ``adaptive`` or the worst case of
    the whole table. The quintic flags are those of the rows in ``idx`` when ``adaptive``, else of all rows.
    ``adaptive`` reads ``idx`` on the host once; otherwise nothing is synchronised. The table lives on
    ``idx``'s device (``device_table``): gathering copies nothing from the host.
    """
    rows = idx.tolist() if adaptive else None
    if steps is None:
        steps = (max((steps_for_index(j, tol) for j in rows), default=0) if rows is not None
                 else schedule_table(tol).shape[1])
    coeffs = device_table(tol, steps, idx.device, dtype)[idx].transpose(0, 1)
    return Schedule(coeffs, quintic_steps(rows, steps, tol))


@functools.lru_cache(maxsize=64)
def device_table(tol: float, steps: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The schedule table cut or padded (with the cubic) to ``steps`` columns, in ``dtype`` on ``device``:
    copied there once per (tol, steps, device, dtype) and cached, so no call copies it from the host again."""
    table = schedule_table(tol)
    if steps > table.shape[1]:
        pad = torch.tensor(NEWTON_SCHULZ_CUBIC, dtype=table.dtype).expand(table.shape[0], steps - table.shape[1], 3)
        table = torch.cat([table, pad], dim=1)
    return table[:, :steps].to(device=device, dtype=dtype)


def _abc(coeffs: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor]:
    a, b, c = coeffs[t].unbind(-1)
    return a[:, None, None], b[:, None, None], c[:, None, None]


def _polynomial(R: Tensor, R2: Tensor | None, a: Tensor, b: Tensor, c: Tensor | None) -> Tensor:
    """P = a I + b R + c R^2 (c R^2 left out when R2 is None: a cubic step)."""
    P = R * b if R2 is None else torch.addcmul(R2 * c, R, b)
    P.diagonal(dim1=-2, dim2=-1).add_(a[:, :, 0])
    return P


def polar_factor(A: Tensor, R: Tensor, R2: Tensor, schedule: Schedule) -> Tensor:
    """msign(A) = A (A^T A)^{-1/2} for a batch (B, m, m) of A with singular values in [l, 1] (the schedule's
    lower end), given R = A^T A and R2 = R^2 for the first step.

    A_{t+1} = A_t P_t with P_t = a_t I + b_t R_t + c_t R_t^2 and R_t = A_t^T A_t recomputed from the iterate
    (after the first step): rounding errors in R_t only perturb the next polynomial, they are not carried
    along, so a matrix with condition number kappa needs no precision beyond what its factor A needs
    (eps * kappa), not what R needs (eps * kappa^2). Cost: 3 small matmuls per quintic step (R_t, R_t^2,
    A_t P_t), 2 per cubic step, 1 for the first; R_t and R_t^2 are symmetric (``symmetric_matmul``).
    """
    for t in range(schedule.coeffs.shape[0]):
        a, b, c = _abc(schedule.coeffs, t)
        if t > 0:
            R = symmetric_matmul(A.mT, A)
            if schedule.quintic[t]:
                R2 = symmetric_matmul(R, R)
        A = A @ _polynomial(R, R2 if schedule.quintic[t] else None, a, b, c)
    return A


def inverse_sqrt(R: Tensor, R2: Tensor, schedule: Schedule, *, symmetric: bool = True) -> Tensor:
    """Q ~ R^{-1/2} for a batch (B, m, m) of symmetric R with eigenvalues in [l^2, 1], given R2 = R @ R.

    This is the polar iteration sigma <- sigma p_t(sigma^2) on sigma = sqrt(lambda(R)) written on Gram
    matrices: Q_{t+1} = Q_t P_t, R_{t+1} = P_t R_t P_t with P_t = a_t I + b_t R_t + c_t R_t^2, so that
    R_t = R Q_t^2 -> I and Q_t -> R^{-1/2}. Cost: 4 small matmuls per step (3 on the first, 2 on the last, one
    fewer on cubic steps), all of symmetric results (R, P and Q commute): ``symmetric_matmul`` computes only
    their lower block triangles. A relative error e in a small eigenvalue r_t of R_t stays in the result as
    e/2 (R_{t+1} is propagated, not recomputed), so R needs a precise dtype (``polar_factor`` does not).

    ``symmetric=False`` uses full products: where eigenvalues of R lie below l^2 (the hard clip's Z, which
    need not converge there) Q grows large in their directions, and mirroring the lower triangles takes the
    commutators of the rounded factors as zero, measured to cost 4x more error (1e-4 vs 2.3e-5 at
    sigma_max/c = 10 in float32).
    """
    mul = symmetric_matmul if symmetric else torch.matmul
    Q: Tensor | None = None
    steps = schedule.coeffs.shape[0]
    for t in range(steps):
        a, b, c = _abc(schedule.coeffs, t)
        if t > 0 and schedule.quintic[t]:
            R2 = mul(R, R)
        P = _polynomial(R, R2 if schedule.quintic[t] else None, a, b, c)
        Q = P if Q is None else mul(Q, P)
        if t < steps - 1:
            R = mul(P, mul(R, P))
    if Q is None:
        return torch.eye(R.shape[-1], dtype=R.dtype, device=R.device).expand_as(R).clone()
    return Q


def schedule_products(schedule: Schedule) -> int:
    """Small matmuls ``inverse_sqrt`` spends on ``schedule`` given R^2: P R P on every step but the last (2), and
    on every step after the first Q P (1) and, on quintic steps, R^2 (1)."""
    steps = schedule.coeffs.shape[0]
    return 0 if steps <= 1 else 3 * (steps - 1) + sum(schedule.quintic[1:])


def direct_plan(rows: list[int], schedule: Schedule, tol: float) -> int:
    """Products of the direct polynomial that serves every point ``rows`` of the direct grid (``grid_index`` with
    ``coefficients.DIRECT_PER_DECADE``; the largest need among them),
    or -1 where one row has none or it saves no product over ``schedule`` (``schedule_products``)."""
    needs = [direct_products(j, tol) for j in rows]
    products = max(needs, default=-1)
    return products if min(needs, default=-1) >= 0 and products < schedule_products(schedule) else -1


def inverse_sqrt_direct(R: Tensor, R2: Tensor, idx: Tensor, products: int, tol: float) -> Tensor:
    """Q ~ R^{-1/2} for a batch (B, m, m) of symmetric R with eigenvalues in [l_j^2, 1] (j = ``idx`` per matrix on
    the direct grid, every one covered by ``direct_plan``), given R2 = R @ R: one polynomial of degree 2k + 2
    (k = ``products``).

    With T = (2R - (1 + l^2) I)/(1 - l^2) (eigenvalues in [-1, 1]) and T^2 formed from R2 without a product,
    p(T) = sum_i c_i T^i is evaluated by Horner's rule in T^2 with linear blocks,
    S_k = c_{2k} + c_{2k+1} T + c_{2k+2} T^2, S_i = c_{2i} + c_{2i+1} T + T^2 S_{i+1}: k products, each one
    symmetric (polynomials in R commute). The coefficients of the fits are at most ~1.3 in size, so rounding
    adds ~eps to the fit's error."""
    table, l2 = _direct_device_table(tol, products, R.device, R.dtype)
    c, l2 = table[idx - 1], l2[idx][:, None, None]
    shift, width = (1 + l2) / (1 - l2), 2 / (1 - l2)
    T = R * width
    T.diagonal(dim1=-2, dim2=-1).sub_(shift[:, :, 0])
    T2 = torch.addcmul(R2 * (width * width), R, -2 * width * shift)  # T^2 = w^2 R^2 - 2 w s R + s^2 I
    T2.diagonal(dim1=-2, dim2=-1).add_((shift * shift)[:, :, 0])
    S = _polynomial(T, T2, c[:, -3, None, None], c[:, -2, None, None], c[:, -1, None, None])
    for i in range(products - 1, -1, -1):
        S = symmetric_addmm(_polynomial(T, None, c[:, 2 * i, None, None], c[:, 2 * i + 1, None, None], None), T2, S)
    return S


@functools.lru_cache(maxsize=64)
def _direct_device_table(tol: float, products: int, device: torch.device, dtype: torch.dtype
                         ) -> tuple[Tensor, Tensor]:
    """``direct_table`` and the grid's l_j^2 in ``dtype`` on ``device``, copied there once and cached."""
    table = direct_table(tol, products)
    l2 = torch.tensor([g * g for g in direct_lower_ends(table.shape[0] + 1)], dtype=torch.float64)
    return table.to(device=device, dtype=dtype), l2.to(device=device, dtype=dtype)


def symmetric_sign(E: Tensor, schedule: Schedule, E2: Tensor | None = None, safety: float = 1.0) -> Tensor:
    """sign(E) for a batch of symmetric E with eigenvalues in [-1, 1]: E <- a E + b E^3 + c E^5 per step.

    Eigenvalues with |x| >= l (the schedule's lower end) converge to +-1; smaller ones are damped towards
    sign(x) * p(|x|). 3 small matmuls per step, all of symmetric results (polynomials in E commute); ``E2``:
    E @ E if already formed (saves the first step's square). ``safety`` > 1: every step but the last is
    p(E / safety), as Polar Express does for low-precision products: rounding that pushes an eigenvalue above
    the step's upper end is then not amplified by the steep early quintics (measured: without it, products
    rounded to TF32 diverge).
    """
    steps = schedule.coeffs.shape[0]
    for t in range(steps):
        a, b, c = _abc(schedule.coeffs, t)
        if t < steps - 1 and safety != 1.0:
            a, b, c = a / safety, b / safety**3, c / safety**5
        E2 = symmetric_matmul(E, E) if t > 0 or E2 is None else E2
        E = a * E + symmetric_matmul(E, b * E2 + c * symmetric_matmul(E2, E2) if schedule.quintic[t] else b * E2)
    return E
