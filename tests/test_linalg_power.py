"""block_power_iteration / spectral_norm / top_singular: convergence, warm starts on slowly drifting matrices,
and the identities that make them one power iteration."""

from __future__ import annotations

import _svd_oracle as oracle
import torch
from _linalg_cases import make_matrix

from spectrakit.linalg import block_power_iteration, spectral_norm, top_singular
from spectrakit.linalg.polar_clip import _ratio_estimate
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
