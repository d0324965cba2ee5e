"""What the reproduction study trains: the budget (model, tokens), the optimizer variants and their lr grids, and
the run specifications of each experiment. Pure data and planning; nothing here trains.

Every run is named from its settings alone (``RunSpec.name``), so a run shared by two experiments (e.g. the AdamW
run at its best lr is both an experiment-1 seed and the experiment-5 control) is trained once and a re-invoked
study skips finished runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from spectrakit.optim.scale import shape_scale
from spectrakit.registry import available

# Optimizer variants: label -> (spectrakit train optimizer name, fixed constructor arguments).
# The base of each SPECTRA pair is the same class with clip=None, so the clip is the only difference
# (same betas, same weight decay on every tensor, same code path).
BASE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "adamw": ("spectra-adamw", {"clip": None, "betas": (0.9, 0.95)}),
    "signum": ("signum", {}),
    "mars": ("mars", {}),
    "ademamix": ("ademamix", {"betas": (0.9, 0.999, 0.999), "alpha": 8.0}),  # + warmups = steps (paper recipe)
}
SPECTRAL_OPTIMIZERS = ("muon", "sso", "muon-sphere", "spike-aware")
# every name is a registered optimizer (spectrakit.optim.available()): a renamed one fails here, not mid-study
_UNREGISTERED = ({name for name, _ in BASE_VARIANTS.values()} | set(SPECTRAL_OPTIMIZERS)) - set(available())
if _UNREGISTERED:
    raise ValueError(f"experiments/_study.py names optimizers that are not registered: {sorted(_UNREGISTERED)}")
EMBED_HEAD = ("embed.weight", "lm_head.weight")  # the harness model's embedding and output head

# Grid centres; each grid is centre * 10**(k/2), k symmetric around 0 (same width for every optimizer).
LR_CENTRES: dict[str, float] = {"adamw": 1e-2, "signum": 10**-2.5, "mars": 1e-2, "ademamix": 1e-2,
                                "muon": 10**-1.5, "sso": 10**-1.5, "muon-sphere": 10**-1.5, "spike-aware": 1e-2}


@dataclass(frozen=True)
class Budget:
    """Model shape and token budget shared by every run of a study."""

    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    batch_size: int
    steps: int
    grid_points: int
    seeds: tuple[int, ...]
    eval_every: int
    eval_batches: int
    diag_every: int
    corpus_fraction: float = 1.0
    c_values: tuple[float, ...] = (1.0, 3.0, 10.0, 100.0)
    other_grid_points: int = 5  # grid of experiment 6 (same width as grid_points, fewer points when short of time)
    stability_points: int = 2  # experiment 2: extra lrs above the grid, sqrt(10) apart
    workers: int = 2
    warmup_steps: int | None = None  # None: the harness's default (5% of steps)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def train_settings(self) -> dict[str, Any]:
        """TrainConfig fields common to every run."""
        return dict(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                    seq_len=self.seq_len, batch_size=self.batch_size, steps=self.steps, eval_every=self.eval_every,
                    eval_batches=self.eval_batches, diag_every=self.diag_every, corpus_fraction=self.corpus_fraction,
                    schedule="cosine", weight_decay=0.1, grad_clip=1.0, ckpt_every=0, progress=False, plots=False,
                    threads=1, dtype="float32", device="cpu", warmup_steps=self.warmup_steps)


BUDGETS: dict[str, Budget] = {
    # What ran for REPRODUCTION.md (2 shared CPU cores, ~1.5 h): 0.37M parameters, 300 x 1024 tokens.
    "reduced": Budget("reduced", vocab_size=2048, d_model=64, n_layers=2, n_heads=2, seq_len=64, batch_size=16,
                      steps=300, grid_points=5, seeds=(0, 1, 2), eval_every=100, eval_batches=32, diag_every=50,
                      other_grid_points=3),
    # The designed full study, ~2 h on 2 free cores (estimate, see REPRODUCTION.md): 1.1M parameters,
    # 500 x 1024 tokens of context 128.
    "full": Budget("full", vocab_size=4096, d_model=96, n_layers=3, n_heads=3, seq_len=128, batch_size=8,
                   steps=500, grid_points=5, seeds=(0, 1, 2), eval_every=100, eval_batches=32, diag_every=50),
    # Test-suite smoke run: every experiment, seconds in total.
    "quick": Budget("quick", vocab_size=320, d_model=16, n_layers=1, n_heads=2, seq_len=16, batch_size=4, steps=6,
                    grid_points=2, seeds=(0, 1), eval_every=3, eval_batches=2, diag_every=3, corpus_fraction=0.02,
                    c_values=(1.0, 10.0), other_grid_points=2, stability_points=1, workers=1),
}
# The clip-vs-scale study (issue 17, experiments/clip_vs_scale.py): each base budget has a twice as wide model
# (d_model 128 for reduced, head size kept) and a stability setting (no warmup, twice the steps).
for _base in ("reduced", "quick"):
    _b = BUDGETS[_base]
    BUDGETS[f"{_base}-wide"] = replace(_b, name=f"{_base}-wide", d_model=2 * _b.d_model, n_heads=2 * _b.n_heads,
                                       c_values=(1.0, 3.0, 10.0, 30.0, 100.0) if _base == "reduced" else _b.c_values,
                                       workers=1)
    # reduced: lrs up to 10 (two more points than the first pass), looking for a setting where AdamW diverges
    BUDGETS[f"{_base}-stability"] = replace(_b, name=f"{_base}-stability", steps=2 * _b.steps, warmup_steps=0,
                                            stability_points=4 if _base == "reduced" else _b.stability_points,
                                            workers=1)


@dataclass(frozen=True)
class RunSpec:
    """One training run: a variant label, its lr and seed, and the non-default clipping settings."""

    label: str
    lr: float
    seed: int
    clip_c: float | None = None  # SPECTRA threshold (None: the optimizer's default, 10)
    pre_clip: float | None = None  # spectral pre-clipping threshold (None: off)
    grad_clip: float = 1.0  # global L2 clipping (0: off)
    extra: tuple[tuple[str, Any], ...] = field(default=())  # further optimizer arguments (e.g. adamw_lr)
    # per-tensor lr multiplier (``multiplier``): None, a number m for the embedding and the head, or "shape"
    # (sqrt(max(1, rows/cols)) on every matrix: SPECTRA's rectangular scale as an lr multiplier, without the clip)
    lr_mult: float | str | None = None

    @property
    def name(self) -> str:
        parts = [self.label, f"lr{self.lr:.3g}", f"s{self.seed}"]
        if self.clip_c is not None:
            parts.append(f"c{self.clip_c:g}")
        if self.pre_clip is not None:
            parts.append(f"pre{self.pre_clip:g}")
        if self.grad_clip != 1.0:
            parts.append(f"gc{self.grad_clip:g}")
        parts += [f"{key}{value:.3g}" if isinstance(value, float) else f"{key}-{value}" for key, value in self.extra]
        if self.lr_mult is not None:
            parts.append(f"mult-{self.lr_mult}" if isinstance(self.lr_mult, str) else f"mult{self.lr_mult:.3g}")
        return "-".join(parts)

    def multiplier(self) -> Callable[[str, tuple[int, ...]], float] | None:
        """The run's per-tensor lr multiplier m(name, shape), or None (one lr for every tensor)."""
        mult = self.lr_mult
        if mult is None:
            return None
        if mult == "shape":
            return lambda _name, shape: shape_scale(shape, "keller")
        if isinstance(mult, str) or not mult > 0:
            raise ValueError(f"lr_mult must be None, 'shape' or a number > 0, got {mult!r}")
        return lambda name, _shape: float(mult) if name in EMBED_HEAD else 1.0

    def optimizer(self, budget: Budget) -> tuple[str, dict[str, Any]]:
        """(spectrakit train optimizer name, constructor arguments) of this run."""
        spectra = self.label.startswith("spectra-")
        base = self.label.removeprefix("spectra-")
        if base in BASE_VARIANTS:
            name, opt = BASE_VARIANTS[base]
            opt = dict(opt)
            if spectra:
                name = f"spectra-{base}"
                opt.pop("clip", None)
            if base == "ademamix":
                opt.update(alpha_warmup=budget.steps, beta3_warmup=budget.steps)
        elif self.label in SPECTRAL_OPTIMIZERS:
            name, opt = self.label, {"adamw_betas": (0.9, 0.95)}
        else:
            raise ValueError(f"unknown variant label {self.label!r}")
        opt.update(dict(self.extra))
        return name, opt


def lr_grid(label: str, budget: Budget) -> list[float]:
    """Learning rates around the variant's centre (the base's for SPECTRA): ``grid_points`` spaced by sqrt(10);
    experiment 6's optimizers get ``other_grid_points`` over the same width (log10 span (grid_points - 1) / 2)."""
    centre = LR_CENTRES[label.removeprefix("spectra-")]
    points = budget.other_grid_points if label in SPECTRAL_OPTIMIZERS else budget.grid_points
    span = (budget.grid_points - 1) / 2
    exponents = [span * (k / max(1, points - 1) - 0.5) for k in range(points)]
    return [float(f"{centre * 10 ** e:.4g}") for e in exponents]


def stability_lrs(label: str, budget: Budget) -> list[float]:
    """Experiment 2: ``stability_points`` learning rates above the top of the grid, continuing its sqrt(10) steps."""
    centre = LR_CENTRES[label.removeprefix("spectra-")]
    top = (budget.grid_points - 1) / 4
    return [float(f"{centre * 10 ** (top + k / 2):.4g}") for k in range(1, budget.stability_points + 1)]


def pairs(bases: list[str]) -> list[str]:
    """['adamw'] -> ['adamw', 'spectra-adamw']."""
    return [label for base in bases for label in (base, f"spectra-{base}")]
