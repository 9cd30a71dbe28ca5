"""The richest retention policy the benchmarks run beside keep-last (issue 10's cost).

Every rule is on, so every fact is read (sizes, metadata tags, interrupts, thread spans)
and every rule runs, yet on a freshly built store it deletes about what keep-last does:
the time and calendar rules pick checkpoints keep-last keeps anyway, `keep_first` adds
one per thread, the byte cap does not bind and no thread has idled long enough to expire.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from langgraph_retention import RetentionPolicy


def richest(keep: int) -> RetentionPolicy:
    return RetentionPolicy(
        keep_last=keep,
        keep_within=timedelta(seconds=1),
        keep_hourly=3,
        keep_daily=2,
        keep_weekly=2,
        keep_monthly=2,
        keep_first=True,
        keep_interrupted=True,
        keep_tagged="pin",
        max_bytes=64 * 1024 * 1024,
        idle_ttl=timedelta(days=365),
        max_age=timedelta(days=3650),
        timezone="Europe/Berlin",
    )


def richest_uncapped(keep: int) -> RetentionPolicy:
    """The richest policy without `max_bytes`: what the byte cap alone costs, by difference."""
    return replace(richest(keep), max_bytes=None)
