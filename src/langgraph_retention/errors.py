"""Errors raised by langgraph-retention; every one says what happened and what was kept."""

from __future__ import annotations

__all__ = ["DeltaChannelError", "RetentionError", "UnsupportedSaverError"]


class RetentionError(Exception):
    """Base class for errors raised by langgraph-retention."""


class DeltaChannelError(RetentionError):
    """A thread's DeltaChannel history cannot be pruned safely; nothing was deleted."""


class UnsupportedSaverError(RetentionError, TypeError):
    """The checkpointer is not one langgraph-retention knows how to prune."""
