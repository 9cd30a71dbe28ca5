"""`PostgresSaver` and `AsyncPostgresSaver`: the drivers that run the programs.

A prune is one transaction per batch of threads: it reads the batch's checkpoint index
(ids, parents and a few metadata facts; state is never deserialized), lets
`policy.plan_thread` decide each thread on its own rows, then deletes the chosen
checkpoints and their writes in one set-based statement and the blobs no remaining
checkpoint references in a second (`programs.py`, `statements.py`). A sweep stages
instead (`staging.py`): its batches only read and locate their doomed rows, and flushes
delete them in physical order, in short transactions. A deadlock or a serialization
failure reruns the whole transaction a few times.

The programs yield statements and receive their rows, so the sync (`psycopg.Connection`)
and async (`AsyncConnection`) drivers share every decision. The saver may hold a
connection (used under its own lock, pipeline mode included) or a pool (a connection of
our own is borrowed from it, one per transaction).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from functools import partial
from typing import Any

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection, AsyncCursor, Connection, Cursor
from psycopg.rows import TupleRow, tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from langgraph_retention.errors import StoreUnavailableError
from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.report import ThreadResult, ThreadStats

from ..base import Backend, Expire, Halt, Span, Stage, gc_paused
from .capped import batch_program
from .connection import server_name
from .lock import PostgresSweepLock
from .programs import (
    spans_program,
    stats_program,
    thread_page_program,
)
from .schema import missing_relation, missing_tables_program, not_ready
from .stage import PostgresStage, flush_program, register_dumpers, stage_program
from .staging import staged_program
from .statements import Program, R

__all__ = ["AsyncPostgresBackend", "PostgresBackend", "PostgresUnavailableError"]


class PostgresUnavailableError(StoreUnavailableError):
    """The PostgreSQL server could not be reached, so the operation did not complete."""


#: Threads per transaction of a sweep that names no batch size and deletes batch by batch
#: (a store that fits the buffer cache several times over: `stage.STAGE_ABOVE_BUFFERS`).
#: Fewer, bigger batches visit each shared heap page fewer times; 1,000 threads x 60
#: checkpoints hold ~50 MB more client memory than 100.
SWEEP_BATCH_SIZE = 1000
#: The same for a sweep that stages its deletes and runs them in physical order: the batch
#: size no longer decides how often a heap page is rewritten; it bounds the memory of a
#: batch's index next to the stage's, and how often the batches' reads revisit a page.
STAGED_BATCH_SIZE = 250

#: Attempts of a batch's transaction when Postgres reports a deadlock or a serialization
#: failure (another transaction changed the same rows); each attempt re-reads the index.
MAX_ATTEMPTS = 5
RETRY_BASE_DELAY = 0.05
RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


def _own(stage: Stage) -> PostgresStage:
    if not isinstance(stage, PostgresStage):
        raise TypeError(f"not a PostgreSQL stage: {stage!r}")
    return stage


# -- drivers ------------------------------------------------------------------------------


def _retry_delay(attempt: int) -> float:
    """Jittered exponential backoff, so two colliding prunes do not collide again."""
    return float(RETRY_BASE_DELAY * (2 ** (attempt - 1)) * (0.5 + random.random()))


def _unavailable(exc: Exception, saver_conn: Any, used: Any) -> PostgresUnavailableError | None:
    """The error to raise instead of `exc` when it says the server is out of reach:
    no pooled connection came, the connection we used (None: we got none) is closed or
    broken, or the server reported a connection failure or its shutdown."""
    if isinstance(exc, PoolTimeout):
        reason = "no pooled connection could be opened"
    elif isinstance(exc, psycopg.OperationalError) and (
        used is None or used.closed or used.broken or (exc.sqlstate or "").startswith(("08", "57P"))
    ):
        reason = "the connection failed"
    else:
        return None
    return PostgresUnavailableError(
        f"PostgreSQL at {server_name(saver_conn)} is unreachable ({reason}: {exc}); "
        "the operation did not complete"
    )


def _drive(cur: Cursor[TupleRow], program: Program[R]) -> R:
    """Execute each statement a program yields, send it the rows, return its result.
    Turning rows into objects and deciding on them is CPU only: the GC waits."""
    try:
        sql, params, fetch = next(program)
        while True:
            cur.execute(sql, params, prepare=False)
            with gc_paused():
                sql, params, fetch = program.send(cur.fetchall() if fetch else [])
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _adrive(cur: AsyncCursor[TupleRow], program: Program[R]) -> R:
    """`_drive` on asyncio."""
    try:
        sql, params, fetch = next(program)
        while True:
            await cur.execute(sql, params, prepare=False)
            rows = await cur.fetchall() if fetch else []
            with gc_paused():
                sql, params, fetch = program.send(rows)
            del rows
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class PostgresBackend(Backend):
    """Prunes a `PostgresSaver`: on its connection under its lock, or on a pooled one."""

    name = "postgres"
    sweep_batch_size = SWEEP_BATCH_SIZE
    saver: PostgresSaver

    @contextmanager
    def _cursor(self) -> Iterator[Cursor[TupleRow]]:
        """A tuple-row cursor: on a pooled connection of our own (the app's checkpoints
        keep flowing meanwhile), else on the saver's connection under its lock."""
        conn = self.saver.conn
        if isinstance(conn, ConnectionPool):
            with conn.connection() as own, own.cursor(binary=True, row_factory=tuple_row) as cur:
                register_dumpers(cur)
                yield cur
            return
        with self.saver._cursor() as saver_cur:
            pipe = self.saver.pipe
            if pipe is not None:
                # A transaction must start clean, not take in what the pipeline queued.
                pipe.sync()
            with saver_cur.connection.cursor(binary=True, row_factory=tuple_row) as cur:
                register_dumpers(cur)
                yield cur
            if pipe is not None:
                pipe.sync()  # end the implicit transaction our reads opened in the pipeline

    def _exec(self, make: Callable[[], Program[R]], *, write: bool) -> R:
        """Run a program in one transaction (reads on an autocommit connection run bare),
        retrying the whole of it on a deadlock or a serialization failure."""
        attempt = 1
        while True:
            conn: Connection[Any] | None = None
            try:
                with self._cursor() as cur:
                    conn = cur.connection
                    if write or not conn.autocommit:
                        with conn.transaction():
                            return _drive(cur, make())
                    return _drive(cur, make())
            except RETRYABLE:
                if attempt >= MAX_ATTEMPTS:
                    raise
            except psycopg.errors.UndefinedTable as exc:
                raise not_ready(server_name(self.saver.conn), missing_relation(exc)) from exc
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if (unavailable := _unavailable(exc, self.saver.conn, conn)) is not None:
                    raise unavailable from exc
                raise
            time.sleep(_retry_delay(attempt))
            attempt += 1

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
        if stage is None or dry_run:
            return self._exec(
                lambda: batch_program(thread_ids, policy, dry_run, now, explain, expire),
                write=True,
            )
        results, batch = self._exec(
            lambda: staged_program(thread_ids, policy, now, explain, expire), write=True
        )
        _own(stage).absorb(batch)  # only once the batch's transaction committed
        return results

    def open_stage(self) -> PostgresStage | None:
        stage = self._exec(stage_program, write=False)
        if stage is not None:
            stage.batch_size = STAGED_BATCH_SIZE
        return stage

    def flush_stage(self, stage: Stage, halt: Halt) -> list[ThreadResult]:
        staged = _own(stage)
        for sql, params in staged.statements():
            if halt():
                staged.halted = True
                break
            staged.count(self._exec(partial(flush_program, sql, params), write=True))
        return staged.finish()

    def thread_spans(self, thread_ids: Sequence[str]) -> dict[str, Span]:
        return self._exec(lambda: spans_program(thread_ids), write=False)

    def iter_thread_ids(self) -> Iterator[str]:
        after: str | None = None
        while page := self._exec(partial(thread_page_program, after), write=False):
            yield from page
            after = page[-1]

    def thread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        return self._exec(lambda: stats_program(thread_ids), write=False)

    def check_store(self) -> None:
        if missing := self._exec(missing_tables_program, write=False):
            raise not_ready(server_name(self.saver.conn), missing)

    def sweep_lock(self) -> PostgresSweepLock:
        return PostgresSweepLock(self.saver.conn)


class AsyncPostgresBackend(Backend):
    """Prunes an `AsyncPostgresSaver`, on its connection or a pooled one (as above)."""

    name = "postgres"
    is_async = True
    sweep_batch_size = SWEEP_BATCH_SIZE
    saver: AsyncPostgresSaver

    @asynccontextmanager
    async def _cursor(self) -> AsyncIterator[AsyncCursor[TupleRow]]:
        """`PostgresBackend._cursor` on asyncio."""
        conn = self.saver.conn
        if isinstance(conn, AsyncConnectionPool):
            async with (
                conn.connection() as own,
                own.cursor(binary=True, row_factory=tuple_row) as cur,
            ):
                register_dumpers(cur)
                yield cur
            return
        async with self.saver._cursor() as saver_cur:
            pipe = self.saver.pipe
            if pipe is not None:
                await pipe.sync()
            async with saver_cur.connection.cursor(binary=True, row_factory=tuple_row) as cur:
                register_dumpers(cur)
                yield cur
            if pipe is not None:
                await pipe.sync()

    async def _aexec(self, make: Callable[[], Program[R]], *, write: bool) -> R:
        """`PostgresBackend._exec` on asyncio."""
        attempt = 1
        while True:
            conn: AsyncConnection[Any] | None = None
            try:
                async with self._cursor() as cur:
                    conn = cur.connection
                    if write or not conn.autocommit:
                        async with conn.transaction():
                            return await _adrive(cur, make())
                    return await _adrive(cur, make())
            except RETRYABLE:
                if attempt >= MAX_ATTEMPTS:
                    raise
            except psycopg.errors.UndefinedTable as exc:
                raise not_ready(server_name(self.saver.conn), missing_relation(exc)) from exc
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if (unavailable := _unavailable(exc, self.saver.conn, conn)) is not None:
                    raise unavailable from exc
                raise
            await asyncio.sleep(_retry_delay(attempt))
            attempt += 1

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
        if stage is None or dry_run:
            return await self._aexec(
                lambda: batch_program(thread_ids, policy, dry_run, now, explain, expire),
                write=True,
            )
        results, batch = await self._aexec(
            lambda: staged_program(thread_ids, policy, now, explain, expire), write=True
        )
        _own(stage).absorb(batch)
        return results

    async def aopen_stage(self) -> PostgresStage | None:
        stage = await self._aexec(stage_program, write=False)
        if stage is not None:
            stage.batch_size = STAGED_BATCH_SIZE
        return stage

    async def aflush_stage(self, stage: Stage, halt: Halt) -> list[ThreadResult]:
        staged = _own(stage)
        for sql, params in staged.statements():
            if await asyncio.to_thread(halt):
                staged.halted = True
                break
            rows = await self._aexec(partial(flush_program, sql, params), write=True)
            staged.count(rows)
        return staged.finish()

    async def athread_spans(self, thread_ids: Sequence[str]) -> dict[str, Span]:
        return await self._aexec(lambda: spans_program(thread_ids), write=False)

    async def _aiter(self) -> AsyncIterator[str]:
        after: str | None = None
        while page := await self._aexec(partial(thread_page_program, after), write=False):
            for tid in page:
                yield tid
            after = page[-1]

    def aiter_thread_ids(self) -> AsyncIterator[str]:
        return self._aiter()

    async def athread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        return await self._aexec(lambda: stats_program(thread_ids), write=False)

    async def acheck_store(self) -> None:
        if missing := await self._aexec(missing_tables_program, write=False):
            raise not_ready(server_name(self.saver.conn), missing)

    async def asweep_lock(self) -> PostgresSweepLock:
        return PostgresSweepLock(self.saver.conn)
