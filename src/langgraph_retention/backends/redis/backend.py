"""`RedisSaver` and `AsyncRedisSaver` (langgraph-checkpoint-redis >= 0.5).

Layout (0.5): each checkpoint is a RedisJSON document `checkpoint:{thread}:{ns}:{id}` with
its channel values inline (no blob keys), each pending write a document
`checkpoint_write:{thread}:{ns}:{id}:{task}:{idx}`, each checkpoint's write keys a sorted
set `write_keys_zset:{thread}:{ns}:{id}`, and each (thread, ns) a string
`checkpoint_latest:{thread}:{ns}` holding its newest checkpoint's key. Ids go into keys
unescaped (empty ones as sentinels), so thread ids are never cut out of keys: they come
from the documents' `thread_id` field through the RediSearch indexes, grouped server-side
(`FT.AGGREGATE ... GROUPBY @thread_id REDUCE TOLIST @__key`), which also keeps the replies
small. Only the part of a key after its known `{prefix}:{thread}:` is split, and only
where that is unambiguous; anything else is read field by field.

A prune reads, in one round trip, each thread's checkpoint keys, write keys and a
DeltaChannel flag (never the state), plans it, then sizes (`size_of`: JSON.DEBUG MEMORY
or MEMORY USAGE) and UNLINKs the doomed keys in one Lua call per thread: explicit keys
only, never a pattern; the only write is repairing a `checkpoint_latest` pointer left
on a deleted key (SET ... KEEPTTL).
The programs below yield lists of commands (one pipeline each) and receive the replies,
so the sync and async drivers share every decision.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from langgraph.checkpoint.redis.key_registry import WRITE_KEYS_ZSET_PREFIX
from langgraph.checkpoint.redis.util import (
    from_storage_safe_id,
    from_storage_safe_str,
    to_storage_safe_id,
    to_storage_safe_str,
)
from langgraph.checkpoint.serde.types import INTERRUPT, TASKS
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from langgraph_retention.errors import DeltaChannelError, RetentionError, StoreUnavailableError
from langgraph_retention.policy import (
    CheckpointEntry,
    RetentionPolicy,
    ThreadPlan,
    checkpoint_time,
    delta_needs,
)
from langgraph_retention.report import ThreadResult, ThreadStats

from ..base import Backend, Expire, Span, decide, gc_paused
from .lock import RedisSweepLock, lock_key
from .schema import indexes_program, not_ready

__all__ = ["AsyncRedisBackend", "RedisBackend", "RedisUnavailableError"]

# -- layout and limits ---------------------------------------------------------------------

# Every command is kept short: Redis runs one at a time, so each one we send is a pause
# for every app on the server (the scale benchmark checks SLOWLOG for any over 50 ms).

#: Rows (or thread groups) per FT.AGGREGATE / FT.CURSOR READ reply.
CURSOR_PAGE = 1_000
#: Threads per FT.AGGREGATE: the server aggregates every matching document before the
#: first reply, so a query's cost follows its threads' documents (~60 each here).
THREADS_PER_QUERY = 10
#: Keys each SCAN step looks at when enumerating threads (one short step per call).
SCAN_COUNT = 1_000
#: Commands per pipeline round trip (bounds client and server buffers).
PIPELINE_CHUNK = 10_000
#: Searches (FT.AGGREGATE, FT.CURSOR) per pipeline round trip; see `_pipelines`.
SEARCHES_PER_PIPELINE = 3
#: Keys per Lua call: each call blocks the server while it sizes and frees them.
LUA_KEYS = 100
#: The root namespace as keys spell it; its `checkpoint_latest` pointers list the threads.
ROOT_NS = to_storage_safe_str("")
#: Checkpoint ids per write-key query (a tag union; keeps each query string modest).
IDS_PER_QUERY = 1_000
#: The checkpoint format version from which pending sends no longer live in the parent's
#: writes; threads with sends are read field by field so each checkpoint's version counts.
SENDS_MOVED_VERSION = 4
#: The metadata key LangGraph keeps on checkpoints whose DeltaChannels have pending deltas.
DELTA_MARK = "counters_since_delta_snapshot"
#: The TAG separator the saver's schema uses: a thread id is indexed as its pieces.
TAG_SEPARATOR = ","
#: What RediSearch trims around each tag piece (C isspace).
TAG_WHITESPACE = " \t\n\v\f\r"
#: ASCII punctuation and whitespace must be backslash-escaped inside a tag query.
_TAG_ESCAPES = str.maketrans(
    {c: "\\" + c for c in map(chr, range(128)) if not (c.isalnum() or c == "_")}
)
#: LangGraph checkpoint ids: canonical UUIDs (never a ':').
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TAIL = ("WITHCURSOR", "COUNT", CURSOR_PAGE, "TIMEOUT", 0, "DIALECT", 2)

#: Per thread: its checkpoint keys, and whether any checkpoint may involve a DeltaChannel
#: (a missing metadata field counts as "may": such threads are read field by field).
OVERVIEW_LOAD = ("@__key", "@thread_id", "$.metadata", "AS", "metadata")
OVERVIEW_STEPS = (
    "APPLY", f'!exists(@metadata) || contains(@metadata, "{DELTA_MARK}")', "AS", "delta",
    "GROUPBY", 1, "@thread_id",
    "REDUCE", "TOLIST", 1, "@__key", "AS", "keys",
    "REDUCE", "MAX", 1, "@delta", "AS", "delta",
)  # fmt: skip
#: Threads with pending sends (`__pregel_tasks` writes): pre-v4 children depend on them.
SENDS_STEPS = ("GROUPBY", 1, "@thread_id", "REDUCE", "COUNT", 0, "AS", "sends")
#: Field-by-field reads, for threads the overview cannot plan (DeltaChannel, subgraph
#: calls, sends, unusual keys): identity, lineage and load dependencies, never the state.
DETAIL_LOAD = (
    "@__key", "@thread_id", "@checkpoint_ns", "@checkpoint_id", "@parent_checkpoint_id",
    "$.metadata", "AS", "metadata", "$.checkpoint.v", "AS", "v",
)  # fmt: skip
DETAIL_WRITE_LOAD = ("@__key", "@thread_id", "@checkpoint_ns", "@checkpoint_id", "@channel")
#: Write keys grouped by exact thread id.
KEYS_LOAD = ("@__key", "@thread_id")
KEYS_STEPS = ("GROUPBY", 1, "@thread_id", "REDUCE", "TOLIST", 1, "@__key", "AS", "keys")
STATS_LOAD = ("@__key", "@thread_id", "@checkpoint_ns", "@checkpoint_id")
STATS_STEPS = (
    "GROUPBY", 1, "@thread_id",
    "REDUCE", "TOLIST", 1, "@__key", "AS", "keys",
    "REDUCE", "COUNT_DISTINCT", 1, "@checkpoint_ns", "AS", "namespaces",
    "REDUCE", "FIRST_VALUE", 4, "@checkpoint_id", "BY", "@checkpoint_id", "DESC", "AS", "newest",
)  # fmt: skip

#: Interrupt writes (`keep_interrupted`) and tagged checkpoints (`keep_tagged`).
INTERRUPT_LOAD = ("@thread_id", "@checkpoint_ns", "@checkpoint_id")
TAG_LOAD = ("@__key", "@thread_id", "$.metadata", "AS", "metadata")
#: Per thread: its oldest and newest checkpoint id (thread expiry).
SPANS_LOAD = ("@thread_id", "@checkpoint_id")
SPANS_STEPS = (
    "GROUPBY", 1, "@thread_id",
    "REDUCE", "FIRST_VALUE", 4, "@checkpoint_id", "BY", "@checkpoint_id", "ASC", "AS", "first",
    "REDUCE", "FIRST_VALUE", 4, "@checkpoint_id", "BY", "@checkpoint_id", "DESC", "AS", "newest",
)  # fmt: skip

#: A key's bytes: RedisJSON's own count for JSON documents (checkpoints, writes; half
#: the server time of MEMORY USAGE on big documents, within 1% of it), MEMORY USAGE for
#: the rest (write registries).
_SIZE_OF_LUA = """
local function size_of(key)
  local n = redis.pcall('JSON.DEBUG', 'MEMORY', key)
  if type(n) == 'number' then return n end
  return redis.call('MEMORY', 'USAGE', key) or 0
end
"""

#: ARGV[1]: '0' sizes only (dry run), '1' sizes and deletes, '2' deletes unsized (the
#: caller measured the keys already, for `max_bytes`).
#: Returns -1 and touches nothing unless each of ARGV[2]'s guard pairs (pointer, key)
#: holds: an expired thread goes only while every `checkpoint_latest` pointer still names
#: the checkpoint the decision saw as newest (a run that wrote since keeps its thread).
#: Then sizes KEYS (`size_of`, before anything goes) and returns the sum; with ARGV[1] == '1'
#: also UNLINKs them, then repairs each `checkpoint_latest` pointer given as an ARGV pair
#: (pointer, key of the namespace's newest kept checkpoint or '' when the namespace went):
#: only a pointer whose target no longer exists is touched, re-pointed with KEEPTTL (its
#: TTL stays) or deleted; one a concurrent put moved to a live key is left alone.
SIZE_AND_DELETE_LUA = (
    _SIZE_OF_LUA
    + """
local guards = tonumber(ARGV[2])
for i = 3, 2 + 2 * guards, 2 do
  if redis.call('GET', ARGV[i]) ~= ARGV[i + 1] then return -1 end
end
local bytes = 0
if ARGV[1] ~= '2' then
  for i = 1, #KEYS do
    bytes = bytes + size_of(KEYS[i])
  end
end
if ARGV[1] ~= '0' then
  for i = 1, #KEYS, 500 do
    redis.call('UNLINK', unpack(KEYS, i, math.min(i + 499, #KEYS)))
  end
  for i = 3 + 2 * guards, #ARGV, 2 do
    local target = redis.call('GET', ARGV[i])
    if target and redis.call('EXISTS', target) == 0 then
      if ARGV[i + 1] == '' then
        redis.call('DEL', ARGV[i])
      else
        redis.call('SET', ARGV[i], ARGV[i + 1], 'KEEPTTL')
      end
    end
  end
end
return bytes
"""
)
SIZE_AND_DELETE_SHA = hashlib.sha1(SIZE_AND_DELETE_LUA.encode()).hexdigest()

#: `size_of` each of KEYS, as one array (one reply per call, not one per key).
SIZES_LUA = (
    _SIZE_OF_LUA
    + """
local sizes = {}
for i = 1, #KEYS do
  sizes[i] = size_of(KEYS[i])
end
return sizes
"""
)

R = TypeVar("R")
Command = tuple[Any, ...]
Program = Generator[list[Command], list[Any], R]
Row = dict[str, Any]


class RedisUnavailableError(StoreUnavailableError):
    """The Redis server could not be reached (or stopped answering) during a prune."""


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where one saver keeps things: its index names and key prefixes."""

    checkpoint_index: str
    write_index: str
    checkpoint_prefix: str
    write_prefix: str
    latest_prefix: str

    def latest_key(self, stored_tid: str, stored_ns: str) -> str:
        """The (thread, ns) `checkpoint_latest` pointer, from stored (sentinel) values."""
        return f"{self.latest_prefix}:{stored_tid}:{stored_ns}"

    def registry_key(self, checkpoint_key: str) -> str:
        """The checkpoint's write-key registry: same `{thread}:{ns}:{id}` tail, own prefix."""
        return WRITE_KEYS_ZSET_PREFIX + checkpoint_key[len(self.checkpoint_prefix) :]


@dataclass(slots=True)
class _Doc:
    """One checkpoint as the planner needs it (ns and ids un-sentineled)."""

    key: str
    ns: str
    cid: str
    stored_ns: str
    parent: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int | None = None


@dataclass(slots=True)
class _Thread:
    """One thread's checkpoints; for field-by-field threads also their writes and sends."""

    stored_id: str
    docs: list[_Doc] = field(default_factory=list)
    detailed: bool = False
    #: False when some write key could not be tied to a checkpoint from its key alone;
    #: the doomed checkpoints' writes are then looked up by checkpoint id instead.
    writes_known: bool = False
    writes: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    sends_at: set[tuple[str, str]] = field(default_factory=set)
    interrupted_at: set[tuple[str, str]] = field(default_factory=set)


# -- reply parsing (RESP2 lists and RESP3 maps, bytes or str) ---------------------------


def _decode(value: Any) -> Any:
    """Bytes (clients without decode_responses) to str, through lists."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _get(mapping: dict[Any, Any], name: str) -> Any:
    """A RESP3 map entry, whether the client decodes keys or not."""
    return mapping.get(name, mapping.get(name.encode()))


def _parse_page(reply: Any) -> tuple[list[Row], int]:
    """Rows and the next cursor id (0: done) of an FT.AGGREGATE WITHCURSOR reply."""
    payload, cursor = reply
    if isinstance(payload, dict):  # RESP3
        warnings = _get(payload, "warning") or []
        if warnings:
            raise RetentionError(
                "RediSearch returned partial results "
                f"({'; '.join(str(_decode(w)) for w in warnings)}); nothing was deleted"
            )
        rows = [
            {_decode(k): _decode(v) for k, v in (_get(r, "extra_attributes") or {}).items()}
            for r in _get(payload, "results") or []
        ]
    else:  # RESP2: [count, [field, value, ...], ...]
        rows = [
            {_decode(row[i]): _decode(row[i + 1]) for i in range(0, len(row) - 1, 2)}
            for row in payload[1:]
        ]
    return rows, int(cursor)


def _objkeys(reply: Any) -> set[str]:
    """The keys of a `JSON.OBJKEYS key $.path` reply (empty when the path is missing)."""
    if not reply or reply[0] is None:
        return set()
    return {_decode(k) for k in reply[0]}


def _keys(row: Row) -> list[str]:
    """The keys a grouped row collected with TOLIST."""
    keys = row.get("keys") or []
    return [keys] if isinstance(keys, str) else list(keys)


# -- queries -------------------------------------------------------------------------------


def _tag(value: str) -> str:
    """`value` escaped for a RediSearch tag query (non-ASCII passes through)."""
    return value.translate(_TAG_ESCAPES)


def _thread_query(thread_ids: Sequence[str]) -> tuple[str | None, list[str]]:
    """A RediSearch query matching the threads' documents, and ids no tag query can match.

    The match is a superset (tags are case-insensitive and split at ','); rows are kept
    by their exact `thread_id` afterwards. An id made only of separators and whitespace is
    indexed as no tag at all and needs a FILTER scan instead.
    """
    simple: list[str] = []
    clauses: list[str] = []
    unmatched: list[str] = []
    for tid in thread_ids:
        stored = to_storage_safe_id(tid)
        pieces = [p.strip(TAG_WHITESPACE) for p in stored.split(TAG_SEPARATOR)]
        pieces = [p for p in pieces if p]
        if not pieces:
            unmatched.append(stored)
        elif len(pieces) == 1:
            simple.append(_tag(pieces[0]))
        else:
            clauses.append("(" + " ".join(f"@thread_id:{{{_tag(p)}}}" for p in pieces) + ")")
    if simple:
        clauses.insert(0, "(@thread_id:{" + "|".join(dict.fromkeys(simple)) + "})")
    return (" | ".join(clauses) if clauses else None), unmatched


def _aggregates(
    index: str,
    thread_ids: Sequence[str],
    load: Sequence[str],
    steps: Sequence[Any] = (),
    where: str = "",
) -> list[Command]:
    """FT.AGGREGATE commands over every document of the given threads (and `where`),
    `THREADS_PER_QUERY` threads each."""
    commands: list[Command] = []
    unmatched: list[str] = []
    for start in range(0, len(thread_ids), THREADS_PER_QUERY):
        query, odd = _thread_query(thread_ids[start : start + THREADS_PER_QUERY])
        unmatched += odd
        if query is not None:
            full = f"({query}) {where}" if where else query
            commands.append(("FT.AGGREGATE", index, full, "LOAD", len(load), *load, *steps, *_TAIL))
    for stored in unmatched:  # only separators/whitespace: no quote can end the literal
        fields = tuple(load) if "@thread_id" in load else (*load, "@thread_id")
        commands.append(
            ("FT.AGGREGATE", index, where or "*", "LOAD", len(fields), *fields,
             "FILTER", f'@thread_id == "{stored}"', *steps, *_TAIL)
        )  # fmt: skip
    return commands


def _read_all(commands: list[Command]) -> Program[list[list[Row]]]:
    """Run FT.AGGREGATE commands in one pipeline and drain their cursors; rows per command."""
    out: list[list[Row]] = [[] for _ in commands]
    if not commands:
        return out
    replies = yield commands
    open_cursors: dict[int, int] = {}
    for i, reply in enumerate(replies):
        rows, cursor = _parse_page(reply)
        out[i].extend(rows)
        if cursor:
            open_cursors[i] = cursor
    while open_cursors:
        order = list(open_cursors)
        replies = yield [
            ("FT.CURSOR", "READ", commands[i][1], open_cursors[i], "COUNT", CURSOR_PAGE)
            for i in order
        ]
        for i, reply in zip(order, replies, strict=True):
            rows, cursor = _parse_page(reply)
            out[i].extend(rows)
            if cursor:
                open_cursors[i] = cursor
            else:
                del open_cursors[i]
    return out


def _thread_of(row: Row, wanted: set[str]) -> str | None:
    """The row's exact thread id if it is one we asked for (tag matches are a superset)."""
    raw = row.get("thread_id")
    if not isinstance(raw, str):
        return None
    tid = from_storage_safe_id(raw)
    return tid if tid in wanted else None


def _docs_from_keys(layout: _Layout, stored_tid: str, keys: Sequence[str]) -> list[_Doc] | None:
    """Checkpoints from their keys, split after the known `{prefix}:{thread}:` only.

    The tail is `{ns}:{id}`; LangGraph ids are UUIDs (no ':'), so the split is exact.
    None when a key does not fit, or a subgraph call namespace needs its metadata.
    """
    head = f"{layout.checkpoint_prefix}:{stored_tid}:"
    docs = []
    for key in keys:
        if not key.startswith(head):
            return None
        stored_ns, sep, stored_cid = key[len(head) :].rpartition(":")
        ns = from_storage_safe_str(stored_ns)
        if not sep or not _UUID.fullmatch(stored_cid) or ":" in ns:
            return None
        docs.append(_Doc(key=key, ns=ns, cid=from_storage_safe_id(stored_cid), stored_ns=stored_ns))
    return docs


def _attach_writes(layout: _Layout, thread: _Thread, keys: Sequence[str]) -> bool:
    """File write keys under their checkpoints, split after `{prefix}:{thread}:` only.

    The tail is `{ns}:{id}:{task}:{idx}`. A key whose `{ns}:{id}` is not one of the
    thread's checkpoints (a task id with ':', a write newer than the read, an orphan)
    makes the whole thread fall back to a lookup by checkpoint id: False.
    """
    head = f"{layout.write_prefix}:{thread.stored_id}:"
    known = {(d.stored_ns, d.cid) for d in thread.docs}
    for key in keys:
        if not key.startswith(head):
            return False
        parts = key[len(head) :].rsplit(":", 2)
        if len(parts) != 3:
            return False
        stored_ns, _sep, stored_cid = parts[0].rpartition(":")
        cid = from_storage_safe_id(stored_cid)
        if (stored_ns, cid) not in known:
            return False
        thread.writes[(from_storage_safe_str(stored_ns), cid)].append(key)
    return True


def _version(raw: Any) -> int | None:
    """An integer field as read (None when absent or not a number)."""
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def _detailed_doc(row: Row) -> _Doc:
    """A checkpoint from its field-by-field row (metadata parsed: parents, delta counters)."""
    meta_raw = row.get("metadata")
    meta = json.loads(meta_raw) if isinstance(meta_raw, str) and meta_raw else {}
    stored_ns = row.get("checkpoint_ns") or ""
    return _Doc(
        key=row["__key"],
        ns=from_storage_safe_str(stored_ns),
        cid=from_storage_safe_id(row["checkpoint_id"]),
        stored_ns=stored_ns,
        parent=from_storage_safe_id(row.get("parent_checkpoint_id") or "") or None,
        metadata=meta if isinstance(meta, dict) else {},
        version=_version(row.get("v")),
    )


# -- programs: the decisions, shared by both drivers ------------------------------------


def _read_overview(layout: _Layout, thread_ids: Sequence[str]) -> Program[dict[str, _Thread]]:
    """Each thread's checkpoints and writes from their keys (one round trip), and which
    threads need the field-by-field read instead."""
    cp_cmds = _aggregates(layout.checkpoint_index, thread_ids, OVERVIEW_LOAD, OVERVIEW_STEPS)
    wr_cmds = _aggregates(layout.write_index, thread_ids, KEYS_LOAD, KEYS_STEPS)
    sends_cmds = _aggregates(
        layout.write_index, thread_ids, ("@thread_id",), SENDS_STEPS,
        where=f"@channel:{{{_tag(TASKS)}}}",
    )  # fmt: skip
    results = yield from _read_all(cp_cmds + wr_cmds + sends_cmds)
    cp_rows, results = results[: len(cp_cmds)], results[len(cp_cmds) :]
    wr_rows, sends_rows = results[: len(wr_cmds)], results[len(wr_cmds) :]
    wanted = set(thread_ids)
    with_sends = {_thread_of(r, wanted) for rows in sends_rows for r in rows}
    threads: dict[str, _Thread] = {}
    for rows in cp_rows:
        for row in rows:
            tid = _thread_of(row, wanted)
            if tid is None:
                continue
            thread = _Thread(stored_id=row["thread_id"])
            docs = _docs_from_keys(layout, thread.stored_id, _keys(row))
            thread.detailed = docs is None or tid in with_sends or _version(row.get("delta")) != 0
            thread.docs = docs or []
            thread.writes_known = not thread.detailed
            threads[tid] = thread
    for rows in wr_rows:
        for row in rows:
            owner = _thread_of(row, wanted)
            fast = threads.get(owner) if owner is not None else None
            if fast is not None and fast.writes_known:
                fast.writes_known = _attach_writes(layout, fast, _keys(row))
    return threads


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


def _read_marks(
    layout: _Layout, threads: Mapping[str, _Thread], policy: RetentionPolicy
) -> Program[set[str]]:
    """`keep_interrupted`: file interrupt writes under their checkpoints (threads read
    field by field have them already). `keep_tagged`: the keys of checkpoints whose
    metadata sets the key (the server filters on the key's text; JSON decides)."""
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
    if tag is not None:
        steps = ("FILTER", f'contains(@metadata, "{tag}")') if _PLAIN_KEY.fullmatch(tag) else ()
        commands += _aggregates(layout.checkpoint_index, ids, TAG_LOAD, steps)
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
    tagged: set[str] = set()
    for rows in results[n_interrupt:]:
        for row in rows:
            raw = row.get("metadata")
            meta = json.loads(raw) if isinstance(raw, str) and raw else {}
            if _thread_of(row, wanted) is not None and isinstance(meta, dict) and meta.get(tag):
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
        replies = yield [("EVAL", SIZES_LUA, len(chunk), *chunk) for chunk in chunks]
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


def _size_calls(
    jobs: Sequence[tuple[list[str], list[str]]],
    delete: bool,
    guards: Mapping[int, list[str]] | None = None,
    presized: set[int] | frozenset[int] = frozenset(),
) -> tuple[list[Command], list[int]]:
    """Lua calls sizing (and deleting) each job's keys, at most `LUA_KEYS` per call; the
    pointer repairs ride on a job's last call, a job's `guards` (pointer, expected key
    pairs) on every call. Returns the calls and each call's job."""
    calls: list[Command] = []
    owner: list[int] = []
    for job, (keys, pointer_args) in enumerate(jobs):
        starts = list(range(0, len(keys), LUA_KEYS)) or [0]
        guard = (guards or {}).get(job, [])
        for start in starts:
            chunk = keys[start : start + LUA_KEYS]
            mode = ("2" if job in presized else "1") if delete else "0"
            argv = [mode, str(len(guard) // 2), *guard]
            argv += pointer_args if start == starts[-1] else []
            calls.append(("EVALSHA", SIZE_AND_DELETE_SHA, len(chunk), *chunk, *argv))
            owner.append(job)
    return [("SCRIPT", "LOAD", SIZE_AND_DELETE_LUA), *calls], owner


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


def _prune_program(
    layout: _Layout,
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    dry_run: bool,
    now: datetime,
    explain: bool = False,
    expire: Expire | None = None,
) -> Program[list[ThreadResult]]:
    """Read the batch's index, decide each thread, size and delete (unless dry run), report."""
    threads = yield from _read_overview(layout, thread_ids)
    yield from _read_details(layout, threads)
    names_by_thread, channels = yield from _read_stored_channels(threads)
    tagged = yield from _read_marks(layout, threads, policy)

    # Decide without the byte cap first; only a thread whose kept checkpoints are over it
    # is decided again with sizes. Withdrawing keeps a subset of what the first decision
    # kept, so sizing those checkpoints (not every key of the store) is enough for both.
    uncapped = replace(policy, max_bytes=None) if policy.max_bytes is not None else policy
    results: list[ThreadResult] = []
    decided: dict[str, tuple[ThreadPlan, ThreadResult, list[CheckpointEntry]]] = {}
    position: dict[str, int] = {}
    for tid in thread_ids:
        thread = threads.setdefault(tid, _Thread(stored_id=to_storage_safe_id(tid)))
        try:
            entries = _entries(
                thread, names_by_thread.get(tid, {}), channels, policy.keep_tagged, tagged
            )
            plan, result = decide(tid, entries, uncapped, now=now, explain=explain, expire=expire)
        except RetentionError as exc:
            results.append(ThreadResult(tid, error=str(exc)))
            continue
        decided[tid] = (plan, result, entries)
        position[tid] = len(results)
        results.append(result)
    sizes: _Sizes | None = None
    if policy.max_bytes is not None:
        kept_docs = _kept_docs(threads, decided)
        sizes = yield from _read_sizes(layout, list(kept_docs.values()))
        for tid, (thread, docs) in kept_docs.items():
            if sum(sizes.by_checkpoint[d.key] for d in docs) <= policy.max_bytes:
                continue
            sized = _sized(decided[tid][2], thread, sizes)
            plan, capped = decide(tid, sized, policy, now=now, explain=explain)
            decided[tid] = (plan, capped, sized)
            results[position[tid]] = capped

    doomed_by_thread: dict[str, list[_Doc]] = {}
    pointers: dict[str, list[str]] = {}
    expiring: dict[str, _Thread] = {}
    for tid, (plan, result, _entries_of) in decided.items():
        thread = threads[tid]
        if result.expired is not None:
            expiring[tid] = thread
        if not plan.delete:
            continue
        by_id = {(d.ns, d.cid): d for d in thread.docs}
        doomed_by_thread[tid] = [by_id[pair] for pair in plan.deleted_pairs()]
        pointer_args: list[str] = []
        for ns in plan.delete:
            kept_ids = plan.keep.get(ns)  # newest first
            stored_ns = by_id[(ns, plan.delete[ns][0])].stored_ns
            pointer_args += [
                layout.latest_key(thread.stored_id, stored_ns),
                by_id[(ns, kept_ids[0])].key if kept_ids else "",
            ]
        pointers[tid] = pointer_args
    guards = yield from _read_guards(layout, expiring)

    unknown = {
        tid: [d.cid for d in docs]
        for tid, docs in doomed_by_thread.items()
        if not (threads[tid].detailed or threads[tid].writes_known)
    }
    writes = yield from _read_doomed_writes(layout, unknown)

    slots = {r.thread_id: r for r in results}
    jobs: list[tuple[list[str], list[str]]] = []
    job_results: list[ThreadResult] = []
    job_guards: dict[int, list[str]] = {}
    presized: dict[int, int] = {}  # job -> bytes its keys measured while planning
    for tid, docs in doomed_by_thread.items():
        thread = threads[tid]
        if tid in unknown:
            write_keys = writes.get(tid, [])
        else:
            write_keys = [k for d in docs for k in thread.writes.get((d.ns, d.cid), [])]
        result = slots[tid]
        result.deleted_checkpoints = len(docs)
        result.deleted_writes = len(write_keys)
        keys = [k for d in docs for k in (d.key, layout.registry_key(d.key))] + write_keys
        if tid in guards:
            job_guards[len(jobs)] = guards[tid]
        if sizes is not None and all(k in sizes.by_key for k in keys):
            presized[len(jobs)] = sum(sizes.by_key[k] for k in keys)
        jobs.append((keys, pointers[tid]))
        job_results.append(result)
    if not jobs:
        return results
    calls, owner = _size_calls(
        jobs, not dry_run, job_guards, set(presized) if not dry_run else set()
    )
    replies = yield calls
    first_refused: dict[int, bool] = {}  # job -> its first call found a guard broken
    refused: set[int] = set()
    for job, reply in zip(owner, replies[1:], strict=True):
        size = int(reply or 0)
        first_refused.setdefault(job, size < 0)
        if size < 0:
            refused.add(job)
        else:
            job_results[job].bytes_freed += size
    for job, measured in presized.items():
        if not dry_run and not first_refused.get(job):
            job_results[job].bytes_freed += measured
    for job in refused:
        _written_since(job_results[job], untouched=first_refused[job])
    return results


def _written_since(result: ThreadResult, untouched: bool) -> None:
    """An expired thread a run wrote to after the decision: the script refused it."""
    if untouched:
        result.kept_checkpoints += result.deleted_checkpoints  # every one it read stays
        result.deleted_checkpoints = result.deleted_writes = result.bytes_freed = 0
        result.expired, result.decisions = None, None
        result.warnings.append(
            f"thread {result.thread_id!r} was written to since it expired; it was left whole"
        )
    else:
        result.warnings.append(
            f"thread {result.thread_id!r} was written to while it was being deleted; "
            "its newest checkpoints stay"
        )


def _stats_program(
    layout: _Layout, thread_ids: Sequence[str]
) -> Program[list[tuple[str, ThreadStats]]]:
    """Counts and newest id from the indexes; bytes from `size_of` every key a thread
    owns (checkpoints, their registries, writes), summed server-side."""
    cp_cmds = _aggregates(layout.checkpoint_index, thread_ids, STATS_LOAD, STATS_STEPS)
    wr_cmds = _aggregates(layout.write_index, thread_ids, KEYS_LOAD, KEYS_STEPS)
    results = yield from _read_all(cp_cmds + wr_cmds)
    wanted = set(thread_ids)
    found: dict[str, ThreadStats] = {}
    keys: dict[str, list[str]] = defaultdict(list)
    for rows in results[: len(cp_cmds)]:
        for row in rows:
            if (tid := _thread_of(row, wanted)) is None:
                continue
            cp_keys = _keys(row)
            newest = row.get("newest")
            newest_id = from_storage_safe_id(newest) if isinstance(newest, str) else None
            found[tid] = ThreadStats(
                checkpoints=len(cp_keys),
                namespaces=int(row.get("namespaces") or 0),
                newest_checkpoint_id=newest_id,
                newest=checkpoint_time(newest_id) if newest_id else None,
            )
            keys[tid] += [k for key in cp_keys for k in (key, layout.registry_key(key))]
    for rows in results[len(cp_cmds) :]:
        for row in rows:
            if (tid := _thread_of(row, wanted)) is not None and tid in found:
                write_keys = _keys(row)
                found[tid].writes += len(write_keys)
                keys[tid] += write_keys
    order = [tid for tid in thread_ids if tid in found]
    if order:
        calls, owner = _size_calls([(keys[tid], []) for tid in order], delete=False)
        replies = yield calls
        for job, size in zip(owner, replies[1:], strict=True):
            found[order[job]].bytes += int(size or 0)
    return [(tid, found[tid]) for tid in order]


def _thread_page_program(layout: _Layout, cursor: int) -> Program[tuple[list[str], int]]:
    """One SCAN step over the root-namespace `checkpoint_latest` pointers (every `put`
    sets its namespace's; a thread's root one stays while it has checkpoints): the thread
    ids it found, and the cursor to go on with (0: done). A step looks at `SCAN_COUNT`
    keys, however big the store; one aggregation over every document did not."""
    head = f"{layout.latest_prefix}:"
    tail = f":{ROOT_NS}"
    pattern = _glob_escape(head) + "*" + _glob_escape(tail)
    (reply,) = yield [("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)]
    next_cursor, keys = reply
    ids = []
    for raw in keys:
        key = _decode(raw)
        if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail):
            ids.append(from_storage_safe_id(key[len(head) : -len(tail)]))
    return ids, int(next_cursor)


def _glob_escape(text: str) -> str:
    """`text` matched literally by a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# -- drivers ------------------------------------------------------------------------------


def _layout(saver: Any) -> _Layout:
    return _Layout(
        checkpoint_index=saver.checkpoints_index.name,
        write_index=saver.checkpoint_writes_index.name,
        checkpoint_prefix=saver._checkpoint_prefix,
        write_prefix=saver._checkpoint_write_prefix,
        latest_prefix=f"{saver._checkpoint_prefix}_latest",
    )


def _sweep_lock(saver: Any) -> RedisSweepLock:
    return RedisSweepLock(_check_client(saver), lock_key(_layout(saver).checkpoint_prefix))


def _check_client(saver: Any) -> Any:
    client = saver._redis
    if getattr(saver, "cluster_mode", False) or "Cluster" in type(client).__name__:
        raise RetentionError(
            f"{type(saver).__name__} on Redis Cluster is not supported yet: the index reads "
            "and Lua deletes assume one server; nothing was deleted"
        )
    return client


def _where(client: Any) -> str:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def _translate(exc: Exception, client: Any) -> Exception:
    """A clear error for the failures a user can act on; others unchanged."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return RedisUnavailableError(
            f"Redis at {_where(client)} is unreachable ({type(exc).__name__}: {exc}); "
            "the prune of this batch did not complete"
        )
    return not_ready(exc, _where(client)) or exc


def _pipelines(commands: list[Command]) -> list[list[Command]]:
    """`commands` in pipelines the server can serve other clients between: at most
    `SEARCHES_PER_PIPELINE` searches each (the server runs a pipeline's small commands back
    to back, and thirty aggregations kept an app's PING waiting 100-150 ms), and at most
    `PIPELINE_CHUNK` commands in all."""
    out: list[list[Command]] = [[]]
    searches = 0
    for cmd in commands:
        search = str(cmd[0]).startswith("FT.")
        if len(out[-1]) >= PIPELINE_CHUNK or (search and searches >= SEARCHES_PER_PIPELINE):
            out.append([])
            searches = 0
        out[-1].append(cmd)
        searches += search
    return out


def _execute(client: Any, commands: list[Command]) -> list[Any]:
    replies: list[Any] = []
    for chunk in _pipelines(commands):
        with client.pipeline(transaction=False) as pipe:
            for cmd in chunk:
                pipe.execute_command(*cmd)
            replies.extend(pipe.execute())
    return replies


async def _aexecute(client: Any, commands: list[Command]) -> list[Any]:
    replies: list[Any] = []
    for chunk in _pipelines(commands):
        async with client.pipeline(transaction=False) as pipe:
            for cmd in chunk:
                pipe.execute_command(*cmd)
            replies.extend(await pipe.execute())
    return replies


def _run(client: Any, program: Program[R]) -> R:
    """Run a program on a redis-py client, one pipeline per yielded command list."""
    try:
        commands = next(program)
        while True:
            replies = _execute(client, commands)
            with gc_paused():  # decoding replies and deciding: CPU only
                commands = program.send(replies)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except Exception as exc:
        translated = _translate(exc, client)
        if translated is exc:
            raise
        raise translated from exc


async def _arun(client: Any, program: Program[R]) -> R:
    """Run a program on a redis.asyncio client, one pipeline per yielded command list."""
    try:
        commands = next(program)
        while True:
            replies = await _aexecute(client, commands)
            with gc_paused():
                commands = program.send(replies)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except Exception as exc:
        translated = _translate(exc, client)
        if translated is exc:
            raise
        raise translated from exc


def _unseen(ids: Sequence[str], seen: set[str]) -> list[str]:
    """The ids not in `seen`, which they join."""
    fresh = [tid for tid in dict.fromkeys(ids) if tid not in seen]
    seen.update(fresh)
    return fresh


class RedisBackend(Backend):
    """Prunes a `RedisSaver` through its own client (standalone Redis with the modules)."""

    name = "redis"

    def _exec(self, program: Program[R]) -> R:
        return _run(_check_client(self.saver), program)

    def prune_batch(
        self,
        thread_ids: Sequence[str],
        policy: RetentionPolicy,
        *,
        dry_run: bool,
        now: datetime,
        explain: bool = False,
        expire: Expire | None = None,
    ) -> list[ThreadResult]:
        program = _prune_program(
            _layout(self.saver), thread_ids, policy, dry_run, now, explain, expire
        )
        return self._exec(program)

    def thread_spans(self, thread_ids: Sequence[str]) -> dict[str, Span]:
        return self._exec(_spans_program(_layout(self.saver), thread_ids))

    def iter_thread_ids(self) -> Iterator[str]:
        layout = _layout(self.saver)
        seen: set[str] = set()  # SCAN may return a key twice (while the table rehashes)
        cursor = 0
        while True:
            ids, cursor = self._exec(_thread_page_program(layout, cursor))
            yield from _unseen(ids, seen)
            if not cursor:
                return

    def thread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        return self._exec(_stats_program(_layout(self.saver), thread_ids))

    def check_store(self) -> None:
        layout = _layout(self.saver)
        self._exec(indexes_program([layout.checkpoint_index, layout.write_index]))

    def sweep_lock(self) -> RedisSweepLock:
        return _sweep_lock(self.saver)


class AsyncRedisBackend(Backend):
    """Prunes an `AsyncRedisSaver` through its own asyncio client."""

    name = "redis"
    is_async = True

    async def _aexec(self, program: Program[R]) -> R:
        return await _arun(_check_client(self.saver), program)

    async def aprune_batch(
        self,
        thread_ids: Sequence[str],
        policy: RetentionPolicy,
        *,
        dry_run: bool,
        now: datetime,
        explain: bool = False,
        expire: Expire | None = None,
    ) -> list[ThreadResult]:
        program = _prune_program(
            _layout(self.saver), thread_ids, policy, dry_run, now, explain, expire
        )
        return await self._aexec(program)

    async def athread_spans(self, thread_ids: Sequence[str]) -> dict[str, Span]:
        return await self._aexec(_spans_program(_layout(self.saver), thread_ids))

    async def _aiter(self) -> AsyncIterator[str]:
        layout = _layout(self.saver)
        seen: set[str] = set()
        cursor = 0
        while True:
            ids, cursor = await self._aexec(_thread_page_program(layout, cursor))
            for tid in _unseen(ids, seen):
                yield tid
            if not cursor:
                return

    def aiter_thread_ids(self) -> AsyncIterator[str]:
        return self._aiter()

    async def athread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        return await self._aexec(_stats_program(_layout(self.saver), thread_ids))

    async def acheck_store(self) -> None:
        layout = _layout(self.saver)
        await self._aexec(indexes_program([layout.checkpoint_index, layout.write_index]))

    async def asweep_lock(self) -> RedisSweepLock:
        return _sweep_lock(self.saver)
