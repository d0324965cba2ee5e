"""The spike-aware benchmark's --quick variant runs, meets the state target and leaves BENCHMARKS.md alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(autouse=True)
def _one_thread():
    """Small matrices gain nothing from threads, and on a busy machine OpenMP threads contend badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_quick_spike_benchmark_reports_state_and_time_without_writing() -> None:
    spec = importlib.util.spec_from_file_location("bench_spike", BENCHMARKS / "bench_spike.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = BENCHMARKS.parent / "BENCHMARKS.md"
    before = report.read_text() if report.exists() else None
    body = module.main(["--quick"])
    assert (report.read_text() if report.exists() else None) == before
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in body.splitlines()
            if line.startswith("| ") and not line.startswith("| optimizer")}
    assert set(rows) >= {"torch AdamW", "Muon (Polar Express, 8 steps, float32)", "SpikeAware (k = 1.5%, 1 power step)"}
    ratio = float(rows["SpikeAware (k = 1.5%, 1 power step)"][1])
    assert 0.5 < ratio <= 0.51
    assert float(rows["torch AdamW"][1]) == 1.0
