"""benchmarks/bench_muon.py --quick runs every contender at the capability's dtype and leaves BENCHMARKS.md alone."""

import pytest
import torch
from _bench_helpers import load_benchmark, run_quick


def test_quick_mode_runs_every_contender_without_writing():
    module, body = run_quick("bench_muon")
    for name in module.contenders(torch.float32):
        assert f"| {name} |" in body


@pytest.mark.parametrize("shape", [(48, 32), (32, 80)])
def test_the_float32_stand_in_is_torch_muons_iteration(shape):
    """The float32 replacement of torch.optim.Muon's Newton-Schulz function (used where bf16 is slow) matches the
    original up to bfloat16 rounding, and the patch is undone afterwards."""
    import torch.optim._muon as torch_muon
    module = load_benchmark("bench_muon")
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    original = torch_muon._zeropower_via_newtonschulz
    reference = original(G, module.KELLER, 5, 1e-7).float()
    with module.torch_muon_in(torch.float32):
        assert torch_muon._zeropower_via_newtonschulz is not original
        stand_in = torch_muon._zeropower_via_newtonschulz(G, module.KELLER, 5, 1e-7)
    assert torch_muon._zeropower_via_newtonschulz is original
    assert stand_in.dtype == torch.float32
    assert (stand_in - reference).norm() / reference.norm() < 2e-2
