"""benchmarks/trajectories.py: two recordings of the same code compare bitwise, and a changed step is reported."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import trajectories  # noqa: E402


def test_recordings_of_the_same_code_are_bitwise_and_a_change_is_found(tmp_path, monkeypatch, capsys):
    configs = trajectories.configurations()
    chosen = {name: configs[name] for name in ("spectra-adamw-soft", "muon")}
    monkeypatch.setattr(trajectories, "configurations", lambda: chosen)
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    trajectories.record(str(first))
    trajectories.record(str(second))
    assert trajectories.compare(str(first), str(second)) == 0
    assert capsys.readouterr().out.count("bitwise | bitwise | bitwise") == 2
    changed = torch.load(second)
    changed["muon"]["weights"]["head.weight"][0, 0] += 1e-6
    torch.save(changed, second)
    assert trajectories.compare(str(first), str(second)) == 1
    assert "| muon | bitwise | max diff" in capsys.readouterr().out
