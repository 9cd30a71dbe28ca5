"""Background sweeps for `POST /api/cleanup/all`: one at a time, progress as it goes, a
bounded history. A job runs `sweep(exclusive=True)` (or `asweep`) so another process's
sweep of the same store is respected too; `stop_all` ends them after their current batch."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

from langgraph_retention.errors import SweepLockHeld
from langgraph_retention.report import PruneReport, ThreadResult

from .bodies import sweep_body, thread_summary

__all__ = ["Job", "JobStatus", "Jobs"]

logger = logging.getLogger("langgraph_retention.web")

JobStatus = Literal["running", "completed", "stopped", "failed", "locked"]
#: Failed threads listed in a job's progress (all are counted).
_ERRORS_SHOWN = 100


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Job:
    """One sweep: what it has done so far, and its report once finished."""

    def __init__(self, *, dry_run: bool, policy: str, results_limit: int) -> None:
        self.id = uuid.uuid4().hex
        self.dry_run = dry_run
        self.policy = policy
        self.status: JobStatus = "running"
        self.started_at = _now()
        self.finished_at: str | None = None
        self.threads_done = 0
        self.deleted = 0
        self.deleted_writes = 0
        self.bytes_freed = 0
        self.failed = 0
        self.errors: dict[str, str] = {}
        self.results: dict[str, Any] = {}
        self.results_truncated = False
        self.report: PruneReport | None = None
        self.error: str | None = None
        self.done = threading.Event()
        self._results_limit = results_limit
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def progress(self, r: ThreadResult) -> None:
        """`sweep(progress=)`: fold one thread's result in."""
        with self._lock:
            self.threads_done += 1
            if r.error is not None:
                self.failed += 1
                if len(self.errors) < _ERRORS_SHOWN:
                    self.errors[r.thread_id] = r.error
            else:
                self.deleted += r.deleted_checkpoints
                self.deleted_writes += r.deleted_writes
                self.bytes_freed += r.bytes_freed
            if len(self.results) < self._results_limit:
                self.results[r.thread_id] = thread_summary(r)
            else:
                self.results_truncated = True

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def finish(self, report: PruneReport) -> None:
        with self._lock:
            self.report = report
            self.status = "completed" if report.stopped is None else "stopped"
        self._end()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if isinstance(exc, SweepLockHeld):
                self.status = "locked"
                self.error = str(exc)
            else:
                self.status = "failed"
                self.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
        self._end()

    def _end(self) -> None:
        self.finished_at = _now()
        self.done.set()

    def to_dict(self) -> dict[str, Any]:
        """`GET /api/cleanup/jobs/<id>`: progress so far (the results once finished)."""
        with self._lock:
            out: dict[str, Any] = {
                "job_id": self.id,
                "status": self.status,
                "dry_run": self.dry_run,
                "policy": self.policy,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "threads_done": self.threads_done,
                "deleted_so_far": self.deleted,
                "deleted_writes_so_far": self.deleted_writes,
                "bytes_freed_so_far": self.bytes_freed,
                "failed_threads": self.failed,
                "errors": dict(self.errors),
                "error": self.error,
            }
            if self.report is not None:
                out["result"] = self.result()
            return out

    def result(self) -> dict[str, Any]:
        """The finished sweep as `POST /api/cleanup/all` answers it."""
        assert self.report is not None
        body = sweep_body(self.report, dict(self.results), self.results_truncated)
        body["job_id"] = self.id
        return body


class Jobs:
    """The API's sweeps: at most one running; the last `history` kept for lookups."""

    def __init__(self, *, history: int = 20, results_limit: int = 1000) -> None:
        self.history = history
        self.results_limit = results_limit
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._threads: set[threading.Thread] = set()

    def running(self) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values() if not j.done.is_set()), None)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return list(reversed(self._jobs.values()))

    def _admit(self, dry_run: bool, policy: str) -> tuple[Job, bool]:
        with self._lock:
            for job in self._jobs.values():
                if not job.done.is_set():
                    return job, False
            job = Job(dry_run=dry_run, policy=policy, results_limit=self.results_limit)
            self._jobs[job.id] = job
            while len(self._jobs) > self.history:
                oldest = next(iter(self._jobs))
                if not self._jobs[oldest].done.is_set():
                    break
                del self._jobs[oldest]
            return job, True

    def start_thread(
        self, run: Callable[[Job], PruneReport], *, dry_run: bool, policy: str
    ) -> tuple[Job, bool]:
        """Run `run(job)` on a thread unless a job runs already; (the job, started?)."""
        job, created = self._admit(dry_run, policy)
        if created:
            thread = threading.Thread(
                target=self._run_sync, args=(job, run), name=f"sweep-{job.id[:8]}", daemon=True
            )
            self._threads.add(thread)
            thread.start()
        return job, created

    def start_task(
        self, run: Callable[[Job], Awaitable[PruneReport]], *, dry_run: bool, policy: str
    ) -> tuple[Job, bool]:
        """Run `run(job)` as a task on the running loop unless a job runs already."""
        job, created = self._admit(dry_run, policy)
        if created:
            task = asyncio.get_running_loop().create_task(self._run_async(job, run))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return job, created

    def _run_sync(self, job: Job, run: Callable[[Job], PruneReport]) -> None:
        try:
            job.finish(run(job))
        except Exception as exc:
            self._failed(job, exc)
        finally:
            self._threads.discard(threading.current_thread())

    async def _run_async(self, job: Job, run: Callable[[Job], Awaitable[PruneReport]]) -> None:
        try:
            job.finish(await run(job))
        except Exception as exc:
            self._failed(job, exc)

    @staticmethod
    def _failed(job: Job, exc: Exception) -> None:
        if isinstance(exc, SweepLockHeld):
            logger.info("sweep job %s not started: %s", job.id, exc)
        else:
            logger.error("sweep job %s failed: %s", job.id, exc, exc_info=exc)
        job.fail(exc)

    def stop_all(self, timeout: float = 60.0) -> bool:
        """Ask running jobs to stop after their current batch; wait for thread jobs.
        True when none is left running."""
        for job in self.all():
            job.request_stop()
        for thread in list(self._threads):
            thread.join(timeout)
        return self.running() is None
