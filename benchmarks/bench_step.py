"""Optimizer step time and memory on a LLaMA-shaped parameter set (issue 3 benchmark; BENCHMARKS.md "step").

For each optimizer: the median wall time of ``optimizer.step()`` over a few steps (gradients fixed, one
warmup step first), the persistent optimizer state, and the peak memory of the temporaries one step allocates
(CUDA: peak allocated bytes above the allocated bytes before the step; CPU: peak live bytes of the tensor
storages created by the step's ops, tracked by a TorchDispatchMode in a separate, untimed step). Each
optimizer runs in a fresh worker process.

    python benchmarks/bench_step.py                 # 160M LLaMA shapes on CUDA; reduced on CPU (see below)
    python benchmarks/bench_step.py --layers 12 --vocab 50304 --steps 3   # the full shape set on CPU (slow)

On CPU the default is one layer of the 160M model (dim 768, SwiGLU 2048) with a vocab of 8192, 2 timed steps,
and torch.optim.Muon is left out unless named with --only: it runs its Newton-Schulz iteration in bfloat16,
which CPUs without bf16 matrix units execute ~20x slower than float32 (minutes per step here).
    python benchmarks/bench_step.py --quick         # tiny shapes, in-process, prints only (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from spectrakit.optim import SpectraWrapper, create  # noqa: E402

BASELINE = "torch AdamW (foreach)"
TORCH_MUON = "torch.optim.Muon + AdamW"
HYPER = {"lr": 1e-3, "weight_decay": 0.1}


def llama_shapes(dim: int, layers: int, ffn: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of a LLaMA (RMSNorm, SwiGLU, untied embeddings), as in the SPECTRA runs."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("embed_tokens.weight", (vocab, dim))]
    for i in range(layers):
        prefix = f"layers.{i}."
        shapes += [(prefix + f"attn.{n}.weight", (dim, dim)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        shapes += [(prefix + "mlp.gate_proj.weight", (ffn, dim)), (prefix + "mlp.up_proj.weight", (ffn, dim)),
                   (prefix + "mlp.down_proj.weight", (dim, ffn))]
        shapes += [(prefix + "attn_norm.weight", (dim,)), (prefix + "mlp_norm.weight", (dim,))]
    shapes += [("norm.weight", (dim,)), ("lm_head.weight", (vocab, dim))]
    return shapes


class _TorchMuonWithAdamW:
    """torch.optim.Muon on the hidden matrices and torch.optim.AdamW on the rest (torch's Muon takes 2-D only)."""

    def __init__(self, named: list[tuple[str, torch.Tensor]]) -> None:
        hidden = [p for n, p in named if p.dim() == 2 and "embed" not in n and "lm_head" not in n]
        ids = {id(p) for p in hidden}
        self.muon = torch.optim.Muon(hidden, lr=0.02, weight_decay=0.1)
        self.adamw = torch.optim.AdamW([p for _, p in named if id(p) not in ids], lr=3e-4, weight_decay=0.1,
                                       foreach=True)
        self.state = {**self.muon.state, **self.adamw.state}

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()
        self.state = {**self.muon.state, **self.adamw.state}


OPTIMIZERS: dict[str, Callable[[list[tuple[str, torch.Tensor]]], object]] = {
    BASELINE: lambda named: torch.optim.AdamW([p for _, p in named], foreach=True, **HYPER),
    "torch AdamW (fused)": lambda named: torch.optim.AdamW([p for _, p in named], fused=True, **HYPER),
    "Spectra-AdamW (native)": lambda named: create("spectra-adamw", named, **HYPER),
    "SpectraWrapper(AdamW foreach)": lambda named: SpectraWrapper(
        torch.optim.AdamW([p for _, p in named], foreach=True, **HYPER)),
    "Muon (ours)": lambda named: create("muon", named, weight_decay=0.1),
    "NorMuon (ours)": lambda named: create("normuon", named, weight_decay=0.1),
    TORCH_MUON: _TorchMuonWithAdamW,
}


class _PeakTemporaries(TorchDispatchMode):
    """Peak bytes of the tensor storages that ops allocate while the mode is active and that are still alive.

    Each op output whose storage is new (not shared with an input: views and in-place results are skipped)
    counts until the last tensor that the mode saw on that storage is freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, int] = {}

    def _release(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in inputs or key == 0:
                continue
            if key not in self._refs:
                self._refs[key] = 0
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self._refs[key] += 1
            weakref.finalize(t, self._release, key, storage.nbytes())
        return out


def measure(name: str, shapes: list[tuple[str, tuple[int, ...]]], steps: int, device: str) -> dict[str, float]:
    """Build the parameters, step ``name`` once to warm up, then time ``steps`` steps."""
    torch.manual_seed(0)
    named = []
    for pname, shape in shapes:
        p = torch.nn.Parameter(0.02 * torch.randn(shape, device=device))
        p.grad = torch.randn(shape, device=device)
        named.append((pname, p))
    cuda = device.startswith("cuda")
    opt = OPTIMIZERS[name](named)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - start)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        opt.step()
        temporaries = torch.cuda.max_memory_allocated() - base
    else:
        with _PeakTemporaries() as tracker:
            opt.step()
        temporaries = tracker.peak
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                      if isinstance(t, torch.Tensor))
    return {"median_s": statistics.median(times), "state_bytes": state_bytes, "temporary_bytes": temporaries,
            "param_bytes": sum(p.numel() * p.element_size() for _, p in named)}


def _worker(name: str, config: dict) -> dict[str, float]:
    """Run one optimizer in a fresh process (clean peak-RSS measurement on CPU)."""
    cmd = [sys.executable, __file__, "--worker", name, "--config", json.dumps(config)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(results: dict[str, dict[str, float]]) -> str:
    base = results[BASELINE]["median_s"]
    mib = 2**20
    lines = ["| optimizer | step median (ms) | vs torch AdamW (foreach) | state (MiB) | peak step temporaries (MiB) "
             "| peak extra = state + temporaries (MiB) |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {1e3 * r['median_s']:.1f} | {r['median_s'] / base:.2f}x | "
                     f"{r['state_bytes'] / mib:.1f} | {r['temporary_bytes'] / mib:.1f} | "
                     f"{(r['state_bytes'] + r['temporary_bytes']) / mib:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, in-process, do not write BENCHMARKS.md")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--layers", type=int, default=None, help="default: 12 on CUDA, 1 on CPU")
    parser.add_argument("--ffn", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=None, help="default: 50304 on CUDA, 8192 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CUDA, 2 on CPU)")
    parser.add_argument("--only", nargs="*", default=None, help="subset of optimizer names")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        config = json.loads(args.config)
        result = measure(args.worker, [(n, tuple(s)) for n, s in config["shapes"]], config["steps"], config["device"])
        print(json.dumps(result))
        return ""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick:
        dim, layers, ffn, vocab, steps = 32, 1, 64, 128, 1
    else:
        dim, ffn = args.dim, args.ffn
        steps = args.steps if args.steps is not None else (3 if device == "cuda" else 2)
        layers = args.layers if args.layers is not None else (12 if device == "cuda" else 1)
        vocab = args.vocab if args.vocab is not None else (50304 if device == "cuda" else 8192)
    shapes = llama_shapes(dim, layers, ffn, vocab)
    names = args.only or [n for n in OPTIMIZERS if device == "cuda" or args.quick or n != TORCH_MUON]
    if BASELINE not in names:
        names = [BASELINE, *names]
    load_before = os.getloadavg()[0]
    results = {}
    for name in names:
        if args.quick:
            results[name] = measure(name, shapes, steps, device)
        else:
            results[name] = _worker(name, {"shapes": shapes, "steps": steps, "device": device})
        print(f"{name}: {1e3 * results[name]['median_s']:.1f} ms", file=sys.stderr, flush=True)
    n_params = sum(torch.Size(s).numel() for _, s in shapes)
    header = (f"LLaMA shapes: dim {dim}, {layers} layers, SwiGLU {ffn}, vocab {vocab} (untied): {n_params / 1e6:.1f}M "
              f"parameters, float32, {device}; median of {steps} steps after one warmup step; default options "
              "(Spectra: soft clip c=10, method auto, all parameters; Muon: hidden matrices, AdamW for the rest).")
    header += (f" Load average (1 min) before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} on "
               f"{os.cpu_count()} cores (other jobs shared the machine when above the core count).")
    if TORCH_MUON not in names:
        header += f" {TORCH_MUON} left out on CPU (bfloat16 Newton-Schulz; see the script's docstring)."
    body = header + "\n\n" + table(results)
    print(body)
    if not args.quick:
        command = "python benchmarks/bench_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section("step", body, command.strip())
    return body


if __name__ == "__main__":
    main()
