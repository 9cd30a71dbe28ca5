"""Cron and interval triggers, and the firing decision, on fixed times (no clock at all)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from langgraph_retention.errors import UsageError
from langgraph_retention.triggers import decide, make_trigger

BERLIN = ZoneInfo("Europe/Berlin")


def fires(trigger: object, start: datetime, count: int) -> list[datetime]:
    """The next `count` fire times after `start`, as the scheduler walks them."""
    out: list[datetime] = []
    previous = None
    now = start
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, now)  # type: ignore[attr-defined]
        out.append(fire)
        previous = now = fire
    return out


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def in_berlin(moment: datetime) -> datetime:
    """Berlin wall time with the right offset (through UTC: see scheduler._when)."""
    return moment.astimezone(UTC).astimezone(BERLIN)


def test_daily_cron_fires_at_local_time() -> None:
    trigger = make_trigger(cron="0 2 * * *", timezone="Europe/Berlin", start=local(2026, 6, 1))

    (first, second) = fires(trigger, local(2026, 6, 1, 12), 2)

    assert first == local(2026, 6, 2, 2) and second == local(2026, 6, 3, 2)


def test_daily_cron_fires_an_hour_late_on_the_night_clocks_go_forward() -> None:
    # 2026-03-29 in Berlin: 02:00 becomes 03:00, so 02:30 does not exist that night.
    trigger = make_trigger(cron="30 2 * * *", timezone="Europe/Berlin", start=local(2026, 3, 27))

    times = [in_berlin(t) for t in fires(trigger, local(2026, 3, 27, 12), 3)]

    assert [t.strftime("%m-%d %H:%M %Z") for t in times] == [
        "03-28 02:30 CET",
        "03-29 03:30 CEST",
        "03-30 02:30 CEST",
    ]


def test_daily_cron_fires_once_on_the_night_clocks_go_back() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice.
    trigger = make_trigger(cron="30 2 * * *", timezone="Europe/Berlin", start=local(2026, 10, 23))

    times = [in_berlin(t) for t in fires(trigger, local(2026, 10, 23, 12), 3)]

    assert [t.strftime("%m-%d %H:%M %Z") for t in times] == [
        "10-24 02:30 CEST",
        "10-25 02:30 CEST",
        "10-26 02:30 CET",
    ]


def test_hourly_cron_keeps_both_hours_when_clocks_go_back() -> None:
    trigger = make_trigger(cron="0 * * * *", timezone="Europe/Berlin", start=local(2026, 10, 25))

    times = fires(trigger, datetime(2026, 10, 24, 23, 30, tzinfo=UTC), 3)

    assert [t.astimezone(UTC).hour for t in times] == [0, 1, 2]  # 02:00 CEST, 02:00 CET, 03:00


@pytest.mark.parametrize(
    ("dow", "weekday"),
    [("1", "Monday"), ("0", "Sunday"), ("7", "Sunday"), ("mon", "Monday"), ("5", "Friday")],
)
def test_day_of_week_numbers_follow_crontab(dow: str, weekday: str) -> None:
    trigger = make_trigger(cron=f"0 9 * * {dow}", timezone="UTC", start=datetime.now(UTC))

    (fire,) = fires(trigger, datetime(2026, 11, 25, 12, tzinfo=UTC), 1)  # a Wednesday

    assert fire.strftime("%A %H:%M") == f"{weekday} 09:00"


def test_weekday_range_covers_monday_to_friday() -> None:
    trigger = make_trigger(cron="0 9 * * 1-5", timezone="UTC", start=datetime.now(UTC))

    times = fires(trigger, datetime(2026, 11, 28, 12, tzinfo=UTC), 5)  # a Saturday

    assert [t.strftime("%a") for t in times] == ["Mon", "Tue", "Wed", "Thu", "Fri"]


def test_daily_macro_is_midnight() -> None:
    trigger = make_trigger(cron="@daily", timezone="UTC", start=datetime.now(UTC))

    (fire,) = fires(trigger, datetime(2026, 11, 25, 12, tzinfo=UTC), 1)

    assert fire == datetime(2026, 11, 26, tzinfo=UTC)


def test_interval_fires_every_period_from_start() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    trigger = make_trigger(every=timedelta(hours=2), timezone="UTC", start=start)

    assert fires(trigger, start, 2) == [start + timedelta(hours=2), start + timedelta(hours=4)]


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("61 * * * *", "61"),
        ("0 2 * *", "5 fields"),
        ("0 2 1 * 1", "not both"),
        ("0 2 * * 8", "day of week"),
        ("every night", "5 fields"),
    ],
)
def test_bad_cron_expression_is_a_usage_error(cron: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        make_trigger(cron=cron, timezone="UTC", start=datetime.now(UTC))


def test_unknown_time_zone_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="Mars/Olympus"):
        make_trigger(cron="0 2 * * *", timezone="Mars/Olympus", start=datetime.now(UTC))


def test_interval_under_a_second_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="at least 1s"):
        make_trigger(every=timedelta(0), timezone="UTC", start=datetime.now(UTC))


HOURLY_FROM = datetime(2026, 1, 1, tzinfo=UTC)


def hourly() -> object:
    return make_trigger(every=timedelta(hours=1), timezone="UTC", start=HOURLY_FROM)


def test_fire_on_time_runs_once_and_schedules_the_next() -> None:
    firing = decide(
        hourly(), HOURLY_FROM, HOURLY_FROM, coalesce=True, misfire_grace=timedelta(minutes=10)
    )

    assert firing.runs == (HOURLY_FROM,) and firing.missed == ()
    assert firing.next_run == HOURLY_FROM + timedelta(hours=1)


def test_late_fires_coalesce_into_the_latest() -> None:
    now = HOURLY_FROM + timedelta(hours=5, minutes=3)

    firing = decide(hourly(), HOURLY_FROM, now, coalesce=True, misfire_grace=timedelta(minutes=10))

    assert firing.runs == (HOURLY_FROM + timedelta(hours=5),) and firing.missed == ()
    assert firing.next_run == HOURLY_FROM + timedelta(hours=6)


def test_fire_later_than_the_grace_time_is_missed() -> None:
    now = HOURLY_FROM + timedelta(minutes=30)

    firing = decide(hourly(), HOURLY_FROM, now, coalesce=True, misfire_grace=timedelta(minutes=10))

    assert firing.runs == () and firing.missed == (HOURLY_FROM,)
    assert firing.next_run == HOURLY_FROM + timedelta(hours=1)


def test_without_coalescing_every_fire_within_grace_runs() -> None:
    now = HOURLY_FROM + timedelta(hours=2)

    firing = decide(hourly(), HOURLY_FROM, now, coalesce=False, misfire_grace=timedelta(hours=1))

    assert firing.runs == (HOURLY_FROM + timedelta(hours=1), HOURLY_FROM + timedelta(hours=2))
    assert firing.missed == (HOURLY_FROM,)
