"""Signum, MARS, AdEMAMix and the momentum helpers against references written from SPEC 3."""

import math

import pytest
import torch
from _optim_helpers import assert_models_close, backward, clone, run, small_model
from torch.utils._python_dispatch import TorchDispatchMode

from spectrakit.linalg import soft_clip_svd as oracle_soft_clip
from spectrakit.optim import BASES, AdEMAMix, Mars, Signum, Spectra, ema_momentum, heavy_ball_momentum, shape_scale
from spectrakit.optim.directions import beta3_at, direction_named


def _reference_run(model, steps, lr, wd, direction_fn, loss_scale=1.0):
    """X <- (1 - lr wd) X - lr U with U = direction_fn(i, p, grad, t) (t = 1, 2, ...)."""
    for k in range(steps):
        backward(model, k, loss_scale)
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                U = direction_fn(i, p, p.grad.clone(), k + 1)
                p.mul_(1 - lr * wd).sub_(lr * U)


@pytest.mark.parametrize("nesterov,dampening", [(False, 0.0), (True, 0.1)])
def test_signum_matches_reference(nesterov, dampening):
    model = small_model()
    ref, opt_model = clone(model), clone(model)
    mu, lr, wd = 0.9, 0.01, 0.1
    bufs = {}

    def direction(i, p, g, t):
        buf = bufs.get(i, torch.zeros_like(g))
        bufs[i] = mu * buf + (1 - dampening) * g
        return torch.sign(g + mu * bufs[i] if nesterov else bufs[i])

    _reference_run(ref, 20, lr, wd, direction)
    run(opt_model, Signum(opt_model, lr=lr, momentum=mu, dampening=dampening, nesterov=nesterov, weight_decay=wd), 20)
    assert_models_close(opt_model, ref, rtol=1e-12, atol=1e-12)


def test_signsgd_without_momentum():
    model = small_model()
    ref, opt_model = clone(model), clone(model)
    _reference_run(ref, 5, 0.01, 0.0, lambda i, p, g, t: torch.sign(g))
    run(opt_model, Signum(opt_model, lr=0.01, momentum=0.0), 5)
    assert_models_close(opt_model, ref, rtol=1e-12, atol=1e-12)


def _alternating_scale(step):
    """Large gradients on even steps (the norm cap ||c|| <= 1 acts), small ones on odd steps."""
    return 20.0 if step % 3 == 0 else 0.01


def test_mars_matches_reference():
    model = small_model()
    capped = []
    ref, opt_model = clone(model), clone(model)
    lr, wd, (b1, b2), gamma, eps = 3e-3, 0.1, (0.95, 0.99), 0.025, 1e-8
    vb1, vb2 = 0.9, 0.95
    st = {}

    def direction(i, p, g, t):
        s = st.setdefault(i, {"m": torch.zeros_like(g), "v": torch.zeros_like(g), "prev": torch.zeros_like(g)})
        if g.dim() < 2:  # 1-D: plain AdamW with betas (0.9, 0.95)
            s["m"] = vb1 * s["m"] + (1 - vb1) * g
            s["v"] = vb2 * s["v"] + (1 - vb2) * g * g
            return (s["m"] / (1 - vb1**t)) / ((s["v"] / (1 - vb2**t)).sqrt() + eps)
        c = g + gamma * (b1 / (1 - b1)) * (g - s["prev"])
        s["prev"] = g
        norm = c.norm()
        capped.append(bool(norm > 1))
        if norm > 1:
            c = c / norm
        s["m"] = b1 * s["m"] + (1 - b1) * c
        s["v"] = b2 * s["v"] + (1 - b2) * c * c
        return (s["m"] / (1 - b1**t)) / ((s["v"] / (1 - b2**t)).sqrt() + eps)

    _reference_run(ref, 20, lr, wd, direction, _alternating_scale)
    run(opt_model, Mars(opt_model, lr=lr, weight_decay=wd), 20, loss_scale=_alternating_scale)
    assert_models_close(opt_model, ref, rtol=1e-10, atol=1e-12)
    assert any(capped) and not all(capped)


@pytest.mark.parametrize("warmups", [(None, None), (10, 15)])
def test_ademamix_matches_reference(warmups):
    alpha_warmup, beta3_warmup = warmups
    model = small_model()
    ref, opt_model = clone(model), clone(model)
    lr, wd, (b1, b2, b3), alpha, eps = 1e-2, 0.1, (0.9, 0.999, 0.999), 5.0, 1e-8
    st = {}

    def direction(i, p, g, t):
        s = st.setdefault(i, {"m1": torch.zeros_like(g), "m2": torch.zeros_like(g), "v": torch.zeros_like(g)})
        a = alpha * min(1.0, t / alpha_warmup) if alpha_warmup else alpha
        if beta3_warmup and t < beta3_warmup:  # half-life 1/ln(1/beta) interpolated linearly from beta1's
            half_life = lambda beta: -1 / math.log(beta)  # noqa: E731
            frac = t / beta3_warmup
            h = (1 - frac) * half_life(b1) + frac * half_life(b3)
            beta3 = min(math.exp(-1 / h), b3)
        else:
            beta3 = b3
        s["m1"] = b1 * s["m1"] + (1 - b1) * g
        s["m2"] = beta3 * s["m2"] + (1 - beta3) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        return (s["m1"] / (1 - b1**t) + a * s["m2"]) / ((s["v"] / (1 - b2**t)).sqrt() + eps)

    _reference_run(ref, 20, lr, wd, direction)
    run(opt_model, AdEMAMix(opt_model, lr=lr, betas=(b1, b2, b3), alpha=alpha, weight_decay=wd,
                            alpha_warmup=alpha_warmup, beta3_warmup=beta3_warmup), 20)
    assert_models_close(opt_model, ref, rtol=1e-9, atol=1e-11)


def test_beta3_warmup_endpoints():
    assert beta3_at(0, 0.9, 0.9999, 100) == pytest.approx(0.9)
    assert beta3_at(100, 0.9, 0.9999, 100) == 0.9999
    assert beta3_at(5, 0.9, 0.9999, None) == 0.9999
    values = [beta3_at(t, 0.9, 0.9999, 100) for t in range(100)]
    assert values == sorted(values)


def test_standalone_bases_equal_spectra_without_clip():
    model = small_model()
    a, b = clone(model), clone(model)
    run(a, Mars(a, lr=1e-3, weight_decay=0.05), 5)
    run(b, Spectra(b, base="mars", clip=None, lr=1e-3, weight_decay=0.05), 5)
    assert_models_close(a, b, rtol=0, atol=0)


def test_momentum_helpers():
    g = torch.tensor([1.0, -2.0])
    buf = torch.tensor([0.5, 0.5])
    out = ema_momentum(g, buf, 0.9, nesterov=False)
    torch.testing.assert_close(buf, 0.9 * torch.tensor([0.5, 0.5]) + 0.1 * g)
    assert out is buf
    buf = torch.tensor([0.5, 0.5])
    out = ema_momentum(g, buf, 0.9, nesterov=True)
    torch.testing.assert_close(out, 0.1 * g + 0.9 * buf)
    buf = torch.tensor([0.5, 0.5])
    out = heavy_ball_momentum(g, buf, 0.9, 0.2, nesterov=True)
    torch.testing.assert_close(buf, 0.9 * torch.tensor([0.5, 0.5]) + 0.8 * g)
    torch.testing.assert_close(out, g + 0.9 * buf)


def test_shape_scale_conventions():
    assert shape_scale((50304, 768), "keller") == pytest.approx(8.093, rel=1e-3)
    assert shape_scale((768, 2304), "keller") == 1.0
    assert shape_scale((2304, 768), "keller") == pytest.approx(math.sqrt(3))
    assert shape_scale((768, 2304), "spectral") == pytest.approx(math.sqrt(1 / 3))
    assert shape_scale((768, 2304), "moonlight") == pytest.approx(0.2 * math.sqrt(2304))
    assert shape_scale((4, 2, 8), "keller") == 1.0 and shape_scale((4, 8, 2), "keller") == 2.0
    assert shape_scale((7,), "moonlight") == 1.0 and shape_scale((5, 3), "none") == 1.0
    with pytest.raises(ValueError, match="scale must be one of"):
        shape_scale((2, 2), "huge")


@pytest.mark.parametrize("cls,kwargs,match", [
    (Signum, {"momentum": 1.0}, "momentum must be in"),
    (Signum, {"dampening": -0.1}, "dampening must be in"),
    (Signum, {"nesterov": 1}, "nesterov must be True or False"),
    (Mars, {"betas": (0.95, 1.2)}, r"betas\[1\] must be"),
    (Mars, {"vector_betas": (2.0, 0.9)}, r"vector_betas\[0\] must be"),
    (Mars, {"eps": -1.0}, "eps must be"),
    (AdEMAMix, {"alpha": -1.0}, "alpha must be"),
    (AdEMAMix, {"beta3_warmup": 2.5}, "beta3_warmup must be None or an integer"),
    (AdEMAMix, {"betas": (0.0, 0.9, 0.99), "beta3_warmup": 10}, "beta3_warmup needs betas"),
    (AdEMAMix, {"lr": float("inf")}, "lr must be"),
])
def test_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(small_model(), **kwargs)


def test_a_group_that_sets_one_ademamix_option_is_checked_with_the_defaults():
    model = small_model()
    a, b = clone(model), clone(model)
    opt = AdEMAMix([{"params": a[0].parameters(), "beta3_warmup": 10}, {"params": a[2].parameters(), "alpha": 4.0}],
                   lr=0.01)
    run(a, opt, 3)
    ref = AdEMAMix([{"params": b[0].parameters(), "beta3_warmup": 10, "betas": (0.9, 0.999, 0.9999)},
                    {"params": b[2].parameters(), "alpha": 4.0, "betas": (0.9, 0.999, 0.9999)}], lr=0.01)
    run(b, ref, 3)
    assert_models_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="beta3_warmup needs betas"):
        AdEMAMix([{"params": model.parameters(), "beta3_warmup": 10, "betas": (0.0, 0.9, 0.99)}])


def test_a_group_option_is_checked_against_the_optimizers_own_defaults():
    with pytest.raises(ValueError, match="beta3_warmup needs betas"):
        AdEMAMix([{"params": small_model().parameters(), "beta3_warmup": 10}], betas=(0.0, 0.9, 0.99))


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("tensor_steps", [False, True])
def test_a_direction_written_into_out_is_the_returned_one(base, tensor_steps):
    """``out=`` (the engine's stack) gets the same numbers bit for bit as the returned directions, over 3 steps
    (bias corrections at t = 1, 2, 3), with int step counts and with the 0-d tensor counts of sync-free steps;
    ``out`` itself is returned. MARS takes its matrices and vectors in one call."""
    direction = direction_named(base)
    group = {**direction.defaults, **({"alpha_warmup": 4, "beta3_warmup": 4} if base == "ademamix" else {})}
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (3, 4), (4,)]
    returned_states, written_states = [{} for _ in shapes], [{} for _ in shapes]
    for step in range(3):
        grads = [torch.randn(shape, generator=gen, dtype=torch.float32) for shape in shapes]
        expected = [u.clone() for u in direction(grads, returned_states, group)]
        out = [torch.full(shape, float("nan")) for shape in shapes]
        got = direction(grads, written_states, group, out=out)
        assert all(g is o for g, o in zip(got, out))
        assert all(torch.equal(o, e) for o, e in zip(out, expected)), base
        if tensor_steps and step == 0:
            for state in (*returned_states, *written_states):
                if "step" in state:  # the directions that count steps (the AdamW family)
                    state["step"] = torch.tensor(float(state["step"]))


class _Joins(TorchDispatchMode):
    """The output shapes of the stack and cat ops dispatched inside."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in ("stack", "cat"):
            self.shapes.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("base", ["adamw", "signum"])
def test_the_engine_writes_a_stacks_directions_into_it(base):
    """Same-shape matrices take one stacked clip call whose directions are written into the stack: the step
    dispatches no stack or cat of the directions (the non-finite check stacks one scalar per gradient), and its
    result is that of a reference that stacks them."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(6, 5, dtype=torch.float64)) for _ in range(3)]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, reference):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    opt = Spectra(params, lr=0.1, base=base, clip_method="svd", clip_c=0.5, clip_batch=16, clip_warmup=False)
    with _Joins() as joins:
        opt.step()
    assert all(shape[-2:] != (6, 5) for shape in joins.shapes), joins.shapes
    direction = direction_named(base)
    group = {**direction.defaults, **{k: v for k, v in opt.param_groups[0].items() if k in direction.defaults}}
    U = torch.stack(direction([q.grad for q in reference], [{} for _ in reference], group))
    Y = oracle_soft_clip(U, 0.5)
    scale = shape_scale((6, 5), opt.param_groups[0]["scale"])
    for p, q, y in zip(params, reference, Y):
        expected = q.detach() * (1 - 0.1 * opt.param_groups[0]["weight_decay"]) - 0.1 * scale * y
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)
