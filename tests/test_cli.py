"""The `langgraph-retention` command end to end, in a subprocess, on a real SQLite store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from langgraph_retention.demo import SEED_THREAD_ID, build_agent, populate

THREADS = [(SEED_THREAD_ID, 9), ("客服 7", 3), ("plain", 2)]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langgraph_retention.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    conn = sqlite3.connect(str(path), check_same_thread=False)
    populate(build_agent(SqliteSaver(conn)), THREADS)
    conn.close()
    return path


def count_checkpoints(path: Path, thread_id: str | None = None) -> int:
    conn = sqlite3.connect(str(path))
    try:
        if thread_id is None:
            return int(conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0])
        row = conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = ?", (thread_id,))
        return int(row.fetchone()[0])
    finally:
        conn.close()


def test_stats_json_lists_every_thread(db: Path) -> None:
    proc = run("stats", "--url", f"sqlite:///{db}", "--json")

    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data["threads"]) == {tid for tid, _ in THREADS}
    assert data["total_checkpoints"] == count_checkpoints(db)


def test_stats_text_names_the_threads(db: Path) -> None:
    proc = run("stats", "--url", f"sqlite:///{db}", "--thread", SEED_THREAD_ID)

    assert proc.returncode == 0, proc.stderr
    assert SEED_THREAD_ID in proc.stdout and "1 threads" in proc.stdout


def test_prune_all_keeps_n_per_thread(db: Path) -> None:
    proc = run("prune", "--url", f"sqlite:///{db}", "--keep-last", "3", "--all", "--json")

    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["errors"] == {} and report["deleted_checkpoints"] > 0
    assert all(count_checkpoints(db, tid) <= 3 for tid, _ in THREADS)


def test_prune_one_thread_leaves_the_others(db: Path) -> None:
    others = count_checkpoints(db, "plain")

    proc = run("prune", "--url", f"sqlite:///{db}", "--keep-last", "2", "--thread", SEED_THREAD_ID)

    assert proc.returncode == 0, proc.stderr
    assert count_checkpoints(db, SEED_THREAD_ID) == 2
    assert count_checkpoints(db, "plain") == others


def test_dry_run_deletes_nothing(db: Path) -> None:
    before = count_checkpoints(db)

    proc = run("prune", "--url", f"sqlite:///{db}", "--keep-last", "1", "--all", "--dry-run")

    assert proc.returncode == 0, proc.stderr
    assert "would delete" in proc.stdout
    assert count_checkpoints(db) == before


def test_vacuum_shrinks_the_file(db: Path) -> None:
    run("prune", "--url", f"sqlite:///{db}", "--keep-last", "1", "--all")
    size_before_vacuum = db.stat().st_size

    proc = run("prune", "--url", f"sqlite:///{db}", "--keep-last", "1", "--all", "--vacuum")

    assert proc.returncode == 0, proc.stderr
    assert db.stat().st_size < size_before_vacuum


def test_storage_is_reused_after_prune(db: Path) -> None:
    run("prune", "--url", f"sqlite:///{db}", "--keep-last", "1", "--all")
    conn = sqlite3.connect(str(db))
    free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
    conn.close()
    assert free_pages > 0  # freed pages go back to SQLite's free list for new rows


def test_unknown_scheme_is_a_usage_error() -> None:
    proc = run("stats", "--url", "mongodb://localhost/x")

    assert proc.returncode == 2
    assert "unknown URL scheme 'mongodb'" in proc.stderr


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = run("prune", "--url", f"sqlite:///{tmp_path}/nope.db", "--keep-last", "2", "--all")

    assert proc.returncode == 2
    assert "no such SQLite database" in proc.stderr
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.parametrize("bad", ["0", "-3", "five"])
def test_bad_keep_last_is_a_usage_error(db: Path, bad: str) -> None:
    proc = run("prune", "--url", f"sqlite:///{db}", "--keep-last", bad, "--all")

    assert proc.returncode == 2
    assert "--keep-last" in proc.stderr


def test_prune_needs_thread_or_all(db: Path) -> None:
    proc = run("prune", "--url", f"sqlite:///{db}", "--keep-last", "2")

    assert proc.returncode == 2


def test_unreachable_server_is_a_usage_error_in_one_line() -> None:
    proc = run("stats", "--url", "postgresql://postgres@127.0.0.1:1/none")

    assert proc.returncode == 2
    assert "cannot connect to PostgreSQL" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_failed_thread_exits_one(tmp_path: Path) -> None:
    from .graphs import broken_delta_store

    path = tmp_path / "delta.db"
    broken_delta_store(path, "d").close()

    proc = run("prune", "--url", f"sqlite:///{path}", "--keep-last", "1", "--all")

    assert proc.returncode == 1
    assert "DeltaChannel" in proc.stderr


def test_demo_runs_and_verifies(tmp_path: Path) -> None:
    proc = run("demo", "--db", str(tmp_path / "demo.db"))

    assert proc.returncode == 0, proc.stderr
    assert "demo passed" in proc.stdout
    assert f"'{SEED_THREAD_ID}': current state unchanged" in proc.stdout
