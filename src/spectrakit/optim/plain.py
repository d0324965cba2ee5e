"""Plain base optimizers (SPEC 3): Signum, MARS, AdEMAMix. Each is SPECTRA's native rule with clip=None,
so the direction math lives in one place (``directions``) and the options match ``Spectra``'s.

Update: X <- (1 - lr*wd) X - lr * U with U the base direction. A param group may still opt into spectral
clipping with ``clip="soft"`` (see ``Spectra``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .spectra import Spectra


class Signum(Spectra):
    """Signum (Bernstein et al. 2018): U = sign(buf), buf <- mu buf + (1 - dampening) g (Nesterov: sign(g + mu buf)).

    The buffer starts at zero; momentum=0 gives signSGD. Decoupled weight decay.
    """

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.9, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, *, fallback: Iterable[str] = (),
                 **kwargs: Any) -> None:
        super().__init__(params, lr, base="signum", weight_decay=weight_decay, momentum=momentum, dampening=dampening,
                         nesterov=nesterov, clip=None, fallback=fallback, **kwargs)


class Mars(Spectra):
    """MARS, AdamW flavour (Yuan et al. 2024): AdamW on the variance-reduced gradient
    c_t = g_t + gamma * beta1/(1 - beta1) * (g_t - g_{t-1}), capped to ||c_t||_F <= 1; 1-D tensors use AdamW
    with ``vector_betas``. g_0 = 0. Defaults lr 3e-3, betas (0.95, 0.99), gamma 0.025, vector_betas (0.9, 0.95).
    """

    def __init__(self, params: Any, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.99), eps: float = 1e-8,
                 gamma: float = 0.025, weight_decay: float = 0.0, *, vector_betas: tuple[float, float] = (0.9, 0.95),
                 fallback: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(params, lr, base="mars", weight_decay=weight_decay, betas=betas, eps=eps, gamma=gamma,
                         vector_betas=vector_betas, clip=None, fallback=fallback, **kwargs)


class AdEMAMix(Spectra):
    """AdEMAMix (Pagliardini, Ablin, Grangier 2024): U = (m1_hat + alpha_t m2) / (sqrt(v_hat) + eps), a fast
    bias-corrected EMA m1 (beta1), a slow uncorrected EMA m2 (beta3) and v (beta2).

    ``alpha_warmup`` (steps): alpha_t = alpha * min(1, t/T). ``beta3_warmup`` (steps): beta3's half-life grows
    linearly from beta1's (see ``directions.beta3_at``). The paper's runs often use alpha 8 with both warmups
    equal to the training length.
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
                 alpha: float = 2.0, eps: float = 1e-8, weight_decay: float = 0.0, *, alpha_warmup: int | None = None,
                 beta3_warmup: int | None = None, fallback: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(params, lr, base="ademamix", weight_decay=weight_decay, betas=betas, eps=eps, alpha=alpha,
                         alpha_warmup=alpha_warmup, beta3_warmup=beta3_warmup, clip=None, fallback=fallback,
                         **kwargs)
