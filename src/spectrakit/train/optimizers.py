"""The harness's view of the optimizer registry (``spectrakit.registry``): arguments checked against the class's
signature, and the optimizer built over a model.

Each name maps to a class (looked up when used, so a missing class is a clear error rather than an import
failure) plus the fixed arguments that make the named variant. Learning rates and other hyperparameters default
to the class's own defaults (the papers' values) unless given.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from ..registry import available, create, registration

if TYPE_CHECKING:  # torch loads when an optimizer is built, not when settings are checked
    import torch
    from torch import nn


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class behind ``name``; a clear error when the name is unknown or its class is not available."""
    return registration(name).resolve()


def available_optimizers() -> list[str]:
    """Names whose classes can be constructed in this installation."""
    out = []
    for name in available():
        try:
            optimizer_class(name)
        except ValueError:
            continue
        out.append(name)
    return out


def optimizer_arguments(name: str, *, lr: float | None = None, weight_decay: float = 0.1,
                        clip_c: float | None = None, extra: dict[str, Any] | None = None,
                        with_defaults: bool = False) -> dict[str, Any]:
    """The constructor arguments ``build_optimizer`` passes for these settings (with ``with_defaults``, every
    argument of the class, its defaults filled in), checked against the class's signature: a ValueError naming
    the optimizer and the argument it does not take."""
    entry = registration(name)
    cls = entry.resolve()
    kwargs: dict[str, Any] = {"weight_decay": weight_decay}
    if lr is not None:
        kwargs["lr"] = lr
    if clip_c is not None:
        if not name.startswith("spectra-"):
            raise ValueError(f"clip_c applies to the spectra-* optimizers, not to {name!r}")
        kwargs["clip_c"] = clip_c
    kwargs = entry.arguments({**kwargs, **(extra or {})})
    signature = inspect.signature(cls)
    try:
        signature.bind(None, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for optimizer {name!r} ({cls.__name__}): {exc}") from exc
    if not with_defaults:
        return kwargs
    defaults = {k: p.default for k, p in list(signature.parameters.items())[1:]
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **kwargs}


def build_optimizer(name: str, model: nn.Module, *, lr: float | None = None, weight_decay: float = 0.1,
                    clip_c: float | None = None, extra: dict[str, Any] | None = None) -> torch.optim.Optimizer:
    """Construct the optimizer ``name`` over ``model`` (arguments: see ``optimizer_arguments``).

    torch AdamW gets two groups: matrices with ``weight_decay`` and 1-D parameters without. spectrakit optimizers
    receive the module and route its parameters themselves (embeddings, head and vectors to their internal AdamW
    where their defaults say so). ``clip_c`` applies to the spectra-* variants only; ``extra`` holds any other
    constructor arguments.
    """
    kwargs = optimizer_arguments(name, lr=lr, weight_decay=weight_decay, clip_c=clip_c, extra=extra)
    try:
        return create(name, model, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for optimizer {name!r} ({registration(name).class_name}): {exc}") from exc
