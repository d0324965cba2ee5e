"""Running under torchrun: process-group set-up from the environment, DDP / FSDP2 wrapping, a clean exit.

    ctx = init_from_env()                        # None outside torchrun (WORLD_SIZE unset or 1)
    model = parallelize(model, "fsdp", ctx)      # DDP(model), or fully_shard on every block, then the root
    opt = DistributedSpectral(Muon(model))       # build the optimizer after parallelize (FSDP2: DTensors)
    ...
    shutdown()                                   # barrier, destroy_process_group, flush, os._exit(code)

``shutdown`` ends the process with ``os._exit`` after the barrier: interpreter teardown with live process
groups and backend threads can abort and turn a finished run into a failed job.

What a training loop changes under torchrun (the recipe ``spectrakit train --parallel`` needs):
- build the model on ``ctx.device``; forward and backward through ``parallelize(...)``'s module;
- build the optimizer over that module, then ``DistributedSpectral`` around it (torch.optim optimizers need
  nothing: DDP and FSDP2 handle them);
- give each rank its own micro-batches (e.g. micro-batch index ``rank * grad_accum + j``); the gradients are
  averaged, so the global batch is world_size times the per-rank one;
- ``clip_grad_norm_`` works unchanged (FSDP2: on DTensors); average logged losses over ranks;
- write logs and run files on ``ctx.is_main`` only; run evaluation on every rank (FSDP2 forwards are
  collective);
- checkpoint with ``save_checkpoint`` / ``load_checkpoint`` on every rank (the optimizer state is spread over
  ranks; a rank-0 ``torch.save`` would miss it); the result resumes on any world size;
- end every rank with ``shutdown(exit_code)``.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

PARALLEL_CHOICES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes run files."""
        return self.rank == 0


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> DistContext | None:
    """Initialize torch.distributed from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Returns None when WORLD_SIZE is unset (a plain single-process run). ``device``: "auto" (cuda:LOCAL_RANK when
    CUDA is available, else CPU), "cpu" or "cuda". Backend: NCCL on CUDA, gloo on CPU.
    """
    if "WORLD_SIZE" not in os.environ:
        return None
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE is set but {missing} are not: launch with torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but CUDA is not available")
        torch.cuda.set_device(local_rank)
        where, backend = torch.device("cuda", local_rank), "nccl"
    else:
        where, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, where, backend)


def _default_blocks(model: nn.Module) -> list[nn.Module]:
    """The entries of every top-level nn.ModuleList (a transformer's layers)."""
    return [block for child in model.children() if isinstance(child, nn.ModuleList) for block in child]


def parallelize(model: nn.Module, parallel: str, ctx: DistContext,
                blocks: Iterable[nn.Module] | None = None) -> nn.Module:
    """Wrap ``model`` (already on ``ctx.device``) for data parallelism.

    "ddp": DistributedDataParallel. "fsdp": FSDP2 ``fully_shard`` on each of ``blocks`` (default: the entries of
    the model's top-level ModuleLists) and then on the root, over a 1-D mesh of all ranks; parameters become
    DTensors sharded on dim 0. Returns the module to train.
    """
    if parallel not in PARALLEL_CHOICES:
        raise ValueError(f"parallel must be one of {PARALLEL_CHOICES}, got {parallel!r}")
    if parallel == "ddp":
        ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    for block in (_default_blocks(model) if blocks is None else blocks):
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def shutdown(exit_code: int = 0) -> NoReturn:
    """End a distributed entry point: barrier, destroy the process group, flush, ``os._exit(exit_code)``.

    Call it on every rank once the work is done (it does not return)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
