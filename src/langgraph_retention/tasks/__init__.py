"""Celery tasks for fleets: shards of threads pruned on many workers, folded into one report.

Register them on your own app (extra `[celery]`); a worker prunes the store `url` names::

    app = Celery("proj", broker="redis://host/1", backend="redis://host/1")
    retention = register_tasks(app, url=os.environ["LANGGRAPH_RETENTION_URL"])
    report = retention.run_sweep({"keep_last": 10}).get()      # one dict for the fleet
    app.conf.beat_schedule = {
        "nightly-retention": retention.beat_entry({"keep_last": 10}, cron="0 2 * * *"),
    }

How it works, and why:

- The policy travels as plain data in JSON messages (every task is JSON-serialized
  whatever the app's default): a policy's keys (`config.policy_to_mapping`), or per-thread
  rules in the settings file's shape, `{"policy": {...}, "rules": [{"match": ...}]}`. A
  bad one is a `UsageError` raised before anything is read or sent (`run_sweep` checks it
  before sending, too). Callables (resolvers, `on_before_delete`) stay on the workers.
- `sweep` streams thread ids from the store and sends a `prune_shard` task each time
  `shard_size` ids are read, so no process or message ever holds every thread id. It then
  replaces itself (same task id) with `fold`, which polls the shards' results in the result
  backend, folds each finished one into one report, forgets it, and backs off while none
  finishes, as Celery's own chord_unlock does. Not a chord: a chord keeps its whole header
  in memory, and its callback never runs when one shard's task fails or is lost, losing
  the fleet's report; here such a shard shows in `failed_shards`. A result backend is
  needed (not `rpc://`); `sweep.delay(...).get()` returns the folded report.
- One sweeper at a time: the dispatching `sweep` holds the store's sweep lock (the one
  `prune --all`, the scheduler and the daemon take) while it reads ids and sends shards;
  finding it held, it returns at once with `skipped` naming the holder (a dry run takes no
  lock). The lock is tied to the dispatching process and cannot travel with the shards, so
  shards may still run after it is released and overlap a later sweep. That is safe: a
  prune reads its thread's index and deletes explicit ids in one transaction, so two
  prunes of a thread under one policy delete the same rows (the second finds nothing).
- Errors are never swallowed. Threads a shard cannot prune are logged with their ids and
  land in `errors`. When the store itself broke (it cannot be opened, or a read-only store
  check fails after errors), the worker drops its connection and the shard retries just
  the failed threads with exponential backoff and jitter, `max_retries` times; what still
  fails is reported, not raised, so one bad shard never loses the fleet's report.
- Each worker process opens the store on its first task (after the pool forked) and
  reuses it; Celery's `worker_process_shutdown` / `worker_shutdown` signals close it. No
  task ever calls a saver's `setup()`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from celery import signals

from langgraph_retention.engine import OnBeforeDelete, iter_thread_ids, sweep
from langgraph_retention.errors import SweepLockHeld, UsageError
from langgraph_retention.report import PruneReport
from langgraph_retention.urls import SCHEMES

from ._beat import cron_schedule, every_schedule
from ._common import (
    DEFAULT_SHARD_SIZE,
    FOLD_POLL_SECONDS,
    FOLD_WINDOW,
    PolicyLike,
    batched,
    check_result_backend,
    check_shard_size,
    check_thread_ids,
    failed_report,
    healthy,
    lock_unless,
    plain_policy,
    policy_source,
    shown,
    transient,
)
from ._reports import fleet_result, merge, report_from_dict, without
from ._store import SaverFactory, WorkerStore

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "PolicyLike",
    "RetentionTasks",
    "SaverFactory",
    "cron_schedule",
    "every_schedule",
    "plain_policy",
    "register_tasks",
    "report_from_dict",
]

logger = logging.getLogger("langgraph_retention.tasks")


@dataclass(frozen=True, slots=True)
class RetentionTasks:
    """The tasks `register_tasks` put on an app, and helpers to call and schedule them."""

    app: Any
    #: `prune_shard(thread_ids, policy, dry_run=False)` -> `PruneReport.to_dict()`.
    prune_shard: Any
    #: `sweep(policy, shard_size=None, dry_run=False)` -> the fleet's folded report dict.
    sweep: Any
    #: Internal: folds shard results into the sweep's report (runs under its task id).
    fold: Any
    store: WorkerStore
    shard_size: int

    def run_shard(
        self,
        thread_ids: Sequence[str],
        policy: PolicyLike,
        *,
        dry_run: bool = False,
        **options: Any,
    ) -> Any:
        """Send one shard (checked here first); returns its `AsyncResult`."""
        args = (check_thread_ids(list(thread_ids)), plain_policy(policy), dry_run)
        return self.prune_shard.apply_async(args, **options)

    def run_sweep(
        self,
        policy: PolicyLike,
        *,
        shard_size: int | None = None,
        dry_run: bool = False,
        **options: Any,
    ) -> Any:
        """Send a fleet sweep (checked here first); `.get()` on the returned `AsyncResult`
        gives the folded report."""
        size = self.shard_size if shard_size is None else shard_size
        kwargs = {"shard_size": check_shard_size(size), "dry_run": dry_run}
        return self.sweep.apply_async((plain_policy(policy),), kwargs, **options)

    def beat_entry(
        self,
        policy: PolicyLike,
        *,
        cron: str | None = None,
        every: timedelta | str | float | None = None,
        shard_size: int | None = None,
        dry_run: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An `app.conf.beat_schedule` value running the fleet sweep at `cron` (5 fields,
        in the app's timezone) or `every` (a duration); `options` go to `apply_async`."""
        if cron is not None and every is None:
            when = cron_schedule(cron)
        elif every is not None and cron is None:
            when = every_schedule(every)
        else:
            raise UsageError("beat_entry: give exactly one of cron= or every=")
        size = self.shard_size if shard_size is None else shard_size
        return {
            "task": self.sweep.name,
            "schedule": when,
            "args": (plain_policy(policy),),
            "kwargs": {"shard_size": check_shard_size(size), "dry_run": dry_run},
            "options": dict(options or {}),
        }


def register_tasks(
    app: Any,
    *,
    url: str | None = None,
    saver_factory: SaverFactory | None = None,
    name_prefix: str = "langgraph_retention",
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int | None = None,
    max_retries: int = 3,
    retry_backoff: float = 2.0,
    retry_backoff_max: float = 120.0,
    fold_timeout: timedelta = timedelta(hours=12),
    on_before_delete: OnBeforeDelete | None = None,
) -> RetentionTasks:
    """Register `prune_shard`, `sweep` and `fold` on the Celery `app` (named
    `<name_prefix>.<task>`), pruning the store at `url` or the saver `saver_factory` makes.

    `batch_size` threads are pruned per transaction inside a shard (None: the store's
    own). A shard whose store broke is retried `max_retries` times, `retry_backoff * 2**n`
    seconds apart (capped, jittered). Shards without a result after `fold_timeout` count as failed.
    `on_before_delete` is asked in the worker before a whole thread expires, as in `sweep`.
    """
    if (url is None) == (saver_factory is None):
        raise UsageError("register_tasks: give exactly one of url= or saver_factory=")
    if url is not None and urlsplit(url).scheme.lower() not in SCHEMES:
        raise UsageError(f"register_tasks: unsupported store URL scheme in {url!r:.40}")
    check_shard_size(shard_size)
    store = WorkerStore(url=url, factory=saver_factory)
    signals.worker_process_shutdown.connect(store.close, weak=False)
    signals.worker_shutdown.connect(store.close, weak=False)
    common = {
        "bind": True,
        "serializer": "json",
        "ignore_result": False,
        "max_retries": None,
        "throws": (UsageError,),  # a bad policy is logged as one line, not a traceback
    }

    def backoff(attempt: int) -> float:
        return float(min(retry_backoff * 2**attempt, retry_backoff_max) * random.uniform(0.5, 1))

    def prune_shard(
        task: Any,
        thread_ids: list[str],
        policy: dict[str, Any],
        dry_run: bool = False,
        carried: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        rules = policy_source(policy)
        ids = check_thread_ids(thread_ids)
        done = report_from_dict(carried) if carried else PruneReport(dry_run=dry_run)
        broken = False
        try:
            with store.use() as saver:
                report = sweep(
                    saver,
                    rules,
                    thread_ids=ids,
                    dry_run=dry_run,
                    batch_size=batch_size,
                    on_before_delete=on_before_delete,
                )
                broken = bool(report.errors) and not healthy(saver)
        except Exception as exc:  # opening failed
            report, broken = failed_report(ids, exc, dry_run), transient(exc)
        merge(done, report.to_dict())
        done.elapsed_seconds += report.elapsed_seconds
        failed = list(report.errors)
        if broken:
            store.discard()
        if broken and task.request.retries < max_retries:
            wait = backoff(task.request.retries)
            logger.warning(
                "shard %s: the store %s failed for %d thread(s) (%s); retry %d of %d in %.1fs",
                task.request.id, store.name, len(failed), next(iter(report.errors.values())),
                task.request.retries + 1, max_retries, wait,
            )  # fmt: skip
            retry_kwargs = {"carried": without(done, failed).to_dict()}
            raise task.retry(args=(failed, policy, dry_run), kwargs=retry_kwargs, countdown=wait)
        if failed:
            logger.error(
                "shard %s: %d of %d thread(s) not pruned: %s",
                task.request.id, len(failed), len(ids), shown(failed),
            )  # fmt: skip
        return done.to_dict()

    def fleet_sweep(
        task: Any, policy: dict[str, Any], shard_size: int | None = None, dry_run: bool = False
    ) -> dict[str, Any]:
        plain = plain_policy(policy)
        eager = bool(app.conf.task_always_eager)
        if not eager:
            check_result_backend(app)
        size = check_shard_size(tasks.shard_size if shard_size is None else shard_size)
        started = time.time()
        sent: list[str] = []
        threads = 0
        stopped: str | None = None
        folded = PruneReport(dry_run=dry_run)
        failed_eager: dict[str, str] = {}
        try:
            with store.use() as saver, lock_unless(dry_run, saver) as lock:
                for shard in batched(iter_thread_ids(saver), size):
                    if lock is not None and not lock.held():
                        stopped = "sweep lock lost"
                        logger.error("fleet sweep stopped sending shards: its lock was lost")
                        break
                    shard_result = tasks.prune_shard.apply_async((shard, plain, dry_run))
                    if eager and shard_result.successful():  # task_always_eager: it ran
                        merge(folded, shard_result.result)
                    elif eager:
                        failed_eager[shard_result.id] = repr(shard_result.result)
                    sent.append(shard_result.id)
                    threads += len(shard)
        except SweepLockHeld as exc:
            logger.warning("fleet sweep skipped: another sweep holds the lock (%s)", exc.holder)
            skipped = exc.holder.to_dict()
            return fleet_result(PruneReport(dry_run=dry_run), shards=0, skipped=skipped)
        except Exception as exc:
            if not transient(exc):
                raise
            store.discard()
            why = f"{type(exc).__name__}: {exc}"
            if not sent and task.request.retries < max_retries:
                wait = backoff(task.request.retries)
                logger.warning(
                    "fleet sweep: the store %s failed (%s); retry %d of %d in %.1fs",
                    store.name, why, task.request.retries + 1, max_retries, wait,
                )  # fmt: skip
                raise task.retry(countdown=wait) from exc
            if not sent:
                raise
            stopped = f"reading thread ids failed: {why}"  # fold the shards already sent
            logger.error("fleet sweep stopped sending shards after %d: %s", len(sent), why)
        logger.info(
            "fleet sweep %s: %d thread(s) sent in %d shard(s) in %.2fs",
            task.request.id, threads, len(sent), time.time() - started,
        )  # fmt: skip
        folded.stopped = stopped
        if eager:
            folded.elapsed_seconds = time.time() - started
            return fleet_result(folded, shards=len(sent), failed_shards=failed_eager)
        partial = fleet_result(folded, shards=len(sent))
        deadline = started + fold_timeout.total_seconds()
        return task.replace(tasks.fold.s(sent, partial, started, deadline))  # type: ignore[no-any-return]

    def fold(
        task: Any,
        shard_ids: list[str],
        partial: dict[str, Any],
        started: float,
        deadline: float,
        interval: float = FOLD_POLL_SECONDS[0],
    ) -> dict[str, Any]:
        report = report_from_dict(partial)
        failed_shards = dict(partial.get("failed_shards") or {})
        waiting: list[str] = []
        for sid in shard_ids[:FOLD_WINDOW]:
            result = tasks.prune_shard.AsyncResult(sid)
            if not result.ready():
                waiting.append(sid)
                continue
            if result.successful():
                merge(report, result.result)
            else:
                failed_shards[sid] = f"{type(result.result).__name__}: {result.result}"
                logger.error("fleet sweep: shard %s failed: %s", sid, failed_shards[sid])
            result.forget()
        remaining = waiting + shard_ids[FOLD_WINDOW:]
        if remaining and time.time() > deadline:
            for sid in remaining:
                failed_shards[sid] = "no result before the fold's deadline (fold_timeout)"
            logger.error("fleet sweep: %d shard(s) gave no result in time", len(remaining))
            remaining = []
        if remaining:
            wait = (
                FOLD_POLL_SECONDS[0]
                if len(remaining) < len(shard_ids)
                else min(interval * 2, FOLD_POLL_SECONDS[1])
            )
            now = fleet_result(report, shards=partial["shards"], failed_shards=failed_shards)
            raise task.retry(
                args=(remaining, now, started, deadline, wait), kwargs={}, countdown=wait
            )
        report.elapsed_seconds = time.time() - started
        logger.info("fleet sweep %s: %s", task.request.id, report.summary())
        return fleet_result(report, shards=partial["shards"], failed_shards=failed_shards)

    tasks = RetentionTasks(
        app=app,
        prune_shard=app.task(name=f"{name_prefix}.prune_shard", **common)(prune_shard),
        sweep=app.task(name=f"{name_prefix}.sweep", **common)(fleet_sweep),
        fold=app.task(name=f"{name_prefix}.fold", **common)(fold),
        store=store,
        shard_size=shard_size,
    )
    return tasks
