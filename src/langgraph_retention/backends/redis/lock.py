"""The Redis sweep lock: one key with an expiry, renewed while the sweep runs.

`SET key value NX PX ttl` takes it; the value is the holder (host, pid, since) plus a
random token, so renewing (`PEXPIRE`) and releasing (`DEL`) go through a compare-and-act
Lua script and never touch a lock someone else took after ours expired. A thread renews
it every third of its ttl; when a renewal finds the key gone or another holder's, or the
server stays unreachable past the ttl, the lock is lost and the sweep stops after the
batch in progress.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from typing import Any

import redis
from redis.exceptions import RedisError

from langgraph_retention.lock import LockHolder, SweepLock, this_process

__all__ = ["DEFAULT_TTL_SECONDS", "RedisSweepLock", "lock_key", "sync_client"]

logger = logging.getLogger("langgraph_retention.lock")

#: Seconds a lock outlives a sweeper that vanished without releasing it.
DEFAULT_TTL_SECONDS = 30.0

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: Connection settings an asyncio client's pool shares with a blocking client.
_PORTABLE_SETTINGS = frozenset(
    {
        "host", "port", "db", "username", "password", "path", "client_name",
        "socket_timeout", "socket_connect_timeout", "socket_keepalive",
        "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data",
        "ssl_check_hostname", "ssl_min_version", "ssl_ciphers",
    }
)  # fmt: skip


def lock_key(checkpoint_prefix: str) -> str:
    """The lock's key: one per saver prefix, outside the saver's indexed key spaces."""
    return f"langgraph_retention:sweep_lock:{checkpoint_prefix}"


def sync_client(client: Any) -> tuple[redis.Redis, bool]:
    """A blocking client on the same server as `client`, and whether we made it (and
    must close it): the lock renews from a thread, whatever the saver's client is."""
    if isinstance(client, redis.Redis):
        return client, False
    pool = client.connection_pool
    settings = {k: v for k, v in pool.connection_kwargs.items() if k in _PORTABLE_SETTINGS}
    kind = pool.connection_class.__name__
    if "Unix" in kind:
        connection_class: type[Any] = redis.UnixDomainSocketConnection
    elif "SSL" in kind:
        connection_class = redis.SSLConnection
    else:
        connection_class = redis.Connection
    own = redis.ConnectionPool(connection_class=connection_class, **settings)
    return redis.Redis(connection_pool=own), True


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisSweepLock(SweepLock):
    """A lock key on the saver's Redis, kept alive by a renewal thread while held."""

    def __init__(self, client: Any, key: str, ttl: float = DEFAULT_TTL_SECONDS) -> None:
        self._client, self._owns_client = sync_client(client)
        self._key = key
        self._ttl_ms = max(int(ttl * 1000), 1000)
        self._value: str | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> LockHolder | None:
        holder = this_process()
        value = json.dumps({**json.loads(holder.to_json()), "token": secrets.token_hex(16)})
        for _attempt in range(3):  # the holder may release between our SET and GET
            if self._client.set(self._key, value, nx=True, px=self._ttl_ms):
                self._value = value
                self._lost.clear()
                self._stop.clear()
                self._renewer = threading.Thread(
                    target=self._renew, name="langgraph-retention lock renewal", daemon=True
                )
                self._renewer.start()
                return None
            current = _text(self._client.get(self._key))
            if current is not None:
                ttl = self._client.pttl(self._key)
                how = f"Redis key {self._key!r}, expires in {max(int(ttl), 0) / 1000:.0f}s"
                return LockHolder.from_json(current, how=how)
        return LockHolder(how=f"Redis key {self._key!r}")

    def _renew(self) -> None:
        value, interval = self._value, self._ttl_ms / 3000
        assert value is not None  # started by acquire, after it set the value
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            try:
                renewed = self._client.eval(RENEW_LUA, 1, self._key, value, self._ttl_ms)
            except RedisError as exc:
                if time.monotonic() - last_ok > self._ttl_ms / 1000:
                    logger.error("sweep lock %r lost: Redis unreachable (%s)", self._key, exc)
                    self._lost.set()
                    return
                logger.warning("sweep lock %r: renewal failed, retrying (%s)", self._key, exc)
                continue
            if not renewed:
                logger.error("sweep lock %r lost: expired or taken by another sweeper", self._key)
                self._lost.set()
                return
            last_ok = time.monotonic()

    def held(self) -> bool:
        return self._value is not None and not self._lost.is_set()

    def release(self) -> None:
        value, self._value = self._value, None
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        try:
            if value is not None and not self._lost.is_set():
                self._client.eval(RELEASE_LUA, 1, self._key, value)
        except RedisError as exc:  # it expires by itself within the ttl
            logger.warning("sweep lock %r: release failed (%s); it will expire", self._key, exc)
        finally:
            if self._owns_client:
                self._client.close()
                self._client.connection_pool.disconnect()
