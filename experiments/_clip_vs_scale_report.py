"""Tables of the clip-vs-scale study (``_clip_vs_scale``) from OUT/<budget>/results.jsonl: OUT/summary.md.

Conventions as in ``_analysis``: best setting = lowest seed-0 final validation loss among non-diverged runs;
a ± b = mean ± sample standard deviation over seeds; "diverged" and "spike" as defined there. A table whose runs
have not finished says so ("not run yet"), so a partial study gives a partial report.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from _analysis import load, mean_std, table
from _clip_vs_scale import (
    MULTIPLIERS,
    STABILITY_VARIANTS,
    TUNED,
    VARIANTS,
    best,
    budgets,
    plan_sizes,
    spec,
    stability_grid,
)
from _runner import RESULTS, SPIKE_JUMP
from _study import EMBED_HEAD, Budget, RunSpec, lr_grid

Records = dict[str, dict[str, Any]]
NOT_RUN = "(not run yet)"


def records_of(folder: Path) -> Records:
    return {r["name"]: r for r in load(folder)} if (folder / RESULTS).is_file() else {}


def cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "—"
    if r["diverged"]:
        return "diverged"
    return f"{r['final_val_loss']:.3f}" + (f", {r['spikes']} spikes" if r["spikes"] else "")


def describe(s: RunSpec) -> str:
    mult = "" if s.lr_mult in (None, "shape") else f", emb/head ×{s.lr_mult:g}"
    return f"lr {s.lr:.3g}{mult}"


# ---- experiments 1 and 2 -----------------------------------------------------------------------------------------
def sweep_table(recs: Records, budget: Budget) -> str:
    grid = lr_grid("adamw", budget)
    seed = budget.seeds[0]
    rows = []
    for variant in VARIANTS:
        rows.append([variant] + [cell(recs.get(spec(variant, lr, seed).name)) for lr in grid])
        if variant == "AdamW":
            rows += [[f"AdamW, emb/head lr ×{m:g}"] + [cell(recs.get(spec(variant, lr, seed, lr_mult=m).name))
                                                     for lr in grid] for m in MULTIPLIERS if m != 1]
    if all(c == "—" for row in rows for c in row[1:]):
        return NOT_RUN
    return f"Seed {seed}, final validation loss:\n\n" + table(["variant"] + [f"lr {lr:.3g}" for lr in grid], rows)


def seed_losses(recs: Records, budget: Budget, top: RunSpec) -> list[dict[str, Any]]:
    return [recs[n] for n in (replace(top, seed=s).name for s in budget.seeds) if n in recs]


def seeds_table(recs: Records, budget: Budget) -> str:
    """Each variant at its best seed-0 setting over every seed run there, against the tuned AdamW baseline."""
    found = {}
    for variant in (TUNED, *VARIANTS):
        top = best(recs, budget, variant)
        if top is not None:
            rs = seed_losses(recs, budget, top)
            found[variant] = (top, rs, [r["final_val_loss"] for r in rs if not r["diverged"]])
    reference = found.get(TUNED, (None, None, []))[2]
    rows = []
    for variant in (*VARIANTS, TUNED):
        if variant not in found:
            rows.append([variant, "not run yet", "—", "—", "—", "—"])
            continue
        top, rs, vals = found[variant]
        delta = f"{statistics.mean(vals) - statistics.mean(reference):+.3f}" if vals and reference else "—"
        rows.append([variant, describe(top), mean_std(vals), f"{min(vals):.3f} … {max(vals):.3f}" if vals else "—",
                     f"{len(rs) - len(vals)} of {len(rs)}", delta])
    return table(["variant", "best setting (seed 0)", "final val loss, seeds at best", "min … max", "diverged",
                  "− tuned AdamW (mean)"], rows)


def _kind(name: str) -> str:
    """embed, lm_head, attention (q, k, v, o of every block) or MLP (gate, up, down of every block)."""
    parts = name.removesuffix(".weight").split(".")
    return {"attn": "attention", "mlp": "MLP"}.get(parts[2], parts[2]) if parts[0] == "layers" else parts[0]


def clipped_table(widths: list[tuple[Records, Budget]]) -> str:
    """SPECTRA's clipped fraction and sigma_max(U)/c_t per matrix kind, at each variant's best lr (all seeds,
    every diagnostics step), one row per (budget, variant, matrix kind). sigma_max is the clip method's estimate
    (an upper bound for the iterative methods); c_t the threshold of that step (warmup rule included)."""
    rows = []
    for recs, budget in widths:
        for variant in ("SPECTRA-AdamW (clip + scale)", "SPECTRA-AdamW, scale='none' (clip only)"):
            top = best(recs, budget, variant)
            if top is None:
                continue
            by_kind: dict[str, dict[str, list[float]]] = {}
            for r in seed_losses(recs, budget, top):
                for entry in r.get("optimizer_stats", []):
                    c = entry.get("clip_c/group0")
                    for key, value in entry.items():
                        if not key.startswith("clipped_fraction/"):
                            continue
                        name = key.split("/", 1)[1]
                        if not name.endswith(".weight") or "norm" in name:
                            continue
                        kind = by_kind.setdefault(_kind(name), {"frac": [], "ratio": []})
                        kind["frac"].append(value)
                        sigma = entry.get(f"sigma_max/{name}")
                        if sigma is not None and c:
                            kind["ratio"].append(sigma / c)
            for kind, v in by_kind.items():
                if not v["frac"]:
                    continue
                rows.append([f"d_model {budget.d_model}", variant, describe(top), kind, str(len(v["frac"])),
                             f"{statistics.mean(v['frac']):.3f}", f"{min(v['frac']):.3f} … {max(v['frac']):.3f}",
                             f"{statistics.median(v['ratio']):.2f}" if v["ratio"] else "—",
                             f"{sum(x > 1 for x in v['ratio']) / len(v['ratio']):.0%}" if v["ratio"] else "—"])
    if not rows:
        return NOT_RUN
    return table(["width", "variant", "at", "matrices", "samples (steps × seeds × matrices)", "mean clipped fraction",
                  "min … max", "median σ_max(U)/c_t", "share σ_max(U) > c_t"], rows)


# ---- experiment 4 ------------------------------------------------------------------------------------------------
def c_table(recs: Records, budget: Budget) -> str:
    top = best(recs, budget, "SPECTRA-AdamW (clip + scale)")
    if top is None:
        return NOT_RUN
    ref = recs.get(top.name)
    rows = []
    for c in budget.c_values:
        r = recs.get(replace(top, clip_c=None if c == 10 else c).name)
        delta = (f"{r['final_val_loss'] - ref['final_val_loss']:+.3f}"
                 if r is not None and not r["diverged"] and ref is not None else "—")
        rows.append([f"{c:g}" + (" (default)" if c == 10 else ""), cell(r) if r is not None else "not run yet",
                     delta])
    return f"SPECTRA-AdamW at {describe(top)}, seed {top.seed}:\n\n" + table(["c", "final val loss", "vs c = 10"],
                                                                              rows)


# ---- experiment 3 ------------------------------------------------------------------------------------------------
def peak(r: dict[str, Any]) -> float:
    finite = [loss for _, loss in r["train_curve"] if math.isfinite(loss)]
    return max(finite) if finite else math.nan


def stability_table(recs: Records, budget: Budget) -> str:
    rows = []
    for variant in STABILITY_VARIANTS:
        for lr in stability_grid(budget):
            rs = [recs[n] for n in (spec(variant, lr, s, grad_clip=0.0).name for s in budget.seeds) if n in recs]
            if not rs:
                rows.append([variant, f"{lr:.3g}", "0", "—", "—", "—", "—"])
                continue
            ok = [r for r in rs if not r["diverged"]]
            rows.append([variant, f"{lr:.3g}", str(len(rs)), f"{len(rs) - len(ok)}",
                         f"{sum(r['spikes'] for r in ok)}" + (f" ({', '.join(str(r['spikes']) for r in ok)})"
                                                             if len(ok) > 1 else ""),
                         mean_std([r["final_val_loss"] for r in ok]),
                         f"{max(peak(r) for r in rs):.1f}"])
    if all(row[2] == "0" for row in rows):
        return NOT_RUN
    return table(["variant", "peak lr", "seeds run", "diverged", "spikes (per seed)", "final val loss (not diverged)",
                  "highest logged train loss"], rows)


# ---- the report --------------------------------------------------------------------------------------------------
def write_report(out: Path, base: str | None = None) -> Path:
    """Write out/summary.md from the records under out; return its path."""
    if base is None:  # the base budget whose folders are there
        found = [name for name in ("reduced", "quick")
                 if any((out / f"{name}{suffix}").is_dir() for suffix in ("", "-wide", "-stability"))]
        base = found[0] if found else "reduced"
    b = budgets(base)
    recs = {k: records_of(out / v.name) for k, v in b.items()}
    if not any(recs.values()):
        raise ValueError(f"no results under {out}: run `reproduce.py run --study clip-vs-scale --out {out}` first")
    sizes = plan_sizes(base)
    done = {k: len(v) for k, v in recs.items()}
    head = [f"# Clip or step-size split? ({sum(done.values())} runs of at most {sum(sizes.values())} planned)",
            "Runs finished per budget: " + ", ".join(f"{b[k].name} {n}" for k, n in done.items())
            + f"; spike = 10-step mean train loss > running min + {SPIKE_JUMP} nats; "
            + f"the embedding and head are {', '.join(EMBED_HEAD)}."]
    for key, title in (("base", "1"), ("wide", "2")):
        budget = b[key]
        params = next(iter(recs[key].values()))["parameters"] if recs[key] else None
        head += [f"## {title}. Budget '{budget.name}': d_model {budget.d_model}, {budget.n_layers} blocks, "
                 f"{budget.steps} steps × {budget.tokens_per_step} tokens"
                 + (f", {params:,} parameters" if params else ""),
                 f"### {title}a. lr sweep", sweep_table(recs[key], budget),
                 f"### {title}b. Seeds at each best setting", seeds_table(recs[key], budget)]
    head += ["## 2c. How much SPECTRA clips (optimizer statistics at the diagnostics steps)",
             clipped_table([(recs[k], b[k]) for k in ("base", "wide")]),
             f"## 4. Threshold c at d_model {b['wide'].d_model}", c_table(recs["wide"], b["wide"]),
             f"## 3. Stability: no warmup, no global clipping, {b['stability'].steps} steps "
             f"(budget '{b['stability'].name}')", stability_table(recs["stability"], b["stability"])]
    summary = out / "summary.md"
    summary.write_text("\n\n".join(head) + "\n")
    return summary

