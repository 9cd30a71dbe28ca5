"""Task results as plain data: shard reports, and the fleet report they fold into."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from langgraph_retention.report import PruneReport

__all__ = ["fleet_result", "merge", "report_from_dict", "without"]

#: The totals a fold adds up.
_COUNTS = (
    "deleted_checkpoints",
    "deleted_writes",
    "deleted_blobs",
    "kept_checkpoints",
    "bytes_freed",
    "threads_seen",
    "threads_pruned",
)
_FIELDS = frozenset(f.name for f in fields(PruneReport))


def report_from_dict(data: Mapping[str, Any]) -> PruneReport:
    """The `PruneReport` of a shard or fleet result (keys only a fleet has are left out),
    e.g. for its `summary()` line."""
    values = {k: v for k, v in data.items() if k in _FIELDS}
    values["errors"] = dict(values.get("errors") or {})
    return PruneReport(**values)


def merge(into: PruneReport, data: Mapping[str, Any]) -> None:
    """Add a shard's result (a `PruneReport.to_dict()`) to `into`."""
    for key in _COUNTS:
        setattr(into, key, getattr(into, key) + int(data.get(key) or 0))
    into.errors.update(data.get("errors") or {})
    if data.get("stopped") and not into.stopped:
        into.stopped = str(data["stopped"])


def without(report: PruneReport, thread_ids: list[str]) -> PruneReport:
    """A copy of `report` that forgets the failures of `thread_ids` (they are tried again)."""
    out = report_from_dict(report.to_dict())
    for tid in thread_ids:
        if out.errors.pop(tid, None) is not None:
            out.threads_seen -= 1
    return out


def fleet_result(
    report: PruneReport,
    *,
    shards: int,
    failed_shards: Mapping[str, str] | None = None,
    skipped: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fleet sweep's result: `PruneReport.to_dict()` plus `shards` (how many were
    sent), `failed_shards` (task id -> error, for shards whose task itself failed: their
    threads are unknown to the fold), `skipped` (the lock holder when another sweep held
    the store's lock, else None) and `ok` (nothing failed, skipped or stopped)."""
    out = report.to_dict()
    failed = dict(failed_shards or {})
    out.update(
        shards=shards,
        failed_shards=failed,
        skipped=dict(skipped) if skipped is not None else None,
        ok=report.ok and not failed and skipped is None and not report.stopped,
    )
    return out
