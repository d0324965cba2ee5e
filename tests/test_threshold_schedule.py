"""The clipping threshold schedule (SPEC 1.4): the warmup rule under torch LR schedulers and the decay shapes."""

import math

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from spectrakit.optim import DECAY_SHAPES, ClipSchedule, Spectra, SpectraWrapper
from spectrakit.train.lr_schedule import lr_factor

PEAK, C, STEPS = 0.02, 2.0, 40


def _authors_decay(step: int, total: int, fraction: float, shape: str, final: float) -> float:
    """SPEC 1.4 as written: int(fraction * total) decay steps at the end, progress p from 0 to 1 over them."""
    decay_steps = int(fraction * total)
    start = total - decay_steps
    if decay_steps == 0 or step < start:
        return 1.0
    p = min(1.0, (step - start) / decay_steps)
    if shape == "linear":
        return 1 - (1 - final) * p
    if shape == "sqrt":
        return 1 - (1 - final) * math.sqrt(p)
    if shape == "square":
        return 1 - (1 - final) * p**2
    if shape == "cosine":
        return final + (1 - final) * (1 + math.cos(math.pi * p)) / 2
    assert shape == "exp"
    return final**p if final > 0 else 1 - p


def test_shapes_are_the_authors():
    assert DECAY_SHAPES == ("linear", "sqrt", "square", "cosine", "exp")


@pytest.mark.parametrize("shape", ["linear", "sqrt", "square", "cosine", "exp"])
@pytest.mark.parametrize("total,fraction,final", [(100, 0.2, 0.0), (1000, 0.155, 0.0), (1000, 0.155, 0.1),
                                                  (37, 0.3, 0.25), (7, 0.1, 0.5), (1, 1.0, 0.0)])
def test_decay_factor_matches_the_spec_formulas(shape, total, fraction, final):
    s = ClipSchedule(total_steps=total, decay_fraction=fraction, shape=shape, final_scale=final)
    for step in range(total + 2):
        assert s.decay_factor(step) == pytest.approx(_authors_decay(step, total, fraction, shape, final),
                                                     rel=1e-12, abs=1e-15), step


def test_decay_steps_are_rounded_down_as_in_the_authors_code():
    s = ClipSchedule(total_steps=1000, decay_fraction=0.155, shape="linear", final_scale=0.0)
    assert s.decay_factor(845) == 1.0  # int(155.0) = 155 steps: the decay starts at step 845
    assert s.decay_factor(846) == pytest.approx(1 - 1 / 155)
    assert ClipSchedule(total_steps=5, decay_fraction=0.1).decay_factor(4) == 1.0  # int(0.5) = 0: no decay


def test_exp_is_geometric_between_1_and_final_scale():
    s = ClipSchedule(total_steps=100, decay_fraction=0.5, shape="exp", final_scale=0.01)
    assert s.decay_factor(75) == pytest.approx(0.1) and s.decay_factor(100) == pytest.approx(0.01)
    zero = ClipSchedule(total_steps=100, decay_fraction=0.5, shape="exp", final_scale=0.0)
    assert zero.decay_factor(75) == pytest.approx(0.5)  # 1 - p when the final scale is 0


def test_final_scale_and_no_decay_without_total_steps():
    s = ClipSchedule(total_steps=10, decay_fraction=0.5, shape="linear", final_scale=0.2)
    assert s.decay_factor(10) == pytest.approx(0.2) and s.decay_factor(7) == pytest.approx(1 - 0.8 * 0.4)
    assert ClipSchedule().decay_factor(10**9) == 1.0


def test_warmup_rule_auto_detects_the_peak():
    s = ClipSchedule()
    done, last = False, None
    factors = []
    for step, lr in enumerate([0.25, 0.5, 1.0, 0.8, 0.5]):
        f, done = s.factor(step, lr, 1.0, done, last)
        last = lr
        factors.append(f)
    assert factors == pytest.approx([4.0, 2.0, 1.0, 1.0, 1.0])  # c * lr constant, then c after the peak
    assert s.factor(0, 0.0, 1.0)[0] == math.inf


def test_warmup_ends_when_the_lr_falls_even_if_it_never_reached_the_peak_exactly():
    s = ClipSchedule()
    done, last, factors = False, None, []
    for step, lr in enumerate([0.5, 1.0 - 1e-16, 0.9, 0.5]):
        f, done = s.factor(step, lr, 1.0, done, last)
        last = lr
        factors.append(f)
    assert factors == pytest.approx([2.0, 1.0, 1.0, 1.0], rel=1e-12)


def test_explicit_warmup_steps_and_warmup_off():
    s = ClipSchedule(warmup_steps=2)
    assert s.factor(0, 0.5, 1.0)[0] == 2.0 and s.factor(1, 0.5, 1.0)[0] == 2.0 and s.factor(2, 0.5, 1.0)[0] == 1.0
    assert ClipSchedule(warmup=False).factor(0, 0.1, 1.0)[0] == 1.0


@pytest.mark.parametrize("kwargs,match", [
    ({"warmup": 1}, "warmup must be True or False"),
    ({"warmup_steps": 0}, "warmup_steps must be None or an integer"),
    ({"total_steps": 1.5}, "total_steps must be None or an integer"),
    ({"decay_fraction": 1.5}, "decay_fraction must be in"),
    ({"shape": "step"}, "shape must be one of"),
    ({"final_scale": -0.1}, "final_scale must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClipSchedule(**kwargs)


# ------------------------------------------------------------------ the warmup rule under real LR schedulers
def _one_cycle(opt, anneal="cos"):
    return lr_scheduler.OneCycleLR(opt, max_lr=PEAK, total_steps=STEPS, pct_start=0.25, anneal_strategy=anneal)


SCHEDULERS = {
    "one_cycle_cos": _one_cycle,
    "one_cycle_linear": lambda opt: _one_cycle(opt, "linear"),
    "linear": lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=10),
    "sequential": lambda opt: lr_scheduler.SequentialLR(opt, [
        lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=6),
        lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS - 6)], milestones=[6]),
    "lambda": lambda opt: lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 8) * (1 - max(0, k - 7) / STEPS)),
    "harness_cosine": lambda opt: lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, total=STEPS, warmup=8)),
    "harness_wsd": lambda opt: lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, total=STEPS, warmup=5,
                                                                               schedule="wsd")),
}


def _build(kind: str, warmup_steps: int | None):
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    schedule = {"clip_c": C, "clip_warmup_steps": warmup_steps, "track_stats": True}
    if kind == "spectra":
        opt = Spectra([W], lr=PEAK, weight_decay=0.0, **schedule)
    else:
        opt = SpectraWrapper(torch.optim.AdamW([W], lr=PEAK, weight_decay=0.0), **schedule)
    return W, opt


def _drive(W, opt, step_lr):
    """Run STEPS steps; step_lr(k) sets the lr before step k (None: a torch scheduler steps after it)."""
    lrs, cs = [], []
    for k in range(STEPS):
        step_lr(k)
        W.grad = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        cs.append(float(opt.statistics()["clip_c/group0"]))
    return lrs, cs


def _check_invariant(lrs, cs, warmup_steps):
    """c_t comes from statistics(), a float32 scalar: compared at rel 1e-6 (the defects were factors of 25)."""
    peak_step = next(k for k, lr in enumerate(lrs) if lr >= PEAK * (1 - 1e-12))
    assert peak_step >= 4 and max(lrs) == pytest.approx(PEAK, rel=1e-12)
    if warmup_steps is not None:
        assert warmup_steps == peak_step
    for k in range(peak_step + 1):  # c_t * lr_t = c * peak_lr through the warmup ...
        assert cs[k] * lrs[k] == pytest.approx(C * PEAK, rel=1e-6), (k, lrs[k], cs[k])
    assert cs[peak_step + 1:] == pytest.approx([C] * (STEPS - peak_step - 1), rel=1e-6)  # ... then c


WARMUP_LENGTH = {"one_cycle_cos": 9, "one_cycle_linear": 9, "linear": 10, "sequential": 6, "lambda": 7,
                 "harness_cosine": 7, "harness_wsd": 4}


@pytest.mark.parametrize("explicit", [False, True], ids=["detected", "clip_warmup_steps"])
@pytest.mark.parametrize("kind", ["spectra", "wrapper"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_c_times_lr_is_constant_through_the_warmup_of_every_scheduler(name, kind, explicit):
    warmup_steps = WARMUP_LENGTH[name] if explicit else None
    W, opt = _build(kind, warmup_steps)
    sched = SCHEDULERS[name](opt)
    lrs, cs = [], []
    for k in range(STEPS):
        W.grad = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
        cs.append(float(opt.statistics()["clip_c/group0"]))
    _check_invariant(lrs, cs, warmup_steps)


@pytest.mark.parametrize("kind", ["spectra", "wrapper"])
def test_the_harness_setting_the_lr_itself_keeps_c_times_lr_constant(kind):
    """The trainer records initial_lr = the peak and sets lr = peak * lr_factor(step) before each step."""
    W, opt = _build(kind, None)
    peaks = [g["lr"] for g in opt.param_groups]
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])

    def set_lr(k):
        for group, peak in zip(opt.param_groups, peaks):
            group["lr"] = peak * lr_factor(k, total=STEPS, warmup=8)

    _check_invariant(*_drive(W, opt, set_lr), None)
