"""benchmarks/bench_train.py --quick trains two optimizers for a few steps and leaves BENCHMARKS.md alone."""

from _bench_helpers import run_quick


def test_quick_mode_reports_throughput_relative_to_adamw():
    module, body = run_quick("bench_train")
    assert "| adamw |" in body and "| spectra-adamw |" in body
    assert "1.00x" in body  # the baseline against itself
