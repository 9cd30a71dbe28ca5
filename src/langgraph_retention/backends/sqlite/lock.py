"""The SQLite sweep lock: an exclusive `flock` on a file beside the database file.

`checkpoints.db` is locked through `checkpoints.db.retention-lock`, which holds the
holder (host, pid, since) while locked. The kernel drops the lock when the holding
process exits, however it exits, so a crashed sweeper never blocks the next one. The
file itself stays (removing it would let a second sweeper lock a new file while the
first still holds the old one); `held` checks the path still names our file.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from langgraph_retention.lock import LockHolder, SweepLock, this_process

__all__ = ["LOCK_SUFFIX", "FileSweepLock", "lock_path"]

LOCK_SUFFIX = ".retention-lock"


def lock_path(database: Path) -> Path:
    """The lock file of a database file: beside it, the same name plus `LOCK_SUFFIX`."""
    return database.with_name(database.name + LOCK_SUFFIX)


class FileSweepLock(SweepLock):
    """An exclusive, non-blocking `flock` held for the length of a sweep."""

    def __init__(self, database: Path) -> None:
        self.path = lock_path(database)
        self._fd: int | None = None

    def acquire(self) -> LockHolder | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                text = os.pread(fd, 4096, 0)
            finally:
                os.close(fd)
            return LockHolder.from_json(text, how=f"file lock {self.path}")
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, this_process().to_json().encode(), 0)
        self._fd = fd
        return None

    def held(self) -> bool:
        if self._fd is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no stale holder left for readers
        finally:
            os.close(fd)  # closing the descriptor releases the flock
