"""Optimizers by name: the one registry that the harness, the benchmarks, the experiments and the tests read.

    spectrakit.optim.available()                                  # the registered names
    spectrakit.optim.create("spectra-adamw", model, lr=3e-3)       # build one over a model (or params / groups)
    spectrakit.optim.register("my-spectra", "spectrakit.optim:Spectra", "SPECTRA, c = 3", clip_c=3.0)

Each :class:`Registration` names a class (as "module:Class", imported when first used, so this module and the
command line's help load without torch; or the class itself), the fixed constructor arguments that make the
variant, and one line saying what it is. ``create`` passes its keyword arguments over the fixed ones. A name
registered here is enrolled in the generic torch.optim contract suite and the distributed tests.

"adamw" is torch.optim.AdamW with LLM pre-training defaults (lr 1e-3, betas (0.9, 0.95)); given a module, its
matrices take the weight decay and its 1-D parameters none.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.optim import Optimizer

TORCH_ADAMW = "torch.optim:AdamW"
#: torch.optim.AdamW's settings for LLM pre-training (its own defaults target other workloads).
ADAMW_DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8}


@dataclass(frozen=True)
class Registration:
    """One registered optimizer: ``target`` ("module:Class" or a class), its fixed arguments, a summary."""

    name: str
    target: Any
    summary: str
    fixed: Mapping[str, Any] = field(default_factory=dict)

    @property
    def class_name(self) -> str:
        """The class's name, without importing it."""
        return self.target.rsplit(":", 1)[1] if isinstance(self.target, str) else self.target.__name__

    @property
    def is_torch_adamw(self) -> bool:
        return self.target == TORCH_ADAMW

    def resolve(self) -> type[Optimizer]:
        """The class (imported on first use); ValueError when its module does not provide it."""
        if not isinstance(self.target, str):
            return self.target
        module, _, attr = self.target.partition(":")
        cls = getattr(importlib.import_module(module), attr, None)
        if cls is None:
            raise ValueError(f"optimizer {self.name!r} needs {module}.{attr}, which this installation does not "
                             "provide")
        return cls

    def arguments(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor's keyword arguments: the fixed ones, then ``kwargs`` (AdamW: over its LLM defaults)."""
        base = {**ADAMW_DEFAULTS} if self.is_torch_adamw else {}
        return {**base, **self.fixed, **kwargs}


_REGISTRY: dict[str, Registration] = {}


def register(name: str, target: Any, summary: str, **fixed: Any) -> Registration:
    """Register (or replace) the optimizer ``name``: ``target`` a class or "module:Class", ``fixed`` the
    constructor arguments that make the variant."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not (isinstance(target, type) or (isinstance(target, str) and ":" in target)):
        raise ValueError(f"target must be an optimizer class or 'module:Class', got {target!r}")
    entry = Registration(name, target, summary, dict(fixed))
    _REGISTRY[name] = entry
    return entry


def available() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_REGISTRY)


def registration(name: str) -> Registration:
    """The registration of ``name``; ValueError listing the names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def create(name: str, params: Any, **kwargs: Any) -> Optimizer:
    """Build the registered optimizer ``name`` over ``params`` (a module, tensors, (name, tensor) pairs or
    param groups) with ``kwargs`` over its fixed arguments."""
    entry = registration(name)
    cls = entry.resolve()
    kwargs = entry.arguments(kwargs)
    if entry.is_torch_adamw and _is_module(params):
        return cls(_decay_groups(params, kwargs.pop("weight_decay", 0.01)), **kwargs)
    return cls(params, **kwargs)


def _is_module(params: Any) -> bool:
    from torch import nn

    return isinstance(params, nn.Module)


def _decay_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """A module's trainable matrices with ``weight_decay`` and its 1-D parameters without."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


_OPTIM = "spectrakit.optim:"
for _name, _target, _summary, _fixed in (
    ("adamw", TORCH_ADAMW, "torch.optim.AdamW (LLM defaults: lr 1e-3, betas (0.9, 0.95))", {}),
    ("spectra-adamw", _OPTIM + "Spectra", "SPECTRA soft clip over AdamW", {"base": "adamw"}),
    ("spectra-signum", _OPTIM + "Spectra", "SPECTRA soft clip over Signum", {"base": "signum"}),
    ("spectra-mars", _OPTIM + "Spectra", "SPECTRA soft clip over MARS", {"base": "mars"}),
    ("spectra-ademamix", _OPTIM + "Spectra", "SPECTRA soft clip over AdEMAMix", {"base": "ademamix"}),
    ("spectra-lion", _OPTIM + "Spectra", "SPECTRA soft clip over Lion", {"base": "lion"}),
    ("signum", _OPTIM + "Signum", "Signum (sign of heavy-ball momentum)", {}),
    ("mars", _OPTIM + "Mars", "MARS-AdamW (variance-reduced gradient)", {}),
    ("ademamix", _OPTIM + "AdEMAMix", "AdEMAMix (fast and slow EMAs)", {}),
    ("lion", _OPTIM + "Spectra", "Lion (sign of interpolated momentum; use ~1/3-1/10 of AdamW's lr)",
     {"base": "lion", "clip": None}),
    ("muon", _OPTIM + "Muon", "Muon (msign of momentum; AdamW for embeddings, head, vectors)", {}),
    ("normuon", _OPTIM + "NorMuon", "NorMuon (Muon with per-row second-moment normalisation)", {}),
    ("sso", _OPTIM + "SSO", "Spectral Sphere Optimizer (tangent steps on ||W||_2 = R)", {}),
    ("muon-sphere", _OPTIM + "MuonSphere", "MuonSphere (SSO with lambda = 0)", {}),
    ("spike-aware", _OPTIM + "SpikeAware", "the spike-aware optimizer (top-k spikes shaped)", {}),
):
    register(_name, _target, _summary, **_fixed)
del _name, _target, _summary, _fixed
