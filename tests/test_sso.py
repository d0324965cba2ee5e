"""SSO and MuonSphere: the sphere, tangency, the multiplier solver, atomic blocks, resume, routing, arguments.

The reference below is written from the equations of Xie et al. 2026 (arXiv 2601.08393) with exact SVDs in
float64; the optimizer (power iteration, Polar Express msign in float32, on-device solver) must match it.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _svd_oracle import polar, top_pair
from _svd_oracle import spectral_norm as spectral
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from spectrakit.linalg import msign_svd, solve_multiplier
from spectrakit.linalg.multiplier import solver_shape
from spectrakit.optim.sso import SSO, MuonSphere, atomic_segments, spectral_init_

TOL = 2e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def h_exact(M_hat: torch.Tensor, Theta: torch.Tensor, lam: float) -> float:
    return float((Theta * polar(M_hat + lam * Theta)).sum())


def reference_root(M_hat: torch.Tensor, Theta: torch.Tensor) -> float:
    """Plain scalar bisection on h over [-4, 4] (|root| is far smaller), float64 exact msign."""
    lo, hi = -4.0, 4.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if h_exact(M_hat, Theta, mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def reference_sso(W: torch.Tensor, grads: list[torch.Tensor], lr: float, beta: float = 0.9, r: float = 1.0,
                  use_lambda: bool = True) -> torch.Tensor:
    """SSO from the equations, float64, exact SVD; one matrix, one step per gradient."""
    W = W.double().clone()
    M = torch.zeros_like(W)
    R = r * math.sqrt(W.shape[0] / W.shape[1])
    for G in grads:
        G = G.double()
        M = beta * M + (1 - beta) * G
        N = (1 - beta) * G + beta * M
        M_hat = N / N.norm()
        W = W * R / spectral(W)
        Theta = top_pair(W)
        lam = reference_root(M_hat, Theta) if use_lambda else 0.0
        W = W - lr * R * polar(M_hat + lam * Theta)
    return W


def matrix_with_gap(m: int, n: int, seed: int) -> torch.Tensor:
    """A random matrix whose singular values are spread linearly in [0.5, 2] (a clear top gap)."""
    g = torch.Generator().manual_seed(seed)
    U, _, Vh = torch.linalg.svd(torch.randn(m, n, generator=g), full_matrices=False)
    return (U * torch.linspace(2.0, 0.5, min(m, n))) @ Vh


# ----------------------------------------------------------------------------------------- the solver
@settings(max_examples=12, deadline=None)
@given(m=st.integers(3, 9), n=st.integers(3, 9), seed=st.integers(0, 10_000))
def test_h_is_monotone_and_the_solver_finds_its_root(m: int, n: int, seed: int) -> None:
    """h is the derivative of the convex lambda -> ||M_hat + lambda Theta||_*, so non-decreasing; it may jump
    (square matrices), so "root" means a sign change, and the answer must satisfy the optimality conditions
    of max <M_hat, Phi> s.t. ||Phi||_2 <= 1, <Theta, Phi> = 0: feasible, and Phi a subgradient of the nuclear
    norm at M_hat + lambda Theta."""
    g = torch.Generator().manual_seed(seed)
    Theta = top_pair(torch.randn(m, n, generator=g, dtype=torch.float64))
    M_hat = torch.randn(m, n, generator=g, dtype=torch.float64)
    M_hat /= M_hat.norm()
    grid = torch.linspace(-1.0, 1.0, 21, dtype=torch.float64)
    values = torch.tensor([h_exact(M_hat, Theta, float(x)) for x in grid])
    assert torch.all(values[1:] >= values[:-1] - 1e-9), "h(lambda) must be non-decreasing"
    assert values[0] < 0 < values[-1]
    for method in ("bisection", "illinois"):
        # 13 doublings reach |lambda| = 8.2: tiny matrices can have roots beyond the default reach of 0.51
        answer = solve_multiplier(M_hat, Theta, method=method, msign_fn=msign_svd, tol=TOL, max_iter=40,
                                  bracket_steps=13)
        lam, phi = float(answer.lam), answer.phi
        assert not bool(answer.fallback)
        assert abs(float((Theta * phi).sum())) <= TOL
        assert float(answer.h) == pytest.approx(float((Theta * phi).sum()), abs=1e-12)
        assert h_exact(M_hat, Theta, lam - 1e-6) <= TOL and h_exact(M_hat, Theta, lam + 1e-6) >= -TOL
        assert float(spectral(phi)) <= 1 + 1e-9
        A = M_hat + lam * Theta
        assert float((A * phi).sum()) >= float(torch.linalg.matrix_norm(A, ord="nuc")) - 1e-4


def _jump_case():
    """A square problem whose sign change of h is at its jump (M_hat + lambda Theta singular there)."""
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        Theta = top_pair(torch.randn(5, 5, generator=g, dtype=torch.float64))
        M_hat = torch.randn(5, 5, generator=g, dtype=torch.float64)
        M_hat /= M_hat.norm()
        answer = solve_multiplier(M_hat, Theta, msign_fn=msign_svd, max_iter=40)
        lam = float(answer.lam)
        if h_exact(M_hat, Theta, lam + 1e-7) - h_exact(M_hat, Theta, lam - 1e-7) > 0.05:
            return M_hat, Theta, answer
    pytest.fail("no jump found")


def test_a_jump_of_h_is_resolved_by_a_tangent_subgradient() -> None:
    """Square matrices: M_hat + lambda Theta is singular at one lambda, where msign (and h) jumps. Pick a case
    whose sign change is at the jump; no msign(M_hat + lambda Theta) is tangent there, the blend is."""
    M_hat, Theta, answer = _jump_case()
    lam = float(answer.lam)
    assert abs(float((Theta * answer.phi).sum())) <= 1e-9
    A = M_hat + lam * Theta
    assert float((A * answer.phi).sum()) == pytest.approx(float(torch.linalg.matrix_norm(A, ord="nuc")), abs=1e-6)


def test_a_shrinking_batch_gives_the_answers_of_the_full_one_at_a_jump_too() -> None:
    """With host reads each round evaluates only the unfinished matrices (a shrinking batch), without them every
    matrix: the same answers, the jump's blend of the bracket's two ends included (a batch of the jump case,
    problems finishing early, one at lambda_0 and a far root)."""
    M_jump, Theta_jump, _ = _jump_case()
    g = torch.Generator().manual_seed(5)
    Theta = torch.cat([Theta_jump[None], top_pair(torch.randn(4, 5, 5, generator=g, dtype=torch.float64))])
    M_hat = torch.cat([M_jump[None], torch.randn(4, 5, 5, generator=g, dtype=torch.float64)])
    M_hat[4] = 0.5 * Theta[4] + 0.05 * M_hat[4]  # mostly along Theta: a root far below 0
    M_hat /= torch.linalg.matrix_norm(M_hat, keepdim=True)
    in_place = solve_multiplier(M_hat, Theta, msign_fn=msign_svd, max_iter=40, bracket_steps=12)
    warm = in_place.lam.clone()
    warm[1] += 1e-3
    warm[3] = 0.0
    for lam0 in (None, warm):
        kept = solve_multiplier(M_hat, Theta, lam0, msign_fn=msign_svd, max_iter=40, bracket_steps=12)
        selected = solve_multiplier(M_hat, Theta, lam0, msign_fn=msign_svd, max_iter=40, bracket_steps=12,
                                    sync=False)
        assert not bool(kept.fallback.any())
        for got, ref in ((kept.lam, selected.lam), (kept.h, selected.h), (kept.phi, selected.phi)):
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    assert abs(float(in_place.h[0])) <= 1e-9 and float(in_place.lam[4]) < -0.3


def test_solver_handles_a_batch_like_single_problems_and_without_host_sync() -> None:
    g = torch.Generator().manual_seed(1)
    Theta = top_pair(torch.randn(4, 8, 6, generator=g, dtype=torch.float64))
    M_hat = torch.randn(4, 8, 6, generator=g, dtype=torch.float64)
    M_hat /= torch.linalg.matrix_norm(M_hat, keepdim=True)
    warm = torch.tensor([0.0, 0.05, -0.05, 0.3], dtype=torch.float64)
    batched = solve_multiplier(M_hat, Theta, warm, msign_fn=msign_svd)
    fixed = solve_multiplier(M_hat, Theta, warm, msign_fn=msign_svd, sync=False)
    assert fixed.calls == 1 + 10 + 20 + 1  # every round runs, then lambda = 0 is evaluated for the fallback
    for i in range(4):
        single = solve_multiplier(M_hat[i], Theta[i], warm[i], msign_fn=msign_svd)
        assert float(single.lam) == pytest.approx(float(batched.lam[i]), abs=1e-12)
        assert abs(float(batched.h[i])) <= TOL and abs(float(fixed.h[i])) <= TOL
        root = reference_root(M_hat[i], Theta[i])
        assert float(batched.lam[i]) == pytest.approx(root, abs=2e-3)


def test_a_round_evaluates_only_the_unfinished_matrices() -> None:
    """With host syncs allowed, each round's msign gets only the matrices still unfinished (a shrinking batch), and
    the answers are those of the run that evaluates every matrix in every round."""
    g = torch.Generator().manual_seed(3)
    Theta = top_pair(torch.randn(6, 8, 6, generator=g, dtype=torch.float64))
    M_hat = torch.randn(6, 8, 6, generator=g, dtype=torch.float64)
    M_hat /= torch.linalg.matrix_norm(M_hat, keepdim=True)
    warm = torch.tensor([0.0, 0.01, -0.02, 0.3, -0.5, 0.05], dtype=torch.float64)
    sizes: list[int] = []
    compact = solve_multiplier(M_hat, Theta, warm, msign_fn=lambda X: sizes.append(X.shape[0]) or msign_svd(X))
    full = solve_multiplier(M_hat, Theta, warm, msign_fn=msign_svd, sync=False)
    assert sizes[0] == 6 and sizes == sorted(sizes, reverse=True) and sizes[-1] < 6
    assert len(sizes) == compact.calls
    assert torch.allclose(compact.lam, full.lam, rtol=0, atol=1e-9)
    assert torch.allclose(compact.phi, full.phi, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("shape", "solved"), [((3, 5, 24), (5, 6)), ((3, 24, 5), (5, 6)), ((3, 7, 7), (7, 8)),
                                               ((3, 6, 7), (6, 7)), ((3, 9, 8), (8, 9)), ((3, 8, 9), (8, 9)),
                                               ((3, 8, 10), (8, 10))])
def test_a_rank_one_theta_given_by_its_vectors_solves_in_a_small_basis(shape: tuple[int, int, int],
                                                                       solved: tuple[int, int]) -> None:
    """Theta = (u, v): where q + 1 columns save work (wide or tall), each msign runs on q x (q + 1) matrices, a
    square problem gets a zero column (so it stacks with those), and the rest stay wide q x p; lambda, h and Phi
    are those of the solve with the full matrix u v^T."""
    g = torch.Generator().manual_seed(4)
    U, _, Vh = torch.linalg.svd(torch.randn(shape, generator=g, dtype=torch.float64), full_matrices=False)
    u, v = U[..., 0], Vh[..., 0, :]
    M_hat = torch.randn(shape, generator=g, dtype=torch.float64)
    M_hat /= torch.linalg.matrix_norm(M_hat, keepdim=True)
    seen: list[tuple[int, ...]] = []
    small = solve_multiplier(M_hat, (u, v), msign_fn=lambda X: seen.append(tuple(X.shape[-2:])) or msign_svd(X))
    full = solve_multiplier(M_hat, u[..., :, None] * v[..., None, :], msign_fn=msign_svd)
    assert set(seen) == {solved} and solver_shape(*shape[1:]) == solved
    assert small.calls == full.calls
    assert torch.allclose(small.lam, full.lam, rtol=0, atol=1e-10)
    assert torch.allclose(small.h, full.h, rtol=0, atol=1e-10)
    assert small.phi.shape == shape and torch.allclose(small.phi, full.phi, rtol=0, atol=1e-10)


def test_theta_vectors_of_the_wrong_shape_are_named() -> None:
    M_hat = torch.randn(2, 4, 9, dtype=torch.float64)
    with pytest.raises(ValueError, match="v must have shape"):
        solve_multiplier(M_hat, (torch.ones(2, 4), torch.ones(2, 4)))
    with pytest.raises(ValueError, match="u must have shape"):
        solve_multiplier(M_hat, (torch.ones(4), torch.ones(2, 9)))


def test_illinois_needs_fewer_msign_calls_than_bisection() -> None:
    g = torch.Generator().manual_seed(2)
    Theta = top_pair(torch.randn(16, 12, 10, generator=g, dtype=torch.float64))
    M_hat = torch.randn(16, 12, 10, generator=g, dtype=torch.float64)
    M_hat /= torch.linalg.matrix_norm(M_hat, keepdim=True)
    calls = {}
    for method in ("bisection", "illinois"):
        answer = solve_multiplier(M_hat, Theta, method=method, msign_fn=msign_svd, tol=1e-6, max_iter=40)
        assert float(answer.h.abs().max()) <= 1e-6
        calls[method] = answer.calls
    assert calls["illinois"] < calls["bisection"]


def test_illinois_brackets_a_far_root_by_the_secant_in_fewer_calls_than_doubling(monkeypatch) -> None:
    """A root ~0.5 away from lambda_0 = 0 (M_hat mostly along Theta): doubling from 1e-3 needs ~9 expansions;
    the secant extrapolation of the Illinois bracketing brackets it in a few. Same root, same tolerance."""
    import spectrakit.linalg.multiplier as multiplier
    g = torch.Generator().manual_seed(3)
    Theta = top_pair(torch.randn(6, 5, generator=g, dtype=torch.float64))
    M_hat = 0.5 * Theta + 0.1 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    M_hat /= M_hat.norm()
    secant = solve_multiplier(M_hat, Theta, method="illinois", msign_fn=msign_svd, bracket_steps=12)
    monkeypatch.setattr(multiplier, "_secant_reach", lambda doubling, *args: doubling)
    doubling = solve_multiplier(M_hat, Theta, method="illinois", msign_fn=msign_svd, bracket_steps=12)
    for answer in (secant, doubling):
        assert not bool(answer.fallback) and abs(float(answer.h)) <= TOL
    assert float(secant.lam) == pytest.approx(reference_root(M_hat, Theta), abs=2e-3)
    assert secant.calls + 3 <= doubling.calls


def test_secant_reach_is_never_nearer_than_doubling_nor_beyond_its_range() -> None:
    from spectrakit.linalg.multiplier import SECANT_OVERSHOOT, _secant_reach
    f64 = dict(dtype=torch.float64)
    lam0, h0 = torch.zeros(4, **f64), torch.full((4,), 0.5, **f64)  # h > 0: outward is downwards
    last = torch.tensor([0.0, -0.01, -0.01, -0.01], **f64)  # the first has no second point yet
    h_last = torch.tensor([0.5, 0.4, 0.4999999, 0.6], **f64)  # secant root -0.05; nearly flat; increasing h
    doubling = torch.full((4,), -0.02, **f64)
    got = _secant_reach(doubling, lam0, h0, last, h_last, torch.ones(4, **f64), reach=1.0)
    assert got[0] == -0.02 and got[3] == -0.02  # no usable secant: the doubling trial
    assert float(got[1]) == pytest.approx(-0.01 - SECANT_OVERSHOOT * 0.04, abs=1e-12)  # past the root -0.05
    assert got[2] == -1.0  # a nearly flat pair extrapolates far: capped at the doubling's reach


def test_failed_bracketing_falls_back_to_lambda_zero() -> None:
    g = torch.Generator().manual_seed(3)
    Theta = top_pair(torch.randn(6, 5, generator=g, dtype=torch.float64))
    M_hat = 0.5 * Theta + 0.1 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    M_hat /= M_hat.norm()  # mostly along Theta: h(0) ~ 1 and the root lies far below -1e-3 (2^2 - 1)
    for lam0, sync in ((None, True), (torch.tensor(0.01, dtype=torch.float64), True), (None, False)):
        answer = solve_multiplier(M_hat, Theta, lam0, msign_fn=msign_svd, bracket_steps=2, sync=sync)
        assert bool(answer.fallback) and float(answer.lam) == 0.0
        torch.testing.assert_close(answer.phi, polar(M_hat))
    reached = solve_multiplier(M_hat, Theta, msign_fn=msign_svd, bracket_steps=12)  # offsets up to 2.048
    assert not bool(reached.fallback) and float(reached.lam) < -0.5 and abs(float(reached.h)) <= TOL


def test_zero_momentum_gives_a_zero_step() -> None:
    W = matrix_with_gap(6, 4, 0)
    answer = solve_multiplier(torch.zeros(6, 4, dtype=torch.float64), top_pair(W).to(torch.float64),
                              msign_fn=msign_svd)
    assert float(answer.lam) == 0.0 and answer.calls == 1
    assert torch.count_nonzero(answer.phi) == 0


# ---------------------------------------------------------------------------------- the update rule
@pytest.mark.parametrize("sync_free", [False, True], ids=["synchronising", "sync-free"])
@pytest.mark.parametrize("solver", ["bisection", "illinois", None])
def test_matches_the_reference_from_the_equations(solver: str | None, sync_free: bool) -> None:
    """Sync-free: the top triplet without SVD (top_triplet) and the solver's full budget."""
    W0 = matrix_with_gap(12, 8, 4) * 3.0
    g = torch.Generator().manual_seed(5)
    grads = [torch.randn(12, 8, generator=g) for _ in range(4)]
    p = nn.Parameter(W0.clone())
    opt = SSO([p], lr=0.05, solver=solver, solver_tol=1e-6, solver_max_iter=40, sync_free=sync_free)
    for G in grads:
        p.grad = G.clone()
        opt.step()
    expected = reference_sso(W0, grads, lr=0.05, use_lambda=solver is not None)
    torch.testing.assert_close(p.detach().double(), expected, atol=2e-3, rtol=0)


def test_muon_sphere_is_sso_without_the_solver() -> None:
    W0 = matrix_with_gap(10, 6, 6)
    G = torch.randn(10, 6, generator=torch.Generator().manual_seed(7))
    a, b = nn.Parameter(W0.clone()), nn.Parameter(W0.clone())
    a.grad, b.grad = G.clone(), G.clone()
    MuonSphere([a], lr=0.03).step()
    SSO([b], lr=0.03, solver=None).step()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="solver"):
        MuonSphere([a], lr=0.03, solver="bisection")


def test_the_step_is_tangent_with_unit_spectral_norm() -> None:
    W0 = matrix_with_gap(16, 12, 8)
    spectral_init_([W0])
    lr = 0.01
    p = nn.Parameter(W0.clone())
    p.grad = torch.randn(16, 12, generator=torch.Generator().manual_seed(9))
    SSO([p], lr=lr).step()
    R = math.sqrt(16 / 12)
    retracted = W0.double() * R / spectral(W0)
    phi = (retracted - p.detach().double()) / (lr * R)
    assert abs(float((top_pair(retracted) * phi).sum())) <= 5 * TOL
    assert float(spectral(phi)) == pytest.approx(1.0, abs=2e-2)


def test_muon_sphere_step_is_not_tangent() -> None:  # the contrast that makes the tangency test meaningful
    W0 = matrix_with_gap(16, 12, 8)
    spectral_init_([W0])
    lr, R = 0.01, math.sqrt(16 / 12)
    p = nn.Parameter(W0.clone())
    p.grad = top_pair(W0).float() + 0.1 * torch.randn(16, 12, generator=torch.Generator().manual_seed(9))
    MuonSphere([p], lr=lr).step()
    phi = (W0.double() * R / spectral(W0) - p.detach().double()) / (lr * R)
    assert abs(float((top_pair(W0) * phi).sum())) > 100 * TOL


class _Net(nn.Module):
    """Embedding, fused QKV (split per head), a fused gate/up, stacked experts, norm and head."""

    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.gate_up = nn.Linear(d, 4 * d, bias=False)
        self.experts = nn.Parameter(torch.randn(3, 2 * d, d) / d)
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, 11, bias=False)
        self.d, self.heads = d, heads

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        x = x + torch.tanh(q * k) * v + (torch.nn.functional.silu(gate) * up).mean(-1, keepdim=True)
        x = x + torch.einsum("btd,eod->bto", x, self.experts)[..., : self.d]
        return self.lm_head(self.norm(x))


def _groups(net: _Net) -> list[dict]:
    return [{"params": [("qkv.weight", net.qkv.weight)], "split_sizes": [net.d] * 3, "heads": net.heads},
            {"params": [("gate_up.weight", net.gate_up.weight)], "split_sizes": [2 * net.d, 2 * net.d]},
            {"params": [(n, p) for n, p in net.named_parameters() if n not in ("qkv.weight", "gate_up.weight")]}]


def _train(net: _Net, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 11, (4, 5), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(idx).flatten(0, 1), idx.roll(1, -1).flatten()).backward()
        opt.step()


def _blocks(net: _Net) -> list[tuple[torch.Tensor, float]]:
    """Every atomic block and its radius R = sqrt(rows / cols)."""
    d, h = net.d, net.heads
    out = [(blk, math.sqrt((d // h) / d)) for blk in net.qkv.weight.detach().split(d // h)]
    out += [(blk, math.sqrt(2)) for blk in net.gate_up.weight.detach().split(2 * d)]
    out += [(e, math.sqrt(2)) for e in net.experts.detach()]
    return out


@pytest.mark.parametrize("sync_free", [False, True], ids=["synchronising", "sync-free"])
def test_every_block_is_on_its_sphere_after_the_retraction_and_near_it_after_the_step(sync_free: bool) -> None:
    """Hard retraction puts every atomic block on ||W||_2 = R at the start of each step; the tangent step then
    moves it by at most lr R (Weyl), and only to second order. A step with lr = 0 is a pure retraction. The
    sync-free sigma (top_triplet, stacked blocks of several shapes) retracts as well."""
    torch.manual_seed(0)
    net = _Net()
    lr = 0.02
    opt = SSO(_groups(net), lr=lr, sync_free=sync_free)
    for _ in range(6):
        _train(net, opt, 1)
        for block, R in _blocks(net):
            assert abs(float(spectral(block)) / R - 1) <= lr * 1.05
    opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = opt.param_groups[2]["lr"] = 0.0
    _train(net, opt, 1)
    for block, R in _blocks(net):
        assert float(spectral(block)) == pytest.approx(R, rel=1e-3)
    with torch.no_grad():  # the fused matrix as a whole is NOT on a sphere: each block is on its own
        assert float(spectral(net.qkv.weight)) > 1.2 * math.sqrt(4 / 8)


def test_leaving_the_sphere_is_second_order_in_lr() -> None:
    W0 = matrix_with_gap(24, 16, 10)
    spectral_init_([W0])
    G = torch.randn(24, 16, generator=torch.Generator().manual_seed(11))
    R = math.sqrt(24 / 16)
    deviations = []
    for lr in (0.02, 0.01):
        p = nn.Parameter(W0.clone())
        p.grad = G.clone()
        SSO([p], lr=lr).step()
        deviations.append(float(spectral(p)) / R - 1)
    assert max(abs(x) for x in deviations) < 0.1 * 0.02  # far below the first-order bound lr
    assert deviations[0] / deviations[1] == pytest.approx(4.0, rel=0.15)


def test_split_blocks_behave_as_separate_parameters() -> None:
    g = torch.Generator().manual_seed(12)
    fused = nn.Parameter(torch.randn(12, 6, generator=g))
    parts = [nn.Parameter(blk.clone()) for blk in fused.detach().split([4, 4, 2, 2])]
    opt_fused = SSO([{"params": [fused], "split_sizes": [8, 4], "heads": 2}], lr=0.05, cold_power_iters=200)
    opt_parts = SSO(parts, lr=0.05, cold_power_iters=200)
    for _ in range(3):
        G = torch.randn(12, 6, generator=g)
        fused.grad = G.clone()
        for part, grad in zip(parts, G.split([4, 4, 2, 2])):
            part.grad = grad.clone()
        opt_fused.step()
        opt_parts.step()
    torch.testing.assert_close(fused.detach(), torch.cat([p.detach() for p in parts]), atol=1e-4, rtol=0)


def test_atomic_segments() -> None:
    segs = atomic_segments(24, [8, 8, 4, 4], heads=2)
    assert [(s.start, s.count, s.rows) for s in segs] == [(0, 4, 4), (16, 4, 2)]
    X = torch.arange(24.0 * 3).reshape(24, 3)
    assert segs[1].view(X).shape == (4, 2, 3) and segs[1].view(X).data_ptr() == X[16].data_ptr()
    assert [(s.count, s.rows) for s in atomic_segments(6)] == [(1, 6)]
    with pytest.raises(ValueError, match="sum"):
        atomic_segments(10, [4, 4])
    with pytest.raises(ValueError, match="heads"):
        atomic_segments(10, [5, 5], heads=2)


def test_weight_decay_is_a_no_op_under_hard_retraction_but_not_dynamic() -> None:
    W0 = matrix_with_gap(8, 6, 13)
    G = torch.randn(8, 6, generator=torch.Generator().manual_seed(14))
    out = {}
    for retraction in ("hard", "dynamic"):
        for wd in (0.0, 0.5):
            p = nn.Parameter(W0.clone())
            p.grad = G.clone()
            SSO([p], lr=0.1, weight_decay=wd, retraction=retraction).step()
            out[retraction, wd] = p.detach()
    torch.testing.assert_close(out["hard", 0.0], out["hard", 0.5], atol=1e-6, rtol=0)
    assert not torch.allclose(out["dynamic", 0.0], out["dynamic", 0.5])


@pytest.mark.parametrize("times_lr", [False, True])
def test_dynamic_retraction_scales_by_one_plus_rate_sign(times_lr: bool) -> None:
    W0 = matrix_with_gap(8, 6, 15) * 5  # sigma = 10 > R
    G = torch.randn(8, 6, generator=torch.Generator().manual_seed(16))
    lr, rate, R = 0.1, 0.07, math.sqrt(8 / 6)
    p, q = nn.Parameter(W0.clone()), nn.Parameter(W0.clone())
    p.grad, q.grad = G.clone(), G.clone()
    SSO([p], lr=lr, retraction="dynamic", retraction_rate=rate, retraction_rate_times_lr=times_lr).step()
    SSO([q], lr=lr, retraction="hard").step()  # same Phi (the retraction keeps Theta), different scale
    a = rate * lr if times_lr else rate
    step = (W0 * R / 10.0 - q.detach()) / (lr * R)
    torch.testing.assert_close(p.detach(), W0 * (1 - a) - lr * R * step, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------- init, stats, resume
def test_spectral_init_puts_hidden_matrices_on_their_spheres_and_leaves_the_rest() -> None:
    torch.manual_seed(1)
    net = _Net()
    embed, head = net.embed.weight.detach().clone(), net.lm_head.weight.detach().clone()
    spectral_init_(net, radius_scale=2.0)
    assert float(spectral(net.qkv.weight)) == pytest.approx(2 * math.sqrt(3), rel=1e-5)
    for e in net.experts.detach():
        assert float(spectral(e)) == pytest.approx(2 * math.sqrt(2), rel=1e-5)
    assert torch.equal(net.embed.weight, embed) and torch.equal(net.lm_head.weight, head)
    W = torch.randn(12, 4)
    spectral_init_([W], split_sizes=[8, 4], heads=2)
    for blk in W.split([4, 4, 2, 2]):
        assert float(spectral(blk)) == pytest.approx(math.sqrt(blk.shape[0] / 4), rel=1e-5)


def test_statistics_are_scalar_tensors_only_when_tracked() -> None:
    torch.manual_seed(2)
    net = _Net()
    opt = SSO(_groups(net), lr=0.01, track_stats=True)
    _train(net, opt, 2)
    stats = opt.statistics()
    assert set(stats) == {"sso/msign_calls", "sso/solves", "sso/fallbacks", "sso/max_abs_h",
                          "sso/sigma/qkv.weight", "sso/lambda/qkv.weight",
                          "sso/sigma/gate_up.weight", "sso/lambda/gate_up.weight", "sso/sigma/experts",
                          "sso/lambda/experts"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in stats.values())
    assert float(stats["sso/msign_calls"]) == opt.msign_calls >= float(stats["sso/solves"]) == 3  # 1 run each
    assert float(stats["sso/fallbacks"]) == 0 and float(stats["sso/max_abs_h"]) <= TOL
    assert float(stats["sso/sigma/qkv.weight"]) == pytest.approx(math.sqrt(0.5), rel=0.05)
    quiet = SSO(_groups(_Net()), lr=0.01)
    assert quiet.statistics() == {}


def test_state_dict_resume_continues_identically() -> None:
    torch.manual_seed(3)
    net = _Net()
    opt = SSO(_groups(net), lr=0.02)
    _train(net, opt, 2)
    twin = copy.deepcopy(net)
    resumed = SSO(_groups(twin), lr=0.02)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(net, opt, 2, seed=1)
    _train(twin, resumed, 2, seed=1)
    for a, b in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_routing_sends_embeddings_head_and_vectors_to_adamw() -> None:
    net = _Net()
    opt = SSO(net, lr=0.02)
    rules = {r.name: r.rule for r in opt.routing}
    assert rules == {"embed.weight": "adamw", "qkv.weight": "spectral", "gate_up.weight": "spectral",
                     "experts": "spectral", "norm.weight": "adamw", "norm.bias": "adamw", "lm_head.weight": "adamw"}
    adamw = [g for g in opt.param_groups if g["rule"] == "adamw"]
    assert all(g["weight_decay"] == 0.1 and g["adamw_betas"] == (0.9, 0.95) for g in adamw)
    with pytest.raises(ValueError, match="needs matrices"):
        SSO([("gain", nn.Parameter(torch.ones(3)))], lr=0.1, fallback=())


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": -1.0}, "lr"), ({"momentum": 1.0}, "momentum"), ({"nesterov": 1}, "nesterov"),
    ({"radius_scale": 0.0}, "radius_scale"), ({"retraction": "soft"}, "retraction"),
    ({"retraction_rate": -0.1}, "retraction_rate"), ({"solver": "newton"}, "solver"),
    ({"solver_tol": 0}, "solver_tol"), ({"solver_max_iter": 0}, "solver_max_iter"),
    ({"solver_bracket_steps": 1.5}, "solver_bracket_steps"), ({"power_iters": 0}, "power_iters"),
    ({"power_rank": 0}, "power_rank"), ({"ns_steps": True}, "ns_steps"), ({"batch": 0}, "batch"),
    ({"ns_dtype": torch.int32}, "ns_dtype"), ({"split_sizes": [4, 0]}, "split_sizes"),
    ({"split_sizes": [3, 3]}, "must sum"), ({"heads": 3}, "heads"), ({"weight_decay": -1.0}, "weight_decay"),
])
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    p = nn.Parameter(torch.randn(8, 4))
    with pytest.raises(ValueError, match=match):
        SSO([p], **{"lr": 0.1, **kwargs})


def test_bfloat16_parameters_train_and_resume_with_float32_solver_state() -> None:
    W0 = matrix_with_gap(12, 8, 17).bfloat16()
    g = torch.Generator().manual_seed(18)
    p = nn.Parameter(W0.clone())
    opt = SSO([p], lr=0.02)
    for _ in range(2):
        p.grad = torch.randn(12, 8, generator=g).bfloat16()
        opt.step()
    resumed = SSO([p], lr=0.02)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    state = resumed.state[p]
    assert state["momentum_buffer"].dtype == torch.bfloat16
    assert all(state[key].dtype == torch.float32 for key in ("power_v", "lambda", "sigma"))
    p.grad = torch.randn(12, 8, generator=g).bfloat16()
    resumed.step()
    assert p.dtype == torch.bfloat16 and float(spectral(p.float())) == pytest.approx(math.sqrt(12 / 8), rel=0.03)


def test_loading_tolerates_state_entries_that_are_not_per_parameter_dicts() -> None:
    """torch allows other entries in ``state`` (here a load post-hook stores a flag); loading must not assume
    every entry is a parameter's dict, and still gives the solver its float32 state."""
    p = nn.Parameter(matrix_with_gap(12, 8, 20).bfloat16())
    opt = SSO([p], lr=0.02)
    p.grad = torch.randn(12, 8, generator=torch.Generator().manual_seed(21)).bfloat16()
    opt.step()
    resumed = SSO([p], lr=0.02)
    resumed.register_load_state_dict_post_hook(lambda o: o.state.__setitem__("loaded", True))
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert resumed.state["loaded"] is True
    assert all(resumed.state[p][key].dtype == torch.float32 for key in ("power_v", "lambda", "sigma"))


def test_same_shape_blocks_of_different_parameters_are_solved_together() -> None:
    g = torch.Generator().manual_seed(19)
    shapes = [(6, 10), (6, 10), (12, 10), (2, 6, 10)]  # the (12, 10) matrix is split into two 6 x 10 heads
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    results, solves = {}, {}
    for batch in (1, 64):
        params = [nn.Parameter(w.clone()) for w in start]
        opt = SSO([{"params": params[:2] + params[3:]}, {"params": [params[2]], "heads": 2}], lr=0.05, batch=batch)
        for step_grads in grads:
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
            opt.step()
        results[batch], solves[batch] = [p.detach() for p in params], opt.solves
    assert solves == {1: 4, 64: 2}  # group 1: three parameters (4 blocks) in one solve; group 2: one
    for a, b in zip(results[1], results[64]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_blocks_of_different_shapes_with_one_solver_shape_share_one_solve() -> None:
    """Wide, tall, square and stacked blocks with the same q (each solved as a q x (q + 1) problem) take one
    multiplier solve per step, and reach the same weights and roots as when each is solved alone."""
    g = torch.Generator().manual_seed(23)
    shapes = [(6, 24), (24, 6), (6, 6), (2, 6, 24)]
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    results, roots, solves = {}, {}, {}
    for batch in (1, 64):
        params = [nn.Parameter(w.clone()) for w in start]
        opt = SSO(params, lr=0.05, batch=batch)
        for step_grads in grads:
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
            opt.step()
        results[batch], solves[batch] = [p.detach() for p in params], opt.solves
        roots[batch] = [opt.state[p]["lambda"].clone() for p in params]
    assert solves == {1: 4, 64: 1}
    for a, b in zip(results[1], results[64]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for a, b in zip(roots[1], roots[64]):
        assert a.abs().min() > 1e-4  # the roots are not all zero, so a mix-up of blocks would show
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
