"""clip_grad_spectral_: pre-clipping of gradients (SPEC 1.5)."""

import _svd_oracle as oracle
import pytest
import torch
from torch import nn

from spectrakit import ClipSchedule, clip_grad_spectral_


def _params(seed=0):
    torch.manual_seed(seed)
    W = nn.Parameter(torch.randn(8, 5, dtype=torch.float64))
    b = nn.Parameter(torch.randn(5, dtype=torch.float64))
    E = nn.Parameter(torch.randn(3, 4, 6, dtype=torch.float64))
    for p in (W, b, E):
        p.grad = 3 * torch.randn_like(p)
    return W, b, E


def test_soft_clip_of_matrices_only_by_default():
    W, b, E = _params()
    grads = [p.grad.clone() for p in (W, b, E)]
    peak = clip_grad_spectral_([W, b, E], 0.5, method="svd")
    torch.testing.assert_close(W.grad, oracle.soft_clip(grads[0], 0.5))
    torch.testing.assert_close(b.grad, grads[1])  # vectors untouched
    for i in range(3):  # stacked matrices are clipped one by one
        torch.testing.assert_close(E.grad[i], oracle.soft_clip(grads[2][i], 0.5))
    expected = max(oracle.spectral_norm(grads[0]).item(), oracle.spectral_norm(grads[2]).max().item())
    assert peak.dim() == 0 and peak.item() == pytest.approx(expected, rel=1e-6)


def test_vectors_hard_clip_and_normalize():
    W, b, _ = _params()
    gb = b.grad.clone()
    clip_grad_spectral_(b, 0.5, include_vectors=True)
    torch.testing.assert_close(b.grad, oracle.soft_clip(gb, 0.5))
    gW = W.grad.clone()
    clip_grad_spectral_([W], 1.0, clip="hard", method="svd")
    assert oracle.spectral_norm(W.grad).item() == pytest.approx(1.0)
    torch.testing.assert_close(W.grad, oracle.hard_clip(gW, 1.0))
    clip_grad_spectral_([W], 1.0, clip="normalize", method="svd")
    torch.testing.assert_close(oracle.singular_values(W.grad), torch.ones(5, dtype=torch.float64))


def test_schedule_warmup_and_decay():
    W, _, _ = _params()
    g = W.grad.clone()
    schedule = ClipSchedule(warmup_steps=10, total_steps=100, decay_fraction=0.1)
    clip_grad_spectral_([W], 0.1, method="svd", schedule=schedule, step=0, lr=0.25, peak_lr=1.0)
    torch.testing.assert_close(W.grad, oracle.soft_clip(g, 0.4))  # c * peak_lr / lr
    W.grad = g.clone()
    clip_grad_spectral_([W], 0.1, schedule=schedule, step=100, lr=0.1, peak_lr=1.0)
    assert torch.count_nonzero(W.grad) == 0  # decayed to c = 0


def test_no_gradients_returns_zero():
    assert clip_grad_spectral_([nn.Parameter(torch.ones(3, 3))], 1.0).item() == 0.0


@pytest.mark.parametrize("kwargs,match", [
    ({"c": 0.0}, "c must be"),
    ({"c": 1.0, "clip": "min"}, "clip must be one of"),
    ({"c": 1.0, "method": "newton_schulz", "clip": "hard"}, "method must be one of"),
    ({"c": 1.0, "schedule": ClipSchedule()}, "step is required"),
    ({"c": 1.0, "schedule": ClipSchedule(), "step": 0}, "warmup_steps is required"),
    ({"c": 1.0, "schedule": ClipSchedule(warmup_steps=5), "step": 0}, "lr and peak_lr are required"),
])
def test_bad_arguments(kwargs, match):
    W, _, _ = _params()
    with pytest.raises(ValueError, match=match):
        clip_grad_spectral_([W], **kwargs)
