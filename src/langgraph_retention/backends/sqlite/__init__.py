"""SQLite storage (`SqliteSaver`, `AsyncSqliteSaver`): prune, locks, schema checks."""

from .backend import AsyncSqliteBackend, SqliteBackend

__all__ = ["AsyncSqliteBackend", "SqliteBackend"]
