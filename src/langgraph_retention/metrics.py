"""One Prometheus registry for every shell.

The engine records what every prune and sweep of this process deleted; the scheduler,
the HTTP API, the `schedule` daemon and Celery workers all record into `REGISTRY`, which
`langgraph-retention schedule --metrics-port` and the API's `/metrics` expose. Live
`BackgroundPruner`s appear as gauges (their counters summed; lag: the oldest wait).
Dry runs record nothing: they delete nothing.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from langgraph_retention.report import PruneReport, ThreadResult

if TYPE_CHECKING:
    from langgraph_retention.worker import BackgroundPruner

__all__ = [
    "CONTENT_TYPE",
    "REGISTRY",
    "Outcome",
    "exposition",
    "outcome_of",
    "record_results",
    "record_skipped",
    "record_sweep",
    "serve",
    "watch_pruner",
]

REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: ok: every thread pruned; failed: a thread or the store failed; stopped: a stop was
#: requested or the sweep lock was lost; skipped: another sweeper held the lock.
Outcome = Literal["ok", "failed", "stopped", "skipped"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "failed", "stopped", "skipped")

SWEEPS = Counter(
    "langgraph_retention_sweeps",
    "Sweeps run by this process, by outcome (ok, failed, stopped, skipped)",
    ["outcome"],
    registry=REGISTRY,
)
DELETED_CHECKPOINTS = Counter(
    "langgraph_retention_deleted_checkpoints", "Checkpoints deleted", registry=REGISTRY
)
DELETED_WRITES = Counter(
    "langgraph_retention_deleted_writes", "Pending writes deleted", registry=REGISTRY
)
DELETED_BLOBS = Counter(
    "langgraph_retention_deleted_blobs",
    "Channel value blobs deleted (savers that store them apart)",
    registry=REGISTRY,
)
FREED_BYTES = Counter(
    "langgraph_retention_freed_bytes",
    "Bytes freed, as the backends measure them",
    registry=REGISTRY,
)
FAILED_THREADS = Counter(
    "langgraph_retention_failed_threads",
    "Threads a prune or sweep could not prune (refused by the policy or a storage error)",
    registry=REGISTRY,
)
SWEEP_SECONDS = Histogram(
    "langgraph_retention_sweep_duration_seconds",
    "Wall time of sweeps that ran (any outcome but skipped)",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf")),
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    "langgraph_retention_last_success_timestamp_seconds",
    "Unix time at which the last sweep with no failed thread finished",
    registry=REGISTRY,
)
for _outcome in OUTCOMES:
    SWEEPS.labels(_outcome)


def record_results(results: Iterable[ThreadResult]) -> None:
    """Count what a real (not dry) prune deleted and which threads failed."""
    checkpoints = writes = blobs = freed = failed = 0
    for r in results:
        if r.error is not None:
            failed += 1
            continue
        checkpoints += r.deleted_checkpoints
        writes += r.deleted_writes
        blobs += r.deleted_blobs
        freed += r.bytes_freed
    for counter, value in (
        (DELETED_CHECKPOINTS, checkpoints),
        (DELETED_WRITES, writes),
        (DELETED_BLOBS, blobs),
        (FREED_BYTES, freed),
        (FAILED_THREADS, failed),
    ):
        if value:
            counter.inc(value)


def outcome_of(report: PruneReport) -> Outcome:
    """How a finished sweep ended, for the `outcome` label."""
    if report.stopped:
        return "stopped"
    return "ok" if report.ok else "failed"


def record_sweep(report: PruneReport, outcome: Outcome | None = None) -> None:
    """Count a sweep that ran, its duration, and the time of the last clean one."""
    outcome = outcome or outcome_of(report)
    SWEEPS.labels(outcome).inc()
    SWEEP_SECONDS.observe(report.elapsed_seconds)
    if outcome == "ok":
        LAST_SUCCESS.set(time.time())


def record_skipped() -> None:
    """Count a sweep that did not start because another sweeper held the lock."""
    SWEEPS.labels("skipped").inc()


class _PrunerGauges(Collector):
    """Gauges over every live `BackgroundPruner` of the process."""

    def __init__(self) -> None:
        self._pruners: weakref.WeakSet[BackgroundPruner] = weakref.WeakSet()

    def watch(self, pruner: BackgroundPruner) -> None:
        self._pruners.add(pruner)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from langgraph_retention.worker import PrunerCounters

        snapshots = [p.counters for p in list(self._pruners)]
        yield GaugeMetricFamily(
            "langgraph_retention_pruners", "Live BackgroundPruners", value=len(snapshots)
        )
        for f in fields(PrunerCounters):
            values: list[Any] = [getattr(s, f.name) for s in snapshots]
            if f.name == "lag":
                yield GaugeMetricFamily(
                    "langgraph_retention_pruner_lag_seconds",
                    "Age of the oldest request waiting in any BackgroundPruner",
                    value=max(values, default=0.0),
                )
                continue
            yield GaugeMetricFamily(
                f"langgraph_retention_pruner_{f.name}",
                f"BackgroundPruner {f.name.replace('_', ' ')}, summed over live pruners",
                value=sum(values),
            )


_PRUNERS = _PrunerGauges()
REGISTRY.register(_PRUNERS)


def watch_pruner(pruner: BackgroundPruner) -> None:
    """Expose a pruner's counters (held weakly: a discarded pruner disappears)."""
    _PRUNERS.watch(pruner)


def exposition() -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE


def serve(port: int, host: str = "127.0.0.1") -> Any:
    """Serve `/metrics` on a background thread; returns the server (`.shutdown()` stops it)."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server
