"""Distributed training: spectral optimizers under DDP and FSDP2, and distributed checkpoints.

- :class:`DistributedSpectral` wraps any spectral optimizer so ranks share its matrix-function work
  (DDP: FLOP-balanced owners + broadcast; FSDP2: row-sharded evaluation or gather-to-owner per matrix).
- :func:`sharded_call` evaluates soft_clip / hard_clip / msign on row-sharded DTensors from small R factors;
  importing this package registers it with ``spectrakit.linalg``, which hands it every DTensor input.
- :func:`save_checkpoint` / :func:`load_checkpoint`: torch.distributed.checkpoint, any world size to any other.
- :func:`init_from_env`, :func:`parallelize`, :func:`shutdown`: torchrun set-up, DDP/FSDP2 wrapping, clean exit.
"""

from .launch import DistContext, init_from_env, parallelize, shutdown
from .optimizer import DistributedSpectral, canonical_name
from .partition import balanced_owners, matrix_cost
from .resharding import load_checkpoint, save_checkpoint
from .rows import sharded_call

__all__ = ["DistContext", "DistributedSpectral", "balanced_owners", "canonical_name",
           "init_from_env", "load_checkpoint", "matrix_cost", "parallelize", "save_checkpoint", "sharded_call",
           "shutdown"]
