"""Torch intra-op thread settings for tests: restore them afterwards, or run on one thread (tiny matrices gain
nothing from threads, and on a busy machine OpenMP threads contend badly)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def threads_restored() -> Iterator[None]:
    """Restore torch's thread count on exit (for code that sets it, e.g. the CLI's --threads)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, then restore the previous count."""
    with threads_restored():
        torch.set_num_threads(1)
        yield
