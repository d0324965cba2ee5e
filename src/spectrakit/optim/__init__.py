"""Optimizers: torch.optim.Optimizer classes with spectral update rules and internal AdamW routing."""

from .base import NonFiniteGradientError, SpectralOptimizer, adamw_direction
from .routing import Route

__all__ = ["NonFiniteGradientError", "Route", "SpectralOptimizer", "adamw_direction"]
