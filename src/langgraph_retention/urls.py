"""Open the official checkpointer for a storage URL (the CLI, daemon, API and workers).

`sqlite:///relative.db`, `sqlite:////absolute.db`, `postgresql://…` / `postgres://…`,
`redis://…` / `rediss://…`. Anything else is a `UsageError` naming the schemes.
Nothing here calls a saver's `setup()`: a store is opened as it is, and `open_store`
refuses one without the saver's tables or indexes instead of creating them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from langgraph_retention.errors import StoreUnavailableError, UsageError

__all__ = [
    "SCHEMES",
    "UsageError",
    "check_url",
    "open_saver",
    "open_store",
    "redact",
    "sqlite_path",
]

SCHEMES = ("sqlite", "postgresql", "postgres", "redis", "rediss")


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:///…` URL names (three slashes: relative, four: absolute)."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise UsageError(
            f"bad SQLite URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    return Path(rest[1:])


def redact(url: str) -> str:
    """`url` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _scheme(url: str) -> str:
    if not isinstance(url, str) or not url:
        raise UsageError("no store URL: give --url or set LANGGRAPH_RETENTION_URL")
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise UsageError(
            f"unknown URL scheme {scheme or '(none)'!r} in {redact(url)!r}; "
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
    """Yield the sync checkpointer for `url`, as it is (no `setup()`); close it after.

    Missing files, unknown schemes and missing extras raise `UsageError`; a server that
    cannot be reached raises `StoreUnavailableError`.
    """
    scheme = _scheme(url)
    check_url(url)
    if scheme == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(str(sqlite_path(url)), check_same_thread=False)
        try:
            yield SqliteSaver(conn)
        finally:
            conn.close()
    elif scheme in ("postgresql", "postgres"):
        try:
            import psycopg
            from langgraph.checkpoint.postgres import PostgresSaver
        except ImportError as exc:
            raise UsageError(
                "PostgreSQL support is not installed: pip install 'langgraph-retention[postgres]'"
            ) from exc
        with ExitStack() as stack:
            try:
                pg_saver = stack.enter_context(PostgresSaver.from_conn_string(url))
            except psycopg.OperationalError as exc:
                detail = " ".join(str(exc).split())
                raise StoreUnavailableError(
                    f"cannot connect to PostgreSQL at {redact(url)}: {detail}"
                ) from exc
            yield pg_saver
    else:
        try:
            from langgraph.checkpoint.redis import RedisSaver
        except ImportError as exc:
            raise UsageError(
                "Redis support is not installed: pip install 'langgraph-retention[redis]'"
            ) from exc
        with RedisSaver.from_conn_string(url) as redis_saver:
            yield redis_saver


@contextmanager
def open_store(url: str) -> Iterator[Any]:
    """`open_saver`, then check the store holds LangGraph checkpoints: a database or
    server without the saver's tables or indexes is a `StoreNotReadyError` (a wrong URL,
    most often); nothing is created."""
    from langgraph_retention.engine import check_store

    with open_saver(url) as saver:
        check_store(saver)
        yield saver
