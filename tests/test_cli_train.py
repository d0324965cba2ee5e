"""`spectrakit train | compare | sample` end to end on a tiny model, and every error path of their arguments."""

import json
import os
import shutil

import pytest

from spectrakit.cli import main

TINY = ["--vocab-size", "512", "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--seq-len", "32",
        "--batch-size", "4", "--corpus-fraction", "0.02", "--eval-batches", "2", "--threads", "1", "--no-progress",
        "--dtype", "float32"]


pytestmark = pytest.mark.usefixtures("restore_threads")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli-cache"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("cli-runs")
    code = main(["train", *TINY, "--cache-dir", cache, "--out-dir", str(out), "--run-name", "r", "--steps", "6",
                 "--optimizer", "adamw", "--lr", "3e-3", "--no-plots", "--diag-every", "3"])
    assert code == 0
    return out / "r"


def error_of(capsys, argv, code):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.strip(), "an error must explain itself"
    return err


def test_train_writes_a_complete_run_folder(trained_run, capsys):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "metrics.jsonl", "metrics.csv", "diagnostics.jsonl", "tokenizer.json",
            "summary.json", "checkpoints"} <= names
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["steps_done"] == 6 and summary["final_val_loss"] > 0


def test_resume_extends_a_finished_run(trained_run, cache, capsys):
    assert main(["train", "--resume", str(trained_run), "--steps", "8", "--threads", "1", "--no-progress",
                 "--no-plots"]) == 0
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"][-2:] == [6, 8]
    err = error_of(capsys, ["train", "--resume", str(trained_run), "--lr", "1e-2"], 2)
    assert "settings differ from it: ['lr']" in err
    err = error_of(capsys, ["train", "--resume", str(trained_run), "--steps", "3"], 1)
    assert "beyond --steps 3" in err


def files_of(folder):
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def test_resume_of_a_finished_run_has_nothing_to_do(trained_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    step = json.loads((run / "summary.json").read_text())["steps_done"]
    before = files_of(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--threads", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"nothing to do: finished at step {step} (pass a larger --steps to continue)" in out
    assert files_of(run) == before  # summary.json is not rewritten with final_val_loss null


def test_resume_of_a_checkpoint_outside_a_run_folder_is_refused(trained_run, tmp_path, capsys, monkeypatch):
    shutil.copyfile(trained_run / "checkpoints" / "last.pt", tmp_path / "loose.pt")
    monkeypatch.chdir(tmp_path)
    err = error_of(capsys, ["train", "--resume", "loose.pt", "--steps", "20", "--threads", "1"], 1)
    assert "checkpoint loose.pt is not in a run folder (RUN/checkpoints/loose.pt)" in err and "--resume RUN" in err
    assert os.listdir(tmp_path) == ["loose.pt"]  # nothing written into the current directory
    shutil.copytree(trained_run, tmp_path / "run")
    monkeypatch.chdir(tmp_path / "run" / "checkpoints")  # a relative path inside a run folder is that run's
    assert main(["train", "--resume", "last.pt", "--threads", "1", "--no-progress"]) == 0
    assert "nothing to do: finished at step" in capsys.readouterr().out


@pytest.mark.parametrize("optimizer", ["spectra-adamw", "muon"])
def test_divergence_with_our_optimizers_ends_in_the_harness_message(tmp_path, cache, capsys, optimizer):
    """--lr 1e6 used to end in a 29-line NonFiniteGradientError traceback with no summary.json or plots."""
    code = main(["train", *TINY, "--cache-dir", cache, "--out-dir", str(tmp_path), "--run-name", "r", "--steps",
                 "12", "--optimizer", optimizer, "--lr", "1e6", "--warmup-steps", "0", "--log-every", "4",
                 "--ckpt-every", "1"])
    out, err = capsys.readouterr()
    assert code == 3, out + err
    assert "the training loss is" in out and "stopping (try a lower --lr" in out and "Traceback" not in out + err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
    assert summary["status"] == "diverged" and (tmp_path / "r" / "loss.png").is_file()


def test_sample_generates_text(trained_run, capsys):
    assert main(["sample", str(trained_run), "--prompt", "KING", "--max-new-tokens", "12", "--num-samples", "2",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("----- sample") == 2 and out.count("KING") >= 2
    err = error_of(capsys, ["sample", str(trained_run), "--max-new-tokens", "0"], 2)
    assert "max_new_tokens must be a positive integer" in err
    err = error_of(capsys, ["sample", str(trained_run), "--temperature", "-1"], 2)
    assert "temperature must be >= 0" in err
    err = error_of(capsys, ["sample", str(trained_run / "nothing")], 1)
    assert "does not exist" in err
    err = error_of(capsys, ["sample", str(trained_run), "--tokenizer", str(trained_run / "none.json")], 1)
    assert "tokenizer file" in err


def test_sample_without_a_tokenizer_says_where_it_looked(trained_run, tmp_path, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes((trained_run / "checkpoints" / "last.pt").read_bytes())
    err = error_of(capsys, ["sample", str(ckpt)], 1)
    assert "looked for" in err and "tokenizer.json" in err


def test_compare_writes_report(tmp_path, cache, capsys):
    report = tmp_path / "report"
    assert main(["compare", *TINY, "--cache-dir", cache, "--optimizers", "adamw,spectra-adamw", "--lrs",
                 "1e-3,3e-3", "--seeds", "0", "--steps", "4", "--diag-every", "2", "--eval-every", "2",
                 "--report-dir", str(report)]) == 0
    summary = (report / "summary.md").read_text()
    assert "| adamw | 0.001 |" in summary and "| spectra-adamw | 0.003" in summary and "(best lr)" in summary
    for png in ("loss_curves.png", "lr_sensitivity.png", "spectral_norms.png", "grad_spectra.png"):
        assert (report / png).stat().st_size > 1000
    results = json.loads((report / "results.json").read_text())
    assert len(results["runs"]) == 4 and all(r["final_val_loss"] > 0 for r in results["runs"])


@pytest.mark.parametrize("argv,code,message", [
    (["train", "--optimizer", "adam"], 2, "optimizer must be one of"),
    (["train", "--preset", "huge"], 2, "preset must be one of"),
    (["train", "--steps", "0"], 2, "steps must be an integer >= 1"),
    (["train", "--lr", "-1"], 2, "lr must be a positive number"),
    (["train", "--schedule", "linear"], 2, "schedule must be one of"),
    (["train", "--dtype", "fp8"], 2, "dtype must be one of"),
    (["train", "--device", "tpu"], 2, "device must be"),
    (["train", "--warmup-steps", "900", "--steps", "100"], 2, "warmup_steps must be smaller than steps"),
    (["train", "--corpus-fraction", "1.5"], 2, "corpus_fraction must be in (0, 1]"),
    (["train", "--d-model", "30"], 2, "divisible by n_heads"),
    (["train", "--opt", "nokey"], 2, "--opt expects KEY=VALUE"),
    (["train", "--config", "/nonexistent/cfg.json"], 2, "config file /nonexistent/cfg.json does not exist"),
    (["train", "--resume", "/nonexistent/run"], 1, "does not exist"),
    (["train", "--data", "/nonexistent/data.txt", "--print-config"], 0, None),
    (["compare", "--lrs", "-1"], 2, "--lrs must be positive"),
    (["compare", "--optimizers", "adamw,nope"], 2, "optimizer must be one of"),
])
def test_cli_errors_are_clear(capsys, argv, code, message):
    assert main(argv) == code
    if message:
        assert message in capsys.readouterr().err


def test_cli_runtime_errors(tmp_path, cache, capsys):
    err = error_of(capsys, ["train", *TINY, "--cache-dir", cache, "--data", str(tmp_path / "missing.txt"),
                            "--out-dir", str(tmp_path)], 1)
    assert "does not exist" in err and "missing.txt" in err
    err = error_of(capsys, ["train", *TINY, "--cache-dir", cache, "--optimizer", "adamw", "--clip-c", "5",
                            "--out-dir", str(tmp_path)], 2)
    assert "clip_c applies to the spectra" in err
    err = error_of(capsys, ["train", *TINY, "--cache-dir", cache, "--optimizer", "adamw", "--opt", "foo=1",
                            "--out-dir", str(tmp_path)], 2)
    assert "bad arguments for optimizer 'adamw'" in err
    err = error_of(capsys, ["train", *TINY, "--cache-dir", cache, "--vocab-size", "100000",
                            "--out-dir", str(tmp_path)], 2)
    assert "vocab_size must be an integer in [257, 65535]" in err


def test_config_file_then_flags(tmp_path, capsys):
    toml = tmp_path / "cfg.toml"
    toml.write_text('optimizer = "muon"\nsteps = 50\nlr = 0.02\n[opt]\nmomentum = 0.9\n')
    assert main(["train", "--config", str(toml), "--steps", "70", "--opt", "nesterov=False", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["optimizer"] == "muon" and cfg["steps"] == 70 and cfg["lr"] == 0.02
    assert cfg["opt"] == {"momentum": 0.9, "nesterov": False}
    bad = tmp_path / "bad.json"
    bad.write_text('{"steps": 10, "stepz": 3}')
    assert "unknown keys ['stepz']" in error_of(capsys, ["train", "--config", str(bad)], 2)
    bad.write_text("{not json")
    assert "cannot parse config file" in error_of(capsys, ["train", "--config", str(bad)], 2)
    bad.write_text("[1, 2]")
    assert "must hold a mapping" in error_of(capsys, ["train", "--config", str(bad)], 2)
    (tmp_path / "cfg.yaml").write_text("steps: 1")
    assert "must end in .json or .toml" in error_of(capsys, ["train", "--config", str(tmp_path / "cfg.yaml")], 2)


def test_list_optimizers(capsys):
    assert main(["train", "--list-optimizers"]) == 0
    out = capsys.readouterr().out
    assert "spectra-adamw" in out and "spike-aware" in out and "adamw" in out
