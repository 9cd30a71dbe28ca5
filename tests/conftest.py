"""Savers for the tests, one per official checkpointer, on real storage.

`sync_saver` and `async_saver` are parametrized over every backend this project prunes;
server-backed ones come from the plugin modules below, which start a real PostgreSQL or
Redis (with RedisJSON + RediSearch) on a free port when none is reachable.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

pytest_plugins = [
    p
    for p in ("tests.fixtures_postgres", "tests.fixtures_redis")
    if (Path(__file__).parent / f"{p.split('.')[-1]}.py").exists()
]

HAVE_POSTGRES = "tests.fixtures_postgres" in pytest_plugins
HAVE_REDIS = "tests.fixtures_redis" in pytest_plugins

SYNC_KINDS = (
    ["memory", "sqlite"]
    + (["postgres"] if HAVE_POSTGRES else [])
    + (["redis"] if HAVE_REDIS else [])
)
ASYNC_KINDS = (
    ["memory", "async_sqlite"]
    + (["async_postgres"] if HAVE_POSTGRES else [])
    + (["async_redis"] if HAVE_REDIS else [])
)


@pytest.fixture(params=SYNC_KINDS)
def sync_saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh, empty, set-up sync checkpointer of each supported kind."""
    kind = request.param
    if kind == "memory":
        yield InMemorySaver()
    elif kind == "sqlite":
        conn = sqlite3.connect(str(tmp_path / "checkpoints.db"), check_same_thread=False)
        try:
            saver = SqliteSaver(conn)
            saver.setup()  # as an app's first run does; we never create tables ourselves
            yield saver
        finally:
            conn.close()
    else:  # "postgres" / "redis": a sync fixture of the plugin, fresh storage per test
        yield request.getfixturevalue(f"{kind}_saver")


@pytest.fixture(params=ASYNC_KINDS)
async def async_saver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh, empty, set-up async checkpointer of each supported kind."""
    kind = request.param
    if kind == "memory":
        yield InMemorySaver()
    elif kind == "async_sqlite":
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "checkpoints.db")) as saver:
            await saver.setup()
            yield saver
    else:  # the plugin's async context manager, opened on this test's event loop
        plugin = importlib.import_module(f"tests.fixtures_{kind.removeprefix('async_')}")
        url = request.getfixturevalue(f"{kind.removeprefix('async_')}_url")
        async with plugin.open_async_saver(url) as saver:
            yield saver
