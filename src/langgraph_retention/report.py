"""Result types: what a prune did (`PruneReport`) and what a store holds (`Stats`)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

__all__ = [
    "Decision",
    "PruneReport",
    "Stats",
    "StoreSummary",
    "ThreadResult",
    "ThreadStats",
    "format_bytes",
    "summarize",
]


def format_bytes(n: int) -> str:
    """A byte count for people: 512 B, 3.4 MiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class Decision(NamedTuple):
    """One checkpoint's fate in a prune, and every reason (`explain=True`): why it stays
    (`newest`, `last 2/5`, `daily 2025-07-29`, `ancestor of kept 1f0…`) or why it goes
    (`thread expired: …`, `over max_bytes`; none: no rule keeps it)."""

    checkpoint_ns: str
    checkpoint_id: str
    kept: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint_ns": self.checkpoint_ns,
            "checkpoint_id": self.checkpoint_id,
            "kept": self.kept,
            "reasons": list(self.reasons),
        }


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
    #: The policy rules left this thread alone (`EXEMPT`).
    exempt: bool = False
    #: Why the whole thread was deleted (`idle_ttl`, `max_age`), if it was.
    expired: str | None = None
    #: What the plan could not do (a thread over `max_bytes` that cannot fit).
    warnings: list[str] = field(default_factory=list)
    #: Every checkpoint and why, when the prune was asked to explain.
    decisions: list[Decision] | None = None


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
    #: Threads the policy rules exempted (counted in `threads_seen`, never touched).
    threads_exempt: int = 0
    #: Whole threads deleted (or, in a dry run, that would be) by `idle_ttl`/`max_age`.
    deleted_threads: int = 0
    dry_run: bool = False
    elapsed_seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)
    #: Why a sweep ended before its last thread ("stop requested", "sweep lock lost"),
    #: None when it went through. Every batch it did run is committed and counted.
    stopped: str | None = None
    #: Thread id -> why the whole thread was (or would be) deleted.
    expired: dict[str, str] = field(default_factory=dict)
    #: Thread id -> what its plan could not do (e.g. fit `max_bytes`).
    warnings: dict[str, str] = field(default_factory=dict)
    #: Thread id -> every checkpoint and why (only when asked to explain).
    decisions: dict[str, list[Decision]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no thread failed."""
        return not self.errors

    def add(self, result: ThreadResult) -> None:
        """Fold one thread's result into the totals."""
        self.threads_seen += 1
        if result.error is not None:
            self.errors[result.thread_id] = result.error
            # A staged flush that failed midway did commit some deletes: count them.
            self._add_deleted(result)
            return
        if result.exempt:
            self.threads_exempt += 1
            return
        if result.expired is not None:
            self.deleted_threads += 1
            self.expired[result.thread_id] = result.expired
        if result.warnings:
            self.warnings[result.thread_id] = "; ".join(result.warnings)
        if result.decisions is not None:
            self.decisions[result.thread_id] = result.decisions
        self._add_deleted(result)
        self.kept_checkpoints += result.kept_checkpoints
        if result.deleted_checkpoints:
            self.threads_pruned += 1

    def _add_deleted(self, result: ThreadResult) -> None:
        self.deleted_checkpoints += result.deleted_checkpoints
        self.deleted_writes += result.deleted_writes
        self.deleted_blobs += result.deleted_blobs
        self.bytes_freed += result.bytes_freed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the report (decisions only when there are some)."""
        out = asdict(self)
        decisions = out.pop("decisions")
        if decisions:
            out["decisions"] = {
                tid: [Decision(*d).to_dict() for d in items] for tid, items in decisions.items()
            }
        return out

    def summary(self) -> str:
        """One line for logs and terminals: threads, what went, time, failures."""
        verb = "would delete" if self.dry_run else "deleted"
        line = (
            f"{self.threads_seen} threads: {verb} {self.deleted_checkpoints} checkpoints, "
            f"{self.deleted_writes} writes, {self.deleted_blobs} blobs "
            f"({format_bytes(self.bytes_freed)}); kept {self.kept_checkpoints} checkpoints; "
            f"{self.elapsed_seconds:.2f}s; {len(self.errors)} failed"
        )
        if self.deleted_threads:
            expired = "would expire" if self.dry_run else "expired"
            line += f"; {self.deleted_threads} whole threads {expired}"
        if self.threads_exempt:
            line += f"; {self.threads_exempt} exempt"
        if self.errors:
            shown = ", ".join(repr(tid) for tid in list(self.errors)[:5])
            more = len(self.errors) - 5
            line += f" ({shown}{f' and {more} more' if more > 0 else ''})"
        if self.stopped:
            line += f"; stopped early: {self.stopped}"
        return line


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


@dataclass(slots=True)
class StoreSummary:
    """Totals of a store and its largest threads, built from streamed per-thread stats in
    memory bounded by `top` (however many threads the store has)."""

    total_threads: int = 0
    total_checkpoints: int = 0
    total_writes: int = 0
    total_bytes: int = 0
    #: The largest threads by checkpoint count, largest first.
    largest: list[tuple[str, ThreadStats]] = field(default_factory=list)

    def line(self) -> str:
        """One line for logs and terminals."""
        return (
            f"{self.total_threads} threads, {self.total_checkpoints} checkpoints, "
            f"{self.total_writes} writes, {format_bytes(self.total_bytes)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_threads": self.total_threads,
            "total_checkpoints": self.total_checkpoints,
            "total_writes": self.total_writes,
            "total_bytes": self.total_bytes,
            "largest": [{"thread_id": tid, **ts.to_dict()} for tid, ts in self.largest],
        }


def summarize(rows: Iterable[tuple[str, ThreadStats]], top: int) -> StoreSummary:
    """Fold streamed (thread id, stats) rows into totals and the `top` largest threads."""
    summary = StoreSummary()
    heap: list[tuple[int, str, ThreadStats]] = []
    for tid, ts in rows:
        summary.total_threads += 1
        summary.total_checkpoints += ts.checkpoints
        summary.total_writes += ts.writes
        summary.total_bytes += ts.bytes
        if top <= 0:
            continue
        item = (ts.checkpoints, tid, ts)
        if len(heap) < top:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)
    summary.largest = [(tid, ts) for _n, tid, ts in sorted(heap, key=lambda i: i[:2], reverse=True)]
    return summary
