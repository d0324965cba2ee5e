"""Tables and figures of the reproduction study from DIR/results.jsonl (written by ``_runner``).

Conventions: "best lr" = the grid lr with the lowest seed-0 final validation loss among non-diverged runs;
mean +- sample standard deviation over seeds; a run "diverged" when it raised on non-finite gradients, its loss
became non-finite, or its final validation loss ended above the initial one; a "spike" is a logged (10-step mean)
training loss more than ``_runner.SPIKE_JUMP`` nats above the run's running minimum, after warmup.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from _runner import RESULTS, SPIKE_JUMP
from _study import BASE_VARIANTS, BUDGETS, SPECTRAL_OPTIMIZERS, lr_grid, stability_lrs

Record = dict[str, Any]
_SPIKE_FACTOR = 10.0


# ---- selection -------------------------------------------------------------------------------------------------
def load(out: Path) -> list[Record]:
    path = out / RESULTS
    if not path.is_file():
        raise ValueError(f"{path} does not exist: run `reproduce.py run --out {out}` first")
    by_name = {}  # a run recorded twice (two study processes) counts once: the last record
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_name[record["name"]] = record
    return list(by_name.values())


def _plain_extra(r: Record) -> bool:
    """No optimizer argument beyond experiment 6's adamw_lr (so not the scale ablation)."""
    return all(key == "adamw_lr" for key, _ in r["spec"]["extra"])


def _is_default(r: Record) -> bool:
    s = r["spec"]
    return s["clip_c"] is None and s["pre_clip"] is None and s["grad_clip"] == 1.0 and _plain_extra(r)


def runs(records: list[Record], label: str, *, lr: float | None = None, seed: int | None = None,
         default: bool = True) -> list[Record]:
    out = [r for r in records if r["spec"]["label"] == label and (not default or _is_default(r))]
    if lr is not None:
        out = [r for r in out if math.isclose(r["spec"]["lr"], lr, rel_tol=1e-6)]
    if seed is not None:
        out = [r for r in out if r["spec"]["seed"] == seed]
    return sorted(out, key=lambda r: (r["spec"]["lr"], r["spec"]["seed"]))


def first_seed(records: list[Record]) -> int:
    return min((r["spec"]["seed"] for r in records), default=0)


def sweep(records: list[Record], label: str) -> list[Record]:
    """The seed-0 runs of the label's lr grid (default clipping settings)."""
    grid = lr_grid(label, BUDGETS[records[0]["budget"]]) if records else []
    return [r for r in runs(records, label, seed=first_seed(records))
            if any(math.isclose(r["spec"]["lr"], lr, rel_tol=1e-6) for lr in grid)]


def best_lr(records: list[Record], label: str) -> float | None:
    ok = [r for r in sweep(records, label) if not r["diverged"]]
    return min(ok, key=lambda r: r["final_val_loss"])["spec"]["lr"] if ok else None


def losses(rs: Iterable[Record]) -> list[float]:
    return [r["final_val_loss"] for r in rs if not r["diverged"]]


# ---- formatting ------------------------------------------------------------------------------------------------
def mean_std(values: list[float], digits: int = 3) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (n=1)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(r: Record | None) -> str:
    if r is None:
        return "—"
    if r["diverged"]:
        return f"{r['spec']['lr']:.3g}: diverged"
    spikes = f", {r['spikes']} spikes" if r["spikes"] else ""
    return f"{r['spec']['lr']:.3g}: {r['final_val_loss']:.3f}{spikes}"


def present(records: list[Record], labels: Iterable[str]) -> list[str]:
    have = {r["spec"]["label"] for r in records}
    return [label for label in labels if label in have]


def _pairs_present(records: list[Record]) -> list[str]:
    return present(records, [lab for base in BASE_VARIANTS for lab in (base, f"spectra-{base}")])


# ---- experiments 1, 2, 6: lr sweeps, seeds, stability -------------------------------------------------------------
def sweep_table(records: list[Record], labels: list[str]) -> str:
    width = max((len(sweep(records, lab)) for lab in labels), default=0)
    rows = []
    for label in labels:
        cells = [_cell(r) for r in sweep(records, label)]
        rows.append([label] + cells + ["—"] * (width - len(cells)))
    return table(["optimizer"] + [f"lr {i + 1}: final val loss" for i in range(width)], rows)


def seeds_table(records: list[Record], labels: list[str], paired: bool) -> str:
    rows = []
    for label in labels:
        lr = best_lr(records, label)
        rs = runs(records, label, lr=lr) if lr is not None else []
        vals = losses(rs)
        row = [label, f"{lr:.3g}" if lr is not None else "all diverged", mean_std(vals),
               f"{min(vals):.3f} … {max(vals):.3f}" if vals else "—",
               f"{statistics.mean(r['tokens_per_s'] for r in rs if not r['diverged']):,.0f}" if vals else "—"]
        if paired:
            base = label.removeprefix("spectra-")
            blr = best_lr(records, base)
            bvals = losses(runs(records, base, lr=blr)) if blr is not None else []
            row.append(f"{statistics.mean(vals) - statistics.mean(bvals):+.3f}"
                       if label != base and vals and bvals else "")
        rows.append(row)
    header = ["optimizer", "best lr", "final val loss at best lr", "min … max", "tokens/s (busy shared CPU)"]
    return table(header + (["SPECTRA − base (mean)"] if paired else []), rows)


def stability_runs(records: list[Record], label: str) -> list[Record]:
    """The seed-0 grid runs plus experiment 2's runs above the grid."""
    budget = BUDGETS[records[0]["budget"]] if records else None
    extra = stability_lrs(label, budget) if budget and label not in SPECTRAL_OPTIMIZERS else []
    above = [r for r in runs(records, label, seed=first_seed(records))
             if any(math.isclose(r["spec"]["lr"], lr, rel_tol=1e-6) for lr in extra)]
    return sweep(records, label) + above


def stability_table(records: list[Record], labels: list[str]) -> str:
    rows = []
    for label in labels:
        rs = stability_runs(records, label)
        if not rs:
            continue
        stable = [r["spec"]["lr"] for r in rs if not r["diverged"]]
        quiet = [r["spec"]["lr"] for r in rs if not r["diverged"] and r["spikes"] == 0]
        top = rs[-1]
        rows.append([label, f"{max(stable):.3g}" if stable else "none", f"{max(quiet):.3g}" if quiet else "none",
                     ", ".join(f"{r['spec']['lr']:.3g}" for r in rs if r["diverged"]) or "none",
                     f"{sum(r['spikes'] for r in rs if not r['diverged'])}",
                     _cell(top), _peak(rs[-2]) if len(rs) > 1 else "—", _peak(top)])
    return table(["optimizer", "largest lr not diverged", "largest lr without spikes", "diverged at",
                  "spikes (all runs)", "largest lr: final val loss", "peak train loss, 2nd largest lr",
                  "peak train loss, largest lr"], rows)


def _peak(r: Record) -> str:
    """Highest logged (10-step mean) training loss of a run and the step it was logged at."""
    finite = [(loss, step) for step, loss in r["train_curve"] if math.isfinite(loss)]
    if not finite:
        return "—"
    loss, step = max(finite)
    return f"{loss:.1f} (step {step})"


# ---- experiment 3: weight norms ----------------------------------------------------------------------------------
def _norm_summary(r: Record) -> dict[str, float]:
    w = r["weights"]
    hidden = [v["spectral"] for k, v in w.items() if k.startswith("layers.")]
    return {"hidden_max": max(hidden) if hidden else math.nan,
            "hidden_mean": statistics.mean(hidden) if hidden else math.nan,
            "embed": w.get("embed.weight", {}).get("spectral", math.nan),
            "head": w.get("lm_head.weight", {}).get("spectral", math.nan),
            "frobenius": math.sqrt(sum(v["frobenius"] ** 2 for v in w.values()))}


def _norm_row(label: str, where: str, rs: list[Record]) -> list[str] | None:
    rs = [r for r in rs if not r["diverged"]]
    if not rs:
        return None
    summaries = [_norm_summary(r) for r in rs]
    cells = [statistics.mean(s[k] for s in summaries) for k in ("hidden_max", "hidden_mean", "embed", "head",
                                                                "frobenius")]
    return [label, where, str(len(rs))] + [f"{c:.2f}" for c in cells]


def norms_table(records: list[Record]) -> str:
    rows = []
    for label in _pairs_present(records):
        base = label.removeprefix("spectra-")
        lr = best_lr(records, label)
        if lr is not None:
            rows.append(_norm_row(label, f"own best lr {lr:.3g}", runs(records, label, lr=lr)))
        blr = best_lr(records, base)
        if label != base and blr is not None:
            rows.append(_norm_row(label, f"base's best lr {blr:.3g}", runs(records, label, lr=blr,
                                                                           seed=first_seed(records))))
    return table(["optimizer", "at", "runs", "max ||W||₂ (blocks)", "mean ||W||₂ (blocks)", "||embed||₂",
                  "||head||₂", "||all W||_F"], [r for r in rows if r is not None])


# ---- experiment 4: gradient spectra ------------------------------------------------------------------------------
def gaussian_ratio(shape: tuple[int, int], trials: int = 8) -> float:
    """sigma_1 / median sigma of an i.i.d. Gaussian matrix of this shape (the no-spike reference)."""
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(trials):
        s = torch.linalg.svdvals(torch.randn(shape, generator=gen, dtype=torch.float64))
        ratios.append(float(s[0] / s.median()))
    return statistics.mean(ratios)


def spectra_rows(rs: list[Record]) -> list[dict[str, Any]]:
    return [e for r in rs if not r["diverged"] for e in r["grad_spectra"]]


def _kind(name: str) -> str:
    parts = name.removesuffix(".weight").split(".")
    return ".".join(parts[2:]) if parts[0] == "layers" else parts[0]


def spectra_table(records: list[Record], shapes: dict[str, tuple[int, int]]) -> str:
    rows = []
    for label in _pairs_present(records):
        lr = best_lr(records, label)
        entries = spectra_rows(runs(records, label, lr=lr)) if lr is not None else []
        if not entries:
            continue
        top1 = [e["top"][0] for e in entries]
        rows.append([label, f"{lr:.3g}", str(len(entries)), f"{statistics.median(top1):.1f}",
                     f"{max(top1):.1f}", f"{sum(t >= _SPIKE_FACTOR for t in top1) / len(top1):.0%}",
                     f"{statistics.mean(e['n_ge10'] for e in entries):.2f}",
                     f"{statistics.mean(e['rank'] for e in entries):.0f}"])
    out = table(["optimizer", "lr", "matrix × step samples", "median σ₁/median σ", "max σ₁/median σ",
                 "share with σ₁ ≥ 10× median", "mean # of σᵢ ≥ 10× median", "σ kept per matrix"], rows)
    kinds: dict[str, list[dict[str, Any]]] = {}
    label = "adamw" if "adamw" in _pairs_present(records) else (_pairs_present(records) or [None])[0]
    if label is not None and best_lr(records, label) is not None:
        for e in spectra_rows(runs(records, label, lr=best_lr(records, label))):
            kinds.setdefault(_kind(e["name"]), []).append(e)
    krows = []
    for kind, es in kinds.items():
        names = sorted({e["name"] for e in es})
        shape = shapes.get(names[0])
        top1 = [e["top"][0] for e in es]
        krows.append([kind, "×".join(map(str, shape)) if shape else "?", str(len(es)),
                      f"{statistics.median(top1):.1f}", f"{statistics.median(e['top'][-1] for e in es):.1f}",
                      f"{sum(t >= _SPIKE_FACTOR for t in top1) / len(top1):.0%}",
                      f"{gaussian_ratio(shape):.1f}" if shape else "?"])
    if krows:
        out += (f"\n\nBy matrix ({label}, its best lr, all seeds and diagnostics steps; the Gaussian column is "
                "σ₁/median of an i.i.d. Gaussian matrix of the same shape, the no-spike reference):\n\n")
        out += table(["matrix", "shape", "samples", "median σ₁/median σ", "median σ₃/median σ",
                      "share σ₁ ≥ 10× median", "Gaussian σ₁/median σ"], krows)
    return out


# ---- experiments 5 and 7 -----------------------------------------------------------------------------------------
def clipping_table(records: list[Record]) -> str:
    lr = best_lr(records, "adamw")
    if lr is None:
        return "(no AdamW runs)"
    lrs = sorted({float(f'{r["spec"]["lr"]:.3g}') for r in records if r["spec"]["label"] == "adamw"
                  and (r["spec"]["pre_clip"] is not None or r["spec"]["grad_clip"] != 1.0)})
    variants = [("AdamW, global clip 1.0 (default control)", "adamw", dict(grad_clip=1.0, pre_clip=None)),
                ("AdamW, no clipping", "adamw", dict(grad_clip=0.0, pre_clip=None)),
                ("AdamW, global clip 0.1", "adamw", dict(grad_clip=0.1, pre_clip=None)),
                ("AdamW + spectral pre-clip 0.1 (+ global 1.0)", "adamw", dict(grad_clip=1.0, pre_clip=0.1)),
                ("SPECTRA-AdamW post-clip c=10 (+ global 1.0)", "spectra-adamw", dict(grad_clip=1.0, pre_clip=None))]
    rows = []
    for title, label, kw in variants:
        row = [title]
        for at in lrs:
            rs = [r for r in records if r["spec"]["label"] == label and r["spec"]["clip_c"] is None and _plain_extra(r)
                  and r["spec"]["seed"] == first_seed(records)  # one seed for every variant (exp 1: noise level)
                  and math.isclose(r["spec"]["lr"], at, rel_tol=1e-3)  # the name's precision (3 digits)
                  and all(r["spec"][k] == v for k, v in kw.items())]
            vals = losses(rs)
            div = sum(r["diverged"] for r in rs)
            spikes = sum(r["spikes"] for r in rs if not r["diverged"])
            row.append(mean_std(vals) + (f", {div} diverged" if div else "") + (f", {spikes} spikes" if spikes else ""))
        rows.append(row)
    header = [f"lr {at:.3g}" + (" (AdamW best)" if math.isclose(at, lr, rel_tol=1e-3) else "") for at in lrs]
    return table(["variant"] + header, rows)


def c_table(records: list[Record]) -> str:
    rs = [r for r in records if r["spec"]["label"] == "spectra-adamw" and r["spec"]["pre_clip"] is None
          and r["spec"]["grad_clip"] == 1.0 and r["spec"]["seed"] == first_seed(records) and _plain_extra(r)]
    lr = best_lr(records, "spectra-adamw")
    rs = [r for r in rs if lr is not None and math.isclose(r["spec"]["lr"], lr, rel_tol=1e-6)]
    by_c = {(r["spec"]["clip_c"] or 10.0): r for r in rs}
    if len(by_c) < 2:
        return "(no threshold sweep)"
    ref = by_c.get(10.0)
    rows = [[f"{c:g}" + (" (default)" if c == 10 else ""), _cell(by_c[c]).split(": ", 1)[1],
             f"{by_c[c]['final_val_loss'] - ref['final_val_loss']:+.3f}" if ref and not by_c[c]["diverged"] else "—"]
            for c in sorted(by_c)]
    return f"SPECTRA-AdamW at lr {lr:.3g}, seed {first_seed(records)}:\n\n" + table(
        ["c", "final val loss", "vs c = 10"], rows)


def scale_table(records: list[Record]) -> str:
    """SPECTRA-AdamW with and without its rectangular scale, next to AdamW, at the lrs the ablation ran."""
    ablation = [r for r in records if r["spec"]["label"] == "spectra-adamw" and ("scale", "none") in
                [tuple(x) for x in r["spec"]["extra"]]]
    if not ablation:
        return "(no scale ablation)"
    rows = []
    seed = first_seed(records)
    for lr in sorted({r["spec"]["lr"] for r in ablation}):
        cells = [_cell(next(iter(runs(records, "adamw", lr=lr, seed=seed)), None)),
                 _cell(next(iter(runs(records, "spectra-adamw", lr=lr, seed=seed)), None)),
                 _cell(next((r for r in ablation if math.isclose(r["spec"]["lr"], lr) and r["spec"]["seed"] == seed),
                            None))]
        rows.append([f"{lr:.3g}"] + [c.split(": ", 1)[-1] for c in cells])
    return f"Seed {seed}, final val loss:\n\n" + table(
        ["lr", "AdamW", "SPECTRA-AdamW (scale sqrt(max(1, rows/cols)), default)", "SPECTRA-AdamW, scale='none'"],
        rows)


# ---- figures -----------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_sweeps(records: list[Record], path: Path) -> None:
    plt = _plt()
    groups = [[b, f"spectra-{b}"] for b in BASE_VARIANTS] + [list(SPECTRAL_OPTIMIZERS) + ["adamw"]]
    groups = [present(records, g) for g in groups]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.0), squeeze=False)
    finite = [r["final_val_loss"] for r in records if not r["diverged"]]
    top = max(finite) if finite else 1.0
    for ax, labels in zip(axes[0], groups):
        for label in labels:
            rs = stability_runs(records, label)
            line, = ax.plot([r["spec"]["lr"] for r in rs if not r["diverged"]], losses(rs), "o-", label=label, ms=4)
            bad = [r["spec"]["lr"] for r in rs if r["diverged"]]
            ax.plot(bad, [top] * len(bad), "x", color=line.get_color(), ms=8)
        ax.set_xscale("log")
        ax.set_xlabel("peak lr")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final val loss (x: diverged)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_curves(records: list[Record], path: Path) -> None:
    plt = _plt()
    bases = [b for b in BASE_VARIANTS if present(records, [b, f"spectra-{b}"]) == [b, f"spectra-{b}"]][:2]
    if not bases:
        return
    fig, axes = plt.subplots(len(bases), 2, figsize=(8, 2.8 * len(bases)), squeeze=False)
    for row, base in zip(axes, bases):
        grid = [r["spec"]["lr"] for r in stability_runs(records, base)]
        blr = best_lr(records, base)
        for ax, lr, title in ((row[0], blr, "base's best lr"), (row[1], max(grid) if grid else None, "largest lr")):
            if lr is None:
                continue
            for label in (base, f"spectra-{base}"):
                for r in runs(records, label, lr=lr, seed=first_seed(records)):
                    steps, vals = zip(*r["train_curve"]) if r["train_curve"] else ((), ())
                    ax.plot(steps, vals, label=label + (" (diverged)" if r["diverged"] else ""))
            ax.set_title(f"{base}: {title} {lr:.3g}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("train loss")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_norms(records: list[Record], path: Path) -> None:
    plt = _plt()
    bases = [b for b in BASE_VARIANTS if present(records, [b, f"spectra-{b}"]) == [b, f"spectra-{b}"]]
    if not bases:
        return
    fig, axes = plt.subplots(1, len(bases), figsize=(4.2 * len(bases), 3.2), squeeze=False)
    for ax, base in zip(axes[0], bases):
        lr = best_lr(records, base)
        for i, label in enumerate((base, f"spectra-{base}")):
            rs = [r for r in runs(records, label, lr=lr, seed=first_seed(records)) if not r["diverged"]]
            if not rs:
                continue
            names = list(rs[0]["weights"])
            ax.bar([j + 0.4 * i for j in range(len(names))], [rs[0]["weights"][n]["spectral"] for n in names],
                   width=0.4, label=label)
            ax.set_xticks([j + 0.2 for j in range(len(names))])
            ax.set_xticklabels([n.removesuffix(".weight").replace("layers.", "L") for n in names], rotation=90,
                               fontsize=6)
        ax.set_yscale("log")
        ax.set_ylabel("||W||₂ after training")
        ax.set_title(f"{base} vs SPECTRA at lr {lr:.3g}" if lr else base, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_spectra(records: list[Record], out: Path, path: Path) -> None:
    """Left: sigma_i / median of every matrix's raw gradient mid-run (full spectra from the run folder's
    diagnostics, when kept). Right: histogram of sigma_1 / median over all matrices and diagnostics steps."""
    plt = _plt()
    import numpy as np

    labels = present(records, ["adamw", "spectra-adamw"]) or _pairs_present(records)[:2]
    if not labels:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    lr = best_lr(records, labels[0])
    r0 = next(iter(runs(records, labels[0], lr=lr, seed=first_seed(records))), None) if lr is not None else None
    diag_path = out / "runs" / r0["name"] / "diagnostics.jsonl" if r0 is not None else None
    if diag_path is not None and diag_path.is_file():
        diags = [json.loads(line) for line in diag_path.read_text().splitlines() if line.strip()]
        record = diags[len(diags) // 2]
        for name, s in record["grad_spectra"].items():
            ratio = record["layers"][name].get("grad_spike_ratio")
            if ratio:
                median = s[0] / ratio
                axes[0].plot(range(1, len(s) + 1), [x / median for x in s], lw=1,
                             label=name.removesuffix(".weight").replace("layers.", "L"))
        axes[0].set_title(f"{labels[0]} (lr {lr:.3g}): raw-gradient σᵢ / median σ, step {record['step']}", fontsize=8)
        axes[0].axhline(_SPIKE_FACTOR, color="gray", ls="--", lw=0.8)
        axes[0].set_xlabel("i")
        axes[0].set_yscale("log")
        axes[0].legend(fontsize=4.5, ncol=2)
    top1 = {label: [e["top"][0] for e in spectra_rows(runs(records, label, lr=best_lr(records, label)))]
            for label in labels}
    values = [v for vs in top1.values() for v in vs]
    if values:
        bins = np.logspace(0, math.log10(max(values)) + 0.1, 30)
        for label, vs in top1.items():
            axes[1].hist(vs, bins=bins, alpha=0.5, label=f"{label} (its best lr)")
        axes[1].set_xscale("log")
    axes[1].axvline(_SPIKE_FACTOR, color="gray", ls="--", lw=0.8, label="10× median")
    axes[1].set_xlabel("σ₁ / median σ (all matrices and diagnostics steps)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---- the report --------------------------------------------------------------------------------------------------
def _shapes(out: Path, records: list[Record]) -> dict[str, tuple[int, int]]:
    """Parameter shapes of the study's model (from the budget recorded in the results)."""
    from spectrakit.train.model import ModelConfig, Transformer

    budget = BUDGETS.get(records[0]["budget"]) if records else None
    if budget is None:
        return {}
    cfg = ModelConfig(vocab_size=budget.vocab_size, d_model=budget.d_model, n_layers=budget.n_layers,
                      n_heads=budget.n_heads, seq_len=budget.seq_len)
    with torch.device("meta"):
        model = Transformer(cfg)
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.ndim == 2}


def write_report(out: Path, figures: Path) -> Path:
    """Write out/summary.md (all tables) and the figures; return the summary's path."""
    records = load(out)
    if not records:
        raise ValueError(f"{out / RESULTS} holds no runs")
    figures.mkdir(parents=True, exist_ok=True)
    paths = {"sweeps": figures / "lr_sweeps.png", "curves": figures / "loss_curves.png",
             "norms": figures / "weight_norms.png", "spectra": figures / "grad_spectra.png"}
    fig_sweeps(records, paths["sweeps"])
    fig_curves(records, paths["curves"])
    fig_norms(records, paths["norms"])
    fig_spectra(records, out, paths["spectra"])
    r0 = records[0]
    budget = BUDGETS.get(r0["budget"])
    pairs = _pairs_present(records)
    others = present(records, list(SPECTRAL_OPTIMIZERS))
    link = {k: os.path.relpath(p, out) for k, p in paths.items() if p.exists()}
    parts = [
        f"# Reproduction study: {len(records)} runs, budget '{r0['budget']}'",
        f"{r0['parameters']:,} parameters; {r0['tokens']:,} training tokens per run "
        + (f"({budget.steps} steps × {budget.tokens_per_step} tokens)" if budget else "")
        + f"; spike = 10-step mean train loss > running min + {SPIKE_JUMP} nats.",
        "## 1. Base vs SPECTRA: lr sweep (seed 0)", sweep_table(records, pairs),
        "## 1. Base vs SPECTRA: seeds at the best lr", seeds_table(records, pairs, paired=True),
        "## 2. Stability at large learning rates", stability_table(records, pairs + others),
        "## 3. Weight norms of the trained model (exact SVD)", norms_table(records),
        "## 4. Gradient spectra (raw stochastic gradients, harness diagnostics)",
        spectra_table(records, _shapes(out, records)),
        "## 5. Spectral pre-clipping vs global-norm clipping (AdamW)", clipping_table(records),
        "## 6. All optimizers (same grid width, seeds at each best lr)",
        sweep_table(records, others) if others else "(not run)",
        seeds_table(records, present(records, ["adamw", "spectra-adamw"]) + others, paired=False) if others else "",
        "## 7. SPECTRA threshold c", c_table(records),
        "## 7b. Clip or rectangular scale?", scale_table(records),
        "## Figures", "\n".join(f"![{k}]({v})" for k, v in link.items()),
    ]
    summary = out / "summary.md"
    summary.write_text("\n\n".join(p for p in parts if p) + "\n")
    return summary
