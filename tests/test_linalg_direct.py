"""Direct polynomials for R^{-1/2} on narrow spectra (coefficients.inverse_sqrt_polynomial,
gram_iteration.inverse_sqrt_direct) and their use by soft_clip, against float64 eigendecompositions and SVD."""

from __future__ import annotations

import _svd_oracle as oracle
import numpy as np
import pytest
import torch
from _linalg_cases import make_matrix, rel_err, with_singular_values

import spectrakit.linalg.gram_iteration as gi
from spectrakit.linalg import soft_clip
from spectrakit.linalg.audit import OpAudit
from spectrakit.linalg.coefficients import (
    DIRECT_MAX_PRODUCTS,
    direct_lower_ends,
    direct_products,
    grid_index,
    inverse_sqrt_polynomial,
)

TOL = 3e-4  # polar_clip.TOL, the float32 tolerance
COVERED = [j for j in range(1, 400) if direct_products(j, TOL) >= 0]


def _products(audit: OpAudit) -> int:
    return sum(audit.op_names[name] for name in ("mm", "bmm", "addmm", "baddbmm"))


@pytest.mark.parametrize(("a", "degree"), [(0.3, 4), (0.6, 2), (0.2, 8)])
def test_polynomial_fit_error_is_what_it_reports(a, degree):
    coeffs, error = inverse_sqrt_polynomial(a, degree)
    x = np.linspace(a, 1, 200001)
    t = (2 * x - 1 - a) / (1 - a)
    sampled = np.abs(np.polynomial.polynomial.polyval(t, coeffs) * np.sqrt(x) - 1).max()
    assert sampled <= error * 1.001 + 1e-15
    assert sampled >= error * 0.99  # the reported error is attained, not a loose over-estimate
    assert len(coeffs) == degree + 1


def test_polynomial_fit_is_near_minimax():
    """Degree 4 on [0.5, 1]: the Chebyshev interpolant's error bounds the minimax error from above; the fit must not
    be worse than it and must equioscillate (its error attained at >= degree + 2 alternating extrema)."""
    a, degree = 0.5, 4
    coeffs, error = inverse_sqrt_polynomial(a, degree)
    interp = np.polynomial.chebyshev.chebinterpolate(lambda t: ((1 + a) / 2 + (1 - a) / 2 * t) ** -0.5, degree)
    t = np.linspace(-1, 1, 100001)
    root = np.sqrt((1 + a) / 2 + (1 - a) / 2 * t)
    assert error <= np.abs(np.polynomial.chebyshev.chebval(t, interp) * root - 1).max()
    e = np.polynomial.polynomial.polyval(t, coeffs) * root - 1
    peaks = np.sign(e[np.abs(e) >= 0.98 * error])
    assert (np.diff(peaks) != 0).sum() >= degree + 1


@pytest.mark.parametrize("a", [0.0, 1.0, -0.5, 1.5])
def test_polynomial_fit_rejects_an_empty_or_singular_interval(a):
    with pytest.raises(ValueError, match="0 < a < 1"):
        inverse_sqrt_polynomial(a, 4)


def test_direct_products_cover_only_narrow_spectra():
    needs = [direct_products(j, TOL) for j in COVERED]
    assert COVERED == list(range(1, len(COVERED) + 1)) and len(COVERED) >= 4
    assert needs == sorted(needs) and max(needs) <= DIRECT_MAX_PRODUCTS
    assert direct_products(0, TOL) == -1  # l = 1: no iteration at all
    assert direct_products(COVERED[-1] + 1, TOL) == -1
    assert direct_lower_ends(COVERED[-1] + 1)[-1] ** 2 < 0.2  # kappa(R) up to 5 and more
    float64 = [j for j in range(1, 400) if direct_products(j, 1e-12) >= 0]  # float64 accuracy: only near l = 1
    assert float64 == list(range(1, len(float64) + 1)) and len(float64) < len(COVERED) / 4


def _spd(m: int, low: float, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric m x m matrix with eigenvalues spread over [low, 1] (both ends included) and its exact
    inverse square root (float64)."""
    gen = torch.Generator().manual_seed(seed)
    V, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    lam = low + (1 - low) * torch.rand(m, generator=gen, dtype=torch.float64)
    lam[0], lam[1] = low, 1.0
    return ((V * lam) @ V.T).to(dtype), (V * lam.rsqrt()) @ V.T


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, TOL), (torch.float32, TOL), (torch.float64, 1e-12)])
def test_inverse_sqrt_direct_matches_the_eigendecomposition(dtype, tol):
    """Each covered grid point, with its own number of products and with the most: one batch mixing them (also the
    float64 tolerance's tables, which float64 inputs with nearly flat spectra use)."""
    m = 48
    covered = [j for j in range(1, 400) if direct_products(j, tol) >= 0]
    assert covered
    for products in sorted({direct_products(j, tol) for j in covered} | {DIRECT_MAX_PRODUCTS}):
        rows = [j for j in covered if direct_products(j, tol) <= products]
        pairs = [_spd(m, direct_lower_ends(j + 1)[j] ** 2, dtype, seed) for seed, j in enumerate(rows)]
        R = torch.stack([p[0] for p in pairs])
        idx = torch.tensor(rows)
        Q = gi.inverse_sqrt_direct(R, R @ R, idx, products, tol)
        assert Q.dtype == dtype and Q.shape == R.shape
        for b, (_, exact) in enumerate(pairs):
            err = rel_err(Q[b], exact)
            assert err <= tol + (2e-5 if dtype == torch.float32 else 1e-12), (products, rows[b], err)


def test_schedule_products_counts_what_inverse_sqrt_multiplies():
    R, _ = _spd(32, 1e-3, torch.float64, 0)
    R = R[None]
    R2 = R @ R
    for j in (1, 3, 6, 20, 48):
        schedule = gi.gather_schedule(torch.tensor([j]), None, torch.float64, TOL, adaptive=True)
        with OpAudit() as audit:
            gi.inverse_sqrt(R, R2, schedule)
        assert _products(audit) == gi.schedule_products(schedule), j


def _schedule_at(j: int) -> gi.Schedule:
    """The Polar Express schedule for the lower end of point j of the direct grid."""
    l = torch.tensor([direct_lower_ends(j + 1)[j]])
    return gi.gather_schedule(grid_index(l), None, torch.float32, TOL, adaptive=True)


def test_direct_plan_takes_the_largest_need_only_where_it_saves_products():
    last = COVERED[-1]
    schedule = _schedule_at(last)
    need = direct_products(last, TOL)
    assert need < gi.schedule_products(schedule)
    assert gi.direct_plan([1, last], schedule, TOL) == need
    assert gi.direct_plan([1, last + 1], schedule, TOL) == -1  # one row not covered
    one_step = _schedule_at(1)
    assert gi.schedule_products(one_step) == 0 and gi.direct_plan([1], one_step, TOL) == -1  # nothing to save


@pytest.mark.parametrize("kind", ["spiky", "logspace", "rank_deficient"])
@pytest.mark.parametrize("ratio", [0.7, 1.0, 1.4])
def test_soft_clip_takes_the_direct_polynomial_at_small_ratio(monkeypatch, kind, ratio):
    calls = []
    real = gi.inverse_sqrt_direct
    monkeypatch.setattr("spectrakit.linalg.polar_clip.inverse_sqrt_direct",
                        lambda *a: calls.append(a[3]) or real(*a))
    X = make_matrix(40, 96, kind, ratio, seed=1).float()
    Y = soft_clip(X, 1.0, method="polar")
    assert calls and calls[0] <= DIRECT_MAX_PRODUCTS
    assert rel_err(Y, oracle.soft_clip(X, 1.0)) <= 2e-4
    calls.clear()
    for kwargs in ({"steps": 3}, {"adaptive": False}):  # an explicit schedule, or the no-sync one: Polar Express
        assert rel_err(soft_clip(X, 1.0, method="polar", **kwargs), oracle.soft_clip(X, 1.0)) <= 1e-3
    assert rel_err(soft_clip(X.double(), 1.0, method="polar"), oracle.soft_clip(X, 1.0)) <= 1e-10
    assert not calls


def test_soft_clip_direct_path_takes_fewer_products(monkeypatch):
    X = make_matrix(40, 96, "logspace", 1.0, seed=2).float()
    with OpAudit() as direct:
        soft_clip(X, 1.0, method="polar")
    monkeypatch.setattr("spectrakit.linalg.polar_clip.direct_plan", lambda *a: -1)
    with OpAudit() as polar_express:
        Y = soft_clip(X, 1.0, method="polar")
    assert _products(direct) < _products(polar_express)
    assert rel_err(Y, oracle.soft_clip(X, 1.0)) <= 1e-3


@pytest.mark.parametrize("spread", [1e-3, 1e-2, 3e-2])
@pytest.mark.parametrize("ratio", [0.3, 1.0, 10.0])
def test_float64_nearly_flat_spectra_take_the_direct_polynomial_at_float64_accuracy(monkeypatch, spread, ratio):
    calls = []
    real = gi.inverse_sqrt_direct
    monkeypatch.setattr("spectrakit.linalg.polar_clip.inverse_sqrt_direct",
                        lambda *a: calls.append(a[3]) or real(*a))
    gen = torch.Generator().manual_seed(0)
    X = with_singular_values(20, 40, lambda k: ratio * (1 - spread * torch.rand(k, generator=gen, dtype=torch.float64)),
                             gen)
    Y = soft_clip(X, 1.0, method="polar")
    assert calls and Y.dtype == torch.float64
    assert rel_err(Y, oracle.soft_clip(X, 1.0)) <= 1e-11
