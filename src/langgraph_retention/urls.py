"""Open the official checkpointer for a storage URL (used by the CLI and the demo).

`sqlite:///relative.db`, `sqlite:////absolute.db`, `postgresql://…` / `postgres://…`,
`redis://…` / `rediss://…`. Anything else is a `UsageError` naming the schemes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["SCHEMES", "UsageError", "check_url", "open_saver", "sqlite_path"]

SCHEMES = ("sqlite", "postgresql", "postgres", "redis", "rediss")


class UsageError(ValueError):
    """The command line or URL is wrong; nothing was touched."""


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:///…` URL names (three slashes: relative, four: absolute)."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise UsageError(
            f"bad SQLite URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    return Path(rest[1:])


def _scheme(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise UsageError(
            f"unknown URL scheme {scheme or '(none)'!r} in {url!r}; "
            "use sqlite:///path.db, postgresql://user@host/db or redis://host:port"
        )
    return scheme


def check_url(url: str) -> None:
    """Raise `UsageError` for a URL no backend can open (before connecting anywhere)."""
    if _scheme(url) == "sqlite":
        path = sqlite_path(url)
        if not path.is_file():
            raise UsageError(f"no such SQLite database: {path}")


@contextmanager
def open_saver(url: str) -> Iterator[Any]:
    """Yield a ready sync checkpointer for `url`; closes it afterwards.

    Missing files, unknown schemes and missing extras raise `UsageError`; an
    unreachable server raises the driver's connection error.
    """
    scheme = _scheme(url)
    check_url(url)
    if scheme == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(str(sqlite_path(url)), check_same_thread=False)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
        finally:
            conn.close()
    elif scheme in ("postgresql", "postgres"):
        try:
            from langgraph.checkpoint.postgres import PostgresSaver
        except ImportError as exc:
            raise UsageError(
                "PostgreSQL support is not installed: pip install 'langgraph-retention[postgres]'"
            ) from exc
        with PostgresSaver.from_conn_string(url) as pg_saver:
            pg_saver.setup()
            yield pg_saver
    else:
        try:
            from langgraph.checkpoint.redis import RedisSaver
        except ImportError as exc:
            raise UsageError(
                "Redis support is not installed: pip install 'langgraph-retention[redis]'"
            ) from exc
        with RedisSaver.from_conn_string(url) as redis_saver:
            redis_saver.setup()
            yield redis_saver
