"""benchmarks/bench_train.py --quick trains two optimizers for a few steps and leaves BENCHMARKS.md alone."""

import pytest
from _bench_helpers import load_benchmark, run_quick


def test_quick_mode_reports_throughput_relative_to_adamw():
    module, body = run_quick("bench_train")
    assert "| adamw |" in body and "| spectra-adamw |" in body
    assert "1.00x" in body  # the baseline against itself


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "--rounds: must be an integer >= 1, got '0'"),
    (["--steps", "x"], "--steps: must be an integer >= 1, got 'x'"),
    (["--steps", "10", "--log-every", "10"], "--steps (10) must exceed --log-every (10)"),
])
def test_bad_arguments_are_named(capsys, argv, message):
    with pytest.raises(SystemExit):
        load_benchmark("bench_train").main(argv)
    assert message in capsys.readouterr().err
