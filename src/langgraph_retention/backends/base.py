"""What every storage backend provides; the engine only talks to this surface.

A backend reads checkpoint indexes, deletes the sets `policy.plan_thread` chose, lists
thread ids and sizes threads. Sync savers implement the sync methods, async savers the
async ones; the engine bridges the other way (a worker thread, or the saver's loop).
"""

from __future__ import annotations

import asyncio
import gc
import heapq
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar, NamedTuple, TypeAlias

from langgraph_retention.errors import RetentionError
from langgraph_retention.lock import ProcessSweepLock, SweepLock
from langgraph_retention.policy import (
    CheckpointEntry,
    Expiry,
    RetentionPolicy,
    ThreadPlan,
    expire_plan,
    plan_thread,
    thread_expiry,
)
from langgraph_retention.report import Decision, ThreadResult, ThreadStats

__all__ = [
    "Backend",
    "Expire",
    "ExpiryRule",
    "Halt",
    "Span",
    "Stage",
    "decide",
    "gc_paused",
    "not_yet",
]

#: A thread's oldest and newest checkpoint ids, over every namespace.
Span = tuple[str, str]

#: Asked between the transactions of a flush: True stops it there (stop requested, or
#: the sweep lock lost). It may block briefly (a lock check); flushes call it from the
#: thread or loop they run on.
Halt = Callable[[], bool]


class Stage:
    """Deletes a sweep has decided but not yet run, held across its batches.

    On a store whose threads' rows are interleaved on disk, deleting batch by batch
    rewrites a page once for every batch with a row on it; a backend that stages
    (`Backend.open_stage`) instead records each batch's doomed rows here and deletes
    them all in storage order (`Backend.flush_stage`), each page once per flush.

    `results` holds the staged threads' results: counts start at zero and grow as the
    flush's transactions commit, so they always say what was really deleted. A backend
    subclasses this with its own row buffers and says when it is `full` (memory bound).
    """

    #: Threads per batch of a staged sweep whose caller names no batch size (None: the
    #: backend's `sweep_batch_size`): planning holds a batch's index, not its deletes.
    batch_size: int | None = None

    def __init__(self) -> None:
        self.results: dict[str, ThreadResult] = {}

    def full(self) -> bool:
        """True when the sweep should flush before its next batch."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Threads waiting for their deletes."""
        return len(self.results)

    def clear(self) -> None:
        """Forget everything staged (after a flush, or when it failed)."""
        self.results = {}


class ExpiryRule(NamedTuple):
    """Expire the threads `policy` expires at `now`, each decided on the index the prune
    reads anyway (its oldest and newest ids): for passes with no `on_before_delete` hook
    to ask first, which need no separate read of every thread's span."""

    policy: RetentionPolicy
    now: datetime


#: Which threads a prune deletes whole: decided already (thread id -> `Expiry`, after the
#: hook answered), or by rule on the index the prune reads.
Expire: TypeAlias = Mapping[str, Expiry] | ExpiryRule


def expiry_of(
    expire: Expire | None, thread_id: str, entries: Sequence[CheckpointEntry]
) -> Expiry | None:
    """The thread's expiry under `expire`, if any."""
    if expire is None:
        return None
    if not isinstance(expire, ExpiryRule):
        return expire.get(thread_id)
    if not entries:
        return None
    ids = [e.checkpoint_id for e in entries]
    newest = max(ids)
    reason = thread_expiry(min(ids), newest, expire.policy, expire.now)
    return Expiry(newest, reason) if reason is not None else None


def decide(
    thread_id: str,
    entries: Sequence[CheckpointEntry],
    policy: RetentionPolicy,
    *,
    now: datetime,
    explain: bool = False,
    expire: Expire | None = None,
) -> tuple[ThreadPlan, ThreadResult]:
    """One thread's plan and the result a backend fills in as it deletes: the whole
    thread when it expires under `expire` and its newest checkpoint is still the one the
    expiry saw, else the policy's plan. Raises `RetentionError` when the policy must
    refuse the thread."""
    expiry = expiry_of(expire, thread_id, entries)
    plan = expire_plan(entries, expiry, explain=explain) if expiry is not None else None
    expired = expiry.reason if plan is not None and expiry is not None else None
    if plan is None:
        plan = plan_thread(entries, policy, thread_id=thread_id, now=now, explain=explain)
    result = ThreadResult(
        thread_id, kept_checkpoints=plan.kept_count, expired=expired, warnings=plan.warnings
    )
    if explain and plan.reasons is not None:
        reasons = plan.reasons
        result.decisions = [
            Decision(ns, cid, kept, reasons.get((ns, cid), ()))
            for ns in sorted(set(plan.keep) | set(plan.delete))
            for kept, ids in ((True, plan.keep.get(ns, [])), (False, plan.delete.get(ns, [])))
            for cid in ids
        ]
    return plan, result


def not_yet(explain: bool, expire: Expire | None) -> None:
    """Refuse explanations and thread expiry where a backend does not do them yet."""
    if explain or expire:
        raise RetentionError("explain and idle_ttl/max_age are not supported on this store yet")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold Python's cyclic GC off through a CPU-only burst of short-lived objects.

    A batch's index and plan are thousands of tuples, freed by reference counting as soon
    as the batch is decided. Collections in the middle would promote them to the oldest
    generation, which soon forces a full collection of the application's whole heap (60 ms
    with LangGraph loaded, measured). Wrap only work that does no I/O. If the collector was
    already off, it stays off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Backend:
    """Storage-specific reads and deletes for one saver object."""

    name: ClassVar[str] = "backend"
    #: True when the saver's native interface is asyncio (AsyncSqliteSaver, ...).
    is_async: ClassVar[bool] = False
    #: True when `compact` can give freed space back to the file system.
    can_compact: ClassVar[bool] = False
    #: Threads per transaction of a sweep whose caller names no batch size (None: the
    #: engine's DEFAULT_BATCH_SIZE).
    sweep_batch_size: ClassVar[int | None] = None

    def __init__(self, saver: Any) -> None:
        self.saver = saver

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop an async saver is bound to (sync calls are run there)."""
        loop = getattr(self.saver, "loop", None)
        return loop if isinstance(loop, asyncio.AbstractEventLoop) else None

    # -- sync interface (sync savers) -----------------------------------------
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
        """Prune several threads, each decided on its own index (`decide`); one result per
        id. Threads `expire` expires go whole if their newest checkpoint is still the one
        the expiry names, read in the deleting transaction.

        With a `stage` (only from this backend's `open_stage`, never in a dry run), the
        batch's ordinary deletes are recorded there instead of run, and their threads'
        results go into `stage.results` rather than the returned list; whole-thread expiry
        still runs here. A batch that raises must leave the stage as it found it."""
        raise NotImplementedError

    def open_stage(self) -> Stage | None:
        """A new `Stage` for a sweep's deletes, or None when this store deletes batch by
        batch (the default). It may read the store to choose (how big it is)."""
        return None

    def flush_stage(self, stage: Stage, halt: Halt) -> list[ThreadResult]:
        """Run every delete in `stage` in storage order, in transactions of bounded size,
        asking `halt` before each; return the staged threads' results and clear it.

        Results count only what committed; a halted flush warns on the threads it left
        (their leftovers are found again by the next sweep). Deletes go in an order that
        leaves nothing behind when stopped between transactions (a checkpoint's writes
        before the checkpoint, blobs last). On an error the engine reports the threads
        still in `stage.results` as failed, with the counts they reached."""
        raise NotImplementedError

    def thread_spans(self, thread_ids: Sequence[str]) -> dict[str, Span]:
        """Each existing thread's oldest and newest checkpoint ids (for thread expiry)."""
        raise NotImplementedError

    def iter_thread_ids(self) -> Iterator[str]:
        """Every thread id in the store, streamed."""
        raise NotImplementedError

    def thread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        """Sizes of the given threads; threads with no checkpoint are left out."""
        raise NotImplementedError

    def thread_page(self, after: str | None, limit: int) -> list[str]:
        """Up to `limit` thread ids greater than `after`, in id order (a page of the store).

        This generic version reads every id once and keeps the `limit` smallest in a heap:
        memory bounded by the page, time by the store. Backends with ordered keys do better.
        """
        return _smallest_after(self.iter_thread_ids(), after, limit)

    def check_store(self) -> None:
        """Raise `StoreNotReadyError` unless the store has the saver's tables or indexes.

        Reads only: a store is never set up or migrated here."""

    def sweep_lock(self) -> SweepLock:
        """The store-wide lock one sweeper holds at a time (not yet acquired)."""
        return ProcessSweepLock(self.saver)

    def compact(self) -> None:
        """Give the space prunes freed back to the file system (`can_compact` backends)."""
        raise NotImplementedError(f"{self.name} stores cannot be compacted")

    # -- async interface (async savers) -----------------------------------------
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
        raise NotImplementedError

    async def aopen_stage(self) -> Stage | None:
        """`open_stage` for async savers."""
        return None

    async def aflush_stage(self, stage: Stage, halt: Halt) -> list[ThreadResult]:
        """`flush_stage` for async savers (`halt` may block briefly: call it in a thread
        if that matters)."""
        raise NotImplementedError

    async def athread_spans(self, thread_ids: Sequence[str]) -> dict[str, Span]:
        raise NotImplementedError

    def aiter_thread_ids(self) -> AsyncIterator[str]:
        raise NotImplementedError

    async def athread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        raise NotImplementedError

    async def athread_page(self, after: str | None, limit: int) -> list[str]:
        """`thread_page` for async savers."""
        heap: list[str] = []  # see _keep_smallest
        async for tid in self.aiter_thread_ids():
            _keep_smallest(heap, tid, after, limit)
        return heapq.nsmallest(limit, heap)

    async def acheck_store(self) -> None:
        """`check_store` for async savers."""

    async def acompact(self) -> None:
        """`compact` for async savers."""
        raise NotImplementedError(f"{self.name} stores cannot be compacted")

    async def asweep_lock(self) -> SweepLock:
        """`sweep_lock` for async savers; the lock itself has a blocking interface (the
        engine calls it from a worker thread)."""
        return ProcessSweepLock(self.saver)


def _keep_smallest(heap: list[str], tid: str, after: str | None, limit: int) -> None:
    """Collect ids above `after`, trimmed to the `limit` smallest whenever the list
    doubles: memory stays under twice the page, each id costs amortised O(log limit)."""
    if after is not None and tid <= after:
        return
    heap.append(tid)
    if len(heap) >= 2 * limit:
        heap[:] = heapq.nsmallest(limit, heap)


def _smallest_after(ids: Iterator[str], after: str | None, limit: int) -> list[str]:
    heap: list[str] = []
    for tid in ids:
        _keep_smallest(heap, tid, after, limit)
    return heapq.nsmallest(limit, heap)
