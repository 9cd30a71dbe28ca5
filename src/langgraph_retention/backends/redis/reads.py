"""The reads a Redis prune plans from, as programs (lists of commands out, replies in):
each thread's checkpoint and write keys, field-by-field details where keys do not say
enough, DeltaChannel facts, the marks and sizes richer rules need, and the guards of
expiring threads. Nothing here writes."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langgraph.checkpoint.redis.util import (
    from_storage_safe_id,
    from_storage_safe_str,
    to_storage_safe_id,
)
from langgraph.checkpoint.serde.types import INTERRUPT, TASKS

from langgraph_retention.errors import DeltaChannelError
from langgraph_retention.policy import (
    CheckpointEntry,
    RetentionPolicy,
    ThreadPlan,
    delta_needs,
)
from langgraph_retention.report import ThreadResult

from ..base import Span
from .model import (
    Command,
    Program,
    _attach_writes,
    _detailed_doc,
    _Doc,
    _docs_from_keys,
    _keys,
    _Layout,
    _objkeys,
    _owners,
    _parse_search,
    _Thread,
)
from .scripts import LUA_KEYS, SIZES_LUA, _kinds
from .search import (
    DELTA_MARK,
    DETAIL_LOAD,
    DETAIL_WRITE_LOAD,
    IDS_PER_QUERY,
    INTERRUPT_LOAD,
    KEYS_LOAD,
    KEYS_STEPS,
    MARKS_LOAD,
    MARKS_STEPS,
    SENDS_STEPS,
    SPANS_LOAD,
    SPANS_STEPS,
    TAG_LOAD,
    _aggregates,
    _read_all,
    _read_with,
    _searches,
    _tag,
    _taggable,
    _thread_of,
)

#: The checkpoint format version from which pending sends no longer live in the parent's
#: writes; threads with sends are read field by field so each checkpoint's version counts.
SENDS_MOVED_VERSION = 4


@dataclass(slots=True)
class _Overview:
    """What the first read of a batch found: its threads, and for `keep_tagged` (a plain
    key) the tagged checkpoints' keys among the threads in `tags_read`."""

    threads: dict[str, _Thread]
    tagged: set[str] = field(default_factory=set)
    tags_read: set[str] = field(default_factory=set)


def _read_overview(
    layout: _Layout, thread_ids: Sequence[str], tag: str | None = None
) -> Program[_Overview]:
    """Each thread's checkpoint and write keys from the indexes alone (FT.SEARCH ...
    NOCONTENT, no document loaded), and the threads that may involve a DeltaChannel or
    have pending sends (aggregations returning only those), in one round trip; threads
    the keys cannot plan are marked for the field-by-field read. A plain `tag` key
    (`keep_tagged`) is looked for in the same pass over the metadata."""
    ids = list(dict.fromkeys(thread_ids))
    taggable = [tid for tid in ids if _taggable(tid)]
    cp_cmds, cp_groups = _searches(layout.checkpoint_index, taggable)
    wr_cmds, wr_groups = _searches(layout.write_index, taggable)
    tag = tag if tag is not None and _PLAIN_KEY.fullmatch(tag) else None
    marks = MARKS_STEPS if tag is None else _marks_and_tag_steps(tag)
    flag_cmds = _aggregates(layout.checkpoint_index, taggable, MARKS_LOAD, marks)
    n_marks = len(flag_cmds)
    flag_cmds += _aggregates(
        layout.write_index, taggable, ("@thread_id",), SENDS_STEPS,
        where=f"@channel:{{{_tag(TASKS)}}}",
    )  # fmt: skip
    found, flag_rows = yield from _read_with(cp_cmds + wr_cmds, flag_cmds)
    cp_keys, odd = _attribute(layout.checkpoint_prefix, cp_groups, found[: len(cp_cmds)])
    wr_keys, writes_odd = _attribute(layout.write_prefix, wr_groups, found[len(cp_cmds) :])
    wanted = set(ids)
    overview = _Overview({}, tags_read=set(taggable) if tag is not None else set())
    for rows in flag_rows[n_marks:]:  # pending sends
        odd.update(tid for r in rows if (tid := _thread_of(r, wanted)))
    for rows in flag_rows[:n_marks]:
        for row in rows:
            if (tid := _thread_of(row, wanted)) is None:
                continue
            raw = row.get("metadata")
            if not isinstance(raw, str) or DELTA_MARK in raw:
                odd.add(tid)
            if tag is not None and isinstance(raw, str) and _tagged(raw, tag):
                overview.tagged.add(row["__key"])
    odd.update(set(ids) - set(taggable))  # no tag to search by
    threads: dict[str, _Thread] = {}
    for tid in ids:
        stored = to_storage_safe_id(tid)
        if tid in odd:
            threads[tid] = _Thread(stored_id=stored, detailed=True)
        elif tid in cp_keys:
            docs = _docs_from_keys(layout, stored, cp_keys[tid])
            thread = _Thread(stored_id=stored, docs=docs or [], detailed=docs is None)
            thread.writes_known = (
                not thread.detailed
                and tid not in writes_odd
                and _attach_writes(layout, thread, wr_keys.get(tid, []))
            )
            threads[tid] = thread
    overview.threads = threads
    return overview


def _marks_and_tag_steps(tag: str) -> tuple[object, ...]:
    """Checkpoints that may involve a DeltaChannel or whose metadata holds `tag`'s text,
    one row each (JSON decides the tag)."""
    return (
        "FILTER",
        f'!exists(@metadata) || contains(@metadata, "{DELTA_MARK}") '
        f'|| contains(@metadata, "{tag}")',
        "LOAD", 2, "@__key", "@thread_id",
    )  # fmt: skip


def _tagged(raw: str, tag: str) -> bool:
    """Whether a checkpoint's metadata (JSON text) sets `tag`."""
    meta = json.loads(raw) if raw else {}
    return isinstance(meta, dict) and bool(meta.get(tag))


def _attribute(
    prefix: str, groups: Sequence[Sequence[str]], replies: Sequence[Any]
) -> tuple[dict[str, list[str]], set[str]]:
    """Keys of FT.SEARCH replies per thread of the query's group, told apart by their
    `{prefix}:{stored id}:` (tag matches are a superset: other threads' keys fit none, or
    fail the key split later). Threads a key fits together, or whose query matched more
    than a reply holds, come back as odd: they are read field by field."""
    by_thread: dict[str, list[str]] = defaultdict(list)
    odd: set[str] = set()
    for group, reply in zip(groups, replies, strict=True):
        keys, total = _parse_search(reply)
        if total > len(keys):
            odd.update(group)
            continue
        heads = {to_storage_safe_id(tid): tid for tid in group}
        nested = any(":" in stored for stored in heads)
        for key in keys:
            owners = _owners(prefix, heads, key, nested)
            if len(owners) == 1:
                by_thread[owners[0]].append(key)
            else:
                odd.update(owners)
    return by_thread, odd


def _read_details(layout: _Layout, threads: dict[str, _Thread]) -> Program[None]:
    """Field-by-field checkpoints and writes of the threads the overview could not plan."""
    ids = [tid for tid, t in threads.items() if t.detailed]
    if not ids:
        return
    cp_cmds = _aggregates(layout.checkpoint_index, ids, DETAIL_LOAD)
    wr_cmds = _aggregates(layout.write_index, ids, DETAIL_WRITE_LOAD)
    results = yield from _read_all(cp_cmds + wr_cmds)
    wanted = set(ids)
    for tid in ids:
        threads[tid].docs = []
        threads[tid].writes.clear()
    for rows in results[: len(cp_cmds)]:
        for row in rows:
            if (owner := _thread_of(row, wanted)) is not None:
                threads[owner].docs.append(_detailed_doc(row))
    for rows in results[len(cp_cmds) :]:
        for row in rows:
            if (owner := _thread_of(row, wanted)) is None:
                continue
            at = (
                from_storage_safe_str(row.get("checkpoint_ns") or ""),
                from_storage_safe_id(row.get("checkpoint_id") or ""),
            )
            threads[owner].writes[at].append(row["__key"])
            if row.get("channel") == TASKS:
                threads[owner].sends_at.add(at)
            elif row.get("channel") == INTERRUPT:
                threads[owner].interrupted_at.add(at)


def _delta_names(docs: Sequence[_Doc]) -> dict[str, set[str]]:
    """DeltaChannel names per namespace, from the metadata counters LangGraph keeps."""
    names: dict[str, set[str]] = defaultdict(set)
    for d in docs:
        counters = d.metadata.get(DELTA_MARK)
        if isinstance(counters, dict) and counters:
            names[d.ns].update(counters)
    return names


def _read_stored_channels(
    threads: dict[str, _Thread],
) -> Program[tuple[dict[str, dict[str, set[str]]], dict[str, tuple[set[str], set[str]]]]]:
    """For DeltaChannel threads only: per checkpoint key, its versioned and stored channels."""
    names_by_thread = {tid: _delta_names(t.docs) for tid, t in threads.items() if t.detailed}
    keys = [
        d.key
        for tid, names in names_by_thread.items()
        for d in threads[tid].docs
        if names.get(d.ns)
    ]
    channels: dict[str, tuple[set[str], set[str]]] = {}
    if keys:
        replies = yield [
            cmd
            for key in keys
            for cmd in (
                ("JSON.OBJKEYS", key, "$.checkpoint.channel_versions"),
                ("JSON.OBJKEYS", key, "$.checkpoint.channel_values"),
            )
        ]
        for i, key in enumerate(keys):
            channels[key] = (_objkeys(replies[2 * i]), _objkeys(replies[2 * i + 1]))
    return names_by_thread, channels


def _entries(
    thread: _Thread,
    names: dict[str, set[str]],
    channels: dict[str, tuple[set[str], set[str]]],
    tag: str | None = None,
    tagged: set[str] | None = None,
) -> list[CheckpointEntry]:
    entries = []
    tags = frozenset({tag}) if tag is not None else frozenset()
    for d in thread.docs:
        ns_names = names.get(d.ns)
        needs: frozenset[str] = frozenset()
        if ns_names:
            versioned, stored = channels.get(d.key, (set(), set()))
            needs = delta_needs(ns_names, versioned, stored)
        if needs:
            # Pruned around its ancestry, a DeltaChannel thread reads back exactly on
            # RedisSaver, but the next run's rebuild was seen to drop the newest write
            # (tests/test_invariants.py); refuse until that is understood.
            raise DeltaChannelError(
                f"thread {thread.stored_id!r} uses a DeltaChannel "
                f"({', '.join(sorted(needs))}); pruning DeltaChannel threads is refused "
                "on RedisSaver for now; nothing was deleted"
            )
        parents = d.metadata.get("parents")
        old_format = d.version is None or d.version < SENDS_MOVED_VERSION
        entries.append(
            CheckpointEntry(
                checkpoint_ns=d.ns,
                checkpoint_id=d.cid,
                parent_id=d.parent,
                parents=parents if isinstance(parents, dict) else {},
                delta_needs=needs,
                sends_parent=old_format and (d.ns, d.parent or "") in thread.sends_at,
                tags=tags if tagged and d.key in tagged else frozenset(),
                interrupted=(d.ns, d.cid) in thread.interrupted_at,
            )
        )
    return entries


#: A tag key RediSearch may look for inside the metadata text as it is.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def _read_marks(layout: _Layout, overview: _Overview, policy: RetentionPolicy) -> Program[set[str]]:
    """`keep_interrupted`: file interrupt writes under their checkpoints (threads read
    field by field have them already). `keep_tagged`: the keys of checkpoints whose
    metadata sets the key (the server filters on the key's text; JSON decides), for the
    threads the overview did not look at already."""
    threads = overview.threads
    ids = list(threads)
    commands: list[Command] = []
    if policy.keep_interrupted:
        fast = [tid for tid in ids if not threads[tid].detailed]
        commands += (
            _aggregates(
                layout.write_index, fast, INTERRUPT_LOAD, where=f"@channel:{{{_tag(INTERRUPT)}}}"
            )
            if fast
            else []
        )
    n_interrupt = len(commands)
    tag = policy.keep_tagged
    unread = [tid for tid in ids if tid not in overview.tags_read]
    if tag is not None and unread:
        steps = ("FILTER", f'contains(@metadata, "{tag}")') if _PLAIN_KEY.fullmatch(tag) else ()
        commands += _aggregates(layout.checkpoint_index, unread, TAG_LOAD, steps)
    results = yield from _read_all(commands)
    wanted = set(ids)
    for rows in results[:n_interrupt]:
        for row in rows:
            if (tid := _thread_of(row, wanted)) is not None:
                threads[tid].interrupted_at.add(
                    (
                        from_storage_safe_str(row.get("checkpoint_ns") or ""),
                        from_storage_safe_id(row.get("checkpoint_id") or ""),
                    )
                )
    tagged = set(overview.tagged)
    for rows in results[n_interrupt:]:
        for row in rows:
            raw = row.get("metadata")
            if (
                tag is not None
                and _thread_of(row, wanted) is not None
                and isinstance(raw, str)
                and _tagged(raw, tag)
            ):
                tagged.add(row["__key"])
    return tagged


@dataclass(slots=True)
class _Sizes:
    """`max_bytes` only: `size_of` every key, and per checkpoint the sum of its
    document, its write registry and its writes (channel values live in the document).
    The deletes reuse `by_key` instead of measuring the same keys again."""

    by_key: dict[str, int] = field(default_factory=dict)
    by_checkpoint: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _read_sizes(layout: _Layout, docs: Sequence[tuple[_Thread, Sequence[_Doc]]]) -> Program[_Sizes]:
    """`size_of` the keys of each (thread, its checkpoints to size), in Lua calls of at
    most `LUA_KEYS` keys."""
    owners: list[str] = []
    keys: list[str] = []
    for thread, thread_docs in docs:
        for d in thread_docs:
            for key in (d.key, layout.registry_key(d.key), *thread.writes.get((d.ns, d.cid), [])):
                owners.append(d.key)
                keys.append(key)
    sizes = _Sizes()
    if keys:
        chunks = [keys[i : i + LUA_KEYS] for i in range(0, len(keys), LUA_KEYS)]
        replies = yield [("EVAL", SIZES_LUA, len(chunk), *chunk, _kinds(chunk)) for chunk in chunks]
        measured = [size for reply in replies for size in reply]
        for owner, key, reply in zip(owners, keys, measured, strict=True):
            size = int(reply or 0)
            sizes.by_key[key] = size
            sizes.by_checkpoint[owner] += size
    return sizes


def _kept_docs(
    threads: Mapping[str, _Thread],
    decided: Mapping[str, tuple[ThreadPlan, ThreadResult, list[CheckpointEntry]]],
) -> dict[str, tuple[_Thread, list[_Doc]]]:
    """Each decided thread and its kept checkpoints (an expired thread keeps none)."""
    out: dict[str, tuple[_Thread, list[_Doc]]] = {}
    for tid, (plan, result, _entries) in decided.items():
        if result.expired is None:
            kept = {(ns, cid) for ns, ids in plan.keep.items() for cid in ids}
            out[tid] = (threads[tid], [d for d in threads[tid].docs if (d.ns, d.cid) in kept])
    return out


def _sized(entries: list[CheckpointEntry], thread: _Thread, sizes: _Sizes) -> list[CheckpointEntry]:
    """`entries` with the bytes measured for their checkpoints (0 where not sized)."""
    keys = {(d.ns, d.cid): d.key for d in thread.docs}
    measured = sizes.by_checkpoint
    return [
        e._replace(size=measured.get(keys[(e.checkpoint_ns, e.checkpoint_id)], 0)) for e in entries
    ]


def _spans_program(layout: _Layout, thread_ids: Sequence[str]) -> Program[dict[str, Span]]:
    """Each thread's oldest and newest checkpoint id, from the checkpoint index."""
    rows_list = yield from _read_all(
        _aggregates(layout.checkpoint_index, thread_ids, SPANS_LOAD, SPANS_STEPS)
    )
    wanted = set(thread_ids)
    spans: dict[str, Span] = {}
    for rows in rows_list:
        for row in rows:
            tid = _thread_of(row, wanted)
            first, newest = row.get("first"), row.get("newest")
            if tid is not None and isinstance(first, str) and isinstance(newest, str):
                spans[tid] = (from_storage_safe_id(first), from_storage_safe_id(newest))
    return spans


def _read_doomed_writes(
    layout: _Layout, doomed: dict[str, list[str]]
) -> Program[dict[str, list[str]]]:
    """Write keys of the given checkpoint ids, per exact thread id (overview threads)."""
    commands: list[Command] = []
    for tid, cids in doomed.items():
        for start in range(0, len(cids), IDS_PER_QUERY):
            tags = (_tag(to_storage_safe_id(c)) for c in cids[start : start + IDS_PER_QUERY])
            where = "@checkpoint_id:{" + "|".join(tags) + "}"
            commands += _aggregates(layout.write_index, [tid], KEYS_LOAD, KEYS_STEPS, where=where)
    results = yield from _read_all(commands)
    wanted = set(doomed)
    found: dict[str, list[str]] = defaultdict(list)
    for rows in results:
        for row in rows:
            if (owner := _thread_of(row, wanted)) is not None:
                found[owner].extend(_keys(row))
    return found


def _newest_keys(docs: Sequence[_Doc]) -> dict[str, _Doc]:
    """Each namespace's newest checkpoint (by stored namespace)."""
    newest: dict[str, _Doc] = {}
    for d in docs:
        if d.stored_ns not in newest or d.cid > newest[d.stored_ns].cid:
            newest[d.stored_ns] = d
    return newest


def _read_guards(layout: _Layout, threads: Mapping[str, _Thread]) -> Program[dict[str, list[str]]]:
    """Per expiring thread, (pointer, newest key) pairs for each namespace whose
    `checkpoint_latest` pointer exists: the deleting script re-checks them."""
    asks: list[tuple[str, str, str]] = []
    for tid, thread in threads.items():
        for stored_ns, doc in _newest_keys(thread.docs).items():
            asks.append((tid, layout.latest_key(thread.stored_id, stored_ns), doc.key))
    guards: dict[str, list[str]] = {tid: [] for tid in threads}
    if asks:
        replies = yield [("GET", pointer) for _tid, pointer, _key in asks]
        for (tid, pointer, key), found in zip(asks, replies, strict=True):
            if found is not None:
                guards[tid] += [pointer, key]
    return guards
