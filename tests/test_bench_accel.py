"""bench_flops (meta-device FLOP/sync audit) and bench_gpu's --dry-run run end to end on small shapes."""

from __future__ import annotations

import pytest
from _bench_helpers import REPORT, load_benchmark


def _row(body: str, name: str) -> list[str]:
    line = next(line for line in body.splitlines() if line.startswith(f"| {name}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_bench_flops_small_preset_counts_the_policy():
    module = load_benchmark("bench_flops")
    before = REPORT.read_text()
    body = module.main(["--preset", "tiny", "--layers", "1"])
    assert REPORT.read_text() == before  # only --write writes
    accurate = _row(body, "Spectra-AdamW, accurate")
    assert "float64" not in accurate[1] and "float32" in accurate[1]
    assert accurate[3] == "0" and accurate[4] == "0"  # host reads, host copies
    authors = _row(body, "Spectra-AdamW, authors'")
    assert authors[1].startswith("bfloat16") and "float32" not in authors[1]
    assert _row(body, "Spectra-AdamW, previous default")[1].startswith("float64")
    assert float(accurate[6]) > 0 and "fwd+bwd" in body


def test_bench_flops_arguments():
    module = load_benchmark("bench_flops")
    for argv in (["--layers", "0"], ["--utilisation", "2"]):
        with pytest.raises(SystemExit):
            module.main(argv)


def test_bench_gpu_dry_run_on_cpu(capsys):
    module = load_benchmark("bench_gpu")
    body = module.main(["--dry-run"])
    titles = ("soft_clip per chunk", "accuracy on the device", "symmetric products", "optimizer step vs fwd+bwd",
              "host synchronisations")
    assert all(title in body for title in titles)
    assert "| accurate (float32) | highest |" in body
    # the wide Gram product takes at least 4 row blocks even below MIN_SIDE; an m x m one below it takes none
    assert "| Gram 16 x 96 (x1) | high | 4 |" in body and "| m x m, 24 (x2) | highest | 1 |" in body


def test_bench_gpu_counts_must_be_positive_integers(capsys):
    module = load_benchmark("bench_gpu")
    for argv in (["--reps", "0"], ["--batch", "-1"], ["--reps", "x"]):
        with pytest.raises(SystemExit):
            module.main(["--dry-run", *argv])
        assert "must be an integer >= 1" in capsys.readouterr().err


def test_bench_precision_quick_table():
    module = load_benchmark("bench_precision")
    before = REPORT.read_text()
    body = module.main(["--quick"])
    assert REPORT.read_text() == before
    row = _row(body, "accurate (float32, accelerator default) | fp32")
    assert len(row) == 4 and float(row[2]) <= 1e-3 and float(row[3]) <= 1e-3
