"""Write one benchmark's section of BENCHMARKS.md, leaving the other sections untouched."""

from __future__ import annotations

import argparse
import datetime
import platform
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def positive_int(text: str) -> int:
    """argparse type for counts (repetitions, steps, rounds): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def machine_description() -> str:
    """CPU/GPU, core count, torch version: the line every table carries."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{device}; torch {torch.__version__}; Python {platform.python_version()}"


def write_section(name: str, body: str, command: str) -> None:
    """Replace (or append) the block between <!-- begin NAME --> and <!-- end NAME --> in BENCHMARKS.md."""
    stamp = datetime.date.today().isoformat()
    block = (f"<!-- begin {name} -->\n{body.rstrip()}\n\nMachine: {machine_description()}. Date: {stamp}. "
             f"Command: `{command}`.\n<!-- end {name} -->")
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)


def quick_or_full(argv: Sequence[str] | None, description: str, quick: Callable[[], str], full: Callable[[], str],
                  section: str, title: str, script: str) -> str:
    """The command line shared by the benchmarks with a --quick mode: --quick runs ``quick`` and only prints;
    otherwise ``full`` runs and its body becomes the ``section`` of BENCHMARKS.md. --threads sets torch's."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes; print, do not write BENCHMARKS.md")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 gives steadier timings on a shared machine; default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    body = quick() if args.quick else full()
    if not args.quick:
        write_section(section, f"## {title}\n\n{body}",
                      f"python benchmarks/{script} --threads {torch.get_num_threads()}")
    print(body)
    return body
