"""The training configuration: one flat dataclass, filled from defaults < config file < command-line flags.

Every field is a ``--flag`` of ``spectrakit train`` (underscores become dashes) and a key of a JSON or TOML
config file. ``resolve_model_config`` turns the preset plus overrides into a ``ModelConfig``.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..registry import available, registration
from .corpus import pretokenized_folder
from .model_config import PRESETS, ModelConfig
from .tokenizer import check_bpe_vocab_size

SCHEDULES = ("cosine", "wsd", "constant")
PARALLEL = ("none", "ddp", "fsdp")
DTYPES = ("auto", "float32", "bfloat16")
# settings with a field of their own, which an ``opt`` entry may not set a second time
_OWN_SETTINGS = ("lr", "weight_decay", "clip_c")
_MODEL_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "seq_len",
                 "tie_embeddings", "qk_norm")


def _f(default: Any, help: str) -> Any:
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """All settings of a training run (see ``spectrakit train --help`` for each one's meaning)."""

    # model
    preset: str = _f("tiny", f"model size preset, one of {', '.join(PRESETS)}")
    vocab_size: int | None = _f(None, "vocabulary size (default: the preset's; the BPE is trained to this size)")
    d_model: int | None = _f(None, "model width (default: the preset's)")
    n_layers: int | None = _f(None, "number of transformer blocks")
    n_heads: int | None = _f(None, "attention heads")
    n_kv_heads: int | None = _f(None, "key/value heads for grouped-query attention (default: n_heads)")
    ffn_hidden: int | None = _f(None, "SwiGLU hidden size (default: 8/3 d_model rounded to 64)")
    seq_len: int | None = _f(None, "context length in tokens")
    tie_embeddings: bool | None = _f(None, "share the input embedding and the output head")
    qk_norm: bool | None = _f(None, "RMSNorm on queries and keys")
    # data
    data: str | None = _f(None, "training data: a text file or folder, a folder with nanoGPT train.bin/val.bin, "
                                "or hf:NAME[:CONFIG] (default: the embedded Shakespeare + King James Bible corpus)")
    cache_dir: str | None = _f(None, "tokenizer and token cache (default: $SPECTRAKIT_CACHE or ~/.cache/spectrakit)")
    corpus_fraction: float = _f(1.0, "use the first fraction of every document (quick experiments)")
    val_fraction: float = _f(0.1, "held-out fraction for user text data (whole files when a folder)")
    text_field: str = _f("text", "text column of a Hugging Face dataset")
    tokenizer: str | None = _f(None, "an existing tokenizer.json to use instead of training a BPE")
    # optimization
    optimizer: str = _f("spectra-adamw", "optimizer name (see --list-optimizers)")
    lr: float | None = _f(None, "peak learning rate (default: the optimizer's)")
    weight_decay: float = _f(0.1, "decoupled weight decay")
    clip_c: float | None = _f(None, "SPECTRA clipping threshold c (default: the optimizer's, 10)")
    opt: dict = _f({}, "extra optimizer argument KEY=VALUE (Python literal), repeatable")
    pre_clip: float | None = _f(None, "spectral pre-clipping of gradients with threshold C (SPEC 1.5); off when unset")
    grad_clip: float = _f(1.0, "global L2 gradient-norm clipping (0: off)")
    steps: int = _f(500, "optimizer steps")
    batch_size: int = _f(16, "sequences per micro-batch (per rank under --parallel)")
    grad_accum: int = _f(1, "micro-batches per optimizer step (per rank under --parallel)")
    schedule: str = _f("cosine", f"learning-rate schedule, one of {', '.join(SCHEDULES)}")
    warmup_steps: int | None = _f(None, "linear warmup steps (default: 5%% of steps)")
    min_lr_ratio: float = _f(0.1, "final learning rate / peak (cosine and wsd)")
    decay_frac: float = _f(0.2, "wsd: fraction of steps in the final sqrt decay")
    seed: int = _f(0, "seed of the initialization and the data order")
    # runtime
    device: str = _f("auto", "cpu, cuda, cuda:N or auto")
    dtype: str = _f("auto", "autocast dtype: auto (bf16 on CUDA and on CPUs with AMX or AVX512-BF16), float32 or "
                    "bfloat16")
    threads: int | None = _f(None, "CPU threads for torch (default: torch's choice)")
    parallel: str = _f("none", "data parallelism under torchrun: none, ddp or fsdp (FSDP2). --batch-size and "
                               "--grad-accum are per rank: a step sees batch_size x grad_accum x ranks sequences")
    # outputs
    out_dir: str = _f("runs", "folder that holds run folders")
    run_name: str | None = _f(None, "run folder name (default: OPTIMIZER-PRESET-sSEED-TIME)")
    log_every: int = _f(10, "steps between training-loss log lines")
    eval_every: int = _f(100, "steps between validation evaluations (0: only at the end)")
    eval_batches: int = _f(8, "validation batches per evaluation")
    diag_every: int = _f(50, "steps between spectral diagnostics (0: off)")
    ckpt_every: int = _f(250, "steps between checkpoints (0: only at the end)")
    progress: bool = _f(True, "show a progress bar")
    plots: bool = _f(True, "write PNG plots at the end of the run")

    def validate(self) -> TrainConfig:
        """Check every field; raise ValueError naming the field and what is allowed. Returns self."""
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(self.preset in PRESETS, "preset", f"one of {sorted(PRESETS)}")
        need(self.optimizer in available(), "optimizer", f"one of {sorted(available())}")
        need(self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")
        need(self.dtype in DTYPES, "dtype", f"one of {DTYPES}")
        need(self.parallel in PARALLEL, "parallel", f"one of {PARALLEL}")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
             "'auto', 'cpu', 'cuda' or 'cuda:N'")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_batches"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an integer >= 1")
        for name in ("eval_every", "diag_every", "ckpt_every", "seed"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an integer >= 0")
        for name in ("warmup_steps", "threads") + _MODEL_FIELDS:
            value = getattr(self, name)
            if value is not None and name not in ("tie_embeddings", "qk_norm"):
                need(is_int(value) and value >= (0 if name in ("warmup_steps", "n_kv_heads", "ffn_hidden") else 1),
                     name, "a positive integer" if name not in ("warmup_steps",) else "an integer >= 0")
        if self.warmup_steps is not None:
            need(self.warmup_steps < self.steps, "warmup_steps", f"smaller than steps ({self.steps})")
        need(self.lr is None or (is_num(self.lr) and self.lr > 0), "lr", "a positive number")
        need(self.clip_c is None or (is_num(self.clip_c) and self.clip_c > 0), "clip_c", "a positive number")
        need(self.pre_clip is None or (is_num(self.pre_clip) and self.pre_clip > 0), "pre_clip", "a positive number")
        need(self.pre_clip is None or self.parallel != "fsdp", "pre_clip",
             "unset under --parallel fsdp (FSDP2 shards the gradients it would clip; use ddp)")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(is_num(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "a number >= 0 (0: off)")
        need(is_num(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]")
        need(is_num(self.decay_frac) and 0 < self.decay_frac <= 1, "decay_frac", "in (0, 1]")
        need(is_num(self.corpus_fraction) and 0 < self.corpus_fraction <= 1, "corpus_fraction", "in (0, 1]")
        need(is_num(self.val_fraction) and 0 < self.val_fraction < 1, "val_fraction", "in (0, 1)")
        need(isinstance(self.opt, dict) and all(isinstance(k, str) for k in self.opt), "opt",
             "a mapping of optimizer argument names to values")
        self._check_opt_conflicts()
        model = self.model_config()
        if self.tokenizer is None and pretokenized_folder(self.data) is None:
            check_bpe_vocab_size(model.vocab_size)
        return self

    def _check_opt_conflicts(self) -> None:
        """An ``opt`` key may not set what a setting of its own or the optimizer's name already sets."""
        fixed = registration(self.optimizer).fixed
        for key, value in self.opt.items():
            if key in _OWN_SETTINGS:
                flag, own = "--" + key.replace("_", "-"), getattr(self, key)
                if own is None:
                    raise ValueError(f"--opt {key}={value!r}: {key} has a setting of its own; use {flag} {value!r} "
                                     f"(config key {key!r}) instead")
                raise ValueError(f"--opt {key}={value!r} conflicts with {flag} {own!r} (config key {key!r}): give "
                                 f"{key} once, with {flag}")
            if key in fixed:
                raise ValueError(f"--opt {key}={value!r} conflicts with --optimizer {self.optimizer}, which sets "
                                 f"{key}={fixed[key]!r}: pick the optimizer name of that variant "
                                 "(see --list-optimizers)")

    def optimizer_arguments(self, with_defaults: bool = False) -> dict[str, Any]:
        """The optimizer's constructor arguments for these settings, checked against its signature (imports
        torch and the optimizer class); ``with_defaults`` adds the class's defaults of the others."""
        from .optimizers import optimizer_arguments

        return optimizer_arguments(self.optimizer, lr=self.lr, weight_decay=self.weight_decay, clip_c=self.clip_c,
                                   extra=self.opt, with_defaults=with_defaults)

    def resolved(self) -> TrainConfig:
        """These settings with every unset value that has a known default filled in: the preset's model shape,
        the warmup length, and the optimizer's lr and clip_c. Running it trains exactly what these settings do."""
        model = self.model_config()
        shape = {k: getattr(model, k) for k in _MODEL_FIELDS}
        shape.update(n_kv_heads=model.kv_heads, ffn_hidden=model.hidden)
        arguments = self.optimizer_arguments(with_defaults=True)
        return replace(self, **shape, warmup_steps=self.warmup, lr=arguments.get("lr", self.lr),
                       clip_c=arguments.get("clip_c") if self.optimizer.startswith("spectra-") else self.clip_c)

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 20)

    def model_config(self) -> ModelConfig:
        """The preset's shape with every model field that is set here overriding it."""
        base = dict(PRESETS[self.preset])
        base.update({k: getattr(self, k) for k in _MODEL_FIELDS if getattr(self, k) is not None})
        return ModelConfig(**base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        normalized = {k.replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(normalized) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; allowed keys: {sorted(known)}")
        if isinstance(normalized.get("opt"), dict):  # JSON/TOML arrays -> tuples (e.g. betas)
            normalized["opt"] = {k: tuple(v) if isinstance(v, list) else v for k, v in normalized["opt"].items()}
        return replace(cls(), **normalized)


def field_help() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in fields(TrainConfig)}


def field_types() -> dict[str, str]:
    """Each field's annotation as a string (e.g. 'int | None'); the CLI derives argument types from it."""
    return {f.name: str(f.type) for f in fields(TrainConfig)}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON (.json) or TOML (.toml) config file into a dict of field values."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError as exc:  # Python 3.10
                raise ValueError("TOML config files need Python >= 3.11; use a .json config") from exc
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"config file {path} must end in .json or .toml")
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def parse_opt_items(items: list[str]) -> dict[str, Any]:
    """['betas=(0.9, 0.95)', 'base=signum'] -> {'betas': (0.9, 0.95), 'base': 'signum'} (literals, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--opt expects KEY=VALUE with KEY a Python identifier, got {item!r}")
        try:
            out[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key] = raw.strip()
    return out
