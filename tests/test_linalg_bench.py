"""The linalg benchmark runs end to end in its quick mode (keeps it from rotting); it writes nothing."""

from __future__ import annotations

from _bench_helpers import load_benchmark


def test_quick_benchmark_runs_without_writing(capsys, monkeypatch):
    module = load_benchmark("bench_linalg")
    written = []
    monkeypatch.setattr(module, "write_section", lambda *a, **k: written.append(a))
    assert module.main(["--quick", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "| 12x20 | 10 |" in out and "NS-need / polar" in out
    assert written == []


def test_quick_symmetric_table(capsys, monkeypatch):
    module = load_benchmark("bench_linalg")
    monkeypatch.setattr(module, "write_section", lambda *a, **k: (_ for _ in ()).throw(AssertionError("wrote")))
    assert module.main(["--symmetric", "--quick", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "| 512 | float64 |" in out
