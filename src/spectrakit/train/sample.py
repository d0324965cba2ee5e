"""Text generation from a checkpoint and its run folder's tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint_file import CheckpointError, load_checkpoint, resolve_checkpoint
from .model import ModelConfig, Transformer
from .tokenizer import eos_id, load_tokenizer


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[Transformer, Path]:
    """The model of a checkpoint (file or run folder), in eval mode, and the checkpoint's path."""
    ckpt = load_checkpoint(checkpoint)
    try:
        model = Transformer(ModelConfig.from_dict(ckpt["model_config"]))
        if ckpt.get("dcp"):  # a distributed checkpoint (--parallel run)
            from .checkpoint_folder import load_model_weights

            load_model_weights(ckpt["path"], model)
        else:
            model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {ckpt['path']} holds an unusable model: {exc}") from exc
    return model.to(device).eval(), ckpt["path"]


def find_tokenizer(checkpoint: str | Path, tokenizer: str | Path | None = None) -> Path:
    if tokenizer is not None:
        return Path(tokenizer).expanduser()
    path = resolve_checkpoint(checkpoint).parent.parent / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"no tokenizer next to the checkpoint: looked for {path}; pass --tokenizer FILE")
    return path


def generate_text(checkpoint: str | Path, prompt: str = "\n", *, max_new_tokens: int = 200,
                  temperature: float = 0.8, top_k: int | None = 50, num_samples: int = 1, seed: int = 0,
                  tokenizer: str | Path | None = None, device: str = "cpu") -> list[str]:
    """Continue ``prompt`` ``num_samples`` times; returns the decoded texts (prompt included)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
    tok = load_tokenizer(find_tokenizer(checkpoint, tokenizer))
    model, _ = load_model(checkpoint, device)
    ids = tok.encode(prompt).ids
    if not ids:
        eos = eos_id(tok)
        if eos is None:
            raise ValueError("the prompt is empty and the tokenizer has no end-of-text token to start from")
        ids = [eos]
    if max(ids) >= model.config.vocab_size:
        raise ValueError("the tokenizer does not match the checkpoint (token ids beyond the model's vocabulary)")
    gen = torch.Generator(device=device).manual_seed(seed)
    start = torch.tensor([ids] * num_samples, device=device)
    out = model.generate(start, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen)
    return [tok.decode(row.tolist()) for row in out]
