"""SpectraWrapper around torch optimizers: schedulers, checkpoints, param groups, closures, errors."""

import io
import math

import pytest
import torch
from _optim_helpers import assert_models_close, backward, clone, loss_of, run, small_model
from torch import nn

from spectrakit.optim import Spectra, SpectraWrapper


def test_wrapper_around_sgd_without_decoupled_decay_equals_native_momentum_rule():
    model = small_model()
    a, b = clone(model), clone(model)
    run(a, SpectraWrapper(torch.optim.SGD(a.parameters(), lr=0.05), clip_c=0.3, clip_method="svd",
                          decoupled_weight_decay=False), 10)
    run(b, Spectra(b, lr=0.05, weight_decay=0.0, base="momentum", momentum=0.0, nesterov=False, clip_c=0.3,
                   clip_method="svd"), 10)
    assert_models_close(a, b, rtol=1e-10, atol=1e-12)


def test_scheduler_warmup_and_resume():
    model = small_model()
    full, part = clone(model), clone(model)

    def make(m):
        opt = SpectraWrapper(torch.optim.AdamW(m.parameters(), lr=0.02), clip_c=1.0, track_stats=True)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 5))

    opt, sched = make(full)
    cs = []
    for k in range(12):
        backward(full, k)
        opt.step()
        sched.step()
        cs.append(opt.statistics()["clip_c/group0"].item())
    assert cs[:4] == pytest.approx([5.0, 2.5, 5 / 3, 1.25]) and cs[4:] == pytest.approx([1.0] * 8)

    opt, sched = make(part)
    for k in range(6):
        backward(part, k)
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    opt2, sched2 = make(part)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert opt2.param_groups is opt2.optimizer.param_groups
    for k in range(6, 12):
        backward(part, k)
        opt2.step()
        sched2.step()
    for p, q in zip(full.parameters(), part.parameters()):
        assert torch.equal(p, q)


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
    ({"clip": "sqrt"}, "clip must be one of", ValueError),
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
