"""NorMuon (Li et al. 2025, arXiv 2510.05491) against a plain reference written from the equations."""

from __future__ import annotations

import math

import pytest
import torch
from _optim_helpers import backward, clone
from _svd_oracle import polar

from spectrakit.optim import Muon, NorMuon, create


def model_of_matrices(dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A tall 12 x 6 and a wide 3 x 12 matrix (no biases, so every parameter takes the NorMuon rule)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12, bias=False), torch.nn.Tanh(),
                               torch.nn.Linear(12, 3, bias=False)).to(dtype)


def reference_normuon(model, steps, lr, wd, beta1, beta2, eps, update_scale):
    """M <- b1 M + (1 - b1) G;  O = msign(M);  v <- b2 v + (1 - b2) mean_cols(O^2);  O' = O / (sqrt(v) + eps);
    X <- (1 - lr wd) X - lr update_scale sqrt(m n) O' / ||O'||_F."""
    M = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    v = {n: torch.zeros(p.shape[0], dtype=p.dtype) for n, p in model.named_parameters()}
    for k in range(steps):
        backward(model, k)
        with torch.no_grad():
            for n, p in model.named_parameters():
                M[n] = beta1 * M[n] + (1 - beta1) * p.grad
                O = polar(M[n]).to(p.dtype)
                v[n] = beta2 * v[n] + (1 - beta2) * (O * O).mean(dim=1)
                O_hat = O / (v[n].sqrt()[:, None] + eps)
                m, n_cols = p.shape
                p.mul_(1 - lr * wd).sub_(lr * update_scale * math.sqrt(m * n_cols) * O_hat / O_hat.norm())
    return v


def run(opt, model, steps):
    for k in range(steps):
        backward(model, k)
        opt.step()


@pytest.mark.parametrize("beta2,update_scale", [(0.95, 0.2), (0.5, 1.0)])
def test_matches_the_reference_from_the_equations(beta2, update_scale):
    model = model_of_matrices()
    expected = clone(model)
    opt = NorMuon(model, lr=1e-2, momentum=0.9, beta2=beta2, weight_decay=0.3, update_scale=update_scale,
                  ns_method="svd")
    run(opt, model, 5)
    v = reference_normuon(expected, 5, 1e-2, 0.3, 0.9, beta2, 1e-8, update_scale)
    for (name, p), q in zip(model.named_parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=lambda msg, n=name: f"{n}: {msg}")
        torch.testing.assert_close(opt.state[p]["row_second_moment"], v[name], rtol=1e-9, atol=1e-14)


def test_polar_express_in_float32_stays_close_to_the_exact_rule():
    model, exact = model_of_matrices(torch.float32), model_of_matrices(torch.float32)
    run(NorMuon(model, lr=1e-2), model, 5)
    run(NorMuon(exact, lr=1e-2, ns_method="svd"), exact, 5)
    for p, q in zip(model.parameters(), exact.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=2e-3)


def test_the_update_rms_is_update_scale_times_lr():
    torch.manual_seed(1)
    W = torch.nn.Parameter(torch.randn(16, 8, dtype=torch.float64))
    before = W.detach().clone()
    W.grad = torch.randn(16, 8, dtype=torch.float64)
    NorMuon([W], lr=0.1, update_scale=0.2, weight_decay=0.0).step()
    rms = float((W.detach() - before).pow(2).mean().sqrt())
    assert rms == pytest.approx(0.1 * 0.2, rel=1e-12)


def test_rows_end_up_balanced_where_muon_leaves_them_unbalanced():
    """The point of the rule: after the row normalisation every row's update norm is (nearly) the same."""
    torch.manual_seed(2)
    G = torch.randn(32, 16, dtype=torch.float64) * torch.logspace(-2, 1, 32, dtype=torch.float64)[:, None]
    G = G @ torch.randn(16, 16, dtype=torch.float64)  # rank-correlated rows
    row_spread = {}
    for cls, kwargs in ((Muon, {}), (NorMuon, {"beta2": 0.0})):
        W = torch.nn.Parameter(torch.zeros(32, 16, dtype=torch.float64))
        W.grad = G.clone()
        cls([W], lr=1.0, ns_method="svd", weight_decay=0.0, **kwargs).step()
        norms = W.detach().norm(dim=1)
        row_spread[cls.__name__] = float(norms.max() / norms.min())
    assert row_spread["NorMuon"] < 1.001 < row_spread["Muon"]


def test_group_settings_are_validated_and_saved():
    model = model_of_matrices(torch.float32)
    params = list(model.parameters())
    opt = NorMuon([{"params": params[:1], "beta2": 0.5}, {"params": params[1:]}])
    assert [g["beta2"] for g in opt.param_groups] == [0.5, 0.95]
    assert opt.state_dict()["param_groups"][0]["update_scale"] == 0.2
    for key, bad in (("beta2", 1.0), ("eps", 0.0), ("update_scale", -1.0)):
        with pytest.raises(ValueError, match=key):
            NorMuon(model, **{key: bad})
        with pytest.raises(ValueError, match=key):
            opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, 2))], key: bad})
    with pytest.raises(ValueError, match="scale"):
        NorMuon(model, scale="keller")


def test_the_registry_builds_it_with_adamw_for_embeddings_head_and_vectors():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 8), torch.nn.Linear(8, 10))
    opt = create("normuon", model)
    assert isinstance(opt, NorMuon)
    rules = {r.name: r.rule for r in opt.routing}
    assert rules["0.weight"] == "adamw" and rules["1.weight"] == "spectral" and rules["1.bias"] == "adamw"
