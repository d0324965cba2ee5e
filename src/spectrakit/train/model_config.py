"""The decoder's shape (``ModelConfig``) and the named size presets; plain data, so settings resolve and validate
without importing torch (``model`` builds the network from it)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder. ``ffn_hidden=0`` means the LLaMA rule: 8/3 d rounded up to a multiple of 64."""

    vocab_size: int = 8192
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 0
    ffn_hidden: int = 0
    seq_len: int = 128
    tie_embeddings: bool = False
    qk_norm: bool = False
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("n_kv_heads", "ffn_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer (0 = default), got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head size d_model/n_heads = {self.d_model // self.n_heads} must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})")
        if not self.rope_base > 1 or not self.norm_eps > 0:
            raise ValueError("rope_base must be > 1 and norm_eps > 0")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden(self) -> int:
        return self.ffn_hidden or 64 * math.ceil(8 * self.d_model / 3 / 64)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; allowed: {sorted(known)}")
        return cls(**data)


# Named sizes. tiny runs in minutes on 2 CPU cores; the others follow the SPECTRA paper's LLaMA runs
# (GPT-2-sized vocabulary padded to 50304). Parameter counts are printed by ``spectrakit train``.
PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=8192, d_model=128, n_layers=4, n_heads=4, seq_len=128),
    "124m": dict(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, seq_len=1024, tie_embeddings=True),
    "160m": dict(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, seq_len=512),
    "780m": dict(vocab_size=50304, d_model=1536, n_layers=24, n_heads=16, seq_len=1024),
}
