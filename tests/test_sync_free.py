"""sync_free=True: a step makes no host read, skips a step with a non-finite gradient by masking on the device
(parameters and state unchanged, counted in a device tensor), takes the same steps as the synchronising one
otherwise, and compiles to one graph. Every optimizer configuration of ``_optim_infos.OPTIMIZERS``, float32.
"""

from __future__ import annotations

import copy
import io
import pickle
from types import SimpleNamespace

import pytest
import torch
import torch._dynamo
from _optim_helpers import backward, small_model
from _optim_infos import OPTIMIZERS, cases

from spectrakit.linalg.audit import OpAudit
from spectrakit.optim import SSO, Muon, MuonSphere, Spectra, SpectraWrapper, SpikeAware
from spectrakit.optim.sync_free import resolve_sync_free

pytestmark = pytest.mark.usefixtures("one_thread")

#: optimizers whose power iteration runs its cold start (more iterations) on a parameter's first step: a skipped
#: first step has spent it (the next step starts from the same seeded block with the warm iteration count)
_COLD_START = (SSO, MuonSphere, SpikeAware)
#: optimizers whose sync-free step replaces an eigh / SVD (a device sync on CUDA) by matmul and QR steps
#: (``spectrakit.linalg.power``): the same trajectory to float32 rounding, not bitwise; their power iteration's
#: basis (the warm start) spans the same subspace with other columns
_OWN_LINALG = (SSO, MuonSphere, SpikeAware)
_BASES = ("power_v", "spike_v")
_ROUNDING = {"rtol": 1e-5, "atol": 1e-6}  # float32: measured <= 3e-7 over 6 steps of the small model


def _model():
    return small_model(torch.float32)


def _poison(model, step: int) -> None:
    """Gradients of ``step`` with one Inf entry in the first matrix."""
    backward(model, step)
    model[0].weight.grad[0, 0] = float("inf")


def _state_values(opt) -> dict:
    """Every state entry of every parameter as a float64 tensor (step counts may be ints or device tensors)."""
    out = {}
    for i, state in enumerate(opt.state.values()):
        for key, value in state.items():
            out[(i, key)] = torch.as_tensor(value).detach().clone().double()
    return out


def _lockstep(runs, steps) -> None:
    """Take the given steps with every (model, optimizer) of ``runs``, one step of each in turn."""
    for k in steps:
        for model, opt in runs:
            backward(model, k)
            opt.step()


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _assert_same_params(a, b) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def _span(V: torch.Tensor) -> torch.Tensor:
    """The orthogonal projector onto the column span of each trailing matrix of V (float64)."""
    Q = torch.linalg.qr(V.double()).Q
    return Q @ Q.mT


def _assert_like_synchronising(cls, free_model, synced_model, free_state: dict, synced_state: dict) -> None:
    """Bitwise for most optimizers; to float32 rounding (bases by their span) for those of ``_OWN_LINALG``."""
    if not issubclass(cls, _OWN_LINALG):
        _assert_same_params(free_model, synced_model)
        _assert_same_state(free_state, synced_state)
        return
    for (name, p), q in zip(free_model.named_parameters(), synced_model.parameters()):
        torch.testing.assert_close(p, q, **_ROUNDING, msg=name)
    assert free_state.keys() == synced_state.keys()
    for key, value in free_state.items():
        if key[1] in _BASES:
            torch.testing.assert_close(_span(value), _span(synced_state[key]), rtol=0, atol=1e-4, msg=str(key))
        else:
            torch.testing.assert_close(value, synced_state[key], **_ROUNDING, msg=str(key))


def _assert_poisoned_step_changes_nothing(model, opt) -> None:
    """A step on step 2's gradients with an Inf leaves every parameter and state entry bitwise unchanged."""
    params, state = copy.deepcopy(list(model.parameters())), _state_values(opt)
    _poison(model, 2)
    opt.step()
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p, q)
    _assert_same_state(_state_values(opt), state)


def _inner_syncs(opt: SpectraWrapper, model) -> tuple[int, int]:
    """Host reads and device syncs of the wrapped optimizer's own step on a copy (what the wrapper cannot
    remove)."""
    inner_model, inner = copy.deepcopy((model, opt.optimizer))  # one memo: the copy steps the copied parameters
    for p, q in zip(model.parameters(), inner_model.parameters()):
        q.grad = p.grad.clone()
    with OpAudit() as audit:
        inner.step()
    return audit.host_reads, audit.device_syncs


@pytest.mark.parametrize("info, lr_kind", cases("test_step_makes_no_host_read", {"float-lr": "float",
                                                                                 "tensor-lr": "tensor"}))
def test_step_makes_no_host_read(info, lr_kind, monkeypatch):
    """No host read and no op that synchronises on CUDA (OpAudit.device_syncs: eigh, svd, info checks, ...). The
    clips' "auto" method is made to choose as on an accelerator (polar; on the CPU small matrices take the exact
    SVD, which synchronises on CUDA)."""
    monkeypatch.setattr("spectrakit.linalg.clip._AUTO_SVD_MAX_SIDE_CPU", {"soft": 0, "hard": 0})
    model = _model()
    lr = torch.tensor(info.lr) if lr_kind == "tensor" else info.lr
    opt = info.make(model, lr=lr, sync_free=True)
    for k in range(3):
        backward(model, k)
        reads, syncs = _inner_syncs(opt, model) if isinstance(opt, SpectraWrapper) else (0, 0)
        with OpAudit() as audit:
            opt.step()
        assert audit.host_reads == reads and audit.host_copies == 0, (k, audit.op_names)
        assert audit.device_syncs == syncs, (k, audit.sync_ops)
    assert isinstance(opt.skipped_steps, torch.Tensor) and int(opt.skipped_steps) == 0


@pytest.mark.parametrize("info", cases("test_trajectory_equals_synchronising_steps"))
def test_trajectory_equals_synchronising_steps(info):
    """Bitwise: the masking selects the computed step, and step counts held in float64 tensors give the same
    bias corrections as Python ints. SSO, MuonSphere and SpikeAware to float32 rounding (``_OWN_LINALG``)."""
    synced, free = _model(), _model()
    opt_synced, opt_free = info.make(synced, sync_free=False), info.make(free, sync_free=True)
    for k in range(4):
        _lockstep([(synced, opt_synced), (free, opt_free)], [k])
        _assert_like_synchronising(info.cls, free, synced, _state_values(opt_free), _state_values(opt_synced))
    assert opt_synced.skipped_steps == 0 and int(opt_free.skipped_steps) == 0


@pytest.mark.parametrize("info", cases("test_parameter_joining_later_steps_like_the_synchronising_run"))
def test_parameter_joining_later_steps_like_the_synchronising_run(info):
    """A parameter's first step next to the others' later ones (Python and device step counts in one step)."""
    synced, free = _model(), _model()
    opt_synced, opt_free = info.make(synced, sync_free=False), info.make(free, sync_free=True)
    for model in (synced, free):
        model[0].requires_grad_(False)
    _lockstep([(synced, opt_synced), (free, opt_free)], range(2))
    for model in (synced, free):
        model[0].requires_grad_(True)
    _lockstep([(synced, opt_synced), (free, opt_free)], range(2, 4))
    _assert_like_synchronising(info.cls, free, synced, _state_values(opt_free), _state_values(opt_synced))


@pytest.mark.parametrize("info", cases("test_nonfinite_step_changes_nothing_and_is_counted"))
def test_nonfinite_step_changes_nothing_and_is_counted(info):
    model, reference = _model(), _model()
    opt, ref_opt = info.make(model, sync_free=True), info.make(reference, sync_free=True)
    _lockstep([(model, opt), (reference, ref_opt)], range(2))
    _assert_poisoned_step_changes_nothing(model, opt)
    assert isinstance(opt.skipped_steps, torch.Tensor) and opt.skipped_steps.dtype == torch.int64
    assert int(opt.skipped_steps) == 1
    _lockstep([(model, opt), (reference, ref_opt)], (3, 4))  # the reference never saw step 2
    _assert_same_params(model, reference)
    _assert_same_state(_state_values(opt), _state_values(ref_opt))


@pytest.mark.parametrize("info", cases("test_skipped_first_step_leaves_the_state_fresh"))
def test_skipped_first_step_leaves_the_state_fresh(info):
    """The state a skipped first step created holds its initial values: the run continues as a fresh one."""
    if issubclass(info.cls, _COLD_START):
        pytest.skip("the cold start of the power iteration is spent by the skipped first step (documented)")
    model, reference = _model(), _model()
    opt, ref_opt = info.make(model, sync_free=True), info.make(reference, sync_free=True)
    _poison(model, 0)
    opt.step()
    _assert_same_params(model, reference)
    _lockstep([(model, opt), (reference, ref_opt)], (1, 2, 3))
    _assert_same_params(model, reference)
    assert int(opt.skipped_steps) == 1


@pytest.mark.parametrize("cls", [Spectra, SSO, SpikeAware])
def test_counter_round_trips_through_state_dict_deepcopy_and_pickle(cls):
    model = _model()
    opt = cls(model, lr=1e-2, sync_free=True)
    _poison(model, 0)
    opt.step()
    backward(model, 1)
    opt.step()
    saved = opt.state_dict()
    assert isinstance(saved["spectrakit"]["skipped_steps"], torch.Tensor)
    other_model = _model()
    other = cls(other_model, lr=1e-2, sync_free=True)
    other.load_state_dict(torch.load(io.BytesIO(_saved_bytes(saved)), weights_only=True))
    other_model.load_state_dict(model.state_dict())
    for copied in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt)), other):
        assert copied.sync_free is True and int(copied.skipped_steps) == 1
    for m, o in ((model, opt), (other_model, other)):
        _poison(m, 2)
        o.step()
        backward(m, 3)
        o.step()
    _assert_same_params(other_model, model)
    assert int(other.skipped_steps) == int(opt.skipped_steps) == 2


def _saved_bytes(state_dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def test_raise_with_sync_free_is_a_value_error():
    with pytest.raises(ValueError, match=r"nonfinite='raise'.*sync_free=True"):
        Spectra(_model(), nonfinite="raise", sync_free=True)
    with pytest.raises(ValueError, match="sync_free must be"):
        Muon(_model(), sync_free="yes")


def test_none_resolves_from_the_first_parameter_and_raise_keeps_steps_synchronising():
    on = SimpleNamespace
    assert resolve_sync_free(None, [on(device=torch.device("cuda", 0))])
    assert not resolve_sync_free(None, [on(device=torch.device("cpu"))])
    assert not resolve_sync_free(None, [on(device=torch.device("meta"))])
    assert resolve_sync_free(True, [on(device=torch.device("cpu"))])
    opt = Spectra(_model())
    assert opt.sync_free is None and not opt.steps_sync_free()  # CPU: the synchronising step (default)
    opt.sync_free = True
    assert opt.steps_sync_free()


def test_default_nonfinite_raises_on_synchronising_steps():
    model = _model()
    opt = Spectra(model)
    _poison(model, 0)
    with pytest.raises(FloatingPointError, match=r"0\.weight"):
        opt.step()


def test_tensor_lr_warmup_threshold_stays_on_the_device_and_matches():
    """The threshold warmup c_t = c peak_lr / lr_t with a tensor lr: computed on the device (no host read),
    the same c_t and steps as the synchronising optimizer (float32 rounding of 1 - lr wd: close, not bitwise)."""
    synced, free = _model(), _model()
    kwargs = {"lr": torch.tensor(1e-2), "clip_c": 0.5, "track_stats": True}
    opt_synced, opt_free = Spectra(synced, sync_free=False, **kwargs), Spectra(free, sync_free=True, **kwargs)
    for k in range(6):
        for model, opt in ((synced, opt_synced), (free, opt_free)):
            opt.param_groups[0]["lr"].fill_(1e-2 * min(1.0, (k + 1) / 4))  # linear lr warmup, then constant
            backward(model, k)
            with OpAudit() as audit:
                opt.step()
            assert audit.host_reads == (0 if opt is opt_free else audit.host_reads)
        c_synced, c_free = (o.statistics()["clip_c/group0"] for o in (opt_synced, opt_free))
        assert isinstance(opt_free.param_groups[0]["clip_warmup_done"], torch.Tensor)
        torch.testing.assert_close(c_free.double(), c_synced.double(), rtol=1e-6, atol=0)
    for p, q in zip(free.parameters(), synced.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls, kwargs", [
    (Muon, {"lr": 0.02, "ns_dtype": torch.float32}),
    (Muon, {"lr": 0.02}),  # ns_dtype None: the capability test (a constant under torch.compile)
    (Spectra, {"lr": 0.01, "clip_c": 1.0}),
], ids=["muon", "muon-default-dtype", "spectra"])
def test_step_compiles_fullgraph_with_the_default_nonfinite_handling(cls, kwargs):
    torch._dynamo.reset()
    eager_model, compiled_model = _model(), _model()
    eager, optimizer = cls(eager_model, sync_free=True, **kwargs), cls(compiled_model, sync_free=True, **kwargs)
    compiled_step = torch.compile(optimizer.step, backend="eager", fullgraph=True)
    try:
        for k in range(5):
            for model, step in ((eager_model, eager.step), (compiled_model, compiled_step)):
                (_poison if k == 2 else backward)(model, k)
                step()
    finally:
        torch._dynamo.reset()
    assert int(optimizer.skipped_steps) == int(eager.skipped_steps) == 1
    for p, q in zip(compiled_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_registry_covers_every_optimizer_class():
    classes = {info.cls for info in OPTIMIZERS}
    assert {Spectra, Muon, SSO, MuonSphere, SpikeAware, SpectraWrapper} <= classes


@pytest.mark.parametrize("make", [lambda m: Spectra(m, lr=1e-2, fallback=("vectors", "embeddings")),
                                  lambda m: Muon(m, adamw_lr=1e-3), lambda m: SSO(m)],
                         ids=["spectra", "muon", "sso"])
def test_masking_in_runs_of_one_tensor_changes_nothing_on_a_skip(monkeypatch, make):
    """With a stack budget of one element every parameter is masked in its own run (the engine's plain runs and
    stacks, the AdamW rule's runs; SSO per group): a skipped step still changes nothing, bitwise, and the run
    continues as the synchronising one."""
    monkeypatch.setattr("spectrakit.optim._chunks.STACK_BUDGET", 1)
    model, reference = _model(), _model()
    opt, ref_opt = make(model), make(reference)
    opt.sync_free, ref_opt.sync_free = True, False
    _lockstep([(model, opt), (reference, ref_opt)], range(2))
    _assert_poisoned_step_changes_nothing(model, opt)
    _lockstep([(model, opt), (reference, ref_opt)], (3, 4))
    _assert_like_synchronising(type(opt), model, reference, _state_values(opt), _state_values(ref_opt))


def test_a_sync_free_step_holds_one_run_of_copies_not_the_models(monkeypatch):
    """The selection copies of a sync-free step are taken one bounded run at a time: with runs of 2 of 8 equal
    matrices, each masked run copies a quarter of the parameters and their state (masking the whole step at
    once would copy all of it), and together the runs cover every parameter once."""
    import spectrakit.optim.spectral_optimizer as spectral_optimizer
    monkeypatch.setattr("spectrakit.optim._chunks.STACK_BUDGET", 2 * 64 * 64)
    params = [torch.nn.Parameter(torch.randn(64, 64)) for _ in range(8)]
    opt = Spectra([(f"layer{i}.weight", p) for i, p in enumerate(params)], lr=1e-3, sync_free=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # the state exists from here on
    runs = []

    def counting(step, run_params, states, found_inf, initial):
        runs.append((len(run_params), sum(p.numel() + sum(v.numel() for v in states[p].values()) for p in run_params)))
        return masked_step(step, run_params, states, found_inf, initial)

    masked_step = spectral_optimizer.masked_step
    monkeypatch.setattr(spectral_optimizer, "masked_step", counting)
    opt.step()
    whole = sum(p.numel() + sum(v.numel() for v in opt.state[p].values()) for p in params)
    assert [n for n, _ in runs] == [2, 2, 2, 2]
    assert max(size for _, size in runs) <= whole / 4 + 8


# ------------------------------------------------------------------------------- device syncs (OpAudit)
def _spd(n: int = 4) -> torch.Tensor:
    A = torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    return A @ A.mT + torch.eye(n)


@pytest.mark.parametrize("call, names, syncs", [
    (lambda A: torch.linalg.eigh(A), ["_linalg_eigh"], 1),
    (lambda A: torch.linalg.eigvalsh(A), ["_linalg_eigh"], 1),
    (lambda A: torch.linalg.svd(A), ["_linalg_svd"], 1),
    (lambda A: torch.linalg.matrix_norm(A, ord=2), ["permute", "_linalg_svd", "amax"], 1),
    (lambda A: torch.linalg.inv(A), ["linalg_inv_ex", "_linalg_check_errors"], 1),
    (lambda A: torch.linalg.solve(A, A), ["_linalg_solve_ex", "_linalg_check_errors"], 1),
    (lambda A: torch.linalg.cholesky(A), ["linalg_cholesky_ex", "_linalg_check_errors"], 1),
    (lambda A: torch.linalg.inv_ex(A), ["linalg_inv_ex"], 0),
    (lambda A: torch.linalg.inv_ex(A, check_errors=True), ["linalg_inv_ex"], 1),
    (lambda A: torch.linalg.solve_ex(A, A), ["_linalg_solve_ex"], 0),
    (lambda A: torch.linalg.cholesky_ex(A), ["linalg_cholesky_ex"], 0),
    (lambda A: torch.linalg.cholesky_ex(A, check_errors=True), ["linalg_cholesky_ex"], 1),
    (lambda A: torch.linalg.qr(A), ["linalg_qr"], 0),
    (lambda A: torch.linalg.solve_triangular(A, A, upper=True), ["linalg_solve_triangular"], 0),
    (lambda A: A[A > 0], ["gt", "index"], 1),
    (lambda A: A.nonzero(), ["nonzero"], 1),
    (lambda A: A.repeat_interleave(torch.tensor([1, 2, 1, 2]), dim=0),
     ["lift_fresh", "repeat_interleave", "index_select"], 1),
    (lambda A: A.repeat_interleave(torch.tensor([1, 2, 1, 2]), dim=0, output_size=6),
     ["lift_fresh", "repeat_interleave", "index_select"], 0),
    (lambda A: float(A.sum()), ["sum", "_local_scalar_dense"], 1),
], ids=["eigh", "eigvalsh", "svd", "norm2", "inv", "solve", "cholesky", "inv_ex", "inv_ex-checked", "solve_ex",
        "cholesky_ex", "cholesky_ex-checked", "qr", "solve_triangular", "bool-index", "nonzero", "repeats",
        "repeats-sized", "item"])
def test_audit_counts_the_ops_that_synchronise_by_the_names_they_dispatch(call, names, syncs):
    """What torch.linalg's front ends dispatch under a dispatch mode (composites decomposed), and which of it
    synchronises on CUDA (spectrakit.linalg.audit's list, from ATen's sources)."""
    A = _spd()
    with OpAudit() as audit:
        call(A)
    assert list(audit.op_names) == names
    assert audit.device_syncs == syncs


def _free_and_synced_audits(make) -> tuple[OpAudit, OpAudit]:
    """The audits of a sync-free step and of a synchronising step (each the second step of its run)."""
    out = []
    for sync_free in (True, False):
        model = _model()
        opt = make(model, sync_free=sync_free)
        backward(model, 0)
        opt.step()
        backward(model, 1)
        with OpAudit() as audit:
            opt.step()
        out.append(audit)
    return out[0], out[1]


@pytest.mark.parametrize("make", [lambda m, **kw: SSO(m, solver_sync=False, **kw),
                                  lambda m, **kw: SpikeAware(m, rank_fraction=0.3, nonfinite="ignore", **kw)],
                         ids=["sso", "spike-aware"])
def test_sync_free_steps_of_sso_and_spike_aware_make_no_device_sync(make):
    """The sync-free steps avoid the SVD (SSO's last Rayleigh-Ritz step) and the eigh (SpikeAware's rotation);
    the synchronising steps take them (so the count sees them). Here with no host read either way (no solver
    sync, no non-finite check): only the linear algebra."""
    free, synced = _free_and_synced_audits(make)
    assert free.device_syncs == 0, free.sync_ops
    assert free.float64_matmul_flops == 0
    assert synced.device_syncs > 0


@pytest.mark.parametrize("cls, kwargs", [(SSO, {"lr": 0.02, "solver_max_iter": 3, "solver_bracket_steps": 3}),
                                         (SpikeAware, {"lr": 1e-2, "rank_fraction": 0.3})],
                         ids=["sso", "spike-aware"])
def test_sync_free_linalg_steps_compile_fullgraph(cls, kwargs):
    """SSO's and SpikeAware's sync-free steps (top_triplet, ritz_rotation) trace into one graph, and take the
    eager steps. The first step runs eagerly: its cold start draws the seeded Gaussian block from a
    torch.Generator, which dynamo does not trace."""
    torch._dynamo.reset()
    eager_model, compiled_model = _model(), _model()
    eager, optimizer = cls(eager_model, sync_free=True, **kwargs), cls(compiled_model, sync_free=True, **kwargs)
    _lockstep([(eager_model, eager), (compiled_model, optimizer)], [0])
    compiled_step = torch.compile(optimizer.step, backend="eager", fullgraph=True)
    try:
        for k in range(1, 4):
            for model, step in ((eager_model, eager.step), (compiled_model, compiled_step)):
                backward(model, k)
                step()
    finally:
        torch._dynamo.reset()
    for p, q in zip(compiled_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
