"""Task results as plain data: shard reports, and the fleet report they fold into."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from langgraph_retention.report import PruneReport

__all__ = ["fleet_result", "merge", "report_from_dict", "without"]

_DEFAULTS = {f.name: f for f in fields(PruneReport)}
#: The totals a fold adds up, and the per-thread maps it joins (thread id -> text).
_COUNTS = tuple(
    name
    for name, f in _DEFAULTS.items()
    if type(f.default) is int  # not bools
)
_MAPS = ("errors", "expired", "warnings")
#: Kept out of task results: explanations are for `prune --explain`, not for fleets.
_LEFT_OUT = frozenset({"decisions"})
_FIELDS = frozenset(_DEFAULTS) - _LEFT_OUT


def report_from_dict(data: Mapping[str, Any]) -> PruneReport:
    """The `PruneReport` of a shard or fleet result (keys only a fleet has are left out),
    e.g. for its `summary()` line."""
    values = {k: v for k, v in data.items() if k in _FIELDS}
    for key in _MAPS:
        values[key] = dict(values.get(key) or {})
    return PruneReport(**values)


def merge(into: PruneReport, data: Mapping[str, Any]) -> None:
    """Add a shard's result (a `PruneReport.to_dict()`) to `into`."""
    for key in _COUNTS:
        setattr(into, key, getattr(into, key) + int(data.get(key) or 0))
    for key in _MAPS:
        getattr(into, key).update(data.get(key) or {})
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
    for key in _LEFT_OUT:
        out.pop(key, None)
    failed = dict(failed_shards or {})
    out.update(
        shards=shards,
        failed_shards=failed,
        skipped=dict(skipped) if skipped is not None else None,
        ok=report.ok and not failed and skipped is None and not report.stopped,
    )
    return out
