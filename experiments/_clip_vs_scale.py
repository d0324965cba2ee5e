"""The clip-vs-scale study (issue 17; REPRODUCTION.md, "Clip or step-size split?"): what SPECTRA-AdamW's gain over
AdamW is made of. Planning only; ``_runner`` trains.

Variants (all the same class, ``Spectra(base="adamw")``, so only the named difference changes):
  AdamW                     clip=None, one lr for every tensor
  AdamW x m (emb/head)      clip=None, the embedding and the head at m * lr (m in MULTIPLIERS; the tuned baseline
                            takes the best (m, lr), m = 1 included)
  AdamW + rect. scale       clip=None, every matrix at sqrt(max(1, rows/cols)) * lr: SPECTRA's scale, no clip
  SPECTRA-AdamW             the default: soft clip c = 10, then the rectangular scale
  SPECTRA-AdamW, no scale   scale="none": the clip alone
(a multiplier scales the update, not the weight decay: X <- (1 - lr wd) X - m lr U, as SPECTRA's scale does).

Experiments (issue 17's numbers), in the order they are trained (the most informative first):
  1 at the base budget: the four variants at seed 0 over the lr grid (centre first), then the multiplier grid,
    then seeds at each best setting
  2 the same at the wide budget (d_model twice the base's: the clip acts on the block matrices; the records keep
    SPECTRA's clipped fraction per matrix at every diagnostics step)
  4 SPECTRA-AdamW's threshold c at the wide budget, at its best lr, seed 0
  3 stability: no warmup, no global clipping, twice the steps, lrs from the top of the grid upwards; AdamW and
    SPECTRA with and without the scale, every seed
Each budget's records go to OUT/<budget>/results.jsonl; finished runs are skipped, so the study resumes.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from _runner import run_all
from _study import BUDGETS, Budget, RunSpec, lr_grid, stability_lrs

EXPERIMENTS = (1, 2, 3, 4)
MULTIPLIERS = (1.0, 3.16, 10.0)  # embedding/head lr multipliers of the tuned AdamW baseline (1: plain AdamW)
NO_SCALE = (("scale", "none"),)
# table name -> the RunSpec settings of the variant (label, lr_mult, extra)
VARIANTS: dict[str, dict[str, Any]] = {
    "AdamW": {"label": "adamw"},
    "AdamW + rect. scale (no clip)": {"label": "adamw", "lr_mult": "shape"},
    "SPECTRA-AdamW (clip + scale)": {"label": "spectra-adamw"},
    "SPECTRA-AdamW, scale='none' (clip only)": {"label": "spectra-adamw", "extra": NO_SCALE},
}
TUNED = "AdamW, tuned emb/head lr multiplier"
STABILITY_VARIANTS = ("AdamW", "SPECTRA-AdamW (clip + scale)", "SPECTRA-AdamW, scale='none' (clip only)")


def budgets(base: str) -> dict[str, Budget]:
    """The study's budgets for a base budget name: 'base', 'wide' and 'stability'."""
    if f"{base}-wide" not in BUDGETS:
        raise ValueError(f"the clip-vs-scale study runs on budget 'reduced' or 'quick', not {base!r}")
    return {"base": BUDGETS[base], "wide": BUDGETS[f"{base}-wide"], "stability": BUDGETS[f"{base}-stability"]}


def spec(variant: str, lr: float, seed: int, **kw: Any) -> RunSpec:
    return RunSpec(lr=lr, seed=seed, **{**VARIANTS[variant], **kw})


def lrs_centre_first(budget: Budget) -> list[float]:
    grid = lr_grid("adamw", budget)
    centre = math.sqrt(grid[0] * grid[-1])
    return sorted(grid, key=lambda lr: (abs(math.log(lr / centre)), lr))


def core(budget: Budget) -> list[RunSpec]:
    """The four variants at seed 0 over the lr grid, all four at each lr, the centre lr first."""
    return [spec(v, lr, budget.seeds[0]) for lr in lrs_centre_first(budget) for v in VARIANTS]


def multiplier_grid(budget: Budget) -> list[RunSpec]:
    """AdamW with the embedding/head multipliers other than 1, seed 0, over the lr grid."""
    return [spec("AdamW", lr, budget.seeds[0], lr_mult=m) for lr in lrs_centre_first(budget)
            for m in MULTIPLIERS if m != 1]


def candidates(budget: Budget, variant: str) -> list[RunSpec]:
    """The seed-0 runs a variant is tuned over (the tuned AdamW baseline: every multiplier, 1 included)."""
    if variant == TUNED:
        return [spec("AdamW", lr, budget.seeds[0]) for lr in lr_grid("adamw", budget)] + multiplier_grid(budget)
    return [spec(variant, lr, budget.seeds[0]) for lr in lr_grid("adamw", budget)]


def best(records: dict[str, dict[str, Any]], budget: Budget, variant: str) -> RunSpec | None:
    """The candidate with the lowest seed-0 final validation loss among finished, non-diverged runs."""
    done = [(records[s.name]["final_val_loss"], i, s) for i, s in enumerate(candidates(budget, variant))
            if s.name in records and not records[s.name]["diverged"]]
    return min(done)[2] if done else None


def seeds_at_best(records: dict[str, dict[str, Any]], budget: Budget) -> list[RunSpec]:
    out = []
    for variant in (*VARIANTS, TUNED):
        top = best(records, budget, variant)
        if top is not None:
            out += [replace(top, seed=seed) for seed in budget.seeds[1:]]
    return out


def c_sweep(records: dict[str, dict[str, Any]], budget: Budget) -> list[RunSpec]:
    top = best(records, budget, "SPECTRA-AdamW (clip + scale)")
    if top is None:
        return []
    return [replace(top, clip_c=None if c == 10 else c) for c in budget.c_values]


def stability_grid(budget: Budget) -> list[float]:
    """The top lr of the grid and ``stability_points`` more, sqrt(10) apart."""
    return [lr_grid("adamw", budget)[-1], *stability_lrs("adamw", budget)]


def stability(budget: Budget) -> list[RunSpec]:
    """Every (variant, lr) at seed 0 first, then the other seeds; no global gradient clipping."""
    return [spec(v, lr, seed, grad_clip=0.0) for seed in budget.seeds for lr in stability_grid(budget)
            for v in STABILITY_VARIANTS]


def plan_sizes(base: str) -> dict[str, int]:
    """Runs per experiment when every phase is planned (seeds and the c sweep: at most this many)."""
    b = budgets(base)
    seeds = (len(VARIANTS) + 1) * (len(b["base"].seeds) - 1)
    per_width = len(core(b["base"])) + len(multiplier_grid(b["base"])) + seeds
    return {"1": per_width, "2": per_width, "4": len(b["wide"].c_values) - 1, "3": len(stability(b["stability"]))}


def run_study(base: str, out: Path, exps: set[int], cache_dir: str | None, workers: int = 1) -> None:
    """Train the chosen experiments' runs in the order of the module docstring, skipping finished ones."""
    b = {k: replace(v, workers=workers) for k, v in budgets(base).items()}
    folders = {k: out / v.name for k, v in b.items()}

    def train(key: str, specs: list[RunSpec]) -> dict[str, dict[str, Any]]:
        return run_all(specs, b[key], folders[key], cache_dir)

    if 1 in exps:
        train("base", core(b["base"]))
        records = train("base", multiplier_grid(b["base"]))
        train("base", seeds_at_best(records, b["base"]))
    if exps & {2, 4}:
        records = train("wide", core(b["wide"]) if 2 in exps else
                        [s for s in core(b["wide"]) if s.label == "spectra-adamw" and not s.extra])
        if 2 in exps:
            records = train("wide", multiplier_grid(b["wide"]))
            records = train("wide", seeds_at_best(records, b["wide"]))
        if 4 in exps:
            train("wide", c_sweep(records, b["wide"]))
    if 3 in exps:
        train("stability", stability(b["stability"]))
