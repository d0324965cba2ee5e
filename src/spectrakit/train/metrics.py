"""Metric sinks of a run folder: metrics.jsonl (every record), metrics.csv (train/val scalars), diagnostics.jsonl
(per-layer spectral records), and TensorBoard event files when ``tensorboard`` is installed.

On resume each JSONL log is cut to its last complete record at or before the checkpoint's step: a half-written
last line (disk full, kill -9) and records written after the checkpoint are dropped (with a message), and
metrics.csv is rebuilt from metrics.jsonl, so a resumed run's logs read like an uninterrupted run's.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

CSV_COLUMNS = ("step", "kind", "tokens", "lr", "train_loss", "val_loss", "val_ppl", "grad_norm", "tokens_per_s",
               "elapsed_s")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_jsonl(path: Path, max_step: int, log: Callable[[str], None] = print) -> None:
    """Keep the complete records of ``path`` up to the first unreadable line, and of those the ones at or before
    ``max_step`` (records are written in step order)."""
    kept: list[str] = []
    lines = path.read_bytes().split(b"\n")
    broken = None
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            complete = number < len(lines) and isinstance(record, dict)  # the last piece lacks its newline
        except ValueError:
            complete = False
        if not complete:
            broken = number
            break
        if record.get("step", 0) <= max_step:
            kept.append(raw.decode() + "\n")
    dropped = sum(1 for raw in lines if raw.strip()) - len(kept)
    if dropped:
        why = f"; line {broken} is incomplete or unreadable: it and what follows it go" if broken else ""
        log(f"{path}: resuming at step {max_step}: kept {len(kept)} records, dropped {dropped} (after the "
            f"checkpoint or incomplete){why}")
    path.write_text("".join(kept))


class MetricsWriter:
    """Appends records to the run folder's metric files. ``resume_step`` drops records after that step (written
    by an interrupted run after its last checkpoint), so a resumed run's files read like an uninterrupted one's."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True,
                 log: Callable[[str], None] = print) -> None:
        self.dir = run_dir
        self.jsonl = run_dir / "metrics.jsonl"
        self.diag = run_dir / "diagnostics.jsonl"
        self.csv = run_dir / "metrics.csv"
        if resume_step is not None:
            for path in (self.jsonl, self.diag):
                if path.exists():
                    truncate_jsonl(path, resume_step, log)
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
