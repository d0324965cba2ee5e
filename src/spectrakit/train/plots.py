"""PNG plots of one run folder: loss curves, spectral norms over training, gradient spectra.

Matrices are grouped by kind (q_proj, ..., down_proj, embed, lm_head) and each curve shows the maximum over layers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .metrics import read_jsonl


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def matrix_kind(name: str) -> str:
    """'layers.3.attn.q_proj.weight' -> 'attn.q_proj'; 'embed.weight' -> 'embed'."""
    return re.sub(r"^layers\.\d+\.", "", name).removesuffix(".weight")


def by_kind(record: dict[str, Any], key: str) -> dict[str, float]:
    """Maximum of a per-layer quantity over layers of each kind, from one diagnostics record."""
    out: dict[str, float] = {}
    for name, entry in record["layers"].items():
        if key in entry:
            kind = matrix_kind(name)
            out[kind] = max(out.get(kind, float("-inf")), entry[key])
    return out


def plot_losses(ax, rows: list[dict[str, Any]], label: str = "", color=None) -> None:
    """The training loss as a line (every logged step) and the validation loss as marks at the evaluation steps
    (evaluations are sparse: a line through them would draw straight segments no run followed)."""
    train = [(r["step"], r["train_loss"]) for r in rows if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("kind") == "val"]
    if train:
        (line,) = ax.plot(*zip(*train), color=color, lw=1.2, label=f"{label} train".strip())
        color = line.get_color()
    if val:
        ax.plot(*zip(*val), color=color, linestyle="none", marker="o", ms=5, markeredgecolor="black",
                markeredgewidth=0.6, label=f"{label} validation".strip())
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write loss.png, spectral_norms.png and grad_spectra.png (when there are diagnostics) into ``run_dir``."""
    run_dir = Path(run_dir)
    plt = _pyplot()
    written = []
    rows = read_jsonl(run_dir / "metrics.jsonl")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_losses(ax, rows)
    ax.legend()
    ax.set_title(f"loss: {run_dir.name}")
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=110)
    plt.close(fig)
    written.append(run_dir / "loss.png")
    diags = read_jsonl(run_dir / "diagnostics.jsonl")
    if not diags:
        return written
    panels = (("weight_spectral", "weight ||W||_2"), ("update_spectral", "update ||dW||_2"),
              ("grad_spike_ratio", "gradient spike ratio sigma_1/median"))
    series = {key: {} for key, _ in panels}  # panel -> matrix kind -> [(step, value)]
    for rec in diags:
        for key, _ in panels:
            for kind, value in by_kind(rec, key).items():
                series[key].setdefault(kind, []).append((rec["step"], value))
    kinds = sorted({kind for per_kind in series.values() for kind in per_kind})
    cmap = plt.get_cmap("tab10" if len(kinds) <= 10 else "tab20")
    color = {kind: cmap(i % cmap.N) for i, kind in enumerate(kinds)}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, (key, title) in zip(axes, panels):
        for kind, points in sorted(series[key].items()):
            ax.plot(*zip(*points), marker=".", color=color[kind], label=kind)
        ax.set_title(f"{title} (max over layers)")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    # one legend for the three panels, outside them (inside, it covered the embedding and head curves)
    handles = [plt.Line2D([], [], color=color[kind], marker=".", label=kind) for kind in kinds]
    fig.tight_layout(rect=(0, 0, 0.89, 1))
    fig.legend(handles=handles, loc="center right", fontsize=8, title="matrix kind")
    fig.savefig(run_dir / "spectral_norms.png", dpi=110)
    plt.close(fig)
    written.append(run_dir / "spectral_norms.png")
    last = diags[-1]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_spectra(ax, last)
    ax.set_title(f"raw gradient singular values at step {last['step']}")
    fig.tight_layout()
    fig.savefig(run_dir / "grad_spectra.png", dpi=110)
    plt.close(fig)
    written.append(run_dir / "grad_spectra.png")
    return written


def plot_spectra(ax, record: dict[str, Any], label: str = "", color=None, layer: int | None = None) -> None:
    """Singular values (normalized by the largest) of each matrix kind in one block (the middle one by default)."""
    spectra = record.get("grad_spectra", {})
    layers = sorted({int(m.group(1)) for n in spectra if (m := re.match(r"layers\.(\d+)\.", n))})
    pick = layer if layer is not None else (layers[len(layers) // 2] if layers else None)
    for name, values in spectra.items():
        m = re.match(r"layers\.(\d+)\.", name)
        if (m and int(m.group(1)) != pick) or not values or values[0] <= 0:
            continue
        ax.plot(range(1, len(values) + 1), [v / values[0] for v in values], color=color,
                label=f"{label} {matrix_kind(name)}".strip())
    ax.set_xlabel("index i")
    ax.set_ylabel("sigma_i / sigma_1")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
