"""Hyperparameter checks that name the argument and the allowed range."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def check_lr(lr: object, name: str = "lr") -> None:
    """A finite number >= 0, or a real floating tensor holding one such number (0-d or 1 element, as torch.optim)."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1 or not lr.dtype.is_floating_point:
            raise ValueError(f"{name} must be a number or a floating tensor with one element (0-d or shape (1,)), "
                             f"got a {lr.dtype} tensor of shape {tuple(lr.shape)}")
        if lr.device.type != "meta":
            value = float(lr.detach().reshape(()))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got tensor({value})")
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 or a one-element tensor, got {lr!r}")


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
