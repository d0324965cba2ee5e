"""benchmarks/bench_step.py --quick runs every optimizer and leaves BENCHMARKS.md alone."""

from _bench_helpers import run_quick


def test_quick_mode_runs_every_optimizer_without_writing():
    module, body = run_quick("bench_step")
    for name in module.OPTIMIZERS:
        assert f"| {name} |" in body
    shapes = dict(module.llama_shapes(768, 12, 2048, 50304))
    assert abs(sum(s[0] * (s[1] if len(s) > 1 else 1) for s in shapes.values()) / 1e6 - 162.2) < 0.1
