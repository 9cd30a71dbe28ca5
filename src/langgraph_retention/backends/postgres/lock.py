"""The PostgreSQL sweep lock: a session advisory lock on a connection of our own.

The lock's key is a constant class plus the oid of the `checkpoints` table the
search_path reaches, so two stores in one database (two schemas) lock apart. The
connection's `application_name` carries our host and pid, so a sweep that finds the lock
taken can say who holds it (from `pg_locks` and `pg_stat_activity`). A lock connection
that breaks loses the lock on the server; `held` notices it with one round trip.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from datetime import datetime
from typing import Any

import psycopg

from langgraph_retention.lock import LockHolder, SweepLock

from .connection import own_conninfo, server_name

__all__ = ["LOCK_CLASS", "PostgresSweepLock"]

logger = logging.getLogger("langgraph_retention.lock")

#: The high half of the advisory lock key ("LGRT"); the low half is the table's oid.
LOCK_CLASS = 0x4C475254

_KEY = f"(({LOCK_CLASS}::bigint << 32) | to_regclass('checkpoints')::oid::bigint)"
TRY_LOCK_SQL = f"SELECT pg_try_advisory_lock({_KEY})"
UNLOCK_SQL = f"SELECT pg_advisory_unlock({_KEY})"
PING_SQL = "SELECT 1"
# The session holding our key in this database (a bigint key shows as classid/objid,
# objsubid 1). Other roles' sessions may show fewer columns; we print what we see.
HOLDER_SQL = f"""
SELECT a.pid, a.application_name, host(a.client_addr), a.client_hostname, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid = {LOCK_CLASS} AND l.objid = to_regclass('checkpoints')::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
LIMIT 1
"""

#: How a lock connection names itself: `application_name` is cut at 63 bytes.
APPLICATION_NAME = "langgraph-retention sweep {pid}@{host}"
_APPLICATION_NAME = re.compile(r"^langgraph-retention sweep (\d+)@(.*)$")
CONNECT_TIMEOUT_SECONDS = 10


class PostgresSweepLock(SweepLock):
    """An advisory lock held on a dedicated autocommit connection for a whole sweep."""

    def __init__(self, saver_conn: Any) -> None:
        self._conninfo = own_conninfo(saver_conn)
        self._server = server_name(saver_conn)
        self._conn: psycopg.Connection[Any] | None = None

    def acquire(self) -> LockHolder | None:
        name = APPLICATION_NAME.format(pid=os.getpid(), host=socket.gethostname())
        conn = psycopg.connect(
            self._conninfo,
            autocommit=True,
            application_name=name.encode()[:63].decode(errors="ignore"),
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
        )
        try:
            row = conn.execute(TRY_LOCK_SQL).fetchone()
            if row is not None and row[0]:
                self._conn = conn
                return None
            holder = self._holder(conn.execute(HOLDER_SQL).fetchone())
        except BaseException:
            conn.close()
            raise
        conn.close()
        return holder

    def _holder(self, row: tuple[Any, ...] | None) -> LockHolder:
        how = f"PostgreSQL advisory lock on {self._server}"
        if row is None:  # released between our two statements
            return LockHolder(how=how)
        backend_pid, app, addr, client_host, started = row
        match = _APPLICATION_NAME.match(app or "")
        where = client_host or addr or "local socket"
        return LockHolder(
            host=match.group(2) if match else where,
            pid=int(match.group(1)) if match else None,
            since=started if isinstance(started, datetime) else None,
            how=f"{how}, server backend {backend_pid} from {where}",
        )

    def held(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed:
            return False
        try:
            conn.execute(PING_SQL)
        except psycopg.Error as exc:
            logger.error("sweep lock connection to %s lost: %s", self._server, exc)
            return False
        return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not conn.closed and not conn.broken:
                conn.execute(UNLOCK_SQL)
        except psycopg.Error as exc:  # closing the session releases it anyway
            logger.warning("sweep lock on %s: unlock failed (%s); closing", self._server, exc)
        finally:
            conn.close()
