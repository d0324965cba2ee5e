"""Hugging Face Trainer: spectrakit optimizers train a tiny LlamaForCausalLM, with names kept for routing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from spectrakit.integrations import decay_param_groups, trainer_optimizer  # noqa: E402
from spectrakit.optim import SSO, Muon, Spectra, SpectralOptimizer, SpikeAware  # noqa: E402

VOCAB, SEQ = 64, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ)
    return transformers.LlamaForCausalLM(config)


class _CountingData(torch.utils.data.Dataset):
    """Sequences start, start+1, ... (mod VOCAB): learnable within a few steps."""

    def __init__(self, n: int = 64) -> None:
        starts = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(0))
        self.tokens = (starts[:, None] + torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def _trainer(model: nn.Module, cls_and_kwargs: tuple, tmp_path, steps: int = 20):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=16,
                                          use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                                          disable_tqdm=True, seed=0)
    return transformers.Trainer(model=model, args=args, train_dataset=_CountingData(),
                                optimizer_cls_and_kwargs=cls_and_kwargs)


def _unwrap(optimizer: torch.optim.Optimizer) -> SpectralOptimizer:
    """Trainer wraps the optimizer (accelerate's AcceleratedOptimizer); return ours."""
    while not isinstance(optimizer, SpectralOptimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _rules(optimizer: SpectralOptimizer) -> dict[str, str]:
    return {route.name: route.rule for route in optimizer.routing}


@pytest.mark.parametrize("cls, kwargs", [
    (Spectra, {"lr": 1e-2, "clip_c": 1.0}),
    (Muon, {"lr": 0.02, "adamw_lr": 3e-3}),
    (SSO, {"lr": 0.02, "adamw_lr": 3e-3}),
    (SpikeAware, {"lr": 1e-2, "adamw_lr": 3e-3}),
], ids=["spectra", "muon", "sso", "spike_aware"])
def test_trainer_trains_tiny_llama_and_the_loss_falls(cls, kwargs, tmp_path):
    model = _tiny_llama()
    trainer = _trainer(model, trainer_optimizer(cls, model, weight_decay=0.01, **kwargs), tmp_path)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 20
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5, losses
    optimizer = _unwrap(trainer.optimizer)
    assert type(optimizer) is cls
    # Trainer's linear-decay scheduler drove every group, spectral and AdamW alike, down from its initial lr.
    for group in optimizer.param_groups:
        assert group["lr"] < 0.1 * group["initial_lr"]


def test_trainer_groups_keep_names_so_muon_routes_embeddings_head_and_norms_to_adamw(tmp_path):
    model = _tiny_llama()
    trainer = _trainer(model, trainer_optimizer(Muon, model, lr=0.02, weight_decay=0.1), tmp_path)
    optimizer = _unwrap(trainer.create_optimizer())
    rules = _rules(optimizer)
    assert set(rules) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        expected = "adamw" if p.dim() < 2 or "embed_tokens" in name or name == "lm_head.weight" else "spectral"
        assert rules[name] == expected, name
    # Trainer's weight-decay split survives routing: matrices decay, norm gains do not.
    for group in optimizer.param_groups:
        for name in group["param_names"]:
            assert group["weight_decay"] == (0.0 if "norm" in name else 0.1), name


def test_trainer_bare_tensor_groups_still_route_vectors_by_shape(tmp_path):
    """Without the helper Trainer passes unnamed tensors: the shape rule still sends every 1-D one to AdamW."""
    model = _tiny_llama()
    trainer = _trainer(model, (Muon, {"lr": 0.02}), tmp_path)
    optimizer = _unwrap(trainer.create_optimizer())
    routed = {id(p): group["rule"] for group in optimizer.param_groups for p in group["params"]}
    assert len(routed) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        if p.dim() < 2:
            assert routed[id(p)] == "adamw", name
        elif "embed_tokens" not in name and name != "lm_head.weight":
            assert routed[id(p)] == "spectral", name


def test_decay_param_groups_split_like_trainer_and_list_tied_weights_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.proj = nn.Linear(4, 4)
            self.ln = nn.LayerNorm(4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)

    decay, no_decay = decay_param_groups(Tied(), 0.1)
    assert [n for n, _ in decay["params"]] == ["embed.weight", "proj.weight"]
    assert [n for n, _ in no_decay["params"]] == ["proj.bias", "ln.weight", "ln.bias"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


def test_decay_param_groups_match_trainer_on_llama(tmp_path):
    model = _tiny_llama()
    trainer = _trainer(model, (Muon, {"lr": 0.02}), tmp_path)
    expected = set(trainer.get_decay_parameter_names(model))
    decay = decay_param_groups(model, 0.1)[0]
    assert {name for name, _ in decay["params"]} == expected


def test_helpers_reject_bad_arguments():
    model = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="weight_decay"):
        decay_param_groups(model, -0.1)
    with pytest.raises(TypeError, match="model"):
        decay_param_groups([torch.zeros(3)], 0.1)
    with pytest.raises(TypeError, match="optimizer_cls"):
        trainer_optimizer(object, model, lr=0.1)
    with pytest.raises(ValueError, match="params"):
        trainer_optimizer(Muon, model, params=[], lr=0.1)
    cls, kwargs = trainer_optimizer(Muon, model, weight_decay=0.2, lr=0.1)
    assert cls is Muon and kwargs["lr"] == 0.1
    assert [g["weight_decay"] for g in kwargs["params"]] == [0.2, 0.0]
