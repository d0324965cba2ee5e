"""Optimizers by name, for the command line and configs.

Each name maps to a class in ``spectrakit.optim`` (looked up when used, so a missing class is a clear error rather
than an import failure) or to ``torch.optim.AdamW``, plus the fixed arguments that make the named variant.
Learning rates and other hyperparameters default to the class's own defaults (the papers' values) unless given.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads when an optimizer is built, not when settings are checked
    import torch
    from torch import nn

# name -> (class name in spectrakit.optim, or "torch.AdamW"; fixed constructor arguments)
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "adamw": ("torch.AdamW", {}),
    "spectra-adamw": ("Spectra", {"base": "adamw"}),
    "spectra-signum": ("Spectra", {"base": "signum"}),
    "spectra-mars": ("Spectra", {"base": "mars"}),
    "spectra-ademamix": ("Spectra", {"base": "ademamix"}),
    "signum": ("Signum", {}),
    "mars": ("Mars", {}),
    "ademamix": ("AdEMAMix", {}),
    "muon": ("Muon", {}),
    "sso": ("SSO", {}),
    "muon-sphere": ("MuonSphere", {}),
    "spike-aware": ("SpikeAware", {}),
}

# torch.optim.AdamW's settings for LLM pre-training (its own defaults target other workloads).
_ADAMW_DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8}


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class behind ``name``; a clear error when the name is unknown or its class is not available."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    cls_name = OPTIMIZERS[name][0]
    if cls_name == "torch.AdamW":
        import torch

        return torch.optim.AdamW
    import spectrakit.optim as optim

    cls = getattr(optim, cls_name, None)
    if cls is None:
        raise ValueError(f"optimizer {name!r} needs spectrakit.optim.{cls_name}, which this installation does not "
                         f"provide yet")
    return cls


def available_optimizers() -> list[str]:
    """Names whose classes can be constructed in this installation."""
    out = []
    for name in OPTIMIZERS:
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
    cls = optimizer_class(name)
    kwargs: dict[str, Any] = dict(OPTIMIZERS[name][1])
    kwargs["weight_decay"] = weight_decay
    if lr is not None:
        kwargs["lr"] = lr
    if clip_c is not None:
        if not name.startswith("spectra-"):
            raise ValueError(f"clip_c applies to the spectra-* optimizers, not to {name!r}")
        kwargs["clip_c"] = clip_c
    kwargs.update(extra or {})
    adamw = OPTIMIZERS[name][0] == "torch.AdamW"
    if adamw:
        kwargs = {**_ADAMW_DEFAULTS, **kwargs}
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
    cls = optimizer_class(name)
    kwargs = optimizer_arguments(name, lr=lr, weight_decay=weight_decay, clip_c=clip_c, extra=extra)
    try:
        if OPTIMIZERS[name][0] == "torch.AdamW":
            wd = kwargs.pop("weight_decay")
            params = [p for p in model.parameters() if p.requires_grad]
            groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
                      {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
            return cls([g for g in groups if g["params"]], **kwargs)
        return cls(model, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for optimizer {name!r} ({cls.__name__}): {exc}") from exc
