"""Test matrices with known spectra for the linalg tests (float64 construction; exact SVD is the oracle)."""

from __future__ import annotations

import torch

KINDS = ("flat", "spiky", "logspace", "rank_deficient")


def spectrum(kind: str, k: int, gen: torch.Generator) -> torch.Tensor:
    """k singular values with maximum 1."""
    if kind == "flat":
        s = 0.9 + 0.1 * torch.rand(k, generator=gen, dtype=torch.float64)
    elif kind == "spiky":  # a few values 10-1000x the rest (as in raw stochastic gradients)
        s = 1e-3 * (1 + torch.rand(k, generator=gen, dtype=torch.float64))
        s[: min(3, k)] = torch.tensor([1.0, 0.1, 0.01], dtype=torch.float64)[: min(3, k)]
    elif kind == "logspace":
        s = torch.logspace(0, -6, k, dtype=torch.float64)
    elif kind == "rank_deficient":
        s = torch.rand(k, generator=gen, dtype=torch.float64)
        s[k // 2:] = 0
    else:
        raise ValueError(kind)
    s[0] = 1.0
    return s


def make_matrix(m: int, n: int, kind: str, smax: float, seed: int = 0) -> torch.Tensor:
    """float64 m x n matrix U diag(s) V^T with the given spectrum kind, scaled so sigma_max = smax."""
    gen = torch.Generator().manual_seed(seed)
    return with_singular_values(m, n, lambda k: spectrum(kind, k, gen) * smax, gen)


def with_singular_values(m: int, n: int, values, gen: torch.Generator) -> torch.Tensor:
    """float64 m x n matrix U diag(values(k)) V^T, k = min(m, n), with random orthonormal U, V drawn from gen."""
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return (U * values(k)) @ V.T


def rel_err(Y: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error (of the whole batch) in float64."""
    return (torch.linalg.vector_norm(Y.double() - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-300)).item()


def assert_meets_targets(clip, reference, shape: tuple[int, int], kind: str, targets, scales) -> None:
    """``clip(X, c)`` (float32 X, c = the scale) within each target's tolerance of ``reference(X, c)`` (float64)
    at every (sigma_max/c, tolerance) of ``targets`` and every scale of X and c."""
    for i, (ratio, tol) in enumerate(targets):
        for scale in scales:
            X = make_matrix(*shape, kind, ratio * scale, seed=i).float()
            Y = clip(X, scale)
            assert Y.dtype == torch.float32 and Y.shape == X.shape
            err = rel_err(Y, reference(X, scale))
            assert err <= tol, (shape, kind, ratio, scale, err)
