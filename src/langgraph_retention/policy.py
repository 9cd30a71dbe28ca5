"""The retention decision: a pure function over one thread's checkpoint index.

No I/O happens here. Backends read an index (`CheckpointEntry` rows, cheap to
fetch: ids, parent ids and a few metadata facts, never the state itself), call
`plan_thread`, and delete what the returned `ThreadPlan` says. Sync and async
backends share this module, so every storage layout obeys the same rules.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import NamedTuple

from langgraph_retention.errors import DeltaChannelError

__all__ = [
    "CheckpointEntry",
    "RetentionPolicy",
    "ThreadPlan",
    "checkpoint_time",
    "delta_needs",
    "plan_thread",
]

# 100-ns intervals between the UUID epoch (1582-10-15) and the Unix epoch.
_UUID_EPOCH_OFFSET = 0x01B21DD213814000


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What to keep of every (thread, checkpoint namespace).

    `keep_last` newest checkpoints are kept; with `keep_within`, every checkpoint
    younger than that is kept too. The newest checkpoint is kept whatever the policy,
    and so is everything a kept checkpoint needs to load (DeltaChannel ancestry,
    pre-v4 pending sends). Deleting a whole thread is `saver.delete_thread`, not a
    policy. With `delta_channels="refuse"`, threads that use a `DeltaChannel` are
    refused instead of pruned around their snapshot ancestry.
    """

    keep_last: int = 10
    keep_within: timedelta | None = None
    delta_channels: str = "keep_ancestry"

    def __post_init__(self) -> None:
        if isinstance(self.keep_last, bool) or not isinstance(self.keep_last, int):
            raise TypeError(f"keep_last must be an int, got {type(self.keep_last).__name__}")
        if self.keep_last < 1:
            raise ValueError(
                f"keep_last must be at least 1 (got {self.keep_last}): the newest checkpoint "
                "of a thread is never deleted; to delete a whole thread use "
                "saver.delete_thread(thread_id)"
            )
        if self.keep_within is not None and self.keep_within < timedelta(0):
            raise ValueError(f"keep_within must not be negative, got {self.keep_within}")
        if self.delta_channels not in ("keep_ancestry", "refuse"):
            raise ValueError(
                f"delta_channels must be 'keep_ancestry' or 'refuse', got {self.delta_channels!r}"
            )


class CheckpointEntry(NamedTuple):
    """One checkpoint as the policy sees it: identity, lineage, and load dependencies.

    `delta_needs` are the DeltaChannel channels whose value at this checkpoint is rebuilt
    from ancestors' writes (a version but no stored value); a walk for a channel stops at
    the first ancestor that does not need it (it stores the value, or the channel had no
    writes yet). `sends_parent` says loading it reads its parent's pending sends (< v4).
    A named tuple: immutable, and cheap to build by the thousand from an index read.
    """

    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str | None = None
    parents: Mapping[str, str] = MappingProxyType({})
    delta_needs: frozenset[str] = frozenset()
    sends_parent: bool = False


@dataclass(slots=True)
class ThreadPlan:
    """The decision for one thread: checkpoint ids to keep and delete, per namespace."""

    keep: dict[str, list[str]] = field(default_factory=dict)
    delete: dict[str, list[str]] = field(default_factory=dict)
    dropped_namespaces: list[str] = field(default_factory=list)

    @property
    def kept_count(self) -> int:
        return sum(len(ids) for ids in self.keep.values())

    @property
    def deleted_count(self) -> int:
        return sum(len(ids) for ids in self.delete.values())

    def deleted_pairs(self) -> list[tuple[str, str]]:
        """(namespace, checkpoint id) of every checkpoint to delete."""
        return [(ns, cid) for ns, ids in self.delete.items() for cid in ids]


def checkpoint_time(checkpoint_id: str) -> datetime | None:
    """When a checkpoint was created, read from its UUIDv6 id; None if the id is not one."""
    try:
        u = uuid.UUID(checkpoint_id)
    except ValueError:
        return None
    if u.version != 6:
        return None
    ticks = ((u.time_low << 28) | (u.time_mid << 12) | (u.time_hi_version & 0x0FFF)) - (
        _UUID_EPOCH_OFFSET
    )
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ticks // 10)


def delta_needs(
    delta_channels: Iterable[str], versioned: Iterable[str], stored: Iterable[str]
) -> frozenset[str]:
    """The DeltaChannel names a checkpoint rebuilds from its ancestors.

    A channel with a version but no stored value is replayed from ancestor writes, as
    LangGraph's `_delta_channels_to_replay` decides; a stored value seeds it directly.
    """
    return frozenset((set(versioned) & set(delta_channels)) - set(stored))


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
) -> ThreadPlan:
    """Decide what to keep and delete of one thread, namespace by namespace.

    Rules, in order: a subgraph call namespace whose enclosing graph's checkpoint is
    deleted goes whole (nothing can load it any more); otherwise the newest
    `keep_last` (and those within `keep_within`) stay, then every ancestor a kept
    checkpoint needs to load: back to the nearest stored value of each DeltaChannel
    it rebuilds, and the parent holding its pre-v4 pending sends.
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

    cutoff = (now or datetime.now(UTC)) - policy.keep_within if policy.keep_within else None
    plan = ThreadPlan()
    deleted_ids: dict[str, set[str]] = {}
    # Enclosing graphs first, so a nested call sees whether its parent went.
    for ns in sorted(by_ns, key=lambda n: (n.count("|") + (1 if n else 0), n)):
        index = by_ns[ns]
        newest_first = sorted(index, reverse=True)
        if _is_call_namespace(ns) and _parent_deleted(index.values(), ns, deleted_ids):
            plan.delete[ns] = newest_first
            plan.dropped_namespaces.append(ns)
            deleted_ids[ns] = set(newest_first)
            continue
        chosen = newest_first[: policy.keep_last]
        if cutoff is not None:
            for cid in newest_first[policy.keep_last :]:
                created = checkpoint_time(cid)
                if created is None or created < cutoff:
                    break
                chosen.append(cid)
        keep = _with_dependencies(chosen, index, thread_id, ns)
        plan.keep[ns] = [cid for cid in newest_first if cid in keep]
        doomed = [cid for cid in newest_first if cid not in keep]
        if doomed:
            plan.delete[ns] = doomed
        deleted_ids[ns] = set(doomed)
    return plan


def _parent_deleted(
    entries: Iterable[CheckpointEntry], ns: str, deleted_ids: Mapping[str, set[str]]
) -> bool:
    """Whether a call namespace started from an enclosing checkpoint this plan deletes.

    A parent checkpoint not in the index is left alone: runs save in the background,
    so a call's checkpoints can commit before the one it started from.
    """
    for e in entries:
        for parent_ns, parent_id in e.parents.items():
            if parent_ns != ns and parent_id in deleted_ids.get(parent_ns, ()):
                return True
    return False


def _with_dependencies(
    chosen: list[str], index: Mapping[str, CheckpointEntry], thread_id: str, ns: str
) -> set[str]:
    """The chosen checkpoints plus every ancestor they need to load."""
    keep = set(chosen)
    for cid in chosen:
        entry = index[cid]
        if entry.sends_parent and entry.parent_id is not None and entry.parent_id in index:
            keep.add(entry.parent_id)
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
            keep.add(parent)
            seen.add(parent)
            missing &= ancestor.delta_needs
            parent = ancestor.parent_id
    return keep
