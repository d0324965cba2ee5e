"""Shared pieces of the optimizer tests: a small model, a deterministic loss (exact SVD clips: _svd_oracle)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def small_model(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """Tall (12 x 6) and wide (3 x 12) matrices plus biases."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).to(dtype)


def batch(step: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 6, generator=g).to(dtype), torch.randn(8, 3, generator=g).to(dtype)


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    x, y = batch(step, next(model.parameters()).dtype)
    return nn.functional.mse_loss(model(x), y)


def backward(model: nn.Module, step: int, loss_scale: float = 1.0) -> None:
    """Gradients of the step's loss; ``loss_scale`` may vary with the step (a callable of it)."""
    model.zero_grad(set_to_none=True)
    scale = loss_scale(step) if callable(loss_scale) else loss_scale
    (scale * loss_of(model, step)).backward()


def run(model: nn.Module, opt, steps: int, start: int = 0, loss_scale: float = 1.0) -> None:
    for k in range(start, start + steps):
        backward(model, k, loss_scale)
        opt.step()


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def rect_scale(shape: torch.Size) -> float:
    return math.sqrt(max(1.0, shape[0] / shape[1])) if len(shape) == 2 else 1.0


def assert_models_close(a: nn.Module, b: nn.Module, rtol: float, atol: float) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
