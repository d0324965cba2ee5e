"""Polar-Express-style coefficients: per-step minimax odd quintics for a known singular-value interval.

For singular values in [l, u], the step p(x) = a x + b x^3 + c x^5 minimising max_{x in [l, u]} |1 - p(x)|
equioscillates at four points l < x1 < x2 < u (Amsel, Persson, Musco, Gower 2025, arXiv 2505.16932):
p(l) = 1 - E, p(x1) = 1 + E, p(x2) = 1 - E, p(u) = 1 + E, with x1, x2 the critical points of p
(roots of a + 3 b y + 5 c y^2 = 0 in y = x^2). A Remez exchange solves the 4x4 linear system for
(a, b, c, E), moves x1, x2 to the new critical points and repeats. The next interval is
[p(l), 2 - p(l)]. As in the paper, the lower end used for the fit is cushioned to at least
``cushion * u`` (then p is rescaled so the new interval is centred on 1), which keeps the
coefficients moderate for tiny l; the paper's cushion reproduces its published table for l = 1e-3.

When the Newton-Schulz cubic p(x) = (3x - x^3)/2 (error 1.5 e^2 + 0.5 e^3 on [1 - e, 1 + e]) already meets the
tolerance, it is the last step instead of a quintic: in the Gram-space iterations it needs no squared iterate,
one matmul fewer. Schedules are padded with that cubic (it keeps converged values converged).

The coefficients are derived once per grid point and cached (``schedule_table``); callers gather
each matrix's row by index, so no host synchronisation is needed to use per-matrix schedules.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

#: Cushion of the Polar Express paper (fit on [max(l, cushion*u), u]).
CUSHION = 0.02407327424182761
#: A schedule stops once 1 - l_t <= tol (singular values of the iterate within tol of 1); default tol.
CONVERGED = 1e-6
#: Grid of lower ends l_j = 10 ** (-j / GRID_PER_DECADE), j = 0 .. GRID_DECADES * GRID_PER_DECADE. Below
#: the last point (l < 1e-8) the last row is used: the result is then less accurate, but stays finite.
GRID_PER_DECADE = 16
GRID_DECADES = 8
#: Newton-Schulz quintic (15 x - 10 x^3 + 3 x^5) / 8, the limit of the optimal steps as l -> 1.
LIMIT_QUINTIC = (1.875, -1.25, 0.375)
#: Newton-Schulz cubic (3 x - x^3) / 2: the finishing step when it meets the tolerance, and the padding.
NEWTON_SCHULZ_CUBIC = (1.5, -0.5, 0.0)


def optimal_quintic(l: float, u: float = 1.0, iters: int = 60) -> tuple[float, float, float, float]:
    """Minimax odd quintic on [l, u] approximating 1: returns (a, b, c, E) with max |1 - p| = E."""
    if not 0 < l < u:
        raise ValueError(f"need 0 < l < u, got l={l!r}, u={u!r}")
    if 1 - l / u < 1e-4:  # the exchange is ill-conditioned here; the limit quintic is within E ~ 3 (1 - l/u)^3
        a, b, c = LIMIT_QUINTIC
        return a / u, b / u**3, c / u**5, 2.5 * (1 - l / u) ** 3
    pts = [l, l + 0.25 * (u - l), l + 0.75 * (u - l), u]
    a = b = c = E = 0.0
    for _ in range(iters):
        A = np.array([[x, x**3, x**5, s] for x, s in zip(pts, (1.0, -1.0, 1.0, -1.0))])
        a, b, c, E = (float(v) for v in np.linalg.solve(A, np.ones(4)))
        disc = math.sqrt(max(9 * b * b - 20 * a * c, 0.0))
        y1, y2 = sorted(((-3 * b - disc) / (10 * c), (-3 * b + disc) / (10 * c)))
        new = [l, math.sqrt(max(y1, 0.0)), math.sqrt(max(y2, 0.0)), u]
        if max(abs(p - q) for p, q in zip(new, pts)) <= 1e-13 * u:
            break
        pts = new
    return a, b, c, E


def polar_schedule(l: float, *, tol: float = CONVERGED, cushion: float = CUSHION,
                   max_steps: int = 40) -> list[tuple[float, float, float]]:
    """Coefficients (a, b, c) of the quintic steps that take singular values in [l, 1] to within ``tol`` of 1.

    Step t fits the minimax quintic on [max(l_t, cushion*u_t), u_t], rescales it so that
    p(l_t) + p(u_t) = 2, and sets l_{t+1} = p(l_t), u_{t+1} = 2 - l_{t+1}. If the Newton-Schulz cubic takes
    [l_t, u_t] to within ``tol`` of 1, it is the last step.
    """
    if not 0 < l <= 1:
        raise ValueError(f"l must be in (0, 1], got {l!r}")
    u, out = 1.0, []
    while 1 - l > tol and len(out) < max_steps:
        if _cubic_error(l, u) <= tol:
            out.append(NEWTON_SCHULZ_CUBIC)
            break
        a, b, c, _ = optimal_quintic(max(l, cushion * u), u)
        pl, pu = a * l + b * l**3 + c * l**5, a * u + b * u**3 + c * u**5
        s = 2 / (pl + pu)
        out.append((a * s, b * s, c * s))
        l = s * pl
        u = 2 - l
    return out


def _cubic_error(l: float, u: float) -> float:
    """max |1 - p(x)| over [l, u] for the Newton-Schulz cubic p (increasing up to 1, where p = 1; l <= 1 <= u)."""
    a, b, _ = NEWTON_SCHULZ_CUBIC
    return 1 - min(a * l + b * l**3, a * u + b * u**3)


def grid_lower_ends() -> list[float]:
    """The grid of lower ends l_j on which schedules are tabulated (l_0 = 1, decreasing)."""
    return [10 ** (-j / GRID_PER_DECADE) for j in range(GRID_DECADES * GRID_PER_DECADE + 1)]


@torch.compiler.assume_constant_result
def _table(tol: float) -> tuple[torch.Tensor, tuple[int, ...], tuple[tuple[bool, ...], ...]]:
    """The cached tables; torch.compile takes them as constants instead of tracing the solve behind them."""
    return _compute_table(tol)


@functools.cache
def _compute_table(tol: float) -> tuple[torch.Tensor, tuple[int, ...], tuple[tuple[bool, ...], ...]]:
    schedules = [polar_schedule(l, tol=tol) for l in grid_lower_ends()]
    steps = tuple(len(s) for s in schedules)
    width = max(steps)
    rows = [s + [NEWTON_SCHULZ_CUBIC] * (width - len(s)) for s in schedules]
    quintic = tuple(tuple(c != 0 for _, _, c in row) for row in rows)
    return torch.tensor(rows, dtype=torch.float64), steps, quintic


def schedule_table(tol: float = CONVERGED) -> torch.Tensor:
    """(grid size, max steps, 3) float64 tensor: row j is the schedule of l_j padded with the cubic."""
    return _table(tol)[0]


def quintic_steps(rows: list[int] | None, steps: int, tol: float = CONVERGED) -> tuple[bool, ...]:
    """Per step t < ``steps``: whether any of the table ``rows`` (all rows if None) has a quintic term there
    (pure Python: no tensor is read, so it is free under torch.compile and on accelerators)."""
    quintic = _table(tol)[2]
    selected = quintic if rows is None else [quintic[j] for j in set(rows)]
    return tuple(t < len(quintic[0]) and any(row[t] for row in selected) for t in range(steps))


def steps_for_index(j: int, tol: float = CONVERGED) -> int:
    """Number of steps the schedule for grid point j needs to converge to ``tol`` (0 for l_0 = 1)."""
    return _table(tol)[1][j]


def grid_index(l: torch.Tensor, per_decade: int = GRID_PER_DECADE) -> torch.Tensor:
    """Index of the largest grid point <= l (per element; NaN and l <= 0 map to the last, smallest one) on the grid
    10 ** (-j / per_decade), j = 0 .. GRID_DECADES * per_decade (the schedules' grid by default).

    Computed in float32 (no float64 on accelerators): float32's log10 is off by < 1e-6 of a decade, so the
    offset 1e-3 (of a grid step, 1/16 decade) keeps the index from dropping below the exact one; at worst a
    point within 6e-5 decades above a grid point maps to that grid point (l too high by 0.015%, far inside
    the schedules' margins).
    """
    last = GRID_DECADES * per_decade
    j = torch.ceil(-per_decade * torch.log10(l.float()) - 1e-3)
    j = torch.nan_to_num(j, nan=float(last), posinf=float(last), neginf=0.0)
    return j.clamp(0, last).long()


#: Direct polynomials (``gram_iteration.inverse_sqrt_direct``): R^{-1/2} for R with eigenvalues in [l_j^2, 1] as
#: one polynomial of degree 2k + 2 in R, evaluated with k products beyond R^2, for k <= DIRECT_MAX_PRODUCTS.
#: Where the spectrum is narrow this takes fewer products than the Polar Express steps (relative errors of the fits:
#: k = 1 on [0.4, 1], 2.9e-4; k = 2 on [0.32, 1], 6e-5; k = 3 on [0.18, 1], 1e-4). Their grid is finer than the
#: schedules' (DIRECT_PER_DECADE points per decade of l, lower ends 1.8% apart in l^2): a fit's error grows quickly
#: with the width of its interval (k = 1: 2.9e-4 on [0.4, 1], 8.8e-4 on [0.32, 1]), and the schedules' grid would
#: hand most matrices the next larger degree.
DIRECT_MAX_PRODUCTS = 3
DIRECT_PER_DECADE = 256


def _direct_lower_end(j: int) -> float:
    return 10 ** (-j / DIRECT_PER_DECADE)


def direct_lower_ends(count: int) -> list[float]:
    """The first ``count`` lower ends l_j = 10 ** (-j / DIRECT_PER_DECADE) of the direct polynomials' grid."""
    return [_direct_lower_end(j) for j in range(count)]


def inverse_sqrt_polynomial(a: float, degree: int, iters: int = 40) -> tuple[np.ndarray, float]:
    """Near-minimax relative approximation p of x^{-1/2} on [a, 1] (0 < a < 1): its monomial coefficients in
    t = (2 x - 1 - a)/(1 - a) in [-1, 1] (increasing powers) and max |p(x) sqrt(x) - 1| on a dense grid.

    Lawson's iteration (reweighted least squares on Chebyshev points, fit in the Chebyshev basis) approaches the
    minimax fit; the error is measured afterwards on a grid 13x denser, so it is what the fit gives, not what it
    aimed at."""
    if not 0 < a < 1:
        raise ValueError(f"need 0 < a < 1, got a={a!r}")

    def points(k: int) -> tuple[np.ndarray, np.ndarray]:
        t = np.cos(np.linspace(0, np.pi, k))
        return t, ((1 + a) / 2 + (1 - a) / 2 * t) ** 0.5  # t and sqrt(x)

    t, root = points(300)
    V = np.polynomial.chebyshev.chebvander(t, degree) * root[:, None]  # p(x) sqrt(x) in the Chebyshev basis
    w = np.full(t.shape, 1 / t.size)
    for _ in range(iters):
        c = np.linalg.solve((V * w[:, None]).T @ V, V.T @ w)  # weighted least squares (normal equations)
        w = w * np.abs(V @ c - 1) + 1e-30
        w /= w.sum()
    t, root = points(4000)
    error = float(np.abs(np.polynomial.chebyshev.chebval(t, c) * root - 1).max())
    return np.polynomial.chebyshev.cheb2poly(c), error


@torch.compiler.assume_constant_result
def _direct(tol: float) -> tuple[tuple[int, ...], tuple[torch.Tensor, ...]]:
    return _compute_direct(tol)


@functools.cache
def _compute_direct(tol: float) -> tuple[tuple[int, ...], tuple[torch.Tensor, ...]]:
    """(products k_j per grid point j >= 1 of ``direct_lower_ends`` up to the last one a fit of degree
    <= 2 DIRECT_MAX_PRODUCTS + 2 takes to within ``tol`` (the schedules' own convergence criterion); per
    k <= DIRECT_MAX_PRODUCTS the (rows, 2k + 3) float64 table of monomial coefficients in t, row j - 1 for grid
    point j). Every row keeps the fits of every degree, for batches whose largest need is above its own."""
    products: list[int] = []
    rows: list[list[np.ndarray]] = [[] for _ in range(DIRECT_MAX_PRODUCTS + 1)]
    j = 1
    while True:
        l = _direct_lower_end(j)
        fits = [inverse_sqrt_polynomial(l * l, 2 * k + 2) for k in range(DIRECT_MAX_PRODUCTS + 1)]
        ok = [k for k, (_, error) in enumerate(fits) if error <= tol]
        if not ok:
            break
        products.append(ok[0])
        for k, (coeffs, _) in enumerate(fits):
            rows[k].append(coeffs)
        j += 1
    return tuple(products), tuple(torch.tensor(np.array(r), dtype=torch.float64) for r in rows)


def direct_products(j: int, tol: float = CONVERGED) -> int:
    """Products beyond R^2 that the direct polynomial for point j of the direct grid needs to meet ``tol``; -1 where
    none of degree <= 2 DIRECT_MAX_PRODUCTS + 2 does (and for j = 0, which needs no iteration)."""
    products = _direct(tol)[0]
    return products[j - 1] if 1 <= j <= len(products) else -1


def direct_table(tol: float, products: int) -> torch.Tensor:
    """(rows, 2 products + 3) float64: row j - 1 holds the monomial coefficients in t = (2x - 1 - l_j^2)/(1 - l_j^2)
    of the degree 2 products + 2 fit of x^{-1/2} on [l_j^2, 1], for the points j >= 1 of the direct grid that
    ``direct_products`` covers."""
    return _direct(tol)[1][products]
