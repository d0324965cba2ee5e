"""The `spectrakit` entry point and its `demo` command."""

import subprocess
import sys

import pytest

from spectrakit.cli import main


def test_demo_prints_errors_for_each_method(capsys):
    assert main(["demo", "--size", "48", "--ratio", "10"]) == 0
    out = capsys.readouterr().out
    for name in ("soft_clip polar", "soft_clip newton_schulz", "hard_clip", "msign polar_express"):
        assert name in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_demo_rejects_bad_size():
    with pytest.raises(SystemExit, match="--size"):
        main(["demo", "--size", "1"])


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "spectrakit", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "spectrakit" in proc.stdout
