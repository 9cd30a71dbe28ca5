"""The pure retention decision, on hand-made and generated checkpoint indexes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from langgraph_retention.errors import DeltaChannelError
from langgraph_retention.policy import (
    CheckpointEntry,
    RetentionPolicy,
    checkpoint_time,
    delta_needs,
    plan_thread,
)


def chain(n: int, ns: str = "", **extra: object) -> list[CheckpointEntry]:
    """A linear history of n checkpoints with sortable ids c000, c001, ..."""
    return [
        CheckpointEntry(ns, f"c{i:03d}", f"c{i - 1:03d}" if i else None, **extra)  # type: ignore[arg-type]
        for i in range(n)
    ]


def test_keep_last_keeps_the_newest_n() -> None:
    plan = plan_thread(chain(10), RetentionPolicy(keep_last=3))
    assert plan.keep[""] == ["c009", "c008", "c007"]
    assert plan.delete[""] == [f"c{i:03d}" for i in range(6, -1, -1)]


def test_short_thread_deletes_nothing() -> None:
    plan = plan_thread(chain(2), RetentionPolicy(keep_last=5))
    assert plan.deleted_count == 0
    assert plan.kept_count == 2


def test_empty_index_gives_empty_plan() -> None:
    plan = plan_thread([], RetentionPolicy(keep_last=1))
    assert plan.kept_count == 0 and plan.deleted_count == 0


@pytest.mark.parametrize("bad", [0, -1, -100])
def test_keep_last_below_one_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetentionPolicy(keep_last=bad)


def test_keep_last_must_be_an_int() -> None:
    with pytest.raises(TypeError):
        RetentionPolicy(keep_last="5")  # type: ignore[arg-type]


def test_negative_keep_within_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_within"):
        RetentionPolicy(keep_within=timedelta(hours=-1))


def test_unknown_delta_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="delta_channels"):
        RetentionPolicy(delta_channels="ignore")


def test_namespaces_are_pruned_independently() -> None:
    entries = chain(6) + chain(4, ns="memory")
    plan = plan_thread(entries, RetentionPolicy(keep_last=2))
    assert plan.keep == {"": ["c005", "c004"], "memory": ["c003", "c002"]}


def test_call_namespace_goes_with_the_parent_checkpoint_it_started_from() -> None:
    root = chain(6)
    old_call = [CheckpointEntry("child:t1", "c900", None, parents={"": "c001"})]
    new_call = [CheckpointEntry("child:t2", "c950", None, parents={"": "c005"})]
    plan = plan_thread(root + old_call + new_call, RetentionPolicy(keep_last=2))
    assert plan.delete["child:t1"] == ["c900"]
    assert "child:t1" in plan.dropped_namespaces
    assert plan.keep["child:t2"] == ["c950"]


def test_call_namespace_whose_parent_is_not_saved_yet_is_kept() -> None:
    call = [CheckpointEntry("child:t1", "c900", None, parents={"": "c999"})]
    plan = plan_thread(chain(3) + call, RetentionPolicy(keep_last=1))
    assert plan.keep["child:t1"] == ["c900"]


def test_nested_call_namespace_goes_with_its_dropped_enclosing_call() -> None:
    outer = [CheckpointEntry("outer:t1", "c900", None, parents={"": "c000"})]
    inner = [
        CheckpointEntry("outer:t1|inner:t2", "c901", None, parents={"": "c000", "outer:t1": "c900"})
    ]
    plan = plan_thread(chain(4) + outer + inner, RetentionPolicy(keep_last=1))
    assert set(plan.dropped_namespaces) == {"outer:t1", "outer:t1|inner:t2"}


def test_persistent_subgraph_namespace_is_never_dropped_whole() -> None:
    persistent = [CheckpointEntry("child", f"c9{i}", None, parents={"": "c000"}) for i in range(3)]
    plan = plan_thread(chain(4) + persistent, RetentionPolicy(keep_last=1))
    assert plan.keep["child"] == ["c92"]


def test_pending_sends_parent_is_kept() -> None:
    entries = chain(5)
    entries[4] = CheckpointEntry("", "c004", "c003", sends_parent=True)
    plan = plan_thread(entries, RetentionPolicy(keep_last=1))
    assert plan.keep[""] == ["c004", "c003"]


def test_delta_ancestry_is_kept_back_to_the_stored_value() -> None:
    # c000 stores the value (needs nothing); c001..c005 rebuild it from ancestors.
    entries = [CheckpointEntry("", "c000", None)] + [
        CheckpointEntry("", f"c{i:03d}", f"c{i - 1:03d}", delta_needs=frozenset({"items"}))
        for i in range(1, 6)
    ]
    plan = plan_thread(entries, RetentionPolicy(keep_last=1))
    assert plan.keep[""] == ["c005", "c004", "c003", "c002", "c001", "c000"]


def test_delta_ancestry_stops_at_the_nearest_snapshot() -> None:
    needs = frozenset({"items"})
    entries = [
        CheckpointEntry("", "c000", None, delta_needs=needs),
        CheckpointEntry("", "c001", "c000"),  # snapshot here
        CheckpointEntry("", "c002", "c001", delta_needs=needs),
        CheckpointEntry("", "c003", "c002", delta_needs=needs),
    ]
    plan = plan_thread(entries, RetentionPolicy(keep_last=1))
    assert plan.keep[""] == ["c003", "c002", "c001"]
    assert plan.delete[""] == ["c000"]


def test_delta_history_already_broken_is_refused_with_a_clear_message() -> None:
    entries = [CheckpointEntry("", "c005", "c004", delta_needs=frozenset({"items"}))]
    with pytest.raises(DeltaChannelError, match="DeltaChannel items"):
        plan_thread(entries, RetentionPolicy(keep_last=1), thread_id="t")


def test_refuse_mode_refuses_delta_threads() -> None:
    entries = [
        CheckpointEntry("", "c000", None),
        CheckpointEntry("", "c001", "c000", delta_needs=frozenset({"items"})),
    ]
    with pytest.raises(DeltaChannelError, match="DeltaChannel"):
        plan_thread(entries, RetentionPolicy(keep_last=1, delta_channels="refuse"))


def test_keep_within_keeps_recent_checkpoints_beyond_keep_last() -> None:
    now = datetime.now(UTC)
    ids = [str(uuid.UUID(int=_uuid6_int(now - timedelta(hours=h)))) for h in (30, 20, 2, 1, 0)]
    entries = [CheckpointEntry("", cid, None) for cid in ids]
    plan = plan_thread(
        entries, RetentionPolicy(keep_last=1, keep_within=timedelta(hours=3)), now=now
    )
    assert set(plan.keep[""]) == set(ids[2:])


def test_checkpoint_time_reads_uuid6_ids() -> None:
    when = datetime(2025, 7, 29, 23, 50, 38, tzinfo=UTC)
    got = checkpoint_time(str(uuid.UUID(int=_uuid6_int(when))))
    assert got is not None and abs((got - when).total_seconds()) < 1e-3


def test_checkpoint_time_of_a_non_uuid6_id_is_none() -> None:
    assert checkpoint_time("c001") is None
    assert checkpoint_time(str(uuid.uuid4())) is None


def test_delta_needs_is_versioned_minus_stored() -> None:
    assert delta_needs({"a", "b", "c"}, {"a", "b", "x"}, {"b"}) == {"a"}


def _uuid6_int(when: datetime) -> int:
    ticks = int(when.timestamp() * 10_000_000) + 0x01B21DD213814000
    value = ((ticks >> 12) & 0xFFFFFFFFFFFF) << 80 | (ticks & 0x0FFF) << 64
    value |= 0x6 << 76 | 0x8000 << 48 | 0x1234
    return value


@st.composite
def histories(draw: st.DrawFn) -> list[CheckpointEntry]:
    """Random forked histories over a couple of namespaces, with DeltaChannel needs."""
    entries: list[CheckpointEntry] = []
    for ns in draw(st.lists(st.sampled_from(["", "sub", "call:1"]), min_size=1, unique=True)):
        n = draw(st.integers(1, 25))
        ids = [f"c{i:03d}" for i in range(n)]
        for i, cid in enumerate(ids):
            parent = (
                ids[draw(st.integers(0, i - 1))]
                if i and draw(st.booleans())
                else (ids[i - 1] if i else None)
            )
            needs = frozenset({"items"}) if i and draw(st.integers(0, 3)) else frozenset()
            entries.append(
                CheckpointEntry(
                    ns, cid, parent, parents={"": "c000"} if ns else {}, delta_needs=needs
                )
            )
    return entries


@given(histories(), st.integers(1, 8))
def test_the_newest_of_every_namespace_is_always_kept(
    entries: list[CheckpointEntry], keep_last: int
) -> None:
    plan = plan_thread(entries, RetentionPolicy(keep_last=keep_last))
    for ns in {e.checkpoint_ns for e in entries}:
        newest = max(e.checkpoint_id for e in entries if e.checkpoint_ns == ns)
        assert newest in plan.keep.get(ns, []) or ns in plan.dropped_namespaces


@given(histories(), st.integers(1, 8))
def test_plan_partitions_the_index(entries: list[CheckpointEntry], keep_last: int) -> None:
    plan = plan_thread(entries, RetentionPolicy(keep_last=keep_last))
    for ns in {e.checkpoint_ns for e in entries}:
        all_ids = {e.checkpoint_id for e in entries if e.checkpoint_ns == ns}
        kept, deleted = set(plan.keep.get(ns, [])), set(plan.delete.get(ns, []))
        assert kept | deleted == all_ids and not kept & deleted


@given(histories(), st.integers(1, 8))
def test_every_kept_checkpoint_keeps_its_delta_ancestry(
    entries: list[CheckpointEntry], keep_last: int
) -> None:
    plan = plan_thread(entries, RetentionPolicy(keep_last=keep_last))
    index = {(e.checkpoint_ns, e.checkpoint_id): e for e in entries}
    for ns, kept in plan.keep.items():
        for cid in kept[:keep_last]:
            entry, missing = index[(ns, cid)], set(index[(ns, cid)].delta_needs)
            while missing and entry.parent_id is not None:
                assert entry.parent_id in kept
                entry = index[(ns, entry.parent_id)]
                missing &= entry.delta_needs
