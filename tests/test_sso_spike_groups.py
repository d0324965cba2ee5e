"""SSO, MuonSphere and SpikeAware keep every setting of their rule in the param groups: per-group overrides,
checked by key, carried by state_dict, deepcopy and pickle."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from spectrakit.optim.spike_aware import SpikeAware
from spectrakit.optim.sso import SSO, MuonSphere

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = ((12, 8), (10, 6))
# Settings that differ from the constructor defaults, for each optimizer: the second group of an optimizer
# takes them.
OVERRIDES = {
    SSO: {"lr": 0.03, "momentum": 0.8, "nesterov": False, "radius_scale": 2.0, "retraction": "dynamic",
          "retraction_rate": 0.1, "retraction_rate_times_lr": True, "weight_decay": 0.2, "solver": "illinois",
          "solver_tol": 1e-5, "solver_max_iter": 30, "solver_bracket_steps": 12, "solver_sync": False, "batch": 2,
          "power_iters": 3, "power_rank": 2, "cold_power_iters": 20, "ns_steps": 6,
          "ns_dtype": torch.float64, "heads": 2},
    MuonSphere: {"lr": 0.03, "momentum": 0.8, "radius_scale": 0.5, "ns_steps": 5, "power_iters": 2},
    SpikeAware: {"lr": 0.02, "momentum": 0.9, "rank_fraction": 0.3, "power_iters": 2, "cold_power_iters": 6,
                 "rayleigh_ritz": False, "update_scale": 0.3, "eps": 1e-6, "weight_decay": 0.05,
                 "exact_svd": True},
}
BASE = {SSO: {"lr": 0.02}, MuonSphere: {"lr": 0.02}, SpikeAware: {"lr": 0.01, "rank_fraction": 0.15}}
CLASSES = list(OVERRIDES)


def _params(seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g, dtype=torch.float32)) for s in SHAPES]


def _grads(steps: int, seed: int = 1) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=torch.float32) for s in SHAPES] for _ in range(steps)]


def _drive(params: list[nn.Parameter], opts: list[torch.optim.Optimizer], grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for p, grad in zip(params, step_grads):
            p.grad = grad.clone()
        for opt in opts:
            opt.step()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_two_groups_with_different_settings_behave_like_two_optimizers(cls: type) -> None:
    grads = _grads(4)
    joint = _params()
    opt = cls([{"params": [joint[0]]}, {"params": [joint[1]], **OVERRIDES[cls]}], **BASE[cls])
    _drive(joint, [opt], grads)
    apart = _params()
    opts = [cls([apart[0]], **BASE[cls]), cls([apart[1]], **{**BASE[cls], **OVERRIDES[cls]})]
    _drive(apart, opts, grads)
    for a, b in zip(joint, apart):
        assert torch.equal(a.detach(), b.detach())
    default = _params()  # the overrides do change the trajectory (the comparison above can fail)
    _drive(default, [cls(default, **BASE[cls])], grads)
    assert not torch.equal(default[1].detach(), joint[1].detach())


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_state_dict_carries_the_settings_of_each_group(cls: type) -> None:
    """A state dict saved by an optimizer with overridden settings, loaded into one built with the defaults,
    continues the saved run: the settings travel with the groups (and survive ``weights_only`` loading)."""
    grads = _grads(5)
    params = _params()
    opt = cls(params, **{**BASE[cls], **OVERRIDES[cls]})
    _drive(params, [opt], grads[:2])
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    resumed = cls(twins, **BASE[cls])
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert {k: resumed.param_groups[0][k] for k in OVERRIDES[cls]} == OVERRIDES[cls]
    _drive(params, [opt], grads[2:])
    _drive(twins, [resumed], grads[2:])
    for a, b in zip(params, twins):
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_steps_exactly_like_the_original(cls: type, how: str) -> None:
    grads = _grads(4)
    params = _params()
    opt = cls([{"params": [params[0]]}, {"params": [params[1]], **OVERRIDES[cls]}], **BASE[cls], track_stats=True)
    _drive(params, [opt], grads[:2])
    copied = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    twins = [p for group in copied.param_groups for p in group["params"]]
    _drive(params, [opt], grads[2:])
    _drive(twins, [copied], grads[2:])
    for a, b in zip(params, twins):
        assert torch.equal(a.detach(), b.detach())
    assert copied.statistics().keys() == opt.statistics().keys()


@pytest.mark.parametrize("cls, key, value, match", [
    (SSO, "momentum", 1.0, "momentum"), (SSO, "nesterov", 1, "nesterov"), (SSO, "radius_scale", 0.0, "radius_scale"),
    (SSO, "retraction", "soft", "retraction"), (SSO, "retraction_rate", -1.0, "retraction_rate"),
    (SSO, "retraction_rate_times_lr", "yes", "retraction_rate_times_lr"), (SSO, "solver", "newton", "solver"),
    (SSO, "solver_tol", 0.0, "solver_tol"), (SSO, "solver_max_iter", 0, "solver_max_iter"),
    (SSO, "solver_bracket_steps", 2.0, "solver_bracket_steps"), (SSO, "solver_sync", None, "solver_sync"),
    (SSO, "batch", 0, "batch"), (SSO, "power_iters", True, "power_iters"), (SSO, "power_rank", 0, "power_rank"),
    (SSO, "cold_power_iters", -1, "cold_power_iters"), (SSO, "ns_steps", 0, "ns_steps"),
    (SSO, "ns_dtype", torch.int8, "ns_dtype"), (SSO, "split_sizes", [4, 0], "split_sizes"),
    (SSO, "heads", 3, "heads"), (MuonSphere, "solver", "bisection", "MuonSphere has no solver"),
    (SpikeAware, "momentum", -0.1, "momentum"), (SpikeAware, "rank_fraction", 1.0, "rank_fraction"),
    (SpikeAware, "rank_fraction", 0.95, "k must be < min"), (SpikeAware, "power_iters", 0, "power_iters"),
    (SpikeAware, "cold_power_iters", 1.5, "cold_power_iters"), (SpikeAware, "rayleigh_ritz", 1, "rayleigh_ritz"),
    (SpikeAware, "update_scale", 0.0, "update_scale"), (SpikeAware, "eps", -1.0, "eps"),
    (SpikeAware, "exact_svd", "no", "exact_svd"),
])
def test_a_bad_group_setting_is_refused_by_key(cls: type, key: str, value: object, match: str) -> None:
    params = _params()
    with pytest.raises(ValueError, match=match):
        cls([{"params": [params[0]]}, {"params": [params[1]], key: value}], **BASE[cls])
    opt = cls([params[0]], **BASE[cls])
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": [params[1]], key: value})


@pytest.mark.parametrize("cls, group, match", [
    (SpikeAware, {"params": [nn.Parameter(torch.randn(1, 5))]}, "k must be < min"),
    (SSO, {"params": [nn.Parameter(torch.randn(9, 4))], "heads": 2}, "heads"),
    (SSO, {"params": [nn.Parameter(torch.randn(4))], "rule": "spectral"}, "needs matrices"),
])
def test_a_refused_group_leaves_the_optimizer_as_it_was(cls: type, group: dict, match: str) -> None:
    opt = cls([_params()[0]], **BASE[cls])
    groups, routes = list(opt.param_groups), opt.routing
    with pytest.raises(ValueError, match=match):
        opt.add_param_group(group)
    assert opt.param_groups == groups and opt.routing == routes


def test_the_former_msign_names_still_work_with_a_deprecation_warning():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False), torch.nn.Linear(8, 6, bias=False))
    with pytest.warns(DeprecationWarning, match="msign_steps is now called ns_steps"), \
            pytest.warns(DeprecationWarning, match="msign_dtype is now called ns_dtype"):
        opt = SSO(model, msign_steps=5, msign_dtype=torch.float64)
    assert opt.defaults["ns_steps"] == 5 and opt.defaults["ns_dtype"] == torch.float64
    saved = opt.state_dict()
    for group in saved["param_groups"]:  # a state dict written before the rename
        group["msign_steps"], group["msign_dtype"] = group.pop("ns_steps"), group.pop("ns_dtype")
    fresh = SSO(model)
    fresh.load_state_dict(saved)
    assert {g["ns_steps"] for g in fresh.param_groups} == {5} and "msign_steps" not in fresh.param_groups[0]
