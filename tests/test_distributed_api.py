"""The pieces of spectrakit.distributed that need no second process: partition, names, argument checks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from spectrakit.distributed import DistributedSpectral, balanced_owners, canonical_name, init_from_env, matrix_cost
from spectrakit.distributed.launch import DistContext, parallelize
from spectrakit.distributed.optimizer import _dim0_sizes
from spectrakit.distributed.partition import rank_loads

shapes = st.lists(st.tuples(st.integers(1, 64), st.integers(1, 64)), min_size=0, max_size=30)


def test_matrix_cost_counts_the_wide_orientation():
    assert matrix_cost((8, 2)) == matrix_cost((2, 8)) == 4 * 2 * 2 * 8 + 2 * 2**3
    assert matrix_cost((3, 8, 2)) == 3 * matrix_cost((8, 2))
    assert matrix_cost((7,)) == 7


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(1, 5))
def test_partition_is_within_the_greedy_bound(items, world):
    owners = balanced_owners(items, world)
    assert len(owners) == len(items) and all(0 <= r < world for r in owners)
    loads = rank_loads(items, owners, world)
    costs = [matrix_cost(s) for s in items]
    # Graham: the job that ends last started on the least loaded rank, so
    # makespan <= total / world + (1 - 1/world) * largest job (and the partition is never worse than that).
    bound = (sum(costs) / world + (1 - 1 / world) * max(costs)) if costs else 0.0
    assert max(loads) <= bound * (1 + 1e-12)
    assert sum(loads) == pytest.approx(sum(costs))


def test_same_shapes_are_dealt_round_robin_and_deterministic():
    items = [(768, 3072)] * 4 + [(768, 768)] * 4
    owners = balanced_owners(items, 2)
    assert owners == balanced_owners(list(items), 2)
    assert sorted(owners[:4]) == [0, 0, 1, 1] and sorted(owners[4:]) == [0, 0, 1, 1]


def test_partition_rejects_bad_world_size():
    with pytest.raises(ValueError, match="world_size"):
        balanced_owners([(2, 2)], 0)


def test_dim0_sizes_follow_torch_chunk():
    assert _dim0_sizes(13, 2) == [7, 6]
    assert _dim0_sizes(1, 2) == [1, 0]
    assert _dim0_sizes(5, 4) == [2, 2, 1, 0]
    assert sum(_dim0_sizes(0, 3)) == 0


def test_canonical_name_strips_wrapper_prefixes():
    assert canonical_name("module.layers.0.attn.weight") == "layers.0.attn.weight"
    assert canonical_name("_orig_mod.module.w") == "w"
    assert canonical_name("encoder.module_list.0.weight") == "encoder.module_list.0.weight"


def test_wrapper_rejects_bad_arguments():
    model = nn.Linear(4, 4)
    with pytest.raises(TypeError, match="SpectralOptimizer"):
        DistributedSpectral(torch.optim.SGD(model.parameters(), lr=0.1))
    from spectrakit.optim import Muon

    opt = Muon(model)
    with pytest.raises(ValueError, match="parallel must be one of"):
        DistributedSpectral(opt, parallel="zero3")
    with pytest.raises(ValueError, match="rows_path must be one of"):
        DistributedSpectral(opt, rows_path="sometimes")
    with pytest.raises(RuntimeError, match="initialized process group"):
        DistributedSpectral(opt)


def test_init_from_env_outside_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_from_env()
    with pytest.raises(ValueError, match="device must be"):
        init_from_env(device="tpu")


def test_parallelize_rejects_unknown_mode():
    ctx = DistContext(0, 1, 0, torch.device("cpu"), "gloo")
    with pytest.raises(ValueError, match="parallel must be one of"):
        parallelize(nn.Linear(2, 2), "zero", ctx)


@pytest.fixture
def one_rank_group():
    """A 1-process gloo group in this process (no launch), destroyed afterwards."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_lr_scheduler_drives_the_wrapped_optimizer(one_rank_group):
    """LR schedulers accept the wrapper (an Optimizer) and their lr reaches the wrapped rule: one rank
    through the wrapper takes exactly the steps of the plain optimizer under the same schedule."""
    from spectrakit.optim import Muon

    def run(wrap):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Linear(5, 3))
        opt = Muon(model, lr=0.05, ns_dtype=torch.float32)
        opt = DistributedSpectral(opt) if wrap else opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
        for step in range(4):
            x = torch.randn(8, 6, generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
            sched.step()
        return [p.detach().clone() for p in model.parameters()], opt.param_groups[0]["lr"]

    (plain, plain_lr), (wrapped, wrapped_lr) = run(False), run(True)
    assert wrapped_lr == plain_lr == pytest.approx(0.05 / 5)
    for a, b in zip(plain, wrapped):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_partition_balances_the_costs_it_is_given():
    shapes = [(4, 4), (4, 4), (4, 4)]
    assert balanced_owners(shapes, 2) == [0, 1, 0]
    assert balanced_owners(shapes, 2, costs=[1.0, 1.0, 5.0]) == [1, 1, 0]  # the costly one gets a rank alone
    with pytest.raises(ValueError, match="costs must have one entry per shape"):
        balanced_owners(shapes, 2, costs=[1.0])


@pytest.mark.parametrize("kind, options", [
    ("soft", {}), ("hard", {}), ("soft", {"dtype": torch.bfloat16}), ("soft", {"dtype": torch.bfloat16, "steps": 5}),
    ("soft", {"method": "newton_schulz"}), ("soft", {"method": "newton_schulz", "steps": 5})],
    ids=["soft", "hard", "soft-fast", "soft-fast-5", "soft-authors", "soft-authors-5"])
@pytest.mark.parametrize("shape", [(768, 3072), (3072, 768), (1024, 1024)])
def test_clip_cost_estimates_match_counted_flops(kind, options, shape):
    """The partition's cost of a clip is within 5% of the matmul FLOPs its accelerator path counts (meta device),
    for the accurate float32 path, the bfloat16 fast mode and the authors' method."""
    from torch.utils.flop_counter import FlopCounterMode

    from spectrakit.linalg import hard_clip, soft_clip
    from spectrakit.optim.transforms import TransformOptions, transform_named
    method = options.get("method", "polar")
    with FlopCounterMode(display=False) as counter:
        (soft_clip if kind == "soft" else hard_clip)(torch.empty(shape, device="meta"), 1.0, method=method,
                                                     adaptive=False, steps=options.get("steps"),
                                                     dtype=options.get("dtype"))
    estimate = transform_named(kind).flops(shape, TransformOptions(**{"method": "polar", **options}))
    assert estimate == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_optimizers_report_their_transform_cost_and_row_capability():
    from spectrakit.optim import SSO, Muon, NorMuon, Spectra

    model = torch.nn.Sequential(torch.nn.Linear(8, 32, bias=False), torch.nn.Linear(32, 8, bias=False))
    W = model[0].weight
    soft, muon, normuon, sso = Spectra(model), Muon(model), NorMuon(model), SSO(model)
    q, p = 8, 32
    # restart.py at q = 8 (no row blocks but 4 for the wide Gram products, 62.5%), 3 + 5 steps: X X^T and Y Y^T
    # 2.5 q^2 p, Q X and M Y 4 q^2 p; 19 Gram-space products and 5 factor products, 48 q^3
    assert soft.transform_flops(soft.param_groups[0], W) == 6.5 * q * q * p + 48 * q**3
    assert muon.transform_flops(muon.param_groups[0], W) == 8 * (4 * q * q * p + 2 * q**3)  # Polar Express, 8
    assert Muon(model, ns_coefficients="keller").transform_flops(muon.param_groups[0], W) == 8 * (
        4 * q * q * p + 2 * q**3)  # the group's own settings count, not the constructor's
    assert sso.transform_flops(sso.param_groups[0], W) is None  # unknown: the partition's estimate
    assert soft.rows_capable(soft.param_groups[0]) and muon.rows_capable(muon.param_groups[0])
    assert not normuon.rows_capable(normuon.param_groups[0])  # its Frobenius norm spans every row
    assert not sso.rows_capable(sso.param_groups[0])
