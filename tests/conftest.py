"""Shared fixtures; test modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""

from __future__ import annotations

import pytest
from _threads import single_thread, threads_restored


@pytest.fixture
def one_thread():
    """The test runs on one intra-op thread (see ``_threads.single_thread``)."""
    with single_thread():
        yield


@pytest.fixture
def restore_threads():
    """The thread count the test sets (e.g. through the CLI's --threads) is restored afterwards."""
    with threads_restored():
        yield
