"""block_power_iteration / spectral_norm / top_singular: convergence, warm starts on slowly drifting matrices,
and the identities that make them one power iteration."""

from __future__ import annotations

import _svd_oracle as oracle
import pytest
import torch
from _linalg_cases import make_matrix, with_singular_values

from spectrakit.linalg import block_power_iteration, spectral_norm, top_singular
from spectrakit.linalg.polar_clip import _ratio_estimate
from spectrakit.linalg.power import ritz_rotation, top_eigenvector, top_triplet
from spectrakit.linalg.symmetric import gram


def _gapped(m: int, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    tail = torch.linspace(2, 0.1, k - 3, dtype=torch.float64)
    s = torch.cat([torch.tensor([10.0, 8.0, 6.0], dtype=torch.float64), tail])
    return (U * s) @ V.T


def test_spectral_norm_converges_and_returns_unit_vectors():
    X = torch.stack([_gapped(30, 20, s) for s in range(3)]).float()
    sigma, u, v = spectral_norm(X, iters=30)
    assert sigma.shape == (3,) and u.shape == (3, 30) and v.shape == (3, 20)
    assert torch.allclose(sigma.double(), torch.full((3,), 10.0, dtype=torch.float64), rtol=1e-4)
    assert torch.allclose(u.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose((X @ v.unsqueeze(-1)).squeeze(-1), sigma[:, None] * u, atol=1e-3)
    assert torch.all(sigma <= oracle.spectral_norm(X) * (1 + 1e-5))


def test_spectral_norm_warm_start_tracks_a_drifting_matrix():
    X = _gapped(40, 24)
    gen = torch.Generator().manual_seed(1)
    _, _, v = spectral_norm(X.float(), iters=30)
    for _ in range(20):
        X = X + 0.05 * torch.randn(X.shape, generator=gen, dtype=torch.float64)
        sigma, _, v = spectral_norm(X.float(), iters=1, v0=v)
        exact = oracle.spectral_norm(X)
        assert abs(sigma.double() - exact) / exact <= 1e-3
    cold, _, _ = spectral_norm(X.float(), iters=1)
    assert abs(cold.double() - exact) / exact > abs(sigma.double() - exact) / exact


def test_top_singular_matches_svd_and_warm_starts():
    X = _gapped(36, 28).float()
    U, S, V = top_singular(X, 3, iters=20)
    assert U.shape == (36, 3) and S.shape == (3,) and V.shape == (28, 3)
    assert torch.allclose(S.double(), torch.tensor([10.0, 8.0, 6.0], dtype=torch.float64), rtol=1e-4)
    assert torch.allclose(U.mT @ U, torch.eye(3), atol=1e-5)
    assert torch.allclose(X @ V, U * S, atol=1e-3)
    gen = torch.Generator().manual_seed(2)
    for _ in range(10):
        X = X + 0.02 * torch.randn(X.shape, generator=gen)
        U, S, V = top_singular(X, 3, iters=1, v0=V)
        exact = oracle.singular_values(X)[:3]
        assert torch.allclose(S.double(), exact, rtol=2e-3)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_top_singular_holds_at_any_float32_scale(scale):
    """X^T X V is formed on X scaled by a power of two: no overflow at sigma ~ 1e30 (sigma^2 is beyond float32),
    no underflow at 1e-30, and the same triplets as at scale 1."""
    X = make_matrix(20, 14, "logspace", 1.0, seed=7) * scale
    U, S, V = top_singular(X.float(), 3, iters=30)
    exact = oracle.singular_values(X)[:3]
    assert torch.isfinite(S).all() and torch.allclose(S.double(), exact, rtol=1e-4)
    assert torch.allclose((X.float() @ V[:, :1]).double() / scale, (U[:, :1] * S[:1]).double() / scale, atol=1e-4)


def test_batched_top_singular_and_zero_matrix():
    X = torch.stack([make_matrix(12, 9, "logspace", 2.0, seed=s) for s in range(2)]).float()
    U, S, V = top_singular(X, 2, iters=30)
    assert S.shape == (2, 2)
    assert torch.allclose(S.double(), oracle.singular_values(X)[:, :2], rtol=1e-3)
    sigma, _, _ = spectral_norm(torch.zeros(5, 4))
    assert sigma == 0


def test_block_power_iteration_gives_triplets_of_the_projection():
    X = _gapped(30, 20)
    V0 = torch.randn(20, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for rayleigh_ritz in (True, False):
        U, s, V = block_power_iteration(X, V0, 2, rayleigh_ritz)
        assert U.dtype == s.dtype == V.dtype == torch.float64  # a float64 X is iterated in float64
        assert torch.allclose(U.mT @ U, torch.eye(3, dtype=torch.float64), atol=1e-12)
        assert torch.allclose((U * s) @ V.mT, U @ (U.mT @ X), atol=1e-12)  # U diag(s) V^T = U U^T X
    U, s, V = block_power_iteration(X, V0, 40)
    assert torch.allclose(s, torch.tensor([10.0, 8.0, 6.0], dtype=torch.float64), rtol=1e-10)
    assert torch.allclose(X @ V, U * s, atol=1e-9)


def test_spectral_norm_is_the_single_vector_block_power_iteration():
    X = torch.stack([_gapped(12, 9, s) for s in range(2)]).float()
    v0 = torch.randn(2, 9, generator=torch.Generator().manual_seed(4))
    sigma, u, v = spectral_norm(X, iters=3, v0=v0)
    _, _, V = block_power_iteration(X, v0[..., None], 3, rayleigh_ritz=False)
    assert torch.equal(v, V[..., 0])
    Xv = (X @ v[..., None])[..., 0]
    assert torch.equal(sigma, Xv.norm(dim=-1)) and torch.allclose(Xv, sigma[:, None] * u, atol=1e-6)


def test_top_singular_is_the_block_power_iteration_one_step_longer():
    """The same subspace iteration with other rounding (see the power module's docstring), float32."""
    X = make_matrix(24, 16, "logspace", 3.0, seed=5).float()
    V0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(6))
    U, S, V = top_singular(X, 4, iters=3, v0=V0)
    U2, S2, V2 = block_power_iteration(X, V0, 4)
    assert torch.allclose(S, S2, rtol=1e-5)
    assert torch.allclose(U.abs(), U2.abs(), atol=1e-4) and torch.allclose(V.abs(), V2.abs(), atol=1e-4)


def test_polar_clip_ratio_estimate_is_four_products_with_the_gram_matrix():
    """sqrt(||G^4 v0|| / ||G^3 v0||) / c: two power steps of two products each on G."""
    X = torch.stack([make_matrix(10, 14, "spiky", 5.0, seed=s) for s in range(3)]).float()
    X = X / torch.linalg.matrix_norm(X, keepdim=True)
    G = gram(X)
    c = torch.tensor([0.05, 0.1, 0.2], dtype=torch.float64)
    v = torch.randn(3, 10, 1, generator=torch.Generator().manual_seed(0))
    power = [torch.linalg.matrix_power(G.double(), j) @ v.double() for j in (3, 4)]
    lam = torch.linalg.vector_norm(power[1], dim=(-2, -1)) / torch.linalg.vector_norm(power[0], dim=(-2, -1))
    expected = lam.sqrt() / c
    assert torch.allclose(_ratio_estimate(G, c), expected, rtol=1e-5, atol=0)


# ------------------------------------------------------------------- sync-free Rayleigh-Ritz replacements
def _values(kind: str, k: int) -> torch.Tensor:
    """k singular values of a named spectrum (float64)."""
    f64 = {"dtype": torch.float64}
    if kind == "logspace":
        return torch.logspace(0, -2, k, **f64)
    if kind == "flat":  # all within 1%
        return 1 + 0.01 * torch.linspace(1, 0, k, **f64)
    if kind == "dominant":
        return torch.cat([torch.tensor([10.0, 7.0, 5.0], **f64), torch.linspace(1, 0.1, k - 3, **f64)])
    if kind == "rank_deficient":
        return torch.cat([torch.tensor([3.0, 2.0], **f64), torch.zeros(k - 2, **f64)])
    if kind == "repeated_top":
        return torch.cat([torch.tensor([5.0, 5.0], **f64), torch.linspace(2, 0.1, k - 2, **f64)])
    if kind == "tiny":
        return 1e-30 * torch.logspace(0, -2, k, **f64)
    if kind == "huge":
        return 1e30 * torch.logspace(0, -2, k, **f64)
    raise ValueError(kind)


_KINDS = ("logspace", "flat", "dominant", "rank_deficient", "repeated_top", "tiny", "huge")
_EPS = {torch.float32: 1e-6, torch.float64: 1e-14}


def _stack(m: int, n: int, kind: str, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([with_singular_values(m, n, lambda k: _values(kind, k), gen) for _ in range(2)]).to(dtype)


def _orthonormal(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(shape, generator=gen, dtype=torch.float64)).Q.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", _KINDS)
def test_top_triplet_is_the_top_singular_triplet_without_svd(kind, dtype):
    """top_triplet(Q, B, V) against a float64 SVD of B (2 x 4 x 20, batched): sigma_1, a unit top pair
    (B v = sigma u_B with sigma = sigma_1, any pair of a repeated top value), and the block identity
    U diag(S) V^T = Q B with U orthonormal and V unit columns (a valid warm start)."""
    B, Q, V0 = _stack(4, 20, kind, dtype), _orthonormal((2, 30, 4), dtype, 1), _orthonormal((2, 20, 4), dtype, 2)
    U, S, V = top_triplet(Q, B, V0)
    assert U.dtype == S.dtype == V.dtype == dtype
    sigma1 = oracle.singular_values(B)[:, 0]
    tol = 20 * _EPS[dtype]
    torch.testing.assert_close(S[:, 0].double(), sigma1, rtol=tol, atol=0)
    Bv = (B.double() @ V[..., 0, None].double())[..., 0]
    u_B = (Q.mT.double() @ U[..., 0, None].double())[..., 0]
    assert float(((Bv - S[:, 0, None].double() * u_B).norm(dim=-1) / sigma1).max()) <= tol
    scale = sigma1[:, None, None]
    torch.testing.assert_close(((U.double() * S.double()[:, None]) @ V.double().mT) / scale,
                               (Q.double() @ B.double()) / scale, rtol=0, atol=tol)
    torch.testing.assert_close(U.mT.double() @ U.double(), torch.eye(4, dtype=torch.float64).expand(2, 4, 4),
                               rtol=0, atol=tol)
    torch.testing.assert_close(torch.linalg.vector_norm(V.double(), dim=-2), torch.ones(2, 4, dtype=torch.float64),
                               rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_triplet_of_a_zero_matrix_keeps_the_basis(dtype):
    Q, V0 = _orthonormal((2, 30, 4), dtype, 1), _orthonormal((2, 20, 4), dtype, 2)
    U, S, V = top_triplet(Q, torch.zeros(2, 4, 20, dtype=dtype), V0)
    assert torch.equal(S, torch.zeros_like(S)) and torch.equal(V, V0)
    torch.testing.assert_close(U.mT @ U, torch.eye(4, dtype=dtype).expand(2, 4, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_eigenvector_of_a_close_second_value_loses_at_most_the_documented_quotient(dtype):
    """lambda_2 / lambda_1 = 1 - 2^-17 (the worst case of the squarings): z^T C z >= lambda_1 (1 - 3e-6 k)."""
    gen = torch.Generator().manual_seed(3)
    Z = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64)).Q
    lam = torch.tensor([1.0, 1 - 2.0**-17, 0.5, 0.1], dtype=torch.float64)
    C = (Z * lam) @ Z.T
    z = top_eigenvector(C.to(dtype)).double()
    assert float(z @ C @ z) >= 1 - 3e-6 * 4
    assert abs(float(z.norm()) - 1) <= 10 * _EPS[dtype]


def test_top_singular_sync_free_matches_the_svd_triplet_and_warm_starts():
    """The sync-free top_singular: the same top triplet as the SVD one (float32), and its V block warm-starts."""
    X = _gapped(36, 28).float()
    U, S, V = top_singular(X, 3, iters=20)
    Uf, Sf, Vf = top_singular(X, 3, iters=20, sync_free=True)
    torch.testing.assert_close(Sf[0], S[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(Uf[:, :1] @ Vf[:, :1].T, U[:, :1] @ V[:, :1].T, rtol=0, atol=1e-5)
    gen = torch.Generator().manual_seed(2)
    for _ in range(10):
        X = X + 0.02 * torch.randn(X.shape, generator=gen)
        _, Sf, Vf = top_singular(X, 3, iters=1, v0=Vf, sync_free=True)
        torch.testing.assert_close(Sf[0].double(), oracle.singular_values(X)[0], rtol=2e-3, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", _KINDS)
def test_ritz_rotation_diagonalises_the_gram_matrix_without_eigh(kind, dtype):
    """ritz_rotation(W) against a float64 SVD of W (2 x 30 x 6): Z orthogonal, the column norms of W Z the
    singular values, and the polar factor W Z diag(1/s) Z^T (over the non-zero s) that of W; the 1% cluster
    ("flat") to its documented delta / 4. float32: G = W^T W holds s_i / s_1 = 1e-2 to ~1e-3 (so does eigh's);
    float64: the exactly repeated top value of a cold start is resolved to ~3e-8."""
    W = _stack(30, 6, kind, dtype)
    Z = ritz_rotation(W)
    assert Z.dtype == dtype
    torch.testing.assert_close(Z.mT @ Z, torch.eye(6, dtype=dtype).expand(2, 6, 6), rtol=0, atol=10 * _EPS[dtype])
    Wn = W.double() / W.double().abs().amax(dim=(-2, -1), keepdim=True)  # the scale out (norms of 1e+-30 in float32)
    WZ = Wn @ Z.double()
    s = torch.linalg.vector_norm(WZ, dim=-2)
    exact = oracle.singular_values(Wn)
    cluster = 0.01 if kind == "flat" else 0.0
    tol = {torch.float32: 1e-3, torch.float64: 1e-7}[dtype] + cluster / 4  # measured 9e-4 (logspace), 3e-8
    torch.testing.assert_close(s.sort(-1, descending=True).values / exact[:, :1], exact / exact[:, :1], rtol=0,
                               atol=tol)
    kept = s > 1e-6 * exact[:, :1]
    polar = (WZ * (kept / s.clamp_min(1e-300))[:, None, :]) @ Z.double().mT
    U, S, Vh = oracle.svd(Wn)
    r = int((S[0] > 1e-6 * S[0, 0]).sum())
    torch.testing.assert_close(polar, U[..., :r] @ Vh[..., :r, :], rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ritz_rotation_of_a_zero_matrix_is_orthogonal(dtype):
    Z = ritz_rotation(torch.zeros(2, 30, 6, dtype=dtype))
    torch.testing.assert_close(Z.mT @ Z, torch.eye(6, dtype=dtype).expand(2, 6, 6))


def test_sync_free_block_power_iteration_gives_the_rayleigh_ritz_triplets():
    """Three close spikes (10, 8, 6 over a tail): the sync-free rotation gives the eigh one's triplets, and
    U diag(s) V^T = U U^T X still."""
    X = _gapped(30, 20)
    V0 = torch.randn(20, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    U, s, V = block_power_iteration(X.float(), V0.float(), 3)
    Uf, sf, Vf = block_power_iteration(X.float(), V0.float(), 3, sync_free=True)
    torch.testing.assert_close(sf, s, rtol=1e-6, atol=0)
    torch.testing.assert_close(Uf @ Vf.mT, U @ V.mT, rtol=0, atol=1e-5)
    torch.testing.assert_close((Uf * sf) @ Vf.mT, Uf @ (Uf.mT @ X.float()), rtol=0, atol=1e-5)
    U, s, V = block_power_iteration(X, V0, 40, sync_free=True)
    torch.testing.assert_close(s, torch.tensor([10.0, 8.0, 6.0], dtype=torch.float64), rtol=1e-10, atol=0)
