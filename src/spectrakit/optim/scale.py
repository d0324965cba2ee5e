"""Rectangular scale conventions: the factor alpha_shape multiplying a matrix update of shape (rows, cols).

- ``"keller"``: sqrt(max(1, rows/cols)) (Keller Jordan's Muon; also what the SPECTRA authors' code applies
  after clipping). Directions of tall matrices are amplified: x8.09 on a 50304 x 768 embedding.
- ``"moonlight"``: 0.2 * sqrt(max(rows, cols)) (Liu et al. 2025, "Muon is scalable"): matches AdamW's update
  RMS so AdamW's lr and weight decay carry over.
- ``"spectral"``: sqrt(rows/cols) (the spectral-norm / muP convention).
- ``"none"``: 1.

Rows and cols are the last two dims (leading dims are a batch of matrices). Vectors and scalars get 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SCALE_CONVENTIONS = ("keller", "moonlight", "spectral", "none")


def shape_scale(shape: Sequence[int], convention: str) -> float:
    """alpha_shape for a tensor of ``shape`` under ``convention`` (one of SCALE_CONVENTIONS)."""
    if convention not in SCALE_CONVENTIONS:
        raise ValueError(f"scale must be one of {SCALE_CONVENTIONS}, got {convention!r}")
    if len(shape) < 2 or convention == "none":
        return 1.0
    rows, cols = shape[-2], shape[-1]
    if convention == "keller":
        return math.sqrt(max(1.0, rows / cols))
    if convention == "moonlight":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(rows / cols)
