"""The shared optimizer base: routing, the internal AdamW rule, the non-finite gradient policy."""

import pytest
import torch
from torch import nn

from spectrakit.optim.base import NonFiniteGradientError, SpectralOptimizer


class _SGDSpectral(SpectralOptimizer):
    """Minimal subclass: plain SGD as the 'spectral' rule, so the base's behaviour can be observed."""

    def __init__(self, params, lr=0.1, weight_decay=0.0, **kwargs):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, **kwargs)

    def _spectral_step(self, group):
        for p in group["params"]:
            if p.grad is not None:
                p.add_(p.grad, alpha=-group["lr"])


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


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(1)
    a = _Tiny()
    b = _Tiny()
    b.load_state_dict(a.state_dict())
    opt_a = _SGDSpectral(a, fallback=("vectors", "embeddings"))
    for step in range(3):
        opt_a.zero_grad()
        _loss(a, step).backward()
        opt_a.step()
    b.load_state_dict(a.state_dict())
    opt_b = _SGDSpectral(b, fallback=("vectors", "embeddings"))
    opt_b.load_state_dict(opt_a.state_dict())
    for step in range(3, 6):
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            _loss(m, step).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


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
    with pytest.raises(ValueError, match="no trainable parameters"):
        _SGDSpectral(nn.Sequential())
