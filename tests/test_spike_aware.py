"""The spike-aware optimizer: the shaped spectrum, the warm-started power iteration, a float64 reference,
resume, routing, state size and arguments."""

from __future__ import annotations

import copy
import math

import _svd_oracle as oracle
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from spectrakit.linalg import block_power_iteration
from spectrakit.optim.spike_aware import SpikeAware, spike_rank

pytestmark = pytest.mark.usefixtures("one_thread")


def spiky(m: int, n: int, k: int, seed: int, spike: float = 30.0) -> torch.Tensor:
    """Gaussian noise plus k dominant directions (singular values ~ spike * sqrt(max(m, n)))."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(m, n, generator=g)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    return noise + spike * (a @ b) / math.sqrt(k * min(m, n))


def reference_spike_aware(W: torch.Tensor, grads: list[torch.Tensor], lr: float, mu: float, k: int,
                          wd: float) -> torch.Tensor:
    """The rule from the equations (SPEC section 5) with an exact float64 SVD, forming O explicitly. A tail
    below 1e-5 ||M||_F (float32 rounding of a rank-r <= k gradient) is empty, and the r singular values above
    that take their RMS (the module docstring's reading)."""
    W, M = W.double().clone(), torch.zeros_like(W, dtype=torch.float64)
    m, n = W.shape
    q = min(m, n)
    for G in grads:
        M = mu * M + G.double()
        U, S, Vh = oracle.svd(M)
        tail = M - (U[:, :k] * S[:k]) @ Vh[:k]
        floor = 1e-5 * float(M.norm())
        if float(tail.norm()) > floor:
            sigma_tail = math.sqrt(float(tail.square().sum()) / (q - k))
            O = tail + sigma_tail * U[:, :k] @ Vh[:k]
        else:
            r = int((S > floor).sum())
            O = float(S[:r].square().mean().sqrt()) * U[:, :r] @ Vh[:r] if r else torch.zeros_like(M)
        W = (1 - lr * wd) * W - 0.2 * lr * O / (O.norm() / math.sqrt(m * n) + 1e-8)
    return W


def low_rank(m: int, n: int, r: int, seed: int) -> torch.Tensor:
    """A rank-r matrix with a spread of singular values."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, r, generator=g) * torch.linspace(3.0, 1.0, r)) @ torch.randn(r, n, generator=g)


def gradients(kind: str, m: int, n: int, k: int, steps: int, seed: int,
              dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Gradients (made in float64, then rounded to ``dtype``) whose sum momentum has rank < k, = k, k plus a
    tiny or a small tail, or full rank."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    if kind == "zero":
        return [torch.zeros(m, n, dtype=dtype) for _ in range(steps)]
    if kind == "full":
        return [(spiky(m, n, k, seed).double() + 0.1 * torch.randn(m, n, generator=g, dtype=f64)).to(dtype)
                for _ in range(steps)]
    rank = {"rank<k": k - 1, "rank=k": k, "rank=k+tiny": k, "rank=k+small": k}[kind]
    L, R = torch.randn(m, rank, generator=g, dtype=f64), torch.randn(rank, n, generator=g, dtype=f64)
    noise = {"rank=k+tiny": 1e-6, "rank=k+small": 1e-2}.get(kind, 0.0)  # one fixed rank-r subspace, plus noise
    return [((L * torch.rand(rank, generator=g, dtype=f64)) @ R + noise * torch.randn(m, n, generator=g, dtype=f64))
            .to(dtype) for _ in range(steps)]


@settings(max_examples=8, deadline=None)
@given(m=st.integers(8, 40), n=st.integers(8, 40), k=st.integers(1, 3), seed=st.integers(0, 1000))
def test_with_exact_svd_the_spike_is_shrunk_to_the_tail_scale_and_the_tail_is_unchanged(m: int, n: int, k: int,
                                                                                      seed: int) -> None:
    q = min(m, n)
    G = spiky(m, n, k, seed)
    W0 = torch.randn(m, n, generator=torch.Generator().manual_seed(seed + 1))
    p = nn.Parameter(W0.clone())
    p.grad = G.clone()
    lr = 0.1
    SpikeAware([p], lr=lr, rank_fraction=(k + 0.4) / q, weight_decay=0.0, exact_svd=True).step()
    D = (W0 - p.detach()).double() / (0.2 * lr)  # = O / RMS(O)
    S_M = oracle.singular_values(G)
    sigma_tail = float(S_M[k:].square().mean().sqrt())
    expected = torch.cat([torch.full((k,), sigma_tail, dtype=torch.float64), S_M[k:]])
    expected = expected / float(expected.square().sum().sqrt() / math.sqrt(m * n))  # divide by RMS(O)
    torch.testing.assert_close(oracle.singular_values(D), expected.sort(descending=True).values, atol=1e-3, rtol=1e-3)
    assert float(D.square().mean().sqrt()) == pytest.approx(1.0, abs=1e-4)


#: the three ways to the top-k triplets: an exact SVD, the power iteration (eigh Rayleigh-Ritz), and the power
#: iteration of a sync-free step (eigh replaced by ritz_rotation)
_TRIPLETS = {"exact": {"exact_svd": True}, "power": {}, "power-sync-free": {"sync_free": True}}


@pytest.mark.parametrize("kind", ["full", "rank<k", "rank=k", "rank=k+small"])
@pytest.mark.parametrize("triplets, atol", [("exact", 1e-5), ("power", 1e-3), ("power-sync-free", 1e-3)])
def test_matches_the_reference_from_the_equations(kind: str, triplets: str, atol: float) -> None:
    m, n, k = 40, 24, 3
    W0 = torch.randn(m, n, generator=torch.Generator().manual_seed(0))
    grads = gradients(kind, m, n, k, 5, 1)
    p = nn.Parameter(W0.clone())
    opt = SpikeAware([p], lr=0.05, momentum=0.9, rank_fraction=k / n, weight_decay=0.1, power_iters=2,
                     **_TRIPLETS[triplets])
    for G in grads:
        p.grad = G.clone()
        opt.step()
    expected = reference_spike_aware(W0, grads, lr=0.05, mu=0.9, k=k, wd=0.1)
    torch.testing.assert_close(p.detach().double(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("triplets, atol", [("exact", 1e-12), ("power", 1e-6), ("power-sync-free", 1e-6)])
def test_float64_parameters_are_computed_in_float64(triplets: str, atol: float) -> None:
    m, n, k = 40, 24, 2
    W0 = torch.randn(m, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = gradients("full", m, n, k, 4, 3, torch.float64)
    p = nn.Parameter(W0.clone())
    opt = SpikeAware([p], lr=0.05, momentum=0.9, rank_fraction=k / n, weight_decay=0.1, power_iters=3,
                     **_TRIPLETS[triplets])
    for G in grads:
        p.grad = G.clone()
        opt.step()
    assert all(t.dtype == torch.float64 for t in opt.state[p].values())
    torch.testing.assert_close(p.detach(), reference_spike_aware(W0, grads, 0.05, 0.9, k, 0.1), atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("triplets", list(_TRIPLETS))
@pytest.mark.parametrize("kind", ["zero", "rank<k", "rank=k", "rank=k+tiny", "rank=k+small", "full"])
def test_every_step_is_finite_with_the_documented_rms(kind: str, triplets: str, dtype: torch.dtype) -> None:
    """RMS(step) = 0.2 lr RMS(O) / (RMS(O) + eps) for every momentum: 0.2 lr for a non-zero one (eps = 1e-20
    here, so that a tiny tail is not damped by it; within the rounding of the parameter's dtype), 0 for a zero
    one. An empty or noise-level tail must not blow the step up."""
    m, n, k, lr = 24, 16, 2, 0.01
    p = nn.Parameter(torch.zeros(m, n, dtype=dtype))
    opt = SpikeAware([p], lr=lr, rank_fraction=k / n, weight_decay=0.0, eps=1e-20, **_TRIPLETS[triplets])
    for G in gradients(kind, m, n, k, 4, 5, dtype):
        before = p.detach().double().clone()
        p.grad = G
        opt.step()
        step = p.detach().double() - before
        assert bool(torch.isfinite(step).all())
        ratio = float(step.square().mean().sqrt()) / (0.2 * lr)
        if kind == "zero":
            assert ratio == 0.0
        else:
            assert ratio == pytest.approx(1.0, abs=2e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("dtype, cosine", [(torch.float32, 1 - 1e-6), (torch.bfloat16, 0.995)])
def test_a_rank_one_momentum_steps_along_itself(dtype: torch.dtype, cosine: float) -> None:
    """Rank-1 gradients sharing a right vector keep the momentum rank 1 (up to its rounding, which builds up
    over steps in bfloat16): no tail, so O = M and the step is -0.2 lr M / RMS(M), not rounding noise."""
    m, n = 48, 32
    g = torch.Generator().manual_seed(7)
    right = torch.randn(1, n, generator=g, dtype=torch.float64)
    p = nn.Parameter(torch.zeros(m, n, dtype=dtype))
    opt = SpikeAware([p], lr=0.01, rank_fraction=0.1, weight_decay=0.0)
    for _ in range(40):
        p.grad = (torch.randn(m, 1, generator=g, dtype=torch.float64) @ right).to(dtype)
        before = p.detach().double().clone()
        opt.step()
        step, M = (p.detach().double() - before).flatten(), opt.state[p]["momentum_buffer"].double().flatten()
        assert float(-step @ M / (step.norm() * M.norm())) > cosine


def test_a_rank_one_regression_problem_trains() -> None:
    """Least squares, one sample per step (rank-1 gradients): the loss must go down, not up 10x."""
    g = torch.Generator().manual_seed(0)
    W_true, X = torch.randn(24, 16, generator=g), torch.randn(256, 16, generator=g)
    Y = X @ W_true.T
    W = nn.Parameter(torch.zeros(24, 16))
    opt = SpikeAware([W], lr=0.05, rank_fraction=0.2, weight_decay=0.0, exact_svd=True)
    for _ in range(40):
        i = torch.randint(0, 256, (1,), generator=g)
        opt.zero_grad()
        ((X[i] @ W.T - Y[i]) ** 2).sum(1).mean().backward()
        opt.step()
    with torch.no_grad():
        assert float(((X @ W.T - Y) ** 2).sum(1).mean()) < 0.6 * float((Y ** 2).sum(1).mean())


def test_warm_started_power_iteration_tracks_the_top_k_subspace_of_a_drifting_matrix() -> None:
    m, n, k = 60, 40, 3
    g = torch.Generator().manual_seed(3)
    M = spiky(m, n, k, 4, spike=10.0)
    V = torch.randn(n, k, generator=g)
    angles = []
    for _ in range(12):
        M = M + 0.02 * torch.randn(m, n, generator=g)  # slow drift
        U, s, V = block_power_iteration(M, V, iters=1)  # ONE step per "training step"
        _, S, Vh = oracle.svd(M)
        top = Vh[:k].mT
        Q = torch.linalg.qr(V.double()).Q
        angles.append(float(oracle.spectral_norm(top - Q @ (Q.mT @ top))))  # sin of largest angle
        assert torch.allclose((U * s) @ V.mT, U @ (U.mT @ M), atol=1e-4)  # U diag(s) V^T = U U^T M
        assert torch.allclose(U.mT @ U, torch.eye(k), atol=1e-5)
    assert angles[-1] < 1e-3 and angles[-1] < angles[0]
    torch.testing.assert_close(s.double(), S[:k], rtol=1e-4, atol=0)


def test_one_power_iteration_per_step_is_close_to_exact_in_the_optimizer() -> None:
    m, n = 64, 48
    base = spiky(m, n, 1, 5)
    g = torch.Generator().manual_seed(6)
    a, b = nn.Parameter(torch.zeros(m, n)), nn.Parameter(torch.zeros(m, n))
    fast = SpikeAware([a], lr=0.01, rank_fraction=0.015, weight_decay=0.0)
    exact = SpikeAware([b], lr=0.01, rank_fraction=0.015, weight_decay=0.0, exact_svd=True)
    for _ in range(6):
        G = base + 0.2 * torch.randn(m, n, generator=g)
        a.grad, b.grad = G.clone(), G.clone()
        fast.step()
        exact.step()
    assert float((a - b).detach().norm() / b.detach().norm()) < 1e-3


def test_rayleigh_ritz_gives_exact_triplets_when_spikes_have_similar_sizes() -> None:
    """With 3 spikes of similar size the QR basis spans the right subspace before its columns align with the
    singular vectors; the Rayleigh-Ritz rotation makes the update match the exact-SVD one anyway, and so does
    the sync-free rotation (no eigh)."""
    m, n, k = 96, 64, 3
    base = spiky(m, n, k, 7)
    g = torch.Generator().manual_seed(8)
    grads = [base + 0.2 * torch.randn(m, n, generator=g) for _ in range(4)]
    finals = {}
    for label, kwargs in (("exact", {"exact_svd": True}), ("rr", {}), ("rr-sync-free", {"sync_free": True}),
                          ("plain", {"rayleigh_ritz": False})):
        p = nn.Parameter(torch.zeros(m, n))
        opt = SpikeAware([p], lr=0.01, rank_fraction=k / n, weight_decay=0.0, **kwargs)
        for G in grads:
            p.grad = G.clone()
            opt.step()
        finals[label] = p.detach()
    error = {label: float((finals[label] - finals["exact"]).norm() / finals["exact"].norm()) for label in finals}
    assert error["rr"] < 1e-3 and error["rr-sync-free"] < 1e-3  # measured 3.7e-4 both
    assert error["plain"] > 10 * error["rr"]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(13, 16)
        self.up = nn.Linear(16, 48)
        self.experts = nn.Parameter(torch.randn(2, 16, 48) / 7)
        self.lm_head = nn.Linear(16, 13, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.up(self.embed(idx)))
        return self.lm_head(torch.einsum("btf,edf->btd", h, self.experts))


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 13, (4, 6), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(idx).flatten(0, 1), idx.flatten()).backward()
        opt.step()


def test_state_dict_resume_continues_identically() -> None:
    torch.manual_seed(0)
    net = _Net()
    opt = SpikeAware(net, lr=0.01, rank_fraction=0.1)
    _train(net, opt, 2)
    twin = copy.deepcopy(net)
    resumed = SpikeAware(twin, lr=0.01, rank_fraction=0.1)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(net, opt, 2, seed=1)
    _train(twin, resumed, 2, seed=1)
    for a, b in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_routing_stats_and_state_bytes() -> None:
    torch.manual_seed(1)
    net = _Net()
    opt = SpikeAware(net, lr=0.01, rank_fraction=0.1, track_stats=True)
    rules = {r.name: r.rule for r in opt.routing}
    assert rules == {"embed.weight": "adamw", "up.weight": "spectral", "up.bias": "adamw", "experts": "spectral",
                     "lm_head.weight": "adamw"}
    assert all(g["weight_decay"] == 0.1 and g["adamw_betas"] == (0.9, 0.95) for g in opt.param_groups
               if g["rule"] == "adamw")
    _train(net, opt, 2)
    stats = opt.statistics()
    assert set(stats) == {"spike/energy_fraction/up.weight", "spike/energy_fraction/experts"}
    assert all(v.dim() == 0 and 0 < float(v) < 1 for v in stats.values())
    sizes = opt.state_bytes()
    k = spike_rank((48, 16), 0.1)
    assert sizes["up.weight"] == 4 * (48 * 16 + 16 * k)
    assert sizes["experts"] == 4 * (2 * 16 * 48 + 2 * 48 * spike_rank((16, 48), 0.1))
    assert sizes["up.bias"] == 4 * 2 * 48  # AdamW's two moments
    assert SpikeAware(net, lr=0.01, rank_fraction=0.1).statistics() == {}


def test_state_is_about_half_of_adamw_for_matrices() -> None:
    p = nn.Parameter(torch.randn(256, 192))
    p.grad = torch.randn(256, 192)
    opt = SpikeAware([p], lr=0.01)
    opt.step()
    adamw = torch.optim.AdamW([p], lr=0.01)
    adamw.step()
    adamw_bytes = sum(t.numel() * t.element_size() for t in adamw.state[p].values() if t.dim() > 0)
    assert opt.state_bytes()["param0"] / adamw_bytes <= 0.51


def test_a_zero_gradient_gives_a_zero_step() -> None:
    p = nn.Parameter(torch.randn(10, 8))
    before = p.detach().clone()
    p.grad = torch.zeros(10, 8)
    SpikeAware([p], lr=0.1, rank_fraction=0.2, weight_decay=0.0).step()
    assert torch.equal(p.detach(), before)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank_fraction": 0.0}, "rank_fraction"), ({"rank_fraction": 1.0}, "rank_fraction"),
    ({"rank_fraction": 0.9}, "k must be < min"), ({"momentum": 1.0}, "momentum"), ({"lr": float("nan")}, "lr"),
    ({"power_iters": 0}, "power_iters"), ({"cold_power_iters": 2.0}, "cold_power_iters"),
    ({"update_scale": 0.0}, "update_scale"), ({"eps": 0.0}, "eps"), ({"weight_decay": -0.1}, "weight_decay"),
])
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    p = nn.Parameter(torch.randn(8, 4))
    with pytest.raises(ValueError, match=match):
        SpikeAware([("w", p)], **{"lr": 0.1, "rank_fraction": 0.25, **kwargs})


def test_a_too_small_matrix_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="tiny.*k must be < min"):
        SpikeAware([("tiny", nn.Parameter(torch.randn(1, 5)))], lr=0.1)


def test_bfloat16_parameters_follow_the_float32_run() -> None:
    m, n = 64, 48
    base = spiky(m, n, 1, 9)
    g = torch.Generator().manual_seed(10)
    a, b = nn.Parameter(torch.zeros(m, n)), nn.Parameter(torch.zeros(m, n, dtype=torch.bfloat16))
    opt_a = SpikeAware([a], lr=0.01, weight_decay=0.0)
    opt_b = SpikeAware([b], lr=0.01, weight_decay=0.0)
    for _ in range(3):
        G = base + 0.2 * torch.randn(m, n, generator=g)
        a.grad, b.grad = G.clone(), G.bfloat16()
        opt_a.step()
        opt_b.step()
    assert opt_b.state[b]["momentum_buffer"].dtype == torch.bfloat16
    assert float((a.detach() - b.detach().float()).norm() / a.detach().norm()) < 2e-2
