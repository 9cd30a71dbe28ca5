"""The store a Celery worker process prunes: opened once per process, closed at shutdown."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

from langgraph_retention.engine import check_store
from langgraph_retention.urls import open_store, redact

__all__ = ["SaverFactory", "WorkerStore"]

logger = logging.getLogger("langgraph_retention.tasks")

#: Makes the saver a worker prunes: a sync checkpointer, or a context manager yielding
#: one (`lambda: PostgresSaver.from_conn_string(url)`); called once per worker process.
SaverFactory = Callable[[], Any]


class WorkerStore:
    """One saver per worker process, opened on first use (after the pool forked, so no
    connection is ever shared across processes) and reused by every later task.

    Tasks of one process take turns on it (a `--pool threads` worker prunes one shard at
    a time per store). `discard` drops a saver whose connection broke; the next task opens
    a fresh one. Nothing here calls `setup()`: a store without the saver's tables or
    indexes is refused (`StoreNotReadyError`).
    """

    def __init__(self, *, url: str | None, factory: SaverFactory | None) -> None:
        self.url = url
        self._factory = factory
        self._lock = threading.RLock()
        self._saver: Any = None
        self._stack: ExitStack | None = None
        self._pid: int | None = None
        #: Savers inherited through fork: never closed here (closing would end the
        #: parent's session on the shared socket), only kept from the garbage collector.
        self._inherited: list[Any] = []

    @property
    def name(self) -> str:
        """The store for logs: the URL without its password, or the factory's name."""
        if self.url is not None:
            return redact(self.url)
        return getattr(self._factory, "__qualname__", repr(self._factory))

    def _open(self) -> Any:
        stack = ExitStack()
        try:
            if self.url is not None:
                saver = stack.enter_context(open_store(self.url))
            else:
                assert self._factory is not None
                made = self._factory()
                if isinstance(made, AbstractContextManager):
                    made = stack.enter_context(made)
                saver = made
                check_store(saver)
        except BaseException:
            stack.close()
            raise
        self._saver, self._stack, self._pid = saver, stack, os.getpid()
        logger.info("opened the store %s in worker process %d", self.name, self._pid)
        return saver

    @contextmanager
    def use(self) -> Iterator[Any]:
        """The process's saver, opened if needed, for the length of the block."""
        with self._lock:
            if self._saver is not None and self._pid != os.getpid():
                self._inherited.append((self._saver, self._stack))
                self._saver = self._stack = self._pid = None
            yield self._saver if self._saver is not None else self._open()

    def _close_locked(self, why: str) -> None:
        stack, self._stack, self._saver = self._stack, None, None
        if stack is None or self._pid != os.getpid():
            return
        try:
            stack.close()
            logger.info("closed the store %s in worker process %d (%s)", self.name, self._pid, why)
        except Exception as exc:  # the connection may be the thing that broke
            logger.warning("closing the store %s failed (%s): %s", self.name, why, exc)

    def discard(self) -> None:
        """Drop the saver (its connection broke); the next task opens a fresh one."""
        with self._lock:
            self._close_locked("discarded after a storage error")

    def close(self, **_signal: Any) -> None:
        """Close the saver at worker (process) shutdown; a Celery signal receiver."""
        with self._lock:
            self._close_locked("worker shutdown")
