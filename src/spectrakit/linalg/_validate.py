"""Argument checks shared by the matrix functions (no host synchronisation)."""

from __future__ import annotations

import torch
from torch import Tensor

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(X: object, name: str = "X", min_dim: int = 1) -> Tensor:
    """Raise TypeError/ValueError naming ``name`` unless X is a floating tensor with >= min_dim dims."""
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}")
    if X.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32, float64), got {X.dtype}")
    if X.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(X.shape)}")
    if X.is_sparse:
        raise TypeError(f"{name} must be a dense tensor, got a sparse tensor")
    return X


def check_threshold(c: float | Tensor, name: str = "c") -> None:
    """Python thresholds must be finite and > 0. Tensor thresholds are not inspected (that would sync)."""
    if isinstance(c, Tensor):
        if not c.is_floating_point():
            raise TypeError(f"{name} must be a float or a floating tensor, got dtype {c.dtype}")
        return
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        raise TypeError(f"{name} must be a positive float or a tensor, got {type(c).__name__}")
    if not (c > 0 and c != float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {c}")


def check_positive_int(value: object, name: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def batch_threshold(c: float | Tensor, X: Tensor, dtype: torch.dtype) -> Tensor | float:
    """Shape a threshold for broadcasting against a (..., m, n) matrix batch: (...,) -> (..., 1, 1)."""
    if isinstance(c, Tensor):
        return c.to(device=X.device, dtype=dtype)[..., None, None]
    return float(c)


def check_choice(value: object, name: str, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
