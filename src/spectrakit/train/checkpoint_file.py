"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` (tensors and plain containers only;
loading a checkpoint cannot run code).

A checkpoint holds: format tag, completed steps, the resolved run config and model config (JSON strings), model and
optimizer state dicts, the torch RNG state, the wall-clock seconds and tokens consumed so far, and ``digest``: the
SHA-256 of everything else (every tensor's dtype, shape and bytes, every other value's repr, in order), checked on
load, so a flipped byte is a "corrupt" error naming the file instead of a silent wrong start.

Faults while saving (the trainer calls ``save_checkpoint``):

- crash or kill -9 mid-write: the previous checkpoint is untouched (temporary file + ``os.replace``); the
  temporary ``.last.pt.tmp-<pid>`` left by the dead process is removed by the next run in that folder
  (``remove_stale_temporaries``, called once the run folder's lock is held).
- disk full: ``CheckpointError`` saying so, with the folder, the bytes needed and the bytes free; the partial
  file is removed and the previous checkpoint kept.

Runs under ``--parallel`` write distributed checkpoints instead: a folder ``checkpoints/last.dcp`` (see
``checkpoint_folder``). ``load_checkpoint`` reads either kind; for a folder it returns the run state from its JSON
file with ``"dcp": True`` and no tensors (the tensors load into a built model and optimizer).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

FORMAT = "spectrakit-checkpoint-v1"
LAST = "last.pt"
LAST_DCP = "last.dcp"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the run it is loaded into."""


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy())  # the buffer itself, no copy
    elif isinstance(obj, dict):
        h.update(b"{")
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"(" if isinstance(obj, tuple) else b"[")
        for value in obj:
            _feed(h, value)
        h.update(b")")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def payload_digest(payload: dict[str, Any]) -> str:
    """SHA-256 over the checkpoint payload (every key but ``digest`` and ``path``), in insertion order."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k not in ("digest", "path")})
    return h.hexdigest()


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _disk_full(exc: BaseException) -> bool:
    """torch.save reports a full disk as RuntimeError('[enforce fail at inline_container.cc...]') with the
    OSError(ENOSPC) as its context."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag and its digest) to ``path`` via a temporary file and ``os.replace``:
    a crash or a full disk during the write leaves the previous checkpoint untouched and no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = {"format": FORMAT, **payload}
    data["digest"] = payload_digest(data)
    try:
        with tmp.open("wb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if not _disk_full(exc):
            raise
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        kept = f"the previous checkpoint {path} is kept" if path.exists() else "no previous checkpoint exists"
        raise CheckpointError(f"no space left on the device while saving checkpoint {path}: it needs about "
                              f"{_mb(_nbytes(data))} and {path.parent} has {_mb(free)} free; the partial file "
                              f"was removed and {kept}. Free some space (or use another --out-dir) and resume "
                              "the run") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Remove ``.NAME.tmp-<pid>`` files of processes that no longer run (left by a kill during a save)."""
    stale = []
    for tmp in sorted(Path(folder).glob(".*.tmp-*")):
        pid = tmp.name.rsplit("-", 1)[-1]
        if tmp.is_file() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            stale.append(tmp)
    if stale:
        size = sum(p.stat().st_size for p in stale)
        for tmp in stale:
            tmp.unlink(missing_ok=True)
        log(f"removed {len(stale)} temporary checkpoint file(s) ({_mb(size)}) left in {folder} by processes that "
            "no longer run")
    return stale


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, a distributed checkpoint folder, or a run folder (its checkpoints/last.pt or
    checkpoints/last.dcp)."""
    from .checkpoint_folder import is_dcp_checkpoint

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
    from .checkpoint_folder import is_dcp_checkpoint, load_meta

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
    if "digest" in data and payload_digest(data) != data["digest"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the digest stored in it "
                              "(a changed byte); resume from another copy")
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
