"""Lion as a registered direction (Chen et al. 2023): Spectra(base="lion") against a plain reference written from
the equations, with and without the soft clip, and the registry's "lion" / "spectra-lion" entries."""

from __future__ import annotations

import math

import pytest
import torch
from _optim_helpers import backward, clone, rect_scale, small_model
from _svd_oracle import soft_clip

from spectrakit.optim import DIRECTIONS, Spectra, create


def reference_lion(model, steps, lr, wd, betas, clip_c=None):
    """X <- (1 - lr wd) X - alpha lr T(sign(b1 m + (1 - b1) g)),  m <- b2 m + (1 - b2) g;  T = soft clip (exact
    SVD, alpha = sqrt(max(1, rows/cols))) or the identity (alpha = 1)."""
    m = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    b1, b2 = betas
    for k in range(steps):
        backward(model, k)
        with torch.no_grad():
            for n, p in model.named_parameters():
                u = torch.sign(b1 * m[n] + (1 - b1) * p.grad)
                m[n] = b2 * m[n] + (1 - b2) * p.grad
                alpha = 1.0
                if clip_c is not None:
                    u = soft_clip(u, clip_c).to(u.dtype)
                    alpha = rect_scale(p.shape)
                p.mul_(1 - lr * wd).sub_(alpha * lr * u)


def run(opt, model, steps):
    for k in range(steps):
        backward(model, k)
        opt.step()


@pytest.mark.parametrize("clip_c", [None, 0.7, 3.0], ids=["no-clip", "c=0.7", "c=3"])
def test_matches_the_reference_from_the_equations(clip_c):
    model = small_model(torch.float64)
    expected = clone(model)
    betas, lr, wd = (0.9, 0.99), 1e-2, 0.5
    clip = {"clip": None} if clip_c is None else {"clip": "soft", "clip_c": clip_c, "clip_method": "svd",
                                                  "clip_warmup": False}
    run(Spectra(model, lr=lr, base="lion", betas=betas, weight_decay=wd, **clip), model, 6)
    reference_lion(expected, 6, lr, wd, betas, clip_c)
    for (name, p), q in zip(model.named_parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=lambda msg, n=name: f"{n}: {msg}")


def test_the_first_step_is_the_sign_of_the_gradient_and_moves_every_entry_by_lr():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 4, dtype=torch.float64))
    before = p.detach().clone()
    p.grad = torch.randn(5, 4, dtype=torch.float64)
    Spectra([p], lr=0.1, base="lion", clip=None, weight_decay=0.0).step()
    torch.testing.assert_close(p.detach(), before - 0.1 * p.grad.sign(), rtol=0, atol=1e-15)


def test_registry_entries_build_lion_with_and_without_the_clip():
    model = small_model(torch.float32)
    plain, clipped = create("lion", model), create("spectra-lion", model)
    assert plain.defaults["base"] == clipped.defaults["base"] == "lion"
    assert plain.defaults["clip"] is None and clipped.defaults["clip"] == "soft"
    assert DIRECTIONS["lion"].defaults == {"betas": (0.9, 0.99)}


@pytest.mark.parametrize("betas", [(0.9,), (1.0, 0.99), (0.9, -0.1), "0.9"])
def test_bad_betas_are_rejected_with_their_name(betas):
    with pytest.raises(ValueError, match="betas"):
        Spectra(small_model(torch.float32), base="lion", betas=betas)


def test_a_hyperparameter_lion_does_not_use_is_rejected():
    with pytest.raises(ValueError, match="eps is not a hyperparameter of base='lion'"):
        Spectra(small_model(torch.float32), base="lion", eps=1e-8)


def test_lion_trains_a_regression_problem():
    torch.manual_seed(0)
    X = torch.randn(64, 8)
    W_true = torch.randn(8, 3)
    W = torch.nn.Parameter(torch.zeros(8, 3))
    opt = create("lion", [W], lr=3e-2, weight_decay=0.0)
    first = None
    for _ in range(200):
        loss = ((X @ W - X @ W_true) ** 2).mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05 * first and math.isfinite(float(loss.detach()))
