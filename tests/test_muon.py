"""Muon against a reference from the equations, against torch.optim.Muon, and as SPECTRA's limit case."""

import math

import _svd_oracle as oracle
import pytest
import torch
from _optim_helpers import assert_models_close, backward, clone, run, small_model
from torch import nn

from spectrakit.optim import Muon, Spectra


def test_muon_matches_reference_with_exact_msign():
    model = small_model()
    ref, opt_model = clone(model), clone(model)
    lr, wd, beta, adamw_lr, (b1, b2), eps = 0.02, 0.1, 0.95, 1e-3, (0.9, 0.95), 1e-8
    state = {}
    for k in range(15):
        backward(ref, k)
        t = k + 1
        with torch.no_grad():
            for i, p in enumerate(ref.parameters()):
                g, s = p.grad, state.setdefault(i, {})
                if p.dim() == 2:  # EMA momentum, Nesterov, msign, sqrt(max(1, rows/cols))
                    s["buf"] = beta * s.get("buf", torch.zeros_like(g)) + (1 - beta) * g
                    direction = (1 - beta) * g + beta * s["buf"]
                    alpha = math.sqrt(max(1.0, p.shape[0] / p.shape[1]))
                    p.mul_(1 - lr * wd).sub_(lr * alpha * oracle.polar(direction))
                else:  # biases: AdamW
                    s["m"] = b1 * s.get("m", torch.zeros_like(g)) + (1 - b1) * g
                    s["v"] = b2 * s.get("v", torch.zeros_like(g)) + (1 - b2) * g * g
                    U = (s["m"] / (1 - b1**t)) / ((s["v"] / (1 - b2**t)).sqrt() + eps)
                    p.mul_(1 - adamw_lr * wd).sub_(adamw_lr * U)
    opt = Muon(opt_model, lr=lr, weight_decay=wd, ns_method="svd", adamw_lr=adamw_lr)
    run(opt_model, opt, 15)
    assert_models_close(opt_model, ref, rtol=1e-10, atol=1e-12)


def test_polar_iteration_is_close_to_exact():
    model = small_model(torch.float32)
    a, b = clone(model), clone(model)
    run(a, Muon(a), 5)
    run(b, Muon(b, ns_method="svd"), 5)
    assert_models_close(a, b, rtol=0.05, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spectra_momentum_normalize_reduces_to_muon(dtype):
    """The paper's limit case: soft clip with c -> 0 scaled by 1/c is msign; Spectra's normalize is that limit."""
    model = small_model(dtype)
    a, b = clone(model), clone(model)
    common = dict(lr=0.02, weight_decay=0.1, fallback=("vectors", "embeddings", "head"), adamw_lr=3e-4)
    run(a, Muon(a, **common), 10)
    run(b, Spectra(b, base="momentum", clip="normalize", momentum=0.95, nesterov=True, scale="keller", **common), 10)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_soft_clip_limit_approaches_normalize():
    """(1/c) H_c(U) -> msign(U) as c -> 0: Spectra's soft clip with lr/c tends to the normalize step."""
    torch.manual_seed(0)
    W0 = torch.randn(5, 8, dtype=torch.float64)
    grad = torch.randn(5, 8, dtype=torch.float64)
    steps = {}
    for clip, c, lr in (("soft", 1e-6, 0.1 / 1e-6), ("normalize", 1.0, 0.1)):
        W = nn.Parameter(W0.clone())
        opt = Spectra([W], lr=lr, weight_decay=0.0, base="momentum", momentum=0.0, nesterov=False, clip=clip,
                      clip_c=c, clip_method="svd")
        W.grad = grad
        opt.step()
        steps[clip] = W.detach() - W0
    torch.testing.assert_close(steps["soft"], steps["normalize"], rtol=1e-6, atol=1e-9)


def test_close_to_torch_muon_with_keller_coefficients():
    torch.manual_seed(0)
    shapes = [(16, 32), (32, 16), (24, 24)]
    ours = [nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    opt_ours = Muon(ours, lr=0.02, weight_decay=0.1, ns_coefficients="keller", ns_steps=5, ns_dtype=torch.float32)
    opt_theirs = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1)
    start = [p.detach().clone() for p in ours]
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    for p, q, p0 in zip(ours, theirs, start):
        d_ours, d_theirs = (p.detach() - p0).flatten(), (q.detach() - p0).flatten()
        cosine = torch.dot(d_ours, d_theirs) / (d_ours.norm() * d_theirs.norm())
        assert cosine > 0.99
        assert d_ours.norm() / d_theirs.norm() == pytest.approx(1.0, abs=0.05)


def test_moonlight_scale_matches_adamw_rms():
    torch.manual_seed(0)
    W = nn.Parameter(torch.zeros(64, 256, dtype=torch.float64))
    opt = Muon([W], lr=1.0, momentum=0.0, nesterov=False, scale="moonlight", ns_method="svd")
    W.grad = torch.randn(64, 256, dtype=torch.float64)
    opt.step()
    rms = W.detach().pow(2).mean().sqrt().item()
    assert rms == pytest.approx(0.2, rel=1e-9)


def test_default_routing():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(10, 8)
            self.proj = nn.Linear(8, 8)
            self.lm_head = nn.Linear(8, 10, bias=False)

    opt = Muon(Tiny())
    rules = {r.name: r.rule for r in opt.routing}
    assert rules == {"embed_tokens.weight": "adamw", "proj.weight": "spectral", "proj.bias": "adamw",
                     "lm_head.weight": "adamw"}
    assert {g["rule"]: g["lr"] for g in opt.param_groups} == {"spectral": 0.02, "adamw": 3e-4}


def test_vectors_on_the_spectral_rule_are_normalized():
    b = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = Muon([b], lr=1.0, momentum=0.0, nesterov=False, fallback=())
    b.grad = torch.tensor([3.0, 0.0, 4.0, 0.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(b.detach(), -b.grad / 5)


def test_statistics_record_sigma_max_of_each_spectral_matrix():
    """(Resuming, statistics included, is the generic test_optim_contract.py::test_state_dict_resume_is_bitwise.)"""
    model = small_model()
    opt = Muon(model, track_stats=True)
    run(model, opt, 2)
    stats = opt.statistics()
    assert set(stats) == {"sigma_max/0.weight", "sigma_max/2.weight"}
    assert all(v.dim() == 0 and v > 0 for v in stats.values())


@pytest.mark.parametrize("kwargs,match", [
    ({"lr": -0.1}, "lr must be"),
    ({"momentum": 1.0}, "momentum must be in"),
    ({"nesterov": "yes"}, "nesterov must be True or False"),
    ({"scale": "muP"}, "scale must be one of"),
    ({"ns_method": "qr"}, "ns_method must be one of"),
    ({"ns_coefficients": "jordan"}, "ns_coefficients must be one of"),
    ({"ns_steps": 0}, "ns_steps must be"),
    ({"batch": 0}, "batch must be"),
    ({"adamw_lr": -1.0}, "adamw_lr must be"),
    ({"weight_decay": -1.0}, "weight_decay must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon(small_model(), **kwargs)


def test_bf16_parameters():
    model = small_model(torch.float32)
    a, b = clone(model), clone(model).to(torch.bfloat16)
    run(a, Muon(a, fallback=("vectors",)), 5)
    run(b, Muon(b, fallback=("vectors",)), 5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert q.dtype == torch.bfloat16 and torch.isfinite(q).all()
        torch.testing.assert_close(q.float(), p, rtol=0.05, atol=0.05)
