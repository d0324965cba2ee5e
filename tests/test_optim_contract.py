"""The torch.optim contract, held generically over every optimizer configuration of ``_optim_infos.OPTIMIZERS``
(after PyTorch's test/test_optim.py, TestOptimRenewed): no-ops, param groups, LR schedulers, tensor lrs,
add_param_group, state dicts, deepcopy/pickle, hooks, dtypes, GradScaler, input rejection, closures.

The model is tiny (8 x 6 and 6 x 8 matrices, 8- and 6-vectors) in float32 unless a test says otherwise, and
its loss is separable, L = sum_p ||p - T_p(step)||^2 / 2 with random targets: every parameter's gradient is a
full-rank function of that parameter alone, so runs that differ in one param group can be compared group by
group.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import sys

import pytest
import torch
from _optim_infos import OPTIMIZERS, cases
from torch import nn
from torch.optim import Optimizer, lr_scheduler
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import spectrakit
from spectrakit.optim import spectral_init_

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 3


# ------------------------------------------------------------------------------------------------ helpers
def make_model(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """0.weight 8x6, 0.bias 8, 2.weight 6x8, 2.bias 6 (never run forward: the loss below reads the parameters)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 6)).to(dtype)


def loss_of(params, step: int) -> torch.Tensor:
    total = torch.zeros(())
    for i, p in enumerate(params):
        gen = torch.Generator().manual_seed(1000 * step + i)
        target = torch.randn(p.shape, generator=gen).to(p.dtype)
        total = total + 0.5 * (p - target).float().square().sum()
    return total


def backward(model: nn.Module, step: int) -> torch.Tensor:
    for p in model.parameters():
        p.grad = None
    loss = loss_of(model.parameters(), step)
    loss.backward()
    return loss


def train(model: nn.Module, opt: Optimizer, steps: int = STEPS, start: int = 0) -> None:
    for k in range(start, start + steps):
        backward(model, k)
        opt.step()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same(model: nn.Module, other: nn.Module | dict[str, torch.Tensor]) -> None:
    """Bitwise equal parameters."""
    ref = other if isinstance(other, dict) else snapshot(other)
    for n, p in model.named_parameters():
        assert torch.equal(p, ref[n]), f"{n} differs"


def assert_equal_trees(a, b, where: str = "state_dict") -> None:
    """Nested dicts/lists of tensors and plain values: same structure, bitwise-equal tensors, equal values."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_trees(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_trees(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def named(model: nn.Module, prefix: str) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if n.startswith(prefix)]


def all_moved(model: nn.Module, before: dict[str, torch.Tensor], prefix: str = "") -> None:
    for n, p in model.named_parameters():
        if n.startswith(prefix):
            assert torch.isfinite(p).all(), f"{n} is not finite"
            assert not torch.equal(p, before[n]), f"{n} did not move"


# ------------------------------------------------------------------------------------------- registry
def test_registry_covers_every_public_optimizer():
    public = {getattr(spectrakit, name) for name in spectrakit.__all__}
    public = {c for c in public if inspect.isclass(c) and issubclass(c, Optimizer)}
    assert public and public <= {info.cls for info in OPTIMIZERS}


def test_every_registered_optimizer_is_under_the_contract():
    from spectrakit.optim import available, registration

    names = {info.name for info in OPTIMIZERS}
    registered = {n for n in available() if not registration(n).is_torch_adamw}
    assert registered and registered <= names
    assert "lion" in registered and "normuon" in registered


def test_registry_skips_and_xfails_name_real_tests():
    tests = {name for name, _ in inspect.getmembers(sys.modules[__name__], inspect.isfunction)
             if name.startswith("test_")}
    for info in OPTIMIZERS:
        assert {key.split("[")[0] for key in (*info.skips, *info.xfails)} <= tests, info.name
    assert len({info.name for info in OPTIMIZERS}) == len(OPTIMIZERS)


# ------------------------------------------------------------------------------------------------ no-ops
@pytest.mark.parametrize("info", cases("test_step_without_grads_is_a_noop"))
def test_step_without_grads_is_a_noop(info):
    model = make_model()
    opt = info.make(model)
    before = snapshot(model)
    for _ in range(2):
        opt.step()
    assert_same(model, before)
    assert len(opt.state) == 0


@pytest.mark.parametrize("info", cases("test_zero_grads_with_zero_weight_decay_do_not_move"))
def test_zero_grads_with_zero_weight_decay_do_not_move(info):
    model = make_model()
    opt = info.make(model, **info.weight_decay(0.0))
    before = snapshot(model)
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    assert_same(model, before)


# ------------------------------------------------------------------------------------------ param groups
@pytest.mark.parametrize("info", cases("test_param_group_lr_zero_does_not_move"))
def test_param_group_lr_zero_does_not_move(info):
    model = make_model()
    if info.retracts:  # put the matrices on their spheres: the retraction then only fixes rounding
        spectral_init_(model)
    opt = info.make([{"params": named(model, "0."), "lr": 0.0}, {"params": named(model, "2.")}])
    before = snapshot(model)
    train(model, opt)
    for n, p in named(model, "0."):
        if info.retracts and p.dim() >= 2:
            torch.testing.assert_close(p, before[n], rtol=1e-5, atol=1e-6, msg=f"{n} moved at lr=0")
        else:
            assert torch.equal(p, before[n]), f"{n} moved at lr=0"
    all_moved(model, before, "2.")


@pytest.mark.parametrize("info", cases("test_param_group_weight_decay_honoured"))
def test_param_group_weight_decay_honoured(info):
    """Group 0 ("0.*") takes wd0, group 1 ("2.*") wd1; with a separable loss each group's trajectory must match
    a run where both groups take that group's decay, and the decay must change the trajectory."""
    def run(wd0: float, wd1: float) -> dict[str, torch.Tensor]:
        model = make_model()
        opt = info.make([{"params": named(model, "0."), "weight_decay": wd0},
                         {"params": named(model, "2."), "weight_decay": wd1}])
        train(model, opt)
        return snapshot(model)

    mixed, none, both = run(0.0, 0.5), run(0.0, 0.0), run(0.5, 0.5)
    for n in mixed:
        assert torch.equal(mixed[n], (none if n.startswith("0.") else both)[n]), n
        if not info.retracts or mixed[n].dim() < 2:  # the hard retraction undoes any decay of hidden matrices
            assert not torch.equal(none[n], both[n]), f"weight_decay had no effect on {n}"


@pytest.mark.parametrize("info", cases("test_add_param_group_later_trains_the_new_params"))
def test_add_param_group_later_trains_the_new_params(info):
    model = make_model()
    opt = info.make(named(model, "0."))
    train(model, opt, 2)
    before = snapshot(model)
    opt.add_param_group({"params": named(model, "2.")})
    train(model, opt, 2, start=2)
    all_moved(model, before)


# -------------------------------------------------------------------------------------------- schedulers
SCHEDULERS = {
    "StepLR": lambda opt, lr: lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "MultiStepLR": lambda opt, lr: lr_scheduler.MultiStepLR(opt, milestones=[1, 3], gamma=0.5),
    "ConstantLR": lambda opt, lr: lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=2),
    "LinearLR": lambda opt, lr: lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=3),
    "ExponentialLR": lambda opt, lr: lr_scheduler.ExponentialLR(opt, gamma=0.9),
    "PolynomialLR": lambda opt, lr: lr_scheduler.PolynomialLR(opt, total_iters=4, power=2.0),
    "CosineAnnealingLR": lambda opt, lr: lr_scheduler.CosineAnnealingLR(opt, T_max=4),
    "CosineAnnealingWarmRestarts": lambda opt, lr: lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=2),
    "CyclicLR": lambda opt, lr: lr_scheduler.CyclicLR(opt, base_lr=lr / 10, max_lr=lr, step_size_up=2,
                                                      cycle_momentum=False),
    "OneCycleLR": lambda opt, lr: lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=10, cycle_momentum=False),
    "LambdaLR": lambda opt, lr: lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 3)),
    "MultiplicativeLR": lambda opt, lr: lr_scheduler.MultiplicativeLR(opt, lambda k: 0.9),
    "SequentialLR": lambda opt, lr: lr_scheduler.SequentialLR(
        opt, [lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=2), lr_scheduler.ExponentialLR(opt, 0.9)],
        milestones=[2]),
    "ChainedScheduler": lambda opt, lr: lr_scheduler.ChainedScheduler(
        [lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=2), lr_scheduler.ExponentialLR(opt, gamma=0.9)]),
    "ReduceLROnPlateau": lambda opt, lr: lr_scheduler.ReduceLROnPlateau(opt, patience=0),
}


def drive(model: nn.Module, opt: Optimizer, scheduler, steps: int = 4) -> None:
    for k in range(steps):
        loss = backward(model, k)
        opt.step()
        if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            scheduler.step(loss.item())
        elif scheduler is not None:
            scheduler.step()


@pytest.mark.parametrize(("info", "scheduler"), cases("test_every_lr_scheduler", SCHEDULERS))
def test_every_lr_scheduler(info, scheduler):
    model = make_model()
    opt = info.make(model)
    before = snapshot(model)
    drive(model, opt, scheduler(opt, info.lr))
    all_moved(model, before)


# ----------------------------------------------------------------------------------------------- tensor lr
LR_SHAPES = {"0d": (), "1elem": (1,)}


@pytest.mark.parametrize(("info", "shape"), cases("test_tensor_lr_takes_the_float_lr_steps", LR_SHAPES))
def test_tensor_lr_takes_the_float_lr_steps(info, shape):
    a, b = make_model(), make_model()
    lr = torch.full(shape, info.lr, dtype=torch.float64)
    train(a, info.make(a, lr=lr))
    train(b, info.make(b, lr=info.lr))
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")


TENSOR_LR_SCHEDULES = {f"{lr_id}-{name}": (shape, name) for lr_id, shape in LR_SHAPES.items()
                       for name in ("LinearLR", "OneCycleLR")}


@pytest.mark.parametrize(("info", "case"), cases("test_tensor_lr_under_scheduler", TENSOR_LR_SCHEDULES))
def test_tensor_lr_under_scheduler(info, case):
    shape, scheduler = case
    model = make_model()
    opt = info.make(model, lr=torch.full(shape, info.lr))
    before = snapshot(model)
    drive(model, opt, SCHEDULERS[scheduler](opt, info.lr))
    all_moved(model, before)


@pytest.mark.parametrize("info", cases("test_tensor_lr_with_two_elements_rejected"))
def test_tensor_lr_with_two_elements_rejected(info):
    with pytest.raises((ValueError, TypeError), match="lr"):
        info.make(make_model(), lr=torch.tensor([1e-3, 1e-3]))


# ----------------------------------------------------------------------------------------------- state dicts
def _round_trip_weights_only(sd: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def make_resume_model() -> nn.Module:
    """make_model's matrices and vectors plus what the routers treat apart: an embedding table ("embed.weight",
    10 x 6), an output head ("lm_head.weight", 10 x 6) and stacked matrices ("experts", 2 x 8 x 6)."""
    model = make_model()
    model.add_module("embed", nn.Embedding(10, 6))
    model.add_module("lm_head", nn.Linear(6, 10, bias=False))
    model.register_parameter("experts", nn.Parameter(torch.randn(2, 8, 6) / 3))
    return model


# How the state travels (deepcopy, or torch.save/torch.load(weights_only=True)), with or without an LR
# scheduler's state, and whether statistics are tracked (they must then match too).
RESUME = {"deepcopy": ("deepcopy", None, False), "torch.save": ("torch.save", None, False),
          "torch.save-OneCycleLR": ("torch.save", "OneCycleLR", False),
          "torch.save-LambdaLR-track_stats": ("torch.save", "LambdaLR", True)}


@pytest.mark.parametrize(("info", "how"), cases("test_state_dict_resume_is_bitwise", RESUME))
def test_state_dict_resume_is_bitwise(info, how):
    """The resume contract: STEPS steps, state_dict() (with the scheduler's), a fresh optimizer (and scheduler)
    loads it, STEPS more steps; the weights, the optimizer's state dict and its statistics are bitwise those of
    the uninterrupted run."""
    via, scheduler, track_stats = how
    kwargs = {"track_stats": True} if track_stats else {}

    def make(model):
        opt = info.make(model, **kwargs)
        return opt, SCHEDULERS[scheduler](opt, info.lr) if scheduler else None

    def steps(model, opt, sched, start):
        for k in range(start, start + STEPS):
            backward(model, k)
            opt.step()
            if sched is not None:
                sched.step()

    full, part = make_resume_model(), make_resume_model()
    full_opt, full_sched = make(full)
    steps(full, full_opt, full_sched, 0)
    steps(full, full_opt, full_sched, STEPS)
    opt, sched = make(part)
    steps(part, opt, sched, 0)
    saved = {"opt": opt.state_dict(), "sched": sched.state_dict() if sched else None}
    saved = copy.deepcopy(saved) if via == "deepcopy" else _round_trip_weights_only(saved)
    del opt, sched
    resumed, resumed_sched = make(part)
    resumed.load_state_dict(saved["opt"])
    if resumed_sched is not None:
        resumed_sched.load_state_dict(saved["sched"])
    steps(part, resumed, resumed_sched, STEPS)
    assert_same(part, full)
    assert_equal_trees(resumed.state_dict(), full_opt.state_dict())
    if track_stats:  # (the unclipped configurations record none)
        assert_equal_trees(resumed.statistics(), full_opt.statistics(), "statistics")


@pytest.mark.parametrize("info", cases("test_state_dict_is_deterministic"))
def test_state_dict_is_deterministic(info):
    """Two optimizers taking the same steps give equal state dicts (the same keys, equal tensors)."""
    dicts = []
    for _ in range(2):
        model = make_model()
        opt = info.make(model)
        train(model, opt)
        dicts.append(_round_trip_weights_only(opt.state_dict()))
    assert_equal_trees(dicts[0], dicts[1])


@pytest.mark.parametrize("info", cases("test_plain_state_dict_into_named_optimizer_keeps_real_names"))
def test_plain_state_dict_into_named_optimizer_keeps_real_names(info):
    model = make_model()
    plain = info.make(list(model.parameters()))
    train(model, plain)
    named_opt = info.make(list(model.named_parameters()))
    names = [g.get("param_names") for g in named_opt.param_groups]
    try:
        named_opt.load_state_dict(plain.state_dict())
    except (ValueError, KeyError, RuntimeError):
        return  # refusing the mismatch is allowed
    assert [g.get("param_names") for g in named_opt.param_groups] == names


@pytest.mark.parametrize("info", cases("test_state_dict_without_param_names_loads"))
def test_state_dict_without_param_names_loads(info):
    """A state dict of the older format (torch < 2.6 saved no "param_names") loads, the names are kept, and the
    run continues exactly."""
    full, part = make_model(), make_model()
    train(full, info.make(full), 2 * STEPS)
    opt = info.make(part)
    train(part, opt)
    sd = copy.deepcopy(opt.state_dict())
    for group in sd["param_groups"]:
        group.pop("param_names", None)
    resumed = info.make(part)
    names = [g.get("param_names") for g in resumed.param_groups]
    resumed.load_state_dict(sd)
    assert [g.get("param_names") for g in resumed.param_groups] == names
    train(part, resumed, start=STEPS)
    assert_same(part, full)


# ------------------------------------------------------------------------------------------ deepcopy, pickle
def _copy_steps_like_original(info, duplicate) -> None:
    model = make_model()
    opt = info.make(model)
    train(model, opt)
    model2, opt2 = duplicate((model, opt))
    train(model, opt, start=STEPS)
    train(model2, opt2, start=STEPS)
    assert_same(model2, model)


@pytest.mark.parametrize("info", cases("test_deepcopy_steps_like_original"))
def test_deepcopy_steps_like_original(info):
    _copy_steps_like_original(info, copy.deepcopy)


@pytest.mark.parametrize("info", cases("test_pickle_steps_like_original"))
def test_pickle_steps_like_original(info):
    _copy_steps_like_original(info, lambda obj: pickle.loads(pickle.dumps(obj)))


@pytest.mark.parametrize("info", cases("test_repr_and_print"))
def test_repr_and_print(info):
    opt = info.make(make_model())
    text = repr(opt)
    assert type(opt).__name__ in text and "lr" in text
    assert str(opt)


# ------------------------------------------------------------------------------------------------- hooks
@pytest.mark.parametrize("info", cases("test_step_hooks_fire_once_per_step"))
def test_step_hooks_fire_once_per_step(info):
    model = make_model()
    opt = info.make(model)
    calls = []
    handles = [opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre")),
               opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))]
    train(model, opt)
    for h in handles:
        h.remove()
    train(model, opt, 1, start=STEPS)
    assert calls == ["pre", "post"] * STEPS


@pytest.mark.parametrize("info", cases("test_global_step_hooks_fire_once_per_step"))
def test_global_step_hooks_fire_once_per_step(info):
    model = make_model()
    opt = info.make(model)
    calls = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("pre", o))),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append(("post", o)))]
    try:
        train(model, opt)
    finally:
        for h in handles:
            h.remove()
    assert [kind for kind, _ in calls] == ["pre", "post"] * STEPS
    assert all(o is opt for _, o in calls)


@pytest.mark.parametrize("info", cases("test_state_dict_hooks"))
def test_state_dict_hooks(info):
    model = make_model()
    opt = info.make(model)
    train(model, opt, 1)
    calls = []

    def post(o, sd):
        calls.append("post")
        sd["hooked"] = True
        return sd

    opt.register_state_dict_pre_hook(lambda o: calls.append("pre"))
    opt.register_state_dict_post_hook(post)
    sd = opt.state_dict()
    assert calls == ["pre", "post"] and sd.get("hooked") is True


@pytest.mark.parametrize("info", cases("test_load_state_dict_hooks"))
def test_load_state_dict_hooks(info):
    model = make_model()
    opt = info.make(model)
    train(model, opt, 1)
    sd = copy.deepcopy(opt.state_dict())
    fresh = info.make(model)
    calls = []

    def pre(o, state_dict):
        calls.append("pre")
        return state_dict

    fresh.register_load_state_dict_pre_hook(pre)
    fresh.register_load_state_dict_post_hook(lambda o: calls.append("post"))
    fresh.load_state_dict(sd)
    assert calls == ["pre", "post"]


@pytest.mark.parametrize("info", cases("test_load_post_hook_may_store_non_dict_state"))
def test_load_post_hook_may_store_non_dict_state(info):
    """torch lets ``state`` hold entries that are not per-parameter dicts (keyed by anything but a parameter)."""
    model = make_model()
    opt = info.make(model)
    train(model, opt, 1)
    fresh = info.make(model)
    fresh.register_load_state_dict_post_hook(lambda o: o.state.__setitem__("flag", True))
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert fresh.state["flag"] is True
    again = info.make(model)
    again.load_state_dict(copy.deepcopy(fresh.state_dict()))  # the flag travels in the state dict
    before = snapshot(model)
    train(model, again, 1, start=1)
    all_moved(model, before)


# ---------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("info, dtype", cases("test_params_train_in_their_dtype",
                                               {"float64": torch.float64, "bfloat16": torch.bfloat16}))
def test_params_train_in_their_dtype(info, dtype):
    model = make_model(dtype)
    opt = info.make(model)
    before = snapshot(model)
    train(model, opt)
    all_moved(model, before)
    assert all(p.dtype == dtype for p in model.parameters())


@pytest.mark.parametrize("info", cases("test_grad_scaler_skips_inf_step"))
def test_grad_scaler_skips_inf_step(info):
    model = make_model()
    opt = info.make(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    before = snapshot(model)
    for k, poison in enumerate([False, True]):
        for p in model.parameters():
            p.grad = None
        scaler.scale(loss_of(model.parameters(), k)).backward()
        if poison:
            before = snapshot(model)
            model[0].weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        if not poison:
            all_moved(model, before)
    assert_same(model, before)
    assert scaler.get_scale() == 2.0**7


# ------------------------------------------------------------------------------------------- rejections
@pytest.mark.parametrize("info", cases("test_complex_params_rejected_at_construction"))
def test_complex_params_rejected_at_construction(info):
    real = nn.Parameter(torch.randn(8, 6))
    cplx = nn.Parameter(torch.randn(8, 6, dtype=torch.complex64))
    with pytest.raises((ValueError, TypeError), match="cplx.weight"):
        info.make([("real.weight", real), ("cplx.weight", cplx)])


@pytest.mark.parametrize("info", cases("test_sparse_grads_rejected"))
def test_sparse_grads_rejected(info):
    model = make_model()
    opt = info.make(model)
    backward(model, 0)
    model[0].weight.grad = model[0].weight.grad.to_sparse()
    before = snapshot(model)
    with pytest.raises((TypeError, RuntimeError, ValueError), match="sparse"):
        opt.step()
    assert_same(model, before)


# -------------------------------------------------------------------------------------------- frozen params
@pytest.mark.parametrize("info", cases("test_frozen_params_kept_and_trained_once_unfrozen"))
def test_frozen_params_kept_and_trained_once_unfrozen(info):
    model = make_model()
    model[0].requires_grad_(False)
    opt = info.make(model)
    before = snapshot(model)
    train(model, opt)
    for n, p in named(model, "0."):
        assert torch.equal(p, before[n]) and p.grad is None, n
    all_moved(model, before, "2.")
    model[0].requires_grad_(True)
    before = snapshot(model)
    train(model, opt, start=STEPS)
    all_moved(model, before)


# ----------------------------------------------------------------------------------- closures, zero_grad
@pytest.mark.parametrize("info", cases("test_closure_step_matches_plain_step"))
def test_closure_step_matches_plain_step(info):
    a, b = make_model(), make_model()
    opt_a, opt_b = info.make(a), info.make(b)
    for k in range(STEPS):
        def closure(k=k):
            opt_a.zero_grad()
            return backward(a, k)

        loss = opt_a.step(closure)
        assert torch.equal(loss, loss_of(b.parameters(), k))
        backward(b, k)
        opt_b.step()
    assert_same(a, b)


@pytest.mark.parametrize("info", cases("test_zero_grad"))
def test_zero_grad(info):
    model = make_model()
    opt = info.make(model)
    backward(model, 0)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    backward(model, 0)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------ construction checks
@pytest.mark.parametrize("info", cases("test_empty_params_rejected"))
def test_empty_params_rejected(info):
    with pytest.raises(ValueError, match="empty|no .*param"):
        info.make([])


@pytest.mark.parametrize("info", cases("test_negative_lr_rejected"))
def test_negative_lr_rejected(info):
    with pytest.raises(ValueError, match="lr|learning rate"):
        info.make(make_model(), lr=-info.lr)


@pytest.mark.parametrize("info", cases("test_param_in_two_groups_rejected"))
def test_param_in_two_groups_rejected(info):
    model = make_model()
    opt = info.make(named(model, "0."))
    with pytest.raises(ValueError, match="more than one"):
        opt.add_param_group({"params": named(model, "0.")})


# --------------------------------------------------------------------------------------- unusual params
def _train_params(params: list[tuple[str, nn.Parameter]], opt: Optimizer, steps: int = STEPS) -> None:
    for k in range(steps):
        for _, p in params:
            p.grad = None
        loss_of([p for _, p in params], k).backward()
        opt.step()


@pytest.mark.parametrize("info", cases("test_mixed_dtype_params"))
def test_mixed_dtype_params(info):
    """Same-shape matrices and vectors of two dtypes in one optimizer (stacked paths must not mix them)."""
    torch.manual_seed(0)
    params = [(f"{dtype_name}{i}.{kind}", nn.Parameter(torch.randn(*shape, dtype=dtype) * 0.3))
              for dtype_name, dtype in (("f32_", torch.float32), ("f64_", torch.float64)) for i in range(2)
              for kind, shape in (("weight", (8, 6)), ("bias", (8,)))]
    before = {n: p.detach().clone() for n, p in params}
    _train_params(params, info.make(params))
    for n, p in params:
        assert p.dtype == before[n].dtype and torch.isfinite(p).all() and not torch.equal(p, before[n]), n


@pytest.mark.parametrize("info", cases("test_non_contiguous_params"))
def test_non_contiguous_params(info):
    """A transposed (non-contiguous) matrix takes the same steps as its contiguous copy, in place."""
    torch.manual_seed(0)
    base = torch.randn(6, 8) * 0.3
    strided = [("m.weight", nn.Parameter(base.t())), ("m.bias", nn.Parameter(torch.zeros(8)))]
    dense = [("m.weight", nn.Parameter(base.t().contiguous())), ("m.bias", nn.Parameter(torch.zeros(8)))]
    assert not strided[0][1].is_contiguous()
    _train_params(strided, info.make(strided))
    _train_params(dense, info.make(dense))
    for (n, p), (_, q) in zip(strided, dense):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("info", cases("test_negative_weight_decay_rejected"))
def test_negative_weight_decay_rejected(info):
    with pytest.raises(ValueError, match="weight_decay"):
        info.make(make_model(), weight_decay=-0.1)


# ------------------------------------------------------------------------------------------- the steps
@pytest.mark.parametrize("info", cases("test_loss_decreases"))
def test_loss_decreases(info):
    """On a fixed quadratic (the targets of step 0 at every step) a few steps lower the loss."""
    model = make_model()
    if info.retracts:  # start on the spheres, where the tangent steps decrease the loss
        spectral_init_(model)
    opt = info.make(model)
    start = loss_of(model.parameters(), 0).item()
    for _ in range(5):
        backward(model, 0)
        opt.step()
    assert loss_of(model.parameters(), 0).item() < start


@pytest.mark.parametrize("info", cases("test_every_trained_param_has_state"))
def test_every_trained_param_has_state(info):
    model = make_model()
    opt = info.make(model)
    train(model, opt, 1)
    for n, p in model.named_parameters():
        assert opt.state.get(p), f"no optimizer state for {n}"


@pytest.mark.parametrize("info", cases("test_param_group_sets_its_own_hyperparameter"))
def test_param_group_sets_its_own_hyperparameter(info):
    """A group that sets some of the configuration's hyperparameters (``info.group_options``) keeps them, and
    they change its steps; the other group is unaffected."""
    def run(options):
        model = make_model()
        opt = info.make([{"params": named(model, "0."), **options}, {"params": named(model, "2.")}])
        train(model, opt)
        return opt, snapshot(model)

    opt, custom = run(info.group_options)
    _, plain = run({})
    first = [g for g in opt.param_groups if set(g["param_names"]) & {"0.weight", "0.bias"}]
    for group in first:
        for key, value in info.group_options.items():
            assert group[key] == value, key
    assert not torch.equal(custom["0.weight"], plain["0.weight"])
    for n in ("2.weight", "2.bias"):
        assert torch.equal(custom[n], plain[n]), n
