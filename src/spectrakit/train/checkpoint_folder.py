"""Distributed checkpoints of ``spectrakit train --parallel``: one folder written by every rank together.

Layout of ``checkpoints/last.dcp/``: the model and optimizer through torch.distributed.checkpoint (DCP: each
rank writes its shards; spectral optimizers through ``spectrakit.distributed.save_checkpoint``, torch.optim
through ``torch.distributed.checkpoint.state_dict``), and ``trainer.json`` (step, tokens, configs, world size,
RNG state), written last by rank 0. The folder is written under a temporary name and renamed into place, so an
interrupted save leaves the previous checkpoint whole (if a crash falls between the two renames, the previous
folder is found under ``.last.dcp.old``); the next run in the folder removes the unfinished ``.last.dcp.tmp``.
Tensors are stored by parameter name, so a checkpoint saved on N ranks loads on M ranks, or in one process
without torchrun.

DCP's own metadata file is a pickle (torch's format): load distributed checkpoints you trust only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from ..distributed.resharding import _distributed, _single_process_quiet
from .checkpoint_file import CheckpointError

FORMAT = "spectrakit-dcp-checkpoint-v1"
META = "trainer.json"


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def is_dcp_checkpoint(path: Path) -> bool:
    """A folder holding a trainer.json and DCP metadata (or its previous copy, left by a crash mid-rename)."""
    return (path / META).is_file() or (path.name.endswith(".dcp") and (_old(path) / META).is_file())


def _where(path: Path) -> Path:
    return path if (path / META).is_file() else _old(path)


def load_meta(path: Path) -> dict[str, Any]:
    """The run state of a distributed checkpoint folder, checked; ``"path"`` is the folder, ``"dcp"`` True."""
    folder = _where(path)
    try:
        data = json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"distributed checkpoint {path} has an unreadable {META}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{folder} is not a {FORMAT} checkpoint (found format {found!r})")
    missing = [k for k in ("step", "config", "model_config", "world_size") if k not in data]
    if missing:
        raise CheckpointError(f"distributed checkpoint {folder} lacks {missing}")
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"distributed checkpoint {folder} lacks its DCP .metadata file")
    if "rng" in data:
        data["rng"] = torch.tensor(bytearray.fromhex(data["rng"]), dtype=torch.uint8)
    return {**data, "path": folder, "dcp": True}


def _spectral(optimizer: torch.optim.Optimizer) -> bool:
    from spectrakit.distributed import DistributedSpectral
    from spectrakit.optim.spectral_optimizer import SpectralOptimizer

    return isinstance(optimizer, (SpectralOptimizer, DistributedSpectral))


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any], main: bool) -> Path:
    """Write the checkpoint folder ``path`` (collective: every rank calls it; ``main`` on rank 0 only)."""
    tmp = path.with_name(f".{path.name}.tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
    _barrier()
    if _spectral(optimizer):
        from spectrakit.distributed import save_checkpoint

        save_checkpoint(tmp, model, optimizer)
    else:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        with _single_process_quiet():
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp), no_dist=not _distributed())
    _barrier()  # every rank's shards are written
    if main:
        rng = torch.get_rng_state().numpy().tobytes().hex()
        tmp_meta = tmp / f".{META}.tmp"
        tmp_meta.write_text(json.dumps({"format": FORMAT, **meta, "rng": rng}, indent=1) + "\n")
        os.replace(tmp_meta, tmp / META)
        old = _old(path)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return path


def remove_stale_temporary(path: Path, log) -> None:
    """Remove the temporary folder of a save that was killed (called at the start of a run, under its lock)."""
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"removed {tmp}, the unfinished distributed checkpoint of a run that was stopped while saving")


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load model and optimizer (built as for training: plain, DDP or FSDP2) from a checkpoint folder written
    on any number of ranks. Collective under torchrun."""
    folder = _where(path)
    try:
        if _spectral(optimizer):
            from spectrakit.distributed import load_checkpoint

            load_checkpoint(folder, model, optimizer)
        else:
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_sd, optim_sd = get_state_dict(model, optimizer)
            state = {"model": model_sd, "optim": optim_sd}
            with _single_process_quiet():
                dcp.load(state, checkpoint_id=str(folder), no_dist=not _distributed())
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"distributed checkpoint {folder} does not match this model/optimizer: {exc}") from exc


def load_model_weights(path: Path, model: nn.Module) -> None:
    """Only the model's tensors, into a plain (unwrapped) model in this process (e.g. for sampling)."""
    state = {"model": model.state_dict()}
    try:
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=str(_where(path)), no_dist=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"distributed checkpoint {path} holds an unusable model: {exc}") from exc
    model.load_state_dict(state["model"])
