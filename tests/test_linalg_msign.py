"""msign (polar factor) and the Polar-Express coefficient derivation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _linalg_cases import make_matrix, rel_err

from spectrakit.linalg import msign, msign_svd
from spectrakit.linalg.coefficients import CUSHION, grid_index, optimal_quintic, polar_schedule, schedule_table
from spectrakit.linalg.msign import POLAR_EXPRESS


def test_derived_schedule_reproduces_the_published_polar_express_table():
    derived = polar_schedule(1e-3, max_steps=len(POLAR_EXPRESS), tol=0.0, cushion=CUSHION)
    assert np.allclose(np.array(derived[:-1]), np.array(POLAR_EXPRESS[:-1]), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("l", (1e-6, 1e-3, 0.1, 0.5, 0.9))
def test_optimal_quintic_equioscillates(l):
    a, b, c, E = optimal_quintic(l, 1.0)
    x = np.linspace(l, 1.0, 20001)
    err = np.abs(1 - (a * x + b * x**3 + c * x**5))
    assert err.max() <= E * (1 + 1e-9)
    assert err.max() >= E * (1 - 1e-6)  # attained: no slack left
    # and no quintic with a better bound exists nearby: perturbing the coefficients increases the max error
    for d in np.eye(3) * 1e-4:
        p = np.array([a, b, c]) + d
        assert np.abs(1 - (p[0] * x + p[1] * x**3 + p[2] * x**5)).max() >= E * (1 - 1e-9)


@pytest.mark.parametrize("l", (1e-8, 1e-4, 1e-2, 0.3))
def test_schedule_converges_from_its_lower_end(l):
    x = np.geomspace(l, 1.0, 2000)
    for a, b, c in polar_schedule(l):
        x = a * x + b * x**3 + c * x**5
    assert np.abs(1 - x).max() <= 1e-6


def test_schedule_table_rows_and_grid_index():
    table = schedule_table()
    assert table.dim() == 3 and table.shape[2] == 3
    idx = grid_index(torch.tensor([1.0, 0.5, 1e-3, 0.0, float("nan")]))
    assert idx[0] == 0 and idx[2] == 48 and idx[3] == idx[4] == table.shape[0] - 1
    assert 10 ** (-idx[1].item() / 16) <= 0.5  # the grid point used is never above the true lower end


@pytest.mark.parametrize("shape", ((32, 16), (16, 48), (1, 20), (20, 1)))
def test_polar_express_float32_matches_svd(shape):
    """Condition number <= 300: within the range the published schedule (l_0 = 1e-3) is built for."""
    gen = torch.Generator().manual_seed(0)
    k = min(shape)
    U, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=gen, dtype=torch.float64))
    X = ((U * torch.logspace(0, -2.5, k, dtype=torch.float64)) @ V.T).float()
    Y = msign(X, dtype=torch.float32)
    assert Y.dtype == torch.float32 and Y.shape == X.shape
    assert rel_err(Y, msign_svd(X.double())) <= 1e-2
    sv = torch.linalg.svdvals(Y.double())
    assert sv.max() <= 1.05 and sv.min() >= 0.95


def test_keller_quintic_lands_in_its_band():
    X = make_matrix(24, 40, "flat", 5.0).float()  # singular values in [4.5, 5]: after Frobenius scaling ~0.2
    sv = torch.linalg.svdvals(msign(X, coefficients="keller", dtype=torch.float32).double())
    assert sv.max() <= 1.25 and sv.min() >= 0.6


def test_bfloat16_default_is_finite_and_close():
    X = make_matrix(16, 24, "flat", 100.0).float()
    Y = msign(X)
    assert Y.dtype == torch.float32 and torch.isfinite(Y).all()
    assert rel_err(Y, msign_svd(X.double())) <= 0.05


def test_batched_equals_looped_zero_and_nan():
    X = torch.randn(3, 8, 12)
    Y = msign(X, dtype=torch.float64)
    for i in range(3):
        assert rel_err(Y[i], msign(X[i], dtype=torch.float64).double()) <= 1e-12
    assert torch.equal(msign(torch.zeros(4, 6)), torch.zeros(4, 6))
    X[1, 0, 0] = float("nan")
    assert torch.isnan(msign(X)[1]).all()


def test_scale_invariance_over_many_orders_of_magnitude():
    X = make_matrix(12, 20, "flat", 1.0).float()
    base = msign(X, dtype=torch.float32)
    for t in (1e-20, 1e-6, 1e6, 1e20):
        assert rel_err(msign(t * X, dtype=torch.float32), base.double()) <= 1e-4


def test_explicit_coefficients_and_steps():
    X = make_matrix(10, 10, "flat", 1.0).float()
    Y = msign(X, coefficients=[(1.875, -1.25, 0.375)], steps=12, dtype=torch.float64)
    assert rel_err(Y, msign_svd(X.double())) <= 1e-6
