"""Running a benchmark script's quick mode from a test: load it by path, run it on one thread, and check that
BENCHMARKS.md was left alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from _threads import single_thread

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
REPORT = BENCHMARKS.parent / "BENCHMARKS.md"


def load_benchmark(name: str) -> ModuleType:
    """The module benchmarks/<name>.py, loaded by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_quick(name: str) -> tuple[ModuleType, str]:
    """(module, body) of ``main(["--quick"])`` on one thread (small matrices gain nothing from threads, and on a
    busy machine OpenMP threads contend badly), asserting that BENCHMARKS.md is unchanged."""
    module = load_benchmark(name)
    before = REPORT.read_text() if REPORT.exists() else None
    with single_thread():
        body = module.main(["--quick"])
    assert (REPORT.read_text() if REPORT.exists() else None) == before
    return module, body
