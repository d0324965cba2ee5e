"""What a first-time user of ``spectrakit train | compare | sample`` meets: fast help and errors, the resolved
settings, early validation, a clean Ctrl-C, and the compare report's progress and plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI's main() in a fresh interpreter, then reports the exit code and whether torch was imported.
_DRIVER = textwrap.dedent("""
    import json, sys
    from spectrakit.cli import main
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    print(json.dumps({"code": code, "torch": "torch" in sys.modules}), file=sys.__stderr__)
""")


def _fresh_cli(*argv: str, cwd: Path | None = None) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", _DRIVER, *argv], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=False)
    return json.loads(proc.stderr.strip().splitlines()[-1]), proc.stdout + proc.stderr


@pytest.mark.parametrize("argv, code", [
    ((), 2),                                                    # no command: the overview
    (("--help",), 0),
    (("train", "--help"), 0),
    (("compare", "--help"), 0),
    (("sample", "--help"), 0),
    (("train", "--steps", "x"), 2),                             # an argument error
    (("train", "--optimizer", "adam"), 2),                      # config errors
    (("train", "--clip-c", "5", "--opt", "clip_c=20"), 2),
    (("train", "--config", "/nonexistent/cfg.json"), 2),
    (("train", "--vocab-size", "10"), 2),
    (("compare", "--lrs", "-1"), 2),
])
def test_help_and_config_errors_do_not_import_torch(argv, code):
    result, output = _fresh_cli(*argv)
    assert result == {"code": code, "torch": False}, output


def _printed_config(capsys, *argv: str) -> dict:
    from spectrakit.cli import main

    assert main(["train", *argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_print_config_shows_resolved_values_in_order_of_precedence(tmp_path, capsys):
    cfg = _printed_config(capsys)  # the preset's shape, the optimizer's own lr and c
    assert (cfg["vocab_size"], cfg["d_model"], cfg["n_layers"], cfg["n_heads"], cfg["seq_len"]) == (8192, 128, 4, 4,
                                                                                                      128)
    assert (cfg["n_kv_heads"], cfg["ffn_hidden"], cfg["warmup_steps"]) == (4, 384, 25)
    assert (cfg["optimizer"], cfg["lr"], cfg["clip_c"]) == ("spectra-adamw", 1e-3, 10.0)
    assert _printed_config(capsys, "--optimizer", "muon")["lr"] == 0.02
    adamw = _printed_config(capsys, "--optimizer", "adamw", "--preset", "160m")
    assert (adamw["lr"], adamw["clip_c"], adamw["vocab_size"], adamw["seq_len"]) == (1e-3, None, 50304, 512)
    # preset < defaults < file < flags
    file = tmp_path / "cfg.json"
    file.write_text(json.dumps({"preset": "160m", "d_model": 256, "n_heads": 8, "lr": 0.01, "steps": 40}))
    cfg = _printed_config(capsys, "--config", str(file), "--lr", "0.003")
    assert (cfg["vocab_size"], cfg["d_model"], cfg["n_heads"], cfg["lr"], cfg["steps"]) == (50304, 256, 8, 0.003, 40)
    assert cfg["warmup_steps"] == 2 and cfg["ffn_hidden"] == 704
    # the printout is a config file that resolves to itself
    file.write_text(json.dumps(cfg))
    assert _printed_config(capsys, "--config", str(file)) == cfg


@pytest.mark.parametrize("argv, message", [
    (["--clip-c", "5", "--opt", "clip_c=20"], "--opt clip_c=20 conflicts with --clip-c 5.0"),
    (["--opt", "clip_c=20"], "--opt clip_c=20: clip_c has a setting of its own; use --clip-c 20"),
    (["--lr", "1e-3", "--opt", "lr=0.1"], "--opt lr=0.1 conflicts with --lr 0.001"),
    (["--opt", "weight_decay=0.0"], "--opt weight_decay=0.0 conflicts with --weight-decay 0.1"),
    (["--optimizer", "spectra-adamw", "--opt", "base='signum'"],
     "--opt base='signum' conflicts with --optimizer spectra-adamw, which sets base='adamw'"),
])
def test_an_opt_entry_that_repeats_a_setting_is_an_error(capsys, argv, message):
    from spectrakit.cli import main

    assert main(["train", *argv, "--print-config"]) == 2
    assert message in capsys.readouterr().err


def test_the_conflict_is_found_in_config_files_too(tmp_path, capsys):
    from spectrakit.cli import main

    file = tmp_path / "cfg.toml"
    file.write_text("clip_c = 5.0\n[opt]\nclip_c = 20.0\n")
    assert main(["train", "--config", str(file), "--print-config"]) == 2
    assert "--opt clip_c=20.0 conflicts with --clip-c 5.0" in capsys.readouterr().err


TINY = ["--vocab-size", "512", "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--seq-len", "32",
        "--batch-size", "4", "--corpus-fraction", "0.02", "--eval-batches", "2", "--threads", "1", "--no-progress",
        "--no-plots"]


@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize("argv, code, message, tokenizes", [
    (["--vocab-size", "10"], 2, "vocab_size must be an integer in [257, 65535]", False),
    (["--seq-len", "100000"], 1, "has at most", False),                      # shorter than the text's bytes
    (["--opt", "foo=1"], 2, "bad arguments for optimizer 'spectra-adamw'", False),
    (["--seq-len", "5000"], 1, "fewer than seq_len + 2 = 5002", True),       # known once tokenized
])
def test_bad_settings_fail_before_expensive_work_and_before_any_run_file(tmp_path, capsys, argv, code, message,
                                                                         tokenizes):
    from spectrakit.cli import main

    cache, out = tmp_path / "cache", tmp_path / "runs"
    assert main(["train", *TINY, *argv, "--cache-dir", str(cache), "--out-dir", str(out), "--steps", "2"]) == code
    captured = capsys.readouterr()
    assert message in captured.err
    assert not out.exists(), "no run folder for a run that cannot start"
    assert ("training a" in captured.out) == tokenizes and cache.exists() == tokenizes
