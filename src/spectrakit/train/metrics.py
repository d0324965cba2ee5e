"""Metric sinks of a run folder: metrics.jsonl (every record), metrics.csv (train/val scalars), diagnostics.jsonl
(per-layer spectral records), and TensorBoard event files when ``tensorboard`` is installed."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

CSV_COLUMNS = ("step", "kind", "tokens", "lr", "train_loss", "val_loss", "val_ppl", "grad_norm", "tokens_per_s",
               "elapsed_s")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_jsonl(path: Path, max_step: int) -> None:
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


class MetricsWriter:
    """Appends records to the run folder's metric files. ``resume_step`` drops records after that step (written
    by an interrupted run after its last checkpoint), so a resumed run's files read like an uninterrupted one's."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.dir = run_dir
        self.jsonl = run_dir / "metrics.jsonl"
        self.diag = run_dir / "diagnostics.jsonl"
        self.csv = run_dir / "metrics.csv"
        if resume_step is not None:
            for path in (self.jsonl, self.diag):
                if path.exists():
                    _truncate_jsonl(path, resume_step)
        else:
            for path in (self.jsonl, self.diag):
                path.unlink(missing_ok=True)
        self._rewrite_csv()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def _rewrite_csv(self) -> None:
        with self.csv.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(r for r in read_jsonl(self.jsonl) if r.get("kind") in ("train", "val"))

    def log(self, record: dict[str, Any]) -> None:
        with self.jsonl.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if record.get("kind") in ("train", "val"):
            with self.csv.open("a", newline="") as fh:
                csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore").writerow(record)
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{record.get('kind', 'run')}/{key}", value, record["step"])

    def log_diagnostics(self, record: dict[str, Any]) -> None:
        with self.diag.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
