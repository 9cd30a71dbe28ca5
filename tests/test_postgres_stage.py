"""Staged sweeps on PostgreSQL: batches locate their doomed rows, flushes delete them by
tuple id in physical order. Real servers and real graphs; the stage is driven through the
backend where a test must act between a batch's plan and the flush."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from langgraph_retention import RetentionPolicy, astats, asweep, stats, sweep
from langgraph_retention.backends.base import Stage
from langgraph_retention.backends.postgres import AsyncPostgresBackend, PostgresBackend
from langgraph_retention.backends.postgres import stage as pg_stage
from langgraph_retention.backends.postgres.stage import PostgresStage
from langgraph_retention.demo import chat

from .graphs import (
    build_agent,
    build_delta_graph,
    build_interrupt_graph,
    build_subgraph_graph,
    config,
    resume,
)

# Rows only a deleted checkpoint needed (bench_postgres.LEFTOVERS_SQL's orphan counts).
ORPHANS_SQL = """
SELECT
    (SELECT count(*) FROM checkpoint_writes w WHERE NOT EXISTS (
        SELECT 1 FROM checkpoints c WHERE c.thread_id = w.thread_id
        AND c.checkpoint_ns = w.checkpoint_ns AND c.checkpoint_id = w.checkpoint_id)),
    (SELECT count(*) FROM checkpoint_blobs b WHERE NOT EXISTS (
        SELECT 1 FROM checkpoints c WHERE c.thread_id = b.thread_id
        AND c.checkpoint_ns = b.checkpoint_ns
        AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version))
"""

TABLE_COUNTS_SQL = """
SELECT (SELECT count(*) FROM checkpoints), (SELECT count(*) FROM checkpoint_writes),
       (SELECT count(*) FROM checkpoint_blobs)
"""

KEEP_ONE = RetentionPolicy(keep_last=1)


def sql(url: str, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def agents(saver: Any, threads: list[str], turns: int = 3) -> Any:
    graph = build_agent(saver)
    for tid in threads:
        chat(graph, tid, turns)
    return graph


def states(graph: Any, threads: list[str]) -> dict[str, Any]:
    return {tid: graph.get_state(config(tid)) for tid in threads}


def staged_tids(locations: pg_stage.Locations) -> set[tuple[int, int]]:
    """(block, line) of every tuple id a stage holds for one table."""
    found = set()
    for packed in locations.tids.values():
        for i in range(0, len(packed), 6):
            found.add(
                (int.from_bytes(packed[i : i + 4], "big"), packed[i + 4] << 8 | packed[i + 5])
            )
    return found


def tids_of(url: str, table: str, thread_id: str) -> set[tuple[int, int]]:
    rows = sql(url, f"SELECT ctid::text FROM {table} WHERE thread_id = %s", (thread_id,))
    return {tuple(int(x) for x in r[0].strip("()").split(",")) for r in rows}  # type: ignore[misc]


def plan_only(saver: PostgresSaver, thread_ids: list[str], policy: RetentionPolicy) -> Any:
    """A backend and a stage holding one batch's plan, not yet flushed."""
    backend = PostgresBackend(saver)
    stage = backend.open_stage()
    returned = backend.prune_batch(
        thread_ids, policy, dry_run=False, now=datetime.now(UTC), stage=stage
    )
    assert returned == [] and set(stage.results) == set(thread_ids)
    return backend, stage


@pytest.fixture(autouse=True)
def staged_at_any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage these small stores' sweeps as a store far beyond the buffer cache is."""
    monkeypatch.setattr(pg_stage, "STAGE_ABOVE_BUFFERS", -1)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flush one heap block per transaction, so a small store takes many transactions."""
    monkeypatch.setattr(pg_stage, "BUCKET_SHIFT", 0)
    monkeypatch.setattr(pg_stage, "FLUSH_CHUNK_ROWS", 1)


# -- a staged sweep does what the batch-by-batch prune does ------------------------------------


@pytest.mark.usefixtures("small_chunks")
def test_a_staged_sweep_deletes_exactly_what_the_plan_chose(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    graph = agents(postgres_saver, ["a", "b:1", "客服 7"])
    sub = build_subgraph_graph(postgres_saver)
    for _ in range(3):
        sub.invoke({"log": ["start"]}, config("sub"))
    delta = build_delta_graph(postgres_saver, snapshot_frequency=3)
    for i in range(5):
        delta.invoke({"items": [f"in{i}"]}, config("delta"))
    before = {"agent": states(graph, ["a", "b:1", "客服 7"]), "sub": sub.get_state(config("sub"))}
    delta_before = delta.get_state(config("delta"))
    counts_before = sql(postgres_url, TABLE_COUNTS_SQL)[0]
    policy = RetentionPolicy(keep_last=2)

    planned = sweep(postgres_saver, policy, dry_run=True)  # batch by batch, deleting nothing
    staged = sweep(postgres_saver, policy, batch_size=2)

    removed = tuple(
        b - a for b, a in zip(counts_before, sql(postgres_url, TABLE_COUNTS_SQL)[0], strict=True)
    )
    assert staged.ok and staged.deleted_blobs > 0
    assert (staged.deleted_checkpoints, staged.deleted_writes, staged.deleted_blobs) == removed
    assert (planned.deleted_checkpoints, planned.deleted_writes, planned.deleted_blobs) == removed
    assert staged.bytes_freed == planned.bytes_freed
    assert sql(postgres_url, ORPHANS_SQL)[0] == (0, 0)
    assert states(graph, ["a", "b:1", "客服 7"]) == before["agent"]
    assert sub.get_state(config("sub")) == before["sub"]
    assert delta.get_state(config("delta")) == delta_before


def test_a_full_stage_is_flushed_before_the_next_batch(
    postgres_saver: PostgresSaver, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = [f"t{i}" for i in range(5)]
    graph = agents(postgres_saver, threads)
    before = states(graph, threads)
    flushes: list[int] = []
    flush = PostgresBackend.flush_stage

    def counted(self: Any, stage: Any, halt: Any) -> Any:
        flushes.append(len(stage))  # the real flush runs, counted on its way
        return flush(self, stage, halt)

    monkeypatch.setattr(PostgresBackend, "flush_stage", counted)
    monkeypatch.setattr(pg_stage, "STAGE_BYTES", 1)  # full after every batch

    report = sweep(postgres_saver, KEEP_ONE, batch_size=2)

    assert flushes == [2, 2, 1]
    assert report.ok and report.deleted_checkpoints == 5 * 14
    assert {s.checkpoints for s in stats(postgres_saver).threads.values()} == {1}
    assert sql(postgres_url, ORPHANS_SQL)[0] == (0, 0)
    assert states(graph, threads) == before


@pytest.mark.parametrize(
    "policy",
    [
        RetentionPolicy(keep_last=1, keep_interrupted=True),
        RetentionPolicy(keep_last=3, keep_interrupted=True, max_bytes=4_000),
        RetentionPolicy(keep_last=3, keep_first=True, max_bytes=2**30),
    ],
    ids=["interrupts", "interrupts-and-cap", "cap-not-reached"],
)
def test_a_staged_sweep_measures_interrupts_and_sizes_as_the_plan_reads_them(
    postgres_saver: PostgresSaver, postgres_url: str, policy: RetentionPolicy
) -> None:
    graph = agents(postgres_saver, ["a", "b"], turns=4)
    review = build_interrupt_graph(postgres_saver)
    review.invoke({"log": ["go"]}, config("r"))
    review.invoke(resume("yes"), config("r"))
    review.invoke({"log": ["again"]}, config("r"))  # waiting at the second review
    before = {**states(graph, ["a", "b"]), "r": review.get_state(config("r"))}

    planned = sweep(postgres_saver, policy, dry_run=True, explain=True)  # the unstaged plan
    staged = sweep(postgres_saver, policy)

    assert staged.ok and staged.deleted_checkpoints > 0
    assert (staged.deleted_checkpoints, staged.deleted_writes, staged.deleted_blobs) == (
        planned.deleted_checkpoints,
        planned.deleted_writes,
        planned.deleted_blobs,
    )
    assert staged.kept_checkpoints == planned.kept_checkpoints
    assert staged.warnings == planned.warnings
    kept = {tid: [d.checkpoint_id for d in ds if d.kept] for tid, ds in planned.decisions.items()}
    for tid, ids in kept.items():
        remaining = sql(
            postgres_url, "SELECT checkpoint_id FROM checkpoints WHERE thread_id = %s", (tid,)
        )
        assert sorted(r[0] for r in remaining) == sorted(ids)
    assert sql(postgres_url, ORPHANS_SQL)[0] == (0, 0)
    assert {**states(graph, ["a", "b"]), "r": review.get_state(config("r"))} == before
    review.invoke(resume("no"), config("r"))
    assert review.get_state(config("r")).values["log"][-2:] == ["review:no", "published"]


# -- between the plan and the flush --------------------------------------------------------


def test_a_checkpoint_committed_between_plan_and_flush_keeps_its_blobs(
    postgres_saver: PostgresSaver,
) -> None:
    graph = agents(postgres_saver, ["t"])
    doomed = list(graph.get_state_history(config("t")))[7]
    backend, stage = plan_only(postgres_saver, ["t"], KEEP_ONE)
    # The app forks from a checkpoint the plan doomed: the fork references its blobs.
    graph.update_state(doomed.config, None)

    (result,) = backend.flush_stage(stage, lambda: False)

    assert result.deleted_checkpoints == 14 and result.error is None
    assert graph.get_state(config("t")).values == doomed.values
    chat(graph, "t", 1)  # the thread resumes from the fork
    assert (
        len(graph.get_state(config("t")).values["messages"]) == len(doomed.values["messages"]) + 4
    )


def test_a_new_row_in_a_freed_slot_of_a_staged_row_survives_the_flush(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    agents(postgres_saver, ["t"])
    backend, stage = plan_only(postgres_saver, ["t"], KEEP_ONE)
    doomed_slots = staged_tids(stage.checkpoints)
    # Someone else deletes the staged rows, VACUUM frees their slots, and the app's next
    # turns (on a fresh connection, placed by the free space map) take them.
    PostgresBackend(postgres_saver).prune_batch(
        ["t"], KEEP_ONE, dry_run=False, now=datetime.now(UTC)
    )
    sql(postgres_url, "VACUUM checkpoints, checkpoint_writes, checkpoint_blobs")
    with PostgresSaver.from_conn_string(postgres_url) as app:
        graph = build_agent(app)
        chat(graph, "t", 2)
        expected = graph.get_state(config("t"))
        assert tids_of(postgres_url, "checkpoints", "t") & doomed_slots  # the setup worked

        (result,) = backend.flush_stage(stage, lambda: False)

        assert (result.deleted_checkpoints, result.deleted_writes, result.deleted_blobs) == (
            0,
            0,
            0,
        )
        assert graph.get_state(config("t")) == expected
        assert len(list(graph.get_state_history(config("t")))) == 1 + 10
        chat(graph, "t", 1)


def test_rows_moved_by_vacuum_full_between_plan_and_flush_are_told_apart(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    graph = agents(postgres_saver, ["gone"], turns=1)  # "gone"'s rows come first on disk
    chat(graph, "t", 6)
    before = graph.get_state(config("t"))
    kept_id = before.config["configurable"]["checkpoint_id"]
    backend, stage = plan_only(postgres_saver, ["t"], KEEP_ONE)
    # The app deletes a thread and an operator compacts the tables: "t"'s rows move into
    # the slots the plan found its doomed rows in.
    postgres_saver.delete_thread("gone")
    sql(postgres_url, "VACUUM FULL checkpoints")
    sql(postgres_url, "VACUUM FULL checkpoint_writes")
    sql(postgres_url, "VACUUM FULL checkpoint_blobs")
    assert tids_of(postgres_url, "checkpoints", "t") & staged_tids(stage.checkpoints)

    backend.flush_stage(stage, lambda: False)

    assert graph.get_state(config("t")) == before  # its checkpoint, writes and blobs stay
    ids = {r[0] for r in sql(postgres_url, "SELECT checkpoint_id FROM checkpoints")}
    assert kept_id in ids
    report = sweep(postgres_saver, KEEP_ONE)  # the next sweep finds what moved away
    assert report.ok and sql(postgres_url, ORPHANS_SQL)[0] == (0, 0)
    assert sql(postgres_url, "SELECT count(*) FROM checkpoints")[0][0] == 1
    assert graph.get_state(config("t")) == before


# -- stopping and failing --------------------------------------------------------------------


def flush_transactions(saver: PostgresSaver, thread_ids: list[str]) -> int:
    """How many transactions flushing these threads' plan takes (one per staged bucket)."""
    _backend, stage = plan_only(saver, thread_ids, KEEP_ONE)
    return sum(len(t.tids) for t in (stage.writes, stage.checkpoints, stage.blobs))


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.4, 0.6, 0.8, 0.95])
def test_a_flush_halted_between_transactions_leaves_what_the_next_sweep_finds(
    postgres_saver: PostgresSaver, postgres_url: str, fraction: float
) -> None:
    threads = ["a", "b", "c"]
    graph = agents(postgres_saver, threads, turns=4)
    before = states(graph, threads)
    transactions = int(fraction * flush_transactions(postgres_saver, threads))
    asked: list[int] = []

    def halt() -> bool:  # before the batch, then before each flush transaction
        asked.append(1)
        return len(asked) > 1 + transactions

    halted = sweep(postgres_saver, KEEP_ONE, stop=halt)

    assert halted.stopped == "stop requested" and not halted.errors
    assert set(halted.warnings) == set(threads)
    assert all("next sweep" in w for w in halted.warnings.values())
    assert states(graph, threads) == before
    report = sweep(postgres_saver, KEEP_ONE)
    assert report.ok
    assert halted.deleted_checkpoints + report.deleted_checkpoints == 3 * 19
    assert sql(postgres_url, ORPHANS_SQL)[0] == (0, 0)
    assert {s.checkpoints for s in stats(postgres_saver).threads.values()} == {1}
    assert states(graph, threads) == before


@pytest.fixture
def failing_checkpoint_deletes(postgres_url: str) -> Iterator[None]:
    """Every DELETE on `checkpoints` fails (a statement trigger raising an error)."""
    sql(
        postgres_url,
        """CREATE FUNCTION lgr_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'deletes refused'; END $$""",
    )
    sql(
        postgres_url,
        "CREATE TRIGGER lgr_refuse BEFORE DELETE ON checkpoints "
        "FOR EACH STATEMENT EXECUTE FUNCTION lgr_refuse()",
    )
    yield
    sql(postgres_url, "DROP TRIGGER IF EXISTS lgr_refuse ON checkpoints")
    sql(postgres_url, "DROP FUNCTION IF EXISTS lgr_refuse()")


def test_a_failing_flush_fails_its_threads_and_the_next_sweep_cleans_up(
    postgres_saver: PostgresSaver, postgres_url: str, failing_checkpoint_deletes: None
) -> None:
    threads = ["a", "b"]
    graph = agents(postgres_saver, threads)
    before = states(graph, threads)

    failed = sweep(postgres_saver, KEEP_ONE)

    assert set(failed.errors) == set(threads)
    assert all("deletes refused" in e for e in failed.errors.values())
    # Writes went first and stay deleted; their checkpoints (doomed) are all still there.
    assert sql(postgres_url, TABLE_COUNTS_SQL)[0][:2] == (2 * 15, 0)
    assert states(graph, threads) == before
    sql(postgres_url, "DROP TRIGGER lgr_refuse ON checkpoints")
    report = sweep(postgres_saver, KEEP_ONE)
    assert report.ok and report.deleted_checkpoints == 2 * 14
    assert sql(postgres_url, ORPHANS_SQL)[0] == (0, 0)
    assert states(graph, threads) == before


# -- connections: a plain one or a pool, sync and async ----------------------------------------


@contextmanager
def sync_saver_on(kind: str, url: str) -> Iterator[PostgresSaver]:
    if kind == "pool":
        kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
        with ConnectionPool(url, kwargs=kwargs, min_size=1, max_size=4) as pool:
            yield PostgresSaver(pool)  # type: ignore[arg-type]
    else:
        with PostgresSaver.from_conn_string(url) as saver:
            yield saver


@asynccontextmanager
async def async_saver_on(kind: str, url: str) -> AsyncIterator[AsyncPostgresSaver]:
    if kind == "pool":
        kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
        async with AsyncConnectionPool(url, kwargs=kwargs, open=False) as pool:
            yield AsyncPostgresSaver(pool)  # type: ignore[arg-type]
    else:
        async with AsyncPostgresSaver.from_conn_string(url) as saver:
            yield saver


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("kind", ["connection", "pool"])
def test_a_staged_sweep_runs_on_a_connection_or_a_pool(
    kind: str, postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    with sync_saver_on(kind, postgres_url) as saver:
        graph = agents(saver, ["a", "b"])
        before = states(graph, ["a", "b"])

        report = sweep(saver, KEEP_ONE)

        assert report.ok and report.deleted_checkpoints == 2 * 14 and report.deleted_blobs > 0
        assert states(graph, ["a", "b"]) == before
        assert sql(postgres_url, ORPHANS_SQL)[0] == (0, 0)
        chat(graph, "a", 1)  # the saver's connection is still fine for the app


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("kind", ["connection", "pool"])
async def test_an_async_staged_sweep_runs_on_a_connection_or_a_pool(
    kind: str, postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    async with async_saver_on(kind, postgres_url) as saver:
        graph = build_agent(saver)
        for tid in ("a", "b"):
            for i in range(3):
                await graph.ainvoke({"messages": [("user", f"turn {i}")]}, config(tid))
        before = {tid: await graph.aget_state(config(tid)) for tid in ("a", "b")}

        planned = await asweep(saver, KEEP_ONE, dry_run=True)
        report = await asweep(saver, KEEP_ONE)

        assert report.ok and report.deleted_blobs > 0
        assert (report.deleted_checkpoints, report.deleted_writes, report.deleted_blobs) == (
            planned.deleted_checkpoints,
            planned.deleted_writes,
            planned.deleted_blobs,
        )
        assert {tid: await graph.aget_state(config(tid)) for tid in ("a", "b")} == before
        assert {s.checkpoints for s in (await astats(saver)).threads.values()} == {1}
        assert sql(postgres_url, ORPHANS_SQL)[0] == (0, 0)


async def test_an_async_flush_halted_between_transactions_stops_there(
    postgres_saver: PostgresSaver, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_stage, "BUCKET_SHIFT", 0)
    monkeypatch.setattr(pg_stage, "FLUSH_CHUNK_ROWS", 1)
    agents(postgres_saver, ["a", "b"])
    async with AsyncPostgresSaver.from_conn_string(postgres_url) as saver:
        asked: list[int] = []

        def halt() -> bool:
            asked.append(1)
            return len(asked) > 2  # the batch and the first flush transaction

        halted = await asweep(saver, KEEP_ONE, stop=halt)
        report = await asweep(saver, KEEP_ONE)

    assert halted.stopped == "stop requested" and halted.deleted_checkpoints == 0
    assert 0 < halted.deleted_writes < report.deleted_writes + halted.deleted_writes
    assert report.ok and report.deleted_checkpoints == 2 * 14
    assert sql(postgres_url, ORPHANS_SQL)[0] == (0, 0)


def test_a_stage_is_only_taken_from_this_backend(postgres_saver: PostgresSaver) -> None:
    backend = PostgresBackend(postgres_saver)
    assert isinstance(backend.open_stage(), PostgresStage)
    with pytest.raises(TypeError, match="not a PostgreSQL stage"):
        backend.flush_stage(Stage(), lambda: False)


def test_a_store_within_the_buffer_cache_is_swept_batch_by_batch(
    postgres_saver: PostgresSaver, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents(postgres_saver, ["a", "b"])
    monkeypatch.setattr(pg_stage, "STAGE_ABOVE_BUFFERS", 16)  # the default: 2 GB of 128 MB

    assert PostgresBackend(postgres_saver).open_stage() is None
    report = sweep(postgres_saver, KEEP_ONE)

    assert report.ok and {s.checkpoints for s in stats(postgres_saver).threads.values()} == {1}


def test_a_store_beyond_the_buffer_cache_stages_with_its_own_batch_size(
    postgres_saver: PostgresSaver,
) -> None:
    agents(postgres_saver, ["a"])

    stage = PostgresBackend(postgres_saver).open_stage()

    assert isinstance(stage, PostgresStage) and stage.batch_size == 250


async def test_an_async_saver_chooses_the_same_way(
    postgres_saver: PostgresSaver, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents(postgres_saver, ["a"])
    async with AsyncPostgresSaver.from_conn_string(postgres_url) as saver:
        backend = AsyncPostgresBackend(saver)
        assert isinstance(await backend.aopen_stage(), PostgresStage)
        monkeypatch.setattr(pg_stage, "STAGE_ABOVE_BUFFERS", 16)
        assert await backend.aopen_stage() is None
