"""The registry of every public optimizer configuration, OptimizerInfo-style (after torch's
``torch.testing._internal.common_optimizers``), consumed by the generic tests of ``test_optim_contract.py``.

Each :class:`OptimInfo` is one configuration: a factory taking ``params`` (an ``nn.Module``, (name, tensor)
pairs, tensors or param-group dicts) and keyword arguments, the configuration's own keyword arguments, the
constructor arguments that are weight decays, and the generic tests that do not apply to it (``skips``) or
that fail on a known defect (``xfails``, strict: they turn red once the defect is fixed; remove the mark
then). Every generic test is parametrized over ``OPTIMIZERS``, so adding an entry enrols it in all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import Optimizer

from spectrakit.optim import SSO, Spectra, SpectraWrapper, available, create, registration


@dataclass(frozen=True)
class OptimInfo:
    """One optimizer configuration under the generic contract tests.

    Attributes:
        name: the test id.
        cls: the public class under test (the registry must cover every public optimizer class).
        factory: ``factory(params, **kwargs) -> Optimizer``.
        kwargs: the configuration's keyword arguments (always including ``lr``); tests may override them.
        group_options: hyperparameters (other than lr and weight_decay) that one param group sets for itself.
        wd_args: the constructor arguments that set a weight decay; ``weight_decay(0.0)`` sets all of them.
        retracts: why the weights move at a step even without a gradient step (SSO's retraction onto the
            sphere), or None. Tests that expect bitwise-unchanged weights with a gradient present say what
            they do for such entries.
        skips: test name -> why that generic test does not apply to this configuration.
        xfails: test name -> the known defect it fails on (a strict xfail).
    """

    name: str
    cls: type
    factory: Callable[..., Optimizer]
    kwargs: Mapping[str, Any]
    group_options: Mapping[str, Any] = field(default_factory=dict)
    wd_args: tuple[str, ...] = ("weight_decay",)
    retracts: str | None = None
    skips: Mapping[str, str] = field(default_factory=dict)
    xfails: Mapping[str, str] = field(default_factory=dict)

    @property
    def lr(self) -> float:
        return self.kwargs["lr"]

    def make(self, params: Any, **overrides: Any) -> Optimizer:
        return self.factory(params, **{**self.kwargs, **overrides})

    def weight_decay(self, value: float) -> dict[str, float]:
        """Keyword arguments that set every weight decay of the configuration to ``value``."""
        return {name: value for name in self.wd_args}

    def marks(self, test: str) -> list[pytest.MarkDecorator]:
        out = []
        if test in self.skips:
            out.append(pytest.mark.skip(reason=self.skips[test]))
        if test in self.xfails:
            out.append(pytest.mark.xfail(strict=True, reason=self.xfails[test]))
        return out


# ------------------------------------------------------------------------------------------- factories
def _torch_params(params: Any) -> Any:
    """torch optimizers take no nn.Module: give them the module's named parameters (frozen ones included)."""
    return list(params.named_parameters()) if isinstance(params, nn.Module) else params


def _wrapper_over(inner: type[Optimizer], inner_kwargs: Mapping[str, Any],
                  **fixed: Any) -> Callable[..., Optimizer]:
    """SpectraWrapper(inner(params, lr, weight_decay, **inner_kwargs), **fixed, **kwargs)."""
    def factory(params: Any, *, lr: Any, weight_decay: float | None = None, **kwargs: Any) -> Optimizer:
        given = {"lr": lr} if weight_decay is None else {"lr": lr, "weight_decay": weight_decay}
        return SpectraWrapper(inner(_torch_params(params), **given, **inner_kwargs), **fixed, **kwargs)
    return factory


SSO_RETRACTS = ("the hard retraction W <- W R / sigma rescales every hidden matrix onto its sphere at each step, "
                "whatever the gradient or lr (SSO's design, Xie et al. 2026)")


# -------------------------------------------------------------------------------------------- registry
_BASE_GROUP_OPTIONS = {"adamw": {"betas": (0.8, 0.99)}, "signum": {"momentum": 0.5}, "mars": {"gamma": 0.5},
                       "ademamix": {"beta3_warmup": 10}, "momentum": {"momentum": 0.5}, "lion": {"betas": (0.8, 0.9)}}
_SPECTRA_KWARGS = {"lr": 1e-2, "clip_c": 1.0}

#: Test settings of the registered optimizers (``spectrakit.optim.available()``): keyword arguments, the options
#: one param group sets for itself, the weight-decay arguments and skips. A registered name missing here takes
#: lr 1e-2 and no group options, so registering an optimizer enrols it in every generic test.
_REGISTERED: dict[str, dict[str, Any]] = {
    **{f"spectra-{base}": {"kwargs": _SPECTRA_KWARGS, "group_options": {**_BASE_GROUP_OPTIONS[base], "clip_c": 0.5}}
       for base in ("adamw", "signum", "mars", "ademamix", "lion")},
    "signum": {"group_options": {"momentum": 0.5}},
    "mars": {"group_options": {"gamma": 0.5}},
    "ademamix": {"group_options": {"beta3_warmup": 10}},
    "lion": {"group_options": {"betas": (0.8, 0.9)}},
    "muon": {"kwargs": {"lr": 2e-2}, "group_options": {"momentum": 0.5}},
    "normuon": {"group_options": {"beta2": 0.5}},
    # A small solver budget (12 instead of up to 31 msign calls a step) keeps SSO's tests fast; no generic test
    # depends on the solver's accuracy.
    "sso": {"kwargs": {"lr": 2e-2, "solver_max_iter": 4, "solver_bracket_steps": 4},
            "group_options": {"radius_scale": 2.0}, "wd_args": ("weight_decay", "adamw_weight_decay"),
            "retracts": SSO_RETRACTS, "skips": {"test_zero_grads_with_zero_weight_decay_do_not_move": SSO_RETRACTS}},
    "muon-sphere": {"kwargs": {"lr": 2e-2}, "group_options": {"radius_scale": 2.0},
                    "wd_args": ("weight_decay", "adamw_weight_decay"), "retracts": SSO_RETRACTS,
                    "skips": {"test_zero_grads_with_zero_weight_decay_do_not_move": SSO_RETRACTS}},
    "spike-aware": {"group_options": {"momentum": 0.5}, "wd_args": ("weight_decay", "adamw_weight_decay")},
}


def _registered_entries() -> list[OptimInfo]:
    """One entry per registered optimizer but torch's own AdamW (the source of the contract, not its subject)."""
    out = []
    for name in available():
        entry = registration(name)
        if entry.is_torch_adamw:
            continue
        settings = _REGISTERED.get(name, {})
        out.append(OptimInfo(name, entry.resolve(), partial(create, name), settings.get("kwargs", {"lr": 1e-2}),
                             settings.get("group_options", {}), settings.get("wd_args", ("weight_decay",)),
                             settings.get("retracts"), settings.get("skips", {})))
    return out


# Spectra configurations beyond the registered ones: every clip kind over the default AdamW base, and the
# momentum base with the soft clip and with normalize (Muon's limit). The direction and the clip are independent
# stages, so with the registered spectra-* entries this covers each of both.
_SPECTRA_CONFIGS = [("adamw", "hard"), ("adamw", "normalize"), ("adamw", None), ("momentum", "soft"),
                    ("momentum", "normalize")]


def _spectra_entries() -> list[OptimInfo]:
    out = []
    for base, clip in _SPECTRA_CONFIGS:
        kwargs = {**_SPECTRA_KWARGS, "base": base, "clip": clip}
        options = _BASE_GROUP_OPTIONS[base]
        group_options = {**options, "clip_c": 0.5} if clip is not None else options
        out.append(OptimInfo(f"Spectra-{base}-{clip}", Spectra, Spectra, kwargs, group_options))
    return out


def _sso_illinois() -> OptimInfo:
    """SSO with the Illinois solver (secant bracketing, false position): the registered "sso" entry's settings."""
    sso = _REGISTERED["sso"]
    return OptimInfo("SSO-illinois", SSO, SSO, {**sso["kwargs"], "solver": "illinois"}, sso["group_options"],
                     sso["wd_args"], sso["retracts"], sso["skips"])


OPTIMIZERS: list[OptimInfo] = [
    *_registered_entries(),
    *_spectra_entries(),
    _sso_illinois(),
    OptimInfo("SpectraWrapper-AdamW", SpectraWrapper, _wrapper_over(torch.optim.AdamW, {}),
              {"lr": 1e-2, "clip_c": 1.0}, {"clip_c": 0.5, "betas": (0.8, 0.99)}),
    OptimInfo("SpectraWrapper-SGD", SpectraWrapper,
              _wrapper_over(torch.optim.SGD, {"momentum": 0.9}, decoupled_weight_decay=False),
              {"lr": 1e-2, "clip_c": 1.0}, {"clip_c": 0.5, "momentum": 0.5},
              skips={"test_sparse_grads_rejected": "torch.optim.SGD supports sparse gradients, and the wrapper "
                                                   "clips the dense direction it recovers from the parameter "
                                                   "change: sparse gradients are supported here, not rejected"}),
]


def cases(test: str, variants: Mapping[str, Any] | None = None) -> list[Any]:
    """``OPTIMIZERS`` as pytest params of the generic test ``test``, with each entry's skips and xfails.

    With ``variants`` (id -> value), the params are (info, value) pairs for every entry and variant; a skip or
    xfail keyed ``"test[variant id]"`` then applies to that variant alone, one keyed ``"test"`` to all.
    """
    if variants is None:
        return [pytest.param(info, id=info.name, marks=info.marks(test)) for info in OPTIMIZERS]
    return [pytest.param(info, value, id=f"{info.name}-{vid}", marks=info.marks(test) + info.marks(f"{test}[{vid}]"))
            for info in OPTIMIZERS for vid, value in variants.items()]
