"""Shared cases for the distributed tests, and the worker process the tests launch.

Run as ``python tests/dist_worker.py JSON_ARGS`` with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set (the tests
do this through ``launch``). Imported by the tests for the single-process reference runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from spectrakit.linalg import soft_clip
from spectrakit.optim.base import SpectralOptimizer

STEPS = 10
BATCH = 16


class ClipMomentum(SpectralOptimizer):
    """A minimal spectral rule for testing the distribution layer: EMA momentum, soft clip, decoupled step.

    buf <- beta buf + (1 - beta) g;  X <- (1 - lr wd) X - lr H_c(buf)   (H_c computed exactly, float64 SVD)
    """

    def __init__(self, params, lr=0.05, weight_decay=0.01, beta=0.9, c=0.5, **kwargs):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "beta": beta, "c": c}, **kwargs)

    def _spectral_step(self, group):
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "buf" not in state:
                state["buf"] = torch.zeros_like(p)
            state["buf"].lerp_(p.grad, 1 - group["beta"])
            update = soft_clip(state["buf"], group["c"], method="svd")
            p.mul_(1 - group["lr"] * group["weight_decay"]).add_(update, alpha=-group["lr"])


def optimizer_kinds() -> dict[str, callable]:
    """name -> factory(params) for every optimizer the distributed tests cover (those that exist)."""
    kinds = {"clip_momentum": lambda params: ClipMomentum(params)}
    return kinds


class TinyNet(nn.Module):
    """Matrices of several aspect ratios: 13 x 6 (13 rows do not split evenly over 2 ranks), 6 x 13 (wide),
    5 x 6, 24 x 5 (tall: the row-sharded path is the cheaper one), and a norm gain (AdamW-routed)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(6, 13, bias=False)
        self.down = nn.Linear(13, 6, bias=False)
        self.gain = nn.Parameter(torch.ones(6))
        self.mix = nn.Linear(6, 5, bias=False)
        self.out = nn.Linear(5, 24, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.up(x))
        h = torch.tanh(self.down(h) * self.gain)
        return self.out(torch.tanh(self.mix(h)))


def make_model() -> TinyNet:
    torch.manual_seed(1234)
    return TinyNet()


def batch(step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The full batch of a step, or rank's contiguous share of it."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 6, generator=g)
    y = torch.randn(BATCH, 24, generator=g)
    per = BATCH // world
    return x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]


def train(model: nn.Module, optimizer, steps: range, rank: int = 0, world: int = 1) -> None:
    for step in steps:
        x, y = batch(step, rank, world)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters by canonical name as full plain tensors (gathers DTensors)."""
    from spectrakit.distributed import canonical_name

    out = {}
    for name, p in model.named_parameters():
        t = p.detach()
        if type(t).__name__ == "DTensor":
            t = t.full_tensor()
        out[canonical_name(name)] = t.clone()
    return out


def reference(kind: str, steps: int = STEPS) -> dict[str, torch.Tensor]:
    """Single-process run of ``kind`` for ``steps`` steps: the parameters at the end."""
    model = make_model()
    train(model, optimizer_kinds()[kind](model), range(steps))
    return full_params(model)


# ------------------------------------------------------------------------------------------ the worker
def _wrap(model: nn.Module, parallel: str):
    """DDP or FSDP2 (fully_shard per Linear, then the root) around the model."""
    if parallel == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    for module in (model.up, model.down, model.mix, model.out):
        fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _distributed_optimizer(kind: str, model: nn.Module, parallel: str, rows_path: str):
    from spectrakit.distributed import DistributedSpectral

    return DistributedSpectral(optimizer_kinds()[kind](model), parallel=parallel, rows_path=rows_path)


def scenario_train(args: dict, rank: int, world: int) -> dict:
    """Train every kind for STEPS steps under args["parallel"]; return final parameters, report, bytes."""
    out = {}
    for kind in args["kinds"]:
        model = _wrap(make_model(), args["parallel"])
        opt = _distributed_optimizer(kind, model, args["parallel"], args.get("rows_path", "auto"))
        train(model, opt, range(STEPS), rank, world)
        out[kind] = {"params": full_params(model), "report": opt.ownership_report(),
                     "paths": {m.name: m.path for m in opt.members}, "bytes": opt.last_step_bytes}
    return out


SCENARIOS = {"train": scenario_train}


def main() -> None:
    import datetime
    import traceback

    import torch.distributed as dist

    args = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        result = SCENARIOS[args["scenario"]](args, rank, world)
        torch.save(result, Path(args["out"]) / f"rank{rank}.pt")
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ----------------------------------------------------------------------------------------- the launcher
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: dict, out: Path, world: int = 2, timeout: float = 120.0) -> list[dict]:
    """Run the worker on ``world`` processes; return each rank's result (raises with the logs on failure)."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__, json.dumps({**args, "out": str(out)})], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise TimeoutError(f"distributed worker {args['scenario']} timed out after {timeout} s") from None
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        if proc.returncode != 0 or not (out / f"rank{rank}.pt").exists():
            raise RuntimeError(f"rank {rank} failed (exit {proc.returncode}):\n{log[-4000:]}")
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


if __name__ == "__main__":
    main()
