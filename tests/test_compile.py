"""torch.compile: the matrix-function core and optimizer steps compile to one graph and do not recompile.

A counting backend (it records each graph dynamo hands over and runs it as traced) keeps these tests fast:
graph breaks (``fullgraph=True`` raises on them) and recompiles are decided by dynamo, before any backend.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch import nn

from spectrakit.linalg import hard_clip, msign, soft_clip
from spectrakit.linalg.clip import HARD_METHODS, SOFT_METHODS
from spectrakit.optim import Muon, Spectra


class _CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them unchanged."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return gm.forward


@pytest.fixture(autouse=True)
def _fresh_dynamo(one_thread):
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _inputs(n: int, shape: tuple[int, ...] = (3, 12, 20)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g) * (1 + 3 * i) for i in range(n)]


def test_msign_compiles_to_one_graph_for_every_input_of_a_shape():
    backend = _CountingBackend()
    compiled = torch.compile(lambda x: msign(x, dtype=torch.float32), backend=backend, fullgraph=True)
    for x in _inputs(3) + [_inputs(1)[0].mT.contiguous()[:2]]:
        torch.testing.assert_close(compiled(x), msign(x, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    # One graph for (3, 12, 20); a new shape and orientation (2, 20, 12) is the only other one.
    assert backend.graphs == 2


@pytest.mark.slow
def test_inductor_compiles_msign_and_matches_eager():
    """The default backend (inductor: generated C++ on CPU) on msign, the core of Muon and of the polar clips."""
    compiled = torch.compile(lambda x: msign(x, dtype=torch.float32), fullgraph=True)
    for x in _inputs(2, (2, 20, 24)):
        torch.testing.assert_close(compiled(x), msign(x, dtype=torch.float32), rtol=1e-4, atol=1e-5)


#: Options that make each method free of host reads: the authors' iteration in float32 (bf16 matmuls are slow
#: on CPU) and the polar method without its adaptive step count (which reads one integer on the host);
#: "polar-fast" is the polar method's bfloat16 fast mode (linalg/fast_clip.py).
_STATIC = {"newton_schulz": {"dtype": torch.float32}, "polar": {"adaptive": False}, "auto": {"adaptive": False},
           "svd": {}, "polar-fast": {"dtype": torch.bfloat16}}


@pytest.mark.parametrize("clip, method", [(soft_clip, m) for m in (*SOFT_METHODS, "polar-fast")]
                         + [(hard_clip, m) for m in HARD_METHODS])
def test_clip_with_tensor_threshold_does_not_recompile_when_c_changes(clip, method):
    backend = _CountingBackend()
    options = _STATIC[method]
    method = method.removesuffix("-fast")
    compiled = torch.compile(lambda x, c: clip(x, c, method=method, **options), backend=backend, fullgraph=True)
    for x, c in zip(_inputs(3, (3, 20, 24)), (0.5, 2.0, 8.0)):  # min(m, n) > 16: "auto" is the polar method
        for threshold in (torch.tensor(c), torch.tensor([c, 2 * c, 4 * c])):  # scalar and one c per matrix
            expected = clip(x, threshold, method=method, **options)
            torch.testing.assert_close(compiled(x, threshold), expected, rtol=1e-5, atol=1e-5)
    assert backend.graphs == 2  # one per threshold shape, none per value


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4), nn.LayerNorm(4))


@pytest.mark.parametrize("cls, kwargs", [
    (Muon, {"lr": 0.02, "ns_dtype": torch.float32}),
    (Spectra, {"lr": 0.01, "clip_c": 1.0, "clip_warmup": False}),
], ids=["muon", "spectra"])
def test_optimizer_step_compiles_fullgraph_and_lr_changes_do_not_recompile(cls, kwargs):
    """nonfinite="ignore" removes the one host sync of the step; after two warm-up steps (state creation, then
    the step counters and lr turning symbolic) a new lr every step reuses the same graph."""
    eager_model, compiled_model = _model(), _model()
    eager = cls(eager_model, nonfinite="ignore", **kwargs)
    optimizer = cls(compiled_model, nonfinite="ignore", **kwargs)
    backend = _CountingBackend()
    compiled_step = torch.compile(optimizer.step, backend=backend, fullgraph=True)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    counts = []
    for k in range(7):
        for model, opt, step in ((eager_model, eager, eager.step), (compiled_model, optimizer, compiled_step)):
            opt.zero_grad()
            model(x).square().mean().backward()
            for group in opt.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) / (1 + k)  # what an LR scheduler does
            step()
        counts.append(backend.graphs)
    assert counts[2] <= 3 and counts[2:] == [counts[2]] * 5, counts  # no graph after the warm-up steps
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_optimizer_step_with_lr_scheduler_compiles_without_recompiling():
    """The LR-scheduler pattern of torch's docs: one compiled function calls step() and scheduler.step()."""
    model = _model()
    optimizer = Muon(model, lr=0.02, ns_dtype=torch.float32, nonfinite="ignore")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    backend = _CountingBackend()

    @torch.compile(backend=backend)
    def step() -> None:
        optimizer.step()
        scheduler.step()

    reference = copy.deepcopy(model)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    counts = []
    for _ in range(6):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        step()
        counts.append(backend.graphs)
    assert counts[2:] == [counts[2]] * 4, counts  # no graph after the warm-up steps
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02 / 7)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_spectra_step_with_threshold_warmup_compiles_fullgraph_and_c_changes_do_not_recompile():
    """During the threshold warmup c_t = c * peak_lr / lr_t changes every step with the lr; it stays symbolic
    (no recompile per value). The end of the warmup flips one Python flag: at most one more graph."""
    eager_model, compiled_model = _model(), _model()
    kwargs = {"lr": 0.01, "clip_c": 1.0, "nonfinite": "ignore", "track_stats": True}
    eager, optimizer = Spectra(eager_model, **kwargs), Spectra(compiled_model, **kwargs)
    for opt in (eager, optimizer):
        opt.set_clip_schedule(warmup=True, warmup_steps=6)
    backend = _CountingBackend()
    compiled_step = torch.compile(optimizer.step, backend=backend, fullgraph=True)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    counts, thresholds = [], []
    for k in range(9):
        for model, opt, step in ((eager_model, eager, eager.step), (compiled_model, optimizer, compiled_step)):
            opt.zero_grad()
            model(x).square().mean().backward()
            for group in opt.param_groups:
                group["lr"] = 0.01 * min(1.0, (k + 1) / 6)  # linear lr warmup
            step()
        counts.append(backend.graphs)
        thresholds.append(float(optimizer.statistics()["clip_c/group0"]))
    assert len(set(thresholds[2:6])) == 4  # c_t changed at every warmup step ...
    assert counts[2:6] == [counts[2]] * 4, counts  # ... without a new graph
    assert counts[-1] <= counts[2] + 1 and counts[-3:] == [counts[-1]] * 3, counts
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", ["linear", "sqrt", "square", "cosine", "exp"])
def test_spectra_step_through_the_threshold_decay_does_not_recompile_per_step(shape):
    model = _model()
    optimizer = Spectra(model, lr=0.01, clip_c=1.0, nonfinite="ignore", track_stats=True)
    optimizer.set_clip_schedule(warmup=False, total_steps=10, decay_fraction=0.6, shape=shape, final_scale=0.1)
    backend = _CountingBackend()
    compiled_step = torch.compile(optimizer.step, backend=backend, fullgraph=True)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    counts, thresholds = [], []
    for _ in range(10):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        compiled_step()
        counts.append(backend.graphs)
        thresholds.append(float(optimizer.statistics()["clip_c/group0"]))
    expected = [optimizer.clip_schedule.decay_factor(k) for k in range(10)]
    assert thresholds == pytest.approx(expected, rel=1e-6)
    assert counts[5:] == [counts[5]] * 5, counts  # the decay (from step 4) changes c_t every step, no new graph
