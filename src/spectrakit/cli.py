"""The ``spectrakit`` command line: one subcommand per job.

Each command module exposes ``register(subparsers)``, which adds its parser and sets ``func`` (a callable
taking the parsed namespace and returning an exit code). Registering imports no torch: ``--help`` and argument
errors are immediate.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

_COMMAND_MODULES = ("spectrakit.demo", "spectrakit.train.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectrakit", description="Spectral optimizers for LLM pre-training.")
    from spectrakit import __version__

    parser.add_argument("--version", action="version", version=f"spectrakit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; Ctrl-C at any moment (even while torch loads) ends it with exit code 130 and one line."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("spectrakit: interrupted", file=sys.stderr)
        return 130
