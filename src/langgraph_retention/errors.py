"""Errors raised by langgraph-retention; every one says what happened and what was kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langgraph_retention.lock import LockHolder

__all__ = [
    "DeltaChannelError",
    "RetentionError",
    "StoreNotReadyError",
    "StoreUnavailableError",
    "SweepLockHeld",
    "UnsupportedSaverError",
    "UsageError",
]


class RetentionError(Exception):
    """Base class for errors raised by langgraph-retention."""


class DeltaChannelError(RetentionError):
    """A thread's DeltaChannel history cannot be pruned safely; nothing was deleted."""


class UnsupportedSaverError(RetentionError, TypeError):
    """The checkpointer is not one langgraph-retention knows how to prune."""


class UsageError(RetentionError, ValueError):
    """A command line, URL, duration, cron expression or setting is wrong; nothing was touched."""


class StoreNotReadyError(RetentionError):
    """The store has no LangGraph checkpoint tables or indexes (or an older schema).

    langgraph-retention never creates or migrates a schema: the app's own `saver.setup()`
    does that. Nothing was read or deleted.
    """


class StoreUnavailableError(RetentionError, ConnectionError):
    """The store's server could not be reached (or stopped answering); the operation
    did not complete, and what it had not committed was not deleted."""


class SweepLockHeld(RetentionError):
    """Another sweeper holds the store's sweep lock; this sweep did not start."""

    def __init__(self, holder: LockHolder) -> None:
        super().__init__(f"another sweep holds the lock: {holder}")
        self.holder = holder
