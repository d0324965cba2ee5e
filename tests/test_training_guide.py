"""The training tool's guide (docs/guides/training.md) against the tool: every command in it parses, every flag it
names exists and every setting is named, its config file resolves, its quick commands and its first session run
(the latter with a tiny model and few steps)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from spectrakit.cli import build_parser, main

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "training.md"
TEXT = GUIDE.read_text()
TORCHRUN_FLAGS = {"--nproc_per_node"}
TINY = ["--vocab-size", "512", "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--seq-len", "32",
        "--batch-size", "4", "--corpus-fraction", "0.02", "--eval-batches", "2", "--threads", "1", "--no-progress",
        "--no-plots"]

pytestmark = pytest.mark.usefixtures("restore_threads")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", TEXT, flags=re.S | re.M)


def _argv(line: str) -> list[str]:
    """The spectrakit arguments of one command line (``spectrakit ...`` or ``torchrun ... -m spectrakit ...``)."""
    words = shlex.split(line, comments=True)
    if words[0] == "spectrakit":
        return words[1:]
    assert words[0] == "torchrun" and "-m" in words, f"not a spectrakit command: {line!r}"
    at = words.index("-m")
    assert words[at + 1] == "spectrakit", line
    return words[at + 2:]


COMMANDS = [_argv(line) for block in _blocks("bash") for line in block.splitlines() if line.strip()]


def _option_strings(parser) -> dict[str, set[str]]:
    """Command name -> its option strings."""
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}


def test_the_guide_has_commands_of_every_kind():
    assert {argv[0] for argv in COMMANDS} == {"train", "compare", "sample"}
    assert any("--parallel" in argv for argv in COMMANDS)


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_command_of_the_guide_parses(argv):
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`spectrakit {' '.join(argv)}` does not parse (exit {exc.code})")


def test_every_flag_the_guide_names_exists_and_every_setting_is_named():
    options = _option_strings(build_parser())
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", TEXT))
    unknown = named - set().union(*options.values()) - TORCHRUN_FLAGS
    assert not unknown, f"the guide names flags the tool does not have: {sorted(unknown)}"
    unnamed = {s for s in options["train"] | options["compare"] | options["sample"]
               if not s.startswith("--no-") and s not in ("-h", "--help")} - named
    assert not unnamed, f"the guide does not mention: {sorted(unnamed)}"


def test_the_config_file_example_resolves(tmp_path, capsys):
    (toml,) = _blocks("toml")
    path = tmp_path / "run.toml"
    path.write_text(toml)
    assert main(["train", "--config", str(path), "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["optimizer"], cfg["lr"], cfg["clip_c"], cfg["schedule"], cfg["steps"]) == ("spectra-adamw", 0.002,
                                                                                            5.0, "wsd", 2000)
    assert cfg["opt"] == {"betas": [0.9, 0.95], "clip_warmup_steps": 100}


@pytest.mark.parametrize("argv", [a for a in COMMANDS if "--print-config" in a or "--list-optimizers" in a],
                         ids=" ".join)
def test_the_quick_commands_run(argv, capsys):
    assert main(argv) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.slow
def test_the_first_session_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    steps = iter(["4", "6"])  # the first run, then its continuation
    for line in _blocks("bash")[0].splitlines():
        argv = _argv(line)
        if argv[0] == "train":
            argv += [*TINY, *cache, "--steps", next(steps)]
        elif argv[0] == "compare":
            argv += [*TINY, *cache, "--steps", "2"]
        else:
            argv += ["--max-new-tokens", "5"]
        assert main(argv) == 0, " ".join(argv)
    out = capsys.readouterr().out
    assert "ROMEO:" in out
    assert json.loads((tmp_path / "runs" / "first" / "summary.json").read_text())["steps_done"] == 6
    assert (tmp_path / "reports" / "first" / "summary.md").is_file()
