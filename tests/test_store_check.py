"""Commands that read or prune never create or migrate a schema: a store without the
saver's tables or indexes is refused with a clear error (exit 2) and left as it was."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from langgraph_retention import RetentionPolicy, sweep
from langgraph_retention.engine import check_store
from langgraph_retention.errors import StoreNotReadyError
from langgraph_retention.urls import open_saver

from .fixtures_postgres import postgres_server, scratch_database
from .fixtures_redis import flush
from .stores import cli

COMMANDS = [
    ("stats",),
    ("prune", "--keep-last", "5", "--all"),
    ("prune", "--keep-last", "5", "--all", "--dry-run"),
    ("prune", "--keep-last", "5", "--thread", "wang1:20250729235038043"),
    ("schedule", "--keep-last", "5", "--cron", "0 2 * * *"),
]


@pytest.fixture
def other_sqlite(tmp_path: Path) -> Path:
    """An application's SQLite file with no LangGraph tables, in rollback-journal mode."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    return path


def sqlite_shape(path: Path) -> tuple[list[str], str]:
    conn = sqlite3.connect(str(path))
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master ORDER BY name")]
        return tables, conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def empty_postgres() -> Iterator[str]:
    """A database with no tables at all."""
    with postgres_server() as admin, scratch_database(admin, prefix="lgr_empty") as url:
        yield url


def postgres_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def empty_redis(redis_url: str) -> str:
    flush(redis_url)  # drops the search indexes too
    return redis_url


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_sqlite_file_without_checkpoint_tables_is_refused_untouched(
    other_sqlite: Path, command: tuple[str, ...]
) -> None:
    proc = cli(*command, "--url", f"sqlite:///{other_sqlite}")

    assert proc.returncode == 2, proc.stderr
    assert "no LangGraph checkpoint tables" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sqlite_shape(other_sqlite) == (["users"], "delete")  # no tables, still no WAL


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_postgres_database_without_checkpoint_tables_is_refused_untouched(
    empty_postgres: str, command: tuple[str, ...]
) -> None:
    proc = cli(*command, "--url", empty_postgres)

    assert proc.returncode == 2, proc.stderr
    assert "no LangGraph checkpoint tables" in proc.stderr and "checkpoints" in proc.stderr
    assert postgres_tables(empty_postgres) == []


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_redis_without_checkpoint_indexes_is_refused_untouched(
    empty_redis: str, command: tuple[str, ...]
) -> None:
    proc = cli(*command, "--url", empty_redis)

    assert proc.returncode == 2, proc.stderr
    assert "no LangGraph checkpoint indexes" in proc.stderr
    client = redis.Redis.from_url(empty_redis)
    assert client.execute_command("FT._LIST") == [] and client.dbsize() == 0


def test_library_sweep_on_an_empty_sqlite_file_creates_nothing(other_sqlite: Path) -> None:
    with open_saver(f"sqlite:///{other_sqlite}") as saver:
        with pytest.raises(StoreNotReadyError):
            check_store(saver)
        with pytest.raises(StoreNotReadyError):
            sweep(saver, RetentionPolicy(keep_last=1))

    assert sqlite_shape(other_sqlite) == (["users"], "delete")


def test_library_sweep_on_an_empty_postgres_database_creates_nothing(empty_postgres: str) -> None:
    with open_saver(empty_postgres) as saver, pytest.raises(StoreNotReadyError):
        sweep(saver, RetentionPolicy(keep_last=1))

    assert postgres_tables(empty_postgres) == []


def test_missing_database_is_a_usage_error(empty_postgres: str) -> None:
    proc = cli("stats", "--url", empty_postgres.rsplit("/", 1)[0] + "/no_such_database")

    assert proc.returncode == 2 and "cannot connect to PostgreSQL" in proc.stderr
    assert "no_such_database" in proc.stderr
