"""When scheduled sweeps fire: APScheduler 3 triggers, and the pure firing decision.

`make_trigger` turns a crontab expression or an interval into an APScheduler trigger
(its cron arithmetic handles time zones and DST). Two crontab habits APScheduler 3 does
not share are fixed here: day-of-week numbers follow crontab (0 and 7 are Sunday, where
APScheduler counts from Monday), and on the night clocks go back a daily time fires once,
not twice. `decide` is the firing rule, after APScheduler's job options: every fire time
that passed since the last decision is due; with `coalesce` only the latest runs; one
older than `misfire_grace` when the scheduler gets to it is missed, not run late.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from tzlocal import get_localzone

from langgraph_retention.errors import UsageError

__all__ = ["Firing", "decide", "make_trigger", "parse_crontab", "resolve_timezone"]

#: crontab's `@` shorthands.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: Weekday names in crontab's numbering: 0 (and 7) is Sunday.
CRONTAB_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_TERM = re.compile(r"^(\*|\d+(?:-\d+)?)(?:/(\d+))?$")
FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")


def resolve_timezone(name: str | tzinfo | None) -> tzinfo:
    """A time zone from an IANA name ('Europe/Berlin'); None is this machine's zone."""
    if name is None:
        return get_localzone()
    if isinstance(name, tzinfo):
        return name
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"unknown time zone {name!r}; use an IANA name like 'Europe/Berlin'"
        ) from None


def _weekdays(field: str) -> str:
    """A crontab day-of-week field with its numbers as names (APScheduler counts from
    Monday); names and `*` pass through."""
    if field == "*" or re.fullmatch(r"[a-zA-Z,\-]+", field):
        return field.lower()
    days: set[int] = set()
    for term in field.split(","):
        match = _DOW_TERM.match(term)
        if not match:
            raise ValueError(f"bad day of week {term!r}")
        span, step = match.group(1), int(match.group(2) or 1)
        first, last = (0, 6) if span == "*" else (int(span.split("-")[0]), int(span.split("-")[-1]))
        if not (0 <= first <= 7 and 0 <= last <= 7 and first <= last and step >= 1):
            raise ValueError(f"bad day of week {term!r} (0-7, Sunday is 0 or 7)")
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(CRONTAB_WEEKDAYS[d] for d in sorted(days))


class _WallClockCron(CronTrigger):  # type: ignore[misc]
    """APScheduler's cron trigger, firing once per wall-clock time: when clocks go back,
    02:30 happens twice, and cron (unlike APScheduler 3) runs a job at a fixed hour only
    once. Jobs with a wildcard hour (`0 * * * *`) run in both hours, as in cron."""

    def get_next_fire_time(self, previous: datetime | None, now: datetime) -> datetime | None:
        fire: datetime | None = super().get_next_fire_time(previous, now)
        if previous is not None and fire is not None and _wall(fire) == _wall(previous):
            fire = super().get_next_fire_time(fire, fire)  # the repeat: skip to the next
        return fire


def _wall(moment: datetime) -> tuple[int, ...]:
    """Wall-clock fields of a fire time, canonical (see `scheduler._when` on offsets)."""
    return moment.astimezone(UTC).astimezone(moment.tzinfo).timetuple()[:6]


def parse_crontab(expr: str, timezone: tzinfo) -> CronTrigger:
    """A trigger for a five-field crontab expression (or `@daily`, ...), in `timezone`."""
    text = " ".join(str(expr).split())
    fields = MACROS.get(text.lower(), text).split(" ")
    if len(fields) != 5:
        raise UsageError(
            f"bad cron expression {expr!r}: want 5 fields (minute hour day-of-month month "
            "day-of-week), e.g. '0 2 * * *' for 02:00 every day"
        )
    minute, hour, day, month, dow = fields
    if day != "*" and dow != "*":
        raise UsageError(
            f"bad cron expression {expr!r}: restrict the day of month or the day of week, "
            "not both (crontab fires on either, which is rarely what a sweep wants)"
        )
    kind = CronTrigger if hour.startswith("*") else _WallClockCron
    try:
        trigger: CronTrigger = kind(
            minute=minute, hour=hour, day=day, month=month, day_of_week=_weekdays(dow),
            timezone=timezone,
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(f"bad cron expression {expr!r}: {exc}") from None
    return trigger


def make_trigger(
    *,
    cron: str | None = None,
    every: timedelta | None = None,
    timezone: str | tzinfo | None = None,
    start: datetime,
) -> BaseTrigger:
    """The trigger for exactly one of `cron` or `every`; an interval's first fire is
    `start` + `every`."""
    if (cron is None) == (every is None):
        raise UsageError("give exactly one schedule: a cron expression or an interval")
    zone = resolve_timezone(timezone)
    if cron is not None:
        return parse_crontab(cron, zone)
    assert every is not None
    if every < timedelta(seconds=1):
        raise UsageError(f"the interval must be at least 1s, got {every}")
    return IntervalTrigger(seconds=every.total_seconds(), start_date=start + every, timezone=zone)


@dataclass(frozen=True, slots=True)
class Firing:
    """What a job does at a decision: scheduled times to run now, scheduled times missed
    (too late to run), and its next scheduled time (None: never again)."""

    runs: tuple[datetime, ...]
    missed: tuple[datetime, ...]
    next_run: datetime | None


def decide(
    trigger: Any,
    next_run: datetime,
    now: datetime,
    *,
    coalesce: bool,
    misfire_grace: timedelta,
) -> Firing:
    """The firing decision at `now` for a job whose next scheduled time is `next_run`."""
    due: list[datetime] = []
    fire: datetime | None = next_run
    while fire is not None and fire <= now:
        due.append(fire)
        fire = trigger.get_next_fire_time(fire, now)
    candidates = due[-1:] if coalesce else due
    runs = tuple(t for t in candidates if now - t <= misfire_grace)
    missed = tuple(t for t in candidates if now - t > misfire_grace)
    return Firing(runs=runs, missed=missed, next_run=fire)
