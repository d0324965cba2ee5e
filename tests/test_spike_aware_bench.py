"""The spike-aware benchmark's --quick variant runs, meets the state target and leaves BENCHMARKS.md alone."""

from __future__ import annotations

from _bench_helpers import run_quick


def test_quick_spike_benchmark_reports_state_and_time_without_writing() -> None:
    _, body = run_quick("bench_spike")
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in body.splitlines()
            if line.startswith("| ") and not line.startswith("| optimizer")}
    assert set(rows) >= {"torch AdamW", "Muon (Polar Express, 8 steps, float32)", "SpikeAware (k = 1.5%, 1 power step)"}
    ratio = float(rows["SpikeAware (k = 1.5%, 1 power step)"][1])
    assert 0.5 < ratio <= 0.51
    assert float(rows["torch AdamW"][1]) == 1.0
