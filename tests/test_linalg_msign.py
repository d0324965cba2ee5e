"""msign (polar factor) and the Polar-Express coefficient derivation."""

from __future__ import annotations

import _svd_oracle as oracle
import numpy as np
import pytest
import torch
from _linalg_cases import make_matrix, rel_err

from spectrakit.linalg import capability, msign, msign_svd
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
    assert rel_err(Y, oracle.polar(X)) <= 1e-2
    sv = oracle.singular_values(Y)
    assert sv.max() <= 1.05 and sv.min() >= 0.95


def test_keller_quintic_lands_in_its_band():
    X = make_matrix(24, 40, "flat", 5.0).float()  # singular values in [4.5, 5]: after Frobenius scaling ~0.2
    sv = oracle.singular_values(msign(X, coefficients="keller", dtype=torch.float32))
    assert sv.max() <= 1.25 and sv.min() >= 0.6


def test_bfloat16_is_finite_and_close():
    X = make_matrix(16, 24, "flat", 100.0).float()
    Y = msign(X, dtype=torch.bfloat16)
    assert Y.dtype == torch.float32 and torch.isfinite(Y).all()
    assert rel_err(Y, oracle.polar(X)) <= 0.05


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_default_dtype_follows_the_capability(monkeypatch, fast_bf16):
    """dtype=None is bfloat16 where bf16 matmuls are fast (CUDA, CPUs with AMX or AVX512-BF16) and float32
    elsewhere: both sides of the capability test run on any machine."""
    monkeypatch.setattr(capability, "_cpu_has_bf16_units", lambda: fast_bf16)
    X = make_matrix(16, 24, "logspace", 3.0).float()
    expected = msign(X, dtype=torch.bfloat16 if fast_bf16 else torch.float32)
    assert torch.equal(msign(X), expected)
    assert torch.equal(msign(X.double()), msign(X.double(), dtype=torch.float64))  # float64 stays float64
    assert capability.fast_bfloat16_matmul(torch.device("meta")) is False


def test_cuda_counts_as_fast_bfloat16():
    assert capability.fast_bfloat16_matmul(torch.device("cuda")) is True


def test_a_cpu_is_fast_in_bfloat16_with_amx_tiles_or_avx512_bf16():
    expected = bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    assert capability.fast_bfloat16_matmul(torch.device("cpu")) is expected


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
    # float32 extremes: ||X||_F above the float32 range, and subnormal entries (kept to 1e-3: ~23 bits less)
    for t, tol in ((2e37, 1e-4), (1e-39, 1e-3)):
        Xt = (X.double() * t).float()
        assert torch.isfinite(Xt).all() and torch.linalg.vector_norm(Xt, dtype=torch.float64) > 0
        assert rel_err(msign(Xt, dtype=torch.float32), base.double()) <= tol
        assert torch.isfinite(msign(Xt.bfloat16(), dtype=torch.bfloat16)).all()


def test_explicit_coefficients_and_steps():
    X = make_matrix(10, 10, "flat", 1.0).float()
    Y = msign(X, coefficients=[(1.875, -1.25, 0.375)], steps=12, dtype=torch.float64)
    assert rel_err(Y, oracle.polar(X)) <= 1e-6
    assert rel_err(msign_svd(X.double()), oracle.polar(X)) <= 1e-12  # the library's exact msign, checked too


def _keller_reference(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """torch.optim.Muon's _zeropower_via_newtonschulz (KellerJordan/Muon) transcribed in float32 (the
    originals cast to bfloat16): X / max(||X||_F, 1e-7), then X <- a X + (b A + c A^2) X with A = X X^T."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.float()
    transposed = X.shape[0] > X.shape[1]
    if transposed:
        X = X.T
    X = X / X.norm().clamp(min=1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + torch.addmm(A, A, A, beta=b, alpha=c) @ X
    return X.T if transposed else X


@pytest.mark.parametrize("shape", ((48, 32), (32, 80)))
def test_keller_preset_matches_torch_muon_orthogonalisation_over_20_steps(shape):
    """20 Muon steps (momentum 0.95, Nesterov, no weight decay, lr 0.02) on float32 weights with our msign
    and with the reference's: within 1e-5 (relative). The 1.01 safety factor of Polar Express moved the
    result by 2.7e-3 (Keller's quintic does not converge, so the start matters)."""
    gen = torch.Generator().manual_seed(0)
    W0 = torch.randn(*shape, generator=gen)
    grads = [torch.randn(*shape, generator=gen) for _ in range(20)]
    weights = []
    for ortho in (lambda U: msign(U, coefficients="keller", dtype=torch.float32), _keller_reference):
        W, B = W0.clone(), torch.zeros(shape)
        for g in grads:
            B = 0.95 * B + g
            W = W - 0.02 * ortho(g + 0.95 * B)
        weights.append(W)
    assert rel_err(weights[0], weights[1].double()) <= 1e-5
    single = msign(grads[0], coefficients="keller", dtype=torch.float32)
    assert rel_err(single, _keller_reference(grads[0]).double()) <= 1e-5


def test_keller_reference_transcription_matches_torch_muon_in_bfloat16():
    """Our transcription is torch.optim.Muon's function (which runs in bfloat16): same result up to bf16 rounding."""
    from torch.optim._muon import _zeropower_via_newtonschulz
    G = torch.randn(32, 48, generator=torch.Generator().manual_seed(1))
    ours = _keller_reference(G.bfloat16().float())
    assert rel_err(_zeropower_via_newtonschulz(G, (3.4445, -4.7750, 2.0315), 5, 1e-7), ours.double()) <= 2e-2
