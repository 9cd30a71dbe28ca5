"""`BackgroundPruner`: prune threads off the request path, from a bounded queue.

The chat path must not wait for cleanup (DESIGN.md, S12): a request handler (or
`RetainingSaver` in background mode) calls `pruner.request(thread_id)`, which only
records the thread id and returns at once; a worker prunes the queued threads one by one.

- The queue is bounded (`maxsize` thread ids) and de-duplicates: a thread already waiting
  is not queued twice, so a busy thread costs one prune however often it asks. When the
  queue is full the request is dropped and counted (`counters.dropped`): a dropped thread
  is caught by its next request or by a periodic sweep, never by blocking the caller.
- Sync savers are pruned on a daemon worker thread. Async savers (the backend's
  `is_async`: `AsyncSqliteSaver`, `AsyncPostgresSaver`, `AsyncRedisSaver`) are pruned by
  an asyncio task on the event loop the saver is bound to, because their connections
  belong to that loop. The task starts on `await astart()` or lazily on the first
  request made while that loop runs.
- Storage errors (a locked database, a dropped connection) are retried with exponential
  backoff; a thread the policy refuses (`PruneReport.errors`) is not retried. Every
  failure is logged with its thread id and counted.
- `close(timeout)` / `aclose(timeout)` (and the context managers) stop accepting requests
  and drain the queue for at most `timeout` seconds; what is left is logged and counted
  as abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from langgraph_retention import metrics
from langgraph_retention._validate import check_int, check_seconds
from langgraph_retention.backends import resolve_backend
from langgraph_retention.engine import aprune_thread, prune_thread
from langgraph_retention.errors import RetentionError
from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.report import PruneReport

__all__ = ["BackgroundPruner", "PrunerCounters", "is_transient"]

logger = logging.getLogger("langgraph_retention.worker")

#: Default bound of the queue: thread ids waiting for a prune.
DEFAULT_MAXSIZE = 10_000

OnReport = Callable[[str, PruneReport], None]
Runner = Literal["thread", "asyncio"]

# Errors that say the call itself is wrong; retrying cannot help.
_PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    RetentionError,
    TypeError,
    ValueError,
    LookupError,
    AttributeError,
    NotImplementedError,
    RuntimeError,
    AssertionError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether a prune that raised `exc` is worth retrying.

    Storage errors (`sqlite3.OperationalError` "database is locked", psycopg and redis
    connection errors, timeouts, `OSError`) are; programming errors and our own
    `RetentionError`s are not.
    """
    return isinstance(exc, Exception) and not isinstance(exc, _PERMANENT_ERRORS)


@dataclass(frozen=True, slots=True)
class PrunerCounters:
    """A snapshot of what a `BackgroundPruner` has done; totals since it was created."""

    #: Requests accepted into the queue.
    queued: int = 0
    #: Requests for a thread that was already waiting (absorbed, not queued twice).
    deduplicated: int = 0
    #: Requests refused because the queue was full or the pruner closed.
    dropped: int = 0
    #: Threads pruned successfully (whether or not anything was old enough to delete).
    pruned: int = 0
    #: Threads given up on: refused by the policy, a permanent error, or out of retries.
    failed: int = 0
    #: Retries after a transient storage error.
    retried: int = 0
    #: Threads left unpruned by a `close` whose timeout expired.
    abandoned: int = 0
    #: Checkpoints deleted by all prunes.
    deleted_checkpoints: int = 0
    #: Bytes freed by all prunes, as the backends count them.
    bytes_freed: int = 0
    #: Threads waiting now.
    waiting: int = 0
    #: Age in seconds of the oldest waiting request (0.0 when none waits).
    lag: float = 0.0


class BackgroundPruner:
    """Prunes requested threads of `saver` to `policy` in the background.

    `request(thread_id)` never blocks. Use the pruner as a context manager (`with` for
    sync savers, `async with` for async ones) or call `close()` / `await aclose()` at
    shutdown so queued work is drained; the worker thread is a daemon and an abandoned
    pruner does not keep the process alive.

    Args:
        saver: the checkpointer to prune (a `RetainingSaver` is seen through).
        policy: what to keep of each thread.
        maxsize: how many distinct thread ids may wait; further requests are dropped.
        retries: how many times a transient storage error is retried per request.
        backoff: delay before the first retry, in seconds; doubled for each next one.
        max_backoff: upper bound of a retry delay, in seconds.
        on_report: called with (thread id, report) after each prune that ran (also when
            the policy refused the thread); runs on the worker, must be quick.
        transient: decides which exceptions are retried (default: `is_transient`).
    """

    def __init__(
        self,
        saver: Any,
        policy: RetentionPolicy,
        *,
        maxsize: int = DEFAULT_MAXSIZE,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        on_report: OnReport | None = None,
        transient: Callable[[BaseException], bool] = is_transient,
    ) -> None:
        if not isinstance(policy, RetentionPolicy):
            raise TypeError(
                "policy must be a RetentionPolicy, e.g. RetentionPolicy(keep_last=10); "
                f"got {type(policy).__name__}"
            )
        self.maxsize = check_int("maxsize", maxsize, 1)
        self.retries = check_int("retries", retries, 0)
        self.backoff = check_seconds("backoff", backoff)
        self.max_backoff = check_seconds("max_backoff", max_backoff)
        if self.max_backoff < self.backoff:
            raise ValueError(
                f"max_backoff ({self.max_backoff}) must not be less than backoff ({self.backoff})"
            )
        backend = resolve_backend(saver)  # an unsupported saver fails here, not later
        self.saver = saver
        self.policy = policy
        self.on_report = on_report
        self.transient = transient
        #: "thread" for sync savers, "asyncio" for async savers (a task on their loop).
        self.runner: Runner = "asyncio" if backend.is_async else "thread"
        self._backend = backend

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # queue or in-flight changed
        self._waiting: OrderedDict[str, float] = OrderedDict()  # thread id -> monotonic time
        self._in_flight: str | None = None
        self._closing = False
        self._abort = threading.Event()
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "queued",
                "deduplicated",
                "dropped",
                "pruned",
                "failed",
                "retried",
                "abandoned",
                "deleted_checkpoints",
                "bytes_freed",
            ),
            0,
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._warned_no_loop = False
        metrics.watch_pruner(self)

    # -- state ------------------------------------------------------------------------

    @property
    def counters(self) -> PrunerCounters:
        """A consistent snapshot of the counters, the queue depth and the lag."""
        with self._lock:
            oldest = next(iter(self._waiting.values()), None)
            lag = time.monotonic() - oldest if oldest is not None else 0.0
            return PrunerCounters(**self._counts, waiting=len(self._waiting), lag=lag)

    @property
    def closed(self) -> bool:
        """True once `close`/`aclose` began: requests are refused from then on."""
        return self._closing

    @property
    def running(self) -> bool:
        """True while the worker thread or task is alive."""
        if self._thread is not None:
            return self._thread.is_alive()
        return self._task is not None and not self._task.done()

    def __repr__(self) -> str:
        c = self.counters
        return (
            f"<BackgroundPruner runner={self.runner} waiting={c.waiting} pruned={c.pruned} "
            f"failed={c.failed} dropped={c.dropped}{' closed' if self._closing else ''}>"
        )

    # -- requests ---------------------------------------------------------------------

    def request(self, thread_id: str) -> bool:
        """Ask for `thread_id` to be pruned soon; returns at once.

        Returns True when the thread is waiting (newly queued or already queued), False
        when the request was dropped (queue full, or the pruner is closed); a drop is
        logged and counted.
        """
        if not isinstance(thread_id, str):
            raise TypeError(f"thread_id must be a str, got {type(thread_id).__name__}")
        with self._lock:
            if self._closing:
                self._counts["dropped"] += 1
                reason = "the pruner is closed"
            elif thread_id in self._waiting:
                self._counts["deduplicated"] += 1
                return True
            elif len(self._waiting) >= self.maxsize:
                self._counts["dropped"] += 1
                reason = f"the queue is full ({self.maxsize} threads waiting)"
            else:
                self._waiting[thread_id] = time.monotonic()
                self._counts["queued"] += 1
                self._changed.notify_all()
                reason = ""
        if reason:
            logger.warning("prune request for thread %r dropped: %s", thread_id, reason)
            return False
        self._wake()
        return True

    def _wake(self) -> None:
        """Make sure a worker is running and sees the queue."""
        if self.runner == "thread":
            if self._thread is None:
                self._start_thread()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._task is None:
            if running is not None and self._loop_ok(running):
                self._start_task(running)
                return
            loop = self._loop or self._backend_loop
            if loop is not None and loop.is_running() and loop is not running:
                self._call_on(loop, self._start_pending)
                return
            if not self._warned_no_loop:
                self._warned_no_loop = True
                logger.warning(
                    "background pruner for an async saver has requests but no running "
                    "event loop to prune on; it starts on `await pruner.astart()` or on "
                    "the next request made from the saver's event loop"
                )
            return
        if running is self._loop and self._wakeup is not None:
            self._wakeup.set()
        elif self._loop is not None:
            self._call_on(self._loop, self._set_wakeup)

    def _call_on(self, loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError as exc:  # the loop closed under us
            logger.error(
                "background pruner cannot reach its event loop (%s); %d thread(s) wait unpruned",
                exc,
                len(self._waiting),
            )

    def _set_wakeup(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _start_pending(self) -> None:
        """On the loop: start the task a request from another thread asked for."""
        if self._task is None:
            self._start_task(asyncio.get_running_loop())

    @property
    def _backend_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the async saver is bound to, read each time: some savers bind it
        only in their setup (`AsyncRedisSaver.asetup`)."""
        return self._backend.loop

    def _loop_ok(self, loop: asyncio.AbstractEventLoop) -> bool:
        bound = self._backend_loop
        return bound is None or bound is loop

    # -- starting ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (sync savers); a no-op when it runs already.

        For async savers, use `await astart()` from the saver's event loop.
        """
        if self.runner == "asyncio":
            raise RuntimeError(
                "this pruner prunes an async saver on its event loop; "
                "call `await pruner.astart()` from that loop"
            )
        if not self._start_thread():
            raise RuntimeError("the pruner is closed")

    def _start_thread(self) -> bool:
        """Start the worker thread unless it runs or the pruner closed (then False; a
        request racing `close()` leaves its thread id to be counted as abandoned)."""
        with self._lock:
            if self._thread is not None:
                return True
            if self._closing:
                return False
            self._thread = threading.Thread(
                target=self._thread_main, name="langgraph-retention-pruner", daemon=True
            )
            self._thread.start()
            return True

    async def astart(self) -> None:
        """Start the worker: an asyncio task on the running loop (async savers), or the
        worker thread (sync savers). A no-op when it runs already."""
        if self.runner == "thread":
            self.start()
            return
        loop = asyncio.get_running_loop()
        if not self._loop_ok(loop):
            raise RuntimeError(
                "the saver is bound to another event loop; start the pruner from that loop"
            )
        if self._closing:
            raise RuntimeError("the pruner is closed")
        if self._task is None:
            self._start_task(loop)

    def _start_task(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._wakeup.set()  # look at the queue once on start
        self._task = loop.create_task(self._task_main(), name="langgraph-retention-pruner")
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("background pruner task died", exc_info=exc)

    # -- the work ---------------------------------------------------------------------

    def _next(self) -> str | None:
        """Under the lock: take the oldest waiting thread, or None when there is none."""
        if not self._waiting:
            return None
        thread_id, _since = self._waiting.popitem(last=False)
        self._in_flight = thread_id
        return thread_id

    def _finished(self) -> None:
        with self._lock:
            self._in_flight = None
            self._changed.notify_all()

    def _retry_delay(self, attempt: int) -> float:
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))

    def _should_retry(self, thread_id: str, exc: Exception, attempt: int) -> bool:
        """Count and log a failed attempt; True when another attempt should follow."""
        if self.transient(exc) and attempt <= self.retries and not self._abort.is_set():
            with self._lock:
                self._counts["retried"] += 1
            logger.warning(
                "background prune of thread %r failed (%s: %s); retry %d/%d in %.2fs",
                thread_id,
                type(exc).__name__,
                exc,
                attempt,
                self.retries,
                self._retry_delay(attempt),
            )
            return True
        with self._lock:
            self._counts["failed"] += 1
        logger.error(
            "background prune of thread %r failed after %d attempt(s); giving up",
            thread_id,
            attempt,
            exc_info=exc,
        )
        return False

    def _record(self, thread_id: str, report: PruneReport) -> None:
        with self._lock:
            if report.errors:
                self._counts["failed"] += 1
            else:
                self._counts["pruned"] += 1
                self._counts["deleted_checkpoints"] += report.deleted_checkpoints
                self._counts["bytes_freed"] += report.bytes_freed
        if report.errors:
            logger.error(
                "background prune of thread %r refused: %s",
                thread_id,
                report.errors.get(thread_id, "; ".join(report.errors.values())),
            )
        if self.on_report is not None:
            try:
                self.on_report(thread_id, report)
            except Exception:
                logger.exception("on_report callback failed for thread %r", thread_id)

    def _thread_main(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closing:
                    self._changed.wait()
                if self._abort.is_set():
                    return
                thread_id = self._next()
                if thread_id is None:  # closing and drained
                    return
            try:
                self._prune_with_retries(thread_id)
            finally:
                self._finished()

    def _prune_with_retries(self, thread_id: str) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                report = prune_thread(self.saver, thread_id, self.policy)
            except Exception as exc:
                if not self._should_retry(thread_id, exc, attempt):
                    return
                if self._abort.wait(self._retry_delay(attempt)):
                    self._abandon([thread_id], "the pruner closed during a retry wait")
                    return
                continue
            self._record(thread_id, report)
            return

    async def _task_main(self) -> None:
        assert self._wakeup is not None
        while True:
            with self._lock:
                thread_id = self._next()
                if thread_id is None:
                    if self._closing:
                        return
                    self._wakeup.clear()
            if thread_id is None:
                await self._wakeup.wait()
                continue
            try:
                await self._aprune_with_retries(thread_id)
            finally:
                self._finished()

    async def _aprune_with_retries(self, thread_id: str) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                report = await aprune_thread(self.saver, thread_id, self.policy)
            except asyncio.CancelledError:
                self._abandon([thread_id], "the pruner was cancelled mid-prune")
                raise
            except Exception as exc:
                if not self._should_retry(thread_id, exc, attempt):
                    return
                try:
                    await asyncio.sleep(self._retry_delay(attempt))
                except asyncio.CancelledError:
                    self._abandon([thread_id], "the pruner was cancelled during a retry wait")
                    raise
                continue
            self._record(thread_id, report)
            return

    def _abandon(self, thread_ids: list[str], why: str) -> None:
        if not thread_ids:
            return
        with self._lock:
            self._counts["abandoned"] += len(thread_ids)
        shown = ", ".join(repr(t) for t in thread_ids[:10])
        more = f" and {len(thread_ids) - 10} more" if len(thread_ids) > 10 else ""
        logger.error(
            "background pruner left %d thread(s) unpruned (%s): %s%s",
            len(thread_ids),
            why,
            shown,
            more,
        )

    def _abandon_waiting(self, why: str) -> None:
        with self._lock:
            left = list(self._waiting)
            self._waiting.clear()
        self._abandon(left, why)

    # -- waiting and closing ----------------------------------------------------------

    def join(self, timeout: float | None = None) -> bool:
        """Block until nothing waits and nothing is being pruned, or `timeout` passes.

        Returns True when idle. Do not call it from the event loop an async saver's
        pruner runs on (it would block that loop); use `await ajoin()` there.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._waiting or self._in_flight is not None:
                if self.runner == "asyncio" and self._task is None:
                    return False  # nothing will ever drain it from here
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining if remaining is not None else 0.5)
            return True

    async def ajoin(self, timeout: float | None = None) -> bool:
        """Async `join`: wait until nothing waits and nothing is being pruned."""
        if self.runner == "thread":
            return await asyncio.to_thread(self.join, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._waiting and self._in_flight is None:
                    return True
            if self._task is None or self._task.done():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Stop accepting requests, drain the queue for at most `timeout` seconds, stop.

        Returns True when everything queued was processed (pruned or failed); on timeout,
        the prune in progress finishes or is given up at its next retry, and the threads
        still waiting are logged and counted as abandoned. Idempotent.

        For an async saver, call it from outside the saver's event loop (or use
        `await aclose()` on it).
        """
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        if self.runner == "asyncio":
            return self._close_async_from_sync(timeout)
        thread = self._thread
        if thread is None:
            with self._lock:
                had_work = bool(self._waiting)
            self._abandon_waiting("the pruner closed before it started")
            return not had_work
        thread.join(timeout)
        if thread.is_alive():
            self._abort.set()
            with self._lock:
                self._changed.notify_all()
            self._abandon_waiting(f"close() timed out after {timeout}s")
            return False
        return True

    def _close_async_from_sync(self, timeout: float | None) -> bool:
        loop = self._loop or self._backend_loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is loop:
            raise RuntimeError(
                "close() on the event loop this pruner runs on would deadlock; "
                "use `await pruner.aclose()`"
            )
        if loop is None or loop.is_closed():
            with self._lock:
                had_work = bool(self._waiting)
            self._abandon_waiting("there is no open event loop to prune on")
            return not had_work
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self.aclose(timeout), loop)
            wait = None if timeout is None else timeout + 5.0
            return future.result(wait)
        if running is not None:
            raise RuntimeError(
                "the saver's event loop is not running and another loop runs here; "
                "use `await pruner.aclose()` on the saver's loop"
            )
        return loop.run_until_complete(self.aclose(timeout))

    async def aclose(self, timeout: float | None = 30.0) -> bool:
        """Async `close`: for async savers, call it on the saver's event loop."""
        if self.runner == "thread":
            return await asyncio.to_thread(self.close, timeout)
        with self._lock:
            self._closing = True
            pending = bool(self._waiting)
        if self._task is None:
            loop = asyncio.get_running_loop()
            if not pending:
                return True
            if not self._loop_ok(loop):
                self._abandon_waiting("aclose() ran outside the saver's event loop")
                return False
            self._start_task(loop)  # drain what was queued before a loop was running
        task = self._task
        assert task is not None and self._wakeup is not None
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("aclose() must run on the event loop the pruner runs on")
        self._wakeup.set()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._abandon_waiting(f"aclose() timed out after {timeout}s")
            return False
        with self._lock:
            left = bool(self._waiting)
        if left:  # the task died (logged by _task_done) before draining
            self._abandon_waiting("the pruner task stopped before draining")
            return False
        return True

    def __enter__(self) -> BackgroundPruner:
        if self.runner == "thread":
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> BackgroundPruner:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
