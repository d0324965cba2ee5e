"""Spectra (native SPECTRA) against a plain reference from SPEC 1.1, the wrapper and torch.optim.AdamW."""

import dataclasses
import io
import math

import _svd_oracle as oracle
import pytest
import torch
from _optim_helpers import assert_models_close, backward, clone, loss_of, rect_scale, run, small_model
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from spectrakit.optim import TRANSFORMS, Spectra, SpectraWrapper
from spectrakit.optim.transforms import TransformOptions, transform_named


def reference_spectra_adamw(model, steps, lr, weight_decay, betas, eps, c):
    """X <- (1 - lr wd) X - alpha lr H_c(m_hat / (sqrt(v_hat) + eps)), written from the equations."""
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for k in range(steps):
        backward(model, k)
        t = k + 1
        with torch.no_grad():
            for i, p in enumerate(params):
                g = p.grad
                m[i] = betas[0] * m[i] + (1 - betas[0]) * g
                v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
                m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
                U = m_hat / (v_hat.sqrt() + eps)
                p.copy_((1 - lr * weight_decay) * p - rect_scale(p.shape) * lr * oracle.soft_clip(U, c).to(U.dtype))


HYPER = {"lr": 0.03, "weight_decay": 0.1, "betas": (0.9, 0.99), "eps": 1e-8}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 2e-4)])
def test_native_equals_wrapper_equals_reference(dtype, tol):
    model = small_model(dtype)
    ref, native, wrapped = clone(model), clone(model), clone(model)
    reference_spectra_adamw(ref, 25, c=1.0, **HYPER)
    run(native, Spectra(native, clip_c=1.0, clip_method="svd", **HYPER), 25)
    inner = torch.optim.AdamW(wrapped.parameters(), **HYPER)
    run(wrapped, SpectraWrapper(inner, clip_c=1.0, clip_method="svd"), 25)
    assert_models_close(native, ref, rtol=tol, atol=tol)
    assert_models_close(wrapped, ref, rtol=tol, atol=tol)
    # the clip was active: an unclipped AdamW run ends elsewhere
    plain = clone(model)
    run(plain, torch.optim.AdamW(plain.parameters(), **HYPER), 25)
    assert (plain[0].weight - ref[0].weight).abs().max() > 1e-2


def test_clip_none_reproduces_torch_adamw():
    model = small_model(torch.float32)
    a, b = clone(model), clone(model)
    run(a, Spectra(a, clip=None, **HYPER), 20)
    run(b, torch.optim.AdamW(b.parameters(), foreach=False, **HYPER), 20)
    assert_models_close(a, b, rtol=1e-6, atol=1e-7)


def test_native_state_is_adamw_state_only():
    model = small_model()
    opt = Spectra(model, clip_c=1.0, clip_method="svd")
    run(model, opt, 2)
    for p in model.parameters():
        assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}


@pytest.mark.parametrize("clip", ["soft", "hard"])
def test_frank_wolfe_bound_on_spectral_norms(clip):
    """||X_k||_2 <= (1 - lr wd)^k ||X_0||_2 + (1 - (1 - lr wd)^k) alpha c / wd, and the run approaches it."""
    torch.manual_seed(0)
    W = nn.Parameter(0.1 * torch.randn(12, 4, dtype=torch.float64))
    G = torch.randn(12, 1, dtype=torch.float64) @ torch.randn(1, 4, dtype=torch.float64)
    lr, wd, c = 0.05, 0.5, 0.2
    opt = Spectra([W], lr=lr, weight_decay=wd, clip=clip, clip_c=c, clip_method="svd")
    alpha, s0 = math.sqrt(3.0), oracle.spectral_norm(W).item()
    bound = s0
    for k in range(1, 301):
        W.grad = -G
        opt.step()
        decay = (1 - lr * wd) ** k
        bound = decay * s0 + (1 - decay) * alpha * c / wd
        assert oracle.spectral_norm(W).item() <= bound * (1 + 1e-9)
    assert oracle.spectral_norm(W).item() > 0.9 * bound


def test_resume_inside_the_threshold_decay_equals_uninterrupted_run():
    """Resumed at the start of the clip threshold's decay (clip_total_steps, clip_decay_fraction), which the
    generic resume contract (test_optim_contract.py) does not schedule; model and optimizer through one file."""
    model = small_model()
    full, part = clone(model), clone(model)
    kwargs = dict(clip_c=1.0, clip_method="svd", clip_total_steps=20, clip_decay_fraction=0.5, **HYPER)
    run(full, Spectra(full, **kwargs), 20)
    opt = Spectra(part, **kwargs)
    run(part, opt, 10)
    buffer = io.BytesIO()
    torch.save({"model": part.state_dict(), "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = small_model(seed=123)
    resumed.load_state_dict(saved["model"])
    opt2 = Spectra(resumed, **kwargs)
    opt2.load_state_dict(saved["optim"])
    run(resumed, opt2, 10, start=10)
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_warmup_threshold_follows_each_groups_peak_lr():
    model = small_model()
    groups = [{"params": list(model[0].parameters()), "lr": 0.1},
              {"params": list(model[2].parameters()), "lr": 0.02, "clip_c": 3.0}]
    opt = Spectra(groups, clip_c=2.0, track_stats=True)
    warmup = 4
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: (k + 1) / warmup if k < warmup else 0.5 * (1 + math.cos(math.pi * (k - warmup) / 10)))
    seen = []
    for k in range(12):
        lrs = [g["lr"] for g in opt.param_groups]
        backward(model, k)
        opt.step()
        sched.step()
        stats = opt.statistics()
        seen.append((lrs, stats["clip_c/group0"].item(), stats["clip_c/group1"].item()))
    for k, (lrs, c0, c1) in enumerate(seen):
        if k < warmup - 1:  # c_t * lr_t is constant: c * peak_lr
            assert c0 * lrs[0] == pytest.approx(2.0 * 0.1) and c1 * lrs[1] == pytest.approx(3.0 * 0.02)
            assert c0 > 2.0
        else:  # after the peak, c stays constant while the lr decays
            assert (c0, c1) == pytest.approx((2.0, 3.0))
    assert seen[-1][0][0] < 0.1 * 0.9


def test_zero_lr_at_warmup_start_does_not_clip():
    model = small_model()
    opt = Spectra(model, lr=0.1, track_stats=True)
    for g in opt.param_groups:
        g["lr"] = 0.0
    before = [p.clone() for p in model.parameters()]
    backward(model, 0)
    opt.step()
    assert math.isinf(opt.statistics()["clip_c/group0"].item())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_decay_phase_reaches_zero_update():
    W = nn.Parameter(torch.ones(4, 4, dtype=torch.float64))
    opt = Spectra([W], lr=0.1, weight_decay=0.0, clip_c=1.0, track_stats=True)
    opt.set_clip_schedule(total_steps=4, decay_fraction=0.5, shape="linear", final_scale=0.0)
    cs = []
    for _ in range(5):
        W.grad = torch.randn(4, 4, dtype=torch.float64)
        opt.step()
        cs.append(opt.statistics()["clip_c/group0"].item())
    assert cs == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0])
    before = W.detach().clone()
    W.grad = torch.randn(4, 4, dtype=torch.float64)
    opt.step()  # c = 0: no update
    assert torch.equal(W.detach(), before)


def test_statistics_match_exact_svd():
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(10, 5, dtype=torch.float64))
    b = nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = Spectra([("w", W), ("b", b)], clip_c=0.7, clip_method="svd", track_stats=True)
    assert opt.statistics() == {}
    W.grad, b.grad = torch.randn(10, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    U = W.grad / (W.grad.abs() + 1e-8)  # AdamW's first direction
    opt.step()
    stats = opt.statistics()
    s = oracle.singular_values(U)
    assert stats["sigma_max/w"].item() == pytest.approx(s.max().item(), rel=1e-6)
    assert stats["clipped_fraction/w"].item() == pytest.approx((s**2 / (s**2 + 0.49)).mean().item(), rel=1e-6)
    u = b.grad / (b.grad.abs() + 1e-8)
    assert stats["sigma_max/b"].item() == pytest.approx(u.norm().item(), rel=1e-6)
    assert all(v.dim() == 0 for v in stats.values())
    assert Spectra([W], track_stats=False).statistics() == {}


def test_no_stats_without_flag():
    model = small_model()
    opt = Spectra(model)
    run(model, opt, 1)
    assert opt.statistics() == {}


def _fixed_gradient_run(opt, params, steps=3):
    """Gradients that do not depend on the trajectory, so parameters can be compared one by one."""
    g = torch.Generator().manual_seed(7)
    grads = [[torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params] for _ in range(steps)]
    for step_grads in grads:
        for p, grad in zip(params, step_grads):
            p.grad = grad
        opt.step()


def test_which_parameters_are_clipped():
    model = small_model()
    ref = clone(model)
    opt = Spectra(model, clip_c=1e-3, clip_apply_to="matrices", clip_exclude=[r"^2\."], **HYPER)
    _fixed_gradient_run(opt, list(model.parameters()))
    _fixed_gradient_run(torch.optim.AdamW(ref.parameters(), foreach=False, **HYPER), list(ref.parameters()))
    # unclipped: the biases (matrices only) and every parameter of layer 2 (excluded by name)
    for name in ("0.bias", "2.weight", "2.bias"):
        torch.testing.assert_close(dict(model.named_parameters())[name], dict(ref.named_parameters())[name])
    assert not torch.allclose(model[0].weight, ref[0].weight)


def test_group_without_clip_and_per_group_threshold():
    model = small_model()
    ref, other = clone(model), clone(model)
    opt = Spectra([{"params": model[0].parameters(), "clip": None}, {"params": model[2].parameters(), "clip_c": 0.5}],
                  **HYPER)
    _fixed_gradient_run(opt, list(model.parameters()))
    _fixed_gradient_run(torch.optim.AdamW(ref.parameters(), foreach=False, **HYPER), list(ref.parameters()))
    _fixed_gradient_run(Spectra(other, clip_c=0.5, **HYPER), list(other.parameters()))
    torch.testing.assert_close(model[0].weight, ref[0].weight)
    torch.testing.assert_close(model[2].weight, other[2].weight)
    assert not torch.allclose(model[2].weight, ref[2].weight)


def test_vector_rules():
    """smooth: u / sqrt(1 + |u|^2/c^2); authors: u unchanged while |u| <= c."""
    for rule, small_changes in (("smooth", True), ("authors", False)):
        b = nn.Parameter(torch.zeros(4, dtype=torch.float64))
        opt = Spectra([b], lr=1.0, weight_decay=0.0, clip_c=10.0, vector_rule=rule, base="signum", momentum=0.0)
        b.grad = torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64)  # |U| = 2 < c
        opt.step()
        expected = -b.grad / math.sqrt(1 + 4 / 100) if small_changes else -b.grad
        torch.testing.assert_close(b.detach(), expected)
        b.grad = torch.full((4,), 1.0, dtype=torch.float64)
        opt.param_groups[0]["clip_c"] = 1.0  # |U| = 2 > c: both rules shrink
        before = b.detach().clone()
        opt.step()
        torch.testing.assert_close(b.detach() - before, -b.grad / math.sqrt(1 + 4))


@pytest.mark.parametrize("base", ["adamw", "signum", "mars", "ademamix", "momentum"])
def test_every_base_with_every_clip_runs_and_learns(base):
    for clip in ("soft", "hard", "normalize"):
        model = small_model(torch.float32)
        lr = {"adamw": 0.01, "signum": 0.003, "mars": 0.01, "ademamix": 0.01, "momentum": 0.05}[base]
        opt = Spectra(model, lr=lr, base=base, clip=clip, clip_c=1.0, weight_decay=0.0)
        start = loss_of(model, 0).item()
        for _ in range(15):
            backward(model, 0)
            opt.step()
        assert loss_of(model, 0).item() < start


def test_closure_and_bf16_parameters():
    model = small_model(torch.float32)
    a, b = clone(model), clone(model).to(torch.bfloat16)
    opt_a = Spectra(a, clip_c=1.0, **HYPER)
    opt_b = Spectra(b, clip_c=1.0, **HYPER)
    for k in range(5):
        def closure(m=a, k=k):
            m.zero_grad()
            loss = loss_of(m, k)
            loss.backward()
            return loss
        loss = opt_a.step(closure)
        assert isinstance(loss, torch.Tensor) and loss.requires_grad is False or loss.grad_fn is not None
        backward(b, k)
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert q.dtype == torch.bfloat16 and torch.isfinite(q).all()
        torch.testing.assert_close(q.float(), p, rtol=0.05, atol=0.05)


def test_hard_clip_reference():
    torch.manual_seed(1)
    W = nn.Parameter(torch.randn(6, 9, dtype=torch.float64))
    W0 = W.detach().clone()
    opt = Spectra([W], lr=0.1, weight_decay=0.2, base="momentum", momentum=0.0, nesterov=False, clip="hard",
                  clip_c=0.5, clip_method="svd", scale="none")
    W.grad = torch.randn(6, 9, dtype=torch.float64)
    opt.step()
    expected = (1 - 0.02) * W0 - 0.1 * oracle.hard_clip(W.grad, 0.5)
    torch.testing.assert_close(W.detach(), expected)


def test_default_method_matches_exact_clip():
    model = small_model(torch.float32)
    a, b = clone(model), clone(model)
    run(a, Spectra(a, clip_c=1.0, **HYPER), 5)
    run(b, Spectra(b, clip_c=1.0, clip_method="svd", **HYPER), 5)
    assert_models_close(a, b, rtol=1e-3, atol=1e-4)


def test_routing_and_internal_adamw():
    model = small_model()
    opt = Spectra(model, fallback=("vectors",), adamw_lr=0.003)
    rules = {r.name: r.rule for r in opt.routing}
    assert rules == {"0.weight": "spectral", "0.bias": "adamw", "2.weight": "spectral", "2.bias": "adamw"}
    assert {g["rule"]: g["lr"] for g in opt.param_groups} == {"spectral": 1e-3, "adamw": 0.003}
    assert "vector rule" in Spectra(model).routing_report()


@pytest.mark.parametrize("kwargs,match", [
    ({"lr": -1.0}, "lr must be"),
    ({"clip_c": 0.0}, "clip_c must be"),
    ({"clip_c": float("nan")}, "clip_c must be"),
    ({"base": "sgd"}, "base must be one of"),
    ({"clip": "soft_hard"}, "clip must be None or one of"),
    ({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\)"),
    ({"betas": (0.9,)}, "betas must be a sequence of 2"),
    ({"base": "ademamix", "betas": (0.9, 0.99)}, "betas must be a sequence of 3"),
    ({"momentum": 0.9}, "momentum is not a hyperparameter of base='adamw'"),
    ({"base": "signum", "momentum": 1.5}, "momentum must be in"),
    ({"base": "mars", "gamma": -1.0}, "gamma must be"),
    ({"base": "ademamix", "alpha_warmup": 0}, "alpha_warmup must be None or an integer"),
    ({"clip_method": "qr"}, "clip_method must be one of"),
    ({"clip": "hard", "clip_method": "newton_schulz"}, "clip_method must be one of"),
    ({"clip_steps": 0}, "clip_steps must be"),
    ({"clip_dtype": torch.int32}, "clip_dtype must be"),
    ({"clip_apply_to": "some"}, "clip_apply_to must be one of"),
    ({"clip_exclude": ["("]}, "clip_exclude contains an invalid"),
    ({"vector_rule": "odd"}, "vector_rule must be one of"),
    ({"scale": "big"}, "scale must be one of"),
    ({"clip_batch": 0}, "clip_batch must be"),
    ({"clip_decay_shape": "step"}, "shape must be one of"),
    ({"clip_decay_fraction": 0.0}, "decay_fraction must be in"),
    ({"clip_total_steps": -5}, "total_steps must be None or an integer"),
    ({"clip_final_scale": -1.0}, "final_scale must be"),
    ({"peak_lr": 0.0}, "peak_lr must be"),
    ({"weight_decay": -0.1}, "weight_decay must be"),
    ({"fallback": ("bias",)}, "fallback entries must be among"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Spectra(small_model(), **kwargs)


def test_bad_group_options_and_sparse_gradients():
    W = nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match="clip_c must be"):
        Spectra([{"params": [W], "clip_c": -1.0}])
    with pytest.raises(ValueError, match="clip must be None or one of"):
        Spectra([{"params": [W], "clip": "svd"}])
    with pytest.raises(ValueError, match=r"betas\[0\] must be"):
        Spectra([{"params": [W], "betas": (1.2, 0.9)}])
    emb = nn.Embedding(5, 3, sparse=True)
    opt = Spectra(emb)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse gradients"):
        opt.step()


def test_nonfinite_gradients_raise_or_skip():
    from spectrakit.optim import NonFiniteGradientError

    model = small_model()
    backward(model, 0)
    model[2].weight.grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteGradientError, match="2.weight"):
        Spectra(model).step()
    opt = Spectra(model, nonfinite="skip")
    opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_stacked_matrices_are_clipped_one_by_one():
    torch.manual_seed(0)
    E = nn.Parameter(torch.randn(3, 8, 4, dtype=torch.float64))
    E0 = E.detach().clone()
    opt = Spectra([E], lr=0.1, weight_decay=0.0, base="momentum", momentum=0.0, nesterov=False, clip_c=0.5,
                  clip_method="svd")
    E.grad = torch.randn(3, 8, 4, dtype=torch.float64)
    opt.step()
    for i in range(3):
        expected = E0[i] - 0.1 * math.sqrt(2) * oracle.soft_clip(E.grad[i], 0.5)
        torch.testing.assert_close(E.detach()[i], expected)


def test_authors_newton_schulz_method_for_parity():
    model = small_model(torch.float32)
    a, b = clone(model), clone(model)
    run(a, Spectra(a, clip_c=10.0, clip_method="newton_schulz", clip_dtype=torch.float32, **HYPER), 3)
    run(b, Spectra(b, clip_c=10.0, clip_method="svd", **HYPER), 3)
    assert_models_close(a, b, rtol=1e-3, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), c=st.floats(0.05, 20.0), seed=st.integers(0, 2**16),
       clip=st.sampled_from(["soft", "hard"]))
def test_update_spectral_norm_never_exceeds_alpha_lr_c(rows, cols, c, seed, clip):
    """Property: ||X_{k+1} - (1 - lr wd) X_k||_2 <= alpha_shape * lr * c, whatever the gradient's scale."""
    g = torch.Generator().manual_seed(seed)
    W = nn.Parameter(torch.randn(rows, cols, generator=g, dtype=torch.float64))
    W0 = W.detach().clone()
    lr, wd = 0.1, 0.3
    opt = Spectra([W], lr=lr, weight_decay=wd, clip=clip, clip_c=c, clip_method="svd")
    W.grad = 100 * torch.randn(rows, cols, generator=g, dtype=torch.float64)
    opt.step()
    step = W.detach() - (1 - lr * wd) * W0
    alpha = math.sqrt(max(1.0, rows / cols))
    assert oracle.spectral_norm(step).item() <= alpha * lr * c * (1 + 1e-9)


def test_stacks_hold_same_shape_matrices_up_to_the_batch_and_the_memory_budget():
    from spectrakit.optim._chunks import STACK_BUDGET, chunks_by_key, stack_key, stack_size

    small = [torch.zeros(4, 4) for _ in range(5)] + [torch.zeros(3, 4)]
    mid = [torch.zeros(STACK_BUDGET // 2, 1, dtype=torch.bool) for _ in range(3)]  # two fit the budget
    big = [torch.zeros(STACK_BUDGET // 2 + 1, 1, dtype=torch.bool) for _ in range(2)]  # one alone
    chunks = chunks_by_key(small + mid + big, stack_key, lambda t: stack_size(t, 4))
    assert [len(c) for c in chunks] == [4, 1, 1, 2, 1, 1, 1]
    assert chunks[3] == mid[:2] and chunks[-1][0] is big[1] and chunks[-2][0] is big[0]
    assert stack_size(torch.zeros(8, 8), 16) == 16 and stack_size(torch.zeros(4096, 4096), 8) == 2


@pytest.mark.parametrize("kind", ["soft", "hard", "normalize"])
@pytest.mark.parametrize("vector_rule", ["smooth", "authors"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_the_stacked_vector_rule_is_the_vector_rule_row_by_row(kind, vector_rule, dtype):
    g = torch.Generator().manual_seed(3)
    U = torch.randn(6, 9, generator=g, dtype=torch.float64) * torch.tensor([0.01, 0.5, 1.0, 3.0, 40.0, 0.0])[:, None]
    U = U.to(dtype)
    transform, options = transform_named(kind), TransformOptions(vector_rule=vector_rule)
    Y, norms = transform.vector_rows(U, 2.0, options)
    assert Y.dtype == dtype and norms.shape == (6,)
    for i in range(6):
        y, norm = transform.vector(U[i], 2.0, options)
        torch.testing.assert_close(Y[i], y, rtol=1e-6 if dtype == torch.float64 else 1e-5, atol=0)
        torch.testing.assert_close(norms[i], norm, rtol=1e-6 if dtype == torch.float64 else 1e-5, atol=0)


def _with_vector_rows(monkeypatch, kind, rule):
    """The registered transform ``kind`` with ``rule`` as its stacked vector rule (None: the engine then takes
    vectors one at a time)."""
    monkeypatch.setitem(TRANSFORMS, kind, dataclasses.replace(transform_named(kind), vector_rows=rule))


@pytest.mark.parametrize("kind", ["soft", "hard", "normalize"])
def test_same_length_vectors_are_transformed_in_one_stack(monkeypatch, kind):
    """Spectra with clip over vectors: the 1-D parameters of one length (and dtype) are one stack, a scalar and
    a vector of another length alone; updates and statistics are those of vectors transformed one at a time."""
    g = torch.Generator().manual_seed(5)
    shapes = [(7,), (7,), (4,), (7,), (), (7,)]
    start = [torch.randn(s, generator=g, dtype=torch.float64) * (i + 1) for i, s in enumerate(shapes)]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(3)]
    results, stats, seen = {}, {}, []
    rows_rule = transform_named(kind).vector_rows
    for stacked in (True, False):
        _with_vector_rows(monkeypatch, kind, (lambda U, c, options: seen.append(tuple(U.shape)) or
                                              rows_rule(U, c, options)) if stacked else None)
        params = [nn.Parameter(w.clone()) for w in start]
        opt = Spectra([(f"p{i}", p) for i, p in enumerate(params)], lr=0.1, clip=kind, clip_c=2.0,
                      fallback=(), track_stats=True)
        for step_grads in grads:
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
            opt.step()
        results[stacked], stats[stacked] = [p.detach() for p in params], opt.statistics()
    assert seen == [(4, 7)] * 3  # one stack of the four 7-vectors per step; the 4-vector and the scalar alone
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert stats[True].keys() == stats[False].keys()
    for key in stats[False]:
        torch.testing.assert_close(stats[True][key], stats[False][key], rtol=1e-12, atol=1e-14)
