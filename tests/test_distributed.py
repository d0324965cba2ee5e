"""Spectral optimizers under DDP and FSDP2 (2 CPU processes, gloo) against single-process runs.

One launch of ``dist_worker.py`` (2 processes) produces everything; process start-up dominates the time.

Tolerance: parameters after 10 steps must match the single-process run to atol = rtol = 1e-5 (measured:
<= 4e-7). Why that is float32 round-off and not slack: DDP and FSDP2 average per-rank gradients (another
summation order than one backward over the whole batch: ~1e-7 relative), and the row-sharded path evaluates
f(X) as Q f(R) with R rounded to float32 (~1e-7 relative). The update maps are Lipschitz with constants of
order lr / sigma_min of the transformed matrices, and 10 steps accumulate ~10 such perturbations: ~1e-6.
Real faults are far larger: a wrong shard, a lost or doubled update moves a parameter by ~lr = 2e-2.
"""

import pytest
import torch
from _threads import single_thread
from dist_worker import RUNS, SAVE_AT, STEPS, harness_run, launch, make_model, optimizer_kinds, reference, train

from spectrakit.distributed import load_checkpoint, save_checkpoint

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
TOL = {"atol": 1e-5, "rtol": 1e-5}
REQUIRED = ("spectra-adamw", "spectra_hard", "muon", "normuon", "sso", "spike-aware", "lion")


def _assert_params_close(got, expected, label):
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], **TOL, msg=lambda m, n=name: f"{label} {n}: {m}")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    kinds = list(optimizer_kinds())
    with single_thread():  # as in the workers
        for kind in kinds:  # the single-process checkpoints the 2-process runs resume from (1 -> 2)
            model = make_model()
            opt = optimizer_kinds()[kind](model)
            train(model, opt, range(SAVE_AT))
            save_checkpoint(root / f"single-{kind}", model, opt)
    results = launch({"scenario": "suite", "kinds": kinds, "dir": str(root)}, root, timeout=600)
    yield {"root": root, "kinds": kinds, "results": results,
            "reference": {kind: reference(kind, STEPS) for kind in kinds}}


def test_every_required_optimizer_is_covered():
    missing = [kind for kind in REQUIRED if kind not in optimizer_kinds()]
    assert not missing, f"the distributed tests do not cover {missing}"


@pytest.mark.parametrize("run", RUNS, ids=["/".join(r) for r in RUNS])
def test_matches_single_process(suite, run):
    for kind in suite["kinds"]:
        key = f"train/{run[0]}/{run[1]}/{kind}"
        for rank, result in enumerate(suite["results"]):
            _assert_params_close(result[key]["params"], suite["reference"][kind], f"{kind} {run} rank {rank}")
        first, second = (result[key]["params"] for result in suite["results"])
        assert all(torch.equal(first[name], second[name]) for name in first), f"{key}: ranks differ"


def test_paths_and_ownership(suite):
    ranks = suite["results"]
    ddp = ranks[0]["train/ddp/auto/muon"]
    assert ddp["paths"]["gain"] == "replicated"
    assert {p for name, p in ddp["paths"].items() if name != "gain"} == {"owner"}
    assert ddp["report"] == ranks[1]["train/ddp/auto/muon"]["report"]  # the same partition on every rank
    assert " 0 " in ddp["report"] and " 1 " in ddp["report"]  # both ranks own matrices
    fsdp = ranks[0]["train/fsdp/auto/spectra-adamw"]["paths"]
    assert fsdp["out.weight"] == "rows"  # 24 x 5: the 5 x 5 R factors are cheaper than the matrix
    assert fsdp["down.weight"] == "owner"  # 6 x 13 (wide): gathering is cheaper
    assert ranks[0]["train/fsdp/auto/sso"]["paths"]["up.weight"] == "owner"  # SSO is not row-capable
    assert ranks[0]["train/fsdp/always/clip_momentum"]["paths"]["score.weight"] == "rows"  # an empty shard
    for key, result in ranks[0].items():
        if key.startswith("train/"):
            assert result["bytes"]["sent"] > 0 and result["bytes"]["received"] > 0, key


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_checkpoint_two_ranks_to_one(suite, parallel):
    for kind in suite["kinds"]:
        model = make_model()
        opt = optimizer_kinds()[kind](model)
        load_checkpoint(suite["root"] / f"{parallel}-{kind}", model, opt)
        train(model, opt, range(SAVE_AT, STEPS))
        got = {name: p.detach() for name, p in model.named_parameters()}
        _assert_params_close(got, suite["reference"][kind], f"{kind} {parallel} 2 -> 1")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_checkpoint_one_rank_to_two(suite, parallel):
    for kind in suite["kinds"]:
        for rank, result in enumerate(suite["results"]):
            _assert_params_close(result[f"resumed/{parallel}/{kind}"], suite["reference"][kind],
                                 f"{kind} {parallel} 1 -> 2 rank {rank}")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_nonfinite_decision_is_global(suite, parallel):
    """A NaN in a gradient only rank 1 reads makes every rank skip (or raise), none half-steps."""
    for rank, result in enumerate(suite["results"]):
        skip = result[f"nonfinite/{parallel}/skip"]
        assert skip == {**skip, "raised": False, "skipped": 1, "unchanged": True}, (rank, skip)
        fail = result[f"nonfinite/{parallel}/raise"]
        assert fail["raised"] and fail["unchanged"] and fail["skipped"] == 0, (rank, fail)
        free = result[f"nonfinite/{parallel}/sync_free"]  # agreed on the device: no host read in the step
        assert free == {**free, "raised": False, "skipped": 1, "unchanged": True, "host_reads": 0}, (rank, free)
        assert skip["host_reads"] > 0  # the synchronising check reads the host: the count can see reads


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_harness_model_under_parallelize(suite, parallel):
    """The training harness's Transformer wrapped by ``parallelize`` (DDP / fully_shard per block) with Muon."""
    with single_thread():
        expected = harness_run(None)
    for rank, result in enumerate(suite["results"]):
        _assert_params_close(result[f"harness/{parallel}"], expected, f"harness {parallel} rank {rank}")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_wrapper_state_dict_round_trip(suite, parallel):
    for rank, result in enumerate(suite["results"]):
        _assert_params_close(result[f"state_dict/{parallel}"], suite["reference"]["spectra-adamw"],
                             f"state_dict {parallel} rank {rank}")


def test_sharded_matrix_functions(suite):
    """soft_clip / hard_clip / msign of DTensors in every layout equal the plain call on the full matrix."""
    for rank, result in enumerate(suite["results"]):
        errors = result["sharded_call"]
        assert len(errors) == 29
        bad = {case: err for case, err in errors.items() if not err <= 2e-6}
        assert not bad, (rank, bad)
