"""Reproduce the SPECTRA / SSO / spike-aware papers' claims at small scale (issue 8; REPRODUCTION.md).

    python experiments/reproduce.py run --budget reduced          # the study in REPRODUCTION.md
    python experiments/reproduce.py run --budget full             # the designed ~2 h study (2 free CPU cores)
    python experiments/reproduce.py run --quick --out DIR         # every experiment in seconds (test suite)
    python experiments/reproduce.py report --out DIR              # tables (DIR/summary.md) and figures
    python experiments/reproduce.py run --study clip-vs-scale --workers 1   # issue 17 (see _clip_vs_scale)
    python experiments/reproduce.py report --study clip-vs-scale          # its tables from experiments/results

Experiments (numbers as in the issue):
  1 base vs SPECTRA per base optimizer: an lr grid (same width for all), extra seeds at each best lr
  2 stability at large lr: the grids of 1 continued upwards (``stability_points`` more sqrt(10) steps);
    divergence and loss spikes per lr
  3 weight norms                     (exact ||W||_2, ||W||_F of the trained weights of 1)
  4 gradient spectra                 (the harness's diagnostics of raw gradients in the runs of 1)
  5 spectral pre-clipping vs global-norm clipping (AdamW, at its best lr and at sqrt(10) x best)
  6 Muon, SSO, MuonSphere, spike-aware: the same grid width and seeds; their AdamW-routed tensors (embedding,
    head, vectors) use AdamW's best lr from 1
  7 SPECTRA threshold c around the default 10 (SPECTRA-AdamW at its best lr), and SPECTRA-AdamW without the
    rectangular scale alpha_shape (scale="none", over the same lr grid) to separate the clip from the per-shape
    step size
Runs are trained in phases (a phase needs the best lrs of the one before); finished runs are skipped, so an
interrupted study continues where it stopped. Results: DIR/results.jsonl, one record per run.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _runner import run_all  # noqa: E402
from _study import BUDGETS, SPECTRAL_OPTIMIZERS, Budget, RunSpec, lr_grid, pairs, stability_lrs  # noqa: E402

EXPERIMENTS = (1, 2, 3, 4, 5, 6, 7)
STUDIES = ("reproduction", "clip-vs-scale")
CLIP_VS_SCALE_OUT = Path(__file__).resolve().parent / "results" / "clip-vs-scale"
BASES = ("adamw", "signum", "mars", "ademamix")


def best_lr(records: dict[str, dict[str, Any]], label: str, budget: Budget,
            extra: tuple[tuple[str, Any], ...] = ()) -> float:
    """The grid lr with the lowest seed-0 final validation loss among non-diverged runs (the centre if none)."""
    grid = lr_grid(label, budget)
    scored = []
    for lr in grid:
        r = records.get(RunSpec(label, lr, budget.seeds[0], extra=extra).name)
        if r is not None and not r["diverged"]:
            scored.append((r["final_val_loss"], lr))
    return min(scored)[1] if scored else grid[len(grid) // 2]


def sweep(label: str, budget: Budget, **kw: Any) -> list[RunSpec]:
    return [RunSpec(label, lr, budget.seeds[0], **kw) for lr in lr_grid(label, budget)]


def seeds_at(label: str, lr: float, budget: Budget, **kw: Any) -> list[RunSpec]:
    return [RunSpec(label, lr, seed, **kw) for seed in budget.seeds]


def adamw_extra(records: dict[str, dict[str, Any]], budget: Budget) -> tuple[tuple[str, Any], ...]:
    return (("adamw_lr", best_lr(records, "adamw", budget)),)


def phase1(exps: set[int], bases: list[str], budget: Budget, records) -> list[RunSpec]:
    specs = []
    if exps & {1, 2, 3, 4, 5, 6, 7}:  # 5, 6 and 7 need AdamW's (and SPECTRA-AdamW's) best lr
        for label in pairs(bases if exps & {1, 2, 3, 4} else ["adamw"]):
            specs += sweep(label, budget)
    if 2 in exps:
        for label in pairs(bases):
            specs += [RunSpec(label, lr, budget.seeds[0]) for lr in stability_lrs(label, budget)]
    return specs


def phase2(exps: set[int], bases: list[str], budget: Budget, records) -> list[RunSpec]:
    specs = []
    if exps & {1, 3, 4}:
        for label in pairs(bases):
            specs += seeds_at(label, best_lr(records, label, budget), budget)
    if 7 in exps:  # what helps: the clip or the rectangular scale sqrt(max(1, rows/cols)) it comes with
        best = (best_lr(records, "spectra-adamw", budget), best_lr(records, "adamw", budget))
        for lr in sorted(lr_grid("spectra-adamw", budget), key=lambda x: x not in best):  # the best lrs first
            specs.append(RunSpec("spectra-adamw", lr, budget.seeds[0], extra=(("scale", "none"),)))
    if 5 in exps:
        lr = best_lr(records, "adamw", budget)
        grid = lr_grid("adamw", budget)
        for at in (lr, grid[min(grid.index(lr) + 1, len(grid) - 1)]):  # one seed each: exp 1 gives the noise level
            for seed in budget.seeds[:1]:
                specs += [RunSpec("adamw", at, seed), RunSpec("adamw", at, seed, grad_clip=0.0),
                          RunSpec("adamw", at, seed, grad_clip=0.1), RunSpec("adamw", at, seed, pre_clip=0.1),
                          RunSpec("spectra-adamw", at, seed)]
    if 7 in exps:
        lr = best_lr(records, "spectra-adamw", budget)
        specs += [RunSpec("spectra-adamw", lr, budget.seeds[0], clip_c=None if c == 10 else c)
                  for c in budget.c_values]
    if 6 in exps:
        for label in SPECTRAL_OPTIMIZERS:
            specs += sweep(label, budget, extra=adamw_extra(records, budget))
    return specs


def phase3(exps: set[int], bases: list[str], budget: Budget, records) -> list[RunSpec]:
    specs = []
    if 6 in exps:
        extra = adamw_extra(records, budget)
        for label in SPECTRAL_OPTIMIZERS:
            specs += seeds_at(label, best_lr(records, label, budget, extra), budget, extra=extra)
    return specs


def run_study(budget: Budget, out: Path, exps: set[int], bases: list[str], cache_dir: str | None) -> None:
    records = run_all([], budget, out, cache_dir)
    for phase in (phase1, phase2, phase3):
        records = run_all(phase(exps, bases, budget, records), budget, out, cache_dir)


def parse_experiments(parser: argparse.ArgumentParser, text: str | None, allowed: tuple[int, ...]) -> set[int]:
    if text is None:
        return set(allowed)
    try:
        exps = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        parser.error(f"--experiments must be comma-separated integers, got {text!r}")
    if not exps or not exps <= set(allowed):
        parser.error(f"--experiments must be a subset of {allowed}, got {text!r}")
    return exps


def run_clip_vs_scale(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The clip-vs-scale study (issue 17): budget 'reduced' (default) or 'quick'; one worker unless told."""
    from _clip_vs_scale import EXPERIMENTS as CVS_EXPERIMENTS
    from _clip_vs_scale import run_study as run_cvs

    if args.bases is not None:
        parser.error("--bases applies to the reproduction study only (clip-vs-scale compares AdamW variants)")
    base = "quick" if args.quick else args.budget
    if base not in ("reduced", "quick"):
        parser.error(f"--budget must be 'reduced' or 'quick' for --study clip-vs-scale, got {base!r}")
    exps = parse_experiments(parser, args.experiments, CVS_EXPERIMENTS)
    out = args.out or (Path("runs/clip-vs-scale-quick") if args.quick else CLIP_VS_SCALE_OUT)
    start = time.time()
    run_cvs(base, out, exps, args.cache_dir, workers=args.workers or 1)
    print(f"study done in {(time.time() - start) / 60:.1f} min: {out}")
    if args.quick:
        print(write_clip_vs_scale_report(out))
    return 0


def write_clip_vs_scale_report(out: Path) -> Path:
    from _clip_vs_scale_report import write_report

    return write_report(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train the runs of the chosen experiments (skipping finished ones)")
    run.add_argument("--study", choices=STUDIES, default=STUDIES[0],
                     help="reproduction (issue 8, experiments 1-7) or clip-vs-scale (issue 17, experiments 1-4)")
    run.add_argument("--budget", choices=sorted(BUDGETS), default="reduced", help="model and token budget")
    run.add_argument("--quick", action="store_true", help="the 'quick' budget, then the report (smoke test)")
    run.add_argument("--experiments", default=None, help="comma-separated experiment numbers (default: all)")
    run.add_argument("--bases", default=None,
                     help=f"base optimizers of experiments 1-4, from {', '.join(BASES)} (default: all; "
                          "reproduction study only)")
    run.add_argument("--workers", type=int, default=None, help="parallel training processes (default: budget's)")
    run.add_argument("--cache-dir", default=None, help="tokenizer and token cache (default: the harness's)")
    run.add_argument("--out", type=Path, default=None,
                     help="results folder (default runs/reproduction-BUDGET; clip-vs-scale: "
                          f"{CLIP_VS_SCALE_OUT}, or runs/clip-vs-scale-quick with --quick)")
    report = sub.add_parser("report", help="write DIR/summary.md and DIR/figures/*.png from DIR/results.jsonl")
    report.add_argument("--study", choices=STUDIES, default=STUDIES[0], help="which study's tables")
    report.add_argument("--out", type=Path, default=None,
                        help=f"results folder (default runs/reproduction-reduced; clip-vs-scale: {CLIP_VS_SCALE_OUT})")
    report.add_argument("--figures", type=Path, default=None, help="figure folder (default DIR/figures)")
    args = parser.parse_args(argv)

    if args.command == "report":
        if args.study == "clip-vs-scale":
            print(write_clip_vs_scale_report(args.out or CLIP_VS_SCALE_OUT))
            return 0
        from _analysis import write_report

        out = args.out or Path("runs/reproduction-reduced")
        write_report(out, args.figures or out / "figures")
        return 0
    if args.study == "clip-vs-scale":
        return run_clip_vs_scale(parser, args)
    budget = BUDGETS["quick" if args.quick else args.budget]
    if args.workers is not None:
        if args.workers < 1:
            parser.error(f"--workers must be >= 1, got {args.workers}")
        budget = Budget(**{**budget.__dict__, "workers": args.workers})
    exps = parse_experiments(parser, args.experiments, EXPERIMENTS)
    bases = [b.strip() for b in (args.bases or ",".join(BASES)).split(",") if b.strip()]
    if not bases or not set(bases) <= set(BASES):
        parser.error(f"--bases must be a subset of {BASES}, got {args.bases!r}")
    out = args.out or Path(f"runs/reproduction-{budget.name}")
    start = time.time()
    run_study(budget, out, exps, bases, args.cache_dir)
    print(f"study done in {(time.time() - start) / 60:.1f} min: {out}")
    if args.quick:
        from _analysis import write_report

        write_report(out, out / "figures")
    return 0 if math.isfinite(start) else 1


if __name__ == "__main__":
    raise SystemExit(main())
