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
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import spectrakit.distributed  # noqa: F401  (registers the sharded evaluation of linalg functions)
from spectrakit.linalg import soft_clip
from spectrakit.optim.spectral_optimizer import SpectralOptimizer

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

    def rows_capable(self, group):
        return True  # elementwise math around the soft clip of each whole parameter


#: Settings of the registered optimizers in these tests: matrix functions in float32 (not the bfloat16 defaults)
#: so that runs compare to float32 round-off, clip thresholds small enough that the clips act on these matrices.
#: A registered name missing here runs with lr 0.02 and its defaults.
_F32 = torch.float32
DIST_SETTINGS: dict[str, dict] = {
    **{f"spectra-{b}": {"clip_c": 1.0, "clip_dtype": _F32} for b in ("adamw", "signum", "mars", "ademamix", "lion")},
    "muon": {"ns_dtype": _F32},
    "normuon": {"ns_dtype": _F32},
    "sso": {"ns_dtype": _F32},
    "muon-sphere": {"ns_dtype": _F32},
    # the 1 x 24 score matrix has no tail below a spike (k = 1 = min(m, n)): AdamW takes it
    "spike-aware": {"fallback_patterns": ("score",)},
}


def optimizer_kinds() -> dict[str, Callable]:
    """name -> factory(model) for every optimizer the distributed tests cover: every registered spectrakit
    optimizer (``spectrakit.optim.available()``; torch's AdamW is not a SpectralOptimizer), the hard clip and the
    minimal ClipMomentum rule above."""
    from spectrakit import optim

    kinds = {
        "clip_momentum": lambda m: ClipMomentum(m),
        "spectra_hard": lambda m: optim.Spectra(m, lr=0.02, clip="hard", clip_c=1.0, clip_dtype=_F32),
        # sync-free steps (the ranks agree on the non-finite flag on the device; SSO's solver runs its budget)
        "spectra_sync_free": lambda m: optim.Spectra(m, lr=0.02, clip_c=1.0, sync_free=True),
        "sso_sync_free": lambda m: optim.SSO(m, lr=0.02, ns_dtype=_F32, sync_free=True),
    }
    for name in optim.available():
        if not optim.registration(name).is_torch_adamw:
            kinds[name] = lambda m, n=name: optim.create(n, m, **{"lr": 0.02, **DIST_SETTINGS.get(n, {})})
    return kinds


class TinyNet(nn.Module):
    """Matrices of several aspect ratios: two 13 x 6 (13 rows do not split evenly over 2 ranks; optimizers
    stack same-shape matrices into one batched call), 6 x 13 (wide),
    5 x 6, 24 x 5 (tall: the row-sharded path is the cheaper one), 1 x 24 (rank 1 holds no row of it), and a
    norm gain (AdamW-routed unless the optimizer clips vectors)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(6, 13, bias=False)
        self.gate = nn.Linear(6, 13, bias=False)
        self.down = nn.Linear(13, 6, bias=False)
        self.gain = nn.Parameter(torch.ones(6))
        self.mix = nn.Linear(6, 5, bias=False)
        self.out = nn.Linear(5, 24, bias=False)
        self.score = nn.Linear(24, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.up(x)) * torch.sigmoid(self.gate(x))
        h = torch.tanh(self.down(h) * self.gain)
        out = self.out(torch.tanh(self.mix(h)))
        return torch.cat([out, self.score(out)], dim=-1)


def make_model() -> TinyNet:
    torch.manual_seed(1234)
    return TinyNet()


def batch(step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The full batch of a step, or rank's contiguous share of it."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 6, generator=g)
    y = torch.randn(BATCH, 25, generator=g)
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers, so kernels sum in the same order
    try:
        model = make_model()
        train(model, optimizer_kinds()[kind](model), range(steps))
    finally:
        torch.set_num_threads(threads)
    return full_params(model)


# ------------------------------------------------------------------------------------------ the worker
def _wrap(model: nn.Module, parallel: str):
    """DDP or FSDP2 (fully_shard per Linear, then the root) around the model."""
    if parallel == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    for module in (model.up, model.gate, model.down, model.mix, model.out, model.score):
        fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _distributed_optimizer(kind: str, model: nn.Module, parallel: str, rows_path: str):
    from spectrakit.distributed import DistributedSpectral

    return DistributedSpectral(optimizer_kinds()[kind](model), parallel=parallel, rows_path=rows_path)


#: (parallel, rows_path) combinations the suite trains under.
RUNS = (("ddp", "auto"), ("fsdp", "auto"), ("fsdp", "always"))
#: Steps before the checkpoint in the resume tests (the run then continues to STEPS).
SAVE_AT = 5
HARNESS_STEPS = 4


def _setup(kind: str, parallel: str, rows_path: str = "auto"):
    model = _wrap(make_model(), parallel)
    return model, _distributed_optimizer(kind, model, parallel, rows_path)


def scenario_suite(args: dict, rank: int, world: int) -> dict:
    """Everything the tests need from one launch (process start-up dominates the time):

    - "train/<parallel>/<rows_path>/<kind>": STEPS steps; final parameters, ownership report, paths, bytes;
    - "saved/<parallel>/<kind>": SAVE_AT steps, then a checkpoint in args["dir"]/<parallel>-<kind> (N -> 1);
    - "resumed/<parallel>/<kind>": load args["dir"]/single-<kind> (written by one process after SAVE_AT steps),
      run to STEPS; final parameters (1 -> N).
    """
    from spectrakit.distributed import load_checkpoint, save_checkpoint

    out = {}
    root = Path(args["dir"])
    for kind in args["kinds"]:
        for parallel, rows_path in RUNS:
            model, opt = _setup(kind, parallel, rows_path)
            train(model, opt, range(STEPS), rank, world)
            out[f"train/{parallel}/{rows_path}/{kind}"] = {
                "params": full_params(model), "report": opt.ownership_report(),
                "paths": {m.name: m.path for m in opt.members}, "bytes": opt.last_step_bytes}
        for parallel in ("ddp", "fsdp"):
            model, opt = _setup(kind, parallel)
            train(model, opt, range(SAVE_AT), rank, world)
            save_checkpoint(root / f"{parallel}-{kind}", model, opt)
            model, opt = _setup(kind, parallel)
            load_checkpoint(root / f"single-{kind}", model, opt)
            train(model, opt, range(SAVE_AT, STEPS), rank, world)
            out[f"resumed/{parallel}/{kind}"] = full_params(model)
            if kind == "spectra-adamw":  # the wrapper's own state_dict round trip (same world size)
                model, opt = _setup(kind, parallel)
                train(model, opt, range(SAVE_AT), rank, world)
                saved = opt.state_dict()
                opt = _distributed_optimizer(kind, model, parallel, "auto")
                opt.load_state_dict(saved)
                train(model, opt, range(SAVE_AT, STEPS), rank, world)
                out[f"state_dict/{parallel}"] = full_params(model)
    out["sharded_call"] = sharded_call_errors()
    for parallel in ("ddp", "fsdp"):
        out[f"harness/{parallel}"] = harness_run(parallel, rank, world)
        for policy in ("skip", "raise", "sync_free"):
            out[f"nonfinite/{parallel}/{policy}"] = _nonfinite_step(parallel, policy, rank, world)
    return out


def sharded_call_errors() -> dict[str, float]:
    """max |f(DTensor X) - f(X)| for soft_clip / hard_clip / msign over layouts: rows (uneven), columns, a
    batch dim, replicated, a tensor threshold per matrix; and whether the bound came back right."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from spectrakit.linalg import hard_clip, msign

    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    gen = torch.Generator().manual_seed(7)
    cases = {"rows 13x6": ((13, 6), Shard(0)), "cols 6x13": ((6, 13), Shard(1)), "batch 3x5x4": ((3, 5, 4), Shard(0)),
             "stacked rows 2x9x4": ((2, 9, 4), Shard(1)), "replicated 9x4": ((9, 4), Replicate())}
    functions = {"soft": lambda X, **kw: soft_clip(X, 0.7, method="svd", **kw),
                 "hard": lambda X, **kw: hard_clip(X, 0.7, method="svd", **kw),
                 "soft_tensor_c": lambda X, **kw: soft_clip(X, torch.full(X.shape[:-2], 0.7), method="svd", **kw),
                 "msign": lambda X, **kw: msign(X, dtype=torch.float32)}
    errors = {}
    for case, (shape, placement) in cases.items():
        full = torch.randn(shape, generator=gen)
        X = distribute_tensor(full, mesh, [placement], src_data_rank=None)
        for name, f in functions.items():
            if name == "soft_tensor_c" and len(shape) == 2:
                continue
            got = f(X)
            errors[f"{name} {case}"] = (got.full_tensor() - f(full)).abs().max().item()
            assert tuple(got.placements) == (placement,), (case, name, got.placements)
            if name != "msign":
                _, bound = f(X, return_bound=True)
                _, expected = f(full, return_bound=True)
                errors[f"{name} bound {case}"] = (bound.full_tensor() - expected).abs().max().item()
    return errors


def harness_run(parallel: str | None, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """The training harness's Transformer (tiny) with Muon for HARNESS_STEPS steps, wrapped by ``parallelize``."""
    from spectrakit.distributed import DistributedSpectral, parallelize
    from spectrakit.optim import Muon
    from spectrakit.train.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, seq_len=8))
    if parallel is not None:
        from spectrakit.distributed import DistContext

        model = parallelize(model, parallel, DistContext(rank, world, rank, torch.device("cpu"), "gloo"))
    opt = Muon(model, lr=0.02, ns_dtype=torch.float32, adamw_lr=1e-2)
    if parallel is not None:
        opt = DistributedSpectral(opt, parallel=parallel)
    for step in range(HARNESS_STEPS):
        g = torch.Generator().manual_seed(step)
        tokens = torch.randint(0, 32, (4, 9), generator=g)
        per = 4 // world
        x, y = tokens[rank * per:(rank + 1) * per, :-1], tokens[rank * per:(rank + 1) * per, 1:]
        opt.zero_grad()
        model(x, y).backward()
        opt.step()
    return full_params(model)


def _nonfinite_step(parallel: str, policy: str, rank: int, world: int) -> dict:
    """Put a NaN into one gradient on rank 1 only (in a matrix rank 1 reads); every rank must skip / raise
    ("sync_free": skip on the device, with the host reads of the step counted)."""
    from spectrakit.distributed import DistributedSpectral
    from spectrakit.linalg.audit import OpAudit
    from spectrakit.optim import NonFiniteGradientError

    model = _wrap(make_model(), parallel)
    options = {"sync_free": True} if policy == "sync_free" else {"nonfinite": policy}
    opt = DistributedSpectral(ClipMomentum(model, **options), parallel=parallel)
    target = next(m for m in opt.members if m.owner == 1)
    x, y = batch(0, rank, world)
    nn.functional.mse_loss(model(x), y).backward()
    if rank == 1:
        grad = target.param.grad
        (grad.to_local() if parallel == "fsdp" else grad).view(-1)[0] = float("nan")
    before = full_params(model)
    raised = False
    audit = OpAudit()
    try:
        with audit:
            opt.step()
    except NonFiniteGradientError:
        raised = True
    after = full_params(model)
    return {"target": target.name, "raised": raised, "skipped": int(opt.optimizer.skipped_steps),
            "unchanged": all(torch.equal(before[n], after[n]) for n in before), "host_reads": audit.host_reads}


SCENARIOS = {"suite": scenario_suite}


def main() -> None:
    import traceback

    from spectrakit.distributed import init_from_env, shutdown

    args = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    ctx = init_from_env(device="cpu", timeout_s=60)
    try:
        result = SCENARIOS[args["scenario"]](args, ctx.rank, ctx.world_size)
        torch.save(result, Path(args["out"]) / f"rank{ctx.rank}.pt")
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # no barrier: the other rank may be stuck in a collective; the launcher reports both logs
    shutdown(0)


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
