"""Per-rank optimizer step time and bytes communicated per step: one process vs two (DDP, FSDP2).

The parameter set has GPT-2 124M's hidden matrix shapes (per layer: 2304 x 768 fused QKV, 768 x 768 attention
output, 3072 x 768 and 768 x 3072 MLP) plus the layer norms' gains and biases; ``--layers`` of the 12 layers are
used (default 2: one step of all 12 layers takes minutes on one CPU core), without the 50257 x 768 embedding.
Gradients are fixed random tensors (the same on every rank), so only the optimizer is timed. Each process
uses one thread; with two processes on two cores they share the machine's memory bandwidth.

    python benchmarks/bench_distributed.py [--layers 2] [--steps 3] [--write]
    python benchmarks/bench_distributed.py --quick        # shapes divided by 16, one step: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

SHAPES = {"attn.qkv.weight": (2304, 768), "attn.proj.weight": (768, 768), "mlp.fc.weight": (3072, 768),
          "mlp.proj.weight": (768, 3072)}
VECTORS = {"ln1.weight": (768,), "ln1.bias": (768,), "ln2.weight": (768,), "ln2.bias": (768,)}


class Block(nn.Module):
    def __init__(self, divide: int) -> None:
        super().__init__()
        for name, shape in {**SHAPES, **VECTORS}.items():
            shape = tuple(d // divide for d in shape)
            self.register_parameter(name.replace(".", "_"), nn.Parameter(torch.randn(shape) * 0.02))


def make_model(layers: int, divide: int = 1) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[Block(divide) for _ in range(layers)])


def make_optimizer(kind: str, model: nn.Module):
    from spectrakit.optim import Muon, Spectra

    if kind == "muon":
        return Muon(model, lr=0.02, ns_dtype=torch.float32)
    return Spectra(model, lr=1e-3, clip="soft", clip_c=1.0, clip_dtype=torch.float32)


def set_gradients(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for p in model.parameters():
        full = torch.randn(tuple(p.shape), generator=gen) * 1e-3
        if type(p).__name__ == "DTensor":
            from torch.distributed.tensor import distribute_tensor

            p.grad = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
        else:
            p.grad = full


def run(args: dict) -> dict:
    """Time ``args["steps"]`` optimizer steps (after one warm-up step) in this process."""
    parallel = args["parallel"]
    model = make_model(args["layers"], args.get("divide", 1))
    optimizer = None
    if parallel != "single":
        from spectrakit.distributed import DistributedSpectral

        if parallel == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
            for block in model:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
        optimizer = DistributedSpectral(make_optimizer(args["kind"], model), parallel=parallel,
                                        rows_path=args.get("rows_path", "auto"))
    else:
        optimizer = make_optimizer(args["kind"], model)
    times, cpu, nbytes = [], [], []
    for step in range(args["steps"] + 1):
        set_gradients(model)
        if parallel != "single":
            torch.distributed.barrier()
        start, start_cpu = time.perf_counter(), time.process_time()
        optimizer.step()
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if step:  # the first step allocates state
            times.append(elapsed)
            cpu.append(elapsed_cpu)
            last = getattr(optimizer, "last_step_bytes", {"sent": 0, "received": 0})
            nbytes.append(last["sent"] + last["received"])
    out = {"time": statistics.median(times), "cpu": statistics.median(cpu), "bytes": statistics.median(nbytes)}
    if parallel != "single":
        out["report"] = optimizer.ownership_report()
    return out


def worker(args: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    result = run(args)
    Path(args["out"], f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(args: dict, world: int) -> list[dict]:
    out = tempfile.mkdtemp()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps({**args, "out": out})],
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}) for r in range(world)]
    for p in procs:
        if p.wait(timeout=1800) != 0:
            raise RuntimeError(f"worker failed with exit code {p.returncode}")
    return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write the table to BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="smoke run: shapes / 16, one layer, one step")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        worker(json.loads(opts.worker))
        return
    if opts.quick:
        opts.layers, opts.steps, opts.write = 1, 1, False
    torch.set_num_threads(1)
    rows = []
    reports = []
    for kind in ("muon", "spectra_soft"):
        base = {"kind": kind, "layers": opts.layers, "steps": opts.steps, "divide": 16 if opts.quick else 1}
        single = run({**base, "parallel": "single"})
        rows.append(f"| {kind} | 1 process | {single['time'] * 1e3:.0f} | {single['cpu'] * 1e3:.0f} | - | 0 |")
        for parallel, rows_path in (("ddp", "auto"), ("fsdp", "auto"), ("fsdp", "never")):
            ranks = launch({**base, "parallel": parallel, "rows_path": rows_path}, 2)
            times = " / ".join(f"{r['time'] * 1e3:.0f}" for r in ranks)
            cpu = " / ".join(f"{r['cpu'] * 1e3:.0f}" for r in ranks)
            mib = " / ".join(f"{r['bytes'] / 2**20:.1f}" for r in ranks)
            speedup = single["time"] / max(r["time"] for r in ranks)
            label = parallel if parallel == "ddp" else f"fsdp, rows_path={rows_path}"
            rows.append(f"| {kind} | 2 processes, {label} | {times} | {cpu} | {speedup:.2f}x | {mib} |")
            if rows_path == "auto":
                reports.append(f"{kind}, {parallel}:\n{ranks[0]['report']}")
        print("\n".join(rows[-4:]), flush=True)
    body = "\n".join([
        f"GPT-2 124M hidden-matrix shapes, {opts.layers} of 12 layers ({4 * opts.layers} matrices, "
        f"{4 * opts.layers} norm vectors; no embedding), float32, fixed random gradients; median of {opts.steps} "
        "steps after a warm-up step. Per-rank optimizer step wall and CPU time (rank 0 / rank 1) and payload "
        "bytes each rank sent + received in the step (DDP's own gradient all-reduce is not counted: it is the "
        "same with any optimizer). Caveat: the two processes run on a 2-core CPU with one thread each and "
        "share its memory bandwidth, on a machine other jobs were using at the same time (wall times are noisy; "
        "CPU time is the steadier measure); the 1-process row also uses one thread.",
        "",
        "| optimizer | run | step wall time per rank (ms) | CPU time per rank (ms) | wall speed-up vs 1 process "
        "| MiB moved per rank |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Ownership (rank 0's report; 'rows' = row-sharded Q f(R) path, 'owner' = gathered to one rank):",
        "",
        "```",
        *reports,
        "```",
    ])
    print(body)
    if opts.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _report import write_section

        write_section("distributed", body, f"python benchmarks/bench_distributed.py --layers {opts.layers} "
                      f"--steps {opts.steps} --write")


if __name__ == "__main__":
    main()
