"""The harness under torchrun (``--parallel ddp|fsdp``): process-group start, cross-rank agreement, clean exit.

    torchrun --nproc_per_node=N -m spectrakit train --parallel ddp ...

Semantics: ``--batch-size`` and ``--grad-accum`` are per rank. Rank r's micro-batch j of a step is the data
micro-batch ``r * grad_accum + j``, so N ranks with grad_accum A see exactly the sequences of one process with
grad_accum N * A, and train the same trajectory (to float round-off). A run may resume on another number of
ranks when N * A stays the same (e.g. 2 ranks x 1 -> 1 process with ``--grad-accum 2``).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import NoReturn

import torch
import torch.distributed as dist

from spectrakit.distributed import DistContext, init_from_env, shutdown

from .config import TrainConfig


def start(cfg: TrainConfig) -> DistContext | None:
    """Initialize the process group for ``cfg.parallel`` from torchrun's environment (None for "none").

    Raises ValueError when --parallel is given without torchrun, or torchrun starts several processes without
    --parallel (each would train its own copy into the same run folder)."""
    world = os.environ.get("WORLD_SIZE")
    if cfg.parallel == "none":
        if world is not None and int(world) > 1:
            raise ValueError(f"launched with WORLD_SIZE={world} (torchrun) but parallel is 'none': pass --parallel "
                             "ddp or --parallel fsdp, or run a single process")
        return None
    if world is None:
        raise ValueError(f"--parallel {cfg.parallel} needs a torchrun launch (WORLD_SIZE is not set): "
                         f"torchrun --nproc_per_node=N -m spectrakit train --parallel {cfg.parallel} ...; "
                         "for one process use --parallel none")
    device = "cuda" if cfg.device.startswith("cuda") else cfg.device
    return init_from_env(device)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all ranks (a copy; ``value`` itself is left alone)."""
    out = value.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(out)
        out /= dist.get_world_size()
    return out


def agreed_signal(signum: int | None, device: torch.device) -> int | None:
    """The signal any rank has received (ranks must stop at the same step), None when none has."""
    if not dist.is_initialized():
        return signum
    flag = torch.tensor([signum or 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    value = int(flag.item())
    return value or None


def finish(ctx: DistContext | None, code: int, *, failed: bool = False) -> int:
    """End an entry point: single process returns ``code``; under torchrun, a clean end goes through
    ``shutdown`` (barrier, destroy, flush, os._exit); a failure exits at once (the other ranks may be stuck in a
    collective: torchrun stops them when this one exits)."""
    if ctx is None:
        return code
    if not failed:
        shutdown(code)
    _exit_now(code)


def _exit_now(code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def fail_on_exception(ctx: DistContext | None) -> None:
    """Called from an ``except BaseException`` block: under torchrun, print the traceback and exit at once."""
    if ctx is not None:
        traceback.print_exc()
        _exit_now(1)
