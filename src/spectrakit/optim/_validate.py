"""Hyperparameter checks that name the argument and the allowed range."""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_lr(lr: object, name: str = "lr") -> None:
    if hasattr(lr, "dim"):  # tensor learning rates (torch.compile-friendly) are accepted as they are
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {lr!r}")


def check_nonnegative(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_positive(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_unit_interval(value: object, name: str) -> None:
    """0 <= value < 1 (momentum and EMA coefficients)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_betas(betas: object, name: str = "betas", length: int = 2) -> None:
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != length:
        raise ValueError(f"{name} must be a sequence of {length} numbers in [0, 1), got {betas!r}")
    for i, b in enumerate(betas):
        check_unit_interval(b, f"{name}[{i}]")


def check_choice(value: object, name: str, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
