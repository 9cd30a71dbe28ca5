"""The public operations: `prune_thread`, `sweep`, `stats` and their async twins.

They glue the pure policy to a backend: validate input, pick the backend for the saver,
stream thread ids in batches, fold per-thread results into a `PruneReport`. Sync savers
used from async code run in a worker thread; async savers used from sync code run on
their own event loop (as their own sync methods do).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from langgraph_retention import metrics
from langgraph_retention.backends import Backend, resolve_backend
from langgraph_retention.backends.base import Expire, ExpiryRule, Halt, Span, Stage
from langgraph_retention.errors import SweepLockHeld, UsageError
from langgraph_retention.lock import SweepLock
from langgraph_retention.policy import Expiry, RetentionPolicy, thread_expiry
from langgraph_retention.report import PruneReport, Stats, ThreadResult, ThreadStats
from langgraph_retention.rules import EXEMPT, PolicySource, Resolver, resolver_of

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "OnBeforeDelete",
    "Stop",
    "acheck_store",
    "aiter_stats",
    "aprune_thread",
    "astats",
    "astats_page",
    "asweep",
    "can_compact",
    "check_store",
    "compact",
    "iter_thread_ids",
    "prune_thread",
    "stats",
    "stats_page",
    "sweep",
    "sweep_lock",
]

logger = logging.getLogger("langgraph_retention")

#: Threads pruned per transaction in a sweep: few enough to keep each write short. A
#: backend may name its own (`Backend.sweep_batch_size`), used when the caller names none.
DEFAULT_BATCH_SIZE = 100

T = TypeVar("T")
Progress = Callable[[ThreadResult], None]
#: Asked before a whole thread is deleted for `idle_ttl`/`max_age`, with its id and the
#: reason; False keeps it. It runs between transactions, so it may look things up; with
#: `asweep`/`aprune_thread` it may be a coroutine function.
OnBeforeDelete = Callable[[str, str], "bool | Awaitable[bool | None] | None"]
#: Asked before each batch of a sweep; True ends the sweep there (a SIGTERM handler's flag).
Stop = Callable[[], bool]


def _check_policy(policy: Any) -> Resolver:
    return resolver_of(policy)


def _group(
    thread_ids: Sequence[str], resolve: Resolver
) -> tuple[dict[RetentionPolicy, list[str]], list[ThreadResult]]:
    """A batch's threads grouped by their policy, and the results already settled:
    exempt threads, and threads the resolver failed on (reported, never guessed)."""
    groups: dict[RetentionPolicy, list[str]] = {}
    settled: list[ThreadResult] = []
    for tid in thread_ids:
        try:
            resolution = resolve(tid)
        except Exception as exc:
            settled.append(ThreadResult(tid, error=f"policy resolver failed: {exc!r}"))
            continue
        if isinstance(resolution, RetentionPolicy):
            groups.setdefault(resolution, []).append(tid)
        elif resolution == EXEMPT:
            settled.append(ThreadResult(tid, exempt=True))
        else:
            settled.append(
                ThreadResult(tid, error=f"policy resolver returned {resolution!r}, not a policy")
            )
    return groups, settled


def _check_now(now: datetime | None) -> datetime:
    """The time rules measure against: now, or a given aware time (what-if dry runs)."""
    if now is None:
        return datetime.now(UTC)
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise TypeError(f"now must be a timezone-aware datetime, got {now!r}")
    return now


def _check_thread_id(thread_id: Any) -> str:
    if not isinstance(thread_id, str):
        raise TypeError(f"thread_id must be a str, got {type(thread_id).__name__}")
    return thread_id


def _check_thread_ids(thread_ids: Iterable[str] | None) -> list[str] | None:
    if thread_ids is None:
        return None
    if isinstance(thread_ids, str):
        raise TypeError("thread_ids must be a sequence of thread ids, not a single str")
    return [_check_thread_id(t) for t in dict.fromkeys(thread_ids)]


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def _sweep_batch_size(batch_size: int | None, backend: Backend, stage: Stage | None) -> int:
    """The threads per batch of a sweep: the caller's, else the store's own for the way it
    sweeps (staged or batch by batch)."""
    if batch_size is None:
        staged = stage.batch_size if stage is not None else None
        return staged or backend.sweep_batch_size or DEFAULT_BATCH_SIZE
    return batch_size


def _open_stage(backend: Backend, dry_run: bool) -> Stage | None:
    """Where a sweep's deletes wait for storage order, if the store stages them."""
    if dry_run:
        return None
    return _on_loop(backend, backend.aopen_stage) if backend.is_async else backend.open_stage()


async def _aopen_stage(backend: Backend, dry_run: bool) -> Stage | None:
    """`_open_stage` on asyncio."""
    if dry_run:
        return None
    if backend.is_async:
        return await backend.aopen_stage()
    return await asyncio.to_thread(backend.open_stage)


def _on_loop(backend: Backend, make: Callable[[], Awaitable[T]]) -> T:
    """Run an async backend call from sync code, on the loop the saver is bound to."""
    loop = backend.loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    saver_name = type(backend.saver).__name__
    if loop is None or loop.is_closed():
        raise RuntimeError(
            f"{saver_name} is an async checkpointer with no open event loop; "
            "use the async API (await aprune_thread / asweep / astats)"
        )
    if running is loop:
        raise RuntimeError(
            f"sync calls on {saver_name} from its own event loop would deadlock; "
            "use the async API (await aprune_thread / asweep / astats)"
        )

    async def call() -> T:
        return await make()

    if loop.is_running():
        return asyncio.run_coroutine_threadsafe(call(), loop).result()
    if running is not None:
        raise RuntimeError(
            f"{saver_name}'s event loop is not running and another loop runs here; "
            "use the async API"
        )
    return loop.run_until_complete(call())


@dataclass(frozen=True, slots=True)
class _Pass:
    """One prune's or sweep's settings, as each of its batches needs them."""

    dry_run: bool
    now: datetime
    explain: bool = False
    approve: OnBeforeDelete | None = None
    #: Where a sweep's batches leave their deletes, for the store to run in storage
    #: order (None: each batch deletes in its own transaction).
    stage: Stage | None = None


def _expiring(
    spans: Mapping[str, Span], policy: RetentionPolicy, run: _Pass
) -> Iterator[tuple[str, str, str]]:
    """(thread id, newest checkpoint id, reason) of each thread the policy expires."""
    for tid, (first, newest) in spans.items():
        reason = thread_expiry(first, newest, policy, run.now)
        if reason is not None:
            yield tid, newest, reason


class _Verdicts:
    """`on_before_delete`'s answers folded into the expiries and the failed threads."""

    def __init__(self) -> None:
        self.expire: dict[str, Expiry] = {}
        self.failed: list[ThreadResult] = []

    def failed_hook(self, tid: str, exc: Exception) -> None:
        self.failed.append(ThreadResult(tid, error=f"on_before_delete failed: {exc!r}"))

    def answer(self, tid: str, newest: str, reason: str, verdict: object) -> None:
        if verdict is False:
            logger.info("thread %r kept: on_before_delete vetoed its expiry (%s)", tid, reason)
        else:
            self.expire[tid] = Expiry(newest, reason)


def _expiries(
    spans: Mapping[str, Span], policy: RetentionPolicy, run: _Pass
) -> tuple[dict[str, Expiry], list[ThreadResult]]:
    """The threads to delete whole, and the threads the hook failed on (kept, reported).

    `on_before_delete` runs here, outside any transaction: False keeps the thread."""
    verdicts = _Verdicts()
    for tid, newest, reason in _expiring(spans, policy, run):
        try:
            verdict = run.approve(tid, reason) if run.approve is not None else True
            if inspect.isawaitable(verdict):
                if inspect.iscoroutine(verdict):
                    verdict.close()
                raise UsageError("a coroutine on_before_delete needs asweep/aprune_thread")
        except Exception as exc:
            verdicts.failed_hook(tid, exc)
            continue
        verdicts.answer(tid, newest, reason, verdict)
    return verdicts.expire, verdicts.failed


async def _aexpiries(
    spans: Mapping[str, Span], policy: RetentionPolicy, run: _Pass
) -> tuple[dict[str, Expiry], list[ThreadResult]]:
    """`_expiries` on asyncio: a coroutine hook is awaited (an async app checks its own
    services without blocking the loop)."""
    verdicts = _Verdicts()
    for tid, newest, reason in _expiring(spans, policy, run):
        try:
            verdict: object = run.approve(tid, reason) if run.approve is not None else True
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as exc:
            verdicts.failed_hook(tid, exc)
            continue
        verdicts.answer(tid, newest, reason, verdict)
    return verdicts.expire, verdicts.failed


def _prune_batch(
    backend: Backend, ids: Sequence[str], policy: RetentionPolicy, run: _Pass
) -> list[ThreadResult]:
    """Prune threads sharing one policy (whole threads gone where they expired)."""
    expire: Expire = {}
    results: list[ThreadResult] = []
    if policy.expires_threads and run.approve is None:
        expire = ExpiryRule(policy, run.now)  # decided on the index the prune reads
    elif policy.expires_threads:
        if backend.is_async:
            spans = _on_loop(backend, lambda: backend.athread_spans(ids))
        else:
            spans = backend.thread_spans(ids)
        expire, results = _expiries(spans, policy, run)
        ids = _without(ids, results)
    if backend.is_async:
        return results + _on_loop(
            backend,
            lambda: backend.aprune_batch(ids, policy, **_batch_options(run, expire)),
        )
    return results + backend.prune_batch(ids, policy, **_batch_options(run, expire))


def _batch_options(run: _Pass, expire: Expire) -> dict[str, Any]:
    """The keyword arguments of `Backend.prune_batch` for one pass (`stage` only when
    the pass stages its deletes)."""
    options: dict[str, Any] = {
        "dry_run": run.dry_run,
        "now": run.now,
        "explain": run.explain,
        "expire": expire,
    }
    if run.stage is not None:
        options["stage"] = run.stage
    return options


async def _aprune_batch(
    backend: Backend, ids: Sequence[str], policy: RetentionPolicy, run: _Pass
) -> list[ThreadResult]:
    """`_prune_batch` on asyncio."""
    expire: Expire = {}
    results: list[ThreadResult] = []
    if policy.expires_threads and run.approve is None:
        expire = ExpiryRule(policy, run.now)
    elif policy.expires_threads:
        if backend.is_async:
            spans = await backend.athread_spans(ids)
        else:
            spans = await asyncio.to_thread(backend.thread_spans, ids)
        expire, results = await _aexpiries(spans, policy, run)
        ids = _without(ids, results)
    call = backend.aprune_batch if backend.is_async else _in_thread(backend.prune_batch)
    return results + await call(ids, policy, **_batch_options(run, expire))


def _in_thread(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`fn` as a coroutine function running in a worker thread (sync savers)."""

    async def call(*args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))

    return call


def _without(ids: Sequence[str], settled: Sequence[ThreadResult]) -> list[str]:
    done = {r.thread_id for r in settled}
    return [tid for tid in ids if tid not in done]


def _sweep_batch(
    backend: Backend, ids: Sequence[str], resolve: Resolver, run: _Pass
) -> list[ThreadResult]:
    """One batch of a sweep: a transaction per policy among its threads; a failing one
    fails its threads only."""
    groups, results = _group(ids, resolve)
    for policy, group in groups.items():
        try:
            results += _prune_batch(backend, group, policy, run)
        except Exception as exc:
            results += _failed_batch(group, exc)
    return results


async def _asweep_batch(
    backend: Backend, ids: Sequence[str], resolve: Resolver, run: _Pass
) -> list[ThreadResult]:
    """`_sweep_batch` on asyncio."""
    groups, results = _group(ids, resolve)
    for policy, group in groups.items():
        try:
            results += await _aprune_batch(backend, group, policy, run)
        except Exception as exc:
            results += _failed_batch(group, exc)
    return results


def _failed_batch(ids: Sequence[str], exc: BaseException) -> list[ThreadResult]:
    msg = f"{type(exc).__name__}: {exc}"
    logger.error("prune failed for %d thread(s) (%s): %s", len(ids), ", ".join(ids[:5]), msg)
    return [ThreadResult(tid, error=msg) for tid in ids]


def _record_batch(
    report: PruneReport, results: list[ThreadResult], progress: Progress | None
) -> None:
    """Fold a batch's (or a flush's) results into a sweep's report and metrics."""
    _record(report, results, progress)
    if not report.dry_run:
        metrics.record_results(results)


def _record(report: PruneReport, results: list[ThreadResult], progress: Progress | None) -> None:
    for r in results:
        if r.error is not None:
            logger.error("thread %r not pruned: %s", r.thread_id, r.error)
        report.add(r)
        if progress is not None:
            progress(r)


def _stop_reason(stop: Stop | None, lock_held: bool) -> str | None:
    """Why a sweep must end before its next batch, or None to go on."""
    if stop is not None and stop():
        return "stop requested"
    if not lock_held:
        logger.error("sweep stopped: its lock was lost (expired or the connection broke)")
        return "sweep lock lost"
    return None


class _Halter:
    """Asked before each batch and each transaction of a flush: remembers why the sweep
    must end (a stop request, the lock lost) once it must. Its lock check blocks briefly."""

    def __init__(self, stop: Stop | None, lock: SweepLock | None) -> None:
        self.stop = stop
        self.lock = lock
        self.reason: str | None = None

    def __call__(self) -> bool:
        if self.reason is None:
            self.reason = _stop_reason(self.stop, self.lock is None or self.lock.held())
        return self.reason is not None


def _failed_flush(stage: Stage, exc: BaseException) -> list[ThreadResult]:
    """The staged threads as failed: their deletes did not all run (those that committed
    before the error stay done; the next sweep finds the rest)."""
    results = list(stage.results.values())
    stage.clear()
    msg = f"deletes failed: {type(exc).__name__}: {exc}"
    logger.error("staged deletes of %d thread(s) failed: %s", len(results), msg)
    for r in results:
        r.error = msg
    return results


def _flush(backend: Backend, stage: Stage, halt: Halt) -> list[ThreadResult]:
    """Run a sweep's staged deletes in storage order; a failure fails their threads only."""
    try:
        if backend.is_async:
            return _on_loop(backend, lambda: backend.aflush_stage(stage, halt))
        return backend.flush_stage(stage, halt)
    except Exception as exc:
        return _failed_flush(stage, exc)


async def _aflush(backend: Backend, stage: Stage, halt: Halt) -> list[ThreadResult]:
    """`_flush` on asyncio."""
    try:
        if backend.is_async:
            return await backend.aflush_stage(stage, halt)
        return await asyncio.to_thread(backend.flush_stage, stage, halt)
    except Exception as exc:
        return _failed_flush(stage, exc)


def _skipped(lock: SweepLock) -> None:
    """Take `lock`, or count the sweep as skipped and say who holds it."""
    holder = lock.acquire()
    if holder is not None:
        metrics.record_skipped()
        logger.debug("sweep not started: another sweep holds the lock (%s)", holder)
        raise SweepLockHeld(holder)


def _batched(ids: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for tid in ids:
        batch.append(tid)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def _abatched(ids: AsyncIterator[str], size: int) -> AsyncIterator[list[str]]:
    batch: list[str] = []
    async for tid in ids:
        batch.append(tid)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _sync_thread_ids(backend: Backend) -> Iterator[str]:
    if not backend.is_async:
        yield from backend.iter_thread_ids()
        return
    aiterator = backend.aiter_thread_ids()

    async def step() -> str | None:
        try:
            return await anext(aiterator)
        except StopAsyncIteration:
            return None

    while (tid := _on_loop(backend, step)) is not None:
        yield tid


async def _async_thread_ids(backend: Backend) -> AsyncIterator[str]:
    if backend.is_async:
        async for tid in backend.aiter_thread_ids():
            yield tid
        return
    iterator = backend.iter_thread_ids()

    def step() -> str | None:
        return next(iterator, None)

    while True:
        found: str | None = await asyncio.to_thread(step)
        if found is None:
            return
        yield found


def prune_thread(
    saver: Any,
    thread_id: str,
    policy: PolicySource,
    *,
    dry_run: bool = False,
    explain: bool = False,
    on_before_delete: OnBeforeDelete | None = None,
    now: datetime | None = None,
) -> PruneReport:
    """Prune one thread of `saver` to `policy`, in one transaction.

    A thread that does not exist gives an empty report. A thread the policy must refuse
    (broken DeltaChannel history) is reported in `errors` with nothing deleted; storage
    errors (server down, ...) are raised. `explain` fills `report.decisions` with every
    checkpoint and why; `on_before_delete(thread_id, reason)` returning False keeps a
    thread `idle_ttl`/`max_age` would delete whole. Time rules measure from `now`
    (default: the current time; another one answers "what would a prune then delete?").
    """
    _check_thread_id(thread_id)
    groups, results = _group([thread_id], _check_policy(policy))
    backend = resolve_backend(saver)
    report = PruneReport(dry_run=dry_run)
    start = time.perf_counter()
    run = _Pass(dry_run, _check_now(now), explain, on_before_delete)
    for one_policy, ids in groups.items():
        results += _prune_batch(backend, ids, one_policy, run)
    _record(report, results, None)
    if not dry_run:
        metrics.record_results(results)
    report.elapsed_seconds = time.perf_counter() - start
    return report


async def aprune_thread(
    saver: Any,
    thread_id: str,
    policy: PolicySource,
    *,
    dry_run: bool = False,
    explain: bool = False,
    on_before_delete: OnBeforeDelete | None = None,
    now: datetime | None = None,
) -> PruneReport:
    """Async `prune_thread`."""
    _check_thread_id(thread_id)
    groups, results = _group([thread_id], _check_policy(policy))
    backend = resolve_backend(saver)
    report = PruneReport(dry_run=dry_run)
    start = time.perf_counter()
    run = _Pass(dry_run, _check_now(now), explain, on_before_delete)
    for one_policy, ids in groups.items():
        results += await _aprune_batch(backend, ids, one_policy, run)
    _record(report, results, None)
    if not dry_run:
        metrics.record_results(results)
    report.elapsed_seconds = time.perf_counter() - start
    return report


def sweep(
    saver: Any,
    policy: PolicySource,
    *,
    thread_ids: Iterable[str] | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
    progress: Progress | None = None,
    stop: Stop | None = None,
    exclusive: bool = False,
    explain: bool = False,
    on_before_delete: OnBeforeDelete | None = None,
    now: datetime | None = None,
) -> PruneReport:
    """Prune many threads (None: every thread in the store), streamed in batches.

    Each batch of `batch_size` threads is read and decided in one transaction (None takes
    the store's own size). On a small store each batch also deletes there; on a big one
    (a SQLite file over 256 MB, a PostgreSQL store over 16x `shared_buffers`) and on
    Redis, batches stage their deletes and the sweep runs them in storage order in short
    transactions of their own, when the stage is full and at the end (see `Stage`).

    A batch that fails is logged and its threads land in `report.errors`; the sweep
    goes on with the next batch. `progress` is called once per thread, when its deletes
    have run. `stop` is asked before each batch and each transaction of staged deletes:
    True ends the sweep there (`report.stopped` says so); whatever committed is counted,
    and what a stop leaves undone the next sweep finds. With `exclusive`, the sweep first
    takes the store's sweep lock (one sweeper at a time across processes and hosts) and
    raises `SweepLockHeld` naming the holder when another sweep has it; a lock lost
    midway stops the sweep as `stop` does. `explain` and `on_before_delete` as in
    `prune_thread` (the hook runs between transactions, never inside one).
    """
    resolve = _check_policy(policy)
    ids = _check_thread_ids(thread_ids)
    backend = resolve_backend(saver)
    if batch_size is not None:
        _check_batch_size(batch_size)
    report = PruneReport(dry_run=dry_run)
    lock: SweepLock | None = None
    if exclusive:
        lock = _on_loop(backend, backend.asweep_lock) if backend.is_async else backend.sweep_lock()
        _skipped(lock)
    start = time.perf_counter()
    try:
        stage = _open_stage(backend, dry_run)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    size = _sweep_batch_size(batch_size, backend, stage)
    run = _Pass(dry_run, _check_now(now), explain, on_before_delete, stage)
    halt = _Halter(stop, lock)
    try:
        source: Iterable[str] = ids if ids is not None else _sync_thread_ids(backend)
        for batch in _batched(source, size):
            if halt():
                break
            _record_batch(report, _sweep_batch(backend, batch, resolve, run), progress)
            if stage is not None and stage.full():
                _record_batch(report, _flush(backend, stage, halt), progress)
        if stage is not None and len(stage):
            _record_batch(report, _flush(backend, stage, halt), progress)
        report.stopped = halt.reason
    except Exception:
        if stage is not None:
            stage.clear()  # the sweep failed: staged deletes not yet run stay undone
        report.elapsed_seconds = time.perf_counter() - start
        if not dry_run:
            metrics.record_sweep(report, "failed")
        raise
    finally:
        if lock is not None:
            lock.release()
    report.elapsed_seconds = time.perf_counter() - start
    if not dry_run:
        metrics.record_sweep(report)
    return report


async def asweep(
    saver: Any,
    policy: PolicySource,
    *,
    thread_ids: Iterable[str] | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
    progress: Progress | None = None,
    stop: Stop | None = None,
    exclusive: bool = False,
    explain: bool = False,
    on_before_delete: OnBeforeDelete | None = None,
    now: datetime | None = None,
) -> PruneReport:
    """Async `sweep` (the lock's blocking calls run in a worker thread)."""
    resolve = _check_policy(policy)
    ids = _check_thread_ids(thread_ids)
    backend = resolve_backend(saver)
    if batch_size is not None:
        _check_batch_size(batch_size)
    report = PruneReport(dry_run=dry_run)
    lock: SweepLock | None = None
    if exclusive:
        if backend.is_async:
            lock = await backend.asweep_lock()
        else:
            lock = await asyncio.to_thread(backend.sweep_lock)
        await asyncio.to_thread(_skipped, lock)
    start = time.perf_counter()
    try:
        stage = await _aopen_stage(backend, dry_run)
    except BaseException:
        if lock is not None:
            await asyncio.to_thread(lock.release)
        raise
    size = _sweep_batch_size(batch_size, backend, stage)
    run = _Pass(dry_run, _check_now(now), explain, on_before_delete, stage)
    halt = _Halter(stop, lock)

    async def given() -> AsyncIterator[str]:
        for tid in ids or ():
            yield tid

    try:
        source = given() if ids is not None else _async_thread_ids(backend)
        async for batch in _abatched(source, size):
            if await asyncio.to_thread(halt):
                break
            _record_batch(report, await _asweep_batch(backend, batch, resolve, run), progress)
            if stage is not None and stage.full():
                _record_batch(report, await _aflush(backend, stage, halt), progress)
        if stage is not None and len(stage):
            _record_batch(report, await _aflush(backend, stage, halt), progress)
        report.stopped = halt.reason
    except Exception:
        if stage is not None:
            stage.clear()  # the sweep failed: staged deletes not yet run stay undone
        report.elapsed_seconds = time.perf_counter() - start
        if not dry_run:
            metrics.record_sweep(report, "failed")
        raise
    finally:
        if lock is not None:
            await asyncio.to_thread(lock.release)
    report.elapsed_seconds = time.perf_counter() - start
    if not dry_run:
        metrics.record_sweep(report)
    return report


def iter_thread_ids(saver: Any) -> Iterator[str]:
    """Every thread id in `saver`'s store, streamed (for shells that shard a sweep
    across processes, such as the Celery tasks)."""
    return _sync_thread_ids(resolve_backend(saver))


@contextmanager
def sweep_lock(saver: Any) -> Iterator[SweepLock]:
    """Hold the store's sweep lock through the block (one sweeper at a time across
    processes and hosts), as `sweep(exclusive=True)` does; `SweepLockHeld` names the
    holder when another sweep has it. `held()` on the lock says whether it is still ours."""
    backend = resolve_backend(saver)
    lock = _on_loop(backend, backend.asweep_lock) if backend.is_async else backend.sweep_lock()
    _skipped(lock)
    try:
        yield lock
    finally:
        lock.release()


def can_compact(saver: Any) -> bool:
    """Whether `compact` can shrink `saver`'s storage (SQLite files)."""
    return resolve_backend(saver).can_compact


def compact(saver: Any) -> None:
    """Give space freed by prunes back to the file system (SQLite: VACUUM). Servers reuse
    freed space by themselves; for them this raises `NotImplementedError`."""
    backend = resolve_backend(saver)
    if backend.is_async:
        _on_loop(backend, backend.acompact)
    else:
        backend.compact()


def check_store(saver: Any) -> None:
    """Raise `StoreNotReadyError` unless `saver`'s store has the checkpoint tables or
    indexes its saver creates. Reads only: no schema is ever created or migrated."""
    backend = resolve_backend(saver)
    if backend.is_async:
        _on_loop(backend, backend.acheck_store)
    else:
        backend.check_store()


async def acheck_store(saver: Any) -> None:
    """Async `check_store`."""
    backend = resolve_backend(saver)
    if backend.is_async:
        await backend.acheck_store()
    else:
        await asyncio.to_thread(backend.check_store)


def iter_stats(
    saver: Any, *, thread_ids: Iterable[str] | None = None, batch_size: int = 500
) -> Iterator[tuple[str, ThreadStats]]:
    """Per-thread stats streamed in batches (threads with no checkpoint are skipped)."""
    ids = _check_thread_ids(thread_ids)
    backend = resolve_backend(saver)
    source: Iterable[str] = ids if ids is not None else _sync_thread_ids(backend)
    for batch in _batched(source, _check_batch_size(batch_size)):
        if backend.is_async:
            yield from _on_loop(backend, lambda b=batch: backend.athread_stats(b))  # type: ignore[misc]
        else:
            yield from backend.thread_stats(batch)


async def aiter_stats(
    saver: Any, *, thread_ids: Iterable[str] | None = None, batch_size: int = 500
) -> AsyncIterator[tuple[str, ThreadStats]]:
    """Async `iter_stats`: per-thread stats streamed in batches, memory flat."""
    ids = _check_thread_ids(thread_ids)
    size = _check_batch_size(batch_size)
    backend = resolve_backend(saver)

    async def given() -> AsyncIterator[str]:
        for tid in ids or ():
            yield tid

    source = given() if ids is not None else _async_thread_ids(backend)
    async for batch in _abatched(source, size):
        if backend.is_async:
            found = await backend.athread_stats(batch)
        else:
            found = await asyncio.to_thread(backend.thread_stats, batch)
        for row in found:
            yield row


#: Threads per page of `stats_page` unless asked otherwise, and the most it returns.
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000


def _check_page(after: str | None, limit: int) -> int:
    if after is not None:
        _check_thread_id(after)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be an int from 1 to {MAX_PAGE_SIZE}, got {limit!r}")
    return limit


def stats_page(
    saver: Any, *, after: str | None = None, limit: int = DEFAULT_PAGE_SIZE
) -> tuple[list[tuple[str, ThreadStats]], str | None]:
    """One page of per-thread stats in thread-id order: up to `limit` threads after the
    thread id `after` (None: from the start), and the `after` of the next page (None on
    the last page). For APIs that must not build one response for a million threads."""
    _check_page(after, limit)
    backend = resolve_backend(saver)
    if backend.is_async:
        ids = _on_loop(backend, lambda: backend.athread_page(after, limit))
        rows = _on_loop(backend, lambda: backend.athread_stats(ids)) if ids else []
    else:
        ids = backend.thread_page(after, limit)
        rows = backend.thread_stats(ids) if ids else []
    return rows, (ids[-1] if len(ids) == limit else None)


async def astats_page(
    saver: Any, *, after: str | None = None, limit: int = DEFAULT_PAGE_SIZE
) -> tuple[list[tuple[str, ThreadStats]], str | None]:
    """Async `stats_page`."""
    _check_page(after, limit)
    backend = resolve_backend(saver)
    if backend.is_async:
        ids = await backend.athread_page(after, limit)
        rows = await backend.athread_stats(ids) if ids else []
    else:
        ids = await asyncio.to_thread(backend.thread_page, after, limit)
        rows = await asyncio.to_thread(backend.thread_stats, ids) if ids else []
    return rows, (ids[-1] if len(ids) == limit else None)


def stats(saver: Any, *, thread_ids: Iterable[str] | None = None) -> Stats:
    """Checkpoints, writes and bytes of every thread (or the given ones), all namespaces."""
    result = Stats()
    for tid, ts in iter_stats(saver, thread_ids=thread_ids):
        result.add(tid, ts)
    return result


async def astats(saver: Any, *, thread_ids: Iterable[str] | None = None) -> Stats:
    """Async `stats`."""
    result = Stats()
    async for tid, ts in aiter_stats(saver, thread_ids=thread_ids):
        result.add(tid, ts)
    return result
