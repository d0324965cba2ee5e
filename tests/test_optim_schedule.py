"""The clipping threshold schedule (SPEC 1.4): warmup rule and the five decay shapes."""

import math

import pytest

from spectrakit.optim import ClipSchedule


@pytest.mark.parametrize("shape,mid", [("linear", 0.5), ("sqrt", 1 - math.sqrt(0.5)), ("square", 0.75),
                                        ("cosine", 0.5), ("exp", (math.exp(-2.5) - math.exp(-5)) / (1 - math.exp(-5)))])
def test_decay_shapes(shape, mid):
    s = ClipSchedule(total_steps=100, decay_fraction=0.2, shape=shape, final_scale=0.0)
    assert s.decay_factor(0) == 1.0 and s.decay_factor(79) == 1.0
    assert s.decay_factor(80) == pytest.approx(1.0)
    assert s.decay_factor(90) == pytest.approx(mid)
    assert s.decay_factor(100) == pytest.approx(0.0, abs=1e-12)
    values = [s.decay_factor(k) for k in range(80, 101)]
    assert values == sorted(values, reverse=True)


def test_final_scale_and_no_decay_without_total_steps():
    s = ClipSchedule(total_steps=10, decay_fraction=0.5, shape="linear", final_scale=0.2)
    assert s.decay_factor(10) == pytest.approx(0.2) and s.decay_factor(7) == pytest.approx(1 - 0.8 * 0.4)
    assert ClipSchedule().decay_factor(10**9) == 1.0


def test_warmup_rule_auto_detects_the_peak():
    s = ClipSchedule()
    done = False
    factors = []
    for step, lr in enumerate([0.25, 0.5, 1.0, 0.8, 0.5]):
        f, done = s.factor(step, lr, 1.0, done)
        factors.append(f)
    assert factors == pytest.approx([4.0, 2.0, 1.0, 1.0, 1.0])  # c * lr constant, then c after the peak
    assert s.factor(0, 0.0, 1.0)[0] == math.inf


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
