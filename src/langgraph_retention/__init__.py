"""Retention for LangGraph checkpoints: keep the newest N per thread, delete the rest."""

from langgraph_retention.engine import (
    acheck_store,
    aprune_thread,
    astats,
    astats_page,
    asweep,
    check_store,
    iter_stats,
    prune_thread,
    stats,
    stats_page,
    sweep,
)
from langgraph_retention.errors import (
    DeltaChannelError,
    RetentionError,
    StoreNotReadyError,
    StoreUnavailableError,
    SweepLockHeld,
    UnsupportedSaverError,
    UsageError,
)
from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.report import PruneReport, Stats, ThreadResult, ThreadStats
from langgraph_retention.saver import PruneError, RetainingCounters, RetainingSaver
from langgraph_retention.scheduler import Scheduler, SchedulerCounters
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
    "Scheduler",
    "SchedulerCounters",
    "Stats",
    "StoreNotReadyError",
    "StoreUnavailableError",
    "SweepLockHeld",
    "ThreadResult",
    "ThreadStats",
    "UnsupportedSaverError",
    "UsageError",
    "acheck_store",
    "aprune_thread",
    "astats",
    "astats_page",
    "asweep",
    "check_store",
    "iter_stats",
    "prune_thread",
    "stats",
    "stats_page",
    "sweep",
]
