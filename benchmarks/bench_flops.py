"""Per-step matmul FLOPs by dtype, host reads, host copies and op counts of the optimizers at LLaMA shapes,
counted on the ``meta`` device (nothing is computed), with an H100 time estimate from stated assumptions.

Each row is one ``step()`` of an optimizer over every parameter of the preset's model (gradients set), inside
``spectrakit.linalg.audit.OpAudit``. The accelerator policy is what a CUDA device gets by default: the meta
device is not the CPU, so ``soft_clip`` takes its accelerator path (adaptive=False). The estimate divides each
dtype's FLOPs by an H100 SXM dense peak times a utilisation (both printed), ignoring everything but matmuls;
the fwd+bwd reference is 6 * parameters * tokens per step (SPEC 1.4 batch sizes).

    python benchmarks/bench_flops.py --write           # 160m and 780m, writes BENCHMARKS.md
    python benchmarks/bench_flops.py --preset tiny     # quick look, prints only
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from spectrakit.linalg import soft_clip  # noqa: E402
from spectrakit.linalg.audit import OpAudit  # noqa: E402
from spectrakit.linalg.restart import WIDE  # noqa: E402
from spectrakit.linalg.symmetric import LARGE_SIDE, MIN_SIDE  # noqa: E402
from spectrakit.optim import Muon, Spectra  # noqa: E402
from spectrakit.train.model import PRESETS, ModelConfig, Transformer  # noqa: E402

#: H100 SXM dense peak TFLOP/s per product dtype. float32 products at torch's default ("highest") precision run
#: on the FP32 units; "3xTF32" is the float32 row at a third of the TF32 peak (three TF32 products each).
PEAK_TFLOPS = {torch.bfloat16: 989.0, torch.float16: 989.0, "tf32": 495.0, torch.float32: 67.0,
               "3xtf32": 495.0 / 3, torch.float64: 67.0}
#: Tokens per optimizer step (SPEC 1.4: 160M 131k tokens/step; 780M ~1M tokens/step).
TOKENS = {"160m": 131072, "780m": 1048576, "tiny": 4096}
DEFAULT_UTILISATION = 0.5


def optimizers() -> dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]]:
    """The rows: SPECTRA-AdamW with each soft-clip variant, and Muon (+ AdamW on the rest)."""
    def spectra(**kw):
        return lambda params: Spectra(params, lr=1e-3, nonfinite="ignore", **kw)
    return {
        "Spectra-AdamW, accurate (float32, default)": spectra(clip_method="polar"),
        "Spectra-AdamW, fast (bf16 products, 3 steps)": spectra(clip_method="polar", clip_dtype=torch.bfloat16),
        "Spectra-AdamW, authors' 10-step NS (bf16)": spectra(clip_method="newton_schulz"),
        "Spectra-AdamW, previous default (float64)": spectra(clip_method="polar", clip_dtype=torch.float64),
        "Muon (Polar Express, 8 steps, bf16)": lambda params: Muon(params, lr=0.02, ns_dtype=torch.bfloat16,
                                                                  nonfinite="ignore"),
    }


def model_params(preset: str, layers: int | None) -> tuple[ModelConfig, list[torch.nn.Parameter]]:
    cfg = ModelConfig(**{**PRESETS[preset], **({"n_layers": layers} if layers else {})})
    with torch.device("meta"):
        model = Transformer(cfg)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.empty_like(p)
    return cfg, params


def audit_step(make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
               params: list[torch.nn.Parameter]) -> OpAudit:
    opt = make(params)
    opt.step()  # warm-up: state allocation and the one-time copies of constant tables to the device
    with OpAudit() as audit:
        opt.step()
    return audit


def estimate_ms(audit: OpAudit, utilisation: float, float32_as: str | torch.dtype = torch.float32) -> float:
    seconds = 0.0
    for dtype, flops in audit.matmul_flops.items():
        key = float32_as if dtype == torch.float32 else dtype
        seconds += flops / (PEAK_TFLOPS[key] * 1e12 * utilisation)
    return 1e3 * seconds


#: One soft_clip call per (m, n) at the 160m / 780m shapes: attention, MLP, embedding/head.
CALL_SHAPES = ((768, 768), (768, 2048), (768, 50304), (1536, 1536), (1536, 4096), (1536, 50304))


def authors_flops(m: int, n: int, steps: int = 10) -> int:
    """SPEC 1.3 (wide, m <= n): G = X X^T, 3 m x m products per iteration, the final Z X."""
    return 4 * m * m * n + 6 * steps * m**3


def per_call_table(shapes: Sequence[tuple[int, int]]) -> str:
    lines = ["| shape (m x n) | authors' 10-step NS (bf16) GFLOP | accurate GFLOP (float32) | ratio | "
             "fast GFLOP (bf16) | ratio | accurate: Cholesky + solve GFLOP |", "|---|---:|---:|---:|---:|---:|---:|"]
    for m, n in shapes:
        X = torch.empty(1, m, n, device="meta")
        cells = []
        for dtype in (None, torch.bfloat16):
            soft_clip(X, 1.0, method="polar", adaptive=False, dtype=dtype)
            with OpAudit() as audit:
                soft_clip(X, 1.0, method="polar", adaptive=False, dtype=dtype)
            cells.append(audit)
        ref = authors_flops(m, n)
        acc, fast = cells[0].total_matmul_flops(), cells[1].total_matmul_flops()
        lines.append(f"| {m} x {n} | {ref / 1e9:.1f} | {acc / 1e9:.1f} | {acc / ref:.2f}x | {fast / 1e9:.1f} | "
                     f"{fast / ref:.2f}x | {cells[0].other_flops / 1e9:.2f} |")
    return "\n".join(lines)


def report(presets: Sequence[str], layers: int | None, utilisation: float) -> str:
    lines = [
        "## Optimizer step FLOPs on the accelerator path (meta device, H100 estimate)",
        "",
        f"Assumptions: H100 SXM dense peaks (TFLOP/s) bf16 {PEAK_TFLOPS[torch.bfloat16]:.0f}, TF32 "
        f"{PEAK_TFLOPS['tf32']:.0f}, FP32 {PEAK_TFLOPS[torch.float32]:.0f}, FP64 {PEAK_TFLOPS[torch.float64]:.0f} "
        f"(tensor core), 3xTF32 = TF32/3; utilisation {utilisation:.0%} for every product; only matmuls are "
        "timed (elementwise work, launches and Cholesky/triangular solves are not; their FLOPs are listed). "
        "fwd+bwd = 6 x parameters x tokens per step in bf16 (160m: 131k tokens, 780m: 1M). 'ms (3xTF32)' "
        "prices the float32 products as split-precision TF32 (not available in cuBLAS today; CUTLASS has it). "
        "One step over every parameter on one GPU; split over 4 ranks, each rank does a quarter (the authors "
        "repeat the clip on every rank).",
        "",
        "Matmul FLOPs of one soft_clip call (batch of one) on the accelerator path vs the authors' method "
        "(SPEC 1.3: 4 m^2 n + 60 m^3); the symmetric products use row blocks (symmetric.block_count: 4 blocks from "
        f"m = {MIN_SIDE}, 62.5% of the work, 8 from m = {LARGE_SIDE}, 56%), the Gram products of very wide matrices "
        f"(n >= {WIDE} m) at least 4:",
        "",
        per_call_table(CALL_SHAPES if presets != ["tiny"] else ((128, 384),)),
        "",
    ]
    for preset in presets:
        cfg, params = model_params(preset, layers)
        n_params = sum(p.numel() for p in params)
        tokens = TOKENS.get(preset, 4096)
        fwd_bwd = 6 * n_params * tokens
        fwd_bwd_ms = 1e3 * fwd_bwd / (PEAK_TFLOPS[torch.bfloat16] * 1e12 * utilisation)
        lines += [f"### {preset}: {n_params / 1e6:.1f}M parameters, d {cfg.d_model}, {cfg.n_layers} layers, "
                  f"SwiGLU {cfg.hidden}, vocab {cfg.vocab_size}; fwd+bwd {fwd_bwd / 1e12:.1f} TFLOP = "
                  f"{fwd_bwd_ms:.1f} ms", "",
                  "| optimizer step | matmul TFLOP by dtype | other GFLOP | host reads | host copies | ops (kernels) | "
                  "est. ms (FP32) | est. ms (3xTF32) | % of fwd+bwd (1 GPU / 4 ranks) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for name, make in optimizers().items():
            audit = audit_step(make, params)
            by_dtype = ", ".join(f"{str(d).replace('torch.', '')} {f / 1e12:.3g}"
                                 for d, f in sorted(audit.matmul_flops.items(), key=lambda kv: str(kv[0])))
            ms = estimate_ms(audit, utilisation)
            ms3 = estimate_ms(audit, utilisation, "3xtf32")
            best = min(ms, ms3)
            lines.append(f"| {name} | {by_dtype or '-'} | {audit.other_flops / 1e9:.1f} | {audit.host_reads} | "
                         f"{audit.host_copies} | {audit.ops} ({audit.kernels}) | {ms:.2f} | {ms3:.2f} | "
                         f"{100 * ms / fwd_bwd_ms:.1f}% / {100 * best / 4 / fwd_bwd_ms:.1f}% |")
        lines.append("")
    lines.append("'% of fwd+bwd' uses the FP32 estimate for one GPU and the lower of the two estimates split over "
                 "4 ranks. Host reads and copies are those of the whole step (the optimizer's own checks "
                 "included, with nonfinite='ignore'); the clip itself makes none on this path. 'ops' counts every "
                 "dispatched aten op; '(kernels)' leaves out views and reshapes, which launch nothing on a GPU.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["160m", "780m"], choices=sorted(PRESETS))
    parser.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    parser.add_argument("--utilisation", type=float, default=DEFAULT_UTILISATION)
    parser.add_argument("--write", action="store_true", help="write the section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.layers is not None and args.layers < 1:
        parser.error("--layers must be an integer >= 1")
    if not 0 < args.utilisation <= 1:
        parser.error("--utilisation must be in (0, 1]")
    body = report(args.preset, args.layers, args.utilisation)
    print(body)
    if args.write:
        write_section("flops", body, "python benchmarks/bench_flops.py " + " ".join(argv or sys.argv[1:]))
    return body


if __name__ == "__main__":
    main()
