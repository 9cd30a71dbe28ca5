"""Pytest plugin: a real PostgreSQL for the test session, and savers on it.

If a server accepts connections on 127.0.0.1 (port `LGR_TEST_PG_PORT`, default 5432; trust
auth, user postgres), the session creates a database of its own there and drops it at the
end. Otherwise it starts a throwaway cluster with the Debian binaries under
/usr/lib/postgresql/*/bin (installing the `postgresql` package first if they are missing)
on a free port in a temporary directory, and stops and deletes it at the end. The benchmark
starts its server the same way, through `postgres_server` and `scratch_database`.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

__all__ = [
    "open_async_saver",
    "postgres_saver",
    "postgres_server",
    "postgres_url",
    "reset_tables",
    "scratch_database",
]

#: Env var: the port of an existing server on 127.0.0.1 (trust auth, user postgres).
PORT_ENV = "LGR_TEST_PG_PORT"
HOST = "127.0.0.1"
DEFAULT_PORT = 5432
CONNECT_TIMEOUT_SECONDS = 3
START_TIMEOUT_SECONDS = 60

#: Empties every table of the saver's schema between tests.
TRUNCATE_SQL = "TRUNCATE checkpoints, checkpoint_blobs, checkpoint_writes"


def _url(port: int, dbname: str = "postgres") -> str:
    return f"postgresql://postgres@{HOST}:{port}/{dbname}"


def _accepts_connections(url: str) -> bool:
    """Whether a server answers at `url` and lets us in (connection refused: False)."""
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS):
            return True
    except psycopg.OperationalError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _pg_bin() -> Path:
    """The newest installed PostgreSQL's bin directory, installing the package if none is."""
    for attempt in range(2):
        found = sorted(
            (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        )
        if found:
            return found[-1]
        if attempt == 0:
            _apt_install_postgresql()
    raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")


def _apt_install_postgresql() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            "no PostgreSQL server reachable on "
            f"{HOST}:{os.environ.get(PORT_ENV, DEFAULT_PORT)} and none installed; "
            "install the `postgresql` package (or start a server and set LGR_TEST_PG_PORT)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)


def _as_postgres_user(cmd: Sequence[str]) -> list[str]:
    """initdb refuses to run as root: run the server tools as `postgres` then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return list(cmd)


@contextmanager
def _throwaway_cluster() -> Iterator[str]:
    """initdb + pg_ctl start on a free port in a temp dir; stopped and deleted afterwards."""
    bin_dir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="lgr-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    try:
        subprocess.run(
            _as_postgres_user(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--no-locale", "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        options = (
            f"-p {port} -c listen_addresses={HOST} -k {root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        started = subprocess.run(
            _as_postgres_user(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                 "-t", str(START_TIMEOUT_SECONDS), "-o", options, "start"]
            ),
            check=False,
            capture_output=True,
        )  # fmt: skip
        if started.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(
                f"pg_ctl start failed: {started.stderr.decode()}{started.stdout.decode()}"
                f"\n{server_log}"
            )
        try:
            yield _url(port)
        finally:
            subprocess.run(
                _as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                   "-w", "stop"]),
                check=True,
                capture_output=True,
            )  # fmt: skip
    finally:
        shutil.rmtree(root)


@contextmanager
def postgres_server() -> Iterator[str]:
    """A superuser URL of a running server: the local one if it answers, else our own."""
    port = int(os.environ.get(PORT_ENV, DEFAULT_PORT))
    if _accepts_connections(_url(port)):
        yield _url(port)
        return
    with _throwaway_cluster() as url:
        yield url


@contextmanager
def scratch_database(admin_url: str, prefix: str = "lgr_test") -> Iterator[str]:
    """A database of our own on the server (so parallel sessions never meet), dropped after."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_tables(url: str) -> None:
    """Create the saver's tables if needed and empty them."""
    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()
        with saver._cursor() as cur:
            cur.execute(TRUNCATE_SQL)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session's own, with the saver's tables created."""
    with postgres_server() as admin_url, scratch_database(admin_url) as url:
        reset_tables(url)
        yield url


@pytest.fixture
def postgres_saver(postgres_url: str) -> Iterator[PostgresSaver]:
    """A set-up `PostgresSaver` on its own connection, over empty tables."""
    reset_tables(postgres_url)
    with PostgresSaver.from_conn_string(postgres_url) as saver:
        saver.setup()
        yield saver


@asynccontextmanager
async def open_async_saver(url: str) -> AsyncIterator[AsyncPostgresSaver]:
    """A set-up `AsyncPostgresSaver` on its own connection, over empty tables."""
    async with AsyncPostgresSaver.from_conn_string(url) as saver:
        await saver.setup()
        async with saver._cursor() as cur:
            await cur.execute(TRUNCATE_SQL)
        yield saver
