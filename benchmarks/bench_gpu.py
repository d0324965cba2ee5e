"""GPU benchmark of the accelerator soft clip and the SPECTRA step (to be run on a CUDA machine).

1. Per-chunk soft_clip time per variant (accurate float32, fast bf16, the authors' 10-step bf16 NS, the old
   float64 default) at the 160M shapes, CUDA-event timed (median of --reps after a warm-up).
2. Accuracy on the device vs float64 SVD (log-spaced and spiky spectra, sigma_max/c 1..1e4), with torch's
   float32 matmul precision "highest" (IEEE float32), "high" (TF32) and "medium" (bf16).
3. Symmetric products (``linalg.symmetric``): the row-blocked product the accurate mode uses (lower block
   triangle + mirror copies, (k + 1) / (2k) of the multiply-adds) against the plain product, per matmul precision,
   at the 160M shapes (the m x m products of a 48-matrix stack, and the 768 x 50304 Gram product).
4. One optimizer step at the 160M preset: SPECTRA-AdamW (accurate, fast), Muon, torch AdamW (fused) and the
   model's fwd+bwd on one micro-batch; plus a torch.profiler count of host synchronisations (cudaStreamSynchronize,
   cudaDeviceSynchronize, device-to-host memcpy) and kernel launches in one SPECTRA step.

    python benchmarks/bench_gpu.py               # on a GPU; prints markdown tables
    python benchmarks/bench_gpu.py --dry-run     # tiny shapes on the CPU: checks that everything runs
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import positive_int  # noqa: E402

from spectrakit.linalg import soft_clip, soft_clip_svd  # noqa: E402
from spectrakit.linalg.restart import WIDE  # noqa: E402
from spectrakit.linalg.symmetric import block_count, symmetric_matmul  # noqa: E402
from spectrakit.optim import Muon, Spectra  # noqa: E402
from spectrakit.train.model import PRESETS, ModelConfig, Transformer  # noqa: E402

SHAPES_160M = {"attention 768x768 (x48)": (48, 768, 768), "MLP 2048x768 (x36)": (36, 2048, 768),
               "embedding/head 50304x768 (x1)": (1, 50304, 768)}
SHAPES_DRY = {"small 32x48 (x4)": (4, 32, 48), "wide 16x96 (x1)": (1, 16, 96)}
#: (label, batch, m, k) of the symmetric products A A^T (A: batch x m x k) the 160M accurate clip runs
SYMMETRIC_160M = {"m x m, 768 (x48)": (48, 768, 768), "m x m, 2048 (x36)": (36, 2048, 2048),
                  "Gram 768 x 50304 (x1)": (1, 768, 50304)}
SYMMETRIC_DRY = {"m x m, 24 (x2)": (2, 24, 24), "Gram 16 x 96 (x1)": (1, 16, 96)}
VARIANTS = {
    "accurate (float32)": dict(method="polar", adaptive=False),
    "fast (bf16)": dict(method="polar", adaptive=False, dtype=torch.bfloat16),
    "authors' NS (bf16, 10 steps)": dict(method="newton_schulz"),
    "old default (float64)": dict(method="polar", adaptive=False, dtype=torch.float64),
}
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaEventSynchronize")


def _timer(device: torch.device, fn: Callable[[], object], reps: int) -> float:
    """Median milliseconds of fn() over reps calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def clip_timings(device: torch.device, shapes: dict[str, tuple[int, int, int]], reps: int) -> str:
    lines = ["| shape (chunk) | " + " | ".join(VARIANTS) + " |", "|---|" + "---:|" * len(VARIANTS)]
    for name, shape in shapes.items():
        X = torch.randn(*shape, device=device)
        row = [f"{_timer(device, lambda kw=kw, X=X: soft_clip(X, 1.0, **kw), reps):.2f}" for kw in VARIANTS.values()]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def symmetric_timings(device: torch.device, shapes: dict[str, tuple[int, int, int]], reps: int) -> str:
    """Blocked vs plain A A^T per float32 matmul precision: ms of each and their ratio (blocked / plain)."""
    lines = ["| product | precision | blocks | plain ms | blocked ms | blocked / plain |",
             "|---|---|---:|---:|---:|---:|"]
    for name, (batch, m, k) in shapes.items():
        A = torch.randn(batch, m, k, device=device)
        blocks = block_count(m, A.dtype) if k < WIDE * m else max(4, block_count(m, A.dtype))  # as restart.py
        for precision in ("highest", "high"):
            previous = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision(precision)
            try:
                plain = _timer(device, lambda A=A: A @ A.mT, reps)
                blocked = _timer(device, lambda A=A, b=blocks: symmetric_matmul(A, A.mT, blocks=b), reps)
            finally:
                torch.set_float32_matmul_precision(previous)
            lines.append(f"| {name} | {precision} | {blocks} | {plain:.2f} | {blocked:.2f} | {blocked / plain:.2f} |")
    return "\n".join(lines)


def _matrix(m: int, n: int, kind: str, ratio: float, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64)).Q
    spiky = torch.cat([torch.tensor([1.0, 0.1, 0.01]), torch.full((k - 3,), 1e-3)]).double()
    s = torch.logspace(0, -6, k, dtype=torch.float64) if kind == "logspace" else spiky
    return ((U * (s * ratio)) @ V.T).float().to(device)


def accuracy(device: torch.device, m: int, n: int) -> str:
    ratios = (1.0, 1e2, 1e3, 1e4)
    lines = ["| variant | matmul precision | " + " | ".join(f"r={r:g}" for r in ratios) + " |",
             "|---|---|" + "---:|" * len(ratios)]
    for vname, kw in list(VARIANTS.items())[:3]:
        for precision in ("highest", "high", "medium"):
            previous = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision(precision)
            try:
                errs = []
                for r in ratios:
                    worst = 0.0
                    for kind in ("logspace", "spiky"):
                        X = _matrix(m, n, kind, r, device)
                        ref = soft_clip_svd(X.double().cpu(), 1.0)
                        Y = soft_clip(X, 1.0, **kw).double().cpu()
                        err = float(torch.linalg.vector_norm(Y - ref) / torch.linalg.vector_norm(ref))
                        worst = max(worst, err) if err == err else float("nan")
                    errs.append(f"{worst:.1e}")
            finally:
                torch.set_float32_matmul_precision(previous)
            lines.append(f"| {vname} | {precision} | " + " | ".join(errs) + " |")
    return "\n".join(lines)


def _model(preset: str, layers: int | None, device: torch.device) -> tuple[Transformer, ModelConfig]:
    cfg = ModelConfig(**{**PRESETS[preset], **({"n_layers": layers} if layers else {})})
    return Transformer(cfg).to(device), cfg


def step_timings(device: torch.device, preset: str, layers: int | None, batch: int, reps: int) -> str:
    model, cfg = _model(preset, layers, device)
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len + 1), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=False)
        with autocast:
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()

    fwd_bwd()
    rows = [f"| fwd+bwd, {batch} x {cfg.seq_len} tokens (bf16 autocast on CUDA) | "
            f"{_timer(device, fwd_bwd, reps):.1f} |"]
    makers = {
        "torch AdamW (fused)" if device.type == "cuda" else "torch AdamW (foreach)":
            lambda p: torch.optim.AdamW(p, lr=1e-3, **({"fused": True} if device.type == "cuda" else {})),
        "Spectra-AdamW accurate": lambda p: Spectra(p, lr=1e-3, clip_method="polar"),
        "Spectra-AdamW fast": lambda p: Spectra(p, lr=1e-3, clip_method="polar", clip_dtype=torch.bfloat16),
        "Spectra-AdamW authors' NS": lambda p: Spectra(p, lr=1e-3, clip_method="newton_schulz"),
        "Muon (+ AdamW)": lambda p: Muon(p, lr=0.02),
    }
    for name, make in makers.items():
        opt = make(model.parameters())
        rows.append(f"| {name} step | {_timer(device, opt.step, reps):.1f} |")
    return "\n".join(["| work | ms (median) |", "|---|---:|", *rows])


def profile_counts(device: torch.device, preset: str, layers: int | None) -> str:
    model, _ = _model(preset, layers, device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    lines = ["| optimizer step | host syncs | kernel launches | aten ops |", "|---|---:|---:|---:|"]
    for name, make in {"Spectra-AdamW accurate": lambda p: Spectra(p, lr=1e-3, clip_method="polar"),
                       "Spectra-AdamW accurate, nonfinite='ignore'":
                           lambda p: Spectra(p, lr=1e-3, clip_method="polar", nonfinite="ignore"),
                       "Muon (+ AdamW)": lambda p: Muon(p, lr=0.02)}.items():
        opt = make(model.parameters())
        opt.step()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        events = prof.key_averages()
        syncs = sum(e.count for e in events if any(s in e.key for s in SYNC_EVENTS) and "HtoD" not in e.key)
        launches = sum(e.count for e in events if "LaunchKernel" in e.key or "cuLaunch" in e.key)
        ops = sum(e.count for e in events if e.key.startswith("aten::"))
        lines.append(f"| {name} | {syncs} | {launches} | {ops} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (checks that it runs)")
    parser.add_argument("--reps", type=positive_int, default=10)
    parser.add_argument("--batch", type=positive_int, default=16, help="micro-batch (sequences) for fwd+bwd")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, shapes, symmetric, preset, layers, reps, batch, acc = (torch.device("cpu"), SHAPES_DRY, SYMMETRIC_DRY,
                                                                       "tiny", 1, 1, 2, (16, 24))
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --dry-run on the CPU")
        device, shapes, symmetric, preset, layers, reps, batch, acc = (torch.device("cuda"), SHAPES_160M,
                                                                       SYMMETRIC_160M, "160m", None, args.reps,
                                                                       args.batch, (768, 2048))
    sections = [
        "### soft_clip per chunk (ms)", clip_timings(device, shapes, reps),
        "### accuracy on the device vs float64 SVD (worst of log-spaced and spiky)", accuracy(device, *acc),
        "### symmetric products: row-blocked vs plain (float32)", symmetric_timings(device, symmetric, reps),
        f"### optimizer step vs fwd+bwd ({preset})", step_timings(device, preset, layers, batch, reps),
        "### host synchronisations and launches in one step (torch.profiler)", profile_counts(device, preset, layers),
    ]
    body = "\n\n".join(sections)
    print(body)
    return body


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
