"""Byte-level BPE tokenizer (Hugging Face ``tokenizers``), trained deterministically on a corpus's train split."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

EOS = "<|endoftext|>"


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError as exc:
        raise ImportError("training a tokenizer needs the 'tokenizers' package: pip install -e '.[train]'") from exc
    return tokenizers


def check_bpe_vocab_size(vocab_size: int) -> None:
    """A byte-level BPE needs its 256 byte tokens plus EOS, and the token cache stores ids as uint16."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 257 <= vocab_size <= 65535:
        raise ValueError(f"vocab_size must be an integer in [257, 65535] to train a byte-level BPE (256 bytes + "
                         f"end-of-text; token ids are stored as uint16), got {vocab_size!r}")


def train_bpe(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE with ``vocab_size`` tokens (EOS included, id 0) on ``texts``.

    The input order is fixed and the trainer breaks count ties by pair order, so the same texts give the
    same tokenizer (checked in the tests)."""
    check_bpe_vocab_size(vocab_size)
    tk = _require_tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path):
    """Load a tokenizer.json (a plain JSON file: loading it runs no code)."""
    tk = _require_tokenizers()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    try:
        return tk.Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"{path} is not a valid tokenizer.json: {exc}") from exc


def eos_id(tokenizer) -> int | None:
    return tokenizer.token_to_id(EOS)
