"""Per-parameter clipping statistics as scalar tensors (no host sync), shared by Spectra and SpectraWrapper."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _energy(X: Tensor) -> Tensor:
    """||X||_F^2 accumulated in at least float32, returned as float32."""
    return (torch.linalg.vector_norm(X.to(torch.promote_types(X.dtype, torch.float32))) ** 2).float()


def threshold_tensor(c: float | Tensor) -> Tensor:
    """c_t as a scalar tensor for the statistics (a tensor c is detached, not copied to the host)."""
    return c.detach().float() if isinstance(c, Tensor) else torch.tensor(c)  # float32 either way


def record_clip_statistics(stats: dict[str, Tensor], name: str, update: Tensor, bound: Tensor | None, kind: str,
                           c: float | Tensor) -> None:
    """Store "sigma_max/<name>" and (soft/hard clips) "clipped_fraction/<name>" for one clipped tensor.

    sigma_max: the largest per-matrix sigma_max estimate ``bound`` of the direction. clipped_fraction:
    ||clip_c(U)||_F^2 / (c^2 q), q = number of singular values of ``update`` (1 for vectors and scalars):
    the mean of (f(sigma_i)/c)^2, a smooth count of directions at or above c.
    """
    if bound is not None:
        stats[f"sigma_max/{name}"] = bound.detach().amax().float()
    # not math.isinf: c may be symbolic under torch.compile; a tensor c (sync-free steps) is not read
    if kind == "normalize" or (not isinstance(c, Tensor) and c == math.inf):
        return
    q = 1 if update.dim() < 2 else min(update.shape[-2:]) * (update.numel() // (update.shape[-2] * update.shape[-1]))
    stats[f"clipped_fraction/{name}"] = _energy(update) / (c * c * q)
