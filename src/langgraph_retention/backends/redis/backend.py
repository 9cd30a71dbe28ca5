"""`RedisSaver` and `AsyncRedisSaver` (langgraph-checkpoint-redis >= 0.5).

Layout (0.5): each checkpoint is a RedisJSON document `checkpoint:{thread}:{ns}:{id}` with
its channel values inline (no blob keys), each pending write a document
`checkpoint_write:{thread}:{ns}:{id}:{task}:{idx}`, each checkpoint's write keys a sorted
set `write_keys_zset:{thread}:{ns}:{id}`, and each (thread, ns) a string
`checkpoint_latest:{thread}:{ns}` holding its newest checkpoint's key. Ids go into keys
unescaped (empty ones as sentinels), so a thread id is cut out of a key only between two
known ends: threads are listed by SCAN steps over the root-namespace pointers
`checkpoint_latest:{thread}:__empty__`; everything else about them comes from the
documents' fields through the RediSearch indexes, grouped server-side a few threads per
query (`search`), and keys are split after a known `{prefix}:{thread}:` only (`model`).

A prune reads each thread's checkpoint keys, write keys and a DeltaChannel flag (never
the state), plans it, then sizes (`size_of`: JSON.DEBUG MEMORY or MEMORY USAGE) and
UNLINKs the doomed keys in Lua calls of at most 100 keys (`scripts`): explicit keys only,
never a pattern; the only write is repairing a `checkpoint_latest` pointer left on a
deleted key (SET ... KEEPTTL). No command's cost grows with the store.
The programs below yield lists of commands (pipelines of a few searches each) and
receive the replies, so the sync and async drivers share every decision.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from langgraph.checkpoint.redis.util import (
    from_storage_safe_id,
    to_storage_safe_id,
    to_storage_safe_str,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from langgraph_retention.errors import RetentionError, StoreUnavailableError
from langgraph_retention.policy import (
    CheckpointEntry,
    RetentionPolicy,
    ThreadPlan,
    checkpoint_time,
)
from langgraph_retention.report import ThreadResult, ThreadStats

from ..base import Backend, Expire, Halt, Span, Stage, decide, gc_paused
from .deletes import _delete_program, _Job, _job
from .lock import RedisSweepLock, lock_key
from .model import (
    Command,
    Program,
    R,
    _decode,
    _Doc,
    _keys,
    _Layout,
    _Thread,
)
from .reads import (
    _entries,
    _kept_docs,
    _read_details,
    _read_doomed_writes,
    _read_guards,
    _read_marks,
    _read_overview,
    _read_sizes,
    _read_stored_channels,
    _sized,
    _Sizes,
    _spans_program,
)
from .schema import indexes_program, no_indexes, not_ready
from .scripts import _size_calls
from .search import (
    KEYS_LOAD,
    KEYS_STEPS,
    STATS_LOAD,
    STATS_STEPS,
    _aggregates,
    _read_all,
    _thread_of,
)
from .stage import AsyncRedisStage, RedisStage

__all__ = ["AsyncRedisBackend", "RedisBackend", "RedisUnavailableError"]

# -- limits ---------------------------------------------------------------------------------

# Every command is kept short: Redis runs one at a time, so each one we send is a pause
# for every app on the server (the scale benchmark checks SLOWLOG for any over 50 ms).

#: Keys each SCAN step looks at when enumerating threads (one short step per call).
SCAN_COUNT = 1_000
#: Commands per pipeline round trip (bounds client and server buffers).
PIPELINE_CHUNK = 10_000
#: Searches (FT.AGGREGATE, FT.CURSOR) per pipeline round trip; see `_pipelines`.
SEARCHES_PER_PIPELINE = 3
#: The root namespace as keys spell it; its `checkpoint_latest` pointers list the threads.
ROOT_NS = to_storage_safe_str("")


class RedisUnavailableError(StoreUnavailableError):
    """The Redis server could not be reached (or stopped answering) during a prune."""


# -- programs: the decisions, shared by both drivers ------------------------------------


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
    results, jobs = yield from _plan_program(layout, thread_ids, policy, now, explain, expire)
    yield from _delete_program(jobs, dry_run)
    return results


def _plan_program(
    layout: _Layout,
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    now: datetime,
    explain: bool = False,
    expire: Expire | None = None,
) -> Program[tuple[list[ThreadResult], list[_Job]]]:
    """Read the batch's index and decide each thread: every thread's result (deleted
    counts at zero) and the deletes of those with something to delete."""
    overview = yield from _read_overview(layout, thread_ids, policy.keep_tagged)
    threads = overview.threads
    yield from _read_details(layout, threads)
    names_by_thread, channels = yield from _read_stored_channels(threads)
    tagged = yield from _read_marks(layout, overview, policy)

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
    jobs: list[_Job] = []
    for tid, docs in doomed_by_thread.items():
        thread = threads[tid]
        if tid in unknown:
            write_keys = writes.get(tid, [])
        else:
            write_keys = [k for d in docs for k in thread.writes.get((d.ns, d.cid), [])]
        result = slots[tid]
        result.deleted_checkpoints = result.deleted_writes = 0  # counted as calls commit
        checkpoints = [(layout.registry_key(d.key), d.key) for d in docs]
        by_key = sizes.by_key if sizes is not None else None
        jobs.append(
            _job(result, write_keys, checkpoints, pointers[tid], guards.get(tid, []), by_key)
        )
    return results, jobs


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
        calls, owner = _size_calls([keys[tid] for tid in order])
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


def _split(jobs: list[_Job]) -> tuple[list[_Job], list[_Job]]:
    """Jobs deleting whole expired threads (they go at once: their script re-checks the
    newest checkpoint the decision saw) and the others (they may be staged)."""
    whole = [j for j in jobs if j.result.expired is not None]
    return whole, [j for j in jobs if j.result.expired is None]


def _unstaged(results: list[ThreadResult], staged: list[_Job]) -> list[ThreadResult]:
    """The batch's results but those of staged threads (the flush reports them)."""
    ids = {job.result.thread_id for job in staged}
    return [r for r in results if r.thread_id not in ids]


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
        stage: Stage | None = None,
    ) -> list[ThreadResult]:
        layout = _layout(self.saver)
        if not isinstance(stage, RedisStage) or dry_run:
            return self._exec(
                _prune_program(layout, thread_ids, policy, dry_run, now, explain, expire)
            )
        results, jobs = self._exec(_plan_program(layout, thread_ids, policy, now, explain, expire))
        whole, staged = _split(jobs)
        self._exec(_delete_program(whole, dry_run=False))
        stage.submit(staged)
        return _unstaged(results, staged)

    def open_stage(self) -> RedisStage:
        client = _check_client(self.saver)
        return RedisStage(lambda program: _run(client, program))

    def flush_stage(self, stage: Stage, halt: Halt) -> list[ThreadResult]:
        assert isinstance(stage, RedisStage)
        return stage.flush(halt)

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
        missing = self._exec(indexes_program([layout.checkpoint_index, layout.write_index]))
        if missing:
            raise no_indexes(missing, _where(_check_client(self.saver)))

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
        stage: Stage | None = None,
    ) -> list[ThreadResult]:
        layout = _layout(self.saver)
        if not isinstance(stage, AsyncRedisStage) or dry_run:
            return await self._aexec(
                _prune_program(layout, thread_ids, policy, dry_run, now, explain, expire)
            )
        plan = _plan_program(layout, thread_ids, policy, now, explain, expire)
        results, jobs = await self._aexec(plan)
        whole, staged = _split(jobs)
        await self._aexec(_delete_program(whole, dry_run=False))
        await stage.submit(staged)
        return _unstaged(results, staged)

    async def aopen_stage(self) -> AsyncRedisStage:
        client = _check_client(self.saver)

        async def arun(program: Program[None]) -> None:
            await _arun(client, program)

        return AsyncRedisStage(arun)

    async def aflush_stage(self, stage: Stage, halt: Halt) -> list[ThreadResult]:
        assert isinstance(stage, AsyncRedisStage)
        return await stage.flush(halt)

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
        missing = await self._aexec(indexes_program([layout.checkpoint_index, layout.write_index]))
        if missing:
            raise no_indexes(missing, _where(_check_client(self.saver)))

    async def asweep_lock(self) -> RedisSweepLock:
        return _sweep_lock(self.saver)
