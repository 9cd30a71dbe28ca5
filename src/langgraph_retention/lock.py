"""One sweeper at a time: what the store-wide sweep locks share.

Each backend package has its own lock (`backends/postgres/lock.py`: an advisory lock on a
connection of its own; `backends/redis/lock.py`: a key with an expiry, renewed while the
sweep runs; `backends/sqlite/lock.py`: a file lock beside the database file). The engine
drives them through `SweepLock`; a lock that is taken says who holds it (`LockHolder`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["LockHolder", "ProcessSweepLock", "SweepLock", "this_process"]


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a sweep lock: host and pid of the sweeping process, since when, and how."""

    host: str | None = None
    pid: int | None = None
    since: datetime | None = None
    how: str = ""

    def __str__(self) -> str:
        parts = [
            f"host {self.host or '?'}",
            f"pid {self.pid if self.pid is not None else '?'}",
            f"since {self.since.isoformat(timespec='seconds') if self.since else '?'}",
        ]
        return ", ".join(parts) + (f" ({self.how})" if self.how else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what the HTTP API and `--json` reports show."""
        return {
            "host": self.host,
            "pid": self.pid,
            "since": self.since.isoformat() if self.since else None,
            "how": self.how,
        }

    def to_json(self) -> str:
        """The compact form stored in a lock key or lock file."""
        since = self.since.isoformat() if self.since else None
        return json.dumps({"host": self.host, "pid": self.pid, "since": since})

    @classmethod
    def from_json(cls, text: str | bytes | None, how: str = "") -> LockHolder:
        """Parse `to_json` output; anything unreadable gives an anonymous holder."""
        try:
            data = json.loads(text or "")
            since = data.get("since")
            return cls(
                host=data.get("host"),
                pid=data.get("pid"),
                since=datetime.fromisoformat(since) if since else None,
                how=how,
            )
        except (ValueError, TypeError, AttributeError):
            return cls(how=how)


def this_process(how: str = "") -> LockHolder:
    """The holder this process would be, as of now."""
    return LockHolder(host=socket.gethostname(), pid=os.getpid(), since=datetime.now(UTC), how=how)


class SweepLock(ABC):
    """A store-wide lock held for the length of a sweep.

    `acquire` never waits: a sweep that finds the lock taken is skipped, not queued.
    `held` is asked between batches; a lock that was lost (expired, connection gone)
    stops the sweep after the batch in progress.
    """

    @abstractmethod
    def acquire(self) -> LockHolder | None:
        """Take the lock: None when taken, else who holds it."""

    @abstractmethod
    def held(self) -> bool:
        """Whether the lock is still ours."""

    @abstractmethod
    def release(self) -> None:
        """Give the lock back (safe to call twice, and after it was lost)."""


class ProcessSweepLock(SweepLock):
    """A lock for stores only one process can see (InMemorySaver, in-memory SQLite)."""

    _locks: weakref.WeakKeyDictionary[Any, tuple[threading.Lock, list[LockHolder]]] = (
        weakref.WeakKeyDictionary()
    )
    _registry_lock = threading.Lock()

    def __init__(self, owner: Any) -> None:
        with self._registry_lock:
            if owner not in self._locks:
                self._locks[owner] = (threading.Lock(), [])
            self._lock, self._holder = self._locks[owner]
        self._mine = False

    def acquire(self) -> LockHolder | None:
        if not self._lock.acquire(blocking=False):
            return self._holder[0] if self._holder else LockHolder(how="this process")
        self._holder[:] = [this_process("a sweep in this process")]
        self._mine = True
        return None

    def held(self) -> bool:
        return self._mine

    def release(self) -> None:
        if self._mine:
            self._mine = False
            self._holder.clear()
            self._lock.release()
