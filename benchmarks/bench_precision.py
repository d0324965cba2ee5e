"""Accuracy of the soft clip's accelerator paths per matrix-product format, emulated on the CPU.

Relative Frobenius error vs the float64 SVD, worst over four spectrum kinds (flat, spiky, log-spaced,
rank-deficient) and two shapes (64 x 96, 48 x 200), per sigma_max/c. Product formats are emulated with
``spectrakit.linalg.emulate.rounded_products`` (inputs of every product rounded; float32 accumulation):
TF32 (10 mantissa bits), bf16 (7), and the split-precision 3xTF32 / bf16x3 (hi*hi + hi*lo + lo*hi).

    python benchmarks/bench_precision.py --write
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _linalg_cases import KINDS, make_matrix  # noqa: E402
from _report import write_section  # noqa: E402

from spectrakit.linalg import soft_clip, soft_clip_svd  # noqa: E402
from spectrakit.linalg.emulate import rounded_products  # noqa: E402

RATIOS = (1e-2, 1.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e8)
SHAPES = ((64, 96), (48, 200))

Variant = Callable[[torch.Tensor], torch.Tensor]
VARIANTS: dict[str, tuple[Variant, tuple[str, ...]]] = {
    "accurate (float32, accelerator default)": (
        lambda X: soft_clip(X, 1.0, method="polar", adaptive=False), ("fp32", "3xtf32", "bf16x3", "tf32", "bf16")),
    "fast (bf16 products, 3 steps)": (
        lambda X: soft_clip(X, 1.0, method="polar", adaptive=False, dtype=torch.bfloat16), ("as built",)),
    "authors' NS, 10 steps": (
        lambda X: soft_clip(X, 1.0, method="newton_schulz", dtype=torch.float32), ("fp32", "bf16")),
    "authors' NS, 10 steps, bfloat16 tensors (their default)": (
        lambda X: soft_clip(X, 1.0, method="newton_schulz"), ("as built",)),
    "previous accelerator default (float64, fixed)": (
        lambda X: soft_clip(X, 1.0, method="polar", adaptive=False, dtype=torch.float64), ("fp64",)),
    "CPU default (adaptive)": (lambda X: soft_clip(X, 1.0, method="polar"), ("as built",)),
}


def worst_error(fn: Variant, fmt: str, ratio: float, shapes: Sequence[tuple[int, int]]) -> float:
    worst = 0.0
    for kind in KINDS:
        for i, shape in enumerate(shapes):
            X = make_matrix(*shape, kind, ratio, seed=i).float()
            ctx = rounded_products(fmt) if fmt in ("3xtf32", "bf16x3", "tf32", "bf16") else contextlib.nullcontext()
            with ctx:
                Y = fn(X)
            if not torch.isfinite(Y).all():
                return float("nan")
            ref = soft_clip_svd(X.double(), 1.0)
            worst = max(worst, float(torch.linalg.vector_norm(Y.double() - ref) / torch.linalg.vector_norm(ref)))
    return worst


def table(ratios: Sequence[float], shapes: Sequence[tuple[int, int]]) -> str:
    lines = ["## Soft clip accuracy per product format (CPU emulation)", "",
             "Relative Frobenius error vs float64 SVD, worst of flat / spiky / log-spaced / rank-deficient spectra "
             f"at {' and '.join(f'{m}x{n}' for m, n in shapes)}; 'nan' = a non-finite result. Products emulated by "
             "rounding their inputs (float32 accumulation): tf32 = 10 mantissa bits (truncated), bf16 = 7, "
             "3xtf32 / bf16x3 = hi*hi + hi*lo + lo*hi. Targets of the accurate mode: <= 1e-3 up to 1e3, "
             "<= 1e-2 up to 1e4.", "",
             "| variant | products | " + " | ".join(f"{r:g}" for r in ratios) + " |",
             "|---|---|" + "---:|" * len(ratios)]
    for name, (fn, formats) in VARIANTS.items():
        for fmt in formats:
            errs = [worst_error(fn, fmt, r, shapes) for r in ratios]
            lines.append(f"| {name} | {fmt} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
    lines += ["", "Plain TF32 or bf16 products (torch.set_float32_matmul_precision('high'/'medium') on a GPU) break "
              "the accurate mode beyond sigma_max/c ~ 10: keep 'highest' (the default) for it. bench_gpu.py "
              "measures the same on a device; it has not run (no GPU was available)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two ratios, one small shape; prints only")
    parser.add_argument("--write", action="store_true", help="write the section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    body = table((1.0, 1e3), ((16, 24),)) if args.quick else table(RATIOS, SHAPES)
    print(body)
    if args.write and not args.quick:
        write_section("precision", body, "python benchmarks/bench_precision.py --write")
    return body


if __name__ == "__main__":
    main()
