"""The FastAPI router over real async savers, opened in the app's lifespan as an async app
does: the seed's endpoints, a background sweep as a task of the app's loop, health."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from langgraph_retention import RetentionPolicy, astats
from langgraph_retention.demo import SEED_THREAD_ID
from langgraph_retention.web import make_router

from .stores import populated_url
from .web_clients import AUTH, TOKEN

THREADS = [(SEED_THREAD_ID, 3), ("客服/会话 7", 2)]  # 5 checkpoints a turn
KINDS = ["sqlite", "postgres", "redis"]


@asynccontextmanager
async def async_saver(kind: str, url: str) -> AsyncIterator[Any]:
    if kind == "sqlite":
        async with AsyncSqliteSaver.from_conn_string(url.removeprefix("sqlite:///")) as saver:
            yield saver
        return
    if kind == "postgres":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        async with AsyncPostgresSaver.from_conn_string(url) as pg_saver:
            yield pg_saver
        return
    from langgraph.checkpoint.redis.aio import AsyncRedisSaver

    async with AsyncRedisSaver.from_conn_string(url) as redis_saver:
        yield redis_saver


def app_for(kind: str, url: str, counts: dict[str, int]) -> FastAPI:
    """An async app whose lifespan opens the saver (as the app's own, over its data) and
    mounts the router on it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with async_saver(kind, url) as saver:
            app.include_router(make_router(saver, RetentionPolicy(keep_last=4), token=TOKEN))
            app.state.saver = saver
            yield
            found = await astats(saver)
            counts.update({tid: ts.checkpoints for tid, ts in found.threads.items()})

    return FastAPI(lifespan=lifespan)


@pytest.mark.parametrize("kind", KINDS)
def test_the_router_prunes_and_sweeps_on_an_async_saver(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = populated_url(kind, request, tmp_path, THREADS)
    after: dict[str, int] = {}
    with TestClient(app_for(kind, url, after)) as client:
        stats = client.get("/api/cleanup/stats", headers=AUTH).json()
        one = client.post(
            f"/api/cleanup/thread/{quote(SEED_THREAD_ID, safe='')}",
            json={"keep_count": 3},
            headers=AUTH,
        )
        job = client.post("/api/cleanup/all", json={"background": True}, headers=AUTH).json()
        deadline = time.monotonic() + 60
        while job["finished_at"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
            job = client.get(f"/api/cleanup/jobs/{job['job_id']}", headers=AUTH).json()
        health = client.get("/healthz")

    assert stats["thread_stats"] == {SEED_THREAD_ID: 15, "客服/会话 7": 10}
    assert one.status_code == 200 and one.json()["remaining_count"] == 3
    assert job["status"] == "completed" and job["failed_threads"] == 0
    assert job["result"]["processed_threads"] == 2
    assert health.status_code == 200
    assert after == {SEED_THREAD_ID: 3, "客服/会话 7": 4}
