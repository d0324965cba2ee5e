"""The clip-vs-scale study (issue 17, experiments/_clip_vs_scale.py): its --quick run end to end into a tmp folder
(every experiment, resumable, the report from the raw records, a partial report), and the per-tensor lr
multiplier its baselines rest on."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

reproduce = importlib.import_module("reproduce")
cvs = importlib.import_module("_clip_vs_scale")
study = importlib.import_module("_study")
runner = importlib.import_module("_runner")

from spectrakit.optim import Spectra  # noqa: E402


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip-vs-scale")
    assert reproduce.main(["run", "--study", "clip-vs-scale", "--quick", "--out", str(out),
                           "--cache-dir", str(out / "cache")]) == 0
    return out


@pytest.mark.slow  # the --quick study: ~10 s of CPU
def test_quick_runs_every_experiment(quick):
    b = cvs.budgets("quick")
    base, wide, stab = (_records(quick / b[k].name) for k in ("base", "wide", "stability"))
    for records, budget in ((base, b["base"]), (wide, b["wide"])):
        names = {r["name"] for r in records}
        assert len(names) == len(records)  # every run trained once
        assert {s.name for s in cvs.core(budget) + cvs.multiplier_grid(budget)} <= names
        by_name = {r["name"]: r for r in records}
        for variant in (*cvs.VARIANTS, cvs.TUNED):  # the best setting got every seed
            top = cvs.best(by_name, budget, variant)
            assert {s for s in budget.seeds if replace(top, seed=s).name in names} == set(budget.seeds)
    assert {r["spec"]["clip_c"] for r in wide} >= {1.0}  # experiment 4
    assert b["wide"].d_model == 2 * b["base"].d_model
    assert {r["name"] for r in stab} == {s.name for s in cvs.stability(b["stability"])}
    assert all(r["spec"]["grad_clip"] == 0.0 and r["tokens"] == b["stability"].steps * 64 for r in stab)
    spectra = next(r for r in wide if r["spec"]["label"] == "spectra-adamw" and not r["spec"]["extra"])
    assert any(k.startswith("clipped_fraction/layers.0.") for e in spectra["optimizer_stats"] for k in e)
    mult = next(r for r in base if r["spec"]["lr_mult"] == "shape")
    assert mult["opt"] == next(r for r in base if r["spec"]["lr_mult"] is None)["opt"]  # same class and arguments


@pytest.mark.slow  # the --quick study: ~10 s of CPU
def test_quick_report_and_rerun(quick, tmp_path):
    summary = (quick / "summary.md").read_text()
    for section in ("### 1a. lr sweep", "### 1b. Seeds", "### 2a. lr sweep", "### 2b. Seeds", "## 2c. How much",
                    "## 4. Threshold c", "## 3. Stability"):
        assert section in summary
    assert "not run yet" not in summary
    for variant in (*cvs.VARIANTS, cvs.TUNED, "AdamW, emb/head lr ×10"):
        assert f"| {variant} |" in summary
    counts = {p.name: len(p.read_text().splitlines()) for p in quick.glob("*/results.jsonl")}
    assert reproduce.main(["run", "--study", "clip-vs-scale", "--quick", "--out", str(quick),
                           "--cache-dir", str(quick / "cache")]) == 0
    assert {p.name: len(p.read_text().splitlines()) for p in quick.glob("*/results.jsonl")} == counts
    # a partial study (only the base budget's records) reports the rest as not run
    shutil.copytree(quick / "quick", tmp_path / "quick")
    assert reproduce.main(["report", "--study", "clip-vs-scale", "--out", str(tmp_path)]) == 0
    partial = (tmp_path / "summary.md").read_text()
    assert "### 1b. Seeds" in partial and partial.count("(not run yet)") == 3  # 2a, 4, 3


def test_multiplier_groups_scale_the_step_not_the_decay():
    torch.manual_seed(0)
    named = [("embed.weight", torch.randn(6, 3, dtype=torch.float64)), ("w", torch.randn(3, 3, dtype=torch.float64))]
    grads = [torch.randn_like(p) for _, p in named]
    lr, wd, m = 0.01, 0.1, 4.0
    steps = {}
    for mult in (None, m):
        params = [(n, p.clone().requires_grad_()) for n, p in named]
        for (_, p), g in zip(params, grads):
            p.grad = g.clone()
        groups = ([{"params": params}] if mult is None else
                  runner.multiplier_groups(params, lambda name, _s: m if name == "embed.weight" else 1.0, lr, wd))
        Spectra(groups, lr=lr, clip=None, weight_decay=wd).step()
        steps[mult] = [p.detach() for _, p in params]
    x0 = named[0][1]
    update = (steps[None][0] - (1 - lr * wd) * x0) / lr  # -U
    torch.testing.assert_close(steps[m][0], (1 - lr * wd) * x0 + m * lr * update)  # decay lr*wd, step m*lr
    torch.testing.assert_close(steps[m][1], steps[None][1])  # multiplier 1: unchanged


def test_run_names_and_multipliers():
    names = {study.RunSpec("adamw", 1e-2, 0, lr_mult=m).name for m in (None, "shape", 3.16, 10.0)}
    assert len(names) == 4
    shape = study.RunSpec("adamw", 1e-2, 0, lr_mult="shape").multiplier()
    assert shape("embed.weight", (2048, 64)) == pytest.approx(32 ** 0.5) and shape("layers.0.w", (64, 192)) == 1
    emb = study.RunSpec("adamw", 1e-2, 0, lr_mult=3.16).multiplier()
    assert emb("lm_head.weight", (2048, 64)) == 3.16 and emb("layers.0.mlp.up_proj.weight", (192, 64)) == 1
    for bad in (0.0, "keller"):
        with pytest.raises(ValueError, match="lr_mult"):
            study.RunSpec("adamw", 1e-2, 0, lr_mult=bad).multiplier()


def test_bad_arguments_name_the_option(capsys):
    for argv, option in ((["run", "--study", "clip-vs-scale", "--bases", "adamw"], "--bases"),
                         (["run", "--study", "clip-vs-scale", "--budget", "full"], "--budget"),
                         (["run", "--study", "clip-vs-scale", "--experiments", "5"], "--experiments")):
        with pytest.raises(SystemExit) as exc:
            reproduce.main(argv)
        assert exc.value.code == 2
        assert option in capsys.readouterr().err


def test_plan_order_and_sizes():
    budget = study.BUDGETS["reduced"]
    core = cvs.core(budget)
    assert core[0].lr == 1e-2 and len({s.name for s in core[:4]}) == 4  # the grid centre first, all four variants
    assert cvs.plan_sizes("reduced") == {"1": 20 + 10 + 5 * 2, "2": 40, "4": 4, "3": 3 * 5 * 3}  # 3 variants, 5 lrs
