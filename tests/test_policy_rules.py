"""The richer rules (restic-style): time windows, calendar buckets, first, interrupted,
tagged, max_bytes, thread expiry and the explanations, on generated UUIDv6 histories."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from langgraph_retention.policy import (
    BUCKETS,
    CheckpointEntry,
    Expiry,
    RetentionPolicy,
    checkpoint_time,
    expire_plan,
    plan_thread,
    thread_expiry,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def uuid6_at(when: datetime, seq: int = 0) -> str:
    """A canonical UUIDv6 checkpoint id made at `when` (ids sort as their times do)."""
    ticks = int((when - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 10_000_000)
    ticks += 0x01B21DD213814000
    value = ((ticks >> 12) & 0xFFFFFFFFFFFF) << 80 | (ticks & 0x0FFF) << 64
    value |= 0x6 << 76 | 0x8000 << 48 | (seq & 0xFFFFFFFFFFFF)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def history(times: Sequence[datetime], ns: str = "", **facts: object) -> list[CheckpointEntry]:
    """A linear history with a checkpoint at each of `times` (oldest first)."""
    ids = [uuid6_at(t, i) for i, t in enumerate(times)]
    return [
        CheckpointEntry(ns, cid, ids[i - 1] if i else None, **facts)  # type: ignore[arg-type]
        for i, cid in enumerate(ids)
    ]


def hours_ago(*hours: float) -> list[datetime]:
    return [NOW - timedelta(hours=h) for h in sorted(hours, reverse=True)]


def kept(entries: list[CheckpointEntry], policy: RetentionPolicy) -> list[int]:
    """Indexes (0 = oldest) of the kept checkpoints of a root-namespace history."""
    plan = plan_thread(entries, policy, now=NOW)
    ids = [e.checkpoint_id for e in entries]
    return sorted(ids.index(cid) for cid in plan.keep.get("", []))


def test_uuid6_ids_give_their_creation_time() -> None:
    assert checkpoint_time(uuid6_at(NOW)) == NOW


def test_keep_within_keeps_everything_younger() -> None:
    entries = history(hours_ago(50, 30, 5, 2, 1, 0))

    assert kept(entries, RetentionPolicy(keep_last=1, keep_within=timedelta(hours=6))) == [
        2, 3, 4, 5,
    ]  # fmt: skip


def test_keep_daily_keeps_the_newest_of_each_of_the_last_n_days_with_one() -> None:
    # Two checkpoints on each of five days; day 3 has none.
    days = [NOW - timedelta(days=d, hours=h) for d in (6, 5, 4, 2, 1) for h in (3, 1)]
    entries = history(sorted(days))

    assert kept(entries, RetentionPolicy(keep_last=1, keep_daily=3)) == [5, 7, 9]


def test_keep_daily_counts_days_in_the_policy_time_zone() -> None:
    # 23:30 and 00:30 UTC are one day apart in UTC but the same day in Shanghai (+8).
    times = [datetime(2026, 11, 23, 23, 30, tzinfo=UTC), datetime(2026, 11, 24, 0, 30, tzinfo=UTC)]
    entries = history(times) + history([NOW], ns="later")

    in_utc = plan_thread(entries, RetentionPolicy(keep_last=1, keep_daily=2), now=NOW)
    in_shanghai = plan_thread(
        entries, RetentionPolicy(keep_last=1, keep_daily=2, timezone="Asia/Shanghai"), now=NOW
    )

    assert len(in_utc.keep[""]) == 2 and len(in_shanghai.keep[""]) == 1


def test_keep_hourly_follows_a_local_clock_set_off_the_quarter_hour() -> None:
    # Liberia kept UTC-0:44:30 until 1972: 10:40 and 10:44:45 UTC are 09:55:30 and
    # 10:00:15 there, two local hours inside one UTC quarter hour.
    times = [datetime(1960, 5, 3, 10, 40, tzinfo=UTC), datetime(1960, 5, 3, 10, 44, 45, tzinfo=UTC)]
    entries = history(times)
    policy = RetentionPolicy(keep_last=1, keep_hourly=2, timezone="Africa/Monrovia")

    assert kept(entries, policy) == [0, 1]
    assert kept(entries, RetentionPolicy(keep_last=1, keep_hourly=2)) == [1]


@pytest.mark.parametrize(
    ("rule", "step", "expected"),
    [
        # 00:10, 00:50, 01:30, 02:10, 02:50, 03:30, 04:10, 04:50: hours 2, 3, 4
        ("keep_hourly", timedelta(minutes=40), [4, 5, 7]),
        # from Monday 5 January: ISO weeks 2, 2, 3, 3, 4, 4, 5, 6
        ("keep_weekly", timedelta(days=4), [5, 6, 7]),
        # Jan 5, Jan 25, Feb 14, Mar 6, Mar 26, Apr 15, May 5, May 25
        ("keep_monthly", timedelta(days=20), [4, 5, 7]),
    ],
)
def test_calendar_rules_keep_the_newest_of_each_bucket(
    rule: str, step: timedelta, expected: list[int]
) -> None:
    times = [datetime(2026, 1, 5, 0, 10, tzinfo=UTC) + i * step for i in range(8)]

    assert kept(history(times), RetentionPolicy(keep_last=1, **{rule: 3})) == expected


def test_keep_first_keeps_the_root_checkpoint() -> None:
    assert kept(history(hours_ago(5, 4, 3, 2)), RetentionPolicy(keep_last=1, keep_first=True)) == [
        0, 3,
    ]  # fmt: skip


def test_keep_interrupted_keeps_every_checkpoint_that_asked_a_human() -> None:
    entries = history(hours_ago(5, 4, 3, 2, 1))
    entries[1] = entries[1]._replace(interrupted=True)
    entries[3] = entries[3]._replace(interrupted=True)

    assert kept(entries, RetentionPolicy(keep_last=1, keep_interrupted=True)) == [1, 3, 4]


def test_keep_tagged_keeps_checkpoints_pinned_by_metadata() -> None:
    entries = history(hours_ago(5, 4, 3, 2, 1))
    entries[2] = entries[2]._replace(tags=frozenset({"pin"}))

    assert kept(entries, RetentionPolicy(keep_last=1, keep_tagged="pin")) == [2, 4]
    assert kept(entries, RetentionPolicy(keep_last=1, keep_tagged="other")) == [4]


def test_max_bytes_drops_the_oldest_soft_choices_until_the_thread_fits() -> None:
    entries = history(hours_ago(5, 4, 3, 2, 1), size=100)

    plan = plan_thread(entries, RetentionPolicy(keep_last=5, max_bytes=250), now=NOW)

    assert len(plan.keep[""]) == 2 and plan.kept_bytes == 200 and not plan.warnings


def test_max_bytes_never_drops_a_pinned_checkpoint_and_says_it_cannot_fit() -> None:
    entries = history(hours_ago(5, 4, 3, 2, 1), size=100)
    entries[0] = entries[0]._replace(tags=frozenset({"pin"}))

    plan = plan_thread(
        entries,
        RetentionPolicy(keep_last=5, keep_tagged="pin", max_bytes=150),
        thread_id="t",
        now=NOW,
    )

    assert plan.keep[""] == [entries[4].checkpoint_id, entries[0].checkpoint_id]
    assert plan.warnings and "over max_bytes=150" in plan.warnings[0]


def test_max_bytes_drops_a_soft_choice_with_its_delta_ancestry() -> None:
    needs = frozenset({"items"})
    entries = history(hours_ago(5, 4, 3, 2, 1), size=100)
    for i in (1, 2):  # 1 and 2 rebuild `items` from 0
        entries[i] = entries[i]._replace(delta_needs=needs)

    plan = plan_thread(entries, RetentionPolicy(keep_last=3, max_bytes=250), now=NOW)

    assert plan.keep[""] == [entries[4].checkpoint_id, entries[3].checkpoint_id]


def test_explain_gives_every_reason_a_checkpoint_is_kept() -> None:
    entries = history(hours_ago(50, 3, 2, 1), size=10)
    entries[0] = entries[0]._replace(interrupted=True)
    policy = RetentionPolicy(keep_last=2, keep_daily=1, keep_first=True, keep_interrupted=True)

    plan = plan_thread(entries, policy, now=NOW, explain=True)

    assert plan.reasons is not None
    reasons = [plan.reasons[("", e.checkpoint_id)] for e in entries]
    assert reasons == [
        ("first", "interrupted"),
        (),
        ("last 2/2",),
        ("last 1/2", "daily 2026-11-25", "newest"),
    ]


def test_explain_names_the_kept_checkpoint_an_ancestor_is_kept_for() -> None:
    entries = history(hours_ago(3, 2, 1))
    entries[2] = entries[2]._replace(delta_needs=frozenset({"items"}))

    plan = plan_thread(entries, RetentionPolicy(keep_last=1), now=NOW, explain=True)

    assert plan.reasons is not None
    assert plan.reasons[("", entries[1].checkpoint_id)] == (
        f"ancestor of kept {entries[2].checkpoint_id}",
    )


def test_explain_says_what_max_bytes_dropped() -> None:
    entries = history(hours_ago(3, 2, 1), size=100)

    plan = plan_thread(entries, RetentionPolicy(keep_last=3, max_bytes=100), now=NOW, explain=True)

    assert plan.reasons is not None
    assert plan.reasons[("", entries[0].checkpoint_id)] == ("over max_bytes",)


def span(entries: list[CheckpointEntry]) -> tuple[str, str]:
    ids = [e.checkpoint_id for e in entries]
    return min(ids), max(ids)


def test_thread_idle_longer_than_idle_ttl_expires() -> None:
    entries = history([NOW - timedelta(days=40), NOW - timedelta(days=31)])

    reason = thread_expiry(*span(entries), RetentionPolicy(idle_ttl=timedelta(days=30)), NOW)

    assert reason == "idle 31d > idle_ttl 30d"


def test_thread_active_within_idle_ttl_stays() -> None:
    entries = history([NOW - timedelta(days=40), NOW - timedelta(days=1)])

    assert thread_expiry(*span(entries), RetentionPolicy(idle_ttl=timedelta(days=30)), NOW) is None


def test_thread_older_than_max_age_expires_even_when_active() -> None:
    entries = history([NOW - timedelta(days=40), NOW - timedelta(minutes=5)])

    reason = thread_expiry(*span(entries), RetentionPolicy(max_age=timedelta(days=30)), NOW)

    assert reason == "age 40d > max_age 30d"


def test_expired_thread_plan_deletes_every_namespace() -> None:
    entries = history(hours_ago(3, 2)) + history(hours_ago(1), ns="sub")
    newest = max(e.checkpoint_id for e in entries)

    plan = expire_plan(entries, Expiry(newest, "idle 31d > idle_ttl 30d"), explain=True)

    assert plan is not None and plan.kept_count == 0 and plan.deleted_count == 3
    assert plan.reasons is not None
    assert set(plan.reasons.values()) == {("thread expired: idle 31d > idle_ttl 30d",)}


def test_thread_written_since_the_decision_does_not_expire() -> None:
    entries = history(hours_ago(3, 2, 1))

    assert expire_plan(entries, Expiry(entries[1].checkpoint_id, "idle")) is None


@pytest.mark.parametrize(
    ("settings_", "says"),
    [
        ({"keep_daily": -1}, "keep_daily must be at least 0"),
        ({"keep_hourly": 1.5}, "keep_hourly must be an int"),
        ({"keep_tagged": ""}, "keep_tagged must be a metadata key"),
        ({"max_bytes": 0}, "max_bytes must be at least 1"),
        ({"idle_ttl": timedelta(0)}, "idle_ttl must be positive"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        (
            {"keep_within": timedelta(days=30), "max_age": timedelta(days=7)},
            "keep_within .* is longer than max_age",
        ),
    ],
)
def test_bad_rules_are_refused_naming_the_setting(settings_: dict[str, object], says: str) -> None:
    with pytest.raises((ValueError, TypeError), match=says):
        RetentionPolicy(**settings_)  # type: ignore[arg-type]


# -- properties, against an independent oracle of the rules -------------------------------


@st.composite
def histories(draw: st.DrawFn) -> list[CheckpointEntry]:
    """Random forked histories over namespaces, with facts and DeltaChannel snapshots."""
    entries: list[CheckpointEntry] = []
    clock = datetime(2026, 1, 1, tzinfo=UTC)
    seq = 0
    root_ids: list[str] = []
    for ns in draw(st.lists(st.sampled_from(["", "sub", "call:1", "call:2"]), min_size=1,
                            unique=True)):  # fmt: skip
        ids: list[str] = []
        for i in range(draw(st.integers(1, 20))):
            clock += timedelta(seconds=draw(st.integers(1, 4 * 86_400)))
            seq += 1
            cid = uuid6_at(clock, seq)
            parent = (
                ids[draw(st.integers(0, i - 1))] if i and draw(st.booleans()) else
                (ids[-1] if ids else None)
            )  # fmt: skip
            snapshot = i == 0 or draw(st.integers(0, 3)) == 0
            parents = {"": draw(st.sampled_from(root_ids))} if ns and root_ids else {}
            entries.append(
                CheckpointEntry(
                    ns,
                    cid,
                    parent,
                    parents=parents,
                    delta_needs=frozenset() if snapshot else frozenset({"items"}),
                    sends_parent=bool(i) and draw(st.integers(0, 9)) == 0,
                    size=draw(st.integers(0, 1000)),
                    tags=frozenset({"pin"}) if draw(st.integers(0, 9)) == 0 else frozenset(),
                    interrupted=draw(st.integers(0, 9)) == 0,
                )
            )
            ids.append(cid)
        if ns == "":
            root_ids = ids
    return entries


policies = st.builds(
    RetentionPolicy,
    keep_last=st.integers(1, 6),
    keep_within=st.one_of(st.none(), st.integers(0, 20).map(lambda d: timedelta(days=d))),
    keep_hourly=st.integers(0, 3),
    keep_daily=st.integers(0, 4),
    keep_weekly=st.integers(0, 3),
    keep_monthly=st.integers(0, 2),
    keep_first=st.booleans(),
    keep_interrupted=st.booleans(),
    keep_tagged=st.sampled_from([None, "pin"]),
    timezone=st.sampled_from(
        ["UTC", "Asia/Shanghai", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe"]
    ),
)


def oracle_selected(
    index: dict[str, CheckpointEntry], policy: RetentionPolicy, now: datetime
) -> set[str]:
    """Which checkpoints of one namespace the rules choose, written from the docs."""
    newest_first = sorted(index, reverse=True)
    chosen = {newest_first[0]} | set(newest_first[: policy.keep_last])
    times = {cid: checkpoint_time(cid) for cid in newest_first}
    if policy.keep_within is not None:
        chosen |= {c for c, t in times.items() if t is not None and t >= now - policy.keep_within}
    zone = ZoneInfo(policy.timezone)
    for name, _label, bucket in BUCKETS:
        buckets: dict[tuple[int, ...], str] = {}
        for cid in newest_first:
            t = times[cid]
            if t is not None:
                buckets.setdefault(bucket(t.astimezone(zone)), cid)  # newest of each
        chosen |= set(sorted(buckets.values(), reverse=True)[: getattr(policy, name)])
    if policy.keep_first:
        chosen.add(newest_first[-1])
    chosen |= {c for c, e in index.items() if policy.keep_interrupted and e.interrupted}
    chosen |= {c for c, e in index.items() if policy.keep_tagged in e.tags}
    return chosen


def oracle_closure(index: dict[str, CheckpointEntry], chosen: set[str]) -> set[str]:
    keep = set(chosen)
    for cid in chosen:
        e = index[cid]
        if e.sends_parent and e.parent_id in index:
            keep.add(e.parent_id)  # type: ignore[arg-type]
        missing, parent = set(e.delta_needs), e.parent_id
        while missing and parent is not None:
            keep.add(parent)
            missing &= index[parent].delta_needs
            parent = index[parent].parent_id
    return keep


def oracle(entries: list[CheckpointEntry], policy: RetentionPolicy) -> dict[str, set[str]]:
    by_ns: dict[str, dict[str, CheckpointEntry]] = {}
    for e in entries:
        by_ns.setdefault(e.checkpoint_ns, {})[e.checkpoint_id] = e
    keep: dict[str, set[str]] = {}
    for ns in sorted(by_ns, key=lambda n: (n != "", n)):  # the root first
        index = by_ns[ns]
        root_deleted = set(by_ns.get("", {})) - keep.get("", set())
        if ":" in ns and any(e.parents.get("") in root_deleted for e in index.values()):
            keep[ns] = set()
            continue
        keep[ns] = oracle_closure(index, oracle_selected(index, policy, NOW))
    return keep


@settings(max_examples=300, deadline=None)
@given(histories(), policies)
def test_plan_keeps_exactly_what_the_rules_and_dependencies_ask(
    entries: list[CheckpointEntry], policy: RetentionPolicy
) -> None:
    plan = plan_thread(entries, policy, now=NOW)

    assert {ns: set(ids) for ns, ids in plan.keep.items() if ids} == {
        ns: ids for ns, ids in oracle(entries, policy).items() if ids
    }


@settings(max_examples=200, deadline=None)
@given(histories(), policies)
def test_every_kept_checkpoint_has_a_reason_and_no_deleted_one_does(
    entries: list[CheckpointEntry], policy: RetentionPolicy
) -> None:
    plan = plan_thread(entries, policy, now=NOW, explain=True)

    assert plan.reasons is not None
    for ns, ids in plan.keep.items():
        assert all(plan.reasons[(ns, cid)] for cid in ids)
    for ns, ids in plan.delete.items():
        assert all(
            not plan.reasons[(ns, cid)] or plan.reasons[(ns, cid)][0].startswith("call of")
            for cid in ids
        )


@settings(max_examples=200, deadline=None)
@given(histories(), policies, st.integers(0, 3), st.integers(0, 2), st.booleans())
def test_keeping_more_never_deletes_more(
    entries: list[CheckpointEntry],
    policy: RetentionPolicy,
    more_last: int,
    more_daily: int,
    first: bool,
) -> None:
    generous = RetentionPolicy(
        **{
            **{f: getattr(policy, f) for f in policy.__dataclass_fields__},
            "keep_last": policy.keep_last + more_last,
            "keep_daily": policy.keep_daily + more_daily,
            "keep_first": policy.keep_first or first,
        }
    )

    strict_plan = plan_thread(entries, policy, now=NOW)
    generous_plan = plan_thread(entries, generous, now=NOW)

    assert set(generous_plan.deleted_pairs()) <= set(strict_plan.deleted_pairs())


@settings(max_examples=200, deadline=None)
@given(histories(), policies, st.integers(1, 8000))
def test_max_bytes_fits_or_keeps_only_what_it_must(
    entries: list[CheckpointEntry], policy: RetentionPolicy, max_bytes: int
) -> None:
    capped = RetentionPolicy(
        **{**{f: getattr(policy, f) for f in policy.__dataclass_fields__}, "max_bytes": max_bytes}
    )

    plan = plan_thread(entries, capped, now=NOW)
    uncapped = plan_thread(entries, policy, now=NOW)

    assert plan.kept_bytes <= max_bytes or plan.warnings
    assert set(uncapped.deleted_pairs()) <= set(plan.deleted_pairs())
    for ns in {e.checkpoint_ns for e in entries} - set(plan.dropped_namespaces):
        index = {e.checkpoint_id: e for e in entries if e.checkpoint_ns == ns}
        firm = {max(index)}
        firm |= {min(index)} if policy.keep_first else set()
        firm |= {c for c, e in index.items() if policy.keep_interrupted and e.interrupted}
        firm |= {c for c, e in index.items() if policy.keep_tagged in e.tags}
        assert firm <= set(plan.keep.get(ns, []))


def _shouted(entry: CheckpointEntry) -> CheckpointEntry:
    """The same checkpoint under an upper-case id: still a UUIDv6 with the same time, but
    not the form LangGraph writes, so the planner reads every id's clock instead of
    binary-searching the sorted ids."""
    return entry._replace(
        checkpoint_id=entry.checkpoint_id.upper(),
        parent_id=entry.parent_id.upper() if entry.parent_id else None,
        parents={ns: cid.upper() for ns, cid in entry.parents.items()},
    )


@settings(max_examples=200, deadline=None)
@given(histories(), policies)
def test_ids_of_any_form_get_the_same_time_and_calendar_choices(
    entries: list[CheckpointEntry], policy: RetentionPolicy
) -> None:
    canonical = plan_thread(entries, policy, now=NOW)
    other_form = plan_thread([_shouted(e) for e in entries], policy, now=NOW)

    assert other_form.keep == {
        ns: [cid.upper() for cid in ids] for ns, ids in canonical.keep.items()
    }
