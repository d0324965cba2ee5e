"""Base directions U_k of the optimizers SPECTRA wraps (SPEC section 3), as functions of (grad, state).

Each function advances the optimizer state of one parameter in place and returns the direction U that a
plain optimizer would step along: X <- (1 - lr*wd) X - lr * U. SPECTRA replaces U by clip_c(U).

- AdamW:    U = m_hat / (sqrt(v_hat) + eps)                                (``adamw_direction``, in base.py)
- Signum:   buf <- mu buf + (1 - dampening) g (Nesterov: g + mu buf);  U = sign(buf)
- MARS:     c = g + gamma * beta1/(1 - beta1) * (g - g_prev) (g_prev = 0 at the first step);
            c <- c / max(1, ||c||_F);  U = AdamW direction of c (moments of c, bias corrected).
            1-D tensors use the plain AdamW direction with ``vector_betas`` (Yuan et al. 2024).
- AdEMAMix: m1 = EMA_beta1(g) (bias corrected), m2 = EMA_beta3(g) (no correction), v = EMA_beta2(g^2)
            (bias corrected);  U = (m1_hat + alpha_t m2) / (sqrt(v_hat) + eps)  (Pagliardini et al. 2024)
            with optional warmups alpha_t = alpha * min(1, t/T_alpha) and the half-life warmup of beta3.
- momentum: EMA momentum (Muon's, Nesterov by default), U = the momentum itself.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._validate import check_betas, check_nonnegative, check_unit_interval
from .base import adamw_direction
from .momentum import ema_momentum, heavy_ball_momentum

BASES = ("adamw", "signum", "mars", "ademamix", "momentum")

#: Hyperparameters each base reads from its param group, with their defaults.
BASE_DEFAULTS: dict[str, dict[str, Any]] = {
    "adamw": {"betas": (0.9, 0.999), "eps": 1e-8},
    "signum": {"momentum": 0.9, "dampening": 0.0, "nesterov": False},
    "mars": {"betas": (0.95, 0.99), "eps": 1e-8, "gamma": 0.025, "vector_betas": (0.9, 0.95)},
    "ademamix": {"betas": (0.9, 0.999, 0.9999), "eps": 1e-8, "alpha": 2.0, "alpha_warmup": None,
                 "beta3_warmup": None},
    "momentum": {"momentum": 0.95, "nesterov": True},
}


def base_options(base: str, given: dict[str, Any]) -> dict[str, Any]:
    """The base's hyperparameters: its defaults overridden by ``given`` (None = default), validated.

    A hyperparameter the base does not use raises ValueError naming it.
    """
    defaults = BASE_DEFAULTS[base]
    for key, value in given.items():
        if value is not None and key not in defaults:
            raise ValueError(f"{key} is not a hyperparameter of base={base!r} (it uses {sorted(defaults)})")
    options = {k: (given[k] if given.get(k) is not None else v) for k, v in defaults.items()}
    validate_base_options(base, options)
    return options


def validate_base_options(base: str, options: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """Check the hyperparameters of ``base`` in ``options`` (a param group or a dict of options), read over
    ``defaults`` (the optimizer's; then the base's own) so that a group setting one option is checked together
    with the values it will step with."""
    options = {**BASE_DEFAULTS[base], **(defaults or {}), **options}
    if "betas" in options:
        check_betas(options["betas"], "betas", length=3 if base == "ademamix" else 2)
    if "vector_betas" in options:
        check_betas(options["vector_betas"], "vector_betas")
    if "eps" in options:
        check_nonnegative(options["eps"], "eps")
    if "momentum" in options:
        check_unit_interval(options["momentum"], "momentum")
    if "dampening" in options:
        check_unit_interval(options["dampening"], "dampening")
    if "nesterov" in options and not isinstance(options["nesterov"], bool):
        raise ValueError(f"nesterov must be True or False, got {options['nesterov']!r}")
    if "gamma" in options:
        check_nonnegative(options["gamma"], "gamma")
    if "alpha" in options:
        check_nonnegative(options["alpha"], "alpha")
    for key in ("alpha_warmup", "beta3_warmup"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be None or an integer >= 1 (steps), got {value!r}")
    if options.get("beta3_warmup") is not None and options["betas"][0] == 0:
        raise ValueError("beta3_warmup needs betas[0] > 0 (the warmup starts beta3 at beta1)")


def signum_direction(grad: Tensor, state: dict[str, Any], momentum: float, dampening: float,
                     nesterov: bool) -> Tensor:
    """U = sign(buf) with heavy-ball momentum started at zero (sign(g) when momentum is 0)."""
    if momentum == 0:
        return grad.sign()
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    return heavy_ball_momentum(grad, state["momentum_buffer"], momentum, dampening, nesterov).sign()


def mars_direction(grad: Tensor, state: dict[str, Any], betas: tuple[float, float], eps: float, gamma: float,
                   vector_betas: tuple[float, float]) -> Tensor:
    """MARS-AdamW: variance-reduced, norm-capped gradient fed to the AdamW direction (1-D: plain AdamW)."""
    if grad.dim() < 2:
        return adamw_direction(grad, state, vector_betas, eps)
    if "last_grad" not in state:
        state["last_grad"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    last = state["last_grad"]
    beta1 = betas[0]
    corrected = torch.sub(grad, last).mul_(gamma * beta1 / (1 - beta1)).add_(grad)
    norm = torch.linalg.vector_norm(corrected.to(torch.promote_types(corrected.dtype, torch.float32)))
    corrected.div_(norm.clamp_min(1.0).to(corrected.dtype))
    last.copy_(grad)
    return adamw_direction(corrected, state, betas, eps)


def beta3_at(step: int, beta1: float, beta3: float, warmup: int | None) -> float:
    """AdEMAMix's beta3 warmup: the half-life 1/ln(1/beta) moves linearly from beta1's to beta3's.

    beta3_t = exp(ln(beta1) ln(beta3) / ((1 - t/T) ln(beta3) + (t/T) ln(beta1))) for t < T, beta3 after.
    """
    if warmup is None or step >= warmup or beta3 == 0:
        return beta3
    frac = step / warmup
    log1, log3 = math.log(beta1), math.log(beta3)
    return min(math.exp(log1 * log3 / ((1 - frac) * log3 + frac * log1)), beta3)


def ademamix_direction(grad: Tensor, state: dict[str, Any], betas: tuple[float, float, float], eps: float,
                       alpha: float, alpha_warmup: int | None, beta3_warmup: int | None) -> Tensor:
    """U = (m1_hat + alpha_t m2) / (sqrt(v_hat) + eps), t = 1, 2, ... the step count of this parameter."""
    if "step" not in state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        state["exp_avg_slow"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    state["step"] += 1
    t = state["step"]
    beta1, beta2, beta3 = betas
    alpha_t = alpha * min(1.0, t / alpha_warmup) if alpha_warmup is not None else alpha
    m1, m2, v = state["exp_avg"], state["exp_avg_slow"], state["exp_avg_sq"]
    m1.lerp_(grad, 1 - beta1)
    m2.lerp_(grad, 1 - beta3_at(t, beta1, beta3, beta3_warmup))
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
    return (m1 / (1 - beta1**t)).add_(m2, alpha=alpha_t).div_(denom)


def momentum_direction(grad: Tensor, state: dict[str, Any], momentum: float, nesterov: bool) -> Tensor:
    """EMA momentum (Muon's): U = buf or, with Nesterov, (1 - beta) g + beta buf."""
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    return ema_momentum(grad, state["momentum_buffer"], momentum, nesterov)


def base_direction(base: str, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
    """Dispatch to the direction of ``base`` with the hyperparameters stored in ``group``."""
    if base == "adamw":
        return adamw_direction(grad, state, group["betas"], group["eps"])
    if base == "signum":
        return signum_direction(grad, state, group["momentum"], group["dampening"], group["nesterov"])
    if base == "mars":
        return mars_direction(grad, state, group["betas"], group["eps"], group["gamma"], group["vector_betas"])
    if base == "ademamix":
        return ademamix_direction(grad, state, group["betas"], group["eps"], group["alpha"], group["alpha_warmup"],
                                  group["beta3_warmup"])
    return momentum_direction(grad, state, group["momentum"], group["nesterov"])
