"""Matrix functions on (..., m, n) tensors: msign, soft/hard spectral clipping, power iterations, and SSO's
tangent multiplier. Pure: nothing here imports spectrakit.optim, spectrakit.distributed or spectrakit.train
(DTensor inputs go to the handler that ``import spectrakit.distributed`` registers, see ``_sharded``)."""

from .clip import hard_clip, soft_clip
from .coefficients import optimal_quintic, polar_schedule
from .exact import hard_clip_svd, msign_svd, soft_clip_svd
from .msign import msign
from .multiplier import Multiplier, solve_multiplier
from .power import block_power_iteration, spectral_norm, top_singular

__all__ = ["Multiplier", "block_power_iteration", "hard_clip", "hard_clip_svd", "msign", "msign_svd",
           "optimal_quintic", "polar_schedule", "soft_clip", "soft_clip_svd", "solve_multiplier", "spectral_norm",
           "top_singular"]
