"""`torchrun -m spectrakit train --parallel ddp|fsdp` (2 CPU processes, gloo) against single-process runs.

Semantics under test: --batch-size and --grad-accum are per rank, rank r trains on the data micro-batches
r * grad_accum + j, so 2 ranks with grad_accum 1 follow the trajectory of 1 process with grad_accum 2. Losses and
parameters must agree to float32 round-off (the gradient mean is summed in another order: ~1e-7 relative per
step; we allow 1e-4 after a few steps, while a wrong data split or a lost update differs by >= 1e-2).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch

import spectrakit.train.trainer as trainer_mod
from spectrakit.cli import main
from spectrakit.distributed import DistContext
from spectrakit.train import TrainConfig, Trainer, checkpoint_folder
from spectrakit.train.checkpoint_file import CheckpointError, load_checkpoint, resolve_checkpoint
from spectrakit.train.data import prepare_data
from spectrakit.train.model import ModelConfig, Transformer
from spectrakit.train.optimizers import build_optimizer

TINY = ["--vocab-size", "512", "--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--seq-len", "32",
        "--batch-size", "4", "--corpus-fraction", "0.02", "--eval-batches", "2", "--threads", "1", "--no-progress",
        "--no-plots", "--log-every", "1", "--diag-every", "0", "--dtype", "float32"]
TOL = {"atol": 1e-4, "rtol": 1e-4}


pytestmark = pytest.mark.usefixtures("restore_threads")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("parallel-cache"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], timeout: float = 150.0, ok: bool = True) -> str:
    """``spectrakit train ARGS`` on 2 processes; returns the combined output (fails the test with it when the
    exit status is not what ``ok`` says)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", "-m", "spectrakit", "train", *args]
    proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, f"torchrun exited with {proc.returncode}:\n{output[-4000:]}"
    return output


def rows(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def weights(run) -> dict[str, torch.Tensor]:
    """The model of a run folder's last checkpoint (distributed or single-file) as plain tensors."""
    ckpt = load_checkpoint(run)
    if not ckpt.get("dcp"):
        return ckpt["model"]
    model = Transformer(ModelConfig.from_dict(ckpt["model_config"]))
    checkpoint_folder.load_model_weights(ckpt["path"], model)
    return model.state_dict()


def assert_same_run(got, expected):
    got_loss = [r["train_loss"] for r in rows(got, "train")]
    expected_loss = [r["train_loss"] for r in rows(expected, "train")]
    torch.testing.assert_close(torch.tensor(got_loss), torch.tensor(expected_loss), **TOL)
    a, b = weights(got), weights(expected)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_equals_one_process_with_the_same_global_batch(tmp_path, cache, capsys):
    common = [*TINY, "--cache-dir", cache, "--out-dir", str(tmp_path), "--steps", "6", "--eval-every", "3",
              "--optimizer", "spectra-adamw", "--lr", "3e-3", "--pre-clip", "1.0"]
    out = torchrun([*common, "--parallel", "ddp", "--run-name", "ddp"])
    assert out.count("done: 6 steps") == 1  # rank 0 alone reports
    assert "spectral diagnostics are off" not in out  # --diag-every 0: nothing to switch off
    assert main(["train", *common, "--grad-accum", "2", "--run-name", "single"]) == 0
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    assert_same_run(ddp, single)
    names = {p.name for p in ddp.iterdir()}
    assert {"config.json", "metrics.jsonl", "metrics.csv", "summary.json", "tokenizer.json", "routing.txt",
            "checkpoints"} <= names
    assert (ddp / "checkpoints" / "last.dcp" / "trainer.json").is_file()
    config = json.loads((ddp / "config.json").read_text())
    assert config["config"]["parallel"] == "ddp" and config["world_size"] == 2
    assert config["tokens_per_step"] == 4 * 32 * 2 and rows(ddp, "train")[-1]["tokens"] == 6 * 4 * 32 * 2
    assert "ddp over 2 ranks" in (ddp / "routing.txt").read_text()
    val = [r["val_loss"] for r in rows(ddp, "val")]
    assert all(map(torch.isfinite, torch.tensor(val))) and val[-1] < val[0]
    assert [r["step"] for r in rows(ddp, "train")] == [1, 2, 3, 4, 5, 6]
    # another number of ranks needs the same ranks x grad_accum
    capsys.readouterr()
    assert main(["train", "--resume", str(ddp), "--parallel", "none", "--steps", "8"]) == 1
    assert "pass --grad-accum 2" in capsys.readouterr().err
    assert main(["sample", str(ddp), "--max-new-tokens", "4", "--temperature", "0"]) == 0


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_muon_resumes_on_two_ranks_and_on_one(tmp_path, cache):
    common = [*TINY, "--cache-dir", cache, "--out-dir", str(tmp_path), "--optimizer", "muon", "--lr", "0.02",
              "--opt", "ns_dtype=float32",  # msign's default dtype follows the CPU: pinned, the runs are compared
              "--schedule", "constant", "--eval-every", "0"]
    out = torchrun([*common, "--parallel", "fsdp", "--steps", "3", "--run-name", "fsdp"])
    assert "fsdp over 2 ranks" in out
    shutil.copytree(tmp_path / "fsdp", tmp_path / "to-one")
    torchrun(["--resume", str(tmp_path / "fsdp"), "--steps", "6"])
    assert main(["train", "--resume", str(tmp_path / "to-one"), "--steps", "6", "--parallel", "none",
                 "--grad-accum", "2"]) == 0
    assert main(["train", *common, "--steps", "6", "--grad-accum", "2", "--run-name", "single"]) == 0
    for run in ("fsdp", "to-one"):
        assert [r["step"] for r in rows(tmp_path / run, "train")] == [1, 2, 3, 4, 5, 6]
        assert_same_run(tmp_path / run, tmp_path / "single")
    assert load_checkpoint(tmp_path / "fsdp")["world_size"] == 2
    assert load_checkpoint(tmp_path / "to-one")["world_size"] == 1  # a 2 -> 1 continuation keeps the DCP format


@pytest.mark.distributed
@pytest.mark.slow
def test_an_error_on_one_rank_ends_the_job_with_its_message(tmp_path, cache):
    """Rank 0 fails while rank 1 waits for it in a collective: the job ends (no hang) and says why."""
    out = torchrun([*TINY, "--cache-dir", cache, "--out-dir", str(tmp_path), "--parallel", "ddp",
                    "--data", str(tmp_path / "missing.txt")], timeout=120, ok=False)
    assert f"spectrakit train: error: data path {tmp_path / 'missing.txt'} does not exist" in out


@pytest.mark.parametrize("argv,env,message", [
    (["--parallel", "ddp"], {}, "--parallel ddp needs a torchrun launch"),
    ([], {"WORLD_SIZE": "2"}, "WORLD_SIZE=2 (torchrun) but parallel is 'none'"),
    (["--parallel", "fsdp", "--pre-clip", "0.5"], {}, "pre_clip must be unset under --parallel fsdp"),
    (["--parallel", "zero"], {}, "parallel must be one of"),
])
def test_parallel_errors_are_clear(tmp_path, cache, capsys, monkeypatch, argv, env, message):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["train", *TINY, "--cache-dir", cache, "--out-dir", str(tmp_path), "--steps", "1", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


def test_help_says_batch_size_is_per_rank(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "torchrun --nproc_per_node=N -m spectrakit train --parallel ddp|fsdp" in text
    assert "sequences per micro-batch (per rank under --parallel)" in text


def _adamw_model(seed: int):
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, seq_len=8))
    return model, build_optimizer("adamw", model, lr=1e-2)


def test_distributed_checkpoint_of_torch_adamw_round_trips_in_one_process(tmp_path):
    model, opt = _adamw_model(0)
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        model(tokens[:, :-1], tokens[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    path = tmp_path / "run" / "checkpoints" / "last.dcp"
    meta = {"step": 2, "tokens": 0, "elapsed": 0.0, "world_size": 1, "config": {"grad_accum": 1},
            "model_config": model.config.to_dict()}
    checkpoint_folder.save(path, model, opt, {**meta, "step": 1}, main=True)
    rng = torch.get_rng_state()
    checkpoint_folder.save(path, model, opt, meta, main=True)  # replaces the previous folder whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.dcp"]
    fresh, fresh_opt = _adamw_model(1)
    checkpoint_folder.load(path, fresh, fresh_opt)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    saved, loaded = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert saved.keys() == loaded.keys()
    for key in saved:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(saved[key][field], loaded[key][field]), (key, field)
    info = load_checkpoint(tmp_path / "run")
    assert info["dcp"] and info["step"] == 2 and info["path"] == path
    assert torch.equal(info["rng"], rng)
    # a crash between the two renames of a save leaves the previous folder as .last.dcp.old: still found
    path.rename(path.with_name(".last.dcp.old"))
    assert load_checkpoint(tmp_path / "run")["step"] == 2
    assert resolve_checkpoint(tmp_path / "run") == path


def test_a_foreign_or_incomplete_distributed_checkpoint_is_a_clear_error(tmp_path):
    folder = tmp_path / "run" / "checkpoints" / "last.dcp"
    folder.mkdir(parents=True)
    (folder / "trainer.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="is not a spectrakit-dcp-checkpoint-v1"):
        load_checkpoint(tmp_path / "run")
    (folder / "trainer.json").write_text(json.dumps({"format": checkpoint_folder.FORMAT, "step": 1, "config": {},
                                                     "model_config": {}, "world_size": 1}))
    with pytest.raises(CheckpointError, match="lacks its DCP .metadata"):
        load_checkpoint(tmp_path / "run")
    (folder / "trainer.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="unreadable trainer.json"):
        load_checkpoint(tmp_path / "run")


@pytest.fixture
def one_rank_group():
    """A 1-process gloo group in this process (no launch), destroyed afterwards."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield DistContext(0, 1, 0, torch.device("cpu"), "gloo")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("parallel,optimizer", [("ddp", "spectra-adamw"), ("fsdp", "adamw")])
def test_signal_saves_and_resume_continues_in_a_one_rank_group(tmp_path, cache, one_rank_group, monkeypatch,
                                                                parallel, optimizer):
    """The whole --parallel code path in this process: a SIGTERM during step index 3 stops every rank after
    step 4 with a distributed checkpoint; resuming it ends where an uninterrupted single-process run ends."""
    data = prepare_data(None, vocab_size=512, cache_dir=cache, corpus_fraction=0.02, log=lambda _m: None)

    def config(run_name, parallel):
        return TrainConfig(optimizer=optimizer, lr=3e-3, vocab_size=512, d_model=32, n_layers=1, n_heads=2,
                           seq_len=32, batch_size=4, steps=6, corpus_fraction=0.02, cache_dir=cache,
                           out_dir=str(tmp_path), run_name=run_name, progress=False, plots=False, eval_batches=2,
                           log_every=1, eval_every=0, diag_every=0, ckpt_every=0, threads=1, parallel=parallel,
                           dtype="float32")

    quiet = {"log": lambda _m: None, "data": data}
    Trainer(config("single", "none"), **quiet).run()
    real = trainer_mod.train_batch

    def batch(*args, **kwargs):
        if kwargs["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_batch", batch)
    result = Trainer(config("par", parallel), ctx=one_rank_group, **quiet).run()
    monkeypatch.undo()
    assert result.signal == signal.SIGTERM and result.steps_done == 4
    assert load_checkpoint(tmp_path / "par")["step"] == 4
    with pytest.raises(CheckpointError, match="written by a single-process run"):
        Trainer(config("single", parallel), resume=tmp_path / "single", ctx=one_rank_group, **quiet)
    stale = tmp_path / "par" / "checkpoints" / ".last.dcp.tmp"  # what a kill during a save leaves
    stale.mkdir()
    (stale / "__0_0.distcp").write_bytes(b"\0" * 1000)
    messages = []
    resumed = Trainer(config("par", parallel), resume=tmp_path / "par", ctx=one_rank_group, data=data,
                      log=messages.append)
    assert resumed.step == 4
    resumed.run()
    assert any(f"removed {stale}, the unfinished distributed checkpoint" in m for m in messages)
    assert_same_run(tmp_path / "par", tmp_path / "single")
    assert json.loads((tmp_path / "par" / "summary.json").read_text())["status"] == "finished"
