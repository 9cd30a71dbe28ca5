"""Result types: what a prune did (`PruneReport`) and what a store holds (`Stats`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["PruneReport", "Stats", "ThreadResult", "ThreadStats"]


@dataclass(slots=True)
class ThreadResult:
    """What one thread's prune deleted and kept (or would, in a dry run)."""

    thread_id: str
    deleted_checkpoints: int = 0
    deleted_writes: int = 0
    deleted_blobs: int = 0
    kept_checkpoints: int = 0
    bytes_freed: int = 0
    error: str | None = None


@dataclass(slots=True)
class PruneReport:
    """Totals of a prune or sweep; `errors` maps each failed thread id to its message.

    Counts are exact in a dry run too: they say what a real run would delete.
    """

    deleted_checkpoints: int = 0
    deleted_writes: int = 0
    deleted_blobs: int = 0
    kept_checkpoints: int = 0
    bytes_freed: int = 0
    threads_seen: int = 0
    threads_pruned: int = 0
    dry_run: bool = False
    elapsed_seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no thread failed."""
        return not self.errors

    def add(self, result: ThreadResult) -> None:
        """Fold one thread's result into the totals."""
        self.threads_seen += 1
        if result.error is not None:
            self.errors[result.thread_id] = result.error
            return
        self.deleted_checkpoints += result.deleted_checkpoints
        self.deleted_writes += result.deleted_writes
        self.deleted_blobs += result.deleted_blobs
        self.kept_checkpoints += result.kept_checkpoints
        self.bytes_freed += result.bytes_freed
        if result.deleted_checkpoints:
            self.threads_pruned += 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the report."""
        return asdict(self)


@dataclass(slots=True)
class ThreadStats:
    """One thread's footprint, over every namespace: checkpoints, writes, bytes, newest."""

    checkpoints: int = 0
    writes: int = 0
    bytes: int = 0
    namespaces: int = 0
    newest: datetime | None = None
    newest_checkpoint_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["newest"] = self.newest.isoformat() if self.newest else None
        return d


@dataclass(slots=True)
class Stats:
    """What a checkpoint store holds, thread by thread."""

    total_threads: int = 0
    total_checkpoints: int = 0
    total_writes: int = 0
    total_bytes: int = 0
    threads: dict[str, ThreadStats] = field(default_factory=dict)

    def add(self, thread_id: str, ts: ThreadStats) -> None:
        self.threads[thread_id] = ts
        self.total_threads += 1
        self.total_checkpoints += ts.checkpoints
        self.total_writes += ts.writes
        self.total_bytes += ts.bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_threads": self.total_threads,
            "total_checkpoints": self.total_checkpoints,
            "total_writes": self.total_writes,
            "total_bytes": self.total_bytes,
            "threads": {tid: ts.to_dict() for tid, ts in self.threads.items()},
        }
