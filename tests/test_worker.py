"""`BackgroundPruner` on real savers: queueing, de-duplication, drops, retries, draining.

Transient failures are real: another SQLite connection holds the database with
`BEGIN EXCLUSIVE`, so the pruner's write transaction gets "database is locked" until it
lets go. Nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from langgraph_retention import RetentionPolicy, UnsupportedSaverError, stats
from langgraph_retention.backends import resolve_backend
from langgraph_retention.demo import chat
from langgraph_retention.report import PruneReport
from langgraph_retention.worker import BackgroundPruner, PrunerCounters, is_transient

from .graphs import build_agent, build_delta_graph, config, user_turn

KEEP = RetentionPolicy(keep_last=2)
WAIT = 30.0  # generous bound for waits that normally end in milliseconds


def checkpoints(saver: Any, thread_id: str) -> int:
    found = stats(saver, thread_ids=[thread_id]).threads.get(thread_id)
    return found.checkpoints if found else 0


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Path, SqliteSaver]]:
    """A SqliteSaver with three chatty threads, on a connection that gives up on a lock
    after 20 ms (so a held lock is a quick, real `OperationalError`)."""
    path = tmp_path / "store.db"
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=0.02)
    saver = SqliteSaver(conn)
    graph = build_agent(saver)
    for tid in ("a", "b", "c"):
        chat(graph, tid, 2)
    yield path, saver
    conn.close()


@contextmanager
def locked(path: Path) -> Iterator[Callable[[], None]]:
    """Hold the database with BEGIN EXCLUSIVE from another connection; yields `release`."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            conn.execute("COMMIT")
            released = True

    try:
        yield release
    finally:
        release()
        conn.close()


# -- the basics ---------------------------------------------------------------------------


def test_request_queues_and_the_worker_prunes(db: tuple[Path, SqliteSaver]) -> None:
    _path, saver = db
    with BackgroundPruner(saver, KEEP) as pruner:
        assert pruner.request("a") is True
        assert pruner.join(WAIT)

    c = pruner.counters
    assert (c.queued, c.pruned, c.failed, c.waiting) == (1, 1, 0, 0)
    assert c.deleted_checkpoints == 10 - KEEP.keep_last and c.bytes_freed > 0
    assert checkpoints(saver, "a") == KEEP.keep_last
    assert checkpoints(saver, "b") == 10


def test_waiting_threads_are_not_queued_twice(db: tuple[Path, SqliteSaver]) -> None:
    path, saver = db
    pruner = BackgroundPruner(saver, KEEP, backoff=0.01, retries=1000)
    with locked(path) as release:
        pruner.request("a")  # the worker takes it and keeps retrying while locked
        wait_until(lambda: pruner.counters.retried >= 1)
        assert [pruner.request(t) for t in ("b", "c", "b", "b", "c")] == [True] * 5
        c = pruner.counters
        assert (c.queued, c.deduplicated, c.waiting) == (3, 3, 2)
        release()
        assert pruner.close(WAIT)

    assert pruner.counters.pruned == 3
    assert all(checkpoints(saver, t) == KEEP.keep_last for t in "abc")


def test_a_thread_being_pruned_can_be_queued_again(db: tuple[Path, SqliteSaver]) -> None:
    path, saver = db
    pruner = BackgroundPruner(saver, KEEP, backoff=0.01, retries=1000)
    with locked(path) as release:
        pruner.request("a")
        wait_until(lambda: pruner.counters.retried >= 1)
        pruner.request("a")  # new checkpoints may have come since the prune began
        assert (pruner.counters.queued, pruner.counters.deduplicated) == (2, 0)
        release()
    assert pruner.close(WAIT)
    assert pruner.counters.pruned == 2


def test_full_queue_drops_and_counts(
    db: tuple[Path, SqliteSaver], caplog: pytest.LogCaptureFixture
) -> None:
    path, saver = db
    pruner = BackgroundPruner(saver, KEEP, maxsize=2, backoff=0.01, retries=1000)
    with locked(path) as release, caplog.at_level(logging.WARNING, "langgraph_retention"):
        pruner.request("a")
        wait_until(lambda: pruner.counters.retried >= 1)
        accepted = [pruner.request(t) for t in ("b", "c", "wang1:20250729235038043")]
        release()
    assert pruner.close(WAIT)

    assert accepted == [True, True, False]
    assert pruner.counters.dropped == 1 and pruner.counters.pruned == 3
    assert "'wang1:20250729235038043' dropped" in caplog.text and "queue is full" in caplog.text


def test_request_never_blocks_on_a_busy_store(db: tuple[Path, SqliteSaver]) -> None:
    path, saver = db
    pruner = BackgroundPruner(saver, KEEP, maxsize=100, backoff=0.01, retries=1000)
    with locked(path) as release:
        pruner.request("a")
        wait_until(lambda: pruner.counters.retried >= 1)
        for i in range(1000):  # all return while the worker is stuck on the lock
            pruner.request(f"t{i}")
        c = pruner.counters
        release()
    pruner.close(WAIT)
    assert (c.waiting, c.dropped) == (100, 900)


def test_lag_is_the_age_of_the_oldest_waiting_request(db: tuple[Path, SqliteSaver]) -> None:
    path, saver = db
    pruner = BackgroundPruner(saver, KEEP, backoff=0.01, retries=1000)
    with locked(path) as release:
        pruner.request("a")
        wait_until(lambda: pruner.counters.retried >= 1)
        pruner.request("b")
        first = pruner.counters.lag
        wait_until(lambda: pruner.counters.lag > first)
        release()
    assert pruner.close(WAIT)
    assert pruner.counters.lag == 0.0 and first >= 0.0


# -- errors ---------------------------------------------------------------------------


def test_transient_storage_error_is_retried_with_backoff(
    db: tuple[Path, SqliteSaver], caplog: pytest.LogCaptureFixture
) -> None:
    path, saver = db
    pruner = BackgroundPruner(saver, KEEP, retries=10, backoff=0.01, max_backoff=0.04)
    with locked(path) as release, caplog.at_level(logging.WARNING, "langgraph_retention"):
        pruner.request("a")
        wait_until(lambda: pruner.counters.retried >= 4)
        release()
        assert pruner.join(WAIT)

    c = pruner.counters
    assert (c.pruned, c.failed) == (1, 0) and c.retried >= 4
    assert checkpoints(saver, "a") == KEEP.keep_last
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert all("'a'" in m and "database is locked" in m for m in retries)
    # exponential: 0.01, 0.02, 0.04, then capped at max_backoff
    assert [m.rsplit(" in ", 1)[1] for m in retries[:4]] == ["0.01s", "0.02s", "0.04s", "0.04s"]
    pruner.close()


def test_gives_up_after_the_retries_and_logs_the_thread(
    db: tuple[Path, SqliteSaver], caplog: pytest.LogCaptureFixture
) -> None:
    path, saver = db
    pruner = BackgroundPruner(saver, KEEP, retries=2, backoff=0.001)
    with locked(path), caplog.at_level(logging.ERROR, "langgraph_retention"):
        pruner.request("客服 7")
        assert pruner.join(WAIT)

    c = pruner.counters
    assert (c.pruned, c.failed, c.retried) == (0, 1, 2)
    failure = next(r for r in caplog.records if "giving up" in r.getMessage())
    assert "'客服 7'" in failure.getMessage() and failure.exc_info is not None
    assert "after 3 attempt(s)" in failure.getMessage()
    pruner.close()


def test_policy_refusal_is_not_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    saver = InMemorySaver()
    graph = build_delta_graph(saver, snapshot_frequency=50)
    for i in range(3):
        graph.invoke({"items": [f"in{i}"]}, config("d"))
    refuse = RetentionPolicy(keep_last=1, delta_channels="refuse")

    with (
        caplog.at_level(logging.ERROR, "langgraph_retention"),
        BackgroundPruner(saver, refuse, backoff=0.001) as pruner,
    ):
        pruner.request("d")

    assert (pruner.counters.failed, pruner.counters.retried, pruner.counters.pruned) == (1, 0, 0)
    assert "'d' refused" in caplog.text


def test_on_report_errors_are_logged_not_raised(
    db: tuple[Path, SqliteSaver], caplog: pytest.LogCaptureFixture
) -> None:
    _path, saver = db

    def broken(tid: str, report: PruneReport) -> None:
        raise RuntimeError("metrics backend down")

    with (
        caplog.at_level(logging.ERROR, "langgraph_retention"),
        BackgroundPruner(saver, KEEP, on_report=broken) as pruner,
    ):
        pruner.request("a")
        pruner.request("b")

    assert pruner.counters.pruned == 2
    assert "on_report callback failed for thread 'a'" in caplog.text
    assert "metrics backend down" in caplog.text


def test_transient_errors_are_storage_errors() -> None:
    assert is_transient(sqlite3.OperationalError("database is locked"))
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert not is_transient(TypeError("bad call"))
    assert not is_transient(UnsupportedSaverError("no"))
    assert not is_transient(asyncio.CancelledError())


# -- closing -------------------------------------------------------------------------------


def test_close_drains_everything_queued(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "many.db"), check_same_thread=False)
    saver = SqliteSaver(conn)
    graph = build_agent(saver)
    threads = [f"user {i}" for i in range(20)]
    for tid in threads:
        chat(graph, tid, 2)
    pruner = BackgroundPruner(saver, KEEP)

    for tid in threads:
        pruner.request(tid)
    assert pruner.close(timeout=WAIT)

    c = pruner.counters
    assert (c.pruned, c.waiting, c.abandoned) == (20, 0, 0)
    assert not pruner.running
    assert all(checkpoints(saver, tid) == KEEP.keep_last for tid in threads)
    conn.close()


def test_close_timeout_abandons_and_logs_what_is_left(
    db: tuple[Path, SqliteSaver], caplog: pytest.LogCaptureFixture
) -> None:
    path, saver = db
    pruner = BackgroundPruner(saver, KEEP, retries=1000, backoff=0.05, max_backoff=0.05)
    with locked(path), caplog.at_level(logging.ERROR, "langgraph_retention"):
        pruner.request("a")
        wait_until(lambda: pruner.counters.retried >= 1)
        pruner.request("b")
        pruner.request("c")
        assert pruner.close(timeout=0.1) is False
        wait_until(lambda: not pruner.running)

    c = pruner.counters
    assert c.abandoned == 3 and c.pruned == 0 and c.waiting == 0
    assert "'b', 'c'" in caplog.text and "timed out" in caplog.text
    assert "'a'" in caplog.text


def test_requests_after_close_are_dropped(db: tuple[Path, SqliteSaver]) -> None:
    _path, saver = db
    pruner = BackgroundPruner(saver, KEEP)
    assert pruner.close()

    assert pruner.request("a") is False
    assert pruner.counters.dropped == 1 and pruner.closed
    assert pruner.close() is True  # idempotent


# -- async savers: an asyncio task on the saver's loop ------------------------------------


async def test_async_saver_is_pruned_by_a_task_on_its_loop(tmp_path: Path) -> None:
    async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "a.db")) as saver:
        graph = build_agent(saver)
        for i in range(3):
            await graph.ainvoke(user_turn(i), config("t"))
        seen: list[str | None] = []

        def on_report(tid: str, report: PruneReport) -> None:
            task = asyncio.current_task()
            seen.append(task.get_name() if task else None)

        pruner = BackgroundPruner(saver, KEEP, on_report=on_report)
        assert pruner.runner == "asyncio" and not pruner.running

        assert pruner.request("t")  # starts the task lazily: we are on the loop
        assert pruner.running
        assert await pruner.ajoin(WAIT)
        assert await pruner.aclose()

    assert seen == ["langgraph-retention-pruner"]
    assert pruner.counters.pruned == 1 and not pruner.running


async def test_async_request_from_another_thread_reaches_the_loop(async_saver: Any) -> None:
    graph = build_agent(async_saver)
    for i in range(3):
        await graph.ainvoke(user_turn(i), config("t"))
    async with BackgroundPruner(async_saver, KEEP) as pruner:
        # e.g. a sync put on the async saver from a worker thread of the app
        assert await asyncio.to_thread(pruner.request, "t")
        assert await pruner.ajoin(WAIT)

    assert pruner.runner == ("asyncio" if resolve_backend(async_saver).is_async else "thread")
    assert pruner.counters.pruned == 1
    assert len([s async for s in graph.aget_state_history(config("t"))]) == KEEP.keep_last


async def test_async_transient_error_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    conn = await aiosqlite.connect(str(path), timeout=0.02)
    saver = AsyncSqliteSaver(conn)
    graph = build_agent(saver)
    await graph.ainvoke(user_turn(0), config("t"))
    await graph.ainvoke(user_turn(1), config("t"))
    pruner = BackgroundPruner(saver, KEEP, retries=1000, backoff=0.01, max_backoff=0.02)

    with locked(path) as release:
        pruner.request("t")
        while pruner.counters.retried < 2:
            await asyncio.sleep(0.01)
        release()
        assert await pruner.ajoin(WAIT)
    assert await pruner.aclose()
    await conn.close()

    assert (pruner.counters.pruned, pruner.counters.failed) == (1, 0)


async def test_aclose_timeout_cancels_the_task_and_abandons(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    conn = await aiosqlite.connect(str(path), timeout=0.02)
    saver = AsyncSqliteSaver(conn)
    await build_agent(saver).ainvoke(user_turn(0), config("t"))
    pruner = BackgroundPruner(saver, KEEP, retries=1000, backoff=0.05, max_backoff=0.05)

    with locked(path):
        pruner.request("t")
        pruner.request("u")
        while pruner.counters.retried < 1:
            await asyncio.sleep(0.01)
        assert await pruner.aclose(timeout=0.05) is False
    await conn.close()

    assert pruner.counters.abandoned == 2 and not pruner.running


def test_sync_close_of_an_async_pruner_from_another_thread(tmp_path: Path) -> None:
    async def main() -> PrunerCounters:
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "a.db")) as saver:
            graph = build_agent(saver)
            for i in range(3):
                await graph.ainvoke(user_turn(i), config("t"))
            pruner = BackgroundPruner(saver, KEEP)
            pruner.request("t")
            assert await asyncio.to_thread(pruner.close, WAIT)  # drains on the loop
            return pruner.counters

    counters = asyncio.run(main())
    assert counters.pruned == 1 and counters.waiting == 0


async def test_sync_close_on_the_pruners_own_loop_is_refused(tmp_path: Path) -> None:
    async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "a.db")) as saver:
        pruner = BackgroundPruner(saver, KEEP)
        await pruner.astart()
        with pytest.raises(RuntimeError, match="aclose"):
            pruner.close()
        assert await pruner.aclose()


# -- argument checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"maxsize": 0}, ValueError, "maxsize must be at least 1"),
        ({"maxsize": 1.5}, TypeError, "maxsize must be an int"),
        ({"retries": -1}, ValueError, "retries must be at least 0"),
        ({"backoff": -0.1}, ValueError, "backoff must not be negative"),
        ({"backoff": "1s"}, TypeError, "backoff must be a number"),
        ({"backoff": 5, "max_backoff": 1}, ValueError, "max_backoff"),
    ],
)
def test_bad_arguments_are_refused_clearly(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        BackgroundPruner(InMemorySaver(), KEEP, **kwargs)


def test_policy_saver_and_thread_id_types_are_checked() -> None:
    with pytest.raises(TypeError, match="RetentionPolicy"):
        BackgroundPruner(InMemorySaver(), 3)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedSaverError):
        BackgroundPruner(object(), KEEP)
    pruner = BackgroundPruner(InMemorySaver(), KEEP)
    with pytest.raises(TypeError, match="thread_id must be a str"):
        pruner.request(42)  # type: ignore[arg-type]


async def test_async_saver_pruner_has_no_thread_to_start(tmp_path: Path) -> None:
    async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "a.db")) as saver:
        pruner = BackgroundPruner(saver, KEEP)
        with pytest.raises(RuntimeError, match="astart"):
            pruner.start()
        assert await pruner.aclose()


def test_counters_start_at_zero() -> None:
    pruner = BackgroundPruner(InMemorySaver(), KEEP)
    assert pruner.counters == PrunerCounters()
    assert "waiting=0" in repr(pruner)
    assert not threading.current_thread().name.startswith("langgraph-retention")
