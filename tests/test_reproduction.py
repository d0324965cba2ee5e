"""The reproduction study (experiments/reproduce.py): every experiment's --quick run end to end into a tmp folder,
plus the pieces its tables rest on (spike counting, gradient-spectrum ratios, weight norms, lr grids)."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import sys
from pathlib import Path

import _svd_oracle as oracle
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

reproduce = importlib.import_module("reproduce")
study = importlib.import_module("_study")
runner = importlib.import_module("_runner")

ALL_LABELS = {"adamw", "spectra-adamw", "signum", "spectra-signum", "mars", "spectra-mars", "ademamix",
              "spectra-ademamix", "muon", "sso", "muon-sphere", "spike-aware"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One --quick run of all seven experiments; REPRODUCTION.md must come out untouched."""
    out = tmp_path_factory.mktemp("reproduction")
    doc = ROOT / "REPRODUCTION.md"
    before = hashlib.sha256(doc.read_bytes()).hexdigest() if doc.exists() else None
    assert reproduce.main(["run", "--quick", "--out", str(out), "--cache-dir", str(out / "cache")]) == 0
    after = hashlib.sha256(doc.read_bytes()).hexdigest() if doc.exists() else None
    assert before == after
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return out, records


@pytest.mark.slow  # the shared --quick study: ~20 s of CPU
def test_quick_runs_every_experiment(quick):
    _, records = quick
    specs = [r["spec"] for r in records]
    assert {s["label"] for s in specs} == ALL_LABELS  # experiments 1-4 and 6
    assert any(s["pre_clip"] == 0.1 for s in specs)  # experiment 5: pre-clipping
    assert any(s["grad_clip"] == 0.0 for s in specs) and any(s["grad_clip"] == 0.1 for s in specs)  # its controls
    assert any(s["clip_c"] == 1.0 for s in specs)  # experiment 7
    assert any(("scale", "none") in [tuple(x) for x in s["extra"]] for s in specs)  # its scale ablation
    budget = study.BUDGETS["quick"]
    for label in ("adamw", "spectra-signum"):  # experiment 2 continues the grid upwards
        assert {s["lr"] for s in specs if s["label"] == label} >= set(study.stability_lrs(label, budget))
    assert len({r["name"] for r in records}) == len(records)  # every run trained once
    by_name = {r["name"]: r for r in records}
    for label in ("adamw", "spectra-signum", "muon"):  # the best lr got the extra seeds
        extra = reproduce.adamw_extra(by_name, budget) if label == "muon" else ()
        best = reproduce.best_lr(by_name, label, budget, extra)
        grid = study.lr_grid(label, budget)
        sweep = [by_name[study.RunSpec(label, lr, budget.seeds[0], extra=extra).name] for lr in grid]
        assert best == grid[min(range(len(grid)), key=lambda i: sweep[i]["final_val_loss"])]
        assert {s["seed"] for s in specs if s["label"] == label and s["lr"] == best} == set(budget.seeds)


@pytest.mark.slow  # the shared --quick study: ~20 s of CPU
def test_quick_records_are_well_formed(quick):
    _, records = quick
    for r in records:
        assert isinstance(r["diverged"], bool)
        assert r["diverged"] or math.isfinite(r["final_val_loss"])
        assert r["tokens"] == 6 * 4 * 16 or r["diverged"]
        assert r["train_curve"] and r["val_curve"][0][0] == 0
        assert set(r["weights"]) >= {"embed.weight", "lm_head.weight", "layers.0.attn.q_proj.weight"}
        for norms in r["weights"].values():
            assert 0 < norms["spectral"] <= norms["frobenius"] * (1 + 1e-9)
        assert r["grad_spectra"], r["name"]
        for e in r["grad_spectra"]:
            assert e["top"][0] >= 1 - 1e-9 and e["top"] == sorted(e["top"], reverse=True)
    muon = next(r for r in records if r["spec"]["label"] == "muon")
    assert ("adamw_lr", reproduce.best_lr({r["name"]: r for r in records}, "adamw", study.BUDGETS["quick"])) in [
        tuple(x) for x in muon["spec"]["extra"]]


@pytest.mark.slow  # the shared --quick study: ~20 s of CPU
def test_quick_report(quick):
    out, _ = quick
    summary = (out / "summary.md").read_text()
    for section in ("## 1. Base vs SPECTRA", "## 2. Stability", "## 3. Weight norms", "## 4. Gradient spectra",
                    "## 5. Spectral pre-clipping", "## 6. All optimizers", "## 7. SPECTRA threshold c",
                    "## 7b. Clip or rectangular scale?"):
        assert section in summary
    for label in ALL_LABELS:
        assert f"| {label} |" in summary
    for missing in ("(no threshold sweep)", "(not run)", "(no scale ablation)"):
        assert missing not in summary
    for name in ("lr_sweeps", "loss_curves", "weight_norms", "grad_spectra"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"figures/{name}.png" in summary


@pytest.mark.slow  # the shared --quick study: ~20 s of CPU
def test_rerun_skips_finished_runs(quick):
    out, records = quick
    assert reproduce.main(["run", "--quick", "--out", str(out), "--cache-dir", str(out / "cache"),
                           "--experiments", "1,5"]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == len(records)


def test_bad_arguments_name_the_option(capsys):
    for argv, option in ((["run", "--experiments", "1,9"], "--experiments"), (["run", "--bases", "sgd"], "--bases"),
                         (["run", "--workers", "0"], "--workers")):
        with pytest.raises(SystemExit) as exc:
            reproduce.main(argv)
        assert exc.value.code == 2
        assert option in capsys.readouterr().err


def test_lr_grids_have_the_same_width():
    for budget in study.BUDGETS.values():
        widths = set()
        for label in ("adamw", "spectra-signum", "mars", "ademamix", "muon", "sso", "muon-sphere", "spike-aware"):
            grid = study.lr_grid(label, budget)
            assert grid == sorted(grid)
            widths.add(round(math.log10(grid[-1] / grid[0]), 2))
        assert widths == {(budget.grid_points - 1) / 2}
        assert study.lr_grid("spectra-adamw", budget) == study.lr_grid("adamw", budget)


def test_spec_names_and_optimizer_arguments():
    budget = study.BUDGETS["reduced"]
    base, spectra = study.RunSpec("adamw", 1e-2, 0), study.RunSpec("spectra-adamw", 1e-2, 0)
    assert base.optimizer(budget) == ("spectra-adamw", {"clip": None, "betas": (0.9, 0.95)})
    assert spectra.optimizer(budget) == ("spectra-adamw", {"betas": (0.9, 0.95)})  # only the clip differs
    assert study.RunSpec("spectra-ademamix", 1e-2, 0).optimizer(budget)[1]["alpha_warmup"] == budget.steps
    names = {study.RunSpec("adamw", 1e-2, 0, **kw).name for kw in
             ({}, {"clip_c": 3.0}, {"pre_clip": 0.1}, {"grad_clip": 0.0}, {"grad_clip": 0.1})}
    assert len(names) == 5
    with pytest.raises(ValueError, match="unknown variant label"):
        study.RunSpec("sgd", 1e-2, 0).optimizer(budget)


def test_count_spikes():
    assert runner.count_spikes([5.0, 4.0, 3.0, 2.9, 2.8], skip=1) == 0
    assert runner.count_spikes([5.0, 4.0, 3.0, 3.5, 3.0, 3.31], skip=1) == 2  # 3.5 and 3.31 exceed 3.0 + 0.3
    assert runner.count_spikes([5.0, 9.0, 3.0], skip=2) == 0  # warmup log points are not counted


def test_gradient_spectra_ratios():
    s = [50.0, 20.0, 9.0, 2.0, 1.0]  # median 9 when the whole spectrum is kept
    record = {"step": 7, "grad_spectra": {"w": s}, "layers": {"w": {"grad_spike_ratio": 50.0 / 9.0}}}
    (entry,) = runner.gradient_spectra([record])
    assert entry["step"] == 7 and entry["rank"] == 5
    assert entry["top"] == pytest.approx([50 / 9, 20 / 9, 1.0])
    assert entry["n_ge10"] == 0
    record["layers"]["w"]["grad_spike_ratio"] = 50.0  # median 1: sigma_1 and sigma_2 are >= 10x the median
    assert runner.gradient_spectra([record])[0]["n_ge10"] == 2


def test_weight_norms_match_svd():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.LayerNorm(5))
    norms = runner.weight_norms(model)
    assert set(norms) == {"0.weight"}
    s = oracle.singular_values(model[0].weight)
    assert norms["0.weight"]["spectral"] == pytest.approx(float(s[0]), rel=1e-12)
    assert norms["0.weight"]["frobenius"] == pytest.approx(float(s.norm()), rel=1e-12)
