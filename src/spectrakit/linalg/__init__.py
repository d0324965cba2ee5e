"""Matrix functions on (..., m, n) tensors: msign, soft/hard spectral clipping, power iteration."""

from .clip import hard_clip, soft_clip
from .coefficients import optimal_quintic, polar_schedule
from .exact import hard_clip_svd, msign_svd, soft_clip_svd
from .msign import msign
from .power import spectral_norm, top_singular

__all__ = ["hard_clip", "hard_clip_svd", "msign", "msign_svd", "optimal_quintic", "polar_schedule", "soft_clip",
           "soft_clip_svd", "spectral_norm", "top_singular"]
