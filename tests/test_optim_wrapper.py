"""SpectraWrapper around torch optimizers: schedulers, checkpoints, param groups, closures, errors."""

import copy
import io
import math
import pickle

import pytest
import torch
from _optim_helpers import assert_models_close, backward, clone, loss_of, run, small_model
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from spectrakit.optim import Spectra, SpectraWrapper


def test_wrapper_around_sgd_without_decoupled_decay_equals_native_momentum_rule():
    model = small_model()
    a, b = clone(model), clone(model)
    run(a, SpectraWrapper(torch.optim.SGD(a.parameters(), lr=0.05), clip_c=0.3, clip_method="svd",
                          decoupled_weight_decay=False), 10)
    run(b, Spectra(b, lr=0.05, weight_decay=0.0, base="momentum", momentum=0.0, nesterov=False, clip_c=0.3,
                   clip_method="svd"), 10)
    assert_models_close(a, b, rtol=1e-10, atol=1e-12)


def test_scheduler_warmup_scales_the_threshold():
    """c_t = c * peak_lr / lr_t under a warmup (resuming under a scheduler: test_optim_contract.py)."""
    model = small_model()
    opt = SpectraWrapper(torch.optim.AdamW(model.parameters(), lr=0.02), clip_c=1.0, track_stats=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 5))
    cs = []
    for k in range(12):
        backward(model, k)
        opt.step()
        sched.step()
        cs.append(opt.statistics()["clip_c/group0"].item())
    assert cs[:4] == pytest.approx([5.0, 2.5, 5 / 3, 1.25]) and cs[4:] == pytest.approx([1.0] * 8)


def test_names_groups_and_closure():
    model = small_model()
    inner = torch.optim.AdamW(list(model[0].named_parameters()), lr=0.01)
    opt = SpectraWrapper(inner, clip_c=0.5, clip_exclude=[r"bias"], track_stats=True)
    opt.add_param_group({"params": [("l2." + n, p) for n, p in model[2].named_parameters()], "lr": 0.003,
                         "clip_c": 2.0})
    assert len(inner.param_groups) == 2 and opt.param_groups[1]["clip_c"] == 2.0

    def closure():
        opt.zero_grad()
        loss = loss_of(model, 0)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() > 0
    stats = opt.statistics()
    assert "sigma_max/weight" in stats and "sigma_max/bias" not in stats  # named group, bias excluded
    assert "sigma_max/l2.weight" in stats and stats["clip_c/group1"].item() == 2.0
    inner = torch.optim.AdamW(model.parameters())
    assert "sigma_max/group0.param0" in _one_step_stats(SpectraWrapper(inner, track_stats=True), model)


def _one_step_stats(opt, model):
    backward(model, 0)
    opt.step()
    return opt.statistics()


def test_zero_lr_group_is_left_to_the_inner_optimizer():
    W = nn.Parameter(torch.randn(4, 4))
    opt = SpectraWrapper(torch.optim.AdamW([W], lr=0.0))
    before = W.detach().clone()
    W.grad = torch.randn(4, 4)
    opt.step()
    assert torch.equal(W.detach(), before)


def test_wrapper_decay_to_zero_keeps_only_weight_decay():
    W = nn.Parameter(torch.randn(4, 4, dtype=torch.float64))
    opt = SpectraWrapper(torch.optim.AdamW([W], lr=0.1, weight_decay=0.5), clip_total_steps=1, clip_decay_fraction=1.0,
                         clip_final_scale=0.0)
    opt.step()  # no gradient: nothing happens, the schedule still advances
    before = W.detach().clone()
    W.grad = torch.randn(4, 4, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(W.detach(), before * (1 - 0.05))


@pytest.mark.parametrize("kwargs,match,error", [
    ({"clip": "sqrt"}, "clip must be None or one of", ValueError),
    ({"clip_c": 0}, "clip_c must be", ValueError),
    ({"clip": "hard", "clip_method": "newton_schulz"}, "clip_method must be one of", ValueError),
    ({"vector_rule": "x"}, "vector_rule must be one of", ValueError),
    ({"scale": "x"}, "scale must be one of", ValueError),
    ({"clip_apply_to": "x"}, "clip_apply_to must be one of", ValueError),
    ({"peak_lr": -1.0}, "peak_lr must be", ValueError),
])
def test_bad_arguments(kwargs, match, error):
    with pytest.raises(error, match=match):
        SpectraWrapper(torch.optim.AdamW(small_model().parameters()), **kwargs)


def test_not_an_optimizer_and_bad_group():
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        SpectraWrapper(small_model())
    opt = SpectraWrapper(torch.optim.AdamW(small_model()[0].parameters()))
    with pytest.raises(ValueError, match="clip_c must be"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2, 2))], "clip_c": -2.0})
    assert math.isfinite(opt.param_groups[0]["clip_c"])


# ------------------------------------------------------------------------ the torch.optim contract
def _wrapped(model, **kwargs):
    return SpectraWrapper(torch.optim.AdamW(model.parameters(), lr=0.01), clip_c=0.5, **kwargs)


def _params_equal(a, b):
    for p, q in zip(a, b):
        assert torch.equal(p, q)


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_deepcopy_and_pickle_give_an_optimizer_that_steps_bitwise_like_the_original(copier):
    model = small_model()
    opt = _wrapped(model, clip="hard", clip_method="svd", vector_rule="authors", scale="moonlight",
                   clip_exclude=[r"2\.bias"], clip_total_steps=8, clip_decay_fraction=0.5, clip_decay_shape="exp",
                   clip_final_scale=0.1, decoupled_weight_decay=False, track_stats=True)
    run(model, opt, 3)
    twin = copy.deepcopy(opt) if copier == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert twin.param_groups is twin.optimizer.param_groups and twin.state is twin.optimizer.state
    originals, copies = opt.param_groups[0]["params"], twin.param_groups[0]["params"]
    assert all(p is not q for p, q in zip(originals, copies))
    assert all(twin.state[q]["step"] == opt.state[p]["step"] for p, q in zip(originals, copies))
    for k in range(3, 8):
        backward(model, k)
        for p, q in zip(originals, copies):
            q.grad = p.grad.clone()
        opt.step()
        twin.step()
        _params_equal(originals, copies)
        assert twin.statistics().keys() == opt.statistics().keys()


def test_settings_live_in_the_groups_and_round_trip_through_state_dict():
    model = small_model()
    a, b = clone(model), clone(model)
    opt = _wrapped(a, clip="hard", clip_method="svd", scale="none", clip_decay_shape="cosine", clip_total_steps=10)
    group = opt.param_groups[0]
    keys = ("clip", "clip_method", "scale", "clip_decay_shape", "clip_total_steps", "clip_decoupled_weight_decay")
    assert [group[k] for k in keys] == ["hard", "svd", "none", "cosine", 10, True]
    run(a, opt, 4)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    other = _wrapped(b)  # built with the default settings: the loaded groups bring theirs
    run(b, _wrapped(b, clip="hard", clip_method="svd", scale="none", clip_decay_shape="cosine", clip_total_steps=10),
        4)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.param_groups[0]["clip_method"] == "svd" and other.param_groups[0]["scale"] == "none"
    run(a, opt, 4, start=4)
    run(b, other, 4, start=4)
    _params_equal(a.parameters(), b.parameters())


def test_settings_may_differ_per_group():
    model = small_model()
    mixed, split = clone(model), clone(model)
    inner = torch.optim.AdamW([{"params": mixed[0].parameters(), "clip_method": "svd", "scale": "none",
                                "vector_rule": "authors"},
                               {"params": mixed[2].parameters(), "clip": "hard", "clip_decoupled_weight_decay": False,
                                "clip_warmup": False}], lr=0.01)
    opt = SpectraWrapper(inner, clip_c=0.5, clip_method="polar")
    assert [g["decoupled_weight_decay"] for g in inner.param_groups] == [True, True]  # AdamW's own key, untouched
    one = SpectraWrapper(torch.optim.AdamW(split[0].parameters(), lr=0.01), clip_c=0.5, clip_method="svd",
                         scale="none", vector_rule="authors")
    two = SpectraWrapper(torch.optim.AdamW(split[2].parameters(), lr=0.01), clip_c=0.5, clip_method="polar",
                         clip="hard", decoupled_weight_decay=False, clip_warmup=False)
    for k in range(5):
        backward(mixed, k)
        backward(split, k)
        opt.step()
        one.step()
        two.step()
    _params_equal(mixed.parameters(), split.parameters())


@pytest.mark.parametrize("key,value", [("clip_method", "x"), ("clip_steps", 0), ("clip_dtype", torch.int32),
                                       ("vector_rule", "x"), ("scale", "x"), ("clip_apply_to", "x"),
                                       ("clip_exclude", ["("]), ("clip_decoupled_weight_decay", 1),
                                       ("clip_decay_shape", "x"), ("clip_decay_fraction", 0.0),
                                       ("clip_warmup_steps", 1.5), ("peak_lr", 0.0)])
def test_group_settings_are_validated_with_errors_naming_the_key(key, value):
    opt = SpectraWrapper(torch.optim.AdamW(small_model()[0].parameters()))
    with pytest.raises(ValueError, match=key):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2, 2))], key: value})
    assert len(opt.param_groups) == len(opt.optimizer.param_groups) == 1  # the bad group was not kept
    with pytest.raises(ValueError, match=key):
        SpectraWrapper(torch.optim.AdamW([{"params": [nn.Parameter(torch.ones(2, 2))], key: value}]))


@pytest.mark.parametrize("make_lr", [lambda: torch.tensor(0.01, dtype=torch.float64),
                                     lambda: torch.tensor([0.01], dtype=torch.float64)], ids=["0-d", "1-element"])
def test_tensor_lr_steps_like_a_float_lr_also_under_a_scheduler(make_lr):
    model = small_model()
    a, b = clone(model), clone(model)
    ta = SpectraWrapper(torch.optim.AdamW(a.parameters(), lr=make_lr()), clip_c=0.5, track_stats=True)
    tb = SpectraWrapper(torch.optim.AdamW(b.parameters(), lr=0.01), clip_c=0.5, track_stats=True)
    sa, sb = (torch.optim.lr_scheduler.LambdaLR(o, lambda k: min(1.0, (k + 1) / 4)) for o in (ta, tb))
    for k in range(6):
        backward(a, k)
        backward(b, k)
        ta.step()
        tb.step()
        sa.step()
        sb.step()
        assert ta.statistics()["clip_c/group0"] == tb.statistics()["clip_c/group0"]
    assert_models_close(a, b, rtol=1e-12, atol=1e-14)


def test_every_hook_kind_fires_once_per_call_on_the_wrapper():
    model = small_model()
    opt = _wrapped(model)
    calls = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global pre", o))),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global post", o))),
               opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", o))),
               opt.register_step_post_hook(lambda o, a, k: calls.append(("post", o))),
               opt.register_state_dict_pre_hook(lambda o: calls.append(("sd pre", o))),
               opt.register_state_dict_post_hook(lambda o, sd: calls.append(("sd post", o))),
               opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append(("load pre", o))),
               opt.register_load_state_dict_post_hook(lambda o: calls.append(("load post", o)))]
    try:
        backward(model, 0)
        opt.step()
        assert calls == [("global pre", opt), ("pre", opt), ("post", opt), ("global post", opt)]
        calls.clear()
        sd = opt.state_dict()
        assert calls == [("sd pre", opt), ("sd post", opt)]
        calls.clear()
        opt.load_state_dict(sd)
        assert calls == [("load pre", opt), ("load post", opt)]
    finally:
        for handle in handles:
            handle.remove()


def test_hooks_may_replace_the_state_dict_and_the_wrapped_optimizers_own_step_hooks_still_run():
    model = small_model()
    inner = torch.optim.AdamW(model.parameters(), lr=0.01)
    inner_calls = []
    inner.register_step_post_hook(lambda o, a, k: inner_calls.append(o))
    opt = SpectraWrapper(inner)
    backward(model, 0)
    opt.step()
    assert inner_calls == [inner]
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    sd = opt.state_dict()
    assert sd["extra"] == 1

    def drop_extra(o, sd):
        return {k: v for k, v in sd.items() if k != "extra"}

    opt.register_load_state_dict_pre_hook(drop_extra)
    opt.load_state_dict(sd)
    assert opt.param_groups is inner.param_groups


def test_a_state_dict_saved_without_the_wrappers_settings_loads_with_the_wrappers_defaults():
    model = small_model()
    bare = torch.optim.AdamW(model.parameters(), lr=0.01)
    run(model, bare, 2)
    opt = _wrapped(model, clip="hard", clip_method="svd")
    opt.load_state_dict(bare.state_dict())
    assert opt.param_groups[0]["clip"] == "hard" and opt.param_groups[0]["clip_step"] == 0
    run(model, opt, 2, start=2)
    assert opt.state[next(model.parameters())]["step"] == 4


def test_a_tensor_lr_of_more_than_one_element_is_rejected_naming_lr():
    opt = SpectraWrapper(torch.optim.AdamW(small_model()[0].parameters()))
    with pytest.raises(ValueError, match="lr must be a number or a 0-d / 1-element tensor"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2, 2))], "lr": torch.tensor([1e-3, 1e-3])})
    assert len(opt.param_groups) == 1
