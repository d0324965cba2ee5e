"""Optimizers: torch.optim.Optimizer classes with spectral update rules and internal AdamW routing."""

from .base import NonFiniteGradientError, SpectralOptimizer, adamw_direction
from .bases import AdEMAMix, Mars, Signum
from .directions import BASES
from .momentum import ema_momentum, heavy_ball_momentum
from .muon import Muon
from .routing import Route
from .scale import SCALE_CONVENTIONS, shape_scale
from .schedule import DECAY_SHAPES, ClipSchedule
from .spectra import Spectra
from .spike_aware import SpikeAware
from .sso import SSO, MuonSphere, spectral_init_
from .transforms import CLIP_KINDS, spectral_transform
from .wrapper import SpectraWrapper

__all__ = ["BASES", "CLIP_KINDS", "DECAY_SHAPES", "SCALE_CONVENTIONS", "AdEMAMix", "ClipSchedule", "Mars", "Muon",
           "NonFiniteGradientError", "Route", "Signum", "Spectra", "SpectraWrapper", "SpectralOptimizer",
           "adamw_direction", "ema_momentum", "heavy_ball_momentum", "shape_scale", "spectral_transform",
           "MuonSphere", "SSO", "SpikeAware", "spectral_init_"]
