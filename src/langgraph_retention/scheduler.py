"""`Scheduler`: sweeps on a cron or interval schedule, in-process or as a daemon.

In-process (the seed's timer inside a Flask or FastAPI app), over the app's own saver::

    scheduler = Scheduler(saver, RetentionPolicy(keep_last=10), cron="0 2 * * *")
    scheduler.start()            # a background thread; scheduler.shutdown() at exit

As a daemon (`langgraph-retention schedule`), `Scheduler.for_url(...)` opens the store
for each run on a connection of its own, and `run()` blocks until `stop()`.

Each job runs one at a time (a fire while the previous run is still going is skipped
and counted), late fires are coalesced into one, and a fire found more than
`misfire_grace` late is missed, not run at a busy hour. Sweeps take the store's sweep
lock, so several schedulers (one per app worker, hosts apart) never sweep together: the
others log who holds it and skip. Every run logs one summary line and the next run
time; failures are logged with the thread ids and counted, never swallowed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from types import TracebackType
from typing import Any, Self

from langgraph_retention import metrics
from langgraph_retention._validate import check_int
from langgraph_retention.clock import Clock, SystemClock
from langgraph_retention.config import describe_policy
from langgraph_retention.engine import iter_stats, sweep
from langgraph_retention.errors import SweepLockHeld
from langgraph_retention.report import PruneReport, StoreSummary, summarize
from langgraph_retention.rules import PolicySource, resolver_of
from langgraph_retention.triggers import decide, make_trigger, resolve_timezone

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MISFIRE_GRACE",
    "Scheduler",
    "SchedulerCounters",
]

logger = logging.getLogger("langgraph_retention.scheduler")

#: Threads per transaction in scheduled sweeps: small, so the app's own writes (SQLite
#: has one writer) wait at most one short transaction (DESIGN.md, hot-path measurements).
DEFAULT_BATCH_SIZE = 10
#: How late a fire may still run (a suspended host, a stalled process); later is missed.
DEFAULT_MISFIRE_GRACE = timedelta(minutes=10)
#: How many of the largest threads a stats report lists.
REPORT_TOP = 10

Opener = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True, slots=True)
class SchedulerCounters:
    """What a scheduler has done since it started."""

    #: Sweeps that ran to their end or to a stop (see `last_report`).
    sweeps: int = 0
    #: Sweeps that raised (store unreachable, ...): logged with the error.
    failed: int = 0
    #: Threads that failed inside sweeps that ran (listed in the log line).
    failed_threads: int = 0
    #: Sweeps skipped because another sweeper held the store's lock.
    skipped_locked: int = 0
    #: Fires skipped because the previous run of the same job was still going.
    overlapped: int = 0
    #: Fires found later than the misfire grace time, not run.
    missed: int = 0
    #: Stats reports logged.
    reports: int = 0


@dataclass(slots=True)
class _Job:
    """A trigger, what it runs, when it runs next, and whether a run is in progress."""

    name: str
    trigger: Any
    action: Callable[[datetime], None]
    next_run: datetime | None
    running: bool = False


class Scheduler:
    """Sweeps `saver` to `policy` on a schedule (exactly one of `cron` or `every`).

    Args:
        saver: the app's own checkpointer; None with `opener` (see `for_url`).
        policy: what each sweep keeps: a policy, `ThreadRules`, or a resolver.
        cron: a crontab expression ("0 2 * * *": 02:00 daily; `@daily`, ...); day-of-week
            numbers as in crontab (0 and 7 are Sunday).
        every: an interval between sweeps instead of `cron`.
        timezone: IANA zone for `cron` and `report_cron` (default: this machine's).
        report_cron: when to log a stats report (the seed's weekly "0 9 * * 1").
        run_now: sweep once right after `start()`/`run()`, then follow the schedule.
        dry_run: sweeps report what they would delete and delete nothing.
        batch_size: threads per transaction (small by default: see DEFAULT_BATCH_SIZE).
        misfire_grace: how late a fire may still run; `coalesce`: run late fires once.
        exclusive: take the store's sweep lock (one sweeper at a time); on by default.
        clock: the time source (a `ManualClock` in tests).
        opener: a callable returning a context manager that yields a saver, entered for
            each run (a connection of the sweep's own, re-opened after server restarts).
        on_sweep: called with each finished sweep's report, from the sweep's thread.
    """

    def __init__(
        self,
        saver: Any | None,
        policy: PolicySource,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        timezone: str | tzinfo | None = None,
        report_cron: str | None = None,
        run_now: bool = False,
        dry_run: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        misfire_grace: timedelta = DEFAULT_MISFIRE_GRACE,
        coalesce: bool = True,
        exclusive: bool = True,
        clock: Clock | None = None,
        opener: Opener | None = None,
        on_sweep: Callable[[PruneReport], None] | None = None,
    ) -> None:
        if (saver is None) == (opener is None):
            raise TypeError("give the saver to sweep, or an opener (see Scheduler.for_url)")
        resolver_of(policy)  # a TypeError now, not at the first fire
        if misfire_grace < timedelta(0):
            raise ValueError(f"misfire_grace must not be negative, got {misfire_grace}")
        self.policy = policy
        self.dry_run = dry_run
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.misfire_grace = misfire_grace
        self.coalesce = coalesce
        self.exclusive = exclusive
        self.timezone = resolve_timezone(timezone)
        self._clock: Clock = clock or SystemClock()
        self._open: Opener = opener or (lambda: _borrowed(saver))
        self._on_sweep = on_sweep
        self._run_now = run_now
        now = self._clock.now()
        self._jobs = [
            _Job("sweep", make_trigger(cron=cron, every=every, timezone=self.timezone, start=now),
                 self._sweep, None),
        ]  # fmt: skip
        if report_cron is not None:
            trigger = make_trigger(cron=report_cron, timezone=self.timezone, start=now)
            self._jobs.append(_Job("report", trigger, self._report, None))
        self._lock = threading.Lock()
        self._counters = SchedulerCounters()
        self._last_report: PruneReport | None = None
        self._last_summary: StoreSummary | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._started = False
        self._thread: threading.Thread | None = None
        self._workers = ThreadPoolExecutor(
            max_workers=len(self._jobs), thread_name_prefix="langgraph-retention-job"
        )

    @classmethod
    def for_url(cls, url: str, policy: PolicySource, **kwargs: Any) -> Scheduler:
        """A scheduler that opens the store at `url` for each run (read and prune only:
        it never creates or migrates a schema)."""
        from langgraph_retention.urls import open_store

        return cls(None, policy, opener=lambda: open_store(url), **kwargs)

    # -- state --------------------------------------------------------------------------
    @property
    def counters(self) -> SchedulerCounters:
        with self._lock:
            return self._counters

    @property
    def last_report(self) -> PruneReport | None:
        """The report of the last sweep that ran."""
        return self._last_report

    @property
    def last_summary(self) -> StoreSummary | None:
        """The last stats report."""
        return self._last_summary

    @property
    def running(self) -> bool:
        """Started and not asked to stop."""
        return self._started and not self._stopping.is_set()

    @property
    def running_jobs(self) -> frozenset[str]:
        """The jobs ("sweep", "report") with a run in progress right now."""
        with self._lock:
            return frozenset(j.name for j in self._jobs if j.running)

    def next_run_time(self, job: str = "sweep") -> datetime | None:
        """When `job` ("sweep" or "report") fires next, in the scheduler's time zone."""
        for j in self._jobs:
            if j.name == job:
                return j.next_run.astimezone(UTC).astimezone(self.timezone) if j.next_run else None
        raise KeyError(job)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            now = self._counters
            self._counters = replace(now, **{k: getattr(now, k) + v for k, v in deltas.items()})

    # -- life cycle ---------------------------------------------------------------------
    def _begin(self) -> None:
        if self._started:
            raise RuntimeError("a Scheduler runs once; make a new one")
        self._started = True
        now = self._clock.now()
        for job in self._jobs:
            job.next_run = job.trigger.get_next_fire_time(None, now)
            if job.name == "sweep" and self._run_now:
                job.next_run = now
        logger.info(
            "scheduler started: %s; next sweep at %s%s",
            describe_policy(self.policy),
            _when(self.next_run_time()),
            f", next report at {_when(self.next_run_time('report'))}"
            if len(self._jobs) > 1
            else "",
        )

    def start(self) -> None:
        """Run the schedule on a background thread (in-process use)."""
        self._begin()
        self._thread = threading.Thread(
            target=self._loop, name="langgraph-retention-scheduler", daemon=True
        )
        self._thread.start()

    def run(self) -> None:
        """Run the schedule in this thread until `stop()` (the daemon's foreground loop);
        returns once the run in progress, if any, has ended."""
        self._begin()
        try:
            self._loop()
        finally:
            self._workers.shutdown(wait=True)

    def stop(self) -> None:
        """Ask to stop (safe from signal handlers): nothing new starts, and a sweep in
        progress stops after the batch it is on, which commits."""
        self._stopping.set()
        self._wake.set()

    def shutdown(self, wait: bool = True) -> None:
        """`stop()`, and with `wait`, return once the scheduler and its runs have ended.

        In an asyncio app sweeping an async saver, use `await aclose()` instead: the
        sweep's last batch needs the event loop this call would block."""
        self.stop()
        if self._thread is not None and wait:
            self._thread.join()
        self._workers.shutdown(wait=wait)

    async def aclose(self) -> None:
        """`shutdown(wait=True)` from a coroutine, without blocking the event loop."""
        await asyncio.to_thread(self.shutdown, True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown(wait=True)

    # -- the loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            now = self._clock.now()
            for job in self._jobs:
                if job.next_run is not None and job.next_run <= now:
                    self._fire(job, now)
            upcoming = [j.next_run for j in self._jobs if j.next_run is not None]
            if not upcoming:
                logger.info("scheduler: no fire time left; stopping")
                return
            self._wake.clear()
            if not self._stopping.is_set():
                delay = (min(upcoming) - self._clock.now()).total_seconds()
                self._clock.sleep(delay, self._wake)

    def _fire(self, job: _Job, now: datetime) -> None:
        assert job.next_run is not None
        firing = decide(
            job.trigger,
            job.next_run,
            now,
            coalesce=self.coalesce,
            misfire_grace=self.misfire_grace,
        )
        job.next_run = firing.next_run
        for late in firing.missed:
            self._count(missed=1)
            logger.warning(
                "%s scheduled at %s missed: %s late, past the misfire grace time of %s; "
                "next at %s",
                job.name, _when(late, self.timezone), now - late, self.misfire_grace,
                _when(job.next_run, self.timezone),
            )  # fmt: skip
        if not firing.runs:
            return
        with self._lock:
            busy, job.running = job.running, True
        if busy:
            self._count(overlapped=len(firing.runs))
            logger.warning(
                "%s scheduled at %s skipped: the previous %s is still running; next at %s",
                job.name, _when(firing.runs[-1], self.timezone), job.name,
                _when(job.next_run, self.timezone),
            )  # fmt: skip
            return
        self._workers.submit(self._run_job, job, firing.runs)

    def _run_job(self, job: _Job, runs: tuple[datetime, ...]) -> None:
        try:
            for scheduled in runs:
                if self._stopping.is_set():
                    return
                job.action(scheduled)
        except Exception:  # actions log their own failures; this is a last resort
            logger.exception("%s failed unexpectedly", job.name)
        finally:
            with self._lock:
                job.running = False

    # -- the jobs -----------------------------------------------------------------------
    def _sweep(self, scheduled: datetime) -> None:
        at = _when(scheduled, self.timezone)
        with ExitStack() as stack:
            try:
                saver = stack.enter_context(self._open())
            except Exception as exc:
                self._count(failed=1)
                metrics.record_sweep(PruneReport(dry_run=self.dry_run), "failed")
                logger.error(
                    "sweep scheduled at %s failed: cannot open the store (%s: %s); next at %s",
                    at, type(exc).__name__, exc, _when(self.next_run_time()),
                )  # fmt: skip
                return
            try:
                report = sweep(
                    saver,
                    self.policy,
                    dry_run=self.dry_run,
                    batch_size=self.batch_size,
                    stop=self._stopping.is_set,
                    exclusive=self.exclusive,
                )
            except SweepLockHeld as held:
                self._count(skipped_locked=1)
                logger.info(
                    "sweep scheduled at %s skipped: another sweep holds the lock (%s); "
                    "next at %s",
                    at, held.holder, _when(self.next_run_time()),
                )  # fmt: skip
                return
            except Exception as exc:
                self._count(failed=1)
                logger.error(
                    "sweep scheduled at %s failed: %s: %s; next at %s",
                    at, type(exc).__name__, exc, _when(self.next_run_time()),
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )  # fmt: skip
                return
        self._last_report = report
        self._count(sweeps=1, failed_threads=len(report.errors))
        level = logging.WARNING if report.errors or report.stopped else logging.INFO
        logger.log(
            level,
            "sweep scheduled at %s: %s; next at %s",
            at,
            report.summary(),
            _when(self.next_run_time()),
        )
        if self._on_sweep is not None:
            self._on_sweep(report)

    def _report(self, scheduled: datetime) -> None:
        at = _when(scheduled, self.timezone)
        try:
            with self._open() as saver:
                summary = summarize(iter_stats(saver), REPORT_TOP)
        except Exception as exc:
            logger.error("stats report scheduled at %s failed: %s: %s", at, type(exc).__name__, exc)
            return
        self._last_summary = summary
        self._count(reports=1)
        largest = "; ".join(f"{tid!r}: {ts.checkpoints}" for tid, ts in summary.largest)
        logger.info(
            "stats report scheduled at %s: %s; largest threads (checkpoints): %s; next at %s",
            at, summary.line(), largest or "none", _when(self.next_run_time("report")),
        )  # fmt: skip


@contextmanager
def _borrowed(saver: Any) -> Iterator[Any]:
    """The app's own saver, lent to a run and left open afterwards."""
    yield saver


def _when(moment: datetime | None, zone: tzinfo | None = None) -> str:
    """A fire time for logs, in the scheduler's zone (canonical across DST changes)."""
    if moment is None:
        return "never"
    # Through UTC: `astimezone` to a datetime's own zone would keep a non-canonical
    # offset (APScheduler returns 02:30+01:00 for the 02:30 a spring-forward night lacks).
    canonical = moment.astimezone(UTC).astimezone(zone or moment.tzinfo)
    return canonical.isoformat(sep=" ", timespec="seconds")
