"""SQLite write transactions: a sweep's flush (`test_sqlite_stage.py`) deletes by rowid in
one statement per table per transaction, with a wider page cache and (in WAL mode)
`synchronous = NORMAL`, both put back afterwards (the app's connection is left as it
was)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from langgraph_retention import RetentionPolicy, asweep, stats, sweep
from langgraph_retention.backends.sqlite import stage
from langgraph_retention.backends.sqlite.settings import WRITE_CACHE_KIB, wider_cache
from langgraph_retention.demo import build_agent, populate

THREADS = [(f"user {i}:{i:03d}", 3) for i in range(7)]  # 15 checkpoints each


@pytest.fixture(autouse=True)
def staged_at_any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage these small files' sweeps as a big store's are (the flush's transactions)."""
    monkeypatch.setattr(stage, "STAGE_ABOVE_BYTES", -1)


def _store(path: Path) -> None:
    conn = sqlite3.connect(str(path), check_same_thread=False)
    populate(build_agent(SqliteSaver(conn)), THREADS)
    conn.close()


def _orphans(conn: sqlite3.Connection) -> int:
    return int(
        conn.execute(
            "SELECT count(*) FROM writes w WHERE NOT EXISTS (SELECT 1 FROM checkpoints c "
            "WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns "
            "AND c.checkpoint_id = w.checkpoint_id)"
        ).fetchone()[0]
    )


def test_wider_cache_never_shrinks() -> None:
    assert wider_cache(-2000, 4096) == -WRITE_CACHE_KIB  # SQLite's default: 2 MB
    assert wider_cache(100, 4096) == -WRITE_CACHE_KIB  # 100 pages
    assert wider_cache(-WRITE_CACHE_KIB, 4096) is None
    assert wider_cache(-4 * WRITE_CACHE_KIB, 4096) is None  # the app's is bigger: kept
    assert wider_cache(WRITE_CACHE_KIB, 4096) is None  # 16,384 pages of 4 KiB


@pytest.mark.parametrize("app_cache", [-2000, -4 * WRITE_CACHE_KIB])
def test_sweep_widens_cache_inside_transaction_only(tmp_path: Path, app_cache: int) -> None:
    path = tmp_path / "store.db"
    _store(path)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.execute(f"PRAGMA cache_size = {app_cache}")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    report = sweep(SqliteSaver(conn), RetentionPolicy(keep_last=2), batch_size=3)
    conn.set_trace_callback(None)
    assert report.ok and report.deleted_checkpoints == 7 * 13
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == app_cache
    widened = [s for s in statements if s == f"PRAGMA cache_size = {-WRITE_CACHE_KIB}"]
    begins = [i for i, s in enumerate(statements) if s == "BEGIN IMMEDIATE"]
    assert len(begins) == 2  # the flush: one transaction of writes, one of checkpoints
    if app_cache == -2000:
        assert len(widened) == 2
        for i in begins:  # widened right before each write transaction, put back after
            assert f"PRAGMA cache_size = {-WRITE_CACHE_KIB}" in statements[i - 2 : i]
            c = statements.index("COMMIT", i)
            assert statements[c + 1 : c + 3].count(f"PRAGMA cache_size = {app_cache}") == 1
        assert statements.count(f"PRAGMA cache_size = {app_cache}") == 2
    else:
        assert widened == []  # an app's bigger cache is never touched
    assert _orphans(conn) == 0
    assert all(t.checkpoints == 2 for t in stats(SqliteSaver(conn)).threads.values())
    conn.close()


def test_one_delete_per_table_per_flush_transaction(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _store(path)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    before = stats(SqliteSaver(conn))
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    report = sweep(SqliteSaver(conn), RetentionPolicy(keep_last=4), batch_size=100)
    conn.set_trace_callback(None)
    deletes = [s.split()[2] for s in statements if s.lstrip().startswith("DELETE")]
    assert deletes == ["writes", "checkpoints"]
    after = stats(SqliteSaver(conn))
    assert report.deleted_checkpoints == before.total_checkpoints - after.total_checkpoints
    assert report.deleted_writes == sum(t.writes for t in before.threads.values()) - sum(
        t.writes for t in after.threads.values()
    )
    assert report.bytes_freed == sum(t.bytes for t in before.threads.values()) - sum(
        t.bytes for t in after.threads.values()
    )
    assert _orphans(conn) == 0
    conn.close()


async def test_async_sweep_puts_cache_back(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    _store(path)
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        report = await asweep(saver, RetentionPolicy(keep_last=3), batch_size=4)
        assert report.ok and report.deleted_checkpoints == 7 * 12
        async with saver.conn.execute("PRAGMA cache_size") as cur:
            assert (await cur.fetchone())[0] == -2000


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_commit_without_fsync_in_wal_mode_only(tmp_path: Path, journal_mode: str) -> None:
    path = tmp_path / "store.db"
    _store(path)  # the saver's setup() switches the file to WAL
    conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.execute(f"PRAGMA journal_mode = {journal_mode}")
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL, SQLite's default
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    report = sweep(SqliteSaver(conn), RetentionPolicy(keep_last=2), batch_size=4)
    conn.set_trace_callback(None)
    assert report.ok and report.deleted_checkpoints == 7 * 13
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    begins = [i for i, s in enumerate(statements) if s == "BEGIN IMMEDIATE"]
    assert len(begins) == 2  # the flush: writes, then checkpoints
    normal = [i for i, s in enumerate(statements) if s == "PRAGMA synchronous = 1"]
    full = [i for i, s in enumerate(statements) if s == "PRAGMA synchronous = 2"]
    if journal_mode == "wal":  # NORMAL from before each BEGIN to after its COMMIT
        assert len(normal) == len(full) == 2
        for b, n, f in zip(begins, normal, full, strict=True):
            c = statements.index("COMMIT", b)
            assert n < b < c < f
    else:  # a rollback journal keeps the app's FULL: NORMAL could lose more than a prune
        assert normal == full == []
    assert _orphans(conn) == 0
    conn.close()
