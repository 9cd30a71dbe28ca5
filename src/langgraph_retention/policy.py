"""The retention decision: a pure function over one thread's checkpoint index.

No I/O happens here. Backends read an index (`CheckpointEntry` rows, cheap to fetch: ids,
parent ids and a few facts — size, metadata tags, interrupts — never the state itself),
call `plan_thread`, and delete what the returned `ThreadPlan` says. Sync and async
backends share this module, so every storage layout obeys the same rules.

A checkpoint is kept if any rule keeps it (restic's `forget` is the model). Some rules
are promises `max_bytes` never breaks: the newest checkpoint of every namespace, the
first, the interrupted, the tagged, and everything they need to load. The others (last
N, within a duration, one per hour/day/week/month) yield, oldest first, when a thread
must shrink to fit `max_bytes`.
"""

from __future__ import annotations

import uuid
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from types import MappingProxyType
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from langgraph_retention.errors import DeltaChannelError

__all__ = [
    "BUCKETS",
    "CheckpointEntry",
    "Expiry",
    "RetentionPolicy",
    "ThreadPlan",
    "checkpoint_time",
    "delta_needs",
    "expire_plan",
    "plan_thread",
    "thread_expiry",
]

# 100-ns intervals between the UUID epoch (1582-10-15) and the Unix epoch.
_UUID_EPOCH_OFFSET = 0x01B21DD213814000


def _hour(t: datetime) -> tuple[int, ...]:
    return (t.year, t.month, t.day, t.hour)


def _day(t: datetime) -> tuple[int, ...]:
    return (t.year, t.month, t.day)


def _week(t: datetime) -> tuple[int, ...]:
    return tuple(t.isocalendar()[:2])


def _month(t: datetime) -> tuple[int, ...]:
    return (t.year, t.month)


def _bucket_name(label: str, key: tuple[int, ...]) -> str:
    """`daily 2025-07-29`, `hourly 2025-07-29T14`, `weekly 2025-W31`, `monthly 2025-07`."""
    if label == "weekly":
        return f"weekly {key[0]}-W{key[1]:02d}"
    text = "-".join(f"{v:02d}" for v in key[:3])
    return f"{label} {text}T{key[3]:02d}" if label == "hourly" else f"{label} {text}"


#: The calendar rules: policy field, name in reasons, bucket of a local time.
BUCKETS: tuple[tuple[str, str, Callable[[datetime], tuple[int, ...]]], ...] = (
    ("keep_hourly", "hourly", _hour),
    ("keep_daily", "daily", _day),
    ("keep_weekly", "weekly", _week),
    ("keep_monthly", "monthly", _month),
)


def _hour_start(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _day_start(t: datetime) -> datetime:
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def _week_start(t: datetime) -> datetime:
    return _day_start(t - timedelta(days=t.weekday()))  # wall-clock arithmetic, in t's zone


def _month_start(t: datetime) -> datetime:
    return _day_start(t.replace(day=1))


#: Where each calendar bucket begins, as a local wall time.
_BUCKET_START: dict[str, Callable[[datetime], datetime]] = {
    "hourly": _hour_start,
    "daily": _day_start,
    "weekly": _week_start,
    "monthly": _month_start,
}

_HEX_DIGITS = str.maketrans("", "", "0123456789abcdef")


def _all_canonical_uuid6(ids: Sequence[str]) -> bool:
    """Whether every id is in the form `str(uuid6())` gives, LangGraph's: such ids sort by
    creation time as text. Checked on the ids joined, with C-speed slices (dashes and the
    version digit in place) and one deletion of the hex digits (nothing else is left):
    a regular expression took as long as the rest of a thread's calendar rules."""
    n = len(ids)
    if set(map(len, ids)) != {36}:
        return False
    joined = "-".join(ids)  # a separator at 36, 73, ...: the same character as the dashes
    dashes = "-" * n
    return (
        joined[8::37] == joined[13::37] == joined[18::37] == joined[23::37] == dashes
        and joined[36::37] == dashes[1:]
        and joined[14::37] == "6" * n
        and len(joined.translate(_HEX_DIGITS)) == 5 * n - 1
    )


def _zone(name: str) -> tzinfo:
    return UTC if name == "UTC" else ZoneInfo(name)


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _check_span(name: str, value: timedelta | None, *, positive: bool) -> None:
    if value is None:
        return
    if not isinstance(value, timedelta):
        raise TypeError(f"{name} must be a timedelta, got {type(value).__name__}")
    if value < timedelta(0) or (positive and value == timedelta(0)):
        raise ValueError(f"{name} must be {'positive' if positive else 'not negative'}: {value}")


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What to keep of every (thread, checkpoint namespace); all rules combine.

    - `keep_last`: the newest N checkpoints (the newest is kept whatever the policy).
    - `keep_within`: every checkpoint younger than this.
    - `keep_hourly` / `keep_daily` / `keep_weekly` / `keep_monthly`: the newest checkpoint
      of each of the last N hours/days/ISO weeks/months that have one, in `timezone`.
    - `keep_first`: the first checkpoint (in the root namespace, the thread's root, for
      replay from the start).
    - `keep_interrupted`: checkpoints whose pending writes hold an interrupt (every place
      the graph asked a human, answered or still waiting).
    - `keep_tagged`: checkpoints whose metadata has this key set (a pin the app sets).
    - `max_bytes`: after the rules above, drop the oldest checkpoints that only count,
      time or calendar rules keep until the thread fits; never the newest, first,
      interrupted or tagged ones nor what they need (a thread that still does not fit
      is reported).
    - `idle_ttl` / `max_age`: delete whole threads whose newest checkpoint is older than
      `idle_ttl`, or whose first is older than `max_age`.
    - `delta_channels="refuse"`: refuse threads that use a DeltaChannel instead of
      keeping their snapshot ancestry.

    Deleting one thread by hand is `saver.delete_thread`, not a policy.
    """

    keep_last: int = 10
    keep_within: timedelta | None = None
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_first: bool = False
    keep_interrupted: bool = False
    keep_tagged: str | None = None
    max_bytes: int | None = None
    timezone: str = "UTC"
    idle_ttl: timedelta | None = None
    max_age: timedelta | None = None
    delta_channels: str = "keep_ancestry"

    def __post_init__(self) -> None:
        if isinstance(self.keep_last, int) and not isinstance(self.keep_last, bool):
            if self.keep_last < 1:
                raise ValueError(
                    f"keep_last must be at least 1 (got {self.keep_last}): the newest "
                    "checkpoint of a thread is never deleted; to delete a whole thread use "
                    "saver.delete_thread(thread_id) or idle_ttl / max_age"
                )
        else:
            raise TypeError(f"keep_last must be an int, got {type(self.keep_last).__name__}")
        for name, _label, _bucket in BUCKETS:
            _check_count(name, getattr(self, name), 0)
        _check_span("keep_within", self.keep_within, positive=False)
        _check_span("idle_ttl", self.idle_ttl, positive=True)
        _check_span("max_age", self.max_age, positive=True)
        for flag in ("keep_first", "keep_interrupted"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False")
        if self.keep_tagged is not None and (
            not isinstance(self.keep_tagged, str) or not self.keep_tagged
        ):
            raise ValueError(f"keep_tagged must be a metadata key, got {self.keep_tagged!r}")
        if self.max_bytes is not None:
            _check_count("max_bytes", self.max_bytes, 1)
        try:
            _zone(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(
                f"unknown time zone {self.timezone!r}; use an IANA name like 'Europe/Berlin'"
            ) from None
        if self.delta_channels not in ("keep_ancestry", "refuse"):
            raise ValueError(
                f"delta_channels must be 'keep_ancestry' or 'refuse', got {self.delta_channels!r}"
            )
        if self.keep_within and self.max_age and self.keep_within > self.max_age:
            raise ValueError(
                f"keep_within ({self.keep_within}) is longer than max_age ({self.max_age}): "
                "threads are deleted before their checkpoints leave the window"
            )

    @property
    def expires_threads(self) -> bool:
        """Whether whole threads can expire (`idle_ttl` or `max_age`)."""
        return self.idle_ttl is not None or self.max_age is not None


class CheckpointEntry(NamedTuple):
    """One checkpoint as the policy sees it: identity, lineage, load dependencies, facts.

    `delta_needs` are the DeltaChannel channels whose value at this checkpoint is rebuilt
    from ancestors' writes (a version but no stored value); a walk for a channel stops at
    the first ancestor that does not need it (it stores the value, or the channel had no
    writes yet). `sends_parent` says loading it reads its parent's pending sends (< v4).
    `size` is the bytes it holds alone (row and writes; 0 when the backend does not say),
    `tags` the metadata keys the policies asked about that it has set, `interrupted`
    whether its pending writes hold an interrupt.
    A named tuple: immutable, and cheap to build by the thousand from an index read.
    """

    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str | None = None
    parents: Mapping[str, str] = MappingProxyType({})
    delta_needs: frozenset[str] = frozenset()
    sends_parent: bool = False
    size: int = 0
    tags: frozenset[str] = frozenset()
    interrupted: bool = False


#: A checkpoint's key inside one thread.
Key = tuple[str, str]
#: Checkpoint id -> why it is kept (reasons only when explaining; else empty tuples).
Reasons = dict[str, tuple[str, ...]]


def _add(bag: Reasons, cid: str, reason: str, explain: bool) -> None:
    """Note that `cid` is kept, and why when explaining."""
    if explain:
        bag[cid] = (*bag.get(cid, ()), reason)
    elif cid not in bag:
        bag[cid] = ()


@dataclass(slots=True)
class ThreadPlan:
    """The decision for one thread: checkpoint ids to keep and delete, per namespace.

    With `explain`, `reasons` says for every checkpoint why it stays (`newest`,
    `last 2/5`, `daily 2025-07-29`, `ancestor of kept 1f0…`) or why it goes (`over
    max_bytes`, `call of deleted parent …`; nothing: no rule keeps it).
    """

    keep: dict[str, list[str]] = field(default_factory=dict)
    delete: dict[str, list[str]] = field(default_factory=dict)
    dropped_namespaces: list[str] = field(default_factory=list)
    reasons: dict[Key, tuple[str, ...]] | None = None
    #: Bytes of the kept checkpoints (as the backend sized them).
    kept_bytes: int = 0
    #: What the plan could not do, e.g. fit `max_bytes`.
    warnings: list[str] = field(default_factory=list)

    @property
    def kept_count(self) -> int:
        return sum(len(ids) for ids in self.keep.values())

    @property
    def deleted_count(self) -> int:
        return sum(len(ids) for ids in self.delete.values())

    def deleted_pairs(self) -> list[tuple[str, str]]:
        """(namespace, checkpoint id) of every checkpoint to delete."""
        return [(ns, cid) for ns, ids in self.delete.items() for cid in ids]


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _unix_micros(checkpoint_id: str) -> int | None:
    """Microseconds since 1970 at which a UUIDv6 id was made; None for other ids."""
    if len(checkpoint_id) == 36 and checkpoint_id[8] == checkpoint_id[13] == "-":
        try:  # the canonical form LangGraph writes: read the fields straight from the hex
            hi_version = int(checkpoint_id[14:18], 16)
            if hi_version >> 12 != 6 or checkpoint_id[18] != "-":
                return None
            ticks = (
                (int(checkpoint_id[0:8], 16) << 28)
                | (int(checkpoint_id[9:13], 16) << 12)
                | (hi_version & 0x0FFF)
            )
        except ValueError:
            return None
    else:
        try:
            u = uuid.UUID(checkpoint_id)
        except ValueError:
            return None
        if u.version != 6:
            return None
        ticks = (u.time_low << 28) | (u.time_mid << 12) | (u.time_hi_version & 0x0FFF)
    return (ticks - _UUID_EPOCH_OFFSET) // 10


def _first_id_at(micros: int) -> str:
    """The smallest canonical UUIDv6 id made at `micros` since 1970: every id made then
    or later sorts at or after it."""
    ticks = max(0, micros * 10 + _UUID_EPOCH_OFFSET)
    h = f"{ticks:015x}"
    return f"{h[:8]}-{h[8:12]}-6{h[12:]}-0000-000000000000"


def _micros(t: datetime) -> int:
    return (t - _UNIX_EPOCH) // timedelta(microseconds=1)


def checkpoint_time(checkpoint_id: str) -> datetime | None:
    """When a checkpoint was created, read from its UUIDv6 id; None if the id is not one."""
    micros = _unix_micros(checkpoint_id)
    return None if micros is None else _UNIX_EPOCH + timedelta(microseconds=micros)


def delta_needs(
    delta_channels: Iterable[str], versioned: Iterable[str], stored: Iterable[str]
) -> frozenset[str]:
    """The DeltaChannel names a checkpoint rebuilds from its ancestors.

    A channel with a version but no stored value is replayed from ancestor writes, as
    LangGraph's `_delta_channels_to_replay` decides; a stored value seeds it directly.
    """
    return frozenset((set(versioned) & set(delta_channels)) - set(stored))


class Expiry(NamedTuple):
    """A whole thread to delete, if its newest checkpoint is still `newest_id` when the
    deleting transaction reads it (a run that started meanwhile keeps the thread)."""

    newest_id: str
    reason: str


def thread_expiry(
    first_id: str, newest_id: str, policy: RetentionPolicy, now: datetime
) -> str | None:
    """Why the whole thread expires under `policy` (`idle_ttl`, `max_age`), else None.

    `first_id` and `newest_id` are the thread's oldest and newest checkpoint ids over
    every namespace; times come from them (UUIDv6), and a thread whose ids carry no time
    never expires.
    """
    if not policy.expires_threads:
        return None
    newest, first = checkpoint_time(newest_id), checkpoint_time(first_id)
    if policy.idle_ttl is not None and newest is not None and now - newest > policy.idle_ttl:
        return f"idle {_span(now - newest)} > idle_ttl {_span(policy.idle_ttl)}"
    if policy.max_age is not None and first is not None and now - first > policy.max_age:
        return f"age {_span(now - first)} > max_age {_span(policy.max_age)}"
    return None


def expire_plan(
    entries: Iterable[CheckpointEntry], expiry: Expiry, *, explain: bool = False
) -> ThreadPlan | None:
    """The plan deleting every checkpoint of the thread, or None when its newest is no
    longer `expiry.newest_id` (a run wrote since the decision: the thread stays)."""
    by_ns: dict[str, list[str]] = defaultdict(list)
    for e in entries:
        by_ns[e.checkpoint_ns].append(e.checkpoint_id)
    if not by_ns or max(max(ids) for ids in by_ns.values()) != expiry.newest_id:
        return None
    plan = ThreadPlan(reasons={} if explain else None)
    for ns, ids in by_ns.items():
        plan.delete[ns] = sorted(ids, reverse=True)
        if plan.reasons is not None:
            for cid in ids:
                plan.reasons[(ns, cid)] = (f"thread expired: {expiry.reason}",)
    return plan


def _span(value: timedelta) -> str:
    """A duration for people: 31d4h, 2h5m, 40s."""
    seconds = int(value.total_seconds())
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{u}" for n, u in parts if n][:2]
    return "".join(shown) or "0s"


def _is_call_namespace(ns: str) -> bool:
    """A subgraph call's namespace carries its task id after ':' (one per call);
    a `checkpointer=True` subgraph's has none and outlives each call."""
    return ":" in ns


def plan_thread(
    entries: Iterable[CheckpointEntry],
    policy: RetentionPolicy,
    *,
    thread_id: str = "",
    now: datetime | None = None,
    explain: bool = False,
) -> ThreadPlan:
    """Decide what to keep and delete of one thread, namespace by namespace.

    A subgraph call namespace whose enclosing graph's checkpoint is deleted goes whole
    (nothing can load it any more); otherwise every rule of the policy chooses, and
    every ancestor a chosen checkpoint needs to load stays with it: back to the nearest
    stored value of each DeltaChannel it rebuilds, and the parent holding its pre-v4
    pending sends. Then `max_bytes`, if set, trims what only count, time and calendar
    rules keep, oldest first.
    """
    by_ns: dict[str, dict[str, CheckpointEntry]] = defaultdict(dict)
    for e in entries:
        by_ns[e.checkpoint_ns][e.checkpoint_id] = e

    if policy.delta_channels == "refuse":
        for ns_entries in by_ns.values():
            for e in ns_entries.values():
                if e.delta_needs:
                    raise DeltaChannelError(
                        f"thread {thread_id!r} uses a DeltaChannel "
                        f"({', '.join(sorted(e.delta_needs))}) and the policy says "
                        "delta_channels='refuse'; nothing was deleted"
                    )

    planner = _Planner(by_ns, policy, now or datetime.now(UTC), thread_id, explain)
    plan = planner.plan(frozenset())
    if policy.max_bytes is not None and plan.kept_bytes > policy.max_bytes:
        plan = planner.fit(plan, policy.max_bytes)
    return plan


#: Every UTC offset and daylight-saving change in use falls on a quarter hour, so the
#: instants of one quarter hour share their calendar buckets (checked, not assumed).
_QUARTER_HOUR = 900_000_000  # microseconds
_BUCKET_OF: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    label: bucket for _name, label, bucket in BUCKETS
}


def _local(micros: int, zone: tzinfo) -> datetime:
    return (_UNIX_EPOCH + timedelta(microseconds=micros)).astimezone(zone)


def _bucket_at(zone: tzinfo, label: str, micros: int) -> tuple[tuple[int, ...], str]:
    """The `label` bucket of the instant, and the first UUIDv6 id made in that bucket."""
    found = _quarter_bucket(zone, label, micros // _QUARTER_HOUR)
    if found is not None:
        return found
    when = _local(micros, zone)
    return _BUCKET_OF[label](when), _first_id_at(_micros(_BUCKET_START[label](when)))


@lru_cache(maxsize=8192)
def _quarter_bucket(zone: tzinfo, label: str, quarter: int) -> tuple[tuple[int, ...], str] | None:
    """`_bucket_at` of every instant of a quarter hour, or None if they differ (a zone
    whose clock changes off the quarter): one clock reading per quarter hour, not per
    checkpoint, across every thread of a sweep."""
    bucket, start_of = _BUCKET_OF[label], _BUCKET_START[label]
    first = _local(quarter * _QUARTER_HOUR, zone)
    last = _local((quarter + 1) * _QUARTER_HOUR - 1, zone)
    start = _micros(start_of(first))
    if bucket(first) != bucket(last) or start != _micros(start_of(last)):
        return None
    return bucket(first), _first_id_at(start)


class _Planner:
    """One thread's decision, repeatable with some soft choices withdrawn (`max_bytes`)."""

    def __init__(
        self,
        by_ns: Mapping[str, Mapping[str, CheckpointEntry]],
        policy: RetentionPolicy,
        now: datetime,
        thread_id: str,
        explain: bool,
    ) -> None:
        self.policy = policy
        self.thread_id = thread_id
        self.explain = explain
        #: keep_within's bound, in microseconds since 1970 (compared with id times).
        self.cutoff = (
            int((now - policy.keep_within - _UNIX_EPOCH) / timedelta(microseconds=1))
            if policy.keep_within
            else None
        )
        self.buckets = [
            (label, bucket, count)
            for name, label, bucket in BUCKETS
            if (count := getattr(policy, name))
        ]
        self.zone = _zone(policy.timezone)
        # Enclosing graphs first, so a nested call sees whether its parent went.
        self.order = sorted(by_ns, key=lambda n: (n.count("|") + (1 if n else 0), n))
        self.by_ns = by_ns
        self.newest_first = {ns: sorted(by_ns[ns], reverse=True) for ns in by_ns}
        self._chosen: dict[str, tuple[Reasons, Reasons]] = {}

    def _choices(self, ns: str) -> tuple[Reasons, Reasons]:
        """A namespace's firm and soft choices (fresh copies), computed once per thread
        however many plans `fit` tries."""
        if ns not in self._chosen:
            newest_first = self.newest_first[ns]
            self._chosen[ns] = (self._must(self.by_ns[ns], newest_first), self._soft(newest_first))
        must, soft = self._chosen[ns]
        return must, dict(soft)

    def plan(self, withdrawn: frozenset[Key]) -> ThreadPlan:
        """The plan with the soft choices in `withdrawn` not made."""
        explain = self.explain
        plan = ThreadPlan(reasons={} if explain else None)
        deleted_ids: dict[str, set[str]] = {}
        for ns in self.order:
            index = self.by_ns[ns]
            newest_first = self.newest_first[ns]
            if _is_call_namespace(ns) and (
                parent := _deleted_parent(index.values(), ns, deleted_ids)
            ):
                plan.delete[ns] = newest_first
                plan.dropped_namespaces.append(ns)
                deleted_ids[ns] = set(newest_first)
                if plan.reasons is not None:
                    for cid in newest_first:
                        plan.reasons[(ns, cid)] = (f"call of deleted parent {parent}",)
                continue
            must, soft = self._choices(ns)
            if withdrawn:
                soft = {cid: why for cid, why in soft.items() if (ns, cid) not in withdrawn}
            for cid, why in must.items():
                soft[cid] = (*soft.get(cid, ()), *why) if explain else why
            keep = _with_dependencies(soft, index, self.thread_id, ns, explain)
            plan.keep[ns] = [cid for cid in newest_first if cid in keep]
            doomed = [cid for cid in newest_first if cid not in keep]
            if doomed:
                plan.delete[ns] = doomed
            deleted_ids[ns] = set(doomed)
            plan.kept_bytes += sum(index[cid].size for cid in keep)
            if plan.reasons is not None:
                for cid in newest_first:
                    plan.reasons[(ns, cid)] = keep.get(cid) or (
                        ("over max_bytes",) if (ns, cid) in withdrawn else ()
                    )
        return plan

    def _must(self, index: Mapping[str, CheckpointEntry], newest_first: Sequence[str]) -> Reasons:
        """The checkpoints no limit may take: newest, first, interrupted, tagged."""
        policy, explain = self.policy, self.explain
        must: Reasons = {}
        _add(must, newest_first[0], "newest", explain)
        if policy.keep_first:
            _add(must, newest_first[-1], "first", explain)
        interrupted, tag = policy.keep_interrupted, policy.keep_tagged
        if interrupted or tag is not None:
            for cid, e in index.items():
                if e.interrupted or e.tags:  # one test for the common case: neither
                    if interrupted and e.interrupted:
                        _add(must, cid, "interrupted", explain)
                    if tag is not None and tag in e.tags:
                        _add(must, cid, f"tagged {tag}", explain)
        return must

    def _soft(self, newest_first: Sequence[str]) -> Reasons:
        """The count, time and calendar choices (what `max_bytes` may take back)."""
        policy, explain = self.policy, self.explain
        n = policy.keep_last
        if explain:
            soft: Reasons = {cid: (f"last {i}/{n}",) for i, cid in enumerate(newest_first[:n], 1)}
        else:
            soft = dict.fromkeys(newest_first[:n], ())
        if self.cutoff is None and not self.buckets:
            return soft
        oldest_first = newest_first[::-1]
        if _all_canonical_uuid6(oldest_first):
            self._soft_by_search(soft, oldest_first)
        else:
            self._soft_by_scan(soft, newest_first)
        return soft

    def _soft_by_search(self, soft: Reasons, oldest_first: Sequence[str]) -> None:
        """Time and calendar choices when ids sort by time: a binary search per bucket
        boundary instead of a clock reading per checkpoint (the common, fast path)."""
        policy, explain = self.policy, self.explain
        count = len(oldest_first)
        if self.cutoff is not None:
            within = f"within {_span(policy.keep_within or timedelta(0))}"
            first = bisect_left(oldest_first, _first_id_at(self.cutoff))
            for cid in oldest_first[first : max(0, count - policy.keep_last)]:  # not last N
                _add(soft, cid, within, explain)
        zone = self.zone
        stamps: dict[str, int | None] = {}  # each rule starts from the newest: read it once
        for label, _bucket, wanted in self.buckets:
            seen: set[tuple[int, ...]] = set()
            end = count  # buckets of oldest_first[:end] are still to find
            while end and len(seen) < wanted:
                cid = oldest_first[end - 1]
                if (micros := stamps.get(cid)) is None:
                    micros = stamps[cid] = _unix_micros(cid)
                assert micros is not None  # canonical UUIDv6
                key, boundary = _bucket_at(zone, label, micros)
                if key not in seen:  # a repeated wall-clock hour has one key
                    seen.add(key)
                    _add(soft, cid, _bucket_name(label, key) if explain else label, explain)
                end = min(end - 1, bisect_left(oldest_first, boundary, 0, end))

    def _soft_by_scan(self, soft: Reasons, newest_first: Sequence[str]) -> None:
        """Time and calendar choices over ids of any form, one clock reading each."""
        policy, explain = self.policy, self.explain
        n = policy.keep_last
        stamps = [_unix_micros(cid) for cid in newest_first]
        if self.cutoff is not None:
            within = f"within {_span(policy.keep_within or timedelta(0))}"
            for cid, micros in zip(newest_first[n:], stamps[n:], strict=True):
                if micros is None or micros < self.cutoff:
                    break
                _add(soft, cid, within, explain)
        zone = self.zone
        local = [
            (cid, (_UNIX_EPOCH + timedelta(microseconds=micros)).astimezone(zone))
            for cid, micros in zip(newest_first, stamps, strict=True)
            if micros is not None
        ]
        for label, bucket, wanted in self.buckets:
            seen: set[tuple[int, ...]] = set()
            for cid, when in local:
                key = bucket(when)
                if key in seen:
                    continue
                seen.add(key)
                _add(soft, cid, _bucket_name(label, key) if explain else label, explain)
                if len(seen) >= wanted:
                    break

    def _withdrawable(self, first: ThreadPlan) -> list[Key]:
        """The soft choices of `first` (the plan withdrawing nothing) that no firm rule
        keeps, even as a dependency: what fitting may take back, oldest first."""
        choices: list[Key] = []
        for ns in first.keep:
            must, soft = self._choices(ns)
            must_kept = _with_dependencies(must, self.by_ns[ns], self.thread_id, ns, False)
            choices += [(ns, cid) for cid in soft if cid not in must_kept]
        return sorted(choices, key=lambda k: (k[1], k[0]))

    def fit(self, first: ThreadPlan, max_bytes: int) -> ThreadPlan:
        """The plan withdrawing the fewest oldest soft choices that fits `max_bytes`, or
        all of them (with a warning) when even the firm rules keep too much. Withdrawing
        more never keeps more, so the fewest is found by bisection."""
        choices = self._withdrawable(first)
        best = self.plan(frozenset(choices))
        if best.kept_bytes > max_bytes:
            best.warnings.append(
                f"thread {self.thread_id!r} keeps {best.kept_bytes} bytes, over "
                f"max_bytes={max_bytes}: its newest, first, interrupted and tagged "
                "checkpoints and what they need to load are never deleted to fit"
            )
            return best
        low, high = 0, len(choices)  # plan(choices[:high]) fits and is `best`
        while low < high:
            middle = (low + high) // 2
            attempt = self.plan(frozenset(choices[:middle]))
            if attempt.kept_bytes <= max_bytes:
                high, best = middle, attempt
            else:
                low = middle + 1
        return best


def _deleted_parent(
    entries: Iterable[CheckpointEntry], ns: str, deleted_ids: Mapping[str, set[str]]
) -> str | None:
    """The enclosing checkpoint a call namespace started from, if this plan deletes it.

    A parent checkpoint not in the index is left alone: runs save in the background,
    so a call's checkpoints can commit before the one it started from.
    """
    for e in entries:
        for parent_ns, parent_id in e.parents.items():
            if parent_ns != ns and parent_id in deleted_ids.get(parent_ns, ()):
                return parent_id
    return None


def _with_dependencies(
    chosen: Reasons,
    index: Mapping[str, CheckpointEntry],
    thread_id: str,
    ns: str,
    explain: bool,
) -> Reasons:
    """The chosen checkpoints plus every ancestor they need to load (with reasons)."""
    keep = dict(chosen)
    for cid in chosen:
        entry = index[cid]
        if entry.sends_parent and entry.parent_id is not None and entry.parent_id in index:
            _add(keep, entry.parent_id, f"sends parent of kept {cid}", explain)
        missing = set(entry.delta_needs)
        parent = entry.parent_id
        seen = {cid}
        while missing and parent is not None and parent not in seen:
            ancestor = index.get(parent)
            if ancestor is None:
                raise DeltaChannelError(
                    f"thread {thread_id!r} namespace {ns!r}: checkpoint {cid} rebuilds "
                    f"DeltaChannel {', '.join(sorted(missing))} from ancestor {parent}, "
                    "which is already gone; its history is broken, so nothing was deleted"
                )
            _add(keep, parent, f"ancestor of kept {cid}", explain)
            seen.add(parent)
            missing &= ancestor.delta_needs
            parent = ancestor.parent_id
    return keep
