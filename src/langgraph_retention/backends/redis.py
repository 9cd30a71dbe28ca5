"""`RedisSaver` and `AsyncRedisSaver` (langgraph-checkpoint-redis >= 0.5).

Layout (0.5): each checkpoint is a RedisJSON document `checkpoint:{thread}:{ns}:{id}` with
its channel values inline (no blob keys), each pending write a document
`checkpoint_write:{thread}:{ns}:{id}:{task}:{idx}`, each checkpoint's write keys a sorted
set `write_keys_zset:{thread}:{ns}:{id}`, and each (thread, ns) a string
`checkpoint_latest:{thread}:{ns}` holding its newest checkpoint's key. Ids go into keys
unescaped (empty ones as sentinels), so keys are never parsed: thread ids, namespaces and
ids come from the RediSearch indexes over the documents, and keys from `@__key`.

The index is read with `FT.AGGREGATE ... WITHCURSOR` (id fields and metadata only, never
the state), deletes are pipelined `UNLINK`s of explicit keys, sizes `MEMORY USAGE` in the
same pipeline. `_prune_program` and friends yield lists of commands (one pipeline each)
and receive their replies, so the sync and async drivers share every decision.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from langgraph.checkpoint.redis.key_registry import CheckpointKeyRegistry
from langgraph.checkpoint.redis.util import (
    from_storage_safe_id,
    from_storage_safe_str,
    to_storage_safe_id,
)
from langgraph.checkpoint.serde.types import TASKS
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from langgraph_retention.errors import RetentionError
from langgraph_retention.policy import (
    CheckpointEntry,
    RetentionPolicy,
    checkpoint_time,
    delta_needs,
    plan_thread,
)
from langgraph_retention.report import ThreadResult, ThreadStats

from .base import Backend

__all__ = ["AsyncRedisBackend", "RedisBackend", "RedisUnavailableError"]

# -- layout and limits ---------------------------------------------------------------------

#: Rows per FT.AGGREGATE / FT.CURSOR READ reply.
CURSOR_PAGE = 10_000
#: Thread ids per page when enumerating threads.
THREAD_PAGE = 1_000
#: Commands per pipeline round trip (bounds client and server buffers).
PIPELINE_CHUNK = 10_000
#: Keys per UNLINK command.
UNLINK_CHUNK = 500
#: The checkpoint format version from which pending sends no longer live in the parent's
#: writes; older checkpoints (or unknown versions) keep their parent when it holds sends.
SENDS_MOVED_VERSION = 4
#: The TAG separator the saver's schema uses: a thread id is indexed as its pieces.
TAG_SEPARATOR = ","
#: What RediSearch trims around each tag piece (C isspace).
TAG_WHITESPACE = " \t\n\v\f\r"
#: ASCII punctuation and whitespace must be backslash-escaped inside a tag query.
_TAG_SPECIAL = re.compile(r"([\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f])")

#: Fields read per checkpoint: identity, lineage and load dependencies, never the state.
CHECKPOINT_FIELDS: tuple[str, ...] = (
    "@__key", "@thread_id", "@checkpoint_ns", "@checkpoint_id", "@parent_checkpoint_id",
    "$.metadata", "AS", "metadata", "$.checkpoint.v", "AS", "v",
)  # fmt: skip
WRITE_FIELDS: tuple[str, ...] = (
    "@__key", "@thread_id", "@checkpoint_ns", "@checkpoint_id", "@channel",
)  # fmt: skip
STATS_CHECKPOINT_FIELDS: tuple[str, ...] = (
    "@__key", "@thread_id", "@checkpoint_ns", "@checkpoint_id",
)  # fmt: skip
STATS_WRITE_FIELDS: tuple[str, ...] = ("@__key", "@thread_id")

#: Run after the UNLINKs: a `checkpoint_latest` pointer whose target is gone is re-pointed
#: at the namespace's newest kept checkpoint (KEEPTTL: its TTL stays), or deleted when the
#: whole namespace went. A pointer a concurrent put moved to a live key is left alone.
FIX_POINTER_LUA = """
local target = redis.call('GET', KEYS[1])
if target and redis.call('EXISTS', target) == 0 then
  if ARGV[1] == '' then
    return redis.call('DEL', KEYS[1])
  end
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
  return 2
end
return 0
"""
FIX_POINTER_SHA = hashlib.sha1(FIX_POINTER_LUA.encode()).hexdigest()

R = TypeVar("R")
Command = tuple[Any, ...]
Program = Generator[list[Command], list[Any], R]
Rows = list[dict[str, str]]


class RedisUnavailableError(RetentionError):
    """The Redis server could not be reached (or stopped answering) during a prune."""


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where one saver keeps things: index names and the key builders it uses."""

    checkpoint_index: str
    write_index: str
    latest_key: Callable[[str, str], str]
    registry_key: Callable[[str, str, str], str]


@dataclass(slots=True)
class _Doc:
    """One checkpoint document as read from the index (ns and ids un-sentineled)."""

    key: str
    ns: str
    cid: str
    parent: str | None
    metadata: dict[str, Any]
    version: int | None


@dataclass(slots=True)
class _ThreadIndex:
    """One thread's checkpoints and the write keys of each (ns, checkpoint id)."""

    docs: list[_Doc] = field(default_factory=list)
    writes: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    sends_at: set[tuple[str, str]] = field(default_factory=set)


# -- reply parsing (RESP2 lists and RESP3 maps, bytes or str) ---------------------------


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _get(mapping: dict[Any, Any], name: str) -> Any:
    return mapping.get(name, mapping.get(name.encode()))


def _parse_page(reply: Any) -> tuple[Rows, int]:
    """Rows and the next cursor id (0: done) of an FT.AGGREGATE WITHCURSOR reply."""
    payload, cursor = reply
    if isinstance(payload, dict):  # RESP3
        warnings = _get(payload, "warning") or []
        if warnings:
            raise RetentionError(
                "RediSearch returned partial results "
                f"({'; '.join(_s(w) for w in warnings)}); nothing was deleted"
            )
        results = _get(payload, "results") or []
        rows = [
            {_s(k): _s(v) for k, v in (_get(r, "extra_attributes") or {}).items()} for r in results
        ]
    else:  # RESP2: [count, [field, value, ...], ...]
        rows = [
            {_s(row[i]): _s(row[i + 1]) for i in range(0, len(row) - 1, 2)} for row in payload[1:]
        ]
    return rows, int(cursor)


def _objkeys(reply: Any) -> set[str]:
    """The keys of a `JSON.OBJKEYS key $.path` reply (empty when the path is missing)."""
    if not reply or reply[0] is None:
        return set()
    return {_s(k) for k in reply[0]}


# -- queries -------------------------------------------------------------------------------


def _tag(value: str) -> str:
    return _TAG_SPECIAL.sub(r"\\\1", value)


def _thread_query(thread_ids: Sequence[str]) -> tuple[str | None, list[str]]:
    """A RediSearch query matching the threads' documents, and ids no tag query can match.

    The match is a superset (tags are case-insensitive and split at ','); rows are
    filtered by their exact `thread_id` afterwards. An id made only of separators and
    whitespace is indexed as no tag at all and needs a FILTER scan instead.
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


def _aggregates(index: str, thread_ids: Sequence[str], fields: Sequence[str]) -> list[Command]:
    """FT.AGGREGATE commands reading `fields` of every document of the given threads."""
    query, unmatched = _thread_query(thread_ids)
    load = ("LOAD", len(fields), *fields)
    tail = ("WITHCURSOR", "COUNT", CURSOR_PAGE, "TIMEOUT", 0, "DIALECT", 2)
    commands: list[Command] = []
    if query is not None:
        commands.append(("FT.AGGREGATE", index, query, *load, *tail))
    for stored in unmatched:  # only separators/whitespace: no quote can end the literal
        fields_with_tid = load if "@thread_id" in fields else (*load, "@thread_id")
        commands.append(
            ("FT.AGGREGATE", index, "*", *fields_with_tid, "FILTER",
             f'@thread_id == "{stored}"', *tail)
        )  # fmt: skip
    return commands


def _read_all(commands: list[Command]) -> Program[list[Rows]]:
    """Run FT.AGGREGATE commands in one pipeline and drain their cursors; rows per command."""
    out: list[Rows] = [[] for _ in commands]
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


def _thread_of(row: dict[str, str], wanted: set[str]) -> str | None:
    """The row's exact thread id if it is one we asked for (tag matches are a superset)."""
    raw = row.get("thread_id")
    if raw is None:
        return None
    tid = from_storage_safe_id(raw)
    return tid if tid in wanted else None


def _version(raw: str | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _doc(row: dict[str, str]) -> _Doc:
    meta_raw = row.get("metadata")
    meta = json.loads(meta_raw) if meta_raw else {}
    parent = row.get("parent_checkpoint_id") or ""
    return _Doc(
        key=row["__key"],
        ns=from_storage_safe_str(row.get("checkpoint_ns", "")),
        cid=from_storage_safe_id(row["checkpoint_id"]),
        parent=from_storage_safe_id(parent) or None,
        metadata=meta if isinstance(meta, dict) else {},
        version=_version(row.get("v")),
    )


# -- programs: the decisions, shared by both drivers ------------------------------------


def _read_index(layout: _Layout, thread_ids: Sequence[str]) -> Program[dict[str, _ThreadIndex]]:
    """The batch's checkpoints and writes, grouped by exact thread id (one round trip)."""
    cp_cmds = _aggregates(layout.checkpoint_index, thread_ids, CHECKPOINT_FIELDS)
    wr_cmds = _aggregates(layout.write_index, thread_ids, WRITE_FIELDS)
    results = yield from _read_all(cp_cmds + wr_cmds)
    wanted = set(thread_ids)
    index: dict[str, _ThreadIndex] = {}
    seen: set[str] = set()
    for rows in results[: len(cp_cmds)]:
        for row in rows:
            tid = _thread_of(row, wanted)
            if tid is not None and row["__key"] not in seen:
                seen.add(row["__key"])
                index.setdefault(tid, _ThreadIndex()).docs.append(_doc(row))
    for rows in results[len(cp_cmds) :]:
        for row in rows:
            tid = _thread_of(row, wanted)
            if tid is None or row["__key"] in seen:
                continue
            seen.add(row["__key"])
            at = (
                from_storage_safe_str(row.get("checkpoint_ns", "")),
                from_storage_safe_id(row.get("checkpoint_id", "")),
            )
            thread = index.setdefault(tid, _ThreadIndex())
            thread.writes[at].append(row["__key"])
            if row.get("channel") == TASKS:
                thread.sends_at.add(at)
    return index


def _delta_names(docs: Sequence[_Doc]) -> dict[str, set[str]]:
    """DeltaChannel names per namespace, from the metadata counters LangGraph keeps."""
    names: dict[str, set[str]] = defaultdict(set)
    for d in docs:
        counters = d.metadata.get("counters_since_delta_snapshot")
        if isinstance(counters, dict) and counters:
            names[d.ns].update(counters)
    return names


def _read_stored_channels(
    index: dict[str, _ThreadIndex],
) -> Program[tuple[dict[str, dict[str, set[str]]], dict[str, tuple[set[str], set[str]]]]]:
    """For DeltaChannel threads only: per checkpoint key, its versioned and stored channels."""
    names_by_thread = {tid: _delta_names(t.docs) for tid, t in index.items()}
    keys = [d.key for tid, t in index.items() for d in t.docs if names_by_thread[tid].get(d.ns)]
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
    thread: _ThreadIndex,
    names: dict[str, set[str]],
    channels: dict[str, tuple[set[str], set[str]]],
) -> list[CheckpointEntry]:
    entries = []
    for d in thread.docs:
        ns_names = names.get(d.ns)
        needs: frozenset[str] = frozenset()
        if ns_names:
            versioned, stored = channels.get(d.key, (set(), set()))
            needs = delta_needs(ns_names, versioned, stored)
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
            )
        )
    return entries


def _prune_program(
    layout: _Layout,
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    dry_run: bool,
    now: datetime,
) -> Program[list[ThreadResult]]:
    """Read the batch's index, plan each thread, size and delete (unless dry run), report."""
    index = yield from _read_index(layout, thread_ids)
    names_by_thread, channels = yield from _read_stored_channels(index)

    results: list[ThreadResult] = []
    doomed_keys: list[str] = []
    owner: list[int] = []  # result index of each doomed key, for bytes
    pointer_fixes: list[tuple[str, str]] = []
    for tid in thread_ids:
        thread = index.get(tid, _ThreadIndex())
        try:
            plan = plan_thread(
                _entries(thread, names_by_thread.get(tid, {}), channels),
                policy,
                thread_id=tid,
                now=now,
            )
        except RetentionError as exc:
            results.append(ThreadResult(tid, error=str(exc)))
            continue
        result = ThreadResult(tid, kept_checkpoints=plan.kept_count)
        key_of = {(d.ns, d.cid): d.key for d in thread.docs}
        slot = len(results)
        for ns, doomed in plan.delete.items():
            for cid in doomed:
                writes = thread.writes.get((ns, cid), [])
                result.deleted_checkpoints += 1
                result.deleted_writes += len(writes)
                keys = [key_of[(ns, cid)], *writes, layout.registry_key(tid, ns, cid)]
                doomed_keys.extend(keys)
                owner.extend([slot] * len(keys))
            kept = plan.keep.get(ns)
            replacement = key_of[(ns, kept[0])] if kept else ""  # keep lists are newest first
            pointer_fixes.append((layout.latest_key(tid, ns), replacement))
        results.append(result)

    if not doomed_keys:
        return results
    commands: list[Command] = [("MEMORY", "USAGE", k) for k in doomed_keys]
    if not dry_run:
        commands += [
            ("UNLINK", *doomed_keys[i : i + UNLINK_CHUNK])
            for i in range(0, len(doomed_keys), UNLINK_CHUNK)
        ]
        commands.append(("SCRIPT", "LOAD", FIX_POINTER_LUA))
        commands += [("EVALSHA", FIX_POINTER_SHA, 1, ptr, repl) for ptr, repl in pointer_fixes]
    replies = yield commands
    for slot, size in zip(owner, replies[: len(doomed_keys)], strict=True):
        results[slot].bytes_freed += int(size or 0)
    return results


def _stats_program(
    layout: _Layout, thread_ids: Sequence[str]
) -> Program[list[tuple[str, ThreadStats]]]:
    """Counts from the indexes, bytes from MEMORY USAGE of every key a thread owns."""
    cp_cmds = _aggregates(layout.checkpoint_index, thread_ids, STATS_CHECKPOINT_FIELDS)
    wr_cmds = _aggregates(layout.write_index, thread_ids, STATS_WRITE_FIELDS)
    results = yield from _read_all(cp_cmds + wr_cmds)
    wanted = set(thread_ids)
    found: dict[str, ThreadStats] = {}
    namespaces: dict[str, set[str]] = defaultdict(set)
    keys: list[str] = []
    owner: list[str] = []
    seen: set[str] = set()
    for i, rows in enumerate(results):
        is_checkpoint = i < len(cp_cmds)
        for row in rows:
            tid = _thread_of(row, wanted)
            if tid is None or row["__key"] in seen:
                continue
            seen.add(row["__key"])
            ts = found.setdefault(tid, ThreadStats())
            keys.append(row["__key"])
            owner.append(tid)
            if not is_checkpoint:
                ts.writes += 1
                continue
            ns = from_storage_safe_str(row.get("checkpoint_ns", ""))
            cid = from_storage_safe_id(row["checkpoint_id"])
            ts.checkpoints += 1
            namespaces[tid].add(ns)
            if ts.newest_checkpoint_id is None or cid > ts.newest_checkpoint_id:
                ts.newest_checkpoint_id = cid
            keys.append(layout.registry_key(tid, ns, cid))
            owner.append(tid)
    if keys:
        sizes = yield [("MEMORY", "USAGE", k) for k in keys]
        for tid, size in zip(owner, sizes, strict=True):
            found[tid].bytes += int(size or 0)
    out: list[tuple[str, ThreadStats]] = []
    for tid in thread_ids:
        thread_stats = found.get(tid)
        if thread_stats is None or not thread_stats.checkpoints:
            continue  # writes alone are not a thread
        thread_stats.namespaces = len(namespaces[tid])
        if thread_stats.newest_checkpoint_id:
            thread_stats.newest = checkpoint_time(thread_stats.newest_checkpoint_id)
        out.append((tid, thread_stats))
    return out


def _thread_page_program(layout: _Layout, cursor: int | None) -> Program[tuple[list[str], int]]:
    """One page of distinct thread ids (exact document values) and the cursor to go on."""
    if cursor is None:
        command: Command = (
            "FT.AGGREGATE", layout.checkpoint_index, "*", "GROUPBY", 1, "@thread_id",
            "WITHCURSOR", "COUNT", THREAD_PAGE, "TIMEOUT", 0, "DIALECT", 2,
        )  # fmt: skip
    else:
        command = ("FT.CURSOR", "READ", layout.checkpoint_index, cursor, "COUNT", THREAD_PAGE)
    (reply,) = yield [command]
    rows, next_cursor = _parse_page(reply)
    ids = [from_storage_safe_id(r["thread_id"]) for r in rows if "thread_id" in r]
    return ids, next_cursor


def _close_cursor_program(layout: _Layout, cursor: int) -> Program[None]:
    yield [("FT.CURSOR", "DEL", layout.checkpoint_index, cursor)]


# -- drivers ------------------------------------------------------------------------------


def _layout(saver: Any) -> _Layout:
    return _Layout(
        checkpoint_index=saver.checkpoints_index.name,
        write_index=saver.checkpoint_writes_index.name,
        latest_key=saver._make_redis_checkpoint_latest_key,
        registry_key=CheckpointKeyRegistry.make_write_keys_zset_key,
    )


def _check_client(saver: Any) -> Any:
    client = saver._redis
    if getattr(saver, "cluster_mode", False) or "Cluster" in type(client).__name__:
        raise RetentionError(
            f"{type(saver).__name__} on Redis Cluster is not supported yet: the index reads "
            "and pipelined deletes assume one server; nothing was deleted"
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
    if isinstance(exc, ResponseError) and re.search(r"no such index|unknown index", str(exc), re.I):
        return RetentionError(
            f"the checkpoint search indexes do not exist on Redis at {_where(client)} "
            f"({exc}); call saver.setup() first"
        )
    return exc


def _execute(client: Any, commands: list[Command]) -> list[Any]:
    replies: list[Any] = []
    for start in range(0, len(commands), PIPELINE_CHUNK):
        with client.pipeline(transaction=False) as pipe:
            for cmd in commands[start : start + PIPELINE_CHUNK]:
                pipe.execute_command(*cmd)
            replies.extend(pipe.execute())
    return replies


async def _aexecute(client: Any, commands: list[Command]) -> list[Any]:
    replies: list[Any] = []
    for start in range(0, len(commands), PIPELINE_CHUNK):
        async with client.pipeline(transaction=False) as pipe:
            for cmd in commands[start : start + PIPELINE_CHUNK]:
                pipe.execute_command(*cmd)
            replies.extend(await pipe.execute())
    return replies


def _run(client: Any, program: Program[R]) -> R:
    """Run a program on a redis-py client, one pipeline per yielded command list."""
    try:
        commands = next(program)
        while True:
            commands = program.send(_execute(client, commands))
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
            commands = program.send(await _aexecute(client, commands))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except Exception as exc:
        translated = _translate(exc, client)
        if translated is exc:
            raise
        raise translated from exc


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
    ) -> list[ThreadResult]:
        return self._exec(_prune_program(_layout(self.saver), thread_ids, policy, dry_run, now))

    def iter_thread_ids(self) -> Iterator[str]:
        layout = _layout(self.saver)
        cursor: int | None = None
        try:
            while True:
                ids, cursor = self._exec(_thread_page_program(layout, cursor))
                yield from ids
                if not cursor:
                    return
        finally:
            if cursor:  # abandoned early: free the server-side cursor
                self._exec(_close_cursor_program(layout, cursor))

    def thread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        return self._exec(_stats_program(_layout(self.saver), thread_ids))


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
    ) -> list[ThreadResult]:
        program = _prune_program(_layout(self.saver), thread_ids, policy, dry_run, now)
        return await self._aexec(program)

    async def _aiter(self) -> AsyncIterator[str]:
        layout = _layout(self.saver)
        cursor: int | None = None
        try:
            while True:
                ids, cursor = await self._aexec(_thread_page_program(layout, cursor))
                for tid in ids:
                    yield tid
                if not cursor:
                    return
        finally:
            if cursor:  # abandoned early: free the server-side cursor
                await self._aexec(_close_cursor_program(layout, cursor))

    def aiter_thread_ids(self) -> AsyncIterator[str]:
        return self._aiter()

    async def athread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        return await self._aexec(_stats_program(_layout(self.saver), thread_ids))
