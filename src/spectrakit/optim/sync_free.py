"""Sync-free steps: a step that makes no host read, with non-finite gradients handled on the device the way
torch's GradScaler skips steps.

    found_inf = any_i not isfinite(max |g_i|)           (one reduction per gradient, a 0-d bool on the device)
    the step is computed as usual, then  x <- where(found_inf, x_before, x_after)

for every parameter with a gradient and every tensor entry of its optimizer state, so a step with a non-finite
gradient leaves parameters and state bitwise unchanged and a finite one is exactly the ordinary step. Entries
the step created are reset to their initial value (``initial``; zeros unless the optimizer says otherwise) when
it is skipped; Python-number entries (step counts) become 0-d float64 tensors on the parameter's device, so they
are masked too (float64 holds every count exactly, and bias corrections computed from it round as the Python
ones do). The skipped steps are counted in a 0-d int64 tensor on the device.

Cost: one copy of the touched parameters and their state (what the masking selects back from), held while the
masked update runs; the optimizers mask in bounded runs (``SpectralOptimizer._masked``), so a step holds one
run's copies at a time. State held
on another device than the flag (torch.optim.AdamW's host-side step counts without ``capturable=True``) is
selected there, after one copy of the flag.

Not masked: the threshold schedule's bookkeeping in the param groups (it follows the calls of ``step()``, as an
LR scheduler does), the statistics of the step, and the cold start of a warm-started power iteration (SSO,
SpikeAware): after a skipped first step the next one starts from the same seeded block with the warm count.

``sync_free=None`` resolves per step: True when the first parameter lives on an accelerator (any device type
but "cpu" and "meta"), False otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

#: Device types on which ``sync_free=None`` means synchronising steps.
HOST_DEVICES = ("cpu", "meta")


def check_sync_free(value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"sync_free must be None (True on accelerators, False on CPU), True or False, got {value!r}")


def resolve_sync_free(setting: bool | None, params: Iterable[Tensor]) -> bool:
    """``setting``, or for None whether the first of ``params`` lives on an accelerator."""
    if setting is not None:
        return setting
    first = next(iter(params), None)
    return first is not None and first.device.type not in HOST_DEVICES


def nonfinite_peaks(grads: list[Tensor]) -> Tensor:
    """max |g| of every non-empty gradient, stacked (float32, on the first gradient's device; NaN propagates)."""
    device = grads[0].device
    grads = [g._values() if g.is_sparse else g for g in grads]
    return torch.stack([g.detach().abs().amax().float().to(device) for g in grads if g.numel()]
                       or [torch.zeros((), device=device)])


def found_nonfinite(grads: list[Tensor]) -> Tensor:
    """A 0-d bool on the device: whether any gradient holds a NaN or an Inf (no host read)."""
    return ~torch.isfinite(nonfinite_peaks(grads)).all()


def _before(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone()
    return value


def masked_step(step: Callable[[], None], params: list[Tensor], states: dict[Tensor, Any], found_inf: Tensor,
                initial: Callable[[str, Tensor], Tensor]) -> None:
    """Run ``step()`` and select every parameter of ``params`` and every entry of their ``states`` back to its
    value before the step where ``found_inf`` (see the module docstring); ``initial(key, value)`` is the value
    an entry the step created starts from."""
    saved_params = [p.detach().clone() for p in params]
    saved_states = [{k: _before(v) for k, v in states[p].items()} if p in states else {} for p in params]
    step()
    flags = {found_inf.device: found_inf}  # state held elsewhere (e.g. torch's host-side step counts): one copy

    def found_on(device: torch.device) -> Tensor:
        if device not in flags:
            flags[device] = found_inf.to(device)
        return flags[device]

    for p, old in zip(params, saved_params):
        p.detach().copy_(torch.where(found_inf, old, p.detach()))
    for p, old_state in zip(params, saved_states):
        state = states.get(p)
        if not isinstance(state, dict):
            continue
        for key, value in list(state.items()):
            old = old_state.get(key)
            if isinstance(value, Tensor):
                before = initial(key, value) if old is None else old
                value.copy_(torch.where(found_on(value.device), before.to(value.dtype), value))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                counter = torch.full((), value, dtype=torch.float64, device=p.device)
                state[key] = counter.masked_fill_(found_on(p.device), 0 if old is None else old)


def skip_counter(count: int | Tensor, device: torch.device) -> Tensor:
    """``count`` as the 0-d int64 counter of skipped steps on ``device`` (a fill, no copy from the host; a
    tensor elsewhere is read once). Made when the optimizer is built, so that a compiled step only advances
    it in place."""
    if isinstance(count, Tensor) and count.device == device:
        return count
    return torch.full((), int(count), dtype=torch.int64, device=device)


def count_skipped(counter: int | Tensor, found_inf: Tensor) -> Tensor:
    """The skipped-step counter as a 0-d int64 tensor on ``found_inf``'s device, advanced by ``found_inf``."""
    return skip_counter(counter, found_inf.device).add_(found_inf)


def first_device(params: Iterable[Tensor]) -> torch.device | None:
    first = next(iter(params), None)
    return None if first is None else first.device


def zeros_initial(key: str, value: Tensor) -> Tensor:
    """The initial value of a state entry created by a skipped step: zeros (every moment and buffer here)."""
    return torch.zeros_like(value)
