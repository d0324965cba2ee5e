"""The LLaMA-style decoder: shapes, causality, RoPE, RMSNorm, tying, presets, generation."""

import math

import pytest
import torch
import torch.nn.functional as F

from spectrakit.train.model import PRESETS, ModelConfig, RMSNorm, Transformer, apply_rope, rope_tables

SMALL = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, seq_len=16)


def test_forward_shapes_and_loss_is_cross_entropy():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**SMALL))
    x = torch.randint(0, 64, (3, 16))
    logits = model(x)
    assert logits.shape == (3, 16, 64)
    loss = model(x, x)
    assert torch.allclose(loss, F.cross_entropy(logits.flatten(0, 1), x.flatten()), atol=1e-6)
    # an untrained model predicts roughly uniformly: loss near ln(vocab)
    assert abs(loss.item() - math.log(64)) < 0.5


@pytest.mark.parametrize("extra", [{}, {"n_kv_heads": 2}, {"qk_norm": True}, {"tie_embeddings": True}])
def test_causal_future_tokens_do_not_change_past_logits(extra):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**SMALL, **extra))
    x = torch.randint(0, 64, (2, 16))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 64, (2, 6))
    a, b = model(x), model(y)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(32, 8, 10000.0)
    q, k = torch.randn(8, dtype=torch.float64).float(), torch.randn(8).float()

    def score(m, n):
        qm = apply_rope(q.view(1, 1, 1, 8).expand(1, 1, 32, 8), cos, sin)[0, 0, m]
        kn = apply_rope(k.view(1, 1, 1, 8).expand(1, 1, 32, 8), cos, sin)[0, 0, n]
        return (qm * kn).sum()

    assert torch.allclose(score(5, 2), score(13, 10), atol=1e-5)
    assert torch.allclose(score(0, 0), (q * k).sum(), atol=1e-5)
    # rotation preserves norms
    rotated = apply_rope(q.view(1, 1, 1, 8).expand(1, 1, 32, 8), cos, sin)
    assert torch.allclose(rotated.norm(dim=-1), q.norm().expand(1, 1, 32), atol=1e-5)


def test_rmsnorm_matches_formula():
    norm = RMSNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(4, 6, dtype=torch.float64).float()
    ref = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * torch.arange(1.0, 7.0)
    assert torch.allclose(norm(x), ref, atol=1e-6)


def test_tied_embeddings_share_one_tensor():
    model = Transformer(ModelConfig(**SMALL, tie_embeddings=True))
    assert model.lm_head.weight is model.embed.weight
    untied = Transformer(ModelConfig(**SMALL))
    assert model.num_parameters() == untied.num_parameters() - 64 * 32


@pytest.mark.parametrize("preset,low,high", [("tiny", 2.5e6, 3.5e6), ("124m", 115e6, 135e6),
                                             ("160m", 150e6, 170e6), ("780m", 740e6, 860e6)])
def test_preset_parameter_counts(preset, low, high):
    with torch.device("meta"):
        model = Transformer(ModelConfig(**PRESETS[preset]))
    assert low <= model.num_parameters() <= high


def test_swiglu_hidden_default_and_override():
    assert ModelConfig(d_model=128).hidden == 384
    assert ModelConfig(d_model=768).hidden == 2048
    assert ModelConfig(d_model=128, ffn_hidden=100).hidden == 100


@pytest.mark.parametrize("bad,match", [({"d_model": 30, "n_heads": 4}, "divisible by n_heads"),
                                       ({"d_model": 12, "n_heads": 4}, "even"),
                                       ({"n_heads": 4, "n_kv_heads": 3}, "divisible by n_kv_heads"),
                                       ({"vocab_size": 0}, "vocab_size"), ({"n_layers": True}, "n_layers"),
                                       ({"ffn_hidden": -1}, "ffn_hidden")])
def test_config_errors_name_the_argument(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**SMALL, **bad})


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"d_model": 32, "width": 3})


def test_too_long_input_is_a_clear_error():
    model = Transformer(ModelConfig(**SMALL))
    with pytest.raises(ValueError, match="exceeds the model's seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_generate_greedy_is_deterministic_and_crops_context():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**SMALL)).eval()
    start = torch.randint(0, 64, (2, 5))
    a = model.generate(start, 20, temperature=0)
    b = model.generate(start, 20, temperature=0)
    assert a.shape == (2, 25) and torch.equal(a, b) and torch.equal(a[:, :5], start)
    gen = torch.Generator().manual_seed(1)
    c = model.generate(start, 3, temperature=1.0, top_k=1, generator=gen)
    assert torch.equal(c, a[:, :8])  # top-1 sampling is greedy
