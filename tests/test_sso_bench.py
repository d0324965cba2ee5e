"""The SSO solver benchmark's --quick variant runs and leaves BENCHMARKS.md alone."""

from __future__ import annotations

from _bench_helpers import run_quick


def test_quick_sso_benchmark_reports_every_variant_without_writing() -> None:
    module, body = run_quick("bench_sso")
    rows = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert len(rows) == len(module.VARIANTS) + 1
    paper = next(r for r in rows if r.startswith("| SSO bisection, msign float32"))
    calls, worst_h, fallbacks = (cell.strip() for cell in paper.split("|")[2:5])
    assert 1 <= float(calls) <= 31 and float(worst_h) <= 2e-4 and fallbacks == "0"
    reads, ops = (int(cell.strip().replace(",", "")) for cell in paper.split("|")[5:7])
    assert reads > 1 and ops > 100  # the solver reads its unfinished count once per round
