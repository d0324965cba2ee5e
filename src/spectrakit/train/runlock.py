"""One live run per run folder: ``RUN/run.lock`` holds the owner's pid and host under an exclusive ``flock``.

The kernel drops the flock when its process dies (also on kill -9), so a lock file left behind by a dead run is
taken over with a message naming the dead owner; a live owner makes the next run refuse with ``RunFolderBusy``.
A clean exit removes the file. (flock is per host: runs on two hosts sharing a network file system are told
apart by the host name recorded in the file only where that file system honours flock.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

LOCK = "run.lock"


class RunFolderBusy(OSError):
    """Another live process holds the run folder's lock."""


def _owner(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']} (started {info.get('started', '?')})"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


def _flock(fd: int, patience: float = 0.0) -> bool:
    """Take the exclusive flock of ``fd``, trying for up to ``patience`` seconds; whether it was taken."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def check_free(run_dir: Path) -> None:
    """Raise RunFolderBusy when a live process holds ``run_dir``'s lock (a probe: the lock is not kept)."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if not _flock(fd):
            raise _busy(path, os.pread(fd, 4096, 0))
    finally:
        os.close(fd)  # also drops the probe's flock


def _busy(path: Path, content: bytes) -> RunFolderBusy:
    return RunFolderBusy(f"run folder {path.parent} is in use by {_owner(content.decode(errors='replace'))}: "
                         "wait for that run to end, or pick another --run-name")


class RunLock:
    """``with RunLock(run_dir, log):`` holds the run folder for the duration of the block."""

    def __init__(self, run_dir: Path, log: Callable[[str], None] = print) -> None:
        self.path = Path(run_dir) / LOCK
        self.log = log
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _flock(fd, patience=0.5):  # patience: another run's check_free holds it for microseconds
                content = os.pread(fd, 4096, 0)
                os.close(fd)
                raise _busy(self.path, content)
            try:  # the file may have been removed (and re-created) by its previous owner while we waited
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.pread(fd, 4096, 0).decode(errors="replace")
        if previous.strip():
            self.log(f"run folder {self.path.parent}: taking over the stale lock of {_owner(previous)}, which is "
                     "no longer running")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding the flock: a waiter re-checks the inode
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *_exc) -> None:
        self.release()
