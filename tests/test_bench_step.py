"""benchmarks/bench_step.py --quick runs every optimizer and leaves BENCHMARKS.md alone."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_step.py"


def test_quick_mode_runs_every_optimizer_without_writing(capsys):
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    md = BENCH.parent.parent / "BENCHMARKS.md"
    before = md.read_text() if md.exists() else None
    body = module.main(["--quick"])
    for name in module.OPTIMIZERS:
        assert f"| {name} |" in body
    assert (md.read_text() if md.exists() else None) == before
    shapes = dict(module.llama_shapes(768, 12, 2048, 50304))
    assert abs(sum(s[0] * (s[1] if len(s) > 1 else 1) for s in shapes.values()) / 1e6 - 162.2) < 0.1
