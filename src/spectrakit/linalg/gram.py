"""Polynomial iterations on small symmetric (Gram-space) matrices, with per-matrix coefficient schedules.

Every iterate is a polynomial in the starting matrix, so all of them commute; the loops below use that
to stay in the m x m space. Coefficients come from ``coefficients.schedule_table`` gathered by each
matrix's grid index, so one batched loop serves matrices with different spectra (no host sync).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .coefficients import NEWTON_SCHULZ_CUBIC, quintic_steps, schedule_table, steps_for_index
from .symmetric import symmetric_matmul


class Schedule(NamedTuple):
    """Per-matrix coefficients (steps, B, 3) and, per step, whether any matrix uses a quintic term (c != 0);
    steps without one skip the squared iterate."""
    coeffs: Tensor
    quintic: tuple[bool, ...]


def gather_schedule(idx: Tensor, steps: int, dtype: torch.dtype, tol: float, adaptive: bool) -> Schedule:
    """Row ``idx[b]`` of the table for each matrix, cut or padded (with the cubic) to ``steps``.

    The quintic flags are those of the rows in ``idx`` when ``adaptive`` (one host read), else of all rows
    (no synchronisation).
    """
    table = schedule_table(tol)
    if steps > table.shape[1]:
        pad = torch.tensor(NEWTON_SCHULZ_CUBIC, dtype=table.dtype).expand(table.shape[0], steps - table.shape[1], 3)
        table = torch.cat([table, pad], dim=1)
    coeffs = table[:, :steps].to(device=idx.device, dtype=dtype)[idx].transpose(0, 1)
    return Schedule(coeffs, quintic_steps(idx.tolist() if adaptive else None, steps, tol))


def schedule_steps(idx: Tensor, steps: int | None, adaptive: bool, tol: float) -> int:
    """Loop length: ``steps`` if given; else the longest need in the batch (adaptive, reads idx.max() on the
    host) or the worst case of the whole table (no host read)."""
    if steps is not None:
        return steps
    if adaptive:
        return steps_for_index(int(idx.max()), tol) if idx.numel() else 0
    return schedule_table(tol).shape[1]


def _abc(coeffs: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor]:
    a, b, c = coeffs[t].unbind(-1)
    return a[:, None, None], b[:, None, None], c[:, None, None]


def inverse_sqrt(R: Tensor, R2: Tensor, schedule: Schedule, *, switch_at: int = 0,
                 late_dtype: torch.dtype | None = None, symmetric: bool = True) -> Tensor:
    """Q ~ R^{-1/2} for a batch (B, m, m) of symmetric R with eigenvalues in [l^2, 1], given R2 = R @ R.

    This is the polar iteration sigma <- sigma p_t(sigma^2) on sigma = sqrt(lambda(R)) written on Gram
    matrices: Q_{t+1} = Q_t P_t, R_{t+1} = P_t R_t P_t with P_t = a_t I + b_t R_t + c_t R_t^2, so that
    R_t = R Q_t^2 -> I and Q_t -> R^{-1/2}. Cost: 4 small matmuls per step (3 on the first, 2 on the last, one
    fewer on cubic steps), each of a symmetric result (R, P and Q commute), so ``symmetric_matmul`` computes
    only its lower block triangle.

    A relative error e in a small eigenvalue r_t of R_t stays in the result as e/2 (R_{t+1} is propagated, not
    recomputed), so the steps with small r_t need a precise dtype; from step ``switch_at`` on (if > 0) the
    loop continues in ``late_dtype``.

    ``symmetric=False`` uses full products instead of ``symmetric_matmul``: when eigenvalues of R lie below
    the schedule's l^2, Q grows large there, and mirroring the lower triangles (which takes the commutators of
    the rounded factors as zero) was measured to cost 4x more error in the hard clip (1e-4 vs 2.3e-5).
    """
    mul = symmetric_matmul if symmetric else torch.matmul
    Q: Tensor | None = None
    coeffs = schedule.coeffs
    steps = coeffs.shape[0]
    for t in range(steps):
        if late_dtype is not None and t == switch_at and t > 0 and R.dtype != late_dtype:
            R, Q, coeffs = R.to(late_dtype), Q.to(late_dtype), coeffs.to(late_dtype)
        a, b, c = _abc(coeffs, t)
        if schedule.quintic[t]:
            if t > 0:
                R2 = mul(R, R)
            P = torch.addcmul(R2 * c, R, b)
        else:
            P = R * b
        P.diagonal(dim1=-2, dim2=-1).add_(a[:, :, 0])
        Q = P if Q is None else mul(Q, P)
        if t < steps - 1:
            R = mul(P, mul(R, P))
    if Q is None:
        return torch.eye(R.shape[-1], dtype=R.dtype, device=R.device).expand_as(R).clone()
    return Q


def symmetric_sign(E: Tensor, schedule: Schedule) -> Tensor:
    """sign(E) for a batch of symmetric E with eigenvalues in [-1, 1]: E <- a E + b E^3 + c E^5 per step.

    Eigenvalues with |x| >= l (the schedule's lower end) converge to +-1; smaller ones are damped towards
    sign(x) * p(|x|). 3 small matmuls per step, all of symmetric results (polynomials in E commute).
    """
    for t in range(schedule.coeffs.shape[0]):
        a, b, c = _abc(schedule.coeffs, t)
        E2 = symmetric_matmul(E, E)
        E = a * E + symmetric_matmul(E, b * E2 + c * symmetric_matmul(E2, E2) if schedule.quintic[t] else b * E2)
    return E
