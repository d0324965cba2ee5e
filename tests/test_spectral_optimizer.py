"""The shared optimizer base: routing, the internal AdamW rule, the non-finite gradient policy."""

import pytest
import torch
from torch import nn

from spectrakit.optim.spectral_optimizer import NonFiniteGradientError, SpectralOptimizer, decoupled_step


class _SGDSpectral(SpectralOptimizer):
    """Minimal subclass: plain SGD as the 'spectral' rule, so the base's behaviour can be observed."""

    def __init__(self, params, lr=0.1, weight_decay=0.0, **kwargs):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, **kwargs)

    def _spectral_step(self, group):
        for p in group["params"]:
            if p.grad is not None:
                decoupled_step(p, p.grad, group["lr"], 0.0)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(11, 6)
        self.proj = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.lm_head = nn.Linear(6, 11, bias=False)

    def forward(self, idx):
        return self.lm_head(self.norm(self.proj(self.embed_tokens(idx))))


def _loss(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 11, (8,), generator=g)
    return nn.functional.cross_entropy(model(idx), torch.randint(0, 11, (8,), generator=g))


def _rules(opt):
    return {r.name: r.rule for r in opt.routing}


def test_routing_by_category_and_report():
    torch.manual_seed(0)
    model = _Tiny()
    opt = _SGDSpectral(model, fallback=("vectors", "embeddings", "head"))
    assert _rules(opt) == {"embed_tokens.weight": "adamw", "proj.weight": "spectral", "proj.bias": "adamw",
                           "norm.weight": "adamw", "norm.bias": "adamw", "lm_head.weight": "adamw"}
    report = opt.routing_report()
    assert "proj.weight" in report and "embedding" in report and "output head" in report
    assert {g["rule"] for g in opt.param_groups} == {"spectral", "adamw"}


def test_routing_without_fallback_patterns_and_group_override():
    model = _Tiny()
    opt = _SGDSpectral(model, fallback=())
    assert set(_rules(opt).values()) == {"spectral"}
    opt = _SGDSpectral(model.named_parameters(), fallback=(), fallback_patterns=[r"^proj\."])
    assert _rules(opt)["proj.weight"] == "adamw" and _rules(opt)["lm_head.weight"] == "spectral"
    opt = _SGDSpectral([{"params": list(model.named_parameters()), "rule": "adamw"}])
    assert set(_rules(opt).values()) == {"adamw"}


def test_unnamed_tensors_get_generated_names():
    a, b = nn.Parameter(torch.randn(3, 3)), nn.Parameter(torch.randn(3))
    opt = _SGDSpectral([a, b])
    assert [r.name for r in opt.routing] == ["param0", "param1"]
    assert _rules(opt) == {"param0": "spectral", "param1": "adamw"}


def test_adamw_rule_matches_torch_adamw():
    torch.manual_seed(0)
    model, ref = _Tiny().double(), _Tiny().double()
    ref.load_state_dict(model.state_dict())
    ours = _SGDSpectral([{"params": list(model.named_parameters()), "rule": "adamw"}], lr=3e-3, weight_decay=0.1,
                        adamw_betas=(0.9, 0.95), adamw_eps=1e-8)
    theirs = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for step in range(15):
        for m, opt in ((model, ours), (ref, theirs)):
            opt.zero_grad()
            _loss(m, step).backward()
            opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_adamw_overrides_apply_to_adamw_groups_only():
    opt = _SGDSpectral(_Tiny(), lr=0.02, weight_decay=0.0, adamw_lr=3e-4, adamw_weight_decay=0.1,
                       fallback=("vectors",))
    by_rule = {g["rule"]: g for g in opt.param_groups}
    assert by_rule["adamw"]["lr"] == 3e-4 and by_rule["adamw"]["weight_decay"] == 0.1
    assert by_rule["spectral"]["lr"] == 0.02 and by_rule["spectral"]["weight_decay"] == 0.0


def test_closure_is_called_and_loss_returned():
    model = _Tiny()
    opt = _SGDSpectral(model)

    def closure():
        opt.zero_grad()
        loss = _loss(model)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and loss.requires_grad is False or loss.grad_fn is not None


def test_nonfinite_raise_names_parameter_and_changes_nothing():
    model = _Tiny()
    opt = _SGDSpectral(model)
    _loss(model).backward()
    model.proj.weight.grad[0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteGradientError, match="proj.weight"):
        opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_nonfinite_skip_counts_and_round_trips():
    model = _Tiny()
    opt = _SGDSpectral(model, nonfinite="skip")
    _loss(model).backward()
    model.norm.bias.grad[0] = float("inf")
    before = model.proj.weight.detach().clone()
    opt.step()
    assert opt.skipped_steps == 1 and torch.equal(model.proj.weight, before)
    fresh = _SGDSpectral(_Tiny(), nonfinite="skip")
    fresh.load_state_dict(opt.state_dict())
    assert fresh.skipped_steps == 1


def test_nonfinite_ignore_applies_the_step():
    model = _Tiny()
    opt = _SGDSpectral(model, nonfinite="ignore")
    _loss(model).backward()
    model.proj.weight.grad[0, 0] = float("nan")
    opt.step()
    assert torch.isnan(model.proj.weight[0, 0])


def test_sparse_gradients_are_rejected_with_the_name():
    emb = nn.Embedding(5, 3, sparse=True)
    opt = _SGDSpectral(emb)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse.*weight"):
        opt.step()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"adamw_lr": -1.0}, "adamw_lr"),
        ({"adamw_betas": (0.9, 1.0)}, r"adamw_betas\[1\]"),
        ({"adamw_betas": (0.9,)}, "adamw_betas"),
        ({"adamw_eps": 0.0}, "adamw_eps"),
        ({"adamw_weight_decay": -1.0}, "adamw_weight_decay"),
        ({"nonfinite": "warn"}, "nonfinite"),
        ({"fallback": ("bias",)}, "fallback"),
        ({"fallback": "vectors"}, "fallback"),
        ({"fallback_patterns": ["("]}, "fallback_patterns"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _SGDSpectral(_Tiny(), **kwargs)


def test_bad_group_rule_and_non_tensor():
    with pytest.raises(ValueError, match="rule"):
        _SGDSpectral([{"params": [nn.Parameter(torch.randn(2, 2))], "rule": "sgd"}])
    with pytest.raises(TypeError, match="not a tensor"):
        _SGDSpectral([("w", [1.0, 2.0])])
    with pytest.raises(ValueError, match="no parameters"):
        _SGDSpectral(nn.Sequential())


# ------------------------------------------------------------------------ torch.optim contract (issue 13)
def _spectra(model, **kw):
    from spectrakit import Spectra
    return Spectra(model, lr=1e-2, **kw)


def _muon(model, **kw):
    from spectrakit import Muon
    return Muon(model, lr=1e-2, adamw_lr=1e-2, **kw)


def _train(opt, model, steps=3, seed=0):
    for k in range(steps):
        opt.zero_grad()
        _loss(model, seed + k).backward()
        opt.step()


@pytest.mark.parametrize("make", [_spectra, _muon], ids=["spectra", "muon"])
@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_copies_keep_settings_and_step_like_the_original(make, copier):
    """Settings on the instance used to be dropped by Optimizer.__getstate__: the copy raised AttributeError."""
    import copy
    import pickle

    torch.manual_seed(0)
    model = _Tiny()
    opt = make(model, nonfinite="skip", track_stats=True, scale="none")
    _train(opt, model, 2)
    if copier == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    assert opt2.nonfinite == "skip" and opt2.track_stats and opt2.param_groups[0]["scale"] == "none"
    _train(opt, model, 2, seed=5)
    _train(opt2, model2, 2, seed=5)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert opt2.statistics().keys() == opt.statistics().keys()


@pytest.mark.parametrize("make", [_spectra, _muon], ids=["spectra", "muon"])
def test_math_settings_live_in_groups_and_round_trip(make):
    torch.manual_seed(0)
    model = _Tiny()
    opt = make(model, scale="none")
    assert all(g["scale"] == "none" for g in opt.param_groups)
    sd = opt.state_dict()
    fresh = make(_Tiny())
    fresh.load_state_dict(sd)
    assert all(g["scale"] == "none" for g in fresh.param_groups)


def test_spectra_settings_differ_per_group_like_separate_optimizers():
    from spectrakit import Spectra

    torch.manual_seed(0)
    a, b = nn.Linear(6, 5, bias=False), nn.Linear(6, 5, bias=False)
    a2, b2 = copy_module(a), copy_module(b)
    both = Spectra([{"params": [a.weight]}, {"params": [b.weight], "clip": "hard", "clip_c": 0.5, "scale": "none",
                                                "base": "signum", "clip_batch": 2}], lr=0.05, clip_c=0.3)
    one = Spectra([a2.weight], lr=0.05, clip_c=0.3)
    two = Spectra([b2.weight], lr=0.05, clip="hard", clip_c=0.5, scale="none", base="signum", clip_batch=2)
    x = torch.randn(7, 6)
    for _ in range(3):
        for opt in (both, one, two):
            opt.zero_grad()
        (a(x).square().sum() + b(x).sin().sum()).backward()
        (a2(x).square().sum() + b2(x).sin().sum()).backward()
        both.step()
        one.step()
        two.step()
    assert torch.equal(a.weight, a2.weight) and torch.equal(b.weight, b2.weight)


def copy_module(m):
    import copy
    return copy.deepcopy(m)


@pytest.mark.parametrize(("group", "match"), [({"clip": "round"}, "clip"), ({"clip_c": -1.0}, "clip_c"),
                                              ({"scale": "big"}, "scale"), ({"clip_batch": 0}, "clip_batch"),
                                              ({"clip_decay_shape": "zigzag"}, "shape"),
                                              ({"clip_method": "newton_schulz", "clip": "hard"}, "clip_method"),
                                              ({"clip_exclude": [3]}, "clip_exclude"), ({"base": "sgd"}, "base")])
def test_spectra_group_overrides_are_validated(group, match):
    from spectrakit import Spectra

    with pytest.raises(ValueError, match=match):
        Spectra([{"params": [nn.Parameter(torch.randn(3, 2))], **group}])


@pytest.mark.parametrize(("group", "match"), [({"ns_steps": 0}, "ns_steps"), ({"scale": "big"}, "scale"),
                                              ({"ns_coefficients": "fast"}, "ns_coefficients"),
                                              ({"batch": 0}, "batch"), ({"momentum": 1.0}, "momentum")])
def test_muon_group_overrides_are_validated(group, match):
    from spectrakit import Muon

    with pytest.raises(ValueError, match=match):
        Muon([{"params": [nn.Parameter(torch.randn(3, 2))], **group}])


@pytest.mark.parametrize("make", [_spectra, _muon, lambda m, **kw: _SGDSpectral(m, **kw)],
                         ids=["spectra", "muon", "base"])
@pytest.mark.parametrize("shape", [(), (1,)])
def test_tensor_lr_steps_like_the_float_lr(make, shape):
    torch.manual_seed(0)
    model = _Tiny()
    model2 = copy_module(model)
    opt = make(model)
    opt2 = make(model2)
    for group in opt2.param_groups:
        group["lr"] = torch.full(shape, float(group["lr"]))
    _train(opt, model, 3)
    _train(opt2, model2, 3)
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)


def test_tensor_lr_at_construction_and_under_a_scheduler():
    from spectrakit import Muon, Spectra

    for cls in (Spectra, Muon):
        torch.manual_seed(0)
        model = _Tiny()
        opt = cls(model, lr=torch.tensor([1e-2]))
        sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=3)
        before = [p.detach().clone() for p in model.parameters()]
        for k in range(3):
            opt.zero_grad()
            _loss(model, k).backward()
            opt.step()
            sched.step()
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("lr", [torch.tensor([1e-3, 2e-3]), torch.tensor(1, dtype=torch.int64), torch.tensor(-1.0)])
def test_bad_tensor_lr_is_rejected_at_construction(lr):
    from spectrakit import Muon, Spectra

    for cls in (Spectra, Muon, _SGDSpectral):
        with pytest.raises(ValueError, match="lr"):
            cls([nn.Parameter(torch.randn(3, 2))], lr=lr)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64])
def test_complex_and_integer_parameters_are_rejected_with_their_name(dtype):
    from spectrakit import Muon, Spectra

    bad = torch.zeros(3, 2, dtype=dtype)
    for cls in (Spectra, Muon, _SGDSpectral):
        with pytest.raises(ValueError, match=r"params: w has dtype"):
            cls([("ok", nn.Parameter(torch.randn(3))), ("w", bad)])


def test_a_groups_own_lr_and_weight_decay_win_over_the_adamw_arguments():
    from spectrakit import Muon

    torch.manual_seed(0)
    model = _Tiny()
    named = list(model.named_parameters())
    vectors = [p for n, p in named if p.dim() < 2]
    opt = Muon([{"params": [(n, p) for n, p in named if p.dim() < 2], "lr": 0.0, "weight_decay": 0.5},
                {"params": [(n, p) for n, p in named if p.dim() >= 2]}], adamw_lr=1e-2, adamw_weight_decay=0.1)
    frozen = [g for g in opt.param_groups if any(p is vectors[0] for p in g["params"])][0]
    assert frozen["lr"] == 0.0 and frozen["weight_decay"] == 0.5
    # the second group's AdamW part (embedding, head) takes the adamw_* arguments
    other = [g for g in opt.param_groups if g["rule"] == "adamw" and g is not frozen][0]
    assert other["lr"] == 1e-2 and other["weight_decay"] == 0.1
    before = [p.detach().clone() for p in vectors]
    _train(opt, model, 2)
    assert all(torch.equal(p, q) for p, q in zip(vectors, before))


def test_frozen_parameters_of_a_module_are_kept_and_train_once_unfrozen():
    from spectrakit import Muon, Spectra

    for cls in (Spectra, Muon):
        torch.manual_seed(0)
        model = _Tiny()
        model.proj.weight.requires_grad_(False)
        opt = cls(model, lr=1e-2)
        assert any(p is model.proj.weight for g in opt.param_groups for p in g["params"])
        before = model.proj.weight.detach().clone()
        _train(opt, model, 1)
        assert torch.equal(model.proj.weight, before)  # skipped while grad is None
        model.proj.weight.requires_grad_(True)
        _train(opt, model, 1)
        assert not torch.equal(model.proj.weight, before)


def test_loading_an_unnamed_state_dict_keeps_the_real_names():
    from spectrakit import Spectra

    torch.manual_seed(0)
    model = _Tiny()
    plain = Spectra(list(model.parameters()))
    named = Spectra(model, clip_exclude=("lm_head",))
    names = [list(g["param_names"]) for g in named.param_groups]
    named.load_state_dict(plain.state_dict())
    assert [g["param_names"] for g in named.param_groups] == names
    assert "lm_head.weight" in named.param_groups[0]["param_names"]
