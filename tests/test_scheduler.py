"""`Scheduler` on real SQLite stores written by the real agent, driven by a manual clock:
fire times, misfires, coalescing, one run at a time, stops mid-sweep, the lock, reports."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from langgraph_retention import RetentionPolicy, metrics, stats
from langgraph_retention.backends import resolve_backend
from langgraph_retention.clock import ManualClock
from langgraph_retention.demo import build_agent, populate
from langgraph_retention.scheduler import Scheduler

from .graphs import broken_delta_store

THREADS = [("a:1", 3), ("b:2", 3), ("c:3", 3), ("d:4", 3)]  # 15 checkpoints each
KEEP = RetentionPolicy(keep_last=2)
MONDAY_0100 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until `condition()` holds; a timeout is a hang, not a slow machine."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def checkpoint_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(str(path))
    try:
        rows = conn.execute("SELECT thread_id, count(*) FROM checkpoints GROUP BY thread_id")
        return dict(rows.fetchall())
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    conn = sqlite3.connect(str(path), check_same_thread=False)
    populate(build_agent(SqliteSaver(conn)), THREADS)
    conn.close()
    return path


@pytest.fixture
def saver(db: Path) -> Iterator[SqliteSaver]:
    """The app's own saver; a long busy timeout so a held write lock blocks, not fails."""
    conn = sqlite3.connect(str(db), timeout=60, check_same_thread=False)
    try:
        yield SqliteSaver(conn)
    finally:
        conn.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(MONDAY_0100)


@pytest.fixture
def write_lock(db: Path) -> Iterator[sqlite3.Connection]:
    """Another writer's open transaction: the sweep's batches wait until it ends."""
    conn = sqlite3.connect(str(db), check_same_thread=False)
    conn.isolation_level = None
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def daily(saver: Any, clock: ManualClock, **kwargs: Any) -> Scheduler:
    return Scheduler(saver, KEEP, cron="0 2 * * *", timezone="UTC", clock=clock, **kwargs)


def test_next_sweep_is_the_next_cron_time_in_its_time_zone(
    saver: SqliteSaver, clock: ManualClock
) -> None:
    with Scheduler(saver, KEEP, cron="0 2 * * *", timezone="Asia/Shanghai", clock=clock) as s:
        assert s.next_run_time() == datetime(2026, 11, 24, 2, tzinfo=s.timezone)


def test_sweep_runs_at_its_time_and_keeps_n_per_thread(
    saver: SqliteSaver, clock: ManualClock, db: Path
) -> None:
    with daily(saver, clock) as scheduler:
        clock.set(datetime(2026, 11, 23, 2, tzinfo=UTC))
        wait_until(lambda: scheduler.counters.sweeps == 1, "the 02:00 sweep")

        assert checkpoint_counts(db) == {tid: 2 for tid, _ in THREADS}
        assert scheduler.next_run_time() == datetime(2026, 11, 24, 2, tzinfo=UTC)


def test_each_sweep_logs_one_summary_line_with_the_next_run(
    saver: SqliteSaver, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="langgraph_retention.scheduler")
    with daily(saver, clock) as scheduler:
        clock.set(datetime(2026, 11, 23, 2, tzinfo=UTC))
        wait_until(lambda: scheduler.counters.sweeps == 1, "the sweep")

    (line,) = [r.getMessage() for r in caplog.records if "sweep scheduled at" in r.getMessage()]
    assert "4 threads: deleted 52 checkpoints" in line and "0 failed" in line
    assert line.endswith("next at 2026-11-24 02:00:00+00:00")


def test_fire_later_than_the_grace_time_is_missed_not_run(
    saver: SqliteSaver, clock: ManualClock, db: Path
) -> None:
    before = checkpoint_counts(db)
    with daily(saver, clock, misfire_grace=timedelta(minutes=10)) as scheduler:
        clock.set(datetime(2026, 11, 23, 2, 30, tzinfo=UTC))  # the host slept through 02:00
        wait_until(lambda: scheduler.counters.missed == 1, "the missed fire")

        assert scheduler.counters.sweeps == 0 and checkpoint_counts(db) == before
        assert scheduler.next_run_time() == datetime(2026, 11, 24, 2, tzinfo=UTC)


def test_fire_within_the_grace_time_still_runs(saver: SqliteSaver, clock: ManualClock) -> None:
    with daily(saver, clock, misfire_grace=timedelta(minutes=10)) as scheduler:
        clock.set(datetime(2026, 11, 23, 2, 5, tzinfo=UTC))
        wait_until(lambda: scheduler.counters.sweeps == 1, "the late sweep")

        assert scheduler.counters.missed == 0


def test_fires_missed_during_a_pause_coalesce_into_one_sweep(
    saver: SqliteSaver, clock: ManualClock
) -> None:
    scheduler = Scheduler(
        saver, KEEP, every=timedelta(hours=1), clock=clock, misfire_grace=timedelta(hours=1)
    )
    with scheduler:
        clock.advance(timedelta(hours=5, minutes=1))  # five fire times passed at once
        wait_until(lambda: scheduler.counters.sweeps == 1, "the coalesced sweep")
        time.sleep(0.2)  # room for a wrong second run to show

        assert scheduler.counters.sweeps == 1 and scheduler.counters.missed == 0
        assert scheduler.next_run_time() == MONDAY_0100 + timedelta(hours=6)


def test_fire_while_the_previous_sweep_runs_is_skipped(
    saver: SqliteSaver, clock: ManualClock, write_lock: sqlite3.Connection
) -> None:
    with Scheduler(saver, KEEP, every=timedelta(hours=1), clock=clock) as scheduler:
        clock.advance(timedelta(hours=1))
        wait_until(lambda: "sweep" in scheduler.running_jobs, "the first sweep to start")
        clock.advance(timedelta(hours=1))  # the next fire, while the first still waits
        wait_until(lambda: scheduler.counters.overlapped == 1, "the skipped fire")

        write_lock.execute("ROLLBACK")
        wait_until(lambda: scheduler.counters.sweeps == 1, "the first sweep to end")
        assert not scheduler.running_jobs


def test_stop_mid_sweep_commits_the_batch_in_progress_and_nothing_more(
    saver: SqliteSaver, clock: ManualClock, write_lock: sqlite3.Connection, db: Path
) -> None:
    scheduler = daily(saver, clock, batch_size=1)
    scheduler.start()
    clock.set(datetime(2026, 11, 23, 2, tzinfo=UTC))
    wait_until(lambda: "sweep" in scheduler.running_jobs, "the sweep to start")

    scheduler.stop()
    write_lock.execute("ROLLBACK")  # the first batch can now commit
    scheduler.shutdown(wait=True)

    report = scheduler.last_report
    assert report is not None and report.stopped == "stop requested"
    assert report.threads_seen == 1 and report.deleted_checkpoints == 13
    assert checkpoint_counts(db) == {"a:1": 2, "b:2": 15, "c:3": 15, "d:4": 15}


def test_sweep_is_skipped_while_another_sweeper_holds_the_lock(
    saver: SqliteSaver, clock: ManualClock, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="langgraph_retention.scheduler")
    other = resolve_backend(saver).sweep_lock()  # another sweeper's file lock
    assert other.acquire() is None
    try:
        with daily(saver, clock) as scheduler:
            clock.set(datetime(2026, 11, 23, 2, tzinfo=UTC))
            wait_until(lambda: scheduler.counters.skipped_locked == 1, "the skipped sweep")
    finally:
        other.release()

    assert checkpoint_counts(db) == {tid: 15 for tid, _ in THREADS}
    (line,) = [
        r.getMessage()
        for r in caplog.records
        if r.name == "langgraph_retention.scheduler" and "skipped" in r.getMessage()
    ]
    assert "another sweep holds the lock" in line and "pid " in line


def test_run_now_sweeps_at_start(saver: SqliteSaver, clock: ManualClock, db: Path) -> None:
    with daily(saver, clock, run_now=True) as scheduler:
        wait_until(lambda: scheduler.counters.sweeps == 1, "the first sweep")

        assert checkpoint_counts(db) == {tid: 2 for tid, _ in THREADS}
        assert scheduler.next_run_time() == datetime(2026, 11, 23, 2, tzinfo=UTC)


def test_stats_report_runs_on_its_own_schedule(saver: SqliteSaver, clock: ManualClock) -> None:
    with daily(saver, clock, report_cron="0 9 * * 1") as scheduler:  # Mondays 09:00
        assert scheduler.next_run_time("report") == datetime(2026, 11, 23, 9, tzinfo=UTC)
        clock.set(datetime(2026, 11, 23, 9, tzinfo=UTC))
        wait_until(lambda: scheduler.counters.reports == 1, "the report")

        summary = scheduler.last_summary  # the 02:00 sweep was missed by 7 hours: no prune
        assert summary is not None
        assert summary.total_threads == 4 and summary.total_checkpoints == 4 * 15
        assert [tid for tid, _ in summary.largest] == ["d:4", "c:3", "b:2", "a:1"]
        assert scheduler.next_run_time("report") == datetime(2026, 11, 30, 9, tzinfo=UTC)


def test_failed_thread_is_logged_by_id_and_counted(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    conn = broken_delta_store(tmp_path / "delta.db", "broken:delta")
    caplog.set_level(logging.INFO, logger="langgraph_retention")

    with daily(SqliteSaver(conn), clock) as scheduler:
        clock.set(datetime(2026, 11, 23, 2, tzinfo=UTC))
        wait_until(lambda: scheduler.counters.sweeps == 1, "the sweep")
    conn.close()

    assert scheduler.counters.failed_threads == 1
    (line,) = [r for r in caplog.records if "sweep scheduled at" in r.getMessage()]
    assert line.levelno == logging.WARNING and "1 failed ('broken:delta')" in line.getMessage()


def test_store_that_cannot_be_opened_is_logged_and_counted_and_retried_next_time(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    failed_before = metrics.REGISTRY.get_sample_value(
        "langgraph_retention_sweeps_total", {"outcome": "failed"}
    )
    scheduler = Scheduler.for_url(
        "postgresql://postgres@127.0.0.1:1/none", KEEP, cron="0 2 * * *", timezone="UTC",
        clock=clock,
    )  # fmt: skip
    with scheduler:
        clock.set(datetime(2026, 11, 23, 2, tzinfo=UTC))
        wait_until(lambda: scheduler.counters.failed == 1, "the failed sweep")

        assert scheduler.next_run_time() == datetime(2026, 11, 24, 2, tzinfo=UTC)
    assert any("cannot open the store" in r.getMessage() for r in caplog.records)
    assert (
        metrics.REGISTRY.get_sample_value("langgraph_retention_sweeps_total", {"outcome": "failed"})
        == (failed_before or 0) + 1
    )


def test_sweeps_are_counted_in_the_metrics(saver: SqliteSaver, clock: ManualClock) -> None:
    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0

    ok_before = sample("langgraph_retention_sweeps_total", {"outcome": "ok"})
    deleted_before = sample("langgraph_retention_deleted_checkpoints_total")
    with daily(saver, clock) as scheduler:
        clock.set(datetime(2026, 11, 23, 2, tzinfo=UTC))
        wait_until(lambda: scheduler.counters.sweeps == 1, "the sweep")

    assert sample("langgraph_retention_sweeps_total", {"outcome": "ok"}) == ok_before + 1
    assert sample("langgraph_retention_deleted_checkpoints_total") == deleted_before + 52
    assert sample("langgraph_retention_last_success_timestamp_seconds") > 0


async def test_in_process_scheduler_sweeps_an_async_saver_on_its_event_loop(
    db: Path, clock: ManualClock
) -> None:
    async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:
        scheduler = daily(saver, clock)
        scheduler.start()
        clock.set(datetime(2026, 11, 23, 2, tzinfo=UTC))
        while scheduler.counters.sweeps < 1:  # the sweep needs this loop: keep it turning
            await asyncio.sleep(0.01)
        await scheduler.aclose()

        assert (await asyncio.to_thread(stats, saver)).total_checkpoints == 4 * 2
