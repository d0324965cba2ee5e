"""The multiplier of SSO's tangent step (Xie et al. 2026, "Controlled LLM Training on Spectral Sphere",
arXiv 2601.08393): the steepest unit-spectral-norm direction Phi of M_hat that is tangent to the spectral
sphere at a matrix with top singular pair (u, v), Theta = u v^T, is

    Phi = msign(M_hat + lambda* Theta),    lambda* = root of h(lambda) = <Theta, msign(M_hat + lambda Theta)>

(||Phi||_2 = 1, <Theta, Phi> = 0). h is the derivative of the convex function lambda -> ||M_hat + lambda Theta||_*
(msign(X) is a subgradient of the nuclear norm at X), so it is non-decreasing, from -1 to 1, and its root is
found by bracketing then bisection (or false position, see :func:`solve_multiplier`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ._validate import check_choice
from .msign import msign

SOLVERS = ("bisection", "illinois")
#: Illinois bracketing: an outward trial past the secant root by this factor of its distance (h is convex or
#: concave in places; overshooting brackets the root in one trial where the secant is close).
SECANT_OVERSHOOT = 1.5


class Multiplier(NamedTuple):
    """The solver's answer for a batch of matrices (all tensors batched over their leading dims)."""

    lam: Tensor  # lambda* (float64 for float64 inputs, else float32)
    phi: Tensor  # msign(M_hat + lambda* Theta)
    h: Tensor  # <Theta, phi>, float32
    calls: int  # msign evaluations (each one batched over the matrices it needs)
    fallback: Tensor  # bool: bracketing failed, lambda = 0 was used


class RankOneProblem(NamedTuple):
    """SSO's problem for Theta = u v^T as a wide q x p' one (see :func:`rank_one_problem`)."""

    M: Tensor  # (..., q, p'): M_hat Q, or the wide M_hat itself (with a zero column when square)
    Theta: Tensor  # (..., q, p'): u z^T, z = Q^T v (or u v^T, padded alike)
    basis: Tensor | None  # Q, (..., p, q + 1), orthonormal columns; None: M is the wide M_hat
    columns: int  # p, the columns of the wide M_hat
    transposed: bool  # M_hat was tall: M and Theta are those of M_hat^T

    def expand(self, phi: Tensor) -> Tensor:
        """msign(M_hat + lambda Theta) from phi = msign(M + lambda Theta): phi Q^T, or phi without its padding
        column; transposed back if M_hat was tall."""
        full = phi @ self.basis.mT if self.basis is not None else phi[..., :self.columns]
        return full.mT if self.transposed else full


def solver_shape(rows: int, cols: int) -> tuple[int, int]:
    """The shape (q, p') of :func:`rank_one_problem`'s matrices for a rows x cols M_hat: q = min(rows, cols) and
    p' = q + 1 where the (q + 1)-column basis saves >= 20% (5 (q + 1) <= 4 p, p = max(rows, cols)) or M_hat is
    square (padded), else p' = p."""
    q, p = min(rows, cols), max(rows, cols)
    return (q, q + 1) if p == q or 5 * (q + 1) <= 4 * p else (q, p)


def rank_one_problem(M_hat: Tensor, u: Tensor, v: Tensor) -> RankOneProblem:
    """The solver's matrices for Theta = u v^T, wide and of shape ``solver_shape(*M_hat.shape[-2:])``, so that
    problems of different shapes with the same q can be stacked into one solve (as SSO does).

    In the wide orientation (M_hat q x p, q <= p; a tall M_hat is transposed, and u, v swap), every row of
    A(lambda) = M_hat + lambda u v^T lies in the span of M_hat's rows and v. The QR factorisation
    [M_hat^T, v] = Q R (Q: p x (q + 1), orthonormal columns) gives M_hat Q = R[:, :q]^T and z = Q^T v = R[:, q],
    so that A(lambda) = (R[:, :q]^T + lambda u z^T) Q^T and, Q^T having orthonormal rows,
    msign(A(lambda)) = msign(R[:, :q]^T + lambda u z^T) Q^T,  <Theta, msign(A)> = <u z^T, msign(R[:, :q]^T + ...)>,
    with the same Frobenius norm, so the same normalised polar iteration. An evaluation then costs ~q/p of one
    on A (products of q x (q + 1) instead of q x p matrices). Where that saves < 20% the problem stays M_hat;
    a square one gets a zero column (msign([A, 0]) = [msign(A), 0] exactly; 1/q more work), so that it
    shares a stack with the reduced problems of its q.
    """
    for name, t, size in (("u", u, M_hat.shape[-2]), ("v", v, M_hat.shape[-1])):
        if not isinstance(t, Tensor) or t.shape != (*M_hat.shape[:-2], size):
            raise ValueError(f"Theta = (u, v): {name} must have shape {(*M_hat.shape[:-2], size)}, got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    transposed = M_hat.shape[-2] > M_hat.shape[-1]
    if transposed:
        M_hat, u, v = M_hat.mT, v, u
    q, p = M_hat.shape[-2:]
    u, v = u.to(M_hat.dtype), v.to(M_hat.dtype)
    width = solver_shape(q, p)[1]
    if width >= p:  # M_hat itself, with a zero column when square (width = p + 1)
        if width > p:
            M_hat, v = torch.nn.functional.pad(M_hat, (0, 1)), torch.nn.functional.pad(v, (0, 1))
        return RankOneProblem(M_hat, u[..., :, None] * v[..., None, :], None, p, transposed)
    Q, R = torch.linalg.qr(torch.cat([M_hat.mT, v[..., :, None]], dim=-1))
    return RankOneProblem(R[..., :q].mT, u[..., :, None] * R[..., q][..., None, :], Q, p, transposed)


def _evaluate(msign_fn: Callable[[Tensor], Tensor], M_hat: Tensor, Theta: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    phi = msign_fn(M_hat + lam[..., None, None].to(M_hat.dtype) * Theta)
    return phi, (Theta.to(lam.dtype) * phi.to(lam.dtype)).sum(dim=(-2, -1))


def _secant_reach(doubling: Tensor, lam0: Tensor, h0: Tensor, last: Tensor, h_last: Tensor, sign0: Tensor,
                  reach: float) -> Tensor:
    """The next outward trial of the Illinois bracketing: past the secant root of the two points on h(lambda_0)'s
    side, (lambda_0, h_0) and the last one, by SECANT_OVERSHOOT of its distance, if that is farther than the
    doubling trial (never nearer, so never slower to bracket than doubling), and at most ``reach`` from lambda_0
    (the doubling's own range). Before the first expansion the two points coincide and the doubling trial is kept.
    """
    slope = (h_last - h0) / torch.where(last == lam0, 1.0, last - lam0)
    usable = (last != lam0) & (slope > 0)  # h is non-decreasing; a flat or noisy pair says nothing
    secant = last - SECANT_OVERSHOOT * h_last / torch.where(usable, slope, 1.0)
    farther = usable & ((secant - doubling) * sign0 < 0)  # outward is against sign0
    limit = lam0 - sign0 * reach
    return torch.where(farther, torch.where((secant - limit) * sign0 < 0, limit, secant), doubling)


def solve_multiplier(M_hat: Tensor, Theta: Tensor | tuple[Tensor, Tensor], lam0: Tensor | None = None, *,
                     method: str = "bisection",
                     tol: float = 2e-4, max_iter: int = 20, bracket_steps: int = 10,
                     bracket_start: float = 1e-3, msign_fn: Callable[[Tensor], Tensor] = msign,
                     sync: bool = True) -> Multiplier:
    """Root of h(lambda) = <Theta, msign(M_hat + lambda Theta)> for every matrix of a batch (..., m, n).

    From lambda_0 (``lam0``, the previous step's root; 0 when None): if |h(lambda_0)| <= tol stop; else step
    away against sign(h(lambda_0)) by ``bracket_start`` * 2^j, j < ``bracket_steps``, until h changes sign,
    then shrink the bracket up to ``max_iter`` times until |h| <= tol: by bisection (``method="bisection"``,
    Xie et al. 2026, Alg. 1) or by false position with the Illinois modification (``method="illinois"``: the
    secant point of the bracket, halving the stored h of an end kept twice in a row; superlinear where h is
    smooth). "illinois" also brackets faster: from the second outward trial on it goes past the secant root
    of (lambda_0, h(lambda_0)) and the last trial where that is farther than the doubling (``_secant_reach``).
    The evaluated lambda with the smallest |h| is returned. A matrix whose bracketing fails takes
    lambda = 0 (as in the paper).

    h can jump: where M_hat + lambda Theta loses rank (one lambda always does for square matrices), msign
    jumps and h has no zero, only a sign change. When the budget ends on such a bracket [lo, hi] with
    |h| > tol, the answer is the convex combination Phi = w Phi(lo) + (1 - w) Phi(hi) with w h(lo) +
    (1 - w) h(hi) = 0: still ||Phi||_2 <= 1, exactly tangent, and at a jump the right element of the nuclear
    norm's subdifferential (the tangent steepest direction).

    All matrices advance together: each round is ONE batched msign call, and the per-matrix bookkeeping is done
    with ``torch.where`` on the device. ``sync=True`` reads on the host, once per round, how many matrices are
    unfinished: the round evaluates only those (``nonzero_static``, no second read), and the loop ends when none
    is left; ``sync=False`` evaluates every matrix in all ``bracket_steps + max_iter`` rounds (no host sync at all).

    ``Theta`` is the (..., m, n) matrix, or the pair (u, v) of unit vectors of a rank-one Theta = u v^T (SSO's):
    then every msign runs on ``rank_one_problem``'s matrix, a q x (q + 1) one where that saves work (q = min(m, n)),
    the same iteration in exact arithmetic.
    """
    check_choice(method, "method", SOLVERS)
    if isinstance(Theta, tuple):
        problem = rank_one_problem(M_hat, *Theta)
        answer = solve_multiplier(problem.M, problem.Theta, lam0, method=method, tol=tol, max_iter=max_iter,
                                  bracket_steps=bracket_steps, bracket_start=bracket_start, msign_fn=msign_fn,
                                  sync=sync)
        return answer._replace(phi=problem.expand(answer.phi))
    if M_hat.dim() != 3:  # one batch dimension, so that a round can index its unfinished matrices
        batch, shape = M_hat.shape[:-2], M_hat.shape[-2:]
        flat = solve_multiplier(M_hat.reshape(-1, *shape), Theta.reshape(-1, *shape),
                                None if lam0 is None else lam0.reshape(-1), method=method, tol=tol,
                                max_iter=max_iter, bracket_steps=bracket_steps, bracket_start=bracket_start,
                                msign_fn=msign_fn, sync=sync)
        return Multiplier(flat.lam.reshape(batch), flat.phi.reshape(*batch, *shape), flat.h.reshape(batch),
                          flat.calls, flat.fallback.reshape(batch))
    batch = M_hat.shape[:-2]
    at_zero = lam0 is None
    scalar = torch.float64 if M_hat.dtype == torch.float64 else torch.float32
    lam0 = torch.zeros(batch, device=M_hat.device, dtype=scalar) if lam0 is None else lam0.to(scalar)
    phi, h = _evaluate(msign_fn, M_hat, Theta, lam0)
    h0 = h
    calls = 1
    phi_zero, h_zero = (phi, h) if at_zero else (None, None)
    sign0 = torch.where(h >= 0, 1.0, -1.0).to(scalar)
    best_lam, best_h, best_phi = lam0, h, phi
    done = h.abs() <= tol
    failed = torch.zeros_like(done)
    bracketed = torch.zeros_like(done)
    # The bracket: ``low`` lies on h(lambda_0)'s side of the root, ``high`` on the other side; ``h_*`` are their
    # h values, ``f_*`` the ones false position uses (Illinois halves the f of an end kept twice).
    low, h_low, f_low, phi_low = lam0, h, h, phi
    high, h_high, f_high, phi_high = lam0, h, h, phi
    kept = torch.zeros_like(lam0)  # +1: the last shrink replaced ``high`` (kept ``low``), -1: the reverse
    expansions = torch.zeros_like(lam0)
    shrinks = torch.zeros_like(lam0)
    for _ in range(bracket_steps + max_iter):
        active = ~(done | failed)
        if sync:
            remaining = int(active.sum())  # the round's one host read
            if remaining == 0:
                break
        outward = lam0 - sign0 * bracket_start * torch.exp2(expansions)
        inner = 0.5 * (low + high)
        if method == "illinois":
            outward = _secant_reach(outward, lam0, h0, low, h_low, sign0, bracket_start * 2.0**bracket_steps)
            gap = f_high - f_low
            inner = torch.where(gap == 0, inner, (low * f_high - high * f_low) / torch.where(gap == 0, 1.0, gap))
        trial = torch.where(active, torch.where(bracketed, inner, outward), best_lam)
        if sync and remaining < len(active):  # only the unfinished matrices; the rest keep their best
            rows = torch.nonzero_static(active, size=remaining).squeeze(-1)
            phi_rows, h_rows = _evaluate(msign_fn, M_hat[rows], Theta[rows], trial[rows])
            phi, h = best_phi.index_copy(0, rows, phi_rows), best_h.index_copy(0, rows, h_rows)
        else:
            phi, h = _evaluate(msign_fn, M_hat, Theta, trial)
        calls += 1
        better = active & (h.abs() < best_h.abs())
        best_lam, best_h = torch.where(better, trial, best_lam), torch.where(better, h, best_h)
        best_phi = torch.where(better[..., None, None], phi, best_phi)
        same_side = h * sign0 > 0
        expanding, shrinking = active & ~bracketed, active & bracketed
        to_low, to_high = active & same_side, active & ~same_side
        if method == "illinois":
            f_low = torch.where(shrinking & to_high & (kept > 0), 0.5 * f_low, f_low)
            f_high = torch.where(shrinking & to_low & (kept < 0), 0.5 * f_high, f_high)
            kept = torch.where(shrinking, torch.where(to_high, 1.0, -1.0).to(scalar), kept)
        low, h_low, f_low = (torch.where(to_low, new, old) for new, old in ((trial, low), (h, h_low), (h, f_low)))
        high, h_high, f_high = (torch.where(to_high, new, old) for new, old in ((trial, high), (h, h_high),
                                                                                 (h, f_high)))
        phi_low = torch.where(to_low[..., None, None], phi, phi_low)
        phi_high = torch.where(to_high[..., None, None], phi, phi_high)
        bracketed = bracketed | (expanding & ~same_side)
        expansions = expansions + expanding.to(scalar)
        shrinks = shrinks + shrinking.to(scalar)
        converged = active & (h.abs() <= tol)
        failed = failed | (expanding & same_side & ~converged & (expansions >= bracket_steps))
        done = done | converged | (shrinking & (shrinks >= max_iter))
    # A bracket that ended with |h| > tol (a jump of h, or noise): the tangent convex combination of its ends.
    blend = bracketed & (best_h.abs() > tol)
    w = h_high / torch.where(blend, h_high - h_low, 1.0)
    best_lam = torch.where(blend, w * low + (1 - w) * high, best_lam)
    best_h = torch.where(blend, w * h_low + (1 - w) * h_high, best_h)
    wm = w[..., None, None].to(phi.dtype)
    best_phi = torch.where(blend[..., None, None], wm * phi_low + (1 - wm) * phi_high, best_phi)
    fallback = failed & ~done
    if not sync or bool(fallback.any()):
        zero = torch.zeros_like(lam0)
        if phi_zero is None:
            phi_zero, h_zero = _evaluate(msign_fn, M_hat, Theta, zero)
            calls += 1
        best_lam, best_h = torch.where(fallback, zero, best_lam), torch.where(fallback, h_zero, best_h)
        best_phi = torch.where(fallback[..., None, None], phi_zero, best_phi)
    return Multiplier(best_lam, best_phi, best_h, calls, fallback)
