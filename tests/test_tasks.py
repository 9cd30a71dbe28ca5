"""Celery tasks for fleets, run by a real `celery worker` (prefork, 2 processes) with the
test Redis as broker and result backend, on stores the real agent wrote."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import Celery
from celery.beat import Scheduler
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver

from langgraph_retention import RetentionPolicy, stats, sweep
from langgraph_retention.config import policy_to_mapping
from langgraph_retention.demo import build_agent, populate
from langgraph_retention.errors import UsageError
from langgraph_retention.report import PruneReport
from langgraph_retention.rules import EXEMPT, ThreadRules
from langgraph_retention.tasks import (
    RetentionTasks,
    plain_policy,
    register_tasks,
    report_from_dict,
)
from langgraph_retention.tasks._reports import fleet_result

from .celery_app import Worker, broker_url, celery_worker
from .graphs import build_delta_graph, config
from .stores import lock_held_elsewhere

#: Seconds to wait for a task's result (a worker on a busy 2-core machine).
RESULT_TIMEOUT = 120
START_TIMEOUT = 120
THREADS = [("a:1", 4), ("b 2", 3), ("客服/3", 2)]  # 20, 15 and 10 checkpoints
TOTALS = (
    "deleted_checkpoints",
    "deleted_writes",
    "deleted_blobs",
    "kept_checkpoints",
    "bytes_freed",
    "threads_seen",
    "threads_pruned",
)


@dataclass
class Store:
    """A store the test writes through `saver` and the worker prunes through `tasks`."""

    saver: Any
    tasks: RetentionTasks
    url: str


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the module (the worker keeps it open), set up as an app does."""
    path = tmp_path_factory.mktemp("celery") / "store.db"
    conn = sqlite3.connect(str(path))
    SqliteSaver(conn).setup()
    conn.close()
    return path


@pytest.fixture(scope="module")
def worker(
    redis_url: str, postgres_url: str, sqlite_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    stores = {
        "postgres": postgres_url,
        "sqlite": f"sqlite:///{sqlite_file}",
        "redis": redis_url,
        "unreachable": f"postgresql://postgres@127.0.0.1:{_closed_port()}/nowhere",
    }
    log = tmp_path_factory.mktemp("celery-log") / "worker.log"
    with celery_worker(broker_url(redis_url), stores, log) as running:
        yield running


@pytest.fixture
def sqlite_saver(sqlite_file: Path) -> Iterator[SqliteSaver]:
    """The module's SQLite store, emptied (the worker's connection stays valid)."""
    conn = sqlite3.connect(str(sqlite_file), check_same_thread=False)
    with conn:
        conn.execute("DELETE FROM checkpoints")
        conn.execute("DELETE FROM writes")
    try:
        yield SqliteSaver(conn)
    finally:
        conn.close()


@pytest.fixture(params=["postgres", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, worker: Worker) -> Store:
    kind = request.param
    saver = request.getfixturevalue(f"{kind}_saver")  # empty and set up
    url = worker.tasks[kind].store.url
    assert url is not None
    return Store(saver, worker.tasks[kind], url)


@pytest.fixture
def pg(worker: Worker, postgres_saver: Any, postgres_url: str) -> Store:
    return Store(postgres_saver, worker.tasks["postgres"], postgres_url)


def counts(saver: Any) -> dict[str, int]:
    return {tid: ts.checkpoints for tid, ts in stats(saver).threads.items()}


def many_threads(n: int) -> list[tuple[str, int]]:
    return [(f"user{i % 3}:{i:03d}", 2) for i in range(n)]  # 10 checkpoints each


# -- shards --------------------------------------------------------------------------------
def test_shard_keeps_the_newest_n_checkpoints_per_thread(store: Store) -> None:
    populate(build_agent(store.saver), THREADS)

    result = store.tasks.run_shard([t for t, _ in THREADS], {"keep_last": 3})
    report = result.get(timeout=RESULT_TIMEOUT)

    assert report["errors"] == {}
    assert counts(store.saver) == {tid: 3 for tid, _ in THREADS}


def test_shard_on_an_unreachable_store_reports_every_thread_after_its_retries(
    worker: Worker,
) -> None:
    tasks = worker.tasks["unreachable"]

    report = tasks.run_shard(["x:1", "y:2"], {"keep_last": 1}).get(timeout=RESULT_TIMEOUT)

    assert sorted(report["errors"]) == ["x:1", "y:2"]
    assert "StoreUnavailableError" in report["errors"]["x:1"]
    assert "retry 2 of 2" in worker.log_text()


def kill_worker_connections(pg: Store) -> None:
    """End every other session on the test database, as a server restart or an idle
    connection reaper would (the test's own saver keeps its connection)."""
    with psycopg.connect(pg.url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid NOT IN (pg_backend_pid(), %s)",
            (pg.saver.conn.info.backend_pid,),
        )


def test_shard_whose_connection_broke_reconnects_and_prunes(pg: Store) -> None:
    populate(build_agent(pg.saver), THREADS)
    ids = [t for t, _ in THREADS]
    pg.tasks.run_sweep({"keep_last": 5}, shard_size=1).get(RESULT_TIMEOUT)  # workers connect
    kill_worker_connections(pg)

    report = pg.tasks.run_shard(ids, {"keep_last": 3}).get(timeout=RESULT_TIMEOUT)

    assert report["errors"] == {}
    assert counts(pg.saver) == {tid: 3 for tid in ids}


# -- fleet sweeps --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_fleet_sweep_totals_equal_an_in_process_dry_run(
    kind: str, worker: Worker, request: pytest.FixtureRequest
) -> None:
    saver = request.getfixturevalue(f"{kind}_saver")
    populate(build_agent(saver), many_threads(12))
    expected = sweep(saver, RetentionPolicy(keep_last=2), dry_run=True)

    report = worker.tasks[kind].run_sweep({"keep_last": 2}, shard_size=5).get(RESULT_TIMEOUT)

    assert report["shards"] == 3
    assert report["ok"], report
    assert {k: report[k] for k in TOTALS} == {k: getattr(expected, k) for k in TOTALS}
    assert set(counts(saver).values()) == {2}


def test_fleet_sweep_whose_connection_broke_reconnects_and_prunes(pg: Store) -> None:
    populate(build_agent(pg.saver), THREADS)
    pg.tasks.run_sweep({"keep_last": 5}, shard_size=1).get(RESULT_TIMEOUT)  # workers connect
    kill_worker_connections(pg)

    report = pg.tasks.run_sweep({"keep_last": 3}, shard_size=1).get(timeout=RESULT_TIMEOUT)

    assert report["ok"], report
    assert counts(pg.saver) == {tid: 3 for tid, _ in THREADS}


def test_fleet_sweep_applies_per_thread_rules_sent_as_data(pg: Store) -> None:
    populate(build_agent(pg.saver), [*THREADS, ("vip:7", 3)])
    rules = ThreadRules(
        RetentionPolicy(keep_last=2),
        [("vip:*", EXEMPT), ("b *", RetentionPolicy(keep_last=4))],
    )

    report = pg.tasks.run_sweep(rules, shard_size=2).get(timeout=RESULT_TIMEOUT)

    assert (report["threads_exempt"], report["ok"]) == (1, True)
    assert counts(pg.saver) == {"a:1": 2, "b 2": 4, "客服/3": 2, "vip:7": 15}


def test_fleet_dry_run_deletes_nothing(pg: Store) -> None:
    populate(build_agent(pg.saver), THREADS)
    before = counts(pg.saver)

    report = pg.tasks.run_sweep({"keep_last": 1}, dry_run=True).get(timeout=RESULT_TIMEOUT)

    assert report["deleted_checkpoints"] == sum(n - 1 for n in before.values())
    assert counts(pg.saver) == before


def test_fleet_sweep_reports_a_refused_thread_and_prunes_the_others(pg: Store) -> None:
    populate(build_agent(pg.saver), THREADS)
    delta = build_delta_graph(pg.saver)
    for i in range(3):
        delta.invoke({"items": [f"in{i}"]}, config("delta"))
    before = counts(pg.saver)["delta"]
    policy = {"keep_last": 2, "delta_channels": "refuse"}

    report = pg.tasks.run_sweep(policy, shard_size=1).get(timeout=RESULT_TIMEOUT)

    assert list(report["errors"]) == ["delta"]
    assert "DeltaChannel" in report["errors"]["delta"]
    assert counts(pg.saver) == {**{tid: 2 for tid, _ in THREADS}, "delta": before}


def test_fleet_sweep_is_skipped_while_another_process_holds_the_lock(pg: Store) -> None:
    populate(build_agent(pg.saver), THREADS)
    before = counts(pg.saver)

    with lock_held_elsewhere(pg.url) as holder:
        report = pg.tasks.run_sweep({"keep_last": 1}).get(timeout=RESULT_TIMEOUT)

    assert report["skipped"]["pid"] == holder.pid
    assert (report["shards"], report["ok"]) == (0, False)
    assert counts(pg.saver) == before


def test_a_failed_shard_task_shows_in_the_fleet_report(worker: Worker) -> None:
    tasks = worker.tasks["postgres"]
    bad = tasks.prune_shard.delay(["x"], {"keep_lst": 1})  # fails in the worker
    partial = fleet_result(PruneReport(), shards=1)

    folded = tasks.fold.delay([bad.id], partial, time.time(), time.time() + RESULT_TIMEOUT)
    report = folded.get(timeout=RESULT_TIMEOUT)

    assert "UsageError" in report["failed_shards"][bad.id]
    assert report["ok"] is False


# -- bad input -----------------------------------------------------------------------------
def test_a_bad_policy_is_rejected_by_the_worker(worker: Worker) -> None:
    sent = worker.tasks["postgres"].sweep.delay({"keep_lst": 3})

    with pytest.raises(UsageError, match="unknown setting 'keep_lst'"):
        sent.get(timeout=RESULT_TIMEOUT)


def test_a_bad_policy_is_rejected_before_anything_is_sent() -> None:
    tasks = register_tasks(Celery("t", broker="memory://"), url="postgresql://h/db")

    with pytest.raises(UsageError, match="keep_last must be at least 1"):
        tasks.run_sweep({"keep_last": 0})


def test_rules_travel_as_the_settings_files_data() -> None:
    rules = ThreadRules(RetentionPolicy(keep_last=2), [("vip:*", EXEMPT)])

    data = json.loads(json.dumps(plain_policy(rules)))

    assert data["rules"] == [{"match": "vip:*", "exempt": True}]
    assert plain_policy(data) == data


def test_a_resolver_function_cannot_travel_to_workers() -> None:
    with pytest.raises(UsageError, match="cannot travel to workers"):
        plain_policy(lambda _tid: RetentionPolicy())  # type: ignore[arg-type]


def test_a_fleet_sweep_needs_a_shared_result_backend() -> None:
    tasks = register_tasks(Celery("t", broker="memory://"), saver_factory=InMemorySaver)

    with pytest.raises(UsageError, match="shared result backend"):
        tasks.sweep.apply(args=({"keep_last": 1},)).get()


def test_register_tasks_needs_exactly_one_store() -> None:
    with pytest.raises(UsageError, match="exactly one of url= or saver_factory="):
        register_tasks(Celery("t", broker="memory://"))


# -- workers and their store ---------------------------------------------------------------
def test_a_saver_factory_is_opened_once_per_process() -> None:
    saver = InMemorySaver()
    populate(build_agent(saver), THREADS)
    made: list[InMemorySaver] = []

    def factory() -> InMemorySaver:
        made.append(saver)
        return saver

    tasks = register_tasks(Celery("t", broker="memory://"), saver_factory=factory)
    ids = [t for t, _ in THREADS]

    first = tasks.prune_shard.apply(args=(ids, {"keep_last": 2})).get()
    second = tasks.prune_shard.apply(args=(ids, {"keep_last": 1})).get()

    assert len(made) == 1
    assert (first["deleted_checkpoints"], second["deleted_checkpoints"]) == (39, 3)


@pytest.mark.slow
def test_a_worker_closes_its_store_at_shutdown(
    redis_url: str, postgres_url: str, postgres_saver: Any, tmp_path: Path
) -> None:
    populate(build_agent(postgres_saver), THREADS)
    log = tmp_path / "worker.log"
    with celery_worker(broker_url(redis_url, 2), {"postgres": postgres_url}, log) as w:
        w.tasks["postgres"].run_shard(["a:1"], {"keep_last": 1}).get(timeout=RESULT_TIMEOUT)

    assert w.proc.returncode == 0
    assert "closed the store" in w.log_text(), w.log_text()[-4000:]


# -- beat ----------------------------------------------------------------------------------
@pytest.fixture
def beat_app() -> Iterator[tuple[Celery, RetentionTasks]]:
    app = Celery("t", broker="memory://")
    app.conf.timezone = "UTC"
    yield app, register_tasks(app, url="postgresql://h/db")
    app.close()


def test_beat_entry_from_cron_runs_the_sweep_daily_at_0200(
    beat_app: tuple[Celery, RetentionTasks],
) -> None:
    app, tasks = beat_app
    app.conf.beat_schedule = {"nightly": tasks.beat_entry({"keep_last": 5}, cron="0 2 * * *")}

    entry = Scheduler(app).schedule["nightly"]  # beat's own view of app.conf.beat_schedule
    last_run = datetime(2025, 7, 29, 2, 0, tzinfo=UTC)
    entry.schedule.nowfun = lambda: datetime(2025, 7, 30, 1, 0, tzinfo=UTC)
    before = entry.schedule.is_due(last_run)
    entry.schedule.nowfun = lambda: datetime(2025, 7, 30, 2, 0, 1, tzinfo=UTC)
    at_two = entry.schedule.is_due(last_run)

    assert entry.task == tasks.sweep.name
    assert entry.args == (policy_to_mapping(RetentionPolicy(keep_last=5)),)
    assert (before.is_due, before.next) == (False, 3600)
    assert at_two.is_due


def test_beat_entry_from_a_duration_runs_the_sweep_at_that_interval(
    beat_app: tuple[Celery, RetentionTasks],
) -> None:
    _app, tasks = beat_app

    entry = tasks.beat_entry(RetentionPolicy(keep_last=3), every="2h", dry_run=True)

    assert entry["schedule"].run_every == timedelta(hours=2)
    assert entry["kwargs"] == {"shard_size": 250, "dry_run": True}


@pytest.mark.parametrize("cron", ["0 2 * *", "61 2 * * *", "0 2 * * funday"])
def test_beat_entry_rejects_a_bad_cron_expression(
    beat_app: tuple[Celery, RetentionTasks], cron: str
) -> None:
    _app, tasks = beat_app

    with pytest.raises(UsageError, match="cron"):
        tasks.beat_entry({"keep_last": 5}, cron=cron)


def test_report_from_dict_reads_a_fleet_report() -> None:
    data = fleet_result(PruneReport(deleted_checkpoints=7, errors={"t": "boom"}), shards=2)

    report = report_from_dict(json.loads(json.dumps(data)))

    assert (report.deleted_checkpoints, report.errors) == (7, {"t": "boom"})


def test_fleet_sweep_runs_in_process_under_task_always_eager() -> None:
    saver = InMemorySaver()
    populate(build_agent(saver), THREADS)
    app = Celery("t", broker="memory://")
    app.conf.task_always_eager = True
    tasks = register_tasks(app, saver_factory=lambda: saver)

    report = tasks.run_sweep({"keep_last": 2}, shard_size=2).get()

    assert (report["shards"], report["ok"]) == (2, True)
    assert counts(saver) == {tid: 2 for tid, _ in THREADS}


def test_on_before_delete_is_asked_in_the_worker_before_a_thread_expires() -> None:
    saver = InMemorySaver()
    populate(build_agent(saver), THREADS)
    asked: list[str] = []

    def veto(thread_id: str, _reason: str) -> bool:
        asked.append(thread_id)
        return thread_id != "a:1"

    app = Celery("t", broker="memory://")
    app.conf.task_always_eager = True
    tasks = register_tasks(app, saver_factory=lambda: saver, on_before_delete=veto)
    time.sleep(1.1)  # every thread is now older than max_age

    report = tasks.run_sweep({"keep_last": 2, "max_age": "1s"}).get()

    assert sorted(asked) == sorted(t for t, _ in THREADS)
    assert (report["deleted_threads"], list(counts(saver))) == (2, ["a:1"])
