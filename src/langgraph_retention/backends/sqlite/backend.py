"""`SqliteSaver` and `AsyncSqliteSaver`. SQLite keeps channel values inline in the
checkpoint row, so deleting a checkpoint and its writes reclaims everything it held.

A prune of one thread, and a dry run, decide and delete in one write transaction per
batch (`prune.prune_program`). A sweep stages: each batch is read and decided in a read
transaction (`prune.stage_program`: the app's writer is never blocked by it) and its
doomed rows wait in a `SqliteStage` until the flush deletes them in rowid order, in short
write transactions (`flush.StagedFlush`).

The statements are named constants; programs yield them and receive their rows, so the
sync (`sqlite3`) and async (`aiosqlite`) drivers share every decision.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from langgraph.checkpoint.sqlite.aio import _ensure_connected

from langgraph_retention.lock import ProcessSweepLock, SweepLock
from langgraph_retention.policy import RetentionPolicy, checkpoint_time
from langgraph_retention.report import ThreadResult, ThreadStats

from ..base import Backend, Expire, Halt, Span, Stage, gc_paused
from .flush import StagedFlush
from .lock import FileSweepLock
from .prune import Program, StagedBatch, prune_program, stage_program, with_top_write
from .schema import database_file_program, missing_table, missing_tables_program, not_ready
from .settings import write_settings_program
from .stage import SqliteStage, open_stage_program

__all__ = ["AsyncSqliteBackend", "SqliteBackend"]

# -- statements ---------------------------------------------------------------------------
# Thread id lists travel as one JSON array parameter (`json_each`), so a batch of any size
# is one statement and the primary key (thread_id first) does the lookups.

# Thread expiry: each thread's oldest and newest checkpoint over every namespace.
SPANS_SQL = """
SELECT thread_id, min(checkpoint_id), max(checkpoint_id)
FROM checkpoints
WHERE thread_id IN (SELECT value FROM json_each(?))
GROUP BY thread_id
"""

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


def _staged(stage: Stage) -> SqliteStage:
    """The engine hands back the stage `open_stage` made."""
    if not isinstance(stage, SqliteStage):
        raise TypeError(f"a SQLite sweep stages in a SqliteStage, got {type(stage).__name__}")
    return stage


def _settle(
    stage: SqliteStage, batch: StagedBatch, expired: tuple[list[ThreadResult], int] | None
) -> list[ThreadResult]:
    """Stage a batch whose read (and, for its expired threads, whole-thread delete: the
    results and the writes' highest rowid after it) succeeded; return the threads
    settled now."""
    results = list(batch.results)
    if expired is not None:
        results += expired[0]
        batch.top_write = min(batch.top_write, expired[1])
    stage.add(batch)
    return results


# -- programs: the decisions, shared by both drivers ------------------------------------


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
        loads = self.saver.serde.loads_typed
        if stage is None or dry_run:
            program = prune_program(thread_ids, policy, dry_run, now, loads, explain, expire)
            return self._exec(program, write=not dry_run)
        staged = _staged(stage)
        batch = self._exec(
            stage_program(thread_ids, policy, now, loads, explain, expire), write=False
        )
        expired = None
        if batch.expired:
            program = prune_program(batch.expired, policy, False, now, loads, explain, expire)
            expired = self._exec(with_top_write(program), write=True)
        return _settle(staged, batch, expired)

    def open_stage(self) -> Stage | None:
        return self._exec(open_stage_program(), write=False)

    def flush_stage(self, stage: Stage, halt: Halt) -> list[ThreadResult]:
        flush = StagedFlush(_staged(stage))
        for program in flush.transactions():
            if halt():
                return flush.finish(halted=True)
            start = time.perf_counter()
            deleted = self._exec(program, write=True)
            flush.committed(deleted, time.perf_counter() - start)
        return flush.finish(halted=False)

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
        loads = self.saver.serde.loads_typed
        if stage is None or dry_run:
            program = prune_program(thread_ids, policy, dry_run, now, loads, explain, expire)
            return await self._aexec(program, write=not dry_run)
        staged = _staged(stage)
        batch = await self._aexec(
            stage_program(thread_ids, policy, now, loads, explain, expire), write=False
        )
        expired = None
        if batch.expired:
            program = prune_program(batch.expired, policy, False, now, loads, explain, expire)
            expired = await self._aexec(with_top_write(program), write=True)
        return _settle(staged, batch, expired)

    async def aopen_stage(self) -> Stage | None:
        return await self._aexec(open_stage_program(), write=False)

    async def aflush_stage(self, stage: Stage, halt: Halt) -> list[ThreadResult]:
        flush = StagedFlush(_staged(stage))
        for program in flush.transactions():
            if await asyncio.to_thread(halt):
                return flush.finish(halted=True)
            start = time.perf_counter()
            deleted = await self._aexec(program, write=True)
            flush.committed(deleted, time.perf_counter() - start)
        return flush.finish(halted=False)

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
