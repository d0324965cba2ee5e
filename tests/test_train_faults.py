"""Fault injection with real processes and a real file system: kill -9 of a running `python -m spectrakit train`,
a second run started on the same run folder, and a file system that fills up during a checkpoint save."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import spectrakit.train.trainer as trainer_mod
from spectrakit.cli import main
from spectrakit.train.checkpoint_file import load_checkpoint
from spectrakit.train.data import prepare_data
from spectrakit.train.metrics import read_jsonl

TINY = ["--vocab-size", "512", "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--seq-len", "32",
        "--batch-size", "4", "--corpus-fraction", "0.02", "--eval-batches", "2", "--threads", "1", "--no-progress",
        "--dtype", "float32", "--no-plots", "--optimizer", "adamw", "--lr", "3e-3", "--schedule", "constant",
        "--warmup-steps", "0"]
TIMINGS = {"tokens_per_s", "elapsed_s"}


pytestmark = pytest.mark.usefixtures("restore_threads")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A token cache built once here; the subprocesses find it ready."""
    path = tmp_path_factory.mktemp("faults-cache")
    prepare_data(None, vocab_size=512, cache_dir=path, corpus_fraction=0.02, log=lambda _m: None)
    return str(path)


def _wait_for(condition, proc, log, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended early with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for the run:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def _records(path):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_jsonl(path)]


def test_kill_9_and_a_second_run_on_the_same_folder(tmp_path, cache, capsys):
    """A live run holds its folder: a second run started on it refuses and writes nothing. After kill -9 of the
    first run, resuming takes over its stale lock, removes its temporary checkpoint file, cuts the logs (a half
    line included) back to the checkpoint, and ends exactly where an uninterrupted run ends."""
    args = ["train", *TINY, "--cache-dir", cache, "--out-dir", str(tmp_path), "--log-every", "3", "--diag-every",
            "4", "--eval-every", "5", "--ckpt-every", "2"]
    run = tmp_path / "same"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    # the second run imports while the first starts, and starts its run when told to (a real CLI process)
    go = "import sys, spectrakit.train.trainer; sys.stdin.readline(); from spectrakit.cli import main; " \
         "sys.exit(main(sys.argv[1:]))"
    with first_log.open("w") as out1, second_log.open("w") as out2:
        second = subprocess.Popen([sys.executable, "-c", go, *args, "--run-name", "same", "--steps", "50"],
                                  stdin=subprocess.PIPE, stdout=out2, stderr=subprocess.STDOUT, text=True, env=env)
        first = subprocess.Popen([sys.executable, "-m", "spectrakit", *args, "--run-name", "same", "--steps",
                                  "100000"], stdout=out1, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_for(lambda: (run / "checkpoints" / "last.pt").is_file(), first, first_log)
            first.send_signal(signal.SIGSTOP)  # alive and holding the lock, but no further steps
            second.communicate("go\n", timeout=180)
        finally:
            first.kill()
            first.wait(timeout=60)
            second.kill()
    assert first.returncode == -signal.SIGKILL
    assert second.returncode == 1, second_log.read_text()
    assert f"spectrakit train: error: run folder {run} is in use by pid {first.pid} on host" in second_log.read_text()
    assert json.loads((run / "config.json").read_text())["config"]["steps"] == 100000  # the first run's
    step = load_checkpoint(run)["step"]
    # what a kill -9 can leave besides: a temporary checkpoint file and half-written last lines
    tmp = run / "checkpoints" / f".last.pt.tmp-{first.pid}"
    if not tmp.exists():
        tmp.write_bytes(b"\0" * 4096)
    for name in ("metrics.jsonl", "diagnostics.jsonl"):
        with (run / name).open("a") as fh:
            fh.write('{"step": 123456, "kind": "tr')
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", str(step + 4), "--threads", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"taking over the stale lock of pid {first.pid} on host" in out and "no longer running" in out
    assert "removed 1 temporary checkpoint file(s)" in out and not tmp.exists()
    assert f"metrics.jsonl: resuming at step {step}: kept" in out and "is incomplete or unreadable" in out
    assert not (run / "run.lock").exists()
    assert main([*args, "--run-name", "straight", "--steps", str(step + 4)]) == 0
    straight = tmp_path / "straight"
    for name in ("metrics.jsonl", "diagnostics.jsonl"):
        assert _records(run / name) == _records(straight / name), name
    a, b = load_checkpoint(run)["model"], load_checkpoint(straight)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs mounted for the test (needs root; skipped with the reason where mounting is impossible)."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True,
                              text=True)
    except FileNotFoundError:
        pytest.skip("no mount command: cannot mount a small file system to fill")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small file system to fill (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(small_fs, cache, capsys, monkeypatch):
    """After the step-1 checkpoint the file system is filled to half a checkpoint of free space: the step-2
    save fails with a message saying so; the step-1 checkpoint and no partial file remain; exit code 1."""
    real = trainer_mod.save_checkpoint

    def save_then_fill(path, payload):
        saved = real(path, payload)
        if payload["step"] == 1:
            free = shutil.disk_usage(small_fs).free
            (small_fs / "filler").write_bytes(b"\0" * (free - saved.stat().st_size // 2))
        return saved

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_then_fill)
    code = main(["train", *TINY, "--cache-dir", cache, "--out-dir", str(small_fs), "--run-name", "r", "--steps", "3",
                 "--ckpt-every", "1"])
    err = capsys.readouterr().err
    ckpt = small_fs / "r" / "checkpoints" / "last.pt"
    assert code == 1, err
    assert f"no space left on the device while saving checkpoint {ckpt}: it needs about" in err
    assert f"MB free; the partial file was removed and the previous checkpoint {ckpt} is kept" in err
    assert "enforce fail" not in err
    assert load_checkpoint(ckpt)["step"] == 1
    assert os.listdir(ckpt.parent) == ["last.pt"]
    summary = json.loads((small_fs / "r" / "summary.json").read_text())
    assert summary["status"] == "error" and summary["checkpoint_step"] == 1 and "no space left" in summary["message"]
