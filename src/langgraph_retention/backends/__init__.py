"""Backend lookup: which storage module prunes a given checkpointer object.

Savers are matched by class (module and name, anywhere in the MRO) so the optional
server packages are imported only when their saver is actually used.
"""

from __future__ import annotations

import importlib
from typing import Any

from langgraph_retention.errors import UnsupportedSaverError

from .base import Backend

__all__ = ["SUPPORTED_SAVERS", "Backend", "resolve_backend"]

# (saver module, saver class, backend module, backend class)
_REGISTRY: tuple[tuple[str, str, str, str], ...] = (
    ("langgraph.checkpoint.memory", "InMemorySaver", "memory", "MemoryBackend"),
    ("langgraph.checkpoint.sqlite", "SqliteSaver", "sqlite", "SqliteBackend"),
    ("langgraph.checkpoint.sqlite.aio", "AsyncSqliteSaver", "sqlite", "AsyncSqliteBackend"),
    ("langgraph.checkpoint.redis", "RedisSaver", "redis", "RedisBackend"),
    ("langgraph.checkpoint.redis.aio", "AsyncRedisSaver", "redis", "AsyncRedisBackend"),
    ("langgraph.checkpoint.postgres", "PostgresSaver", "postgres", "PostgresBackend"),
    ("langgraph.checkpoint.postgres.aio", "AsyncPostgresSaver", "postgres", "AsyncPostgresBackend"),
)

SUPPORTED_SAVERS: tuple[str, ...] = tuple(cls for _mod, cls, _b, _bc in _REGISTRY)


def resolve_backend(saver: Any) -> Backend:
    """The backend for `saver` (a RetainingSaver is seen through to the saver it wraps).

    Raises `UnsupportedSaverError` (a `TypeError`) naming the supported savers.
    """
    inner = getattr(saver, "retention_wrapped_saver", None)
    if inner is not None:
        saver = inner
    for cls in type(saver).__mro__:
        for mod, name, backend_mod, backend_cls in _REGISTRY:
            if cls.__module__ == mod and cls.__qualname__ == name:
                module = importlib.import_module(f"{__name__}.{backend_mod}")
                backend: Backend = getattr(module, backend_cls)(saver)
                return backend
    raise UnsupportedSaverError(
        f"langgraph-retention cannot prune a {type(saver).__module__}.{type(saver).__qualname__}; "
        f"supported checkpointers: {', '.join(SUPPORTED_SAVERS)}"
    )
