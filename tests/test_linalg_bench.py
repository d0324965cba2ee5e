"""The linalg benchmark runs end to end in its quick mode (keeps it from rotting); it writes nothing."""

from __future__ import annotations

import pytest
from _bench_helpers import load_benchmark


def test_quick_benchmark_runs_without_writing(capsys, monkeypatch):
    module = load_benchmark("bench_linalg")
    written = []
    monkeypatch.setattr(module, "write_section", lambda *a, **k: written.append(a))
    assert module.main(["--quick", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "| 12x20 | 10 |" in out and "NS-need / polar" in out and "matmul GFLOP" in out
    assert written == []


def test_quick_symmetric_table(capsys, monkeypatch):
    module = load_benchmark("bench_linalg")
    monkeypatch.setattr(module, "write_section", lambda *a, **k: (_ for _ in ()).throw(AssertionError("wrote")))
    assert module.main(["--symmetric", "--quick", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "| 512 | float64 |" in out


@pytest.mark.parametrize("flag", ["--reps", "--pair-reps"])
@pytest.mark.parametrize("value", ["0", "-2", "three"])
def test_repetition_counts_must_be_positive_integers(capsys, flag, value):
    module = load_benchmark("bench_linalg")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--quick", "--no-write", flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}: must be an integer >= 1, got '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["log", "flat", "dominant", "rank-deficient"])
def test_every_spectrum_kind_has_the_singular_values_it_names(kind):
    import torch

    module = load_benchmark("bench_linalg")
    X = module.test_matrix(24, 40, 100.0, kind=kind).double()
    s = torch.linalg.svdvals(X)
    expected = module.singular_values(24, 100.0, kind)
    torch.testing.assert_close(s, expected, rtol=1e-5, atol=1e-4)
    assert float(s[0]) == pytest.approx(100.0, rel=1e-5)
    if kind == "rank-deficient":
        assert float(s[12:].max()) < 1e-4
    if kind == "dominant":
        assert float(s[3] / s[4]) == pytest.approx(100.0, rel=1e-4)


def test_quick_benchmark_over_chosen_spectra_and_a_bad_kind(capsys, monkeypatch):
    module = load_benchmark("bench_linalg")
    monkeypatch.setattr(module, "write_section", lambda *a, **k: None)
    assert module.main(["--quick", "--no-write", "--spectra", "flat,dominant"]) == 0
    out = capsys.readouterr().out
    assert "| flat | 12x20 | 10 |" in out and "| dominant | 12x20 | 10 |" in out and "| log |" not in out
    with pytest.raises(SystemExit):
        module.main(["--quick", "--no-write", "--spectra", "spiky"])
    assert "unknown kind(s) ['spiky']" in capsys.readouterr().err
