"""A sweep's deletes overlapped with its next reads. Redis runs one command at a time, so
a sweep that reads, decides and then deletes batch by batch leaves the server idle while
Python decides and Python idle while the server deletes. A staged batch hands its deletes
to a worker (a thread; a task on asyncio) as soon as they are decided, and the sweep goes
on reading and deciding the next batch while the server deletes this one.

At most `IN_FLIGHT` batches' deletes wait or run at once (memory stays flat: the next
batch waits for the oldest), one batch after another in order. The engine's flush waits
for them all and hands back their results, counted as each Lua call committed; it asks
`halt` before each batch's deletes, and once it says stop, batches not yet started are
left to the next sweep (their threads say so)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from langgraph_retention.report import ThreadResult

from ..base import Halt, Stage
from .deletes import _delete_program, _Job
from .model import Program

#: Batches whose deletes may wait or run at once; a new one first waits for the oldest.
IN_FLIGHT = 2
#: Threads staged before the sweep flushes (waits for their deletes, reports them).
STAGE_THREADS = 1_000
#: Said of a thread whose deletes the flush did not start because the sweep stopped.
NOT_STARTED = "the sweep stopped before this thread's deletes ran; the next sweep prunes it"


def _settled(ran: bool | BaseException, jobs: Sequence[_Job]) -> None:
    """Note on each job's result how its batch's deletes ended (if not plainly)."""
    for job in jobs:
        if isinstance(ran, BaseException):
            job.result.error = f"deletes failed: {type(ran).__name__}: {ran}"
        elif not ran:
            job.result.warnings.append(NOT_STARTED)


def _forget_keys(jobs: Sequence[_Job]) -> None:
    """Drop a batch's keys once its deletes ran: until the flush only results are kept."""
    for job in jobs:
        job.writes, job.checkpoints, job.sizes = [], [], None


class _Staged(Stage):
    """What both kinds of stage share: the staged results, when to flush, the stop."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = threading.Event()

    def full(self) -> bool:
        return len(self.results) >= STAGE_THREADS

    def _add(self, jobs: Sequence[_Job]) -> None:
        for job in jobs:
            self.results[job.result.thread_id] = job.result

    def _take(self) -> list[ThreadResult]:
        results = list(self.results.values())
        self.results = {}
        self.stopped.clear()
        return results


class RedisStage(_Staged):
    """Deletes run by one worker thread, batch after batch, on the client's pool."""

    def __init__(self, run: Callable[[Program[None]], None]) -> None:
        super().__init__()
        self._run = run
        self._pending: list[tuple[Future[bool], list[_Job]]] = []
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, jobs: list[_Job]) -> None:
        """Stage `jobs` and start their deletes once fewer than `IN_FLIGHT` batches wait."""
        while len(busy := [f for f, _ in self._pending if not f.done()]) >= IN_FLIGHT:
            wait(busy, return_when=FIRST_COMPLETED)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="lgr-redis-deletes")
        self._add(jobs)
        self._pending.append((self._executor.submit(self._deletes, jobs), jobs))

    def _deletes(self, jobs: list[_Job]) -> bool:
        if self.stopped.is_set():
            return False
        try:
            self._run(_delete_program(jobs, dry_run=False))
        finally:
            _forget_keys(jobs)
        return True

    def flush(self, halt: Halt) -> list[ThreadResult]:
        """Wait for every staged delete (asking `halt` before each batch); the results."""
        for future, jobs in self._pending:
            if not self.stopped.is_set() and halt():
                self.stopped.set()
            try:
                _settled(future.result(), jobs)
            except Exception as exc:  # reported on the batch's threads
                _settled(exc, jobs)
        self._close()
        return self._take()

    def clear(self) -> None:
        self.stopped.set()  # deletes not started stay undone
        for future, _jobs in self._pending:
            wait([future])
        self._close()
        super().clear()

    def _close(self) -> None:
        self._pending = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class AsyncRedisStage(_Staged):
    """Deletes run by tasks on the sweep's event loop, each after the one before."""

    def __init__(self, arun: Callable[[Program[None]], Awaitable[None]]) -> None:
        super().__init__()
        self._arun = arun
        self._pending: list[tuple[asyncio.Task[bool], list[_Job]]] = []

    async def submit(self, jobs: list[_Job]) -> None:
        """Stage `jobs` and start their deletes once fewer than `IN_FLIGHT` batches wait."""
        while len(busy := [t for t, _ in self._pending if not t.done()]) >= IN_FLIGHT:
            await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
        before = self._pending[-1][0] if self._pending else None
        self._add(jobs)
        self._pending.append((asyncio.ensure_future(self._deletes(jobs, before)), jobs))

    async def _deletes(self, jobs: list[_Job], before: asyncio.Task[bool] | None) -> bool:
        if before is not None:
            await asyncio.wait([before])
        if self.stopped.is_set():
            return False
        try:
            await self._arun(_delete_program(jobs, dry_run=False))
        finally:
            _forget_keys(jobs)
        return True

    async def flush(self, halt: Halt) -> list[ThreadResult]:
        """Wait for every staged delete (asking `halt` before each batch); the results."""
        for task, jobs in self._pending:
            if not self.stopped.is_set() and await asyncio.to_thread(halt):
                self.stopped.set()
            try:
                _settled(await task, jobs)
            except Exception as exc:  # reported on the batch's threads
                _settled(exc, jobs)
        self._pending = []
        return self._take()

    def clear(self) -> None:
        self.stopped.set()  # tasks not started return at once
        self._pending = []
        super().clear()
