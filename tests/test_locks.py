"""One sweeper at a time: each backend's sweep lock against a second, real process."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from langgraph.checkpoint.memory import InMemorySaver

from langgraph_retention import RetentionPolicy, asweep, sweep
from langgraph_retention.backends import resolve_backend
from langgraph_retention.backends.redis.lock import RedisSweepLock
from langgraph_retention.demo import build_agent, populate
from langgraph_retention.errors import SweepLockHeld
from langgraph_retention.urls import open_store

from .graphs import config, user_turn
from .stores import KINDS, checkpoint_counts, cli, lock_held_elsewhere, populated_url

THREADS = [("t:1", 2), ("t:2", 2), ("t:3", 2)]  # 10 checkpoints each
KEEP = RetentionPolicy(keep_last=1)


@pytest.fixture(params=KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return populated_url(request.param, request, tmp_path, THREADS)


def test_prune_all_exits_3_naming_the_process_that_holds_the_lock(url: str) -> None:
    with lock_held_elsewhere(url) as holder:
        proc = cli("prune", "--url", url, "--keep-last", "1", "--all")

        assert proc.returncode == 3, proc.stderr
        assert f"pid {holder.pid}" in proc.stderr and "another sweep holds the lock" in proc.stderr
        assert checkpoint_counts(url) == {tid: 10 for tid, _ in THREADS}


def test_sweep_raises_lock_held_with_the_holder(url: str) -> None:
    with lock_held_elsewhere(url) as holder, open_store(url) as saver:
        with pytest.raises(SweepLockHeld) as raised:
            sweep(saver, KEEP, exclusive=True)

        assert raised.value.holder.pid == holder.pid and raised.value.holder.host


def test_lock_is_free_once_the_holder_releases_it(url: str) -> None:
    with lock_held_elsewhere(url):
        pass

    proc = cli("prune", "--url", url, "--keep-last", "1", "--all")

    assert proc.returncode == 0, proc.stderr
    assert checkpoint_counts(url) == {tid: 1 for tid, _ in THREADS}


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_lock_of_a_killed_holder_is_free_at_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = populated_url(kind, request, tmp_path, THREADS)
    with lock_held_elsewhere(url) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)

    proc = cli("prune", "--url", url, "--keep-last", "1", "--all")

    assert proc.returncode == 0, proc.stderr


def test_dry_run_needs_no_lock(url: str) -> None:
    with lock_held_elsewhere(url):
        proc = cli("prune", "--url", url, "--keep-last", "1", "--all", "--dry-run")

    assert proc.returncode == 0, proc.stderr
    assert "would delete 27 checkpoints" in proc.stdout


def test_postgres_sweep_stops_after_its_batch_when_the_lock_connection_dies(
    postgres_saver: Any, postgres_url: str
) -> None:
    populate(build_agent(postgres_saver), THREADS)
    batches: list[int] = []

    def kill_lock_connection() -> bool:  # asked before each batch, after the lock's check
        batches.append(1)
        if len(batches) == 1:
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'langgraph-retention sweep%'"
                )
        return False

    report = sweep(
        postgres_saver,
        KEEP,
        batch_size=1,
        exclusive=True,
        stop=kill_lock_connection,
    )

    # A store this small is swept batch by batch: the first batch committed, no other ran.
    assert report.stopped == "sweep lock lost" and report.threads_seen == 1
    assert report.threads_pruned == 1


def test_redis_lock_is_renewed_past_its_ttl(redis_saver: Any, redis_url: str) -> None:
    lock = RedisSweepLock(redis_saver._redis, "lgr-test-lock", ttl=1.0)
    assert lock.acquire() is None
    try:
        time.sleep(2.5)  # more than twice the ttl: only renewals keep it

        assert lock.held()
        assert redis.Redis.from_url(redis_url).pttl("lgr-test-lock") > 0
    finally:
        lock.release()
    assert not redis.Redis.from_url(redis_url).exists("lgr-test-lock")


def test_redis_lock_is_lost_when_another_holder_takes_the_key(
    redis_saver: Any, redis_url: str
) -> None:
    other = redis.Redis.from_url(redis_url)
    lock = RedisSweepLock(redis_saver._redis, "lgr-test-lock", ttl=1.0)
    assert lock.acquire() is None
    other.set("lgr-test-lock", '{"host": "elsewhere", "pid": 1}')  # its key expired, say

    deadline = time.monotonic() + 10
    while lock.held() and time.monotonic() < deadline:
        time.sleep(0.05)
    lock.release()

    assert not lock.held()
    assert other.get("lgr-test-lock") == b'{"host": "elsewhere", "pid": 1}'  # not ours to delete


def test_redis_lock_of_a_vanished_holder_expires_after_its_ttl(
    redis_saver: Any, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("lgr-test-lock", '{"host": "gone", "pid": 99999}', px=1000)  # no renewer
    lock = RedisSweepLock(redis_saver._redis, "lgr-test-lock", ttl=1.0)

    first = lock.acquire()
    time.sleep(1.2)
    second = lock.acquire()
    lock.release()

    assert first is not None and first.host == "gone" and first.pid == 99999
    assert second is None


def test_sqlite_lock_is_lost_when_its_file_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    sqlite3.connect(str(path)).close()
    from langgraph_retention.backends.sqlite.lock import FileSweepLock

    lock = FileSweepLock(path)
    assert lock.acquire() is None
    lock.path.unlink()

    assert not lock.held()
    lock.release()


def test_in_memory_store_sweeps_exclude_each_other_within_the_process() -> None:
    saver = InMemorySaver()
    populate(build_agent(saver), THREADS)
    first = resolve_backend(saver).sweep_lock()
    assert first.acquire() is None
    outcome: list[BaseException] = []

    def second_sweep() -> None:
        try:
            sweep(saver, KEEP, exclusive=True)
        except SweepLockHeld as exc:
            outcome.append(exc)

    worker = threading.Thread(target=second_sweep)
    worker.start()
    worker.join()
    first.release()

    assert len(outcome) == 1 and "a sweep in this process" in str(outcome[0])
    assert sweep(saver, KEEP, exclusive=True).deleted_checkpoints == 27


async def test_async_sweep_takes_the_lock_too(async_saver: Any) -> None:
    graph = build_agent(async_saver)
    for tid, turns in THREADS:
        for i in range(turns):
            await graph.ainvoke(user_turn(i), config(tid))
    backend = resolve_backend(async_saver)
    lock = await backend.asweep_lock() if backend.is_async else backend.sweep_lock()
    assert lock.acquire() is None
    try:
        with pytest.raises(SweepLockHeld):
            await asweep(async_saver, KEEP, exclusive=True)
    finally:
        lock.release()

    report = await asweep(async_saver, KEEP, exclusive=True)

    assert report.ok and report.deleted_checkpoints == 27
