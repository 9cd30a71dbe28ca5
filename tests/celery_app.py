"""The Celery app of the task tests and the Celery benchmark, and a worker to run it.

`make_app` builds it in the worker (from the environment) and in the test process (the
client) alike: the broker and result backend are the test Redis on a database the savers'
tests never flush; each store gets its own tasks, named `lgr_<kind>.<task>`.
`celery_worker` runs `celery -A tests.celery_app worker` as a real subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celery import Celery

from langgraph_retention.tasks import RetentionTasks, register_tasks

#: Environment of the worker: the broker URL, and {kind: store URL} as JSON.
BROKER_ENV = "LGR_CELERY_BROKER"
STORES_ENV = "LGR_CELERY_STORES"
#: Store kinds whose shards retry quickly (an unreachable store's test waits for them).
FAST_RETRY = {"max_retries": 2, "retry_backoff": 0.05}
ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120


def make_app(broker: str, stores: dict[str, str]) -> tuple[Celery, dict[str, RetentionTasks]]:
    """The app, and the tasks registered for each store kind."""
    app = Celery("lgr_tests", broker=broker, backend=broker)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
    )
    registered: dict[str, RetentionTasks] = {}
    for kind, url in stores.items():
        extra: dict[str, Any] = FAST_RETRY if kind == "unreachable" else {}
        registered[kind] = register_tasks(app, url=url, name_prefix=f"lgr_{kind}", **extra)
    return app, registered


@dataclass
class Worker:
    """A running `celery worker`, the client app, and each store kind's tasks."""

    proc: subprocess.Popen[bytes]
    log: Path
    app: Celery
    tasks: dict[str, RetentionTasks]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def broker_url(redis_url: str, db: int = 1) -> str:
    """The test Redis, database 1 (the savers' tests flush database 0); workers on one
    database share its queue."""
    return urlsplit(redis_url)._replace(path=f"/{db}").geturl()


@contextmanager
def celery_worker(
    broker: str,
    stores: dict[str, str],
    log: Path,
    *,
    concurrency: int = 2,
    loglevel: str = "INFO",
) -> Iterator[Worker]:
    """`celery -A tests.celery_app worker --pool prefork`, answering pings; warm-stopped after."""
    env = {**os.environ, BROKER_ENV: broker, STORES_ENV: json.dumps(stores)}
    name = f"lgr-{uuid.uuid4().hex[:8]}@%h"
    cmd = [
        sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker",
        "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", loglevel,
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", name,
    ]  # fmt: skip
    app, registered = make_app(broker, stores)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    worker = Worker(proc, log, app, registered)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not app.control.ping(timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start:\n{worker.log_text()[-4000:]}")
        yield worker
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown: running tasks finish
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        app.close()


if BROKER_ENV in os.environ:  # in the worker
    app, registered = make_app(os.environ[BROKER_ENV], json.loads(os.environ[STORES_ENV]))
