"""`SqliteSaver` and `AsyncSqliteSaver`: one write transaction per batch of threads,
set-based statements per (thread, namespace). SQLite keeps channel values inline in the
checkpoint row, so deleting a checkpoint and its writes reclaims everything it held.

The statements are named constants; `_prune_program` and friends yield them and receive
their rows, so the sync (`sqlite3`) and async (`aiosqlite`) drivers share every decision.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from langgraph.checkpoint.serde.types import INTERRUPT, TASKS
from langgraph.checkpoint.sqlite.aio import _ensure_connected

from langgraph_retention.errors import RetentionError
from langgraph_retention.lock import ProcessSweepLock, SweepLock
from langgraph_retention.policy import (
    CheckpointEntry,
    RetentionPolicy,
    checkpoint_time,
    delta_needs,
)
from langgraph_retention.report import ThreadResult, ThreadStats

from ..base import Backend, Expire, Span, Stage, decide, gc_paused
from .lock import FileSweepLock
from .schema import database_file_program, missing_table, missing_tables_program, not_ready
from .settings import write_settings_program

__all__ = ["AsyncSqliteBackend", "SqliteBackend"]

# -- statements ---------------------------------------------------------------------------
# Thread id lists travel as one JSON array parameter (`json_each`), so a batch of any size
# is one statement and the primary key (thread_id first) does the lookups.

INDEX_SQL = """
SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
       coalesce(length(checkpoint), 0) + coalesce(length(metadata), 0),
       CASE WHEN instr(checkpoint_ns, ':')
            THEN json_extract(CAST(metadata AS TEXT), '$.parents') END,
       CASE WHEN instr(CAST(metadata AS TEXT), 'counters_since_delta_snapshot')
            THEN json_extract(CAST(metadata AS TEXT), '$.counters_since_delta_snapshot') END,
       CASE WHEN :tag_path IS NOT NULL AND instr(CAST(metadata AS TEXT), :tag_text)
            THEN json_extract(CAST(metadata AS TEXT), :tag_path) END,
       rowid
FROM checkpoints
WHERE thread_id IN (SELECT value FROM json_each(:threads))
"""

# Checkpoints whose pending writes carry sends (a pre-v4 child reads them when it loads)
# or an interrupt (a place the graph asked a human: `keep_interrupted`).
SPECIAL_WRITES_SQL = f"""
SELECT DISTINCT thread_id, checkpoint_ns, checkpoint_id, channel
FROM writes
WHERE thread_id IN (SELECT value FROM json_each(?)) AND channel IN ('{TASKS}', '{INTERRUPT}')
"""

# Instead, for `max_bytes`: the same facts and each checkpoint's pending writes' bytes
# in one pass over the writes (its inline values and metadata come with the index).
SIZED_WRITES_SQL = f"""
SELECT thread_id, checkpoint_ns, checkpoint_id, sum(length(value)),
       max(channel = '{TASKS}'), max(channel = '{INTERRUPT}')
FROM writes
WHERE thread_id IN (SELECT value FROM json_each(?))
GROUP BY thread_id, checkpoint_ns, checkpoint_id
"""

# Thread expiry: each thread's oldest and newest checkpoint over every namespace.
SPANS_SQL = """
SELECT thread_id, min(checkpoint_id), max(checkpoint_id)
FROM checkpoints
WHERE thread_id IN (SELECT value FROM json_each(?))
GROUP BY thread_id
"""

# A whole expired thread, read and deleted in one write transaction (the index read in it
# saw the newest checkpoint the expiry names, and no writer can commit in between).
THREAD_WRITES_SIZE_SQL = """
SELECT count(*), coalesce(sum(length(value)), 0) FROM writes WHERE thread_id = ?
"""
DELETE_THREAD_WRITES_SQL = "DELETE FROM writes WHERE thread_id = ?"
DELETE_THREAD_CHECKPOINTS_SQL = "DELETE FROM checkpoints WHERE thread_id = ?"

# Only for threads that use a DeltaChannel: which channels each checkpoint stores.
DELTA_BODIES_SQL = """
SELECT thread_id, checkpoint_ns, checkpoint_id, type, checkpoint
FROM checkpoints
WHERE thread_id IN (SELECT value FROM json_each(?))
"""

# A batch's deletes go by rowid: the checkpoints' rowids come with the index read, the
# doomed writes' with their sizes. Rowids are stable inside the write transaction that
# read them. Sorted, they visit each table in file order (a leaf page holding rows of
# several doomed checkpoints is reached once). The rowid list is a plain `json_each`
# column: a function call in a multi-row DELETE (`json_extract`, say) makes SQLite keep a
# statement journal, which for a batch's thousands of pages spills to a temp file.
DOOMED_KEYS_SQL = """
SELECT json_extract(d.value, '$[0]') AS thread_id, json_extract(d.value, '$[1]') AS ns,
       json_extract(d.value, '$[2]') AS checkpoint_id
FROM json_each(?) AS d
"""

# Every write of the batch's doomed checkpoints ([thread, ns, id] triples, one JSON array):
# its rowid (for the delete), thread and bytes (for the report).
DOOMED_WRITES_SQL = f"""
WITH doomed AS ({DOOMED_KEYS_SQL})
SELECT w.rowid, w.thread_id, coalesce(length(w.value), 0)
FROM doomed AS d
JOIN writes AS w
  ON w.thread_id = d.thread_id AND w.checkpoint_ns = d.ns AND w.checkpoint_id = d.checkpoint_id
"""

DELETE_WRITES_SQL = "DELETE FROM writes WHERE rowid IN (SELECT value FROM json_each(?))"

DELETE_CHECKPOINTS_SQL = "DELETE FROM checkpoints WHERE rowid IN (SELECT value FROM json_each(?))"

FIRST_THREAD_PAGE_SQL = """
SELECT DISTINCT thread_id FROM checkpoints ORDER BY thread_id LIMIT ?
"""

NEXT_THREAD_PAGE_SQL = """
SELECT DISTINCT thread_id FROM checkpoints WHERE thread_id > ? ORDER BY thread_id LIMIT ?
"""

CHECKPOINT_STATS_SQL = """
SELECT thread_id, count(*),
       coalesce(sum(coalesce(length(checkpoint), 0) + coalesce(length(metadata), 0)), 0),
       max(checkpoint_id), count(DISTINCT checkpoint_ns)
FROM checkpoints
WHERE thread_id IN (SELECT value FROM json_each(?))
GROUP BY thread_id
"""

WRITE_STATS_SQL = """
SELECT thread_id, count(*), coalesce(sum(length(value)), 0)
FROM writes
WHERE thread_id IN (SELECT value FROM json_each(?))
GROUP BY thread_id
"""

THREAD_PAGE_SIZE = 1000

#: Rewrites the file without its free pages; runs outside any transaction.
VACUUM_SQL = "VACUUM"

R = TypeVar("R")
Statement = tuple[str, Sequence[Any] | Mapping[str, Any]]
Program = Generator[Statement, list[Any], R]
Loads = Callable[[tuple[str, bytes]], Any]


# -- programs: the decisions, shared by both drivers ------------------------------------


def _tag_value_is_set(value: Any) -> bool:
    """A metadata value pins a checkpoint when truthy (JSON arrays/objects arrive as text)."""
    return bool(value) and value not in ("[]", "{}")


def _prune_program(
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    dry_run: bool,
    now: datetime,
    loads: Loads,
    explain: bool = False,
    expire: Expire | None = None,
) -> Program[list[ThreadResult]]:
    """Read the batch's index, decide each thread, delete (unless dry run), report."""
    ids_json = json.dumps(list(thread_ids))
    tag = policy.keep_tagged
    # The key's text test only where its spelling in stored JSON is certain (ASCII).
    quoted = json.dumps(tag, ensure_ascii=False) if tag is not None else None
    rows = yield (
        INDEX_SQL,
        {
            "threads": ids_json,
            "tag_path": f"$.{quoted}" if quoted else None,
            "tag_text": quoted if quoted and quoted.isascii() else "",
        },
    )
    sends: set[tuple[str, str, str]] = set()
    interrupted: set[tuple[str, str, str]] = set()
    write_bytes: dict[tuple[str, str, str], int] = {}
    if policy.max_bytes is None:
        for tid, ns, cid, channel in (yield SPECIAL_WRITES_SQL, (ids_json,)):
            (sends if channel == TASKS else interrupted).add((tid, ns, cid))
    else:
        for tid, ns, cid, size, has_sends, has_interrupt in (yield SIZED_WRITES_SQL, (ids_json,)):
            write_bytes[(tid, ns, cid)] = size or 0
            if has_sends:
                sends.add((tid, ns, cid))
            if has_interrupt:
                interrupted.add((tid, ns, cid))
    tagged = {(r[0], r[1], r[2]) for r in rows if tag is not None and _tag_value_is_set(r[7])}
    by_thread: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        by_thread[row[0]].append(row)

    delta_threads = [tid for tid, trows in by_thread.items() if any(r[6] for r in trows)]
    stored: dict[tuple[str, str, str], tuple[set[str], set[str]]] = {}
    if delta_threads:
        for tid, ns, cid, type_, blob in (yield DELTA_BODIES_SQL, (json.dumps(delta_threads),)):
            body = loads((type_, blob))
            stored[(tid, ns, cid)] = (
                set(body.get("channel_versions", {})),
                set(body.get("channel_values", {})),
            )

    tag_set = frozenset({tag}) if tag is not None else frozenset()
    results: list[ThreadResult] = []
    doomed_keys: list[list[str]] = []  # [thread, ns, id] of every doomed checkpoint
    doomed_rowids: list[int] = []
    for tid in thread_ids:
        trows = by_thread.get(tid, [])
        names_by_ns: dict[str, set[str]] = defaultdict(set)
        for r in trows:
            if r[6]:
                names_by_ns[r[1]].update(json.loads(r[6]))
        entries = []
        sizes: dict[tuple[str, str], int] = {}
        rowids: dict[tuple[str, str], int] = {}
        for _tid, ns, cid, parent, size, parents_json, _counters, _tag, rowid in trows:
            sizes[(ns, cid)] = size
            rowids[(ns, cid)] = rowid
            names = names_by_ns.get(ns)
            needs: frozenset[str] = frozenset()
            if names:
                versioned, values = stored.get((tid, ns, cid), (set(), set()))
                needs = delta_needs(names, versioned, values)
            key = (tid, ns, cid)
            entries.append(
                CheckpointEntry(
                    checkpoint_ns=ns,
                    checkpoint_id=cid,
                    parent_id=parent,
                    parents=json.loads(parents_json) if parents_json else {},
                    delta_needs=needs,
                    # The format version sits inside the serialized body; assume it may
                    # predate v4 and keep the parent whenever it holds sends.
                    sends_parent=(tid, ns, parent) in sends,
                    size=size + write_bytes.get(key, 0),
                    tags=tag_set if key in tagged else frozenset(),
                    interrupted=key in interrupted,
                )
            )
        try:
            plan, result = decide(tid, entries, policy, now=now, explain=explain, expire=expire)
        except RetentionError as exc:
            results.append(ThreadResult(tid, error=str(exc)))
            continue
        if result.expired is not None:
            ((n_writes, all_write_bytes),) = yield THREAD_WRITES_SIZE_SQL, (tid,)
            result.deleted_checkpoints = len(entries)
            result.deleted_writes = n_writes
            result.bytes_freed = all_write_bytes + sum(sizes.values())
            if not dry_run:
                yield DELETE_THREAD_WRITES_SQL, (tid,)
                yield DELETE_THREAD_CHECKPOINTS_SQL, (tid,)
            results.append(result)
            continue
        for ns, doomed in plan.delete.items():
            result.deleted_checkpoints += len(doomed)
            result.bytes_freed += sum(sizes[(ns, cid)] for cid in doomed)
            doomed_keys.extend([tid, ns, cid] for cid in doomed)
            doomed_rowids.extend(rowids[(ns, cid)] for cid in doomed)
        results.append(result)
    if doomed_keys:
        by_id = {r.thread_id: r for r in results}
        write_rowids = []
        for rowid, tid, size in (yield DOOMED_WRITES_SQL, (json.dumps(doomed_keys),)):
            write_rowids.append(rowid)
            by_id[tid].deleted_writes += 1
            by_id[tid].bytes_freed += size
        if not dry_run:
            yield DELETE_WRITES_SQL, (json.dumps(sorted(write_rowids)),)
            yield DELETE_CHECKPOINTS_SQL, (json.dumps(sorted(doomed_rowids)),)
    return results


def _spans_program(thread_ids: Sequence[str]) -> Program[dict[str, Span]]:
    rows = yield SPANS_SQL, (json.dumps(list(thread_ids)),)
    return {tid: (first, newest) for tid, first, newest in rows}


def _stats_program(thread_ids: Sequence[str]) -> Program[list[tuple[str, ThreadStats]]]:
    ids_json = json.dumps(list(thread_ids))
    found: dict[str, ThreadStats] = {}
    for tid, count, size, newest, namespaces in (yield CHECKPOINT_STATS_SQL, (ids_json,)):
        found[tid] = ThreadStats(
            checkpoints=count,
            bytes=size,
            namespaces=namespaces,
            newest=checkpoint_time(newest),
            newest_checkpoint_id=newest,
        )
    for tid, count, size in (yield WRITE_STATS_SQL, (ids_json,)):
        if tid in found:
            found[tid].writes = count
            found[tid].bytes += size
    return [(tid, found[tid]) for tid in thread_ids if tid in found]


def _thread_page_program(after: str | None) -> Program[list[str]]:
    """One page of thread ids in key order, after `after` (None: the first page)."""
    if after is None:
        rows = yield FIRST_THREAD_PAGE_SQL, (THREAD_PAGE_SIZE,)
    else:
        rows = yield NEXT_THREAD_PAGE_SQL, (after, THREAD_PAGE_SIZE)
    return [r[0] for r in rows]


# -- drivers ------------------------------------------------------------------------------


def _drive(cur: Any, program: Program[R]) -> R:
    """Run a program's statements as they come, in no transaction of its own."""
    try:
        sql, params = next(program)
        while True:
            cur.execute(sql, params)
            sql, params = program.send(cur.fetchall())
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def _run(conn: Any, program: Program[R], *, write: bool) -> R:
    """Run a program on a sqlite3 connection inside one transaction (a write transaction
    with our settings, `settings.write_settings_program`; the connection's put back after)."""
    cur = conn.cursor()
    restore = _drive(cur, write_settings_program()) if write else []
    try:
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        sql, params = next(program)
        while True:
            cur.execute(sql, params)
            with gc_paused():  # rows into objects, then the decision: CPU and page cache
                sql, params = program.send(cur.fetchall())
    except StopIteration as stop:
        conn.commit()
        return stop.value  # type: ignore[no-any-return]
    except BaseException:
        conn.rollback()
        raise
    finally:
        for sql in reversed(restore):
            cur.execute(sql)
        cur.close()


async def _adrive(conn: Any, program: Program[R]) -> R:
    """`_drive` on an aiosqlite connection."""
    try:
        sql, params = next(program)
        while True:
            async with conn.execute(sql, params) as cur:
                rows = await cur.fetchall()
            sql, params = program.send(list(rows))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _arun(conn: Any, program: Program[R], *, write: bool) -> R:
    """Run a program on an aiosqlite connection inside one transaction (as `_run`)."""
    restore = await _adrive(conn, write_settings_program()) if write else []
    try:
        await conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        sql, params = next(program)
        while True:
            async with conn.execute(sql, params) as cur:
                rows = await cur.fetchall()
            with gc_paused():
                sql, params = program.send(list(rows))
    except StopIteration as stop:
        await conn.commit()
        return stop.value  # type: ignore[no-any-return]
    except BaseException:
        await conn.rollback()
        raise
    finally:
        for sql in reversed(restore):
            await conn.execute(sql)


class SqliteBackend(Backend):
    """Prunes a `SqliteSaver` on its own connection, under its own lock."""

    name = "sqlite"
    can_compact = True

    def _exec(self, program: Program[R], *, write: bool) -> R:
        # The saver's lock, not `saver.cursor()`: that would run `setup()`, which creates
        # tables and switches the file to WAL. We change no schema and no file setting.
        with self.saver.lock:
            try:
                return _run(self.saver.conn, program, write=write)
            except sqlite3.OperationalError as exc:
                raise missing_table(exc) or exc from exc

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
        program = _prune_program(
            thread_ids, policy, dry_run, now, self.saver.serde.loads_typed, explain, expire
        )
        return self._exec(program, write=not dry_run)

    def thread_spans(self, thread_ids: Sequence[str]) -> dict[str, Span]:
        return self._exec(_spans_program(thread_ids), write=False)

    def iter_thread_ids(self) -> Iterator[str]:
        after: str | None = None
        while page := self._exec(_thread_page_program(after), write=False):
            yield from page
            after = page[-1]

    def thread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        return self._exec(_stats_program(thread_ids), write=False)

    def check_store(self) -> None:
        if missing := self._exec(missing_tables_program(), write=False):
            raise not_ready(missing)

    def sweep_lock(self) -> SweepLock:
        path = self._exec(database_file_program(), write=False)
        return FileSweepLock(Path(path)) if path else ProcessSweepLock(self.saver.conn)

    def compact(self) -> None:
        """VACUUM: rewrite the file without its free pages (without it, SQLite reuses them
        for new checkpoints but the file does not shrink)."""
        with self.saver.lock:
            conn: sqlite3.Connection = self.saver.conn
            conn.commit()
            conn.execute(VACUUM_SQL)


class AsyncSqliteBackend(Backend):
    """Prunes an `AsyncSqliteSaver` on its aiosqlite connection, under its asyncio lock."""

    name = "sqlite"
    is_async = True
    can_compact = True

    async def _aexec(self, program: Program[R], *, write: bool) -> R:
        # Never `setup()` (see `SqliteBackend._exec`); only start a connection not yet open.
        await _ensure_connected(self.saver.conn)
        async with self.saver.lock:
            try:
                return await _arun(self.saver.conn, program, write=write)
            except sqlite3.OperationalError as exc:
                raise missing_table(exc) or exc from exc

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
        program = _prune_program(
            thread_ids, policy, dry_run, now, self.saver.serde.loads_typed, explain, expire
        )
        return await self._aexec(program, write=not dry_run)

    async def athread_spans(self, thread_ids: Sequence[str]) -> dict[str, Span]:
        return await self._aexec(_spans_program(thread_ids), write=False)

    async def _aiter(self) -> AsyncIterator[str]:
        after: str | None = None
        while page := await self._aexec(_thread_page_program(after), write=False):
            for tid in page:
                yield tid
            after = page[-1]

    def aiter_thread_ids(self) -> AsyncIterator[str]:
        return self._aiter()

    async def athread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        return await self._aexec(_stats_program(thread_ids), write=False)

    async def acheck_store(self) -> None:
        if missing := await self._aexec(missing_tables_program(), write=False):
            raise not_ready(missing)

    async def asweep_lock(self) -> SweepLock:
        path = await self._aexec(database_file_program(), write=False)
        return FileSweepLock(Path(path)) if path else ProcessSweepLock(self.saver.conn)

    async def acompact(self) -> None:
        """`SqliteBackend.compact` on aiosqlite."""
        async with self.saver.lock:
            await self.saver.conn.commit()
            await self.saver.conn.execute(VACUUM_SQL)
