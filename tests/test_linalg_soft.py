"""soft_clip (SPECTRA's H_c) against the exact float64 SVD oracle."""

from __future__ import annotations

import math

import _svd_oracle as oracle
import pytest
import torch
from _linalg_cases import KINDS, make_matrix, rel_err, with_singular_values
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrakit.linalg import hard_clip, soft_clip, soft_clip_svd

RATIOS = (1e-2, 1.0, 10.0, 100.0, 1e3, 1e4)
SHAPES = ((24, 16), (16, 40), (1, 30), (30, 1))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_polar_meets_1e3_in_float32_for_all_ratios(shape, kind):
    for i, ratio in enumerate(RATIOS):
        for scale in (1e-6, 1.0, 1e6):
            X = make_matrix(*shape, kind, ratio * scale, seed=i).float()
            c = scale
            Y = soft_clip(X, c, method="polar")
            assert Y.dtype == torch.float32 and Y.shape == X.shape
            err = rel_err(Y, oracle.soft_clip(X, c))
            assert err <= 1e-3, (shape, kind, ratio, scale, err)


@pytest.mark.parametrize("ratio", RATIOS)
def test_polar_no_sync_schedule_is_accurate_too(ratio):
    X = make_matrix(20, 32, "logspace", ratio, seed=3).float()
    for dtype in (None, torch.float64):
        assert rel_err(soft_clip(X, 1.0, method="polar", adaptive=False, dtype=dtype), oracle.soft_clip(X, 1.0)) <= 1e-3


@pytest.mark.parametrize("ratio", (1e-2, 1.0, 1e2, 1e4, 1e8, 1e12))
def test_bfloat16_inputs_never_give_nan_or_inf(ratio):
    for kind in KINDS:
        for scale in (1e-6, 1.0, 1e6):
            X = make_matrix(12, 20, kind, ratio * scale).to(torch.bfloat16)
            for method in ("polar", "auto"):
                Y = soft_clip(X, scale, method=method)
                assert Y.dtype == torch.bfloat16
                assert torch.isfinite(Y).all(), (kind, ratio, scale, method)
                if ratio <= 1e4:  # bfloat16 output rounding is ~4e-3 relative
                    assert rel_err(Y, oracle.soft_clip(X, scale)) <= 1e-2


def test_float64_input_is_accurate_to_float64_level():
    X = make_matrix(16, 24, "logspace", 30.0)
    assert rel_err(soft_clip(X, 1.0, method="polar"), oracle.soft_clip(X, 1.0)) <= 1e-10


def test_svd_method_and_oracle_agree():
    X = make_matrix(10, 7, "spiky", 50.0).float()
    assert rel_err(soft_clip(X, 2.0, method="svd"), oracle.soft_clip(X, 2.0)) <= 1e-6
    assert rel_err(soft_clip_svd(X.double(), 2.0), oracle.soft_clip(X, 2.0)) <= 1e-12


def test_newton_schulz_baseline_is_accurate_only_at_small_ratio():
    small, large = (make_matrix(16, 24, "logspace", r).float() for r in (1.0, 300.0))
    ns = {"method": "newton_schulz", "dtype": torch.float32}
    assert rel_err(soft_clip(small, 1.0, **ns), oracle.soft_clip(small, 1.0)) <= 1e-4
    assert rel_err(soft_clip(large, 1.0, **ns), oracle.soft_clip(large, 1.0)) > 1e-2


def test_batched_equals_looped_and_tensor_threshold_broadcasts():
    X = torch.stack([torch.stack([make_matrix(12, 20, k, r, seed=j) for k in KINDS])
                     for j, r in enumerate((0.5, 30.0, 3e3))]).float()  # (3, 4, 12, 20)
    c = torch.tensor([[0.5, 1.0, 2.0, 4.0]] * 3)
    Y, bound = soft_clip(X, c, method="polar", return_bound=True)
    assert Y.shape == X.shape and bound.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            single = soft_clip(X[i, j], float(c[i, j]), method="polar")
            # with CPU defaults the batch's step count and precision follow its hardest matrix: agreement
            # within the schedule tolerance (1e-4); the fixed schedule agrees to rounding (test below)
            assert rel_err(Y[i, j], single.double()) <= 2e-4
            assert rel_err(Y[i, j], oracle.soft_clip(X[i, j], float(c[i, j]))) <= 1e-3


def test_batched_equals_looped_exactly_with_fixed_schedule():
    X = torch.stack([make_matrix(8, 12, k, r, seed=i) for i, (k, r) in enumerate(zip(KINDS, (0.5, 5, 50, 5e3)))])
    Y = soft_clip(X, 1.0, method="polar", adaptive=False)
    for i in range(4):
        assert rel_err(Y[i], soft_clip(X[i], 1.0, method="polar", adaptive=False)) <= 1e-12


def test_bound_is_an_upper_bound_on_sigma_max_and_not_too_loose():
    for kind in KINDS:
        X = make_matrix(16, 64, kind, 7.0).float()
        _, bound = soft_clip(X, 1.0, method="polar", return_bound=True)
        smax = oracle.spectral_norm(X)
        assert smax * (1 - 1e-5) <= bound <= smax * 16 ** 0.25 * 1.01


def test_scaling_law():
    X = make_matrix(14, 22, "logspace", 20.0).float()
    base = soft_clip(X, 3.0, method="polar").double()
    for t in (1e-3, 7.0, 1e4):
        assert rel_err(soft_clip(t * X, 3.0 * t, method="polar") / t, base) <= 1e-4


def test_singular_values_are_mapped_monotonically():
    X = make_matrix(20, 30, "logspace", 100.0).float()
    Y = soft_clip(X, 1.0, method="polar")
    s_in = oracle.singular_values(X)
    s_out = oracle.singular_values(Y)
    assert torch.all(s_out[:-1] >= s_out[1:] - 1e-6)
    assert torch.allclose(s_out, s_in / torch.sqrt(1 + s_in**2), atol=1e-4)
    assert s_out.max() <= 1.0 + 1e-5


def test_zero_maps_to_zero_and_nan_propagates():
    for method in ("polar", "svd", "auto"):
        assert torch.equal(soft_clip(torch.zeros(5, 7), 1.0, method=method), torch.zeros(5, 7))
        X = torch.randn(2, 5, 7)
        X[1, 2, 3] = float("nan")
        Y = soft_clip(X, 1.0, method=method)
        assert torch.isnan(Y[1]).all() and torch.isfinite(Y[0]).all()


def test_vector_rule_for_1d_inputs():
    u = torch.randn(50, dtype=torch.float64)
    for c in (0.1, 10.0):
        expected = u / torch.sqrt(1 + u.norm() ** 2 / c**2)
        assert torch.allclose(soft_clip(u, c), expected)
        assert torch.allclose(soft_clip(u, c), soft_clip(u[None, :], c, method="svd")[0])


def test_explicit_steps_are_honoured():
    X = make_matrix(12, 20, "logspace", 1e3).float()
    few = soft_clip(X, 1.0, method="polar", steps=2)
    many = soft_clip(X, 1.0, method="polar", steps=30)
    assert rel_err(few, oracle.soft_clip(X, 1.0)) > 1e-2 and rel_err(many, oracle.soft_clip(X, 1.0)) <= 1e-3


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 12), batch=st.integers(0, 2), log_ratio=st.floats(-2, 4),
       seed=st.integers(0, 10**6))
def test_hypothesis_shapes(m, n, batch, log_ratio, seed):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(*([2] * batch), m, n, generator=gen, dtype=torch.float64)
    X = X / torch.linalg.matrix_norm(X, ord=2, keepdim=True).clamp_min(1e-30) * 10**log_ratio
    X = X.float()
    Y = soft_clip(X, 1.0, method="polar")
    assert Y.shape == X.shape and Y.dtype == X.dtype
    assert rel_err(Y, oracle.soft_clip(X, 1.0)) <= 1e-3


def test_precision_backstop_when_the_ratio_estimate_is_wrong(monkeypatch):
    import spectrakit.linalg.polar_clip as polar_clip

    claims_float32 = lambda G, cn, iters=2: torch.ones(G.shape[0], dtype=torch.float64)  # noqa: E731
    monkeypatch.setattr(polar_clip, "_ratio_estimate", claims_float32)  # claims float32 is safe
    X = make_matrix(20, 30, "logspace", 1e4).float()
    assert rel_err(soft_clip(X, 1.0, method="polar"), oracle.soft_clip(X, 1.0)) <= 1e-3


@pytest.mark.parametrize("ratio, expected", [(8.0, "float32"), (50.0, "mixed"), (1e3, "float64")])
def test_precision_policy_by_ratio(monkeypatch, ratio, expected):
    """float32 throughout up to sigma_max/c = 16, float64 X X^T with a float32 iteration on its Cholesky
    factor up to 100, float64 beyond; each path meets the target on a spiky and a rank-deficient matrix."""
    import spectrakit.linalg.polar_clip as polar_clip

    seen = []
    factor_path = polar_clip._inverse_sqrt_by_factor
    monkeypatch.setattr(polar_clip, "_inverse_sqrt_by_factor", lambda *a: seen.append(a[-1]) or factor_path(*a))
    for kind in ("spiky", "rank_deficient"):
        X = make_matrix(40, 60, kind, ratio, seed=2).float()
        assert rel_err(soft_clip(X, 1.0, method="polar"), oracle.soft_clip(X, 1.0)) <= 3e-4
    assert seen == ([torch.float32] * 2 if expected == "mixed" else [])


def test_polar_factor_iteration_matches_svd():
    from spectrakit.linalg.coefficients import grid_index
    from spectrakit.linalg.gram_iteration import gather_schedule, polar_factor

    A = make_matrix(30, 30, "logspace", 1.0, seed=4)  # singular values from 1 down to 1e-6: l = 1e-6
    idx = grid_index(torch.tensor([1e-6]))
    schedule = gather_schedule(idx, None, torch.float64, 1e-12, True)
    R = A.mT @ A
    got = polar_factor(A[None], R[None], (R @ R)[None], schedule)[0]
    assert rel_err(got, oracle.polar(A)) <= 1e-9


# Flat and nearly flat spectra: the trace (Wolkowicz-Styan) bounds on the eigenvalues of I + G/c^2 shorten the
# schedule to one step and keep float32 at any sigma_max/c.

def _near_flat(m: int, n: int, ratio: float, spread: float, seed: int = 0) -> torch.Tensor:
    """float64 m x n matrix with singular values spread uniformly over ratio * [1 - spread, 1] (max = ratio)."""
    gen = torch.Generator().manual_seed(seed)
    return with_singular_values(m, n, lambda k: ratio * (1 - spread * torch.linspace(0, 1, k, dtype=torch.float64)),
                                gen)


def _two_levels(m: int, n: int, ratio: float, low: float, seed: int = 0, count: int | None = None) -> torch.Tensor:
    """Singular values at ratio, the last ``count`` (default half) at ratio * low."""
    gen = torch.Generator().manual_seed(seed)
    return with_singular_values(
        m, n, lambda k: ratio * torch.where(torch.arange(k) < k - (k - k // 2 if count is None else count), 1.0,
                                            low).double(), gen)


@pytest.mark.parametrize("shape", ((48, 80), (80, 48), (1, 30), (256, 300)))
@pytest.mark.parametrize("spread", (0.0, 1e-6, 1e-3, 1e-2))
def test_near_flat_spectra_meet_1e3(shape, spread):
    for i, ratio in enumerate((1e-2, 1.0, 10.0, 100.0, 1e3, 1e4)):
        for scale in (1e-6, 1.0, 1e6):
            X = _near_flat(*shape, ratio * scale, spread, seed=i)
            for dtype, target in ((torch.float32, 1e-3), (torch.float64, 1e-10)):
                err = rel_err(soft_clip(X.to(dtype), scale, method="polar"), oracle.soft_clip(X.to(dtype), scale))
                assert err <= target, (shape, spread, ratio, scale, dtype, err)


def test_flat_spectra_at_extreme_ratios_stay_accurate():
    """Flat spectra run in float32 at any sigma_max/c: c^4 and alpha^2 (1e-120 at 1e30) must not underflow."""
    for ratio in (1e8, 1e15, 1e21, 1e30):
        for c in (1.0, 1e-20):
            X = _near_flat(40, 60, ratio * c, 1e-3).float()
            assert rel_err(soft_clip(X, c, method="polar"), oracle.soft_clip(X, c)) <= 1e-3, (ratio, c)


@pytest.mark.parametrize("low, count", [(0.9, None), (0.5, None), (0.3, 1), (0.01, 1)])
def test_loose_trace_bound_is_still_accurate(low, count):
    """Two clusters, or one outlying small value (the certificate fails): the lower bound is valid but loose."""
    for ratio in (1.0, 30.0, 1e3):
        X = _two_levels(200, 240, ratio, low, count=count).float()
        assert rel_err(soft_clip(X, 1.0, method="polar"), oracle.soft_clip(X, 1.0)) <= 1e-3


def test_trace_bounds_hold_the_spectrum_and_are_exact_for_a_multiple_of_identity():
    from spectrakit.linalg.polar_clip import _trace_bounds

    gen = torch.Generator().manual_seed(0)
    A = torch.randn(6, 30, 30, generator=gen, dtype=torch.float64)
    G = A @ A.mT + torch.arange(6, dtype=torch.float64)[:, None, None] * 100 * torch.eye(30, dtype=torch.float64)
    lo, hi = _trace_bounds(G)
    eig = torch.linalg.eigvalsh(G)
    assert torch.all(lo <= eig[:, 0]) and torch.all(hi >= eig[:, -1])
    # from the centred matrix, so t I gives t to rounding (tr(G^2)/m - t^2 would leave ~sqrt(eps) t of noise)
    for dtype in (torch.float32, torch.float64):
        for t in (1e-30, 0.7, 3e4):
            t = torch.tensor(t, dtype=dtype).item()
            lo, hi = _trace_bounds(torch.eye(40, dtype=dtype)[None] * t)
            assert abs(lo.item() - t) <= 1e-14 * t and abs(hi.item() - t) <= 1e-14 * t


@pytest.mark.parametrize("spread", (0.0, 1e-6, 1e-3, 1e-2, 0.3, "outlier"))
def test_eigen_interval_of_float32_gram_holds_the_exact_eigenvalues(spread):
    """Fail-safe: computed from the float32 X X^T, the interval holds the eigenvalues of the exact I + X X^T/c^2
    (a lower end above lambda_min would leave those eigenvalues unconverged), yet stays within 1% when flat;
    the Cholesky certificate (``certify``) tightens it where the trace bound is loose (spread 0.3 at m = 200)
    and is refused for an outlying small singular value."""
    from spectrakit.linalg.polar_clip import _eigen_interval, _gram_bounds
    from spectrakit.linalg.symmetric import gram

    m = 200
    for i, ratio in enumerate((1.0, 10.0, 1e3, 1e5)):
        X = _two_levels(m, 240, ratio, 0.3, seed=i, count=1) if spread == "outlier" else \
            _near_flat(m, 240, ratio, spread, seed=i)
        Xn = X / torch.linalg.matrix_norm(X)
        c2 = (1 / torch.linalg.matrix_norm(X)) ** 2 * torch.ones(1, 1, 1, dtype=torch.float64)
        eig = torch.linalg.eigvalsh(torch.eye(m, dtype=torch.float64) + Xn @ Xn.T / c2[0])
        for dtype in (torch.float32, torch.float64):
            for certify in (False, True):
                lo, hi, _ = _eigen_interval(_gram_bounds(gram(Xn.to(dtype)[None]), c2, certify), c2.to(dtype))
                assert 1 <= lo.item() <= eig[0] and hi.item() >= eig[-1], (spread, ratio, dtype, certify)
                if spread == 0.0:
                    assert lo.item() >= 0.99 * hi.item()
                if spread == 0.3 and ratio >= 10:  # eigenvalues in [0.49, 1] r^2: the trace bound is 1
                    assert (lo.item() >= 0.8 * eig[0]) == certify, (ratio, dtype, certify, lo.item() / eig[0])


@pytest.mark.parametrize("ratio", (10.0, 1e3))
def test_spread_spectrum_certified_takes_two_steps_in_float32(monkeypatch, ratio):
    """Singular values over ratio * [0.7, 1] at m = 400: the trace bounds alone give lo = 1 (float64, 6+ steps
    at 1e3); Cholesky certificates of t - 2 sd <= eig(X X^T) <= t + 2 sd give two steps in float32."""
    import spectrakit.linalg.polar_clip as polar_clip
    from spectrakit.linalg.audit import OpAudit

    lengths = []
    gather = polar_clip.gather_schedule
    monkeypatch.setattr(polar_clip, "gather_schedule", lambda *a: lengths.append(gather(*a)) or lengths[-1])
    X = _near_flat(400, 480, ratio, 0.3).float()
    with OpAudit() as audit:
        Y = soft_clip(X, 1.0, method="polar")
    assert rel_err(Y, oracle.soft_clip(X, 1.0)) <= 1e-3
    assert [s.coeffs.shape[0] for s in lengths] == [2] and set(audit.matmul_flops) == {torch.float32}


@pytest.mark.parametrize("kind", KINDS[1:])
def test_no_certificate_is_tried_for_wide_spectra(kind):
    """Spiky, log-spaced and rank-deficient spectra have t - 2 sd < 0: no Cholesky factorisation is spent on them
    (on the float32 path, which has none of its own)."""
    from spectrakit.linalg.audit import OpAudit

    X = make_matrix(200, 240, kind, 10.0).float()
    with OpAudit() as audit:
        soft_clip(X, 1.0, method="polar")
    assert audit.other_flops == 0 and set(audit.matmul_flops) == {torch.float32}


@pytest.mark.parametrize("ratio", (1.0, 10.0, 100.0, 1e3, 1e4))
def test_flat_spectrum_takes_one_step_in_float32(monkeypatch, ratio):
    """A flat spectrum (768 x 768 in BENCHMARKS.md: the authors' method needs 3 steps, 10 GFLOP) takes one quintic
    step in float32 at any ratio: its only products are X X^T, its square and M X."""
    import spectrakit.linalg.polar_clip as polar_clip
    from spectrakit.linalg.audit import OpAudit

    lengths = []
    gather = polar_clip.gather_schedule
    monkeypatch.setattr(polar_clip, "gather_schedule", lambda *a: lengths.append(gather(*a)) or lengths[-1])
    m, n = 64, 96
    X = _near_flat(m, n, ratio, 0.0).float()
    with OpAudit() as audit:
        Y = soft_clip(X, 1.0, method="polar")
    assert rel_err(Y, oracle.soft_clip(X, 1.0)) <= 1e-3
    assert [s.coeffs.shape[0] for s in lengths] == [1]
    assert set(audit.matmul_flops) == {torch.float32}
    power = 4 * 2 * m * m  # the ratio estimate's four matrix-vector products (when ||X||_F > 16 c)
    assert audit.total_matmul_flops() - 2 * (2 * m * m * n + m**3) in (0, power)


@pytest.mark.parametrize("clip, reference", [(soft_clip, oracle.soft_clip), (hard_clip, oracle.hard_clip)])
def test_each_matrix_of_a_batch_gets_its_own_precision(monkeypatch, clip, reference):
    """A stack with sigma_max/c = 5, 50 and 1e3 (and a zero matrix): the float32 Gram matrix of all four decides;
    the soft clip forms X X^T again in float64 (of the raw entries) only for 1e3 (its mixed part at 50 starts from
    the float32 one), the hard clip for both large ratios; each matches the SVD."""
    import spectrakit.linalg.polar_clip as polar_clip
    grams = []
    gram, gram_float64 = polar_clip.gram, polar_clip.gram_float64
    monkeypatch.setattr(polar_clip, "gram", lambda X: grams.append((X.dtype, X.shape[0])) or gram(X))
    monkeypatch.setattr(polar_clip, "gram_float64",
                        lambda X: grams.append((torch.float64, X.shape[0])) or gram_float64(X))
    X = torch.stack([make_matrix(30, 50, kind, ratio, seed=i).float() for i, (kind, ratio) in
                     enumerate([("spiky", 5.0), ("logspace", 50.0), ("rank_deficient", 1e3), ("flat", 1.0)])])
    X[3] = 0
    Y = clip(X, 1.0, method="polar")
    float64 = [(torch.float64, 1)] if clip is soft_clip else [(torch.float64, 2)]
    assert grams == [(torch.float32, 4), *float64]
    assert Y.dtype == torch.float32 and not Y[3].any()
    for i in range(3):
        assert rel_err(Y[i], reference(X[i], 1.0)) <= 1e-3, i


@pytest.mark.parametrize("kind", ["soft", "hard"])
@pytest.mark.parametrize("ratio", [5.0, 50.0])
def test_a_tall_matrix_is_clipped_in_its_own_layout(kind, ratio):
    """A tall matrix is clipped as its wide transpose; the result comes back contiguous (the last product runs in
    the input's layout, so the optimizer's update adds without strided reads)."""
    clip, reference = (soft_clip, oracle.soft_clip) if kind == "soft" else (hard_clip, oracle.hard_clip)
    X = torch.stack([make_matrix(300, 70, "logspace", ratio, seed=s).float() for s in range(2)])
    Y = clip(X, 1.0, method="polar")
    assert Y.is_contiguous() and rel_err(Y, reference(X, 1.0)) <= 1e-3
    Y = clip(torch.stack([X[0], 50 * X[1]]), 1.0, method="polar")  # two precision parts, put back in X's layout
    assert Y.is_contiguous()


def test_ratio_estimate_is_a_lower_estimate_of_sigma_max_over_c():
    """The power estimate that picks a matrix's precision: below sigma_max/c (from the top, within 5% after its
    four products on a spectrum with a 10x spike), 0 for a zero matrix, inf for NaN; per matrix of a stack."""
    from spectrakit.linalg.polar_clip import _ratio_estimate
    from spectrakit.linalg.symmetric import gram
    kinds = ("spiky", "logspace", "flat")
    zero = torch.zeros(40, 60, dtype=torch.float64)
    X = torch.stack([make_matrix(40, 60, kind, 1.0, seed=i) for i, kind in enumerate(kinds)] + [zero, zero + math.nan])
    s = torch.linalg.vector_norm(X, dim=(-2, -1)).nan_to_num(1.0).clamp_min(1e-300)
    c = torch.tensor([0.1, 0.01, 0.5, 1.0, 1.0], dtype=torch.float64)
    r = _ratio_estimate(gram(X / s[:, None, None]), c / s)
    truth = torch.linalg.matrix_norm(X[:3], ord=2) / c[:3]
    assert (r[:3] <= truth * (1 + 1e-12)).all() and (r[:3] >= 0.95 * truth[:3]).all(), (r, truth)
    assert r[3] == 0 and r[4] == float("inf")


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_tier_reaches_sigma_max_over_c_200_from_the_float32_gram_matrix(monkeypatch, kind):
    """Between FP32_MAX_RATIO and MIXED_MAX_RATIO (here 120 and 190) the soft clip forms no float64 X X^T and still
    meets 1e-3 (measured worst 3.4e-4 at 200); beyond it (1e3) the float64 tier forms one."""
    import spectrakit.linalg.polar_clip as polar_clip
    assert polar_clip.MIXED_MAX_RATIO == 200.0
    float64_grams = []
    gram_float64 = polar_clip.gram_float64
    monkeypatch.setattr(polar_clip, "gram_float64", lambda X: float64_grams.append(X.shape) or gram_float64(X))
    for i, ratio in enumerate((120.0, 190.0)):
        X = make_matrix(160, 400, kind, ratio, seed=i).float()
        assert rel_err(soft_clip(X, 1.0, method="polar"), oracle.soft_clip(X.double(), 1.0)) <= 1e-3, ratio
    assert float64_grams == []
    if kind != "flat":  # a flat spectrum runs in float32 at any ratio
        soft_clip(make_matrix(160, 400, kind, 1e3).float(), 1.0, method="polar")
        assert float64_grams == [(1, 160, 400)]
