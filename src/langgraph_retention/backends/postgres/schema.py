"""Is this a LangGraph checkpoint database? Read-only: we never create or migrate tables."""

from __future__ import annotations

import re
from collections.abc import Generator, Mapping
from typing import Any

from langgraph_retention.errors import StoreNotReadyError

__all__ = ["TABLES", "missing_relation", "missing_tables_program", "not_ready"]

#: The tables `PostgresSaver.setup()` creates and a prune reads or deletes from.
TABLES = ("checkpoints", "checkpoint_writes", "checkpoint_blobs")

# `to_regclass` follows the search_path, as the saver's own unqualified statements do.
TABLES_SQL = "SELECT " + ", ".join(f"to_regclass('{t}') IS NOT NULL" for t in TABLES)

Statement = tuple[str, Mapping[str, Any], bool]


def missing_tables_program() -> Generator[Statement, list[tuple[Any, ...]], list[str]]:
    """The checkpoint tables the connection's search_path does not reach."""
    ((*present,),) = yield TABLES_SQL, {}, True
    return [t for t, ok in zip(TABLES, present, strict=True) if not ok]


def not_ready(server: str, missing: list[str]) -> StoreNotReadyError:
    """The error for a database without (all of) the saver's tables."""
    return StoreNotReadyError(
        f"PostgreSQL at {server} has no LangGraph checkpoint tables ({', '.join(missing)} "
        "missing); check the URL, or run your app's saver.setup() first: "
        "langgraph-retention never creates or migrates tables"
    )


def missing_relation(exc: Exception) -> list[str]:
    """The relation an `UndefinedTable` error names ('relation "x" does not exist')."""
    match = re.search(r'relation "([^"]+)"', str(exc))
    return [match.group(1)] if match else list(TABLES)
