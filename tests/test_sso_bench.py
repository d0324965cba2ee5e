"""The SSO solver benchmark's --quick variant runs and leaves BENCHMARKS.md alone."""

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


def test_quick_sso_benchmark_reports_every_variant_without_writing() -> None:
    spec = importlib.util.spec_from_file_location("bench_sso", BENCHMARKS / "bench_sso.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = BENCHMARKS.parent / "BENCHMARKS.md"
    before = report.read_text() if report.exists() else None
    body = module.main(["--quick"])
    assert (report.read_text() if report.exists() else None) == before
    rows = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert len(rows) == len(module.VARIANTS) + 1
    paper = next(r for r in rows if r.startswith("| SSO bisection, msign float32"))
    calls, worst_h, fallbacks = (cell.strip() for cell in paper.split("|")[2:5])
    assert 1 <= float(calls) <= 31 and float(worst_h) <= 2e-4 and fallbacks == "0"
