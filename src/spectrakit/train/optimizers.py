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


#: The dtypes a dtype argument may name on the command line (``--opt ns_dtype=bfloat16``).
DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")


def _named_dtypes(extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` with the string values of dtype arguments (keys ``dtype`` or ``*_dtype``: ``"bfloat16"`` or
    ``"torch.bfloat16"``) as torch dtypes; a string naming no such dtype raises ValueError naming the key."""
    out = dict(extra)
    for key, value in extra.items():
        if isinstance(value, str) and (key == "dtype" or key.endswith("_dtype")):
            name = value.removeprefix("torch.")
            if name not in DTYPE_NAMES:
                raise ValueError(f"{key} must name a dtype, one of {', '.join(DTYPE_NAMES)}, got {value!r}")
            import torch

            out[key] = getattr(torch, name)
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
    kwargs = entry.arguments({**kwargs, **_named_dtypes(extra or {})})
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


#: Optimizers that give each attention head of the q/k/v projections its own sphere (SSO's granularity in the
#: paper, SPEC section 4).
_PER_HEAD = ("sso", "muon-sphere")


def head_spheres(model: nn.Module) -> nn.Module | list[dict[str, Any]]:
    """Param groups of named parameters for ``model`` in which the q/k/v projections of the harness's
    Transformer are cut into their heads (n_heads blocks for q, kv_heads for k and v: ``heads`` of SSO's
    groups); the model itself where it has no such configuration."""
    config = getattr(model, "config", None)
    if not hasattr(config, "n_heads") or not hasattr(config, "kv_heads"):
        return model
    heads = {"q_proj.weight": config.n_heads, "k_proj.weight": config.kv_heads, "v_proj.weight": config.kv_heads}
    split: dict[int, list[tuple[str, nn.Parameter]]] = {}
    rest = []
    for n, p in model.named_parameters():
        h = next((count for suffix, count in heads.items() if n.endswith(suffix)), None)
        (rest if h is None else split.setdefault(h, [])).append((n, p))
    return [{"params": named, "heads": h} for h, named in split.items()] + [{"params": rest}]


def build_optimizer(name: str, model: nn.Module, *, lr: float | None = None, weight_decay: float = 0.1,
                    clip_c: float | None = None, extra: dict[str, Any] | None = None) -> torch.optim.Optimizer:
    """Construct the optimizer ``name`` over ``model`` (arguments: see ``optimizer_arguments``).

    torch AdamW gets two groups: matrices with ``weight_decay`` and 1-D parameters without. spectrakit optimizers
    receive the module and route its parameters themselves (embeddings, head and vectors to their internal AdamW
    where their defaults say so); SSO and MuonSphere receive named param groups in which each attention head of
    the q/k/v projections is its own sphere (``head_spheres``, the paper's granularity) unless ``extra`` sets
    ``heads``. ``clip_c`` applies to the spectra-* variants only; ``extra`` holds any other
    constructor arguments.
    """
    kwargs = optimizer_arguments(name, lr=lr, weight_decay=weight_decay, clip_c=clip_c, extra=extra)
    params = head_spheres(model) if name in _PER_HEAD and "heads" not in kwargs else model
    try:
        return create(name, params, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for optimizer {name!r} ({registration(name).class_name}): {exc}") from exc
