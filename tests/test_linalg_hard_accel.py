"""The accelerator hard clip (linalg/hard_accel.py, hard_clip with adaptive=False or dtype=float32): accuracy vs
float64 SVD over spectra, ratios and scales, robustness (far beyond range, rounded products, low-precision inputs)
and an audit on the meta device (no host reads or copies, no float64 matmuls, FLOPs)."""

from __future__ import annotations

import _svd_oracle as oracle
import pytest
import torch
from _linalg_cases import KINDS, assert_meets_targets, make_matrix, rel_err

from spectrakit.linalg import hard_clip, soft_clip
from spectrakit.linalg.audit import OpAudit
from spectrakit.linalg.emulate import rounded_products

#: (ratio sigma_max/c, tolerance); measured worst over KINDS, SHAPES and SCALES: 2.5e-7, 1.5e-6, 2e-6, 5.1e-5,
#: 1.8e-4, 4.4e-4 (and <= 7.6e-4 at 1e4 for 768 x 768 / 768 x 3072)
TARGETS = ((1e-2, 1e-5), (1.0, 1e-5), (10.0, 1e-5), (1e2, 3e-4), (1e3, 1e-3), (1e4, 2e-3))
SHAPES = ((24, 40), (40, 24), (16, 80))  # wide, tall, very wide (row-blocked Gram products)
SCALES = (1e-20, 1.0, 1e20)


def _accel(X: torch.Tensor, c: float | torch.Tensor, **kw) -> torch.Tensor:
    return hard_clip(X, c, method="polar", adaptive=False, **kw)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_meets_targets_in_float32_at_any_scale(shape, kind):
    assert_meets_targets(_accel, oracle.hard_clip, shape, kind, TARGETS, SCALES)


def test_explicit_float32_takes_the_accelerator_path_also_with_adaptive_steps():
    """Before: dtype=float32 ran the Gram-space sign iteration on X X^T in float32 (9.4e-2 at sigma_max/c = 1e3)."""
    X = make_matrix(24, 40, "logspace", 1e3, seed=2).float()
    ref = oracle.hard_clip(X, 1.0)
    assert rel_err(hard_clip(X, 1.0, method="polar", dtype=torch.float32), ref) <= 1e-3  # adaptive (CPU default)
    assert rel_err(_accel(X, 1.0, dtype=torch.float32), ref) <= 1e-3


def test_singular_values_next_to_the_threshold():
    """|t - 1| <= 1e-2 around the kink of min(t, 1): the sign resolves |t - 1| >= ~2e-4."""
    gen = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(30, 20, generator=gen, dtype=torch.float64))
    X = ((U * (1 + torch.linspace(-0.01, 0.01, 20, dtype=torch.float64))) @ V.T).float()
    assert rel_err(_accel(X, 1.0), oracle.hard_clip(X, 1.0)) <= 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_finite_and_bounded_far_beyond_the_range(kind):
    """Beyond sigma_max/c = 1e4 the soft clip it starts from loses accuracy (h overshoots 1): still finite and
    clipped (before: the float64 path returned spectral norms of 3.5 c at 1e8 and 4e7 c at 1e15). From ~1e22 on
    the result is 0: the soft clip's (c / ||X||_F)^2 underflows in float32 (documented)."""
    for ratio in (1e5, 1e8, 1e15, 1e30):
        for scale in (1e-20, 1.0):
            X = make_matrix(24, 40, kind, ratio * scale, seed=1).float()
            Y = _accel(X, scale)
            assert torch.isfinite(Y).all() and oracle.spectral_norm(Y) <= 1.01 * scale, (kind, ratio, scale)


@pytest.mark.parametrize("fmt, limits", [("3xtf32", ((1.0, 1e-5), (1e2, 1e-4), (1e3, 5e-4), (1e4, 2e-3))),
                                         ("bf16x3", ((1.0, 1e-4), (1e2, 5e-3), (1e3, 1e-2)))])
def test_emulated_split_precision_products(fmt, limits):
    for kind in KINDS:
        for i, (ratio, tol) in enumerate(limits):
            X = make_matrix(32, 48, kind, ratio, seed=i).float()
            with rounded_products(fmt):
                Y = _accel(X, 1.0)
            err = rel_err(Y, oracle.hard_clip(X, 1.0))
            assert err <= tol, (fmt, kind, ratio, err)


@pytest.mark.parametrize("fmt", ["tf32", "bf16"])
def test_plain_tf32_or_bf16_products_stay_finite(fmt):
    """Not accurate (documented), but bounded: without the sign's safety factor TF32 products gave NaN."""
    for kind in KINDS:
        for ratio in (1.0, 1e3, 1e4, 1e8):
            X = make_matrix(32, 48, kind, ratio).float()
            with rounded_products(fmt):
                Y = _accel(X, 1.0)
            assert torch.isfinite(Y).all() and rel_err(Y, oracle.hard_clip(X, 1.0)) <= 3.0, (fmt, kind, ratio)


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 3e-3), (torch.float16, 5e-4)])
def test_low_precision_inputs(dtype, tol):
    for kind in KINDS:
        for ratio in (1e-2, 1.0, 1e2, 1e4):
            X = make_matrix(24, 40, kind, ratio).to(dtype)
            Y = _accel(X, 1.0)
            assert Y.dtype == dtype and torch.isfinite(Y).all()
            assert rel_err(Y, oracle.hard_clip(X, 1.0)) <= tol, (dtype, kind, ratio)
        X = make_matrix(24, 40, kind, 1e30).to(torch.bfloat16)
        assert torch.isfinite(_accel(X, 1.0)).all()


def test_small_and_degenerate_shapes():
    gen = torch.Generator().manual_seed(0)
    for m in (1, 2, 7):
        for n in (1, 3, 10):
            for ratio in (1e-2, 1.0, 1e2, 1e4):
                X = torch.randn(3, m, n, generator=gen, dtype=torch.float64)
                X = (X / torch.linalg.matrix_norm(X, ord=2, keepdim=True) * ratio).float()
                assert rel_err(_accel(X, 1.0), oracle.hard_clip(X, 1.0)) <= 1e-4, (m, n, ratio)  # measured 7e-6


def test_zero_matrix_nan_and_tensor_threshold():
    assert torch.equal(_accel(torch.zeros(3, 6, 9), 1.0), torch.zeros(3, 6, 9))
    X = torch.randn(2, 6, 9, dtype=torch.float32)
    X[1, 0, 0] = float("nan")
    Y = _accel(X, 1.0)
    assert torch.isnan(Y[1]).all() and torch.isfinite(Y[0]).all()
    X = torch.stack([make_matrix(10, 14, k, 10.0, seed=i) for i, k in enumerate(KINDS)]).float()
    c = torch.tensor([0.1, 1.0, 2.0, 50.0])
    Y, bound = _accel(X, c, return_bound=True)
    for i in range(4):
        assert rel_err(Y[i], oracle.hard_clip(X[i], float(c[i]))) <= 1e-5
        assert bound[i] >= oracle.spectral_norm(X[i]) * (1 - 1e-5)


@pytest.mark.parametrize("shape", ((768, 768), (768, 3072), (3072, 768)))
def test_meta_audit_no_host_reads_no_copies_no_float64_and_flops(shape):
    X = torch.empty(2, *shape, device="meta")
    c = torch.full((2,), 0.5, device="meta")
    Y = _accel(X, c)  # on meta a host read would raise; also copies the schedule tables to the device once
    with OpAudit() as audit:
        Y = _accel(X, c)
    assert Y.shape == X.shape
    assert audit.host_reads == 0 and audit.host_copies == 0
    assert audit.float64_matmul_flops == 0
    with OpAudit() as soft:
        soft_clip(X, c, method="polar", adaptive=False)
    # measured: 2.3x (768 x 768) the accelerator soft clip (the hard clip's soft clip covers 1e4, one step more than
    # the soft clip's own 3e3; + W + sign + B^{-1/2})
    assert audit.total_matmul_flops() <= 2.4 * soft.total_matmul_flops()
