"""Is this a LangGraph SQLite checkpoint file? Read-only: tables are never created here."""

from __future__ import annotations

import sqlite3
from collections.abc import Generator, Sequence
from typing import Any

from langgraph_retention.errors import StoreNotReadyError

__all__ = [
    "DATABASE_FILE_SQL",
    "TABLES",
    "database_file_program",
    "missing_table",
    "missing_tables_program",
    "not_ready",
]

#: The tables `SqliteSaver.setup()` creates.
TABLES = ("checkpoints", "writes")

TABLES_SQL = f"""
SELECT name FROM sqlite_master
WHERE type = 'table' AND name IN ({", ".join(f"'{t}'" for t in TABLES)})
"""

#: The main database's file ('' for in-memory and temporary databases).
DATABASE_FILE_SQL = "SELECT file FROM pragma_database_list WHERE name = 'main'"


def missing_tables_program() -> Generator[tuple[str, Sequence[Any]], list[Any], list[str]]:
    """The checkpoint tables the database lacks."""
    found = {row[0] for row in (yield TABLES_SQL, ())}
    return [t for t in TABLES if t not in found]


def database_file_program() -> Generator[tuple[str, Sequence[Any]], list[Any], str]:
    """The main database's file path ('' when it has none)."""
    rows = yield DATABASE_FILE_SQL, ()
    return str(rows[0][0] or "") if rows else ""


def not_ready(missing: Sequence[str]) -> StoreNotReadyError:
    """The error for a file without (all of) the saver's tables."""
    return StoreNotReadyError(
        f"this SQLite database has no LangGraph checkpoint tables ({', '.join(missing)} "
        "missing); check the path, or run your app's saver.setup() first: "
        "langgraph-retention never creates tables"
    )


def missing_table(exc: Exception) -> StoreNotReadyError | None:
    """The error for a statement that failed on a missing checkpoint table, else None."""
    if isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc):
        return not_ready([str(exc).rsplit(":", 1)[-1].strip()])
    return None
