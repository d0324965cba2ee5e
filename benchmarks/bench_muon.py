"""Our Muon step against torch.optim.Muon at the same dtype and step count (issue 16, item 5; BENCHMARKS.md "muon").

The parameter set is the hidden matrices of a GPT-2 slice (d 768, 2 layers: attention in (2304 x 768), attention
out (768 x 768), MLP in (3072 x 768), MLP out (768 x 3072)); gradients are fixed, one warm-up step first, then
the optimizers step in turn (interleaved, so drift of the machine's speed hits all alike) and the median step
time is reported with its ratio to torch.optim.Muon.

Both run Keller's quintic for 5 steps with momentum 0.95, Nesterov, weight decay 0.1 and the rectangular lr
factor sqrt(max(1, rows/cols)) (torch's "original" adjustment, our scale="keller"); "ours, Polar Express" is our
default (8 Polar Express steps) at the same dtype. The dtype is the fast one for the machine
(``spectrakit.linalg.capability.fast_bfloat16_matmul``): bfloat16 on CUDA and on CPUs with AMX tiles or
AVX512-BF16, where torch.optim.Muon runs as it is; float32 elsewhere, where torch.optim.Muon's Newton-Schulz
function (which always casts to bfloat16, 20-100x slower than float32 on such CPUs) is replaced, for this benchmark
only, by the same iteration in float32 (``_torch_newton_schulz_in``).

    python benchmarks/bench_muon.py --threads 1
    python benchmarks/bench_muon.py --quick      # tiny shapes, prints only (used by the tests)
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.optim._muon as torch_muon

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import quick_or_full  # noqa: E402

from spectrakit.linalg.capability import fast_bfloat16_matmul  # noqa: E402
from spectrakit.optim import Muon  # noqa: E402

KELLER = (3.4445, -4.7750, 2.0315)
HYPER = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.1}


def gpt2_hidden_shapes(dim: int, layers: int) -> list[tuple[str, tuple[int, int]]]:
    """(name, shape) of a GPT-2 slice's hidden matrices (torch Linear layout: out x in)."""
    shapes = []
    for i in range(layers):
        shapes += [(f"h.{i}.attn.c_attn.weight", (3 * dim, dim)), (f"h.{i}.attn.c_proj.weight", (dim, dim)),
                   (f"h.{i}.mlp.c_fc.weight", (4 * dim, dim)), (f"h.{i}.mlp.c_proj.weight", (dim, 4 * dim))]
    return shapes


def _torch_newton_schulz_in(dtype: torch.dtype) -> Callable:
    """torch.optim.Muon's Newton-Schulz iteration with its compute dtype ``dtype`` (torch fixes bfloat16)."""
    def newton_schulz(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                      eps: float) -> torch.Tensor:
        a, b, c = ns_coefficients
        X = grad.to(dtype)
        if grad.size(0) > grad.size(1):
            X = X.T
        X = X / X.norm().clamp(min=eps)
        for _ in range(ns_steps):
            A = X @ X.T
            X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
        return X.T if grad.size(0) > grad.size(1) else X
    return newton_schulz


@contextmanager
def torch_muon_in(dtype: torch.dtype):
    """torch.optim.Muon as it is for bfloat16; with its iteration in ``dtype`` otherwise (restored after)."""
    original = torch_muon._zeropower_via_newtonschulz
    if dtype != torch.bfloat16:
        torch_muon._zeropower_via_newtonschulz = _torch_newton_schulz_in(dtype)
    try:
        yield
    finally:
        torch_muon._zeropower_via_newtonschulz = original


def contenders(dtype: torch.dtype) -> dict[str, Callable[[list[tuple[str, torch.Tensor]]], torch.optim.Optimizer]]:
    return {
        "torch.optim.Muon": lambda named: torch.optim.Muon([p for _, p in named], ns_coefficients=KELLER, ns_steps=5,
                                                           adjust_lr_fn="original", **HYPER),
        "ours, Keller 5": lambda named: Muon(named, ns_coefficients="keller", ns_steps=5, ns_dtype=dtype,
                                             scale="keller", fallback=(), **HYPER),
        "ours, Polar Express 8": lambda named: Muon(named, ns_dtype=dtype, scale="keller", fallback=(), **HYPER),
    }


def measure(shapes: list[tuple[str, tuple[int, int]]], steps: int, dtype: torch.dtype) -> dict[str, list[float]]:
    """Median-ready step times (seconds) of every contender, stepping in turn on fixed gradients."""
    gen = torch.Generator().manual_seed(0)
    runs = {}
    for name, build in contenders(dtype).items():
        named = [(n, torch.randn(s, generator=gen).requires_grad_()) for n, s in shapes]
        for _, p in named:
            p.grad = torch.randn(p.shape, generator=gen)
        runs[name] = build(named)
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch_muon_in(dtype):
        for opt in runs.values():  # warm-up
            opt.step()
        for _ in range(steps):
            for name, opt in runs.items():
                start = time.perf_counter()
                opt.step()
                times[name].append(time.perf_counter() - start)
    return times


def table(shapes: list[tuple[str, tuple[int, int]]], steps: int) -> str:
    dtype = torch.bfloat16 if fast_bfloat16_matmul(torch.device("cpu")) else torch.float32
    times = measure(shapes, steps, dtype)
    base = statistics.median(times["torch.optim.Muon"])
    rows = ["| optimizer | step ms (median) | vs torch.optim.Muon |", "|---|---|---|"]
    for name, ts in times.items():
        t = statistics.median(ts)
        rows.append(f"| {name} | {t * 1e3:.1f} | {t / base:.2f}x |")
    replaced = "" if dtype == torch.bfloat16 else (
        " torch.optim.Muon's bfloat16 Newton-Schulz function is replaced by the same iteration in float32 for this"
        " run (this CPU has no bf16 matrix units).")
    dims = ", ".join(f"{r}x{c}" for r, c in dict.fromkeys(s for _, s in shapes))
    return ("\n".join(rows) + f"\n\nCompute dtype {str(dtype).removeprefix('torch.')} (the fast one here).{replaced} "
            f"Matrices: {len(shapes)} ({dims}); {steps} interleaved steps after a warm-up.")


def main(argv: list[str] | None = None) -> str:
    return quick_or_full(argv, __doc__.splitlines()[0],
                         quick=lambda: table(gpt2_hidden_shapes(32, 1), 2),
                         full=lambda: table(gpt2_hidden_shapes(768, 2), 7),
                         section="muon", title="Muon step vs torch.optim.Muon (same dtype, same steps)",
                         script="bench_muon.py")


if __name__ == "__main__":
    main()
