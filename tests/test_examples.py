"""The scripts in examples/ run with tiny settings and their loss falls."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


pytestmark = pytest.mark.usefixtures("one_thread")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_minimal_example_is_short_and_trains_as_a_script():
    script = EXAMPLES / "train_minimal.py"
    assert len(script.read_text().splitlines()) < 60
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(script), "--steps", "60"], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    losses = [float(x) for x in re.findall(r"^step +\d+ +loss ([\d.]+)$", run.stdout, flags=re.M)]
    assert len(losses) == 3  # steps 0, 50 and 59
    assert losses[-1] < 0.8 * losses[0], run.stdout
    assert "spectral" in run.stdout  # the routing report is printed


@pytest.mark.parametrize("optimizer", ["spectra", "muon"])
def test_hf_trainer_example(optimizer):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    losses = _load("hf_trainer").main(["--steps", "30", "--optimizer", optimizer, "--hidden", "32"])
    assert len(losses) == 10
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("optimizer", ["spectra", "muon"])
def test_lightning_example(optimizer, capsys):
    pytest.importorskip("lightning")
    losses = _load("lightning_train").main(["--steps", "40", "--optimizer", optimizer])
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    assert "head.weight" in capsys.readouterr().out
