"""Does this Redis hold a `RedisSaver` store? Read-only: indexes are never created here."""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from typing import Any

from redis.exceptions import ResponseError

from langgraph_retention.errors import StoreNotReadyError

__all__ = ["indexes_program", "not_ready"]

_NO_INDEX = re.compile(r"no such index|unknown index", re.I)
_NO_MODULE = re.compile(r"unknown command", re.I)


def indexes_program(indexes: Sequence[str]) -> Generator[list[tuple[Any, ...]], list[Any], None]:
    """`FT.INFO` of each index the saver searches: an error reply if one is missing."""
    yield [("FT.INFO", name) for name in indexes]


def not_ready(exc: Exception, where: str) -> StoreNotReadyError | None:
    """The error for a server without the saver's search indexes or modules, else None."""
    if not isinstance(exc, ResponseError):
        return None
    if _NO_INDEX.search(str(exc)):
        return StoreNotReadyError(
            f"Redis at {where} has no LangGraph checkpoint indexes ({exc}); check the URL, "
            "or run your app's saver.setup() first: langgraph-retention never creates indexes"
        )
    if _NO_MODULE.search(str(exc)):
        return StoreNotReadyError(
            f"Redis at {where} lacks the RediSearch and RedisJSON modules RedisSaver needs ({exc})"
        )
    return None
