"""Checkpoints through torch.distributed.checkpoint (DCP): save on N ranks, resume on M ranks.

The optimizer state is written by parameter name (wrapper prefixes such as DDP's ``module.`` removed), as
the logical, full-size tensors: DTensor states (FSDP2, sharded like their parameter) are written shard by
shard, states that live whole on one owner rank are written by that rank, replicated ones once. Loading
asks DCP for exactly the states the loading rank holds under its own layout, so a checkpoint from DDP or
FSDP2 on any number of ranks resumes on any other number, or in a single process with a plain optimizer
(and the reverse). Hyperparameters of the param groups (lr as set by a scheduler, ...) and the skipped-step
count are stored too; the model goes through ``torch.distributed.checkpoint.state_dict``.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from ..optim.spectral_optimizer import SpectralOptimizer
from .optimizer import LOCAL, ROWS, DistributedSpectral, canonical_name, is_dtensor

_STATE, _META = "optim_state", "optim_meta"


@dataclass
class _Held:
    name: str
    param: Tensor
    key: Tensor  # the tensor the optimizer's state is keyed by
    sharded: bool  # state tensors shaped like the parameter are DTensors sharded like it


def _held(optimizer: SpectralOptimizer | DistributedSpectral) -> list[_Held]:
    if isinstance(optimizer, DistributedSpectral):
        return [_Held(m.name, m.param, optimizer.state_key(m), m.path in (LOCAL, ROWS) and is_dtensor(m.param))
                for m in optimizer.held_members()]
    if not isinstance(optimizer, SpectralOptimizer):
        raise TypeError(f"optimizer must be a SpectralOptimizer or DistributedSpectral, got {type(optimizer).__name__}")
    return [_Held(canonical_name(n), p, p, False) for g in optimizer.param_groups
            for n, p in zip(g["param_names"], g["params"])]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns that it assumes a single process when none is initialized: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _inner(optimizer: SpectralOptimizer | DistributedSpectral) -> SpectralOptimizer:
    return optimizer.optimizer if isinstance(optimizer, DistributedSpectral) else optimizer


def _meta_blob(optimizer: SpectralOptimizer | DistributedSpectral) -> bytes:
    inner = _inner(optimizer)
    groups = [{k: v for k, v in g.items() if k not in ("params", "param_names")} for g in inner.param_groups]
    names = [[canonical_name(n) for n in g["param_names"]] for g in inner.param_groups]
    return pickle.dumps({"param_groups": groups, "param_names": names, "skipped_steps": inner.skipped_steps})


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: SpectralOptimizer | DistributedSpectral) -> None:
    """Write model and optimizer to the DCP directory ``path`` (collective: call on every rank)."""
    state = {}
    for h in _held(optimizer):
        values = _inner(optimizer).state.get(h.key)
        if values:
            state[h.name] = dict(values)
    sd = {"model": get_model_state_dict(model), _STATE: state, _META: _meta_blob(optimizer)}
    with _single_process_quiet():
        dcp.save(sd, checkpoint_id=str(path), no_dist=not _distributed())


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: SpectralOptimizer | DistributedSpectral) -> None:
    """Load model and optimizer from ``path`` written by :func:`save_checkpoint` with any number of ranks.

    Build the model (DDP / FSDP2 / plain) and the optimizer exactly as for training, then call this on
    every rank before the first step.
    """
    metadata = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    inner = _inner(optimizer)
    state_template: dict[str, dict[str, Any]] = {}
    for h in _held(optimizer):
        prefix = f"{_STATE}.{h.name}."
        entries = {fqn[len(prefix):]: md for fqn, md in metadata.items()
                   if fqn.startswith(prefix) and "." not in fqn[len(prefix):]}
        if not entries:
            continue
        local = h.param.to_local() if is_dtensor(h.param) else h.param
        template = {}
        for key, md in entries.items():
            if not isinstance(md, TensorStorageMetadata):
                template[key] = None
            elif h.sharded and tuple(md.size) == tuple(h.param.shape):
                template[key] = torch.zeros_like(h.param, dtype=md.properties.dtype)
            else:
                template[key] = torch.zeros(tuple(md.size), dtype=md.properties.dtype, device=local.device)
        state_template[h.name] = template
    sd = {"model": get_model_state_dict(model), _STATE: state_template, _META: b""}
    with _single_process_quiet():
        dcp.load(sd, checkpoint_id=str(path), no_dist=not _distributed())
    set_model_state_dict(model, sd["model"])
    meta = pickle.loads(sd[_META])
    names = [[canonical_name(n) for n in g["param_names"]] for g in inner.param_groups]
    if names != meta["param_names"]:
        raise ValueError("load_checkpoint: the optimizer's parameters (names per group) differ from the checkpoint's")
    for group, saved in zip(inner.param_groups, meta["param_groups"]):
        group.update(saved)
    inner.skipped_steps = int(meta["skipped_steps"])
    for h in _held(optimizer):
        if h.name in sd[_STATE]:
            inner.state[h.key] = dict(sd[_STATE][h.name])
