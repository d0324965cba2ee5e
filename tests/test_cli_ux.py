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


def _interrupt(tmp_path: Path, wait_for: str | None) -> subprocess.CompletedProcess:
    """Start ``spectrakit train`` in a real process and send it SIGINT at once (while Python and torch load) or
    when its output first shows ``wait_for``."""
    import signal
    import time

    argv = [sys.executable, "-m", "spectrakit", "train", *TINY, "--steps", "100000", "--cache-dir",
            str(tmp_path / "cache"), "--out-dir", str(tmp_path / "runs")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    # SIGINT's default action in the child whatever the parent's (a shell's background job ignores SIGINT, and an
    # ignored SIGINT is inherited: Python then installs no KeyboardInterrupt handler and the signal is lost)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out = []
    if wait_for is None:
        time.sleep(0.5)
    else:
        for line in proc.stdout:
            out.append(line)
            if wait_for in line:
                break
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, proc.returncode, "".join(out) + rest, err)


@pytest.mark.slow
@pytest.mark.parametrize("wait_for", [None, "training a", "tokenizing", "run folder"])
def test_ctrl_c_at_any_moment_ends_cleanly_with_130(tmp_path, wait_for):
    proc = _interrupt(tmp_path, wait_for)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr
    assert "interrupted" in proc.stderr or "received SIGINT" in proc.stdout, proc.stdout + proc.stderr


def _evil_checkpoint(path: Path) -> Path:
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    from spectrakit.train.tokenizer import train_bpe

    path.parent.mkdir(parents=True)
    torch.save({"format": "spectrakit-checkpoint-v1", "payload": Evil()}, path)
    (path.parent.parent / "tokenizer.json").write_text(train_bpe(["some text"], 300).to_str())
    return path


@pytest.mark.parametrize("command", ["sample", "train --resume"])
def test_an_unsafe_checkpoint_is_refused_without_suggesting_to_unpickle_it(tmp_path, capsys, command):
    from spectrakit.cli import main

    evil = _evil_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert main([*command.split(), str(evil)]) == 1
    err = capsys.readouterr().err
    assert "not a spectrakit checkpoint" in err and "was not loaded" in err
    for hint in ("weights_only", "will likely succeed", "safe_globals", "trust"):
        assert hint not in err, err


@pytest.mark.usefixtures("restore_threads")
def test_compare_shows_one_bar_over_all_runs_and_logs_the_train_loss_densely(tmp_path, capsys):
    from spectrakit.cli import main

    flags = [f for f in TINY if f != "--no-progress"]
    report = tmp_path / "report"
    assert main(["compare", *flags, "--cache-dir", str(tmp_path / "cache"), "--optimizers", "adamw,spectra-adamw",
                 "--steps", "3", "--eval-every", "2", "--diag-every", "0", "--report-dir", str(report)]) == 0
    captured = capsys.readouterr()
    assert "6/6" in captured.err and "run 2/2 spectra-adamw" in captured.err  # runs x steps, one bar
    summary = (report / "summary.md").read_text()
    assert "+- 0.0000" not in summary and summary.count("(1 seed)") == 2
    # without diagnostics there are no spectral plots to draw: none is written or listed
    assert "Plots: `loss_curves.png`, `lr_sensitivity.png`; " in summary
    assert sorted(p.name for p in report.glob("*.png")) == ["loss_curves.png", "lr_sensitivity.png"]
    rows = [json.loads(line) for line in (report / "runs" / "adamw-lrdefault-s0" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]


def test_a_single_seed_is_reported_as_such():
    from spectrakit.train.compare import RunRecord, summary_markdown
    from spectrakit.train.config import TrainConfig

    records = [RunRecord("adamw", 1e-3, 0, Path("a"), 5.0, 100.0, None, None),
               RunRecord("muon", 0.02, 0, Path("b"), 4.0, 100.0, None, None),
               RunRecord("muon", 0.02, 1, Path("c"), 4.5, 100.0, None, None)]
    table = summary_markdown(records, TrainConfig())
    assert "| adamw | 0.001 | 1 | 5.0000 (1 seed) |" in table
    assert "| muon | 0.02 | 2 | 4.2500 +- 0.3536 |" in table


def _fake_run(run_dir: Path) -> Path:
    run_dir.mkdir()
    rows = [{"step": s, "kind": "train", "train_loss": 6.0 - 0.01 * s} for s in range(1, 101)]
    rows += [{"step": s, "kind": "val", "val_loss": 6.1 - 0.01 * s} for s in (0, 50, 100)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kinds = ["embed", "lm_head"] + [f"{m}.{n}_proj" for m, names in (("attn", "qkvo"), ("mlp", ("gate", "up",
                                                                                            "down"))) for n in names]
    diags = [{"step": s, "layers": {(k if k in ("embed", "lm_head") else f"layers.0.{k}") + ".weight":
                                    {"weight_spectral": 1.0 + s * (1 + i), "update_spectral": 0.1 * (1 + i),
                                     "grad_spike_ratio": 2.0 + i} for i, k in enumerate(kinds)},
              "grad_spectra": {"layers.0.mlp.up_proj.weight": [3.0, 2.0, 1.0]}} for s in (10, 50, 100)]
    (run_dir / "diagnostics.jsonl").write_text("".join(json.dumps(d) + "\n" for d in diags))
    return run_dir


def test_run_plots_draw_the_train_loss_as_a_line_the_evals_as_marks_and_keep_legends_off_the_curves(tmp_path,
                                                                                                     monkeypatch):
    from spectrakit.train import plots

    plt = plots._pyplot()
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures plot_run closes
    written = plots.plot_run(_fake_run(tmp_path / "run"))
    assert [p.name for p in written] == ["loss.png", "spectral_norms.png", "grad_spectra.png"]
    loss_fig, norms_fig = figures[0], figures[1]
    train, val = loss_fig.axes[0].get_lines()
    assert len(train.get_xdata()) == 100 and train.get_linestyle() == "-"
    assert list(val.get_xdata()) == [0, 50, 100] and val.get_linestyle() == "None" and val.get_marker() == "o"
    # spectral_norms.png: one legend naming every matrix kind, outside all three panels
    assert all(ax.get_legend() is None for ax in norms_fig.axes) and len(norms_fig.legends) == 1
    legend = norms_fig.legends[0]
    assert len(legend.get_texts()) == 9
    norms_fig.canvas.draw()
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in norms_fig.axes)
    monkeypatch.undo()
    for fig in figures:
        plt.close(fig)
