"""PostgreSQL-specific behaviour of the backend, checked with SQL on data from real graphs.

The generic invariants (state unchanged, subgraphs, interrupts, DeltaChannel) run on
Postgres through `tests/test_invariants.py`; these tests look at what only this storage
layout has: `checkpoint_blobs`, transactions and retries, connection pools and pipelines,
and a server that can go away.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from langgraph_retention import (
    PruneReport,
    RetentionPolicy,
    aprune_thread,
    astats,
    asweep,
    prune_thread,
    stats,
    sweep,
)
from langgraph_retention.backends.base import Expire, ExpiryRule
from langgraph_retention.backends.postgres import PostgresUnavailableError
from langgraph_retention.backends.postgres import backend as pg_backend
from langgraph_retention.backends.postgres import programs as pg_programs
from langgraph_retention.backends.postgres import statements as pg_sql
from langgraph_retention.demo import SEED_THREAD_ID, chat
from langgraph_retention.policy import Expiry

from .graphs import build_agent, build_delta_graph, build_subgraph_graph, config, user_turn

# -- SQL helpers -----------------------------------------------------------------------------

# Blob rows no checkpoint of their (thread, namespace) references.
UNREFERENCED_BLOBS_SQL = """
SELECT count(*) FROM checkpoint_blobs b
WHERE NOT EXISTS (
    SELECT 1 FROM checkpoints c
    WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
      AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)
"""

# (thread, ns, channel, version) of every blob row some remaining checkpoint references.
REFERENCED_BLOB_KEYS_SQL = """
SELECT DISTINCT b.thread_id, b.checkpoint_ns, b.channel, b.version
FROM checkpoint_blobs b
JOIN checkpoints c ON c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
 AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version
"""

BLOB_KEYS_SQL = "SELECT thread_id, checkpoint_ns, channel, version FROM checkpoint_blobs"

TABLE_COUNTS_SQL = """
SELECT (SELECT count(*) FROM checkpoints), (SELECT count(*) FROM checkpoint_writes),
       (SELECT count(*) FROM checkpoint_blobs)
"""


def sql(url: str, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own (autocommit) and return its rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def scalar(url: str, query: str, params: Any = ()) -> Any:
    return sql(url, query, params)[0][0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def history_ids(graph: Any, thread_id: str) -> list[str]:
    return [
        s.config["configurable"]["checkpoint_id"]
        for s in graph.get_state_history(config(thread_id))
    ]


# -- savers on a pool and in pipeline mode ------------------------------------------------------


@pytest.fixture
def pool_saver(postgres_saver: PostgresSaver, postgres_url: str) -> Iterator[PostgresSaver]:
    """A `PostgresSaver` on a `ConnectionPool`, over the empty tables of `postgres_saver`."""
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    with ConnectionPool(postgres_url, kwargs=kwargs, min_size=1, max_size=4) as pool:
        yield PostgresSaver(pool)  # type: ignore[arg-type]


@pytest.fixture
def pipeline_saver(postgres_saver: PostgresSaver, postgres_url: str) -> Iterator[PostgresSaver]:
    """A `PostgresSaver` whose connection is in pipeline mode."""
    with PostgresSaver.from_conn_string(postgres_url, pipeline=True) as saver:
        yield saver


# -- blobs ------------------------------------------------------------------------------------


def test_blobs_only_deleted_checkpoints_referenced_are_deleted(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    chat(build_agent(postgres_saver), SEED_THREAD_ID, 6)
    blobs_before = scalar(postgres_url, "SELECT count(*) FROM checkpoint_blobs")

    report = prune_thread(postgres_saver, SEED_THREAD_ID, RetentionPolicy(keep_last=2))

    blobs_after = scalar(postgres_url, "SELECT count(*) FROM checkpoint_blobs")
    assert report.deleted_blobs > 0
    assert blobs_after == blobs_before - report.deleted_blobs
    assert scalar(postgres_url, UNREFERENCED_BLOBS_SQL) == 0


def test_blobs_kept_checkpoints_reference_remain(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    graph = build_agent(postgres_saver)
    chat(graph, "t", 6)
    # The newest 5 start with a turn's input checkpoint, which shares its `messages` blob
    # with the previous turn's last checkpoint: a blob both a kept and a deleted one use.
    kept = history_ids(graph, "t")[:5]
    needed = set(
        sql(postgres_url, REFERENCED_BLOB_KEYS_SQL + " WHERE c.checkpoint_id = ANY(%s)", (kept,))
    )
    shared = set(
        sql(
            postgres_url,
            REFERENCED_BLOB_KEYS_SQL + " WHERE c.checkpoint_id = ANY(%s)",
            (history_ids(graph, "t")[5:],),
        )
    )
    assert needed & shared

    prune_thread(postgres_saver, "t", RetentionPolicy(keep_last=5))

    assert needed <= set(sql(postgres_url, BLOB_KEYS_SQL))
    assert history_ids(graph, "t") == kept


def test_kept_checkpoint_rows_are_not_modified(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    graph = build_agent(postgres_saver)
    chat(graph, "t", 4)
    kept = history_ids(graph, "t")[:3]
    rows_sql = (
        "SELECT checkpoint_id, parent_checkpoint_id, type, checkpoint::text, metadata::text "
        "FROM checkpoints WHERE thread_id = 't' AND checkpoint_id = ANY(%s) "
        "ORDER BY checkpoint_id"
    )
    before = sql(postgres_url, rows_sql, (kept,))

    prune_thread(postgres_saver, "t", RetentionPolicy(keep_last=3))

    assert sql(postgres_url, rows_sql, (kept,)) == before
    oldest_kept = postgres_saver.get_tuple(
        {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": kept[-1]}}
    )
    assert oldest_kept is not None and oldest_kept.parent_config is not None  # parent id kept


def test_a_run_in_flight_keeps_its_checkpoints_and_blobs(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    graph = build_agent(postgres_saver)
    chat(graph, "t", 3)
    with psycopg.connect(postgres_url, row_factory=dict_row, prepare_threshold=0) as run_conn:
        # A turn whose checkpoints and blobs are written but not committed yet.
        in_flight = build_agent(PostgresSaver(run_conn))
        chat(in_flight, "t", 1)
        expected = in_flight.get_state(config("t")).values

        prune_thread(postgres_saver, "t", RetentionPolicy(keep_last=1))
        run_conn.commit()

    assert graph.get_state(config("t")).values == expected
    assert scalar(postgres_url, UNREFERENCED_BLOBS_SQL) == 0


def test_blobs_orphaned_by_an_earlier_cleanup_go_with_the_prune(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    chat(build_agent(postgres_saver), "t", 3)
    # What the seed's cleanup leaves: blobs of checkpoints deleted one by one.
    sql(
        postgres_url,
        "DELETE FROM checkpoints WHERE checkpoint_id = "
        "(SELECT min(checkpoint_id) FROM checkpoints WHERE thread_id = 't')",
    )
    assert scalar(postgres_url, UNREFERENCED_BLOBS_SQL) > 0

    prune_thread(postgres_saver, "t", RetentionPolicy(keep_last=2))

    assert scalar(postgres_url, UNREFERENCED_BLOBS_SQL) == 0


def test_the_saver_commits_every_blob_with_a_checkpoint_of_its_thread(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    # The blob statement relies on this: a blob is never visible before its checkpoint.
    chat(build_agent(postgres_saver), "t", 3)

    lonely = scalar(
        postgres_url,
        """SELECT count(*) FROM checkpoint_blobs b WHERE NOT EXISTS (
               SELECT 1 FROM checkpoints c WHERE c.thread_id = b.thread_id
               AND c.checkpoint_ns = b.checkpoint_ns AND c.xmin = b.xmin)""",
    )

    assert lonely == 0


def test_writes_saved_ahead_of_their_checkpoint_survive(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    graph = build_agent(postgres_saver)
    chat(graph, "t", 3)
    newest = history_ids(graph, "t")[0]
    # Runs save a superstep's writes in the background; they can commit first.
    future_id = newest[:-12] + "ffffffffffff"
    postgres_saver.put_writes(
        {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": future_id}},
        [("messages", "pending")],
        task_id="task-1",
    )

    prune_thread(postgres_saver, "t", RetentionPolicy(keep_last=1))

    assert (
        scalar(
            postgres_url,
            "SELECT count(*) FROM checkpoint_writes WHERE checkpoint_id = %s",
            (future_id,),
        )
        == 1
    )


def test_dropped_subgraph_call_namespaces_leave_no_blobs(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    graph = build_subgraph_graph(postgres_saver)
    for _ in range(3):
        graph.invoke({"log": ["start"]}, config("t"))

    prune_thread(postgres_saver, "t", RetentionPolicy(keep_last=1))

    namespaces_with_blobs = {
        r[0] for r in sql(postgres_url, "SELECT checkpoint_ns FROM checkpoint_blobs")
    }
    namespaces = {r[0] for r in sql(postgres_url, "SELECT checkpoint_ns FROM checkpoints")}
    assert namespaces_with_blobs <= namespaces == {""}


def test_delta_channel_keeps_checkpoints_back_to_a_stored_value(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    graph = build_delta_graph(postgres_saver, snapshot_frequency=4)
    for i in range(5):
        graph.invoke({"items": [f"in{i}"]}, config("t"))

    report = prune_thread(postgres_saver, "t", RetentionPolicy(keep_last=1))

    # The oldest kept checkpoint stores `items` (a snapshot blob or an inline value).
    ((stored,),) = sql(
        postgres_url,
        """
        SELECT c.checkpoint -> 'channel_values' ? 'items' OR EXISTS (
            SELECT 1 FROM checkpoint_blobs b WHERE b.thread_id = c.thread_id
            AND b.checkpoint_ns = c.checkpoint_ns AND b.channel = 'items'
            AND b.version = c.checkpoint -> 'channel_versions' ->> 'items'
            AND b.type <> 'empty')
        FROM checkpoints c WHERE c.thread_id = 't' AND c.checkpoint_ns = ''
        ORDER BY c.checkpoint_id LIMIT 1
        """,
    )
    assert report.kept_checkpoints > 1 and report.deleted_checkpoints > 0
    assert stored


# -- concurrency and retries ----------------------------------------------------------------


def test_a_run_appending_while_pruning_loses_nothing(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    turns = 8
    with PostgresSaver.from_conn_string(postgres_url) as runner_saver:
        graph = build_agent(runner_saver)
        chat(graph, "busy", 2)
        start = threading.Barrier(2)
        done = threading.Event()
        failures: list[BaseException] = []

        def run() -> None:
            start.wait()
            try:
                chat(graph, "busy", turns)
            except BaseException as exc:  # reported by the assertion below
                failures.append(exc)
            finally:
                done.set()

        runner = threading.Thread(target=run)
        runner.start()
        start.wait()
        prunes: list[PruneReport] = []
        while not done.is_set() or not prunes:
            prunes.append(prune_thread(postgres_saver, "busy", RetentionPolicy(keep_last=1)))
        runner.join()

        assert not failures
        assert all(p.ok for p in prunes) and sum(p.deleted_checkpoints for p in prunes) > 0
        messages = graph.get_state(config("busy")).values["messages"]
        assert len(messages) == (2 + turns) * 4
        assert [m.content for m in messages if m.type == "human"] == [
            f"where is my order? ({i})" for i in [*range(2), *range(turns)]
        ]
        for snapshot in graph.get_state_history(config("busy")):  # every kept one loads
            assert len(snapshot.values["messages"]) > 0


def test_serialization_failures_are_retried(
    postgres_saver: PostgresSaver, postgres_url: str, failing_deletes: Any
) -> None:
    chat(build_agent(postgres_saver), "t", 3)
    failing_deletes(times=2)

    report = prune_thread(postgres_saver, "t", RetentionPolicy(keep_last=1))

    assert report.ok and report.deleted_checkpoints > 0
    assert scalar(postgres_url, "SELECT last_value FROM lgr_fail_seq") == 3  # 2 failed + 1
    assert stats(postgres_saver).threads["t"].checkpoints == 1


def test_retries_give_up_and_delete_nothing(
    postgres_saver: PostgresSaver, postgres_url: str, failing_deletes: Any
) -> None:
    chat(build_agent(postgres_saver), "t", 3)
    before = sql(postgres_url, TABLE_COUNTS_SQL)
    failing_deletes(times=100)

    with pytest.raises(psycopg.errors.SerializationFailure):
        prune_thread(postgres_saver, "t", RetentionPolicy(keep_last=1))

    assert scalar(postgres_url, "SELECT last_value FROM lgr_fail_seq") == pg_backend.MAX_ATTEMPTS
    assert sql(postgres_url, TABLE_COUNTS_SQL) == before


def test_a_failed_blob_delete_takes_back_the_checkpoint_delete(
    postgres_saver: PostgresSaver, postgres_url: str, failing_deletes: Any
) -> None:
    chat(build_agent(postgres_saver), "t", 3)
    before = sql(postgres_url, TABLE_COUNTS_SQL)
    failing_deletes(times=100, table="checkpoint_blobs")

    with pytest.raises(psycopg.errors.SerializationFailure):
        prune_thread(postgres_saver, "t", RetentionPolicy(keep_last=1))

    assert sql(postgres_url, TABLE_COUNTS_SQL) == before


@pytest.fixture
def failing_deletes(postgres_url: str) -> Iterator[Any]:
    """Make the server fail the next N DELETEs on `table` with a serialization failure.

    A statement trigger counts with a sequence (not rolled back with the transaction) and
    raises SQLSTATE 40001, exactly what Postgres reports when another transaction wins.
    """

    tables: list[str] = []

    def install(times: int, table: str = "checkpoints") -> None:
        tables.append(table)
        sql(postgres_url, "CREATE SEQUENCE lgr_fail_seq")
        sql(
            postgres_url,
            f"""
            CREATE FUNCTION lgr_fail() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('lgr_fail_seq') <= {int(times)} THEN
                    RAISE EXCEPTION 'injected conflict' USING ERRCODE = 'serialization_failure';
                END IF;
                RETURN NULL;
            END $$""",
        )
        sql(
            postgres_url,
            f"CREATE TRIGGER lgr_fail BEFORE DELETE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION lgr_fail()",
        )

    yield install
    for table in tables:
        sql(postgres_url, f"DROP TRIGGER IF EXISTS lgr_fail ON {table}")
    sql(postgres_url, "DROP FUNCTION IF EXISTS lgr_fail()")
    sql(postgres_url, "DROP SEQUENCE IF EXISTS lgr_fail_seq")


# -- dry runs, thread ids, stats ------------------------------------------------------------


def test_dry_run_deletes_nothing_and_predicts_the_exact_counts(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    chat(build_agent(postgres_saver), "agent", 4)
    sub = build_subgraph_graph(postgres_saver)
    for _ in range(3):
        sub.invoke({"log": ["start"]}, config("sub"))
    delta = build_delta_graph(postgres_saver, snapshot_frequency=3)
    for i in range(4):
        delta.invoke({"items": [f"in{i}"]}, config("delta"))
    policy = RetentionPolicy(keep_last=2)
    counts_before = sql(postgres_url, TABLE_COUNTS_SQL)[0]

    dry = sweep(postgres_saver, policy, dry_run=True)
    counts_after_dry = sql(postgres_url, TABLE_COUNTS_SQL)[0]
    real = sweep(postgres_saver, policy)
    counts_after = sql(postgres_url, TABLE_COUNTS_SQL)[0]

    assert counts_after_dry == counts_before
    removed = tuple(b - a for b, a in zip(counts_before, counts_after, strict=True))
    assert (dry.deleted_checkpoints, dry.deleted_writes, dry.deleted_blobs) == removed
    assert (real.deleted_checkpoints, real.deleted_writes, real.deleted_blobs) == removed
    assert dry.bytes_freed == real.bytes_freed > 0
    assert dry.deleted_blobs > 0


ODD_IDS = [
    SEED_THREAD_ID,
    "wang1",
    "a/b c",
    "客服:会话 7",
    "ü :/:x",
    "tab\tand 'quote'",
    'back\\slash "double" {braces},comma',
]


def test_thread_ids_with_separators_and_unicode_are_pruned_exactly(
    postgres_saver: PostgresSaver,
) -> None:
    graph = build_agent(postgres_saver)
    for tid in ODD_IDS:
        chat(graph, tid, 2)
    before = stats(postgres_saver)

    report = prune_thread(postgres_saver, "wang1", RetentionPolicy(keep_last=1))

    after = stats(postgres_saver)
    assert report.deleted_checkpoints == before.threads["wang1"].checkpoints - 1
    assert after.threads["wang1"].checkpoints == 1
    for tid in ODD_IDS[:1] + ODD_IDS[2:]:  # "wang1:…" shares a prefix and is untouched
        assert after.threads[tid] == before.threads[tid]


def test_thread_enumeration_pages_through_every_id(
    postgres_saver: PostgresSaver, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = build_agent(postgres_saver)
    for tid in ODD_IDS:
        chat(graph, tid, 1)
    monkeypatch.setattr(pg_programs, "THREAD_PAGE_SIZE", 2)

    report = sweep(postgres_saver, RetentionPolicy(keep_last=1))

    assert report.threads_seen == len(ODD_IDS) and report.ok
    assert set(stats(postgres_saver).threads) == set(ODD_IDS)


def test_a_sweep_without_a_batch_size_takes_the_stores_own(
    postgres_saver: PostgresSaver, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = build_agent(postgres_saver)
    for tid in ODD_IDS:
        chat(graph, tid, 1)
    monkeypatch.setattr(pg_backend.PostgresBackend, "sweep_batch_size", 2)
    batches: list[int] = []
    prune_batch = pg_backend.PostgresBackend.prune_batch

    def counted(self: Any, thread_ids: Any, *args: Any, **kwargs: Any) -> Any:
        batches.append(len(thread_ids))  # the real batch runs, counted on its way
        return prune_batch(self, thread_ids, *args, **kwargs)

    monkeypatch.setattr(pg_backend.PostgresBackend, "prune_batch", counted)

    report = sweep(postgres_saver, RetentionPolicy(keep_last=3))
    assert report.ok and report.threads_seen == len(ODD_IDS)
    assert batches == [2, 2, 2, 1]
    batches.clear()
    report = sweep(postgres_saver, RetentionPolicy(keep_last=1), batch_size=len(ODD_IDS))
    assert report.ok and report.threads_seen == len(ODD_IDS) and batches == [len(ODD_IDS)]
    assert {s.checkpoints for s in stats(postgres_saver).threads.values()} == {1}


def test_stats_match_sql_counts(postgres_saver: PostgresSaver, postgres_url: str) -> None:
    chat(build_agent(postgres_saver), "agent", 3)
    sub = build_subgraph_graph(postgres_saver)
    sub.invoke({"log": ["start"]}, config("sub"))

    s = stats(postgres_saver)

    expected = {
        tid: (n, ns, newest)
        for tid, n, ns, newest in sql(
            postgres_url,
            "SELECT thread_id, count(*), count(DISTINCT checkpoint_ns), max(checkpoint_id) "
            "FROM checkpoints GROUP BY thread_id",
        )
    }
    writes = dict(sql(postgres_url, "SELECT thread_id, count(*) FROM checkpoint_writes GROUP BY 1"))
    total_bytes = scalar(
        postgres_url,
        "SELECT (SELECT sum(pg_column_size(checkpoint) + pg_column_size(metadata)) "
        "FROM checkpoints) + (SELECT sum(pg_column_size(blob)) FROM checkpoint_writes) "
        "+ (SELECT coalesce(sum(pg_column_size(blob)), 0) FROM checkpoint_blobs)",
    )
    assert set(s.threads) == set(expected) == {"agent", "sub"}
    for tid, (n, ns, newest) in expected.items():
        ts = s.threads[tid]
        assert (ts.checkpoints, ts.namespaces, ts.newest_checkpoint_id) == (n, ns, newest)
        assert ts.writes == writes[tid] and ts.newest is not None
    assert s.total_bytes == total_bytes


# -- connections: pools, pipelines, async, unreachable servers ---------------------------------


@pytest.mark.parametrize("kind", ["pool_saver", "pipeline_saver"])
def test_pooled_and_pipelined_savers_are_pruned(
    kind: str, request: pytest.FixtureRequest, postgres_url: str
) -> None:
    saver = request.getfixturevalue(kind)
    graph = build_agent(saver)
    chat(graph, "t", 4)
    before = graph.get_state(config("t"))

    report = prune_thread(saver, "t", RetentionPolicy(keep_last=2))

    assert report.ok and report.kept_checkpoints == 2 and report.deleted_blobs > 0
    assert graph.get_state(config("t")) == before
    assert scalar(postgres_url, UNREFERENCED_BLOBS_SQL) == 0
    chat(graph, "t", 1)  # the saver's connection is still fine for the app


@asynccontextmanager
async def async_saver_on(kind: str, url: str) -> AsyncIterator[AsyncPostgresSaver]:
    """An `AsyncPostgresSaver` on an `AsyncConnectionPool`, or on a pipelined connection."""
    if kind == "pool":
        kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
        async with AsyncConnectionPool(url, kwargs=kwargs, open=False) as pool:
            yield AsyncPostgresSaver(pool)  # type: ignore[arg-type]
    else:
        async with AsyncPostgresSaver.from_conn_string(url, pipeline=True) as saver:
            yield saver


@pytest.mark.parametrize("kind", ["pool", "pipeline"])
async def test_async_savers_on_a_pool_or_a_pipeline_are_pruned(
    kind: str, postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    async with async_saver_on(kind, postgres_url) as saver:
        graph = build_agent(saver)
        for i in range(3):
            await graph.ainvoke({"messages": [("user", f"turn {i}")]}, config("t"))
        before = await graph.aget_state(config("t"))

        report = await aprune_thread(saver, "t", RetentionPolicy(keep_last=1))

        assert report.ok and report.deleted_blobs > 0
        assert await graph.aget_state(config("t")) == before
        assert (await astats(saver)).threads["t"].checkpoints == 1
        await graph.ainvoke({"messages": [("user", "again")]}, config("t"))


def test_unreachable_server_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    with ConnectionPool(
        f"postgresql://postgres@127.0.0.1:{port}/postgres", min_size=1, timeout=1.0
    ) as pool:
        saver = PostgresSaver(pool)  # type: ignore[arg-type]

        with pytest.raises(PostgresUnavailableError, match=rf"127\.0\.0\.1:{port}.*unreachable"):
            prune_thread(saver, "t", RetentionPolicy(keep_last=1))


async def test_unreachable_server_is_a_clear_error_on_the_async_saver() -> None:
    port = free_port()
    async with AsyncConnectionPool(
        f"postgresql://postgres@127.0.0.1:{port}/postgres", min_size=1, timeout=1.0, open=False
    ) as pool:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]

        with pytest.raises(PostgresUnavailableError, match=rf"127\.0\.0\.1:{port}"):
            await aprune_thread(saver, "t", RetentionPolicy(keep_last=1))


def test_a_dropped_connection_is_a_clear_error(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    chat(build_agent(postgres_saver), "t", 2)
    pid = postgres_saver.conn.info.backend_pid  # type: ignore[union-attr]
    sql(postgres_url, "SELECT pg_terminate_backend(%s)", (pid,))

    with pytest.raises(PostgresUnavailableError, match="unreachable"):
        prune_thread(postgres_saver, "t", RetentionPolicy(keep_last=1))


def test_an_expired_thread_written_to_after_the_index_read_is_left_whole(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    graph = build_agent(postgres_saver)
    chat(graph, "t", 1)
    seen_newest = scalar(postgres_url, "SELECT max(checkpoint_id) FROM checkpoints")
    chat(graph, "t", 1)  # a run commits after the decision read `seen_newest`
    before = scalar(postgres_url, "SELECT count(*) FROM checkpoints")

    gone = sql(
        postgres_url,
        pg_sql.DELETE_THREADS_SQL,
        {"expired_threads": "{t}", "expired_newest": "{" + seen_newest + "}"},
    )

    assert gone == []
    assert scalar(postgres_url, "SELECT count(*) FROM checkpoints") == before == 10
    assert len(graph.get_state(config("t")).values["messages"]) == 8


def test_an_expired_thread_deleted_whole_leaves_no_rows_in_any_table(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    graph = build_agent(postgres_saver)
    chat(graph, "old", 2)
    chat(graph, "new", 1)

    report = sweep(
        postgres_saver,
        RetentionPolicy(idle_ttl=timedelta(days=1)),
        thread_ids=["old"],
        now=datetime.now(UTC) + timedelta(days=2),
    )

    assert report.deleted_threads == 1 and report.deleted_blobs > 0
    for table in ("checkpoints", "checkpoint_writes", "checkpoint_blobs"):
        assert scalar(postgres_url, f"SELECT count(*) FROM {table} WHERE thread_id = 'old'") == 0
        assert scalar(postgres_url, f"SELECT count(*) FROM {table} WHERE thread_id = 'new'") > 0


# -- the richer rules' facts, sync and async alike ------------------------------------------

LATER = datetime.now(UTC) + timedelta(days=40)
RICH = RetentionPolicy(
    keep_last=2,
    keep_daily=3,
    keep_first=True,
    keep_interrupted=True,
    keep_tagged="pin",
    max_bytes=40_000,
    idle_ttl=timedelta(days=30),
)


def test_checkpoint_sizes_add_up_to_the_thread_bytes(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    chat(build_agent(postgres_saver), "t", 3)

    index = sql(postgres_url, pg_sql.FACTS_INDEX_SQL, {"threads": ["t"], "tag": None})
    others = sql(postgres_url, pg_sql.SIZES_SQL, {"threads": ["t"]})

    assert {(row[1], row[2]) for row in index} == {
        ("", cid) for cid in history_ids(build_agent(postgres_saver), "t")
    }
    assert {(ns, cid) for _tid, ns, cid, _size in others} <= {(row[1], row[2]) for row in index}
    rows = sum(row[7] for row in index)
    assert rows + sum(size for *_key, size in others) == (stats(postgres_saver).threads["t"].bytes)


async def test_sync_and_async_savers_make_the_same_decisions(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    graph = build_agent(postgres_saver)
    for tid in ("a", "b", "c"):
        chat(graph, tid, 4)
    graph.invoke(user_turn(9), {**config("b"), "metadata": {"pin": True}})

    synced = sweep(postgres_saver, RICH, dry_run=True, explain=True, now=LATER)
    async with AsyncPostgresSaver.from_conn_string(postgres_url) as saver:
        asynced = await asweep(saver, RICH, dry_run=True, explain=True, now=LATER)

    assert synced.deleted_checkpoints > 0 and synced.expired
    assert (synced.deleted_checkpoints, synced.bytes_freed, synced.expired) == (
        asynced.deleted_checkpoints,
        asynced.bytes_freed,
        asynced.expired,
    )
    assert synced.decisions == asynced.decisions


@pytest.mark.parametrize("decided", ["by the engine", "on the index read"])
def test_a_thread_written_to_between_the_index_read_and_the_delete_is_reported_kept(
    postgres_saver: PostgresSaver, postgres_url: str, decided: str
) -> None:
    graph = build_agent(postgres_saver)
    chat(graph, "t", 2)
    newest = history_ids(graph, "t")[0]
    policy = RetentionPolicy(idle_ttl=timedelta(days=30))
    by_engine: Expire = {"t": Expiry(newest, "idle 40d")}
    expire = by_engine if decided == "by the engine" else ExpiryRule(policy, LATER)
    program = pg_programs.prune_program(["t"], policy, False, LATER, expire=expire)

    with psycopg.connect(postgres_url) as conn, conn.cursor() as cur:
        statement, params, fetch = next(program)
        try:
            while True:
                cur.execute(statement, params, prepare=False)
                rows = cur.fetchall() if fetch else []
                if statement is pg_sql.INDEX_SQL:
                    chat(graph, "t", 1)  # the user comes back after the index was read
                statement, params, fetch = program.send(rows)
        except StopIteration as done:
            (result,) = done.value
        conn.commit()

    assert result.expired is None and result.deleted_checkpoints == 0
    assert result.kept_checkpoints == 10 and "left whole" in result.warnings[0]
    assert scalar(postgres_url, "SELECT count(*) FROM checkpoints") == 15
