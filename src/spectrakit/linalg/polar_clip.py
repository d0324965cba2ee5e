"""Soft and hard spectral clipping by polar iterations in the small Gram space (wide orientation, m <= n).

Soft clip (SPECTRA, Jiang, Semenov, Stich 2026, arXiv 2603.14315): with A = [X/c; I],
msign(A) = A (I + X^T X/c^2)^{-1/2}, so H_c(X) = c * top rows of msign(A) = (I + G/c^2)^{-1/2} X with
G = X X^T. The eigenvalues of B = I + G/c^2 lie in [lo, hi] with lo >= 1 and hi <= 1 + smax^2/c^2, both
from bounds that cost O(m^2) (``_eigen_interval``: trace bounds, and Gershgorin / ||G^2||_F for hi), tightened
on the CPU path by Cholesky certificates where that shortens the schedule; dividing B by alpha >= hi puts
sqrt(eig(B/alpha)) in [l, 1] with l = sqrt(lo/alpha) known, and the polar iteration uses minimax quintics
optimised for [l, 1] (Polar Express, arXiv 2505.16932). A flat or nearly flat spectrum (lo ~ hi) thus needs
a single step at any sigma_max/c. Where the spectrum is narrow (at the float32 tolerance kappa(B) up to ~5.6, e.g.
sigma_max/c up to ~2; at float64's, nearly flat spectra only) and the schedule would take two or more steps, one
fitted polynomial of B (``gram_iteration.inverse_sqrt_direct``) takes 1-2 fewer m x m products for the same
tolerance (CPU path; a given ``steps`` or ``adaptive=False`` keep the Polar Express schedule).
It runs on B itself (``gram_iteration.inverse_sqrt``, fewest matmuls) when one dtype serves throughout, and on the
Cholesky factor of B (``gram_iteration.polar_factor``, B^{-1/2} = L^{-T} msign(L^T)) when B needs float64 but its
factor, with the square root of B's condition number, can be iterated in float32.

Hard clip (Jianlin Su, kexue.fm/archives/11006 and 11059): with M = X/c, O = msign(M),
mclip(M) = 1/2 [(I + S) O + (I - S) M], S = sign(M M^T - I) = sign((M M^T)^{1/2} - I). Where S = -1
(sigma < c) the O terms cancel exactly, so O only has to be accurate for sigma >~ c/2. The sign is taken of
(M M^T)^{1/2} - I (eigenvalues sigma/c - 1) rather than M M^T - I (sigma^2/c^2 - 1): the resolution it needs
relative to the spectrum's width is then tol/ratio instead of tol/ratio^2.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .coefficients import DIRECT_PER_DECADE, grid_index
from .gram_iteration import (
    Schedule,
    direct_plan,
    gather_schedule,
    inverse_sqrt,
    inverse_sqrt_direct,
    polar_factor,
    symmetric_sign,
)
from .symmetric import gram, gram_float64, symmetric_matmul

#: Convergence tolerance of the schedules (relative error of the iteration itself) for float32/16 inputs,
#: below their 1e-3 target with room for rounding; float64 inputs use TOL_FLOAT64.
TOL = 3e-4
TOL_FLOAT64 = 1e-12

#: Upper bounds are inflated by this factor before normalising: the first optimal quintics have slope ~24 at 1,
#: so an eigenvalue pushed just above 1 by rounding (or by the error of Z in the hard clip) would be amplified
#: step after step (the same reason Polar Express divides its coefficients by 1.01).
SAFETY = 1.01

#: The trace lower bound on lambda_min(B) is lowered by this fraction of the upper end before use: it covers
#: rounding in forming G and R = B/alpha (~eps * sqrt(m) of the upper end) many times over. A lower end that
#: is too low only costs steps; one that is too high leaves eigenvalues below it less converged.
LOWER_MARGIN = 1e-3

#: Hard clip: singular values within SIGN_TOL * c of c may have their sign only partly resolved; the
#: resulting error is at most SIGN_TOL / 2 relative to c per such singular value.
SIGN_TOL = 2e-4


def _gram_and_bound(G: Tensor) -> tuple[Tensor, Tensor]:
    """G^2 and an upper bound on lambda_max(G) (shape (B,)) for G = X X^T, without host sync.

    bound = min(Gershgorin(G), sqrt(||G^2||_F)): the second is within a factor rank^{1/4} of lambda_max (and
    below ||G||_F) and costs nothing extra because G^2 is needed by the first polar step anyway; the first
    is tighter for nearly flat spectra.
    """
    G2 = symmetric_matmul(G, G)
    gershgorin = torch.linalg.vector_norm(G, ord=1, dim=-1).amax(-1)  # max absolute row sum, one pass
    return G2, torch.minimum(gershgorin, torch.linalg.matrix_norm(G2).sqrt())


def _trace_bounds(G: Tensor) -> tuple[Tensor, Tensor]:
    """Wolkowicz-Styan bounds (float64, shape (B,)) on the eigenvalues of each symmetric m x m matrix G:
    with t = tr(G)/m and s^2 = ||G - t I||_F^2 / m, t - s sqrt(m - 1) <= lambda_min <= lambda_max <=
    t + s sqrt(m - 1) (equality for G = t I). s is formed from the centred matrix in float64, not as
    tr(G^2)/m - t^2, which cancels catastrophically when the spectrum is nearly flat."""
    m = G.shape[-1]
    D = G.to(torch.float64, copy=True)
    t = D.diagonal(dim1=-2, dim2=-1).mean(-1)
    D.diagonal(dim1=-2, dim2=-1).sub_(t[:, None])
    w = torch.linalg.matrix_norm(D) * math.sqrt((m - 1) / m)
    return t - w, t + w


_Bounds = tuple[Tensor, Tensor] | None


class _Interval(NamedTuple):
    """The eigenvalues of B = I + G/c^2 lie in [lo, hi]; c2 = c^2. All float64, shape (B, 1, 1)."""
    lo: Tensor
    hi: Tensor
    c2: Tensor


def _certified(G: Tensor, below: Tensor, above: Tensor, c2: Tensor) -> tuple[Tensor, Tensor]:
    """Tighter bounds on lambda_min(G) and lambda_max(G) (shape (B,)) where Cholesky factorisations prove them;
    reads the host.

    The trace bounds are t -+ sd sqrt(m - 1) (t, sd: mean and standard deviation of the eigenvalues), loose for
    large m unless the spectrum is flat. t - 2 sd and t + 2 sd are tried where t - 2 sd > 0 and they would select
    a shorter schedule (a smaller grid index of sqrt((1 + lower/c^2)/(1 + upper/c^2))): the float64 Cholesky of
    G - tau I (of tau I - G) completing shows lambda_min(G) > tau (lambda_max(G) < tau) up to its backward error
    (~m^2 eps ||G||, far inside LOWER_MARGIN). Where one fails (an outlying eigenvalue) the trace bound stays.
    Cost 2 m^3/3 float64 multiply-adds, when tried.
    """
    m, c2 = G.shape[-1], c2.flatten()
    sd = (above - below) / (2 * math.sqrt(max(m - 1, 1)))
    lo, hi = (below + above) / 2 - 2 * sd, (below + above) / 2 + 2 * sd

    def index(lower: Tensor, upper: Tensor) -> Tensor:
        return grid_index(((1 + lower.clamp(min=0) / c2) / (SAFETY * (1 + upper / c2))).sqrt())

    tried = (lo > 0) & (index(lo, hi) < index(below, above))  # never for log-spaced, spiky or rank-deficient
    if not bool(tried.any()):
        return below, above
    D = torch.cat([G, -G]).to(torch.float64)
    D.diagonal(dim1=-2, dim2=-1).sub_(torch.cat([lo, -hi])[:, None])
    ok = (torch.linalg.cholesky_ex(D).info == 0).view(2, -1) & tried
    return torch.where(ok[0], lo, below), torch.where(ok[1], hi, above)


def _gram_bounds(G: Tensor, c2: Tensor, certify: bool) -> tuple[Tensor, Tensor]:
    """Bounds (float64, shape (B,)) on the eigenvalues of G: the trace bounds, with ``certify`` tightened by
    ``_certified`` (c2 = c^2 of shape (B, 1, 1) decides where that is worth it)."""
    below, above = _trace_bounds(G)
    return _certified(G, below, above, c2.double()) if certify else (below, above)


def _eigen_interval(bounds: tuple[Tensor, Tensor], c2: Tensor, bound: Tensor | None = None) -> _Interval:
    """The interval for B = I + G/c^2 (c2 of shape (B, 1, 1), made float64) from ``bounds`` on the eigenvalues
    of G (``_gram_bounds``) and ``bound`` >= lambda_max(G): hi = 1 + min(bound, upper bound)/c^2 and
    lo = max(1, 1 + lower bound/c^2 - LOWER_MARGIN hi) (lambda_min(B) >= 1 always; 1 where the lower bound is
    NaN)."""
    c2 = c2.double()
    below, above = (v[:, None, None] / c2 for v in bounds)
    hi = 1 + (above if bound is None else torch.minimum(above, bound[:, None, None].double() / c2))
    return _Interval(torch.fmax(1 + below - LOWER_MARGIN * hi, torch.ones_like(hi)), hi, c2)


#: Precision policy for dtype=None with ``adaptive`` (otherwise float64 throughout), from r = sigma_max/c of each
#: matrix (a stack is split into parts that share a precision, ``_parts``); the soft clip uses the effective ratio
#: r_eff = sqrt(kappa - 1) instead, with kappa = (1 + r^2)/lo an estimate of the condition number of B = I + G/c^2
#: (r_eff = r when lo = 1): the float32 iteration on B propagates rounding errors ~eps * kappa relative to
#: lambda_min(B) = lo, so kappa is what matters (a flat spectrum runs in float32 at any r). Measured relative errors
#: vs float64 SVD for flat, spiky, logspace and rank-deficient spectra (with the float32 tolerance TOL):
#: r <= FP32_MAX_RATIO: float32 throughout (<= 1.5e-4 at r = 16; up to 1.2e-3 at r = 100 on rank-deficient inputs).
#: r <= MIXED_MAX_RATIO: the soft clip forms B and its Cholesky factor in float64 from the float32 X X^T and
#: iterates on the factor (condition number sqrt(kappa)) in float32, as is the product with X: <= 1.8e-4 at r = 100
#: from 128 x 1024 to 768 x 50304, the same as with X X^T formed in float64 (up to 8.7e-5 vs 3.8e-5); beyond, the
#: float32 X X^T costs accuracy: <= 3.4e-4 at r = 200, 8e-4 at 400, 2.3e-3 at 1000. Larger r: float64 throughout,
#: X X^T included. The hard clip has no such middle tier: float64 throughout above FP32_MAX_RATIO.
FP32_MAX_RATIO = 16.0
MIXED_MAX_RATIO = 200.0


def _ratio_estimate(G: Tensor, cn: Tensor, products: int = 4) -> Tensor:
    """sigma_max/c of each matrix (float64, shape (B,)) from ``products`` normalised products with G = X X^T from a
    seeded random start: v_k = G v_{k-1} / ||G v_{k-1}||, lambda = ||G v_{products - 1}|| = ||G^p v|| / ||G^(p-1) v||
    <= lambda_max(G) = sigma_max^2 (O(m^2) per product; a lower estimate, which ``_missed_large_ratio`` backs up).
    NaN gives inf."""
    gen = torch.Generator(device=G.device).manual_seed(0)
    v = torch.randn(G.shape[0], G.shape[-1], 1, generator=gen, dtype=G.dtype, device=G.device)
    for _ in range(products):
        w = G @ v
        lam = torch.linalg.vector_norm(w, dim=-2, keepdim=True)
        v = w / lam.clamp_min(torch.finfo(G.dtype).tiny)
    return (lam.flatten().double().sqrt() / cn).nan_to_num(float("inf"))


#: ``_frobenius``'s host check: with 1/UNSCALED_RANGE < ||X||_F < UNSCALED_RANGE, the float32 entries of X X^T that
#: matter (down to ~1e-8 ||X||_F^2) are normal numbers and none overflows, so X X^T is formed from X itself and the
#: small Gram matrix divided by ||X||_F^2 afterwards (no scaled copy of X).
UNSCALED_RANGE = 1e15


def _frobenius(X: Tensor, adaptive: bool) -> tuple[Tensor, bool]:
    """||X||_F per matrix in float64, clamped to [1e-300, 1e300], and whether all lie within UNSCALED_RANGE.
    Computed in X's dtype where a host check (``adaptive`` only) shows no overflow or underflow (one pass, no
    float64 copy), else in float64 (and the range is not claimed)."""
    if adaptive and X.dtype != torch.float64:
        s = torch.linalg.vector_norm(X, dim=(-2, -1))
        lo, hi = (float(v) for v in s.aminmax())  # one host read of each
        if lo > 1e-18 and hi < 1e18:
            return s.double(), lo > 1 / UNSCALED_RANGE and hi < UNSCALED_RANGE
    return torch.linalg.vector_norm(X, dim=(-2, -1), dtype=torch.float64).clamp(1e-300, 1e300), False


class _Part(NamedTuple):
    """The matrices of a batch that share a precision: their indices in the batch (None: all of them), c/s and
    s = ||X||_F (float64, shape (b,)), the early and late dtypes, G = (X/s)(X/s)^T in the early dtype and its
    ``_gram_bounds`` when already computed (else None)."""
    rows: slice | Tensor | None
    cn: Tensor
    scale: Tensor
    early: torch.dtype
    late: torch.dtype
    G: Tensor
    bounds: _Bounds


def _parts(X: Tensor, c: Tensor, adaptive: bool, dtype: torch.dtype | None, by_condition: bool) -> list[_Part]:
    """The batch split by precision (one part when all matrices share one).

    Spectral maps obey f_{c/s}(X/s) = f_c(X)/s with s = ||X||_F: the scaling keeps X X^T and its square in
    range at any scale of X. With ``dtype`` given, float64 inputs or not ``adaptive``: one part in that dtype
    (float64 for None). Otherwise each matrix gets the policy above from its own ratio: float32 throughout
    without any extra work when ||X||_F/c <= FP32_MAX_RATIO for all (sigma_max <= ||X||_F), else from a power
    estimate on the float32 Gram matrix (kept for the float32 part and, upcast, for the soft clip's mixed part);
    ``by_condition``: the effective ratio (condition number of B) instead of r. The float64 parts form X X^T of
    their matrices in float64 (``gram_float64``: exact products of the float32/16 entries, then divided by s^2, no
    float64 copy of X); the float32 Gram matrix is divided by s^2 after the product where ``_frobenius`` allows it.
    """
    s, unscaled = _frobenius(X, adaptive)
    if dtype is not None or not adaptive or X.dtype == torch.float64:
        work = dtype or torch.float64
        if work != torch.float64:
            s = s.clamp(1.2e-38, 3e38)  # float32 normal range
        return [_Part(None, c.double() / s, s, work, work, gram(X.to(work) / s.to(work)[:, None, None]), None)]
    s32 = s.clamp(1.2e-38, 3e38)
    cn = c.double() / s32
    if unscaled:
        G = gram(X.float()).div_((s32 * s32).float()[:, None, None])
    else:
        G = gram(X.float() / s32.float()[:, None, None])
    if float((1 / cn).max()) <= FP32_MAX_RATIO:
        return [_Part(None, cn, s32, torch.float32, torch.float32, G, None)]
    r = _ratio_estimate(G, cn)
    bounds = None
    if by_condition:
        c2 = (cn * cn)[:, None, None]
        bounds = _gram_bounds(G, c2, certify=True)
        r = ((1 + r * r) / _eigen_interval(bounds, c2).lo.flatten() - 1).clamp_min(0).sqrt()
    tier = (r > FP32_MAX_RATIO).long() + (r > MIXED_MAX_RATIO).long()  # 0 float32, 1 mixed, 2 float64
    if not by_condition:  # the hard clip runs in float64 throughout above FP32_MAX_RATIO
        tier = tier.clamp(max=1)
    parts, tiers = [], tier.tolist()
    for t in sorted(set(tiers)):
        rows = _rows([i for i, ti in enumerate(tiers) if ti == t], len(tiers), X.device)

        def pick(v: Tensor, rows: slice | Tensor | None = rows) -> Tensor:
            return v if rows is None else v[rows]
        if t == 0 or (t == 1 and by_condition):  # the soft clip's mixed part starts from the float32 G too
            given = None if bounds is None else (pick(bounds[0]), pick(bounds[1]))
            early = torch.float32 if t == 0 else torch.float64
            parts.append(_Part(rows, pick(cn), pick(s32), early, torch.float32, pick(G).to(early), given))
        else:
            sd = pick(s).clamp_min(1e-100)  # a float32/16 X has s >= 1e-45 unless it is zero (then G = 0)
            Gd = gram_float64(pick(X)).div_((sd * sd)[:, None, None])
            parts.append(_Part(rows, pick(c).double() / sd, sd, torch.float64, torch.float64, Gd, None))
    return parts


def _rows(indices: list[int], size: int, device: torch.device) -> slice | Tensor | None:
    """The batch rows ``indices`` of a batch of ``size``: None for all of them, a slice (a view, no copy) when they
    are consecutive, else an index tensor."""
    if len(indices) == size:
        return None
    if indices[-1] - indices[0] + 1 == len(indices):
        return slice(indices[0], indices[-1] + 1)
    return torch.tensor(indices, device=device)


def _missed_large_ratio(bound: Tensor, c2: Tensor, interval: _Interval | None) -> bool:
    """Backstop for the float32 choice (reads the host, adaptive mode only): the power-iteration estimate
    missed a large sigma_max/c (unlucky start), or with the ``interval`` a large effective ratio (kappa <=
    hi/lo). The bound is at most rank^(1/4) loose, so this never fires when the ratio is <= FP32_MAX_RATIO for
    matrices with rank up to ~10^5."""
    excess = bound[:, None, None] / c2 if interval is None else interval.hi / interval.lo - 1
    return float(excess.max()) > (4 * FP32_MAX_RATIO) ** 2


class _Setup(NamedTuple):
    """What both polar clips start from, for one ``_Part``: c^2 (b, 1, 1) and s of the scaled matrices X/s, the
    early and late dtypes, G = (X/s)(X/s)^T, G^2, the bound on lambda_max(G) and, with ``by_condition``, the
    interval holding the eigenvalues of I + G/c^2 (``_eigen_interval``; else None)."""
    c2: Tensor
    scale: Tensor
    early: torch.dtype
    late: torch.dtype
    G: Tensor
    G2: Tensor
    bound: Tensor
    interval: _Interval | None


def _setup(part: _Part, adaptive: bool, dtype: torch.dtype | None, by_condition: bool) -> _Setup | None:
    """Form G^2 and the bound (and the eigenvalue interval) of ``part``; None when float32 was chosen from the
    estimate but the bound shows the (effective) ratio is large (the caller redoes the part in float64)."""
    G2, bound = _gram_and_bound(part.G)
    interval = None
    if by_condition:
        c2 = (part.cn * part.cn)[:, None, None]
        interval = _eigen_interval(part.bounds or _gram_bounds(part.G, c2, certify=adaptive), c2, bound)
    cn = part.cn.to(part.early)
    c2 = (cn * cn)[:, None, None]
    if part.early == torch.float32 and dtype is None and _missed_large_ratio(bound, c2, interval):
        return None
    return _Setup(c2, part.scale, part.early, part.late, part.G, G2, bound, interval)


def _left_multiply(F: Tensor, X: Tensor, out: Tensor | None = None) -> Tensor:
    """F @ X in the memory layout of X (written into ``out``, of X's shape, layout and dtype, when given): a
    transposed view X (a tall matrix taken in the wide orientation) gets (X^T F^T)^T, whose transpose back to the
    caller's orientation is contiguous."""
    if X.mT.is_contiguous() and not X.is_contiguous():
        return (X.mT @ F.mT).mT if out is None else torch.matmul(X.mT, F.mT, out=out.mT).mT
    return F @ X if out is None else torch.matmul(F, X, out=out)


_PartClip = Callable[[Tensor, _Setup, int | None, bool, Tensor | None], tuple[Tensor, Tensor]]


def _clip_by_parts(clip_part: _PartClip, X: Tensor, c: Tensor, steps: int | None, adaptive: bool,
                   dtype: torch.dtype | None, by_condition: bool) -> tuple[Tensor, Tensor]:
    """Run ``clip_part`` on each precision part of the batch X (``_parts``; a part whose float32 choice the bound
    refutes runs in float64) and put the results in batch order, in X's memory layout: a part of consecutive
    matrices writes its last product straight into its slice of the result when its dtype is the result's."""
    parts = _parts(X, c, adaptive, dtype, by_condition)
    if parts[0].rows is None:
        return clip_part(X, _setup_or_float64(parts[0], X, c, adaptive, dtype, by_condition), steps, adaptive, None)
    Y = torch.empty_like(X, dtype=functools.reduce(torch.promote_types, (p.late for p in parts)))
    bound = X.new_empty(X.shape[:1], dtype=torch.float64)
    native = X.is_contiguous() or X.mT.is_contiguous()  # a layout the last product writes as it is
    for part in parts:
        setup = _setup_or_float64(part, X[part.rows], c[part.rows], adaptive, dtype, by_condition)
        direct = native and isinstance(part.rows, slice) and setup.late == Y.dtype
        Yp, bp = clip_part(X[part.rows], setup, steps, adaptive, Y[part.rows] if direct else None)
        if Yp.dtype != Y.dtype:  # the float64 redo of a float32 part where the rest is float32
            Y = Y.double()
        if not direct:
            Y[part.rows] = Yp.to(Y.dtype)
        bound[part.rows] = bp.double()
    return Y, bound


def _setup_or_float64(part: _Part, X: Tensor, c: Tensor, adaptive: bool, dtype: torch.dtype | None,
                      by_condition: bool) -> _Setup:
    """``_setup`` of the part of X (and c), redone in float64 where the bound refutes its float32 choice."""
    setup = _setup(part, adaptive, dtype, by_condition)
    if setup is None:
        setup = _setup(_parts(X, c, adaptive, torch.float64, by_condition)[0], adaptive, torch.float64, by_condition)
    return setup


def _with_unit_diagonal_added(A: Tensor, diag: Tensor) -> Tensor:
    """A + diag * I for a batch (diag of shape (B, 1, 1)), without materialising I (in place on A)."""
    A.diagonal(dim1=-2, dim2=-1).add_(diag[:, :, 0])
    return A


def soft_clip_polar(X: Tensor, c: Tensor, *, steps: int | None, adaptive: bool,
                    dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
    """(H_c(X), sigma_bound) for a (B, m <= n) batch X; c of shape (B,); result in float32 or float64.

    dtype float32/float64: everything in that dtype; None: the mixed policy above (by the effective ratio, per
    matrix). The schedule is the one for l = sqrt(lo/alpha), alpha = SAFETY * hi, [lo, hi] from
    ``_eigen_interval``.
    """
    return _clip_by_parts(_soft_clip_part, X, c, steps, adaptive, dtype, by_condition=True)


def _soft_clip_part(X: Tensor, setup: _Setup, steps: int | None, adaptive: bool, out: Tensor | None
                    ) -> tuple[Tensor, Tensor]:
    """H_c(X) = M X with M = (I + G/c^2)^{-1/2} from the polar iteration on R = (I + G/c^2)/alpha (the product
    written into ``out`` when given)."""
    tol = TOL_FLOAT64 if X.dtype == torch.float64 else TOL
    _, scale, early, late, G, G2, bound, (lo, hi, c2) = setup
    alpha = hi * SAFETY
    # R = (I + G/c^2)/alpha and R^2 = (I + 2 G/c^2 + G^2/c^4)/alpha^2, with the identity added on the diagonal;
    # the factors are formed in float64 (in float32, c^4 and alpha^2 under- or overflow at large sigma_max/c)
    inv, g = 1 / alpha, 1 / (alpha * c2)
    R = _with_unit_diagonal_added(G * g.to(early), inv.to(early))
    R2 = _with_unit_diagonal_added(torch.addcmul(G2 * (g * g).to(early), G, (2 * g * inv).to(early)),
                                   (inv * inv).to(early))
    l = (lo * inv).sqrt().flatten()  # sqrt(lambda_min(R))
    schedule = gather_schedule(grid_index(l), steps, late, tol, adaptive)
    if early == late:
        products = -1
        if adaptive and steps is None:  # a narrow spectrum (small sigma_max/c): a direct polynomial where cheaper
            fine = grid_index(l, DIRECT_PER_DECADE)
            products = direct_plan(fine.tolist(), schedule, tol)
        Q = inverse_sqrt(R, R2, schedule) if products < 0 else inverse_sqrt_direct(R, R2, fine, products, tol)
        M = Q * alpha.rsqrt().to(early)
    else:
        M = _inverse_sqrt_by_factor(R, R2, inv, schedule, late)
    # M ~ (I + G/c^2)^{-1/2} has eigenvalues in (0, 1] and is scale-free: it applies to the unscaled input
    return _left_multiply(M, X.to(late), out), bound.sqrt() * scale


def _inverse_sqrt_by_factor(R: Tensor, R2: Tensor, inv: Tensor, schedule: Schedule, dtype: torch.dtype
                            ) -> Tensor:
    """(alpha R)^{-1/2} = (I + G/c^2)^{-1/2} for R and R2 = R^2 given in a precise dtype, iterating in ``dtype``.

    With alpha R = L L^T (Cholesky, in R's dtype): msign(L^T) = L^T (alpha R)^{-1/2}, so
    (alpha R)^{-1/2} = L^{-T} msign(L^T). The factor L has condition number sqrt(kappa(R)), so it can be
    rounded to float32 where R cannot, and ``polar_factor`` recomputes its Gram matrix from the iterate.
    """
    L = torch.linalg.cholesky_ex(R / inv).L  # no error check, so no host sync (R >= I/alpha is positive definite)
    Lt = L.mT.to(dtype)
    U = polar_factor(Lt * inv.sqrt().to(dtype), R.to(dtype), R2.to(dtype), schedule)
    return torch.linalg.solve_triangular(Lt, U, upper=True)


def hard_clip_polar(X: Tensor, c: Tensor, *, steps: int | None, adaptive: bool,
                    dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
    """(hard clip of X at c, sigma_bound) for a (B, m <= n) batch X; c of shape (B,).

    Computed in ``dtype``; None = float64, or float32 when ``adaptive`` and a power-iteration estimate of
    sigma_max/c is <= FP32_MAX_RATIO (per matrix; the sign iteration has no well-conditioned late phase to run
    in float32).

    With Gh = G/c^2 and beta = max(1, bound/c^2): Z = Gh^{-1/2} from the polar iteration on Gh/beta
    (accurate for sigma >= c/2), Gh^{1/2} = Gh Z, S = sign((Gh^{1/2} - I)/gamma) with gamma = max(1, sqrt(beta)),
    and hard_clip(X) = 1/2 [(I + S) Z + (I - S)] X.  ``steps`` (if given) is used for both iterations.
    """
    return _clip_by_parts(_hard_clip_part, X, c, steps, adaptive, dtype, by_condition=False)


def _hard_clip_part(X: Tensor, setup: _Setup, steps: int | None, adaptive: bool, out: Tensor | None
                    ) -> tuple[Tensor, Tensor]:
    """hard_clip(X) = F X with F = 1/2 [(I + S) Z + (I - S)] (see ``hard_clip_polar``; the product written into
    ``out`` when given)."""
    tol = TOL_FLOAT64 if X.dtype == torch.float64 else TOL
    c2, scale, dtype, _, G, G2, bound, _ = setup
    beta = torch.clamp(bound[:, None, None] / c2, min=1.0) * SAFETY
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    Gh = G / c2
    idx_z = grid_index(0.5 * beta.rsqrt().flatten())
    Qz = inverse_sqrt(Gh / beta, G2 / (c2 * c2 * beta * beta),
                      gather_schedule(idx_z, steps, dtype, tol, adaptive),
                      symmetric=False)
    Z = Qz * beta.rsqrt()
    gamma = beta.sqrt() * SAFETY
    E = Gh @ Z
    E = (0.5 * (E + E.mT) - eye) / gamma  # symmetric in exact arithmetic (Gh and Z commute); keep it so
    idx_s = grid_index(SIGN_TOL / gamma.flatten())
    # S multiplies X itself in (I - S) X: an error e in S costs e * sigma_max/c, so S is converged to TOL_FLOAT64
    S = symmetric_sign(E, gather_schedule(idx_s, steps, dtype, TOL_FLOAT64, adaptive))
    F = 0.5 * ((eye + S) @ Z + (eye - S))  # S and Z commute only approximately: a full product
    return _left_multiply(F, X.to(dtype), out), bound.sqrt() * scale
