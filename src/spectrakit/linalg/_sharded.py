"""Sharded (DTensor) inputs of the matrix functions: linalg keeps a slot, spectrakit.distributed fills it.

linalg imports nothing from the distributed layer. ``import spectrakit.distributed`` registers its evaluator
(:func:`spectrakit.distributed.sharded_call`, ``fn(X, ...)`` of a DTensor ``X`` from small R factors) with
:func:`register`; soft_clip, hard_clip, msign and the exact SVD maps hand a DTensor input to :func:`call`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_handler: Callable[..., Any] | None = None


def register(handler: Callable[..., Any] | None) -> None:
    """Install ``handler(fn, X, *args, **kwargs)`` as the evaluator of DTensor inputs (None removes it)."""
    global _handler
    _handler = handler


def is_sharded(X: object) -> bool:
    """Whether X is a DTensor (checked by name, so that plain calls never import torch.distributed)."""
    return type(X).__name__ == "DTensor"


def call(fn: Callable[..., Any], X: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(X, *args, **kwargs)`` for a DTensor X through the registered evaluator."""
    if _handler is None:
        raise TypeError(f"{getattr(fn, '__name__', 'this function')}: X is a DTensor, and the matrix functions "
                        "evaluate DTensors through spectrakit.distributed: run `import spectrakit.distributed` "
                        "first (it registers the sharded evaluator), or pass the full matrix X.full_tensor()")
    return _handler(fn, X, *args, **kwargs)
