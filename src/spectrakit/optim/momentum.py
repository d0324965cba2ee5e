"""Momentum buffers shared by the optimizers: EMA (Muon-style) and heavy-ball (SGD/Signum-style).

Both update ``buf`` in place and return the direction; the returned tensor may BE ``buf`` (no copy), so
callers must not modify it in place.
"""

from __future__ import annotations

from torch import Tensor


def ema_momentum(grad: Tensor, buf: Tensor, beta: float, nesterov: bool) -> Tensor:
    """EMA momentum: buf <- beta buf + (1 - beta) g; returns buf, or with Nesterov (1 - beta) g + beta buf.

    This is Muon's convention (Jordan et al. 2024): the Nesterov direction blends the fresh gradient
    with the updated buffer instead of adding a second momentum term.
    """
    buf.lerp_(grad, 1 - beta)
    return grad.lerp(buf, beta) if nesterov else buf


def heavy_ball_momentum(grad: Tensor, buf: Tensor, momentum: float, dampening: float, nesterov: bool) -> Tensor:
    """Heavy-ball momentum (torch.optim.SGD's convention): buf <- mu buf + (1 - dampening) g.

    Returns buf, or with Nesterov g + mu buf.
    """
    buf.mul_(momentum).add_(grad, alpha=1 - dampening)
    return grad.add(buf, alpha=momentum) if nesterov else buf
