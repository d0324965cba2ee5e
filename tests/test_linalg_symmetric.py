"""symmetric_matmul: the lower-block-triangle product equals A @ B for products that are symmetric."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrakit.linalg.symmetric import (
    CHUNK_BYTES,
    LARGE_SIDE,
    MIN_SIDE,
    block_count,
    gram,
    gram_float64,
    symmetric_addmm,
    symmetric_matmul,
)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 30), blocks=st.integers(1, 9), batch=st.integers(0, 2))
def test_gram_equals_x_xt_for_any_block_count(m, n, blocks, batch):
    X = torch.randn(*([batch] if batch else []), m, n, dtype=torch.float64)
    G = symmetric_matmul(X, X.mT, blocks=blocks)
    assert G.shape == (*X.shape[:-2], m, m)
    torch.testing.assert_close(G, X @ X.mT, rtol=1e-12, atol=1e-12)
    k = min(blocks, m)  # off-diagonal blocks are exact mirrors
    step = -(-m // k)
    lower_off_diagonal = torch.ones(m, m, dtype=torch.bool).tril(-1)
    for start in range(0, m, step):
        lower_off_diagonal[start:start + step, start:start + step] = False
    assert torch.equal(G[..., lower_off_diagonal], G.mT[..., lower_off_diagonal])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_commuting_symmetric_product_at_the_blocked_size(dtype):
    m = MIN_SIDE + 37  # uneven blocks
    A = torch.randn(m, m, dtype=torch.float64)
    S = (A + A.T) / m
    P = 0.5 * torch.eye(m, dtype=torch.float64) + 0.3 * S + 0.2 * S @ S  # a polynomial in S: commutes with S
    got = symmetric_matmul(S.to(dtype), P.to(dtype))
    assert block_count(m, S.dtype) > 1
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got.double(), S @ P, rtol=tol, atol=tol)


@pytest.mark.parametrize("batch", [(), (3,)])
@pytest.mark.parametrize("blocks", [None, 1, 4])
def test_symmetric_addmm_is_beta_c_plus_alpha_ab(batch, blocks):
    """The fused polynomial step b A + c A^2 of msign, blocked or not, 2-D or batched."""
    m = MIN_SIDE + 5
    X = torch.randn(*batch, m, 40, dtype=torch.float64)
    A = X @ X.mT
    got = symmetric_addmm(A, A, A, beta=-4.775, alpha=2.0315, blocks=blocks)
    torch.testing.assert_close(got, -4.775 * A + 2.0315 * (A @ A), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(symmetric_addmm(None, A, A, blocks=blocks), A @ A, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("blocks", [None, 1, 4])
def test_symmetric_addmm_updates_in_place(blocks):
    """out=C: beta C + alpha A @ B written over C (each block reads its part of C before it is overwritten)."""
    m = MIN_SIDE + 5
    X = torch.randn(2, m, 30, dtype=torch.float64)
    C, A = X @ X.mT, X[:, :, :20] @ X[:, :, :20].mT
    expected = 0.5 * C + 3.0 * (A @ A)
    got = symmetric_addmm(C, A, A, beta=0.5, alpha=3.0, blocks=blocks, out=C)
    assert got.data_ptr() == C.data_ptr()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("m", [40, MIN_SIDE + 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("transposed", [False, True])
def test_gram_float64_sums_converted_chunks(monkeypatch, m, dtype, transposed):
    """X X^T of a low-precision X in float64 (exact products of its entries) over several column chunks (the last
    one short), in either memory layout; no float64 copy larger than a chunk is made."""
    width = max(256, CHUNK_BYTES // (8 * m))
    n = 3 * width + 17
    X = torch.randn(2, n, m).mT if transposed else torch.randn(2, m, n)
    X = X.to(dtype)
    conversions = []
    double = torch.Tensor.double
    monkeypatch.setattr(torch.Tensor, "double", lambda t: conversions.append(t.shape[-1]) or double(t))
    G = gram_float64(X)
    assert G.dtype == torch.float64 and conversions == [width] * 3 + [17]
    torch.testing.assert_close(G, double(X) @ double(X).mT, rtol=1e-13, atol=1e-10)
    small = X[..., :width]  # short enough for one conversion
    conversions.clear()
    torch.testing.assert_close(gram_float64(small), double(small) @ double(small).mT, rtol=1e-13, atol=1e-10)
    assert conversions == [width]


def test_batched_and_broadcast_operands():
    X = torch.randn(3, MIN_SIDE, 20)
    torch.testing.assert_close(gram(X), X @ X.mT)
    E = torch.randn(MIN_SIDE, MIN_SIDE)
    E = E + E.T
    torch.testing.assert_close(symmetric_matmul(E.expand(2, -1, -1), E), (E @ E).expand(2, -1, -1))


def test_block_count_rule():
    f32 = torch.float32
    assert block_count(MIN_SIDE - 1, f32) == 1
    assert block_count(MIN_SIDE, f32) == 4
    assert block_count(MIN_SIDE, torch.float64) == 4
    assert block_count(LARGE_SIDE - 1, f32) == 4
    assert block_count(LARGE_SIDE, f32) == 8
    assert block_count(8192, f32) == 8
    for half in (torch.bfloat16, torch.float16):  # fast half-precision products: the mirror copies cost more
        assert block_count(8192, half) == 1


def test_meta_device_products_are_blocked_like_the_cpu():
    """The accelerator path (here the meta device) blocks the same products: 8 row blocks at 768 do
    (8 + 1) / 16 of the multiply-adds of a plain product."""
    from torch.utils.flop_counter import FlopCounterMode

    A = torch.empty(2, LARGE_SIDE, LARGE_SIDE, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = symmetric_matmul(A, A)
    assert out.shape == A.shape and out.device.type == "meta"
    assert counter.get_total_flops() == 2 * 2 * LARGE_SIDE**3 * 9 // 16
