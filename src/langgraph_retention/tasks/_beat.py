"""Celery beat schedules from the cron expressions and durations the rest of the product takes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab, schedule

from langgraph_retention.config import parse_duration
from langgraph_retention.errors import UsageError

__all__ = ["cron_schedule", "every_schedule"]

_CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


def cron_schedule(expr: str) -> Any:
    """A `celery.schedules.crontab` from a 5-field cron line (`"0 2 * * *"`: 02:00 daily,
    in the app's `timezone`); `UsageError` naming the expression otherwise."""
    parts = expr.split() if isinstance(expr, str) else []
    if len(parts) != len(_CRON_FIELDS):
        raise UsageError(
            f"cron: expected 5 fields (minute hour day-of-month month day-of-week), got {expr!r}"
        )
    try:
        return crontab(**dict(zip(_CRON_FIELDS, parts, strict=True)))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cron {expr!r}: {exc}") from None


def every_schedule(every: timedelta | str | float) -> Any:
    """A `celery.schedules.schedule` running every `every` (a timedelta, seconds, or a
    duration such as `"2h"` or `"1h30m"`)."""
    if isinstance(every, str):
        every = parse_duration(every, name="every")
    elif isinstance(every, int | float) and not isinstance(every, bool):
        every = timedelta(seconds=every)
    if not isinstance(every, timedelta) or every <= timedelta(0):
        raise UsageError(f"every: must be a positive duration like '2h', got {every!r}")
    return schedule(run_every=every)
