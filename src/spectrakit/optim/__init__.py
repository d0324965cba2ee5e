"""Optimizers: torch.optim.Optimizer classes with spectral update rules and internal AdamW routing."""

from ..registry import Registration, available, create, register, registration
from .directions import BASES, DIRECTIONS, Direction, adamw_direction, register_direction
from .engine import SpectralEngine, StepPlan
from .momentum import ema_momentum, heavy_ball_momentum
from .muon import Muon, NorMuon
from .plain import AdEMAMix, Mars, Signum
from .routing import Route
from .scale import SCALE_CONVENTIONS, shape_scale
from .spectra import Spectra
from .spectral_optimizer import NonFiniteGradientError, SpectralOptimizer
from .spike_aware import SpikeAware
from .sso import SSO, MuonSphere, spectral_init_
from .threshold_schedule import DECAY_SHAPES, ClipSchedule
from .transforms import CLIP_KINDS, TRANSFORMS, Transform, TransformOptions, register_transform, spectral_transform
from .wrapper import SpectraWrapper

__all__ = ["BASES", "CLIP_KINDS", "DECAY_SHAPES", "DIRECTIONS", "SCALE_CONVENTIONS", "TRANSFORMS", "AdEMAMix",
           "ClipSchedule", "Direction", "Mars", "Muon", "NorMuon", "SpectralEngine", "StepPlan", "Transform",
           "TransformOptions", "register_direction", "register_transform", "Registration", "available", "create",
           "register", "registration",
           "NonFiniteGradientError", "Route", "Signum", "Spectra", "SpectraWrapper", "SpectralOptimizer",
           "adamw_direction", "ema_momentum", "heavy_ball_momentum", "shape_scale", "spectral_transform",
           "MuonSphere", "SSO", "SpikeAware", "spectral_init_"]
