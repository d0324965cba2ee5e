"""The SPECTRA authors' soft clip (Jiang, Semenov, Stich 2026, arXiv 2603.14315): coupled Newton-Schulz.

Kept for parity and as the baseline that ``soft_clip(method="polar")`` must beat. In the wide orientation
with G = X X^T and A = I + G/c^2: alpha = 1 + min(Gershgorin(G), ||G||_F)/c^2 bounds lambda_max(A), and the
coupled iteration Y_0 = A/alpha, Z_0 = I, T = (3I - Z Y)/2, Y <- Y T, Z <- T Z gives Z -> (A/alpha)^{-1/2},
so H_c(X) = (Z / sqrt(alpha)) X. Accurate only while sigma_max/c is small (convergence needs ~log kappa steps).
"""

from __future__ import annotations

import torch
from torch import Tensor


def soft_clip_newton_schulz(X: Tensor, c: Tensor | float, steps: int = 10,
                            dtype: torch.dtype = torch.bfloat16) -> tuple[Tensor, Tensor]:
    """Return (H_c(X), sigma_bound) for a wide (..., m <= n) X; ``c`` broadcast as (..., 1, 1).

    sigma_bound = sqrt(min(Gershgorin, Frobenius) bound on lambda_max(X X^T)), an upper bound on sigma_max.
    """
    Xw = X.to(dtype)
    G = Xw @ Xw.mT
    bound = torch.minimum(G.abs().sum(-1).amax(-1), torch.linalg.matrix_norm(G.float()).to(dtype))
    c2 = c * c if isinstance(c, Tensor) else torch.as_tensor(c * c, dtype=dtype, device=X.device)
    c2 = c2.to(dtype)
    eye = torch.eye(G.shape[-1], dtype=dtype, device=X.device).expand_as(G)
    alpha = 1 + bound[..., None, None] / c2
    Y = (eye + G / c2) / alpha
    Z = eye.clone()
    for _ in range(steps):
        T = 1.5 * eye - 0.5 * (Z @ Y)
        Y = Y @ T
        Z = T @ Z
    return (Z / alpha.sqrt()) @ Xw, bound.float().sqrt()
