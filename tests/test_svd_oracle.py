"""The tests' exact-SVD oracle (tests/_svd_oracle.py) on matrices built with known singular values."""

from __future__ import annotations

import _svd_oracle as oracle
import torch


def _known(m: int, n: int, s: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X = U diag(s) V^T, U, V) in float64 with orthonormal U (m x k), V (n x k)."""
    gen = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(m, len(s), generator=gen, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, len(s), generator=gen, dtype=torch.float64)).Q
    return (U * torch.tensor(s, dtype=torch.float64)) @ V.mT, U, V


def test_maps_act_on_the_singular_values():
    s = [4.0, 1.0, 0.25]
    X, U, V = _known(7, 3, s)
    t = torch.tensor(s, dtype=torch.float64)
    for got, f in ((oracle.soft_clip(X, 0.5), t / torch.sqrt(1 + (t / 0.5) ** 2)),
                   (oracle.hard_clip(X, 0.5), t.clamp(max=0.5)), (oracle.polar(X), torch.ones(3, dtype=torch.float64)),
                   (oracle.spectral_map(X, torch.square), t**2)):
        torch.testing.assert_close(got, (U * f) @ V.mT, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(oracle.singular_values(X), t, rtol=1e-12, atol=0)
    torch.testing.assert_close(oracle.spectral_norm(X), t[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(oracle.top_pair(X), U[:, :1] @ V[:, :1].mT, rtol=1e-12, atol=1e-12)
    Us, Ss, Vh = oracle.svd(X)
    torch.testing.assert_close((Us * Ss) @ Vh, X, rtol=1e-12, atol=1e-12)


def test_float64_out_batches_and_vectors():
    X = torch.stack([_known(5, 6, [3.0, 2.0], seed=i)[0] for i in range(3)]).float()
    Y = oracle.hard_clip(X, 1.0)
    assert Y.dtype == torch.float64 and Y.shape == X.shape
    torch.testing.assert_close(oracle.singular_values(Y)[:, :2], torch.ones(3, 2, dtype=torch.float64), rtol=1e-6,
                               atol=0)
    assert oracle.spectral_norm(X).shape == (3,)
    x = torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)  # the 1 x n matrix: one singular value ||x|| = 5
    torch.testing.assert_close(oracle.soft_clip(x, 1.0), x / torch.sqrt(torch.tensor(26.0, dtype=torch.float64)))
    torch.testing.assert_close(oracle.polar(x), x / 5)
    assert float(oracle.spectral_norm(x)) == 5.0 and oracle.singular_values(x).shape == (1,)
