"""spectral_norm / top_singular: convergence and warm starts on slowly drifting matrices."""

from __future__ import annotations

import _svd_oracle as oracle
import torch
from _linalg_cases import make_matrix

from spectrakit.linalg import spectral_norm, top_singular


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
