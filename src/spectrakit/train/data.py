"""Token data: a cached tokenizer and memory-mapped uint16 token files, and deterministic batches.

Sources (``data`` argument): None/"embedded" (Shakespeare + KJV), a text file or folder, a folder with nanoGPT's
``train.bin``/``val.bin`` (uint16 token ids), or ``hf:NAME[:CONFIG]`` (Hugging Face datasets).

Cache layout (``$SPECTRAKIT_CACHE``, default ``~/.cache/spectrakit``): one folder per (corpus content, vocab
size, tokenizer) holding ``tokenizer.json``, ``train.u16``, ``val.u16`` and ``meta.json`` (written last, with
sizes and SHA-256 of the other files). A folder whose files do not match its meta.json is stale or corrupt and is
rebuilt. Every file is written to a temporary name and moved into place, so a crash never leaves a half file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .corpus import Corpus, DataError, embedded_corpus, hf_corpus, pretokenized_folder, text_corpus
from .tokenizer import eos_id, load_tokenizer, train_bpe

_FORMAT = "spectrakit-tokens-v1"
_SPLITS = ("train", "val")


@dataclass(frozen=True)
class TokenData:
    """Train and validation token ids (uint16 arrays, memory-mapped when cached) and where they came from."""

    name: str
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    tokenizer_path: Path | None


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPECTRAKIT_CACHE") or Path.home() / ".cache" / "spectrakit").expanduser()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _cache_key(corpus: Corpus, vocab_size: int, tokenizer_file: Path | None) -> str:
    h = hashlib.sha256(f"{_FORMAT}|{vocab_size}|".encode())
    if tokenizer_file is not None:
        h.update(_sha256_file(tokenizer_file).encode())
    for split, docs in (("train", corpus.train), ("val", corpus.val)):
        for doc in docs:
            h.update(f"|{split}|{doc.name}|{len(doc.text)}|".encode())
            h.update(doc.text.encode("utf-8"))
    return h.hexdigest()[:20]


def _check_cache(folder: Path) -> str | None:
    """None when the cache folder is complete and matches its meta.json, else the reason it is not."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return "no meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != _FORMAT:
            return f"format {meta.get('format')!r} != {_FORMAT!r}"
        for name, info in meta["files"].items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != info["bytes"]:
                return f"{name} is missing or has the wrong size"
            if _sha256_file(path) != info["sha256"]:
                return f"{name} does not match its checksum"
    except (ValueError, KeyError, TypeError) as exc:
        return f"meta.json is unreadable ({exc})"
    return None


def _encode(tokenizer, docs, eos: int | None) -> np.ndarray:
    ids: list[int] = []
    for enc in tokenizer.encode_batch([d.text for d in docs]):
        ids.extend(enc.ids)
        if eos is not None:
            ids.append(eos)
    if ids and max(ids) > 65535:
        raise DataError("the tokenizer produces ids above 65535, which do not fit the uint16 token cache")
    return np.asarray(ids, dtype=np.uint16)


def _build_cache(folder: Path, corpus: Corpus, vocab_size: int, tokenizer_file: Path | None,
                 log: Callable[[str], None]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    if tokenizer_file is None:
        log(f"training a {vocab_size}-token byte-level BPE on {corpus.name} ...")
        tokenizer = train_bpe((d.text for d in corpus.train), vocab_size)
        tok_json = tokenizer.to_str().encode()
    else:
        tokenizer = load_tokenizer(tokenizer_file)
        tok_json = tokenizer_file.read_bytes()
    write_atomic(folder / "tokenizer.json", tok_json)
    log(f"tokenizing {corpus.name} into {folder} ...")
    files = {"tokenizer.json": tok_json}
    for split, docs in (("train", corpus.train), ("val", corpus.val)):
        ids = _encode(tokenizer, docs, eos_id(tokenizer))
        files[f"{split}.u16"] = ids.tobytes()
        write_atomic(folder / f"{split}.u16", files[f"{split}.u16"])
    meta = {"format": _FORMAT, "corpus": corpus.name, "vocab_size": tokenizer.get_vocab_size(),
            "files": {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()}}
    write_atomic(folder / "meta.json", json.dumps(meta, indent=1).encode())


def cached_tokens(corpus: Corpus, vocab_size: int, cache_dir: str | Path | None = None,
                  tokenizer_file: str | Path | None = None, log: Callable[[str], None] = print) -> TokenData:
    """Tokenize ``corpus`` (training a BPE with ``vocab_size`` tokens unless ``tokenizer_file`` is given) through
    the cache: reused when valid, rebuilt when stale or corrupt."""
    if not corpus.train or not corpus.val:
        raise DataError(f"corpus {corpus.name} needs train and validation documents")
    tok_path = Path(tokenizer_file).expanduser() if tokenizer_file else None
    if tok_path is not None and not tok_path.is_file():
        raise DataError(f"tokenizer file {tok_path} does not exist")
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", corpus.name.rsplit("/", 1)[-1]).strip("-")[:40] or "corpus"
    folder = root / f"{slug}-{_cache_key(corpus, vocab_size, tok_path)}"
    reason = _check_cache(folder)
    if reason is not None:
        if folder.exists() and reason != "no meta.json":
            log(f"token cache {folder} is stale or corrupt ({reason}); rebuilding")
        _build_cache(folder, corpus, vocab_size, tok_path, log)
    meta = json.loads((folder / "meta.json").read_text())
    train, val = (np.memmap(folder / f"{s}.u16", dtype=np.uint16, mode="r") for s in _SPLITS)
    return TokenData(corpus.name, train, val, int(meta["vocab_size"]), folder / "tokenizer.json")


def _check_ids(path: Path, tokens: np.ndarray, vocab_size: int, chunk: int = 1 << 24) -> None:
    """Every id of a token file is < vocab_size (a chunked max over the whole memmap: ~1 s per 10^9 tokens)."""
    tops = (int(tokens[start: start + chunk].max()) for start in range(0, len(tokens), chunk))
    for index, top in enumerate(tops):
        if top >= vocab_size:
            block = tokens[index * chunk: (index + 1) * chunk]
            where = index * chunk + int(np.argmax(block >= vocab_size))
            largest = max([top, *tops])
            raise DataError(f"{path} holds token id {int(tokens[where])} (at position {where}), but the vocabulary "
                            f"size is {vocab_size}; its largest id is {largest}: pass --vocab-size {largest + 1} or "
                            "more")


def bin_tokens(folder: Path, vocab_size: int, tokenizer_file: str | Path | None = None) -> TokenData:
    """nanoGPT's layout: ``train.bin`` and ``val.bin`` of uint16 token ids (``meta.pkl`` is never unpickled)."""
    paths = [folder / f"{s}.bin" for s in _SPLITS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"pre-tokenized data needs train.bin and val.bin; missing: {', '.join(missing)}")
    arrays = []
    for p in paths:
        if p.stat().st_size < 4 or p.stat().st_size % 2:
            raise DataError(f"{p} is not a uint16 token file (size {p.stat().st_size} bytes)")
        arrays.append(np.memmap(p, dtype=np.uint16, mode="r"))
        _check_ids(p, arrays[-1], vocab_size)
    tok = Path(tokenizer_file).expanduser() if tokenizer_file else None
    return TokenData(f"bin:{folder.resolve()}", arrays[0], arrays[1], vocab_size, tok)


def prepare_data(data: str | None, *, vocab_size: int, cache_dir: str | Path | None = None,
                 corpus_fraction: float = 1.0, val_fraction: float = 0.1, text_field: str = "text",
                 tokenizer_file: str | Path | None = None, log: Callable[[str], None] = print,
                 seq_len: int | None = None) -> TokenData:
    """Resolve a data source (see the module docstring) into TokenData.

    With ``seq_len``, each split must hold one window of seq_len + 2 tokens (DataError otherwise): checked on an
    upper bound of the token count before a BPE is trained and the text tokenized, and on the tokens after."""
    folder = pretokenized_folder(data)
    if folder is not None:
        tokens = bin_tokens(folder, vocab_size, tokenizer_file)
    else:
        if data in (None, "", "embedded"):
            corpus = embedded_corpus()
        elif data.startswith("hf:"):
            corpus = hf_corpus(data, text_field=text_field, val_fraction=val_fraction)
        else:
            corpus = text_corpus(Path(data).expanduser(), val_fraction=val_fraction)
        corpus = corpus.truncated(corpus_fraction)
        if seq_len is not None and tokenizer_file is None:
            _check_bound(corpus, seq_len)
        tokens = cached_tokens(corpus, vocab_size, cache_dir, tokenizer_file, log)
    if seq_len is not None:
        _check_length(tokens.train, seq_len, "train")
        _check_length(tokens.val, seq_len, "validation")
    return tokens


def _check_bound(corpus: Corpus, seq_len: int) -> None:
    """A byte-level BPE token is at least one byte, so a split has at most (UTF-8 bytes + one end-of-text per
    document) tokens: when even that is short of one window, fail before training the BPE."""
    for split, docs in (("train", corpus.train), ("validation", corpus.val)):
        bound = sum(len(d.text.encode("utf-8")) + 1 for d in docs)
        if bound < seq_len + 2:
            raise DataError(f"the {split} split of {corpus.name} has at most {bound} tokens (its UTF-8 bytes plus "
                            f"one end-of-text per document), fewer than seq_len + 2 = {seq_len + 2}; use more data "
                            "(e.g. a larger --corpus-fraction) or a shorter --seq-len")


def _seed(*parts: int) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _windows(tokens: np.ndarray, starts: list[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    block = np.stack([np.asarray(tokens[s: s + seq_len + 1], dtype=np.int64) for s in starts])
    block_t = torch.from_numpy(block)
    return block_t[:, :-1].contiguous(), block_t[:, 1:].contiguous()


def _check_length(tokens: np.ndarray, seq_len: int, split: str) -> None:
    if len(tokens) < seq_len + 2:
        raise DataError(f"the {split} split has {len(tokens)} tokens, fewer than seq_len + 2 = {seq_len + 2}; "
                        "use more data or a shorter --seq-len")


def train_batch(tokens: np.ndarray, batch_size: int, seq_len: int, *, seed: int, step: int,
                micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows (inputs, next-token targets) for (seed, step, micro-batch): a pure function of its
    arguments, so the data order of a resumed run is the uninterrupted run's."""
    _check_length(tokens, seq_len, "train")
    gen = torch.Generator().manual_seed(_seed(seed, step, micro))
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=gen).tolist()
    return _windows(tokens, starts, seq_len)


def val_batches(tokens: np.ndarray, batch_size: int, seq_len: int, n_batches: int) -> list[tuple[torch.Tensor,
                                                                                                 torch.Tensor]]:
    """Up to ``n_batches`` fixed batches of non-overlapping windows spread evenly over the validation split."""
    _check_length(tokens, seq_len, "validation")
    n_windows = min(batch_size * n_batches, (len(tokens) - 1) // seq_len)
    starts = np.linspace(0, len(tokens) - seq_len - 1, num=n_windows).astype(np.int64).tolist()
    return [_windows(tokens, starts[i: i + batch_size], seq_len) for i in range(0, len(starts), batch_size)]
