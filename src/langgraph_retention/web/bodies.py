"""The JSON the API answers with: the seed's keys first (`status`, `deleted_count`,
`processed_threads`, `thread_stats`, ...), our extras beside them."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

from langgraph_retention.report import PruneReport, ThreadResult, ThreadStats

__all__ = ["StatsFold", "page_body", "sweep_body", "thread_body", "thread_summary"]


def _status(deleted: int, exempt: bool, error: str | None) -> str:
    if error is not None:
        return "error"
    if exempt:
        return "exempt"
    return "success" if deleted else "no_cleanup_needed"


def thread_summary(r: ThreadResult) -> dict[str, Any]:
    """One thread's line in a sweep's `results` (the seed's per-thread keys)."""
    total = r.kept_checkpoints + r.deleted_checkpoints
    out: dict[str, Any] = {
        "status": _status(r.deleted_checkpoints, r.exempt, r.error),
        "total_checkpoints": total,
        "deleted_count": r.deleted_checkpoints,
        "remaining_count": total - r.deleted_checkpoints,
        "deleted_writes": r.deleted_writes,
        "deleted_blobs": r.deleted_blobs,
        "bytes_freed": r.bytes_freed,
    }
    if r.error is not None:
        out["message"] = r.error
    if r.expired is not None:
        out["expired"] = r.expired
    if r.warnings:
        out["warnings"] = list(r.warnings)
    if r.decisions is not None:
        out["decisions"] = [d.to_dict() for d in r.decisions]
    return out


def thread_body(thread_id: str, report: PruneReport, *, include_kept: bool) -> dict[str, Any]:
    """`POST /api/cleanup/thread/<id>`: the seed's keys, then what else went and why."""
    total = report.kept_checkpoints + report.deleted_checkpoints
    out: dict[str, Any] = {
        "status": _status(report.deleted_checkpoints, report.threads_exempt > 0, None),
        "thread_id": thread_id,
        "total_checkpoints": total,
        "deleted_count": report.deleted_checkpoints,
        "remaining_count": total - report.deleted_checkpoints,
        "total": total,  # the seed's key when nothing needed deleting
        "deleted_writes": report.deleted_writes,
        "deleted_blobs": report.deleted_blobs,
        "bytes_freed": report.bytes_freed,
        "dry_run": report.dry_run,
        "expired": report.expired.get(thread_id),
        "warnings": report.warnings.get(thread_id),
        "elapsed_seconds": round(report.elapsed_seconds, 6),
    }
    decisions = report.decisions.get(thread_id)
    if include_kept and decisions is not None:
        out["kept_ids"] = [d.checkpoint_id for d in decisions if d.kept]
    if decisions is not None:
        out["decisions"] = [d.to_dict() for d in decisions]
    return out


def sweep_body(report: PruneReport, results: dict[str, Any], truncated: bool) -> dict[str, Any]:
    """`POST /api/cleanup/all` when the sweep finished: the seed's keys, then totals."""
    return {
        "status": "completed" if report.stopped is None else "stopped",
        "processed_threads": report.threads_seen,
        "total_deleted": report.deleted_checkpoints,
        "results": results,
        "results_truncated": truncated,
        "deleted_writes": report.deleted_writes,
        "deleted_blobs": report.deleted_blobs,
        "bytes_freed": report.bytes_freed,
        "threads_pruned": report.threads_pruned,
        "threads_exempt": report.threads_exempt,
        "deleted_threads": report.deleted_threads,
        "failed_threads": len(report.errors),
        "errors": dict(list(report.errors.items())[:100]),
        "stopped": report.stopped,
        "dry_run": report.dry_run,
        "elapsed_seconds": round(report.elapsed_seconds, 6),
    }


def page_body(rows: Sequence[tuple[str, ThreadStats]], next_after: str | None) -> dict[str, Any]:
    """`GET /api/cleanup/stats?limit=N&after=ID`: one page of threads in id order."""
    return {
        "thread_stats": {tid: ts.checkpoints for tid, ts in rows},
        "thread_bytes": {tid: ts.bytes for tid, ts in rows},
        "page_threads": len(rows),
        "page_checkpoints": sum(ts.checkpoints for _tid, ts in rows),
        "next_after": next_after,
    }


class StatsFold:
    """Totals of a whole store folded from streamed rows, and at most `cap` threads listed:
    the `top` largest, or the first seen. Memory stays flat in the store's size."""

    def __init__(self, *, top: int | None, cap: int) -> None:
        self.top = top
        self.cap = cap
        self.threads = self.checkpoints = self.writes = self.bytes = 0
        self._listed: dict[str, ThreadStats] = {}
        self._heap: list[tuple[int, str, ThreadStats]] = []

    def add(self, thread_id: str, ts: ThreadStats) -> None:
        self.threads += 1
        self.checkpoints += ts.checkpoints
        self.writes += ts.writes
        self.bytes += ts.bytes
        if self.top is None:
            if len(self._listed) < self.cap:
                self._listed[thread_id] = ts
            return
        item = (ts.checkpoints, thread_id, ts)
        if len(self._heap) < self.top:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def body(self) -> dict[str, Any]:
        """`GET /api/cleanup/stats`: the seed's keys (`thread_stats`: id -> count)."""
        if self.top is None:
            listed = list(self._listed.items())
        else:
            ranked = sorted(self._heap, key=lambda i: i[:2], reverse=True)
            listed = [(tid, ts) for _n, tid, ts in ranked]
        return {
            "total_threads": self.threads,
            "total_checkpoints": self.checkpoints,
            "total_writes": self.writes,
            "total_bytes": self.bytes,
            "thread_stats": {tid: ts.checkpoints for tid, ts in listed},
            "thread_bytes": {tid: ts.bytes for tid, ts in listed},
            "truncated": len(listed) < self.threads,
        }
