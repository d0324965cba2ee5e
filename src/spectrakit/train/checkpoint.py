"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` (tensors and plain containers only;
loading a checkpoint cannot run code).

A checkpoint holds: format tag, completed steps, the resolved run config and model config (JSON strings), model and
optimizer state dicts, the torch RNG state, and the wall-clock seconds and tokens consumed so far.

Runs under ``--parallel`` write distributed checkpoints instead: a folder ``checkpoints/last.dcp`` (see
``dist_checkpoint``). ``load_checkpoint`` reads either kind; for a folder it returns the run state from its JSON
file with ``"dcp": True`` and no tensors (the tensors load into a built model and optimizer).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

FORMAT = "spectrakit-checkpoint-v1"
LAST = "last.pt"
LAST_DCP = "last.dcp"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the run it is loaded into."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) to ``path`` via a temporary file and ``os.replace``: a crash during
    the write leaves the previous checkpoint untouched and no partial file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            torch.save({"format": FORMAT, **payload}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, a distributed checkpoint folder, or a run folder (its checkpoints/last.pt or
    checkpoints/last.dcp)."""
    from .dist_checkpoint import is_dcp_checkpoint

    path = Path(path).expanduser()
    if path.is_dir():
        if is_dcp_checkpoint(path):
            return path
        candidates = [path / "checkpoints" / LAST, path / "checkpoints" / LAST_DCP]
        for candidate in candidates:
            if candidate.is_file() or is_dcp_checkpoint(candidate):
                return candidate
        raise CheckpointError(f"no checkpoint in run folder {path}: looked for {' and '.join(map(str, candidates))}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (pass a .pt file or a run folder)")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint (file or run folder) on the CPU."""
    from .dist_checkpoint import is_dcp_checkpoint, load_meta

    path = resolve_checkpoint(path)
    if is_dcp_checkpoint(path):

        return load_meta(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"checkpoint {path} is corrupt or not a spectrakit checkpoint: {exc}") from exc
        # torch's message suggests weights_only=False or allowlisting, which would run the file's code: keep only
        # what it found, never the hint
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a spectrakit checkpoint: it holds Python objects other than tensors "
            f"and plain containers ({found.group(1).split('. ')[0] if found else 'not loadable as weights'}), which "
            "spectrakit checkpoints never do; it was not loaded, since unpickling it could run code from the "
            "file") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (found format {found!r})")
    missing = [k for k in ("step", "config", "model_config", "model", "optimizer") if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    try:
        data["config"] = json.loads(data["config"])
        data["model_config"] = json.loads(data["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unreadable config: {exc}") from exc
    data["path"] = path
    return data
