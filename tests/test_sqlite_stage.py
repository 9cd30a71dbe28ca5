"""SQLite sweeps stage their deletes: batches read and decide in read transactions, and
the flush deletes writes, then checkpoints, in rowid order in short write transactions.

Each test races the flush with real work through `sweep(stop=...)`: the engine asks
`stop` before every batch and before every flush transaction, so a `stop` that acts on
its Nth call runs between the plan and the flush, or between two flush transactions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from langgraph_retention import RetentionPolicy, asweep, stats, sweep
from langgraph_retention.backends.sqlite import AsyncSqliteBackend, SqliteBackend, flush, stage
from langgraph_retention.backends.sqlite.stage import SqliteStage, StagedRows
from langgraph_retention.demo import build_agent, chat, populate
from langgraph_retention.report import PruneReport, ThreadResult

from .graphs import build_delta_graph

THREADS = [(f"user {i}:{i:03d}", 3) for i in range(6)]  # 15 checkpoints each
IDS = [tid for tid, _ in THREADS]
KEEP = RetentionPolicy(keep_last=2)
COUNTS = ("deleted_checkpoints", "deleted_writes", "bytes_freed")
ORPHANS_SQL = """
SELECT count(*) FROM writes w WHERE NOT EXISTS (SELECT 1 FROM checkpoints c
WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns
AND c.checkpoint_id = w.checkpoint_id)
"""


@pytest.fixture(autouse=True)
def staged_at_any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage these small files' sweeps as a big store's are."""
    monkeypatch.setattr(stage, "STAGE_ABOVE_BYTES", -1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    """A SQLite file with six agent threads of 15 checkpoints."""
    path = tmp_path / "store.db"
    conn = sqlite3.connect(str(path), check_same_thread=False)
    populate(build_agent(SqliteSaver(conn)), THREADS)
    conn.close()
    yield path


@pytest.fixture
def small_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flush transactions of 10 rows each, so a small store's flush takes many."""
    monkeypatch.setattr(flush, "MIN_ROWS", 10)
    monkeypatch.setattr(flush, "MAX_ROWS", 10)


def connect(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    return sqlite3.connect(str(path), check_same_thread=False, timeout=timeout)


def cfg(tid: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"thread_id": tid, "checkpoint_ns": ""}
    if checkpoint_id is not None:
        c["checkpoint_id"] = checkpoint_id
    return {"configurable": c}


def orphans(path: Path) -> int:
    conn = connect(path)
    try:
        return int(conn.execute(ORPHANS_SQL).fetchone()[0])
    finally:
        conn.close()


def totals(saver: Any) -> tuple[int, int, int]:
    """Checkpoints, writes and bytes of the whole store."""
    s = stats(saver)
    threads = s.threads.values()
    return s.total_checkpoints, sum(t.writes for t in threads), sum(t.bytes for t in threads)


def states(graph: Any, ids: list[str]) -> dict[str, Any]:
    return {tid: graph.get_state(cfg(tid)) for tid in ids}


def history(graph: Any, tid: str) -> list[str]:
    return [s.config["configurable"]["checkpoint_id"] for s in graph.get_state_history(cfg(tid))]


def on_call(n: int, action: Callable[[], object]) -> Callable[[], bool]:
    """A `stop` that runs `action` on its `n`th call (never stops the sweep)."""
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        if calls == n:
            action()
        return False

    return stop


def by_thread(report: PruneReport, results: list[ThreadResult]) -> dict[str, tuple[int, ...]]:
    return {
        r.thread_id: (r.deleted_checkpoints, r.deleted_writes, r.bytes_freed, r.kept_checkpoints)
        for r in results
    }


def assert_counts_are_real(report: PruneReport, before: tuple[int, ...], saver: Any) -> None:
    after = totals(saver)
    assert report.deleted_checkpoints == before[0] - after[0]
    assert report.deleted_writes == before[1] - after[1]
    assert report.bytes_freed == before[2] - after[2]


# -- the pure parts: chunks and pace ------------------------------------------------------


def test_chunks_cover_every_staged_row_once_in_ascending_ranges() -> None:
    rows = StagedRows()
    rng = random.Random(3)
    pool = rng.sample(range(1, 100_000), 40 * 900)  # rowids are unique across batches
    batches = [pool[i * 900 : i * 900 + rng.randrange(0, 900)] for i in range(40)]
    for b in batches:
        rows.add(b, [r * 7 % 2**32 for r in b])
    sizes = iter([50, 400, 3, 1000] + [250] * 1000)
    chunks = list(rows.chunks(lambda: next(sizes), 1, 10**9))
    seen = [r for ids, _ in chunks for r in ids]
    assert sorted(seen) == sorted(r for b in batches for r in b) and len(set(seen)) == len(seen)
    assert all(g == r * 7 % 2**32 for ids, gs in chunks for r, g in zip(ids, gs, strict=True))
    assert all(max(a) < min(b) for (a, _), (b, _) in itertools.pairwise(chunks))
    assert 20 <= len(chunks[0][0]) <= 100 and 200 <= len(chunks[1][0]) <= 600


def test_pace_steers_toward_its_target_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flush, "TRANSACTION_SECONDS", 0.3)
    pace = flush.Pace(2000, most=10_000)
    pace.took(2000, 0.01)  # far too short: at most double
    assert pace() == 4000
    pace.took(4000, 0.3)
    assert pace() == 4000
    pace.took(4000, 3.0)  # far too long: at most half
    assert pace() == 2000
    for _ in range(10):
        pace.took(pace(), 0.001)
    assert pace() == 10_000  # never above the largest batch
    assert flush.Pace(50_000, most=100)() == flush.MIN_ROWS


# -- the staged sweep does what the batch-by-batch one did ------------------------------------


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_staged_sweep_equals_the_dry_run(store: Path, batch_size: int) -> None:
    conn = connect(store)
    saver = SqliteSaver(conn)
    graph = build_agent(saver)
    before, current = totals(saver), states(graph, IDS)
    planned: list[ThreadResult] = []
    dry = sweep(saver, KEEP, dry_run=True, batch_size=batch_size, progress=planned.append)
    done: list[ThreadResult] = []
    report = sweep(saver, KEEP, batch_size=batch_size, progress=done.append)
    assert report.ok and report.stopped is None
    assert by_thread(report, done) == by_thread(dry, planned)
    assert (report.deleted_checkpoints, report.kept_checkpoints) == (6 * 13, 6 * 2)
    assert all(not r.warnings for r in done)
    assert_counts_are_real(report, before, saver)
    assert states(graph, IDS) == current
    assert orphans(store) == 0
    conn.close()


def test_a_full_stage_is_flushed_mid_sweep(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage, "MAX_STAGED_THREADS", 2)
    conn = connect(store)
    saver = SqliteSaver(conn)
    before = totals(saver)
    planned: list[ThreadResult] = []
    dry = sweep(saver, KEEP, dry_run=True, progress=planned.append)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    done: list[ThreadResult] = []
    report = sweep(saver, KEEP, batch_size=1, progress=done.append)
    conn.set_trace_callback(None)
    assert report.ok and by_thread(report, done) == by_thread(dry, planned)
    kinds = [s for s in statements if s in ("BEGIN", "BEGIN IMMEDIATE")]
    flushes = "".join("r" if k == "BEGIN" else "w" for k in kinds).replace("ww", "w")
    assert flushes.count("rrw") == 3  # two batches read, then their flush, three times
    assert_counts_are_real(report, before, saver)
    assert orphans(store) == 0
    conn.close()


def test_sweep_reads_in_read_transactions_and_deletes_in_the_flush(store: Path) -> None:
    conn = connect(store)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    report = sweep(SqliteSaver(conn), KEEP, batch_size=2)
    conn.set_trace_callback(None)
    assert report.ok
    begins = [i for i, s in enumerate(statements) if s in ("BEGIN", "BEGIN IMMEDIATE")]
    kinds = [statements[i] for i in begins]
    # thread id pages and 3 batches read; then the flush: one transaction per table
    assert kinds[-2:] == ["BEGIN IMMEDIATE"] * 2 and kinds[:-2].count("BEGIN") == len(kinds) - 2
    assert len(kinds) - 2 >= 3
    deletes = [i for i, s in enumerate(statements) if s.lstrip().startswith("DELETE")]
    assert [statements[i].split()[2] for i in deletes] == ["writes", "checkpoints"]
    assert begins[-2] < deletes[0] < begins[-1] < deletes[1]
    conn.close()


def test_a_flush_transaction_deletes_no_more_than_two_of_the_largest_batch(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`batch_size` still bounds the work of each write transaction, hence an app's wait."""
    monkeypatch.setattr(flush, "MIN_ROWS", 1)
    conn = connect(store)
    planned: list[ThreadResult] = []
    sweep(SqliteSaver(conn), KEEP, dry_run=True, progress=planned.append)
    largest = max(r.deleted_checkpoints + r.deleted_writes for r in planned)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    report = sweep(SqliteSaver(conn), KEEP, batch_size=1)
    conn.set_trace_callback(None)
    assert report.ok and report.deleted_checkpoints == 6 * 13
    deletes = [s for s in statements if s.startswith("DELETE FROM")]
    sizes = [len(json.loads(s[s.index("json_each('") + 11 : s.rindex("')")])) for s in deletes]
    assert sum(sizes) == report.deleted_checkpoints + report.deleted_writes
    assert max(sizes) <= 2 * largest < sum(sizes) / 2
    assert statements.count("BEGIN IMMEDIATE") >= 4
    conn.close()


# -- the app writes between the plan and the flush -----------------------------------------


@pytest.mark.parametrize("run", ["next turn", "fork of a doomed checkpoint"])
def test_a_run_committed_after_the_plan_is_kept_and_the_thread_resumes(
    store: Path, run: str
) -> None:
    conn = connect(store)
    saver = SqliteSaver(conn)
    graph = build_agent(SqliteSaver(connect(store)))  # the app's own connection
    tid = IDS[0]
    old = history(graph, tid)[-3]  # doomed by the plan
    written: list[str] = []

    def app_runs() -> None:  # between the plan and the flush
        before = set(history(graph, tid))
        if run == "next turn":
            graph.invoke({"messages": [HumanMessage("and then?")]}, cfg(tid))
        else:  # the app replays from the old checkpoint: a fork, new checkpoints
            graph.invoke(None, cfg(tid, old))
        written.extend(set(history(graph, tid)) - before)
        current.append(graph.get_state(cfg(tid)))

    current: list[Any] = []
    report = sweep(saver, KEEP, batch_size=100, stop=on_call(2, app_runs))
    assert report.ok and written and report.deleted_checkpoints == 6 * 13
    ids = history(graph, tid)
    assert old not in ids and set(written) <= set(ids) and len(ids) == 2 + len(written)
    assert graph.get_state(cfg(tid)) == current[0]
    graph.invoke({"messages": [HumanMessage("and now?")]}, cfg(tid))
    assert graph.get_state(cfg(tid)).values["messages"][-1].content
    assert len(history(graph, tid)) > len(ids)
    assert orphans(store) == 0
    conn.close()


def test_writes_of_a_doomed_checkpoint_committed_after_the_plan_go_with_it(store: Path) -> None:
    conn = connect(store)
    saver = SqliteSaver(conn)
    app = SqliteSaver(connect(store))
    tid = IDS[1]
    doomed = history(build_agent(app), tid)[-4]

    at_plan: list[tuple[int, int, int]] = []

    def late_write() -> None:  # a task of that checkpoint committing late
        app.put_writes(cfg(tid, doomed), [("messages", [HumanMessage("late")])], "late-task")
        at_plan.append(totals(app))

    report = sweep(saver, KEEP, batch_size=100, stop=on_call(2, late_write))
    assert report.ok
    assert orphans(store) == 0
    assert_counts_are_real(report, at_plan[0], saver)
    conn.close()


def test_a_reused_rowid_is_not_deleted(store: Path) -> None:
    conn = connect(store)
    saver = SqliteSaver(conn)
    tid, newcomer = IDS[2], "newcomer"
    doomed = history(build_agent(saver), tid)[-1]  # its oldest checkpoint
    app = connect(store)
    (cp_rowid,) = app.execute(
        "SELECT rowid FROM checkpoints WHERE thread_id = ? AND checkpoint_id = ?", (tid, doomed)
    ).fetchone()
    (w_rowid,) = app.execute(
        "SELECT min(rowid) FROM writes WHERE thread_id = ? AND checkpoint_id = ?", (tid, doomed)
    ).fetchone()

    def take_rowids() -> None:  # both rows go, new rows of another thread take their rowids
        with app:
            for table, rowid in (("checkpoints", cp_rowid), ("writes", w_rowid)):
                app.execute(
                    f"CREATE TEMP TABLE moved AS SELECT * FROM {table} WHERE rowid = ?", (rowid,)
                )
                app.execute(f"DELETE FROM {table} WHERE rowid = ?", (rowid,))
                app.execute("UPDATE temp.moved SET thread_id = ?", (newcomer,))
                app.execute(
                    f"INSERT INTO {table} (rowid, {cols(app, table)}) SELECT ?, * FROM temp.moved",
                    (rowid,),
                )
                app.execute("DROP TABLE temp.moved")

    results: list[ThreadResult] = []
    report = sweep(
        saver, KEEP, batch_size=100, stop=on_call(2, take_rowids), progress=results.append
    )
    assert report.ok
    assert app.execute(
        "SELECT thread_id FROM checkpoints WHERE rowid = ?", (cp_rowid,)
    ).fetchone() == (newcomer,)
    assert app.execute("SELECT thread_id FROM writes WHERE rowid = ?", (w_rowid,)).fetchone() == (
        newcomer,
    )
    mine = next(r for r in results if r.thread_id == tid)
    assert mine.deleted_checkpoints == 12 and mine.warnings  # one of its 13 went before us
    assert stats(saver).threads[tid].checkpoints == 2
    app.close()
    conn.close()


def cols(conn: sqlite3.Connection, table: str) -> str:
    return ", ".join(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))


def test_a_delta_channel_fork_between_plan_and_flush_keeps_its_state(store: Path) -> None:
    """A DeltaChannel checkpoint rebuilds its state from its ancestors, and the flush
    deletes what a plan doomed before the run forked from it. The fork loses nothing:
    LangGraph starts a fork with a snapshot (no `counters_since_delta_snapshot`), so
    its checkpoints need only each other."""
    conn = connect(store)
    saver = SqliteSaver(conn)
    delta = build_delta_graph(SqliteSaver(connect(store)), snapshot_frequency=7)
    for i in range(9):
        delta.invoke({"items": [f"in{i}"]}, cfg("delta"))
    current = delta.get_state(cfg("delta"))
    fork: list[Any] = []

    def fork_an_old_checkpoint() -> None:  # between the plan and the flush
        old = history(delta, "delta")[-2]  # rebuilt from its parent
        delta.invoke({"items": ["fork"]}, cfg("delta", old))
        fork.append(delta.get_state(cfg("delta")))

    report = sweep(
        saver, RetentionPolicy(keep_last=1), batch_size=100, stop=on_call(2, fork_an_old_checkpoint)
    )
    assert report.ok and report.deleted_checkpoints > 0
    assert fork and fork[0].values["items"] != current.values["items"]
    assert delta.get_state(cfg("delta")) == fork[0]
    assert delta.get_state(current.config) == current
    assert orphans(store) == 0
    conn.close()


# -- stopped or failing between flush transactions ------------------------------------------


def stop_after(n: int) -> Callable[[], bool]:
    """A `stop` that says stop from its `n`th call on."""
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls >= n

    return stop


# 1 batch: call 1 before it, then one per flush transaction (12 of writes, 8 of checkpoints).
@pytest.mark.parametrize("calls", [3, 12, 16], ids=["in writes", "after writes", "in checkpoints"])
def test_a_stopped_flush_leaves_no_orphans_and_the_next_sweep_finishes(
    store: Path, small_transactions: None, calls: int
) -> None:
    conn = connect(store)
    saver = SqliteSaver(conn)
    graph = build_agent(saver)
    before, current = totals(saver), states(graph, IDS)
    results: list[ThreadResult] = []
    first = sweep(saver, KEEP, batch_size=100, stop=stop_after(calls), progress=results.append)
    assert first.stopped == "stop requested" and first.ok
    assert_counts_are_real(first, before, saver)
    assert orphans(store) == 0
    assert states(graph, IDS) == current
    assert len(results) == 6 and all(r.warnings for r in results if r.deleted_checkpoints < 13)
    assert first.deleted_checkpoints < 6 * 13

    second = sweep(saver, KEEP, batch_size=100)
    assert second.ok and second.stopped is None
    assert first.deleted_checkpoints + second.deleted_checkpoints == 6 * 13
    assert all(t.checkpoints == 2 for t in stats(saver).threads.values())
    assert orphans(store) == 0
    assert states(graph, IDS) == current
    chat(graph, IDS[0], 1)  # and the thread runs on
    conn.close()


def test_a_failing_flush_fails_its_threads_with_what_they_reached(
    store: Path, small_transactions: None
) -> None:
    conn = connect(store, timeout=0.05)
    saver = SqliteSaver(conn)
    other = connect(store)
    before = totals(saver)

    def lock_the_store() -> None:  # another writer holds the lock past our busy timeout
        other.execute("BEGIN IMMEDIATE")

    results: list[ThreadResult] = []
    report = sweep(
        saver, KEEP, batch_size=100, stop=on_call(6, lock_the_store), progress=results.append
    )
    other.rollback()
    assert not report.ok and set(report.errors) == set(IDS)
    assert all("database is locked" in msg for msg in report.errors.values())
    # The failed threads' results carry what their committed transactions deleted, and
    # the report's totals count it: 4 transactions of writes ran.
    reached = [sum(getattr(r, k) for r in results) for k in COUNTS]
    assert reached[0] == 0 and reached[1] == 40
    assert [getattr(report, k) for k in COUNTS] == reached
    after = totals(saver)
    assert reached == [before[0] - after[0], before[1] - after[1], before[2] - after[2]]
    assert orphans(store) == 0
    again = sweep(saver, KEEP)
    assert again.ok and reached[1] + again.deleted_writes == before[1] - totals(saver)[1]
    assert all(t.checkpoints == 2 for t in stats(saver).threads.values())
    other.close()
    conn.close()


# -- async ----------------------------------------------------------------------------------


async def test_async_staged_sweep_equals_the_dry_run_and_stops_cleanly(
    store: Path, small_transactions: None
) -> None:
    async with AsyncSqliteSaver.from_conn_string(str(store)) as saver:
        graph = build_agent(saver)
        current = {tid: await graph.aget_state(cfg(tid)) for tid in IDS}
        planned: list[ThreadResult] = []
        dry = await asweep(saver, KEEP, dry_run=True, progress=planned.append)
        done: list[ThreadResult] = []
        first = await asweep(saver, KEEP, stop=stop_after(10), progress=done.append)
        assert first.stopped == "stop requested" and orphans(store) == 0
        second = await asweep(saver, KEEP, progress=done.append)
        assert second.ok and second.stopped is None
        totals_by_thread: dict[str, list[int]] = {}
        for r in done:
            t = totals_by_thread.setdefault(r.thread_id, [0, 0, 0])
            t[0] += r.deleted_checkpoints
            t[1] += r.deleted_writes
            t[2] += r.bytes_freed
        assert totals_by_thread == {
            r.thread_id: [r.deleted_checkpoints, r.deleted_writes, r.bytes_freed] for r in planned
        }
        assert dry.deleted_checkpoints == 6 * 13
        assert {tid: await graph.aget_state(cfg(tid)) for tid in IDS} == current
        assert orphans(store) == 0


def test_a_small_file_is_swept_batch_by_batch(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage, "STAGE_ABOVE_BYTES", 256 * 1024 * 1024)  # the default
    conn = connect(store)
    saver = SqliteSaver(conn)

    assert SqliteBackend(saver).open_stage() is None
    report = sweep(saver, RetentionPolicy(keep_last=2))

    assert report.ok and {s.checkpoints for s in stats(saver).threads.values()} == {2}
    assert conn.execute(ORPHANS_SQL).fetchone() == (0,)


def test_a_file_over_the_bound_stages_on_sync_and_async_savers(store: Path) -> None:
    assert isinstance(SqliteBackend(SqliteSaver(connect(store))).open_stage(), SqliteStage)

    async def opened() -> object:
        async with AsyncSqliteSaver.from_conn_string(str(store)) as saver:
            return await AsyncSqliteBackend(saver).aopen_stage()

    assert isinstance(asyncio.run(opened()), SqliteStage)
