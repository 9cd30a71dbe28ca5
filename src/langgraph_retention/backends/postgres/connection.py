"""Where a `PostgresSaver` connects: a printable server name, and connection settings for
a connection of our own (the sweep lock's), whether the saver holds a connection or a pool."""

from __future__ import annotations

from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool

__all__ = ["own_conninfo", "server_name"]

#: Pool `kwargs` that configure the psycopg connection object, not the libpq connection.
_CONNECTION_OPTIONS = frozenset(
    {"autocommit", "prepare_threshold", "row_factory", "cursor_factory", "context"}
)


def _pool_settings(pool: ConnectionPool | AsyncConnectionPool) -> tuple[str, dict[str, Any]]:
    # Either may be a callable computing them at connect time; then none is known.
    conninfo = pool.conninfo if isinstance(pool.conninfo, str) else ""
    kwargs = pool.kwargs if isinstance(pool.kwargs, dict) else {}
    params = {
        k: v
        for k, v in kwargs.items()
        if k not in _CONNECTION_OPTIONS and isinstance(v, str | int) and not isinstance(v, bool)
    }
    return conninfo, params


def server_name(conn: Any) -> str:
    """host:port/dbname of a connection or pool, never its password."""
    if isinstance(conn, ConnectionPool | AsyncConnectionPool):
        conninfo, params = _pool_settings(conn)
        info = conninfo_to_dict(conninfo, **params)
    else:
        info = conninfo_to_dict(conn.info.dsn)
    host = str(info.get("host") or info.get("hostaddr") or "localhost")
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def own_conninfo(conn: Any) -> str:
    """A connection string reaching the same database as the saver's connection or pool,
    password included (a connection's `dsn` leaves it out)."""
    if isinstance(conn, ConnectionPool | AsyncConnectionPool):
        conninfo, params = _pool_settings(conn)
        return make_conninfo(conninfo, **params)
    password = conn.info.password
    return make_conninfo(conn.info.dsn, **({"password": password} if password else {}))
