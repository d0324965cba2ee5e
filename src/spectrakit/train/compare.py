"""``spectrakit compare``: optimizers x learning rates x seeds on one budget, summarized in a report folder.

Report folder: runs/<optimizer>-lr<lr>-s<seed>/ (ordinary run folders), summary.md (final validation loss mean and
spread per optimizer and lr, weight norms, tokens/s), results.json, and loss_curves.png, lr_sensitivity.png,
spectral_norms.png, grad_spectra.png.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .data import prepare_data
from .metrics import read_jsonl
from .plots import _pyplot, by_kind, matrix_kind, plot_losses
from .trainer import Trainer


@dataclass(frozen=True)
class RunRecord:
    optimizer: str
    lr: float
    seed: int
    run_dir: Path
    final_val_loss: float
    tokens_per_s: float
    weight_spectral_max: float | None
    weight_frobenius: float | None


def _lr_label(lr: float | None) -> str:
    return "default" if lr is None else f"{lr:g}"


def _weight_norms(run_dir: Path) -> tuple[float | None, float | None]:
    diags = read_jsonl(run_dir / "diagnostics.jsonl")
    if not diags:
        return None, None
    layers = diags[-1]["layers"].values()
    spectral = max(e["weight_spectral"] for e in layers)
    frobenius = math.sqrt(sum(e["weight_frobenius"] ** 2 for e in layers))
    return spectral, frobenius


def run_grid(base: TrainConfig, optimizers: Sequence[str], lrs: Sequence[float | None], seeds: Sequence[int],
             report_dir: Path, log: Callable[[str], None] = print) -> list[RunRecord]:
    """Train every (optimizer, lr, seed) combination on ``base``'s budget; return one record per run.

    With ``base.progress``, one bar counts the steps of all runs (runs x steps, with the ETA of the whole grid)."""
    base.validate()
    for name in optimizers:
        for lr in lrs:
            replace(base, optimizer=name, lr=lr).validate().optimizer_arguments()
    model = base.model_config()
    data = prepare_data(base.data, vocab_size=model.vocab_size, cache_dir=base.cache_dir,
                        corpus_fraction=base.corpus_fraction, val_fraction=base.val_fraction,
                        text_field=base.text_field, tokenizer_file=base.tokenizer, log=log, seq_len=model.seq_len)
    grid = [(name, lr, seed) for name in optimizers for lr in lrs for seed in seeds]
    bar = _grid_bar(len(grid) * base.steps) if base.progress else None
    if bar is not None:
        log = bar.write
    records: list[RunRecord] = []
    try:
        for name, lr, seed in grid:
            run_name = f"{name}-lr{_lr_label(lr)}-s{seed}"
            log(f"[{len(records) + 1}/{len(grid)}] {run_name}")
            if bar is not None:
                bar.set_description(f"run {len(records) + 1}/{len(grid)} {run_name}")
            cfg = replace(base, optimizer=name, lr=lr, seed=seed, out_dir=str(report_dir / "runs"),
                          run_name=run_name, progress=False)
            trainer = Trainer(cfg, data=data, log=log, progress=bar)
            result = trainer.run()
            spectral, frob = _weight_norms(result.run_dir)
            records.append(RunRecord(name, trainer.peak_lrs[0], seed, result.run_dir,
                                     result.final_val_loss if result.final_val_loss is not None else math.nan,
                                     result.tokens_per_s, spectral, frob))
            if result.signal is not None:
                log("interrupted: the report covers the finished runs")
                break
    finally:
        if bar is not None:
            bar.close()
    return records


def _grid_bar(total_steps: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total_steps, unit="step", dynamic_ncols=True)


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def _groups(records: list[RunRecord]) -> dict[tuple[str, float], list[RunRecord]]:
    out: dict[tuple[str, float], list[RunRecord]] = {}
    for r in records:
        out.setdefault((r.optimizer, r.lr), []).append(r)
    return out


def best_lrs(records: list[RunRecord]) -> dict[str, float]:
    """Per optimizer, the learning rate with the lowest mean final validation loss."""
    best: dict[str, tuple[float, float]] = {}
    for (name, lr), runs in _groups(records).items():
        mean, _ = _mean_std([r.final_val_loss for r in runs])
        score = mean if math.isfinite(mean) else math.inf
        if name not in best or score < best[name][1]:
            best[name] = (lr, score)
    return {name: lr for name, (lr, _) in best.items()}


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def summary_markdown(records: list[RunRecord], base: TrainConfig, plots: Sequence[str] = ()) -> str:
    best = best_lrs(records)
    mc = base.model_config()
    lines = ["# Optimizer comparison", "",
             f"Model `{base.preset}` (d_model {mc.d_model}, {mc.n_layers} layers, seq_len {mc.seq_len}), "
             f"{base.steps} steps x {base.batch_size * base.grad_accum} sequences, schedule {base.schedule}, "
             f"weight decay {base.weight_decay}, data `{base.data or 'embedded'}`.", "",
             "| optimizer | lr | seeds | final val loss (mean +- std) | best seed | max spectral norm | "
             "Frobenius norm (all) | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, lr), runs in sorted(_groups(records).items(), key=lambda kv: (kv[0][0], kv[0][1])):
        mean, std = _mean_std([r.final_val_loss for r in runs])
        finite = [r.final_val_loss for r in runs if math.isfinite(r.final_val_loss)]
        diverged = len(runs) - len(finite)
        spec = [r.weight_spectral_max for r in runs if r.weight_spectral_max is not None]
        frob = [r.weight_frobenius for r in runs if r.weight_frobenius is not None]
        mark = " **(best lr)**" if best.get(name) == lr and len({r.lr for r in records if r.optimizer == name}) > 1 \
            else ""
        spread = f"+- {_fmt(std)}" if len(finite) > 1 else f"({len(finite)} seed{'' if len(finite) == 1 else 's'})"
        lines.append(f"| {name} | {lr:g}{mark} | {len(runs)}{f' ({diverged} diverged)' if diverged else ''} | "
                     f"{_fmt(mean)} {spread} | {_fmt(min(finite) if finite else None)} | "
                     f"{_fmt(statistics.fmean(spec) if spec else None, '.3g')} | "
                     f"{_fmt(statistics.fmean(frob) if frob else None, '.3g')} | "
                     f"{statistics.fmean(r.tokens_per_s for r in runs):,.0f} |")
    lines += ["", "Weight norms are from the last spectral-diagnostics step (max over matrices of the spectral norm; "
              "Frobenius norm of all matrices together), averaged over seeds.", "",
              (f"Plots: {', '.join(f'`{name}`' for name in plots)}; " if plots else "")
              + "each run's folder is under `runs/`.", ""]
    return "\n".join(lines)


def plot_report(records: list[RunRecord], report_dir: Path) -> list[Path]:
    plt = _pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = sorted({r.optimizer for r in records})
    color = {n: colors[i % len(colors)] for i, n in enumerate(names)}
    best = best_lrs(records)
    best_runs = {n: [r for r in records if r.optimizer == n and r.lr == best[n]] for n in names}
    written: list[Path | None] = []

    fig, ax = plt.subplots(figsize=(8, 5))
    for n in names:
        plot_losses(ax, read_jsonl(best_runs[n][0].run_dir / "metrics.jsonl"), f"{n} (lr {best[n]:g})", color[n])
    ax.set_title("loss curves at each optimizer's best lr (first seed)")
    ax.legend(fontsize=7)
    written.append(_save(fig, plt, report_dir / "loss_curves.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    seeds = len({r.seed for r in records})
    for n in names:
        points = []
        for (name, lr), runs in sorted(_groups(records).items()):
            if name == n:
                mean, std = _mean_std([r.final_val_loss for r in runs])
                if math.isfinite(mean):
                    points.append((lr, mean, std))
        if points:
            xs, ys, es = zip(*points)
            ax.errorbar(xs, ys, yerr=es if seeds > 1 else None, marker="o", capsize=3, color=color[n], label=n)
    ax.set_xscale("log")
    spread = f"mean +- std over {seeds} seeds" if seeds > 1 else "1 seed"
    written.append(_finish(fig, ax, plt, report_dir / "lr_sensitivity.png", "peak learning rate",
                           "final validation loss", f"learning-rate sensitivity ({spread})"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in names:
        diags = read_jsonl(best_runs[n][0].run_dir / "diagnostics.jsonl")
        if diags:
            ax.plot([d["step"] for d in diags], [max(by_kind(d, "weight_spectral").values()) for d in diags],
                    marker=".", color=color[n], label=n)
    ax.set_yscale("log")
    written.append(_finish(fig, ax, plt, report_dir / "spectral_norms.png", "step", "max over matrices of ||W||_2",
                           "weight spectral norms (best lr, first seed)"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in names:
        diags = read_jsonl(best_runs[n][0].run_dir / "diagnostics.jsonl")
        if not diags:
            continue
        spectra = diags[-1]["grad_spectra"]
        name = _middle_matrix(list(spectra))
        if name and spectra[name] and spectra[name][0] > 0:
            values = spectra[name]
            ax.plot(range(1, len(values) + 1), [v / values[0] for v in values], color=color[n],
                    label=f"{n}: {matrix_kind(name)} step {diags[-1]['step']}")
    ax.set_yscale("log")
    written.append(_finish(fig, ax, plt, report_dir / "grad_spectra.png", "index i",
                           "sigma_i / sigma_1 of the raw gradient",
                           "gradient spectra (middle block's MLP up-projection)"))
    return [path for path in written if path is not None]


def _middle_matrix(names: list[str]) -> str | None:
    ups = [n for n in names if n.endswith("mlp.up_proj.weight")]
    return ups[len(ups) // 2] if ups else (names[0] if names else None)


def _finish(fig, ax, plt, path: Path, xlabel: str, ylabel: str, title: str) -> Path | None:
    """Label, grid and legend one of the report's plots, then save it; None (nothing written) when no run
    recorded what it shows (e.g. --diag-every 0)."""
    if not ax.get_lines():
        plt.close(fig)
        return None
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(records: list[RunRecord], base: TrainConfig, report_dir: Path) -> Path:
    """summary.md, results.json and the plots; returns the summary path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = [{**r.__dict__, "run_dir": str(r.run_dir)} for r in records]
    (report_dir / "results.json").write_text(json.dumps({"config": base.to_dict(), "runs": rows}, indent=1) + "\n")
    plots = plot_report(records, report_dir) if records else []
    (report_dir / "summary.md").write_text(summary_markdown(records, base, [p.name for p in plots]))
    return report_dir / "summary.md"
