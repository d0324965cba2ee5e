"""Base directions U of the optimizers the step engine drives (SPEC section 3), as registered objects.

A :class:`Direction` advances the optimizer state of a list of parameters in place and returns, for each, the
direction U that the plain optimizer would step along: X <- (1 - lr*wd) X - lr * U. SPECTRA replaces U by
clip_c(U); Muon by msign(U). The hyperparameters a direction reads from its param group, with their
defaults, are ``Direction.defaults``; :func:`check_hyperparameters` validates them all, by key.

- adamw:    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  U = m_hat / (sqrt(v_hat) + eps)
            (bias corrections 1 - b^t; torch.optim.AdamW's direction)
- signum:   buf <- mu buf + (1 - dampening) g (Nesterov: g + mu buf);  U = sign(buf)   (momentum 0: sign(g))
- mars:     c = g + gamma * b1/(1 - b1) * (g - g_prev) (g_prev = 0 at the first step);
            c <- c / max(1, ||c||_F);  U = the AdamW direction of c.  1-D tensors: AdamW with ``vector_betas``
            (Yuan et al. 2024)
- ademamix: m1 = EMA_b1(g) (bias corrected), m2 = EMA_b3(g) (no correction), v = EMA_b2(g^2) (bias corrected);
            U = (m1_hat + alpha_t m2) / (sqrt(v_hat) + eps), with the optional warmups
            alpha_t = alpha * min(1, t/T_alpha) and the half-life warmup of b3 (Pagliardini et al. 2024)
- momentum: EMA momentum buf <- b buf + (1 - b) g;  U = buf, or with Nesterov (1 - b) g + b buf (Muon's)
- lion:     U = sign(b1 m + (1 - b1) g), then m <- b2 m + (1 - b2) g   (Chen et al. 2023)

Every direction works on a list of parameters at once with ``torch._foreach_*`` ops (one fused kernel per op
on accelerators; on CPU the same per-tensor kernels, so the numbers do not depend on how parameters are
grouped). A returned U may BE a state buffer (momentum without Nesterov): callers must not modify it in place.
Given ``out`` (tensors shaped like the gradients, e.g. the views of a stack the engine hands to a matrix
function), a direction writes U there instead and returns ``out``: the AdamW family (adamw, mars, ademamix)
computes its last quotient in place in ``out`` (U = m / (bc1 (sqrt(v) / sqrt(bc2) + eps)), the bias
correction bc1 folded into the denominator), so no separate stack of the directions is made; the others
copy their U into it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._registry import Registry
from ._validate import check_betas, check_nonnegative, check_unit_interval

#: (grads, states, group) -> directions, one per parameter; ``states`` are the parameters' state dicts. With
#: ``Direction.writes_out`` it also takes ``out=`` (a list like ``grads``, or None) and fills it.
DirectionFn = Callable[..., list[Tensor]]


@dataclass(frozen=True)
class Direction:
    """A base direction: its name, its hyperparameters with their defaults, and the update of its state.

    ``betas_length``: how many coefficients its ``betas`` holds (for validation). ``writes_out``: ``compute``
    takes ``out=`` and writes its directions there (else they are copied into a given ``out``).
    """

    name: str
    defaults: Mapping[str, Any]
    compute: DirectionFn
    betas_length: int = 2
    writes_out: bool = False

    def __call__(self, grads: list[Tensor], states: list[dict[str, Any]], group: Mapping[str, Any],
                 out: list[Tensor] | None = None) -> list[Tensor]:
        """The directions of ``grads``, computed per foreach-compatible part (see :func:`foreach_parts`); written
        into ``out`` (tensors shaped like ``grads``) and returned as ``out`` when it is given."""
        result: list[Tensor | None] = [None] * len(grads)
        for part in foreach_parts(grads):
            args = ([grads[i] for i in part], [states[i] for i in part], group)
            into = None if out is None else [out[i] for i in part]
            if into is None:
                directions = self.compute(*args)
            elif self.writes_out:
                directions = self.compute(*args, out=into)
            else:
                directions = self.compute(*args)
                torch._foreach_copy_(into, directions)
                directions = into
            for i, u in zip(part, directions):
                result[i] = u
        return result  # type: ignore[return-value]


def foreach_parts(tensors: list[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped so that one ``torch._foreach_*`` call can take each group: same tensor type
    (a DTensor and a plain tensor never mix, e.g. FSDP2 shards and owner-rank copies), device and dtype."""
    parts: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        parts.setdefault((type(t), t.device, t.dtype), []).append(i)
    return list(parts.values())


#: The registered directions by name: ``register_direction(d)`` adds one, ``direction_named(name)`` reads one.
DIRECTIONS: Registry[Direction] = Registry(Direction, "base")
register_direction = DIRECTIONS.register
direction_named = DIRECTIONS.named


def base_options(base: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters of ``base``: its defaults overridden by ``given`` (None = default), validated.

    A hyperparameter the base does not use raises ValueError naming it.
    """
    defaults = direction_named(base).defaults
    for key, value in given.items():
        if value is not None and key not in defaults:
            raise ValueError(f"{key} is not a hyperparameter of base={base!r} (it uses {sorted(defaults)})")
    options = {k: (given[k] if given.get(k) is not None else v) for k, v in defaults.items()}
    check_hyperparameters(base, options)
    return options


def check_hyperparameters(base: str, options: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> None:
    """Check the hyperparameters of ``base`` in ``options`` (a param group or a dict of options), read over
    ``defaults`` (the optimizer's; then the base's own) so that a group setting one option is checked together
    with the values it will step with. Errors name the key."""
    direction = direction_named(base)
    options = {**direction.defaults, **(defaults or {}), **options}
    if "betas" in direction.defaults:
        check_betas(options["betas"], "betas", length=direction.betas_length)
    if "vector_betas" in direction.defaults:
        check_betas(options["vector_betas"], "vector_betas")
    for key in ("eps", "gamma", "alpha"):
        if key in direction.defaults:
            check_nonnegative(options[key], key)
    for key in ("momentum", "dampening"):
        if key in direction.defaults:
            check_unit_interval(options[key], key)
    if "nesterov" in direction.defaults and not isinstance(options["nesterov"], bool):
        raise ValueError(f"nesterov must be True or False, got {options['nesterov']!r}")
    for key in ("alpha_warmup", "beta3_warmup"):
        value = options.get(key) if key in direction.defaults else None
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be None or an integer >= 1 (steps), got {value!r}")
    if "beta3_warmup" in direction.defaults and options["beta3_warmup"] is not None and options["betas"][0] == 0:
        raise ValueError("beta3_warmup needs betas[0] > 0 (the warmup starts beta3 at beta1)")


# ------------------------------------------------------------------------------------------- state
def _buffers(grads: list[Tensor], states: list[dict[str, Any]], key: str) -> list[Tensor]:
    """The state buffer ``key`` of every parameter, created as zeros like its gradient on first use."""
    for g, state in zip(grads, states):
        if key not in state:
            state[key] = torch.zeros_like(g, memory_format=torch.preserve_format)
    return [state[key] for state in states]


def _count_steps(states: list[dict[str, Any]], buffers: tuple[str, ...], grads: list[Tensor]) -> list[int | Tensor]:
    """Advance each parameter's step count t (starting the ``buffers`` at zero); returns the new t's (ints, or
    0-d tensors advanced in place once sync-free steps made them tensors: bias corrections then stay on the
    device)."""
    for g, state in zip(grads, states):
        if "step" not in state:
            state["step"] = 0
            for key in buffers:
                state[key] = torch.zeros_like(g, memory_format=torch.preserve_format)
        state["step"] += 1
    return [state["step"] for state in states]


def _scale_shift_(tensors: list[Tensor], scales: list[float | Tensor], shifts: list[float | Tensor]) -> None:
    """tensors[i] <- tensors[i] * scales[i] + shifts[i] in place: two foreach ops, unless some scales or shifts
    are 0-d tensors (from the step counts of sync-free steps), which may mix with numbers in one list (a
    parameter's first step next to the others' later ones): then per tensor."""
    if any(isinstance(x, Tensor) for x in (*scales, *shifts)):
        for t, scale, shift in zip(tensors, scales, shifts):
            t.mul_(scale).add_(shift)
    else:
        torch._foreach_mul_(tensors, scales)
        torch._foreach_add_(tensors, shifts)


def _quotient(numerators: list[Tensor], denominators: list[Tensor], out: list[Tensor] | None) -> list[Tensor]:
    """numerators[i] / denominators[i], into ``out`` when given (one copy and one in-place division, so the
    same numbers either way)."""
    if out is None:
        return torch._foreach_div(numerators, denominators)
    torch._foreach_copy_(out, numerators)
    torch._foreach_div_(out, denominators)
    return out


def _adam_denominators(v: list[Tensor], steps: list[int | Tensor], beta1: float, beta2: float,
                       eps: float) -> list[Tensor]:
    """bc1 (sqrt(v) / sqrt(bc2) + eps) with the bias corrections bc_i = 1 - beta_i^t, so that the AdamW
    direction m_hat / (sqrt(v_hat) + eps) is m divided by it."""
    denom = torch._foreach_sqrt(v)
    corrections = [1 - beta1**t for t in steps]
    _scale_shift_(denom, [bc1 / (1 - beta2**t) ** 0.5 for bc1, t in zip(corrections, steps)],
                  [bc1 * eps for bc1 in corrections])
    return denom


# -------------------------------------------------------------------------------------- directions
def adamw_moments(grads: list[Tensor], states: list[dict[str, Any]], betas: tuple[float, float],
                  eps: float, out: list[Tensor] | None = None) -> list[Tensor]:
    """Advance AdamW's moments of every parameter and return U = m_hat / (sqrt(v_hat) + eps) (written into
    ``out`` when given)."""
    if not grads:
        return [] if out is None else out
    beta1, beta2 = betas
    steps = _count_steps(states, ("exp_avg", "exp_avg_sq"), grads)
    m = [state["exp_avg"] for state in states]
    v = [state["exp_avg_sq"] for state in states]
    torch._foreach_lerp_(m, grads, 1 - beta1)
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
    return _quotient(m, _adam_denominators(v, steps, beta1, beta2, eps), out)


def adamw_direction(grad: Tensor, state: dict[str, Any], betas: tuple[float, float], eps: float) -> Tensor:
    """The AdamW direction of one parameter (see :func:`adamw_moments`)."""
    return adamw_moments([grad], [state], betas, eps)[0]


def _adamw(grads: list[Tensor], states: list[dict[str, Any]], group: Mapping[str, Any],
           out: list[Tensor] | None = None) -> list[Tensor]:
    return adamw_moments(grads, states, group["betas"], group["eps"], out)


def _signum(grads: list[Tensor], states: list[dict[str, Any]], group: Mapping[str, Any]) -> list[Tensor]:
    mu = group["momentum"]
    if mu == 0:
        return torch._foreach_sign(grads)
    bufs = _buffers(grads, states, "momentum_buffer")
    torch._foreach_mul_(bufs, mu)
    torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
    out = torch._foreach_add(grads, bufs, alpha=mu) if group["nesterov"] else bufs
    return torch._foreach_sign(out)


def _mars(grads: list[Tensor], states: list[dict[str, Any]], group: Mapping[str, Any],
          out: list[Tensor] | None = None) -> list[Tensor]:
    result: list[Tensor | None] = [None] * len(grads)
    vectors = [i for i, g in enumerate(grads) if g.dim() < 2]
    matrices = [i for i, g in enumerate(grads) if g.dim() >= 2]

    def into(indices: list[int]) -> list[Tensor] | None:
        return None if out is None else [out[i] for i in indices]

    for i, u in zip(vectors, adamw_moments([grads[i] for i in vectors], [states[i] for i in vectors],
                                           group["vector_betas"], group["eps"], into(vectors))):
        result[i] = u
    beta1 = group["betas"][0]
    corrected = []
    for i in matrices:
        grad, last = grads[i], _buffers([grads[i]], [states[i]], "last_grad")[0]
        c = torch.sub(grad, last).mul_(group["gamma"] * beta1 / (1 - beta1)).add_(grad)
        norm = torch.linalg.vector_norm(c.to(torch.promote_types(c.dtype, torch.float32)))
        c.div_(norm.clamp_min(1.0).to(c.dtype))
        last.copy_(grad)
        corrected.append(c)
    for i, u in zip(matrices, adamw_moments(corrected, [states[i] for i in matrices], group["betas"], group["eps"],
                                            into(matrices))):
        result[i] = u
    return result  # type: ignore[return-value]


def beta3_at(step: int | Tensor, beta1: float, beta3: float, warmup: int | None) -> float | Tensor:
    """AdEMAMix's beta3 warmup: the half-life 1/ln(1/beta) moves linearly from beta1's to beta3's.

    beta3_t = exp(ln(beta1) ln(beta3) / ((1 - t/T) ln(beta3) + (t/T) ln(beta1))) for t < T, beta3 after.
    ``step`` may be a 0-d tensor (the counts of sync-free steps): then so is beta3_t (no host read).
    """
    if warmup is None or beta3 == 0:
        return beta3
    log1, log3 = math.log(beta1), math.log(beta3)
    if isinstance(step, Tensor):
        frac = (step / warmup).clamp(max=1.0)
        warming = torch.exp(log1 * log3 / ((1 - frac) * log3 + frac * log1)).clamp(max=beta3)
        return torch.where(step >= warmup, beta3, warming)
    if step >= warmup:
        return beta3
    frac = step / warmup
    return min(math.exp(log1 * log3 / ((1 - frac) * log3 + frac * log1)), beta3)


def _ademamix(grads: list[Tensor], states: list[dict[str, Any]], group: Mapping[str, Any],
              out: list[Tensor] | None = None) -> list[Tensor]:
    beta1, beta2, beta3 = group["betas"]
    alpha, alpha_warmup, beta3_warmup = group["alpha"], group["alpha_warmup"], group["beta3_warmup"]
    steps = _count_steps(states, ("exp_avg", "exp_avg_slow", "exp_avg_sq"), grads)
    m1 = [state["exp_avg"] for state in states]
    v = [state["exp_avg_sq"] for state in states]
    torch._foreach_lerp_(m1, grads, 1 - beta1)
    for state, g, t in zip(states, grads, steps):  # beta3_t may differ per parameter (its own step count)
        weight = 1 - beta3_at(t, beta1, beta3, beta3_warmup)
        state["exp_avg_slow"].lerp_(g, weight.to(g.dtype) if isinstance(weight, Tensor) else weight)
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
    denom = _adam_denominators(v, steps, beta1, beta2, group["eps"])
    # U = (m1_hat + alpha_t m2) / (sqrt(v_hat) + eps) = (m1 + bc1 alpha_t m2) / denom
    numerators = []
    for i, (m, state, t) in enumerate(zip(m1, states, steps)):
        into = {} if out is None else {"out": out[i]}
        weight = 1 - beta1**t
        if alpha_warmup is None:
            weight = weight * alpha
        elif isinstance(t, Tensor):  # the step count of sync-free steps: alpha_t stays on the device
            weight = weight * alpha * (t / alpha_warmup).clamp(max=1.0)
        else:
            weight = weight * alpha * min(1.0, t / alpha_warmup)
        if isinstance(weight, Tensor):
            numerators.append(torch.addcmul(m, state["exp_avg_slow"], weight.to(m.dtype), **into))
        else:
            numerators.append(torch.add(m, state["exp_avg_slow"], alpha=weight, **into))
    torch._foreach_div_(numerators, denom)
    return numerators


def _momentum(grads: list[Tensor], states: list[dict[str, Any]], group: Mapping[str, Any]) -> list[Tensor]:
    beta = group["momentum"]
    bufs = _buffers(grads, states, "momentum_buffer")
    torch._foreach_lerp_(bufs, grads, 1 - beta)
    return torch._foreach_lerp(grads, bufs, beta) if group["nesterov"] else bufs


def _lion(grads: list[Tensor], states: list[dict[str, Any]], group: Mapping[str, Any]) -> list[Tensor]:
    beta1, beta2 = group["betas"]
    m = _buffers(grads, states, "exp_avg")
    out = torch._foreach_lerp(m, grads, 1 - beta1)
    torch._foreach_sign_(out)
    torch._foreach_lerp_(m, grads, 1 - beta2)
    return out


for _direction in (
    Direction("adamw", {"betas": (0.9, 0.999), "eps": 1e-8}, _adamw, writes_out=True),
    Direction("signum", {"momentum": 0.9, "dampening": 0.0, "nesterov": False}, _signum),
    Direction("mars", {"betas": (0.95, 0.99), "eps": 1e-8, "gamma": 0.025, "vector_betas": (0.9, 0.95)}, _mars,
              writes_out=True),
    Direction("ademamix", {"betas": (0.9, 0.999, 0.9999), "eps": 1e-8, "alpha": 2.0, "alpha_warmup": None,
                           "beta3_warmup": None}, _ademamix, betas_length=3, writes_out=True),
    Direction("momentum", {"momentum": 0.95, "nesterov": True}, _momentum),
    Direction("lion", {"betas": (0.9, 0.99)}, _lion),
):
    register_direction(_direction)
del _direction

#: The built-in bases (``DIRECTIONS`` also holds any registered later).
BASES = tuple(DIRECTIONS)
