"""Accuracy and speed of the matrix functions against exact float64 SVD; writes the "linalg" section of BENCHMARKS.md.

For each shape and sigma_max/c it reports the relative Frobenius error vs float64 SVD and the median time of:
svd (float64), the authors' coupled Newton-Schulz soft clip (float32: 10 steps, and the fewest steps on a ladder
that reach 1e-3), soft_clip "polar" (adaptive default on CPU, and the fixed no-sync schedule), hard_clip "polar",
and msign (Keller's quintic, 5 steps). Ratios of times are taken within the same run.

    python benchmarks/bench_linalg.py            # full table, writes BENCHMARKS.md
    python benchmarks/bench_linalg.py --quick --no-write   # tiny shapes, prints only (used by a test)
    python benchmarks/bench_linalg.py --symmetric          # symmetric_matmul vs A @ B ("symmetric" section)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import positive_int, write_section  # noqa: E402

from spectrakit.linalg import hard_clip, hard_clip_svd, msign, soft_clip, soft_clip_svd, symmetric  # noqa: E402
from spectrakit.linalg.audit import OpAudit  # noqa: E402
from spectrakit.linalg.symmetric import block_count, symmetric_matmul  # noqa: E402

NS_LADDER = (3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40)
TARGET = 1e-3


#: Spectrum kinds (singular values s_1 >= ... of a matrix with sigma_max/c = ratio, c = 1):
#: log = log-spaced from ratio down to ratio * 1e-3; flat = every value ratio; dominant = 4 values at ratio over a
#: tail log-spaced from ratio * 1e-2 to ratio * 1e-3; rank-deficient = log-spaced over the first half, zeros after.
SPECTRA = ("log", "flat", "dominant", "rank-deficient")


def singular_values(k: int, ratio: float, kind: str) -> torch.Tensor:
    """The k singular values of a spectrum kind (see ``SPECTRA``), float64."""
    if kind == "log":
        return torch.logspace(0, -3, k, dtype=torch.float64) * ratio
    if kind == "flat":
        return torch.full((k,), ratio, dtype=torch.float64)
    if kind == "dominant":
        top = min(4, k)
        return torch.cat([torch.full((top,), float(ratio), dtype=torch.float64),
                          torch.logspace(-2, -3, k - top, dtype=torch.float64) * ratio])
    if kind == "rank-deficient":
        half = max(1, k // 2)
        return torch.cat([torch.logspace(0, -3, half, dtype=torch.float64) * ratio,
                          torch.zeros(k - half, dtype=torch.float64)])
    raise ValueError(f"spectrum kind must be one of {SPECTRA}, got {kind!r}")


def test_matrix(m: int, n: int, ratio: float, seed: int = 0, kind: str = "log") -> torch.Tensor:
    """float32 m x n matrix U diag(s) V^T with random orthonormal U, V and the spectrum ``kind`` (c = 1)."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return ((U * singular_values(k, ratio, kind)) @ V.T).float()


def timed_round_robin(fns: dict[str, Callable[[], torch.Tensor]], reps: int
                      ) -> dict[str, tuple[float, torch.Tensor]]:
    """{name: (best seconds over ``reps`` calls after one warm-up call, last output)}, calling the functions in
    turn (round robin) so that a drift in machine speed hits them all alike. The best, not the median: other
    jobs on a shared machine only ever add time, so the minimum is the least noisy estimate."""
    outs = {name: fn() for name, fn in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: (best[name], outs[name]) for name in fns}


def rel_err(Y: torch.Tensor, ref: torch.Tensor) -> float:
    return (torch.linalg.matrix_norm(Y.double() - ref) / torch.linalg.matrix_norm(ref)).item()


def ns(X: torch.Tensor, steps: int) -> torch.Tensor:
    return soft_clip(X, 1.0, method="newton_schulz", steps=steps, dtype=torch.float32)


def ns_steps_needed(X: torch.Tensor, ref: torch.Tensor) -> int | None:
    for k in NS_LADDER:
        if rel_err(ns(X, k), ref) <= TARGET:
            return k
    return None


#: The pair behind the speed target, timed round robin with more repetitions than the other columns.
SPEED_PAIR = ("ns_need", "polar", "polar_full")


def polar_with_full_products(X: torch.Tensor) -> torch.Tensor:
    """soft_clip "polar" with symmetric_matmul turned off (plain A @ B everywhere), to show what it adds."""
    saved, symmetric.MIN_SIDE = symmetric.MIN_SIDE, sys.maxsize
    try:
        return soft_clip(X, 1.0, method="polar")
    finally:
        symmetric.MIN_SIDE = saved


def matmul_gflop(fn: Callable[[], torch.Tensor]) -> tuple[float, float]:
    """(matmul GFLOP of one call of ``fn``, the float64 part of it), counted by OpAudit (noise-free)."""
    with OpAudit() as audit:
        fn()
    return audit.total_matmul_flops() / 1e9, audit.float64_matmul_flops / 1e9


def bench_case(m: int, n: int, ratio: float, reps: int, pair_reps: int,
               ns_hint: dict[tuple[str, float], int | None], kind: str = "log") -> dict[str, object]:
    X = test_matrix(m, n, ratio, kind=kind)
    ref_soft, ref_hard = soft_clip_svd(X.double(), 1.0), hard_clip_svd(X.double(), 1.0)
    row: dict[str, object] = {"shape": f"{m}x{n}", "ratio": ratio, "kind": kind}
    if (kind, ratio) not in ns_hint:
        ns_hint[(kind, ratio)] = ns_steps_needed(X, ref_soft)
    k = ns_hint[(kind, ratio)]
    big = m * n >= 2048 * 2048
    runs = {
        "svd": (lambda: soft_clip(X, 1.0, method="svd"), ref_soft),
        "ns10": (lambda: ns(X, 10), ref_soft),
        "ns_need": (lambda: ns(X, k or NS_LADDER[-1]), ref_soft),
        "polar": (lambda: soft_clip(X, 1.0, method="polar"), ref_soft),
        "polar_full": (lambda: polar_with_full_products(X), ref_soft),
        "polar_fixed": (lambda: soft_clip(X, 1.0, method="polar", adaptive=False), ref_soft),
        "hard": (lambda: hard_clip(X, 1.0, method="polar"), ref_hard),
        "msign": (lambda: msign(X, coefficients="keller", steps=5, dtype=torch.float32), None),
    }
    if big:  # the slowest columns, measured once per shape (svd time does not depend on the spectrum)
        runs.pop("polar_fixed")
        if ratio != 1.0:
            runs.pop("svd")
    timings = timed_round_robin({name: runs[name][0] for name in SPEED_PAIR}, pair_reps)
    timings.update(timed_round_robin({name: fn for name, (fn, _) in runs.items() if name not in SPEED_PAIR}, reps))
    for name, (_, ref) in runs.items():
        t, Y = timings[name]
        row[name] = (t, rel_err(Y, ref) if ref is not None else float("nan"))
    row["ns_steps"] = k
    row["gflop"] = (matmul_gflop(runs["ns_need"][0])[0], *matmul_gflop(runs["polar"][0]))
    return row


def format_table(rows: list[dict[str, object]]) -> str:
    head = ("| spectrum | shape | smax/c | svd ms | NS-10 ms (err) | NS steps for 1e-3 | NS-need ms (err) "
            "| polar ms (err) | polar fixed ms (err) | NS-need / polar | polar, full products ms "
            "| NS-need / polar, full products | matmul GFLOP NS-need / polar (float64 part) | hard_clip ms (err) "
            "| msign Keller-5 ms |")
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        def cell(key: str, r: dict[str, object] = r) -> str:
            if key not in r:
                return "-"
            t, e = r[key]  # type: ignore[misc]
            return f"{t * 1e3:.0f} ({e:.1e})"
        k = r["ns_steps"]
        speedup = r["ns_need"][0] / r["polar"][0]  # type: ignore[index]
        full = r["polar_full"][0]  # type: ignore[index]
        svd = f"{r['svd'][0] * 1e3:.0f}" if "svd" in r else "-"  # type: ignore[index]
        ns_gf, polar_gf, polar_gf64 = r["gflop"]  # type: ignore[misc]
        gflop = f"{ns_gf:.1f} / {polar_gf:.1f} ({polar_gf64:.1f}) = {ns_gf / polar_gf:.1f}x"
        lines.append(f"| {r['kind']} | {r['shape']} | {r['ratio']:g} | {svd} | {cell('ns10')} | "
                     f"{k if k else '> ' + str(NS_LADDER[-1])} | {cell('ns_need')} | {cell('polar')} | "
                     f"{cell('polar_fixed')} | {speedup:.2f}x | {full * 1e3:.0f} | "
                     f"{r['ns_need'][0] / full:.2f}x | {gflop} | {cell('hard')} | "
                     f"{r['msign'][0] * 1e3:.0f} |")  # type: ignore[index]
    return "\n".join(lines)


SYMMETRIC_SIDES = (256, 384, 512, 768, 1024, 2048)


def symmetric_table(sides: tuple[int, ...], reps: int) -> str:
    """Time of symmetric_matmul(S, P) over S @ P for a symmetric S and a polynomial P in S, per side and dtype."""
    lines = ["| side | dtype | A @ B ms | blocks | symmetric_matmul ms | ratio |", "|---|---|---|---|---|---|"]
    for dtype in (torch.float32, torch.float64):
        for m in sides:
            A = torch.randn(m, m, dtype=dtype)
            S = (A + A.T) / m
            P = S @ S + S
            counts = sorted({4, block_count(m, S.dtype)})  # 4, and the rule's choice where it differs
            fns = {"full": lambda S=S, P=P: S @ P}
            fns.update({k: (lambda S=S, P=P, k=k: symmetric_matmul(S, P, blocks=k)) for k in counts})
            t = timed_round_robin(fns, reps)
            full = t["full"][0]
            for k in counts:
                lines.append(f"| {m} | {str(dtype).removeprefix('torch.')} | {full * 1e3:.2f} | {k} | "
                             f"{t[k][0] * 1e3:.2f} | {t[k][0] / full:.2f} |")
    return "\n".join(lines)


SYMMETRIC_NOTES = """symmetric_matmul computes the lower block triangle of a product known to be symmetric (k row
blocks: (k + 1) / (2k) of the multiply-adds) and mirrors it; ratio = its time over the full product (best of the
repetitions, timed in turn); each side shows 4 blocks and the rule's choice (1 = plain matmul). The rule (4 blocks
from side 512, 8 from 768, CPU only: not measured on accelerators) comes from runs on several 2-core VMs; below
512 the blocked product was slower on some of them (1.39x at 384 and 1.54x at 256 on 2026-11-23), so it is not
used there."""


NOTES = """Errors are relative Frobenius errors vs float64 SVD on float32 inputs U diag(s) V^T, c = 1, with the spectrum
kinds: log = log-spaced from smax down to smax * 1e-3; flat = every singular value smax; dominant = 4 values at
smax over a tail from smax * 1e-2 to smax * 1e-3; rank-deficient = log-spaced over the first half of the singular
values, zeros after. NS = the authors' coupled Newton-Schulz soft clip run in float32 (its bfloat16 default is
~100x slower than float32 on this CPU, which has no bf16 matmul units); "steps for 1e-3" is the first count on the
ladder 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40 meeting 1e-3 (found once per spectrum kind and ratio on the first
shape and reused; where the reused count misses 1e-3 on a larger shape, as its error shows, NS-need understates
what NS needs), "> 40" if none does (then NS-need is run with 40 steps and misses the target). polar =
soft_clip(method="polar") with its CPU defaults (step count and precision chosen per call from bounds on the
eigenvalues of I + X X^T/c^2: Gershgorin / ||(X X^T)^2||_F, trace bounds and Cholesky certificates, so a flat
spectrum takes one step in float32); matmul GFLOP counts one call's products (torch dispatch, independent of
machine load; float64 products run at half the float32 rate on this CPU); polar fixed = adaptive=False (the
accelerator default: worst-case schedule, float64, no host read). polar uses symmetric_matmul for its Gram-space
products (see the "symmetric" section); NS is run as the authors wrote it, with full products; "polar, full
products" is polar with symmetric_matmul turned off, the like-for-like comparison (the same trick would speed NS up
too). hard_clip = method "polar". msign in float32. For 2048x2048, svd is timed once (smax/c = 1) and "polar fixed"
is skipped to keep the run short. NS-need and both polar columns are timed in turn (round robin), best of 7 calls
(3 for 2048x2048) after a warm-up; the other columns best of 3 (1). Taken on a quiet machine (no other jobs), but
the VM's speed drifts by up to 2x between minutes: compare times within a row only."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes, one repetition (seconds)")
    p.add_argument("--no-write", action="store_true", help="print the table only; leave BENCHMARKS.md alone")
    p.add_argument("--reps", type=positive_int, default=None,
                   help="timed repetitions per case (default 3; 1 for 2048+)")
    p.add_argument("--pair-reps", type=positive_int, default=None,
                   help="repetitions for NS-need and polar, timed in turn (default 7; 3 for 2048+)")
    p.add_argument("--shapes", default=None, help="comma-separated MxN list replacing the default shapes")
    p.add_argument("--symmetric", action="store_true", help="time symmetric_matmul against A @ B instead")
    p.add_argument("--section", default="linalg", help="the BENCHMARKS.md section to write (default: linalg)")
    p.add_argument("--spectra", default=",".join(SPECTRA),
                   help=f"comma-separated spectrum kinds among {', '.join(SPECTRA)} (default: all)")
    p.add_argument("--ns-steps", default=None,
                   help="known NS steps for 1e-3 per ratio of the log spectrum, e.g. '1:5,10:10,100:20,1000:none' "
                        "(skips the ladder there)")
    args = p.parse_args(argv)
    if args.symmetric:
        sides = (256, 512) if args.quick else SYMMETRIC_SIDES
        table = symmetric_table(sides, args.reps or (1 if args.quick else 7))
        print(table)
        if not args.no_write:
            write_section("symmetric", "## Symmetric products: lower block triangle vs full matmul\n\n" + table
                          + "\n\n" + SYMMETRIC_NOTES, "python benchmarks/bench_linalg.py --symmetric")
        return 0
    if args.quick:
        shapes, ratios = [(12, 20)], [10.0]
    else:
        shapes, ratios = [(768, 768), (768, 3072), (2048, 2048)], [1.0, 10.0, 100.0, 1000.0]
        if torch.cuda.is_available():
            shapes += [(4096, 4096), (4096, 14336)]
    if args.shapes:
        shapes = [tuple(int(v) for v in item.split("x")) for item in args.shapes.split(",")]  # type: ignore[misc]
    torch.manual_seed(0)
    rows: list[dict[str, object]] = []
    kinds = [kind.strip() for kind in args.spectra.split(",")]
    unknown = [kind for kind in kinds if kind not in SPECTRA]
    if unknown:
        p.error(f"--spectra: unknown kind(s) {unknown}; choose among {', '.join(SPECTRA)}")
    ns_hint: dict[tuple[str, float], int | None] = {}
    for item in (args.ns_steps.split(",") if args.ns_steps else []):
        ratio_text, steps_text = item.split(":")
        ns_hint[("log", float(ratio_text))] = None if steps_text == "none" else int(steps_text)
    command = "python benchmarks/bench_linalg.py" + (" --quick" if args.quick else "") + \
        (f" --shapes {args.shapes}" if args.shapes else "") + \
        (f" --ns-steps {args.ns_steps}" if args.ns_steps else "") + \
        (f" --spectra {args.spectra}" if args.spectra != ",".join(SPECTRA) else "") + \
        (f" --section {args.section}" if args.section != "linalg" else "")
    for kind in kinds:
        for m, n in shapes:
            for ratio in ratios:
                big = m * n >= 2048 * 2048
                reps = args.reps or (1 if args.quick or big else 3)
                pair_reps = args.pair_reps or (1 if args.quick else 3 if big else 7)
                rows.append(bench_case(m, n, ratio, reps, pair_reps, ns_hint, kind))
                print(format_table(rows[-1:]).splitlines()[-1], flush=True)
        if not args.no_write:
            write_section(args.section, "## linalg: soft/hard clip and msign vs exact SVD\n\n" + format_table(rows)
                          + "\n\n" + NOTES, command)
    if args.no_write:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
