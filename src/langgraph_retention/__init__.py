"""Retention for LangGraph checkpoints: keep the newest N per thread, delete the rest."""

from langgraph_retention.engine import (
    aprune_thread,
    astats,
    asweep,
    iter_stats,
    prune_thread,
    stats,
    sweep,
)
from langgraph_retention.errors import DeltaChannelError, RetentionError, UnsupportedSaverError
from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.report import PruneReport, Stats, ThreadResult, ThreadStats
from langgraph_retention.saver import PruneError, RetainingCounters, RetainingSaver
from langgraph_retention.worker import BackgroundPruner, PrunerCounters

__all__ = [
    "BackgroundPruner",
    "DeltaChannelError",
    "PruneError",
    "PruneReport",
    "PrunerCounters",
    "RetainingCounters",
    "RetainingSaver",
    "RetentionError",
    "RetentionPolicy",
    "Stats",
    "ThreadResult",
    "ThreadStats",
    "UnsupportedSaverError",
    "aprune_thread",
    "astats",
    "asweep",
    "iter_stats",
    "prune_thread",
    "stats",
    "sweep",
]
