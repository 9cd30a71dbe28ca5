"""PostgreSQL storage (`PostgresSaver`, `AsyncPostgresSaver`): prune, locks, schema checks."""

from .backend import AsyncPostgresBackend, PostgresBackend, PostgresUnavailableError

__all__ = ["AsyncPostgresBackend", "PostgresBackend", "PostgresUnavailableError"]
