"""hard_clip (sigma -> min(sigma, c)) against the exact float64 SVD oracle."""

from __future__ import annotations

import _svd_oracle as oracle
import pytest
import torch
from _linalg_cases import KINDS, make_matrix, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrakit.linalg import hard_clip, hard_clip_svd

RATIOS = (1e-2, 1.0, 10.0, 100.0, 1e3, 1e4)


@pytest.mark.parametrize("shape", ((24, 16), (16, 40), (1, 30)))
@pytest.mark.parametrize("kind", KINDS)
def test_polar_meets_1e3_in_float32_for_all_ratios(shape, kind):
    for i, ratio in enumerate(RATIOS):
        for scale in (1e-6, 1e6):
            X = make_matrix(*shape, kind, ratio * scale, seed=i).float()
            Y = hard_clip(X, scale, method="polar")
            assert Y.dtype == torch.float32 and Y.shape == X.shape
            err = rel_err(Y, oracle.hard_clip(X, scale))
            assert err <= 1e-3, (shape, kind, ratio, scale, err)


def test_singular_values_next_to_the_threshold():
    """Spectrum straddling c closely (the hard case for the sign iteration): error stays within SIGN_TOL / 2."""
    gen = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(30, 20, generator=gen, dtype=torch.float64))
    s = 1 + torch.linspace(-0.01, 0.01, 20, dtype=torch.float64)
    X = ((U * s) @ V.T).float()
    assert rel_err(hard_clip(X, 1.0, method="polar"), oracle.hard_clip(X, 1.0)) <= 1e-4


@pytest.mark.parametrize("ratio", (1.0, 1e4))
def test_no_sync_schedule_is_accurate_too(ratio):
    X = make_matrix(12, 20, "logspace", ratio, seed=2).float()
    assert rel_err(hard_clip(X, 1.0, method="polar", adaptive=False), oracle.hard_clip(X, 1.0)) <= 1e-3


@pytest.mark.parametrize("ratio", (1e-2, 1.0, 1e4, 1e10))
def test_bfloat16_inputs_never_give_nan_or_inf(ratio):
    for kind in KINDS:
        X = make_matrix(10, 16, kind, ratio).to(torch.bfloat16)
        Y = hard_clip(X, 1.0, method="polar")
        assert Y.dtype == torch.bfloat16 and torch.isfinite(Y).all(), (kind, ratio)


def test_batched_equals_looped_with_tensor_threshold():
    X = torch.stack([make_matrix(10, 14, k, r, seed=i) for i, (k, r) in
                     enumerate(zip(KINDS, (0.3, 3.0, 300.0, 3e3)))]).float()
    c = torch.tensor([0.1, 1.0, 2.0, 5.0])
    Y, bound = hard_clip(X, c, method="polar", return_bound=True)
    assert bound.shape == (4,)
    for i in range(4):
        assert rel_err(Y[i], hard_clip(X[i], float(c[i]), method="polar").double()) <= 2e-4  # see soft test
        assert rel_err(Y[i], oracle.hard_clip(X[i], float(c[i]))) <= 1e-3
        assert bound[i] >= oracle.spectral_norm(X[i]) * (1 - 1e-5)


def test_scaling_law_and_idempotence():
    X = make_matrix(12, 18, "logspace", 50.0).float()
    Y = hard_clip(X, 2.0, method="polar")
    assert rel_err(hard_clip(1e3 * X, 2e3, method="polar") / 1e3, Y.double()) <= 1e-4
    assert rel_err(hard_clip(Y, 2.0, method="polar"), Y.double()) <= 1e-3  # clipping twice changes nothing
    assert oracle.spectral_norm(Y) <= 2.0 * (1 + 1e-4)


def test_monotone_map_and_svd_method():
    X = make_matrix(16, 16, "logspace", 100.0).float()
    s_in = oracle.singular_values(X)
    s_out = oracle.singular_values(hard_clip(X, 1.0, method="polar"))
    assert torch.all(s_out[:-1] >= s_out[1:] - 1e-6)
    assert torch.allclose(s_out, s_in.clamp(max=1.0), atol=1e-4)
    assert rel_err(hard_clip(X, 1.0, method="svd"), oracle.hard_clip(X, 1.0)) <= 1e-6
    assert rel_err(hard_clip_svd(X.double(), 1.0), oracle.hard_clip(X, 1.0)) <= 1e-12


def test_zero_nan_and_vectors():
    for method in ("polar", "svd"):
        assert torch.equal(hard_clip(torch.zeros(3, 4, 6), 1.0, method=method), torch.zeros(3, 4, 6))
        X = torch.randn(2, 4, 6)
        X[0, 0, 0] = float("nan")
        Y = hard_clip(X, 1.0, method=method)
        assert torch.isnan(Y[0]).all() and torch.isfinite(Y[1]).all()
    u = torch.randn(40, dtype=torch.float64)
    assert torch.allclose(hard_clip(u, 0.5), u * 0.5 / u.norm())
    assert torch.allclose(hard_clip(u, 1e3), u)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 10), n=st.integers(1, 10), log_ratio=st.floats(-2, 4), seed=st.integers(0, 10**6))
def test_hypothesis_shapes(m, n, log_ratio, seed):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(2, m, n, generator=gen, dtype=torch.float64)
    X = (X / torch.linalg.matrix_norm(X, ord=2, keepdim=True).clamp_min(1e-30) * 10**log_ratio).float()
    Y = hard_clip(X, 1.0, method="polar")
    assert Y.shape == X.shape
    assert rel_err(Y, oracle.hard_clip(X, 1.0)) <= 1e-3


def test_precision_backstop_when_the_ratio_estimate_is_wrong(monkeypatch):
    import spectrakit.linalg.polar_clip as polar_clip

    claims_float32 = lambda G, cn, iters=2: torch.ones(G.shape[0], dtype=torch.float64)  # noqa: E731
    monkeypatch.setattr(polar_clip, "_ratio_estimate", claims_float32)  # claims float32 is safe
    X = make_matrix(20, 30, "logspace", 1e4).float()
    assert rel_err(hard_clip(X, 1.0, method="polar"), oracle.hard_clip(X, 1.0)) <= 1e-3
