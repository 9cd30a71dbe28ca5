"""The Celery app of the task tests: `celery -A tests.celery_app worker` runs it.

`make_app` builds it in the worker (from the environment) and in the test process (the
client) alike: the broker and result backend are the test Redis on a database the savers'
tests never flush; each store gets its own tasks, named `lgr_<kind>.<task>`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery

from langgraph_retention.tasks import RetentionTasks, register_tasks

#: Environment of the worker: the broker URL, and {kind: store URL} as JSON.
BROKER_ENV = "LGR_CELERY_BROKER"
STORES_ENV = "LGR_CELERY_STORES"
#: Store kinds whose shards retry quickly (an unreachable store's test waits for them).
FAST_RETRY = {"max_retries": 2, "retry_backoff": 0.05}


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


if BROKER_ENV in os.environ:  # in the worker
    app, registered = make_app(os.environ[BROKER_ENV], json.loads(os.environ[STORES_ENV]))
