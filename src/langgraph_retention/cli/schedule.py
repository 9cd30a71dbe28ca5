"""`langgraph-retention schedule`: the sweep daemon, in the foreground (systemd, containers).

It sweeps on a cron expression or an interval, logs one line per sweep, optionally logs a
stats report on a second schedule and serves Prometheus metrics. SIGTERM or SIGINT stop
it cleanly: the batch in progress commits, nothing else starts, exit 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from types import FrameType
from typing import TypeVar

from langgraph_retention import metrics
from langgraph_retention.errors import UsageError
from langgraph_retention.report import PruneReport
from langgraph_retention.scheduler import DEFAULT_BATCH_SIZE, DEFAULT_MISFIRE_GRACE, Scheduler

from ._common import (
    EXIT_OK,
    add_policy_args,
    add_url_arg,
    duration,
    opened,
    policy_from_args,
    port,
    positive_int,
    settings_from_args,
)

__all__ = ["add_parser", "run"]

logger = logging.getLogger("langgraph_retention.scheduler")
T = TypeVar("T")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sc = sub.add_parser(
        "schedule",
        help="sweep on a schedule, in the foreground, until SIGTERM",
        description="Sweep every thread on a cron schedule or at an interval; one sweeper "
        "at a time across processes and hosts (others skip and log who holds the lock). "
        "Flags win over the --config file's [schedule] table.",
    )
    add_url_arg(sc)
    add_policy_args(sc)
    when = sc.add_mutually_exclusive_group()
    when.add_argument(
        "--cron",
        metavar="EXPR",
        help="crontab expression, e.g. '0 2 * * *' (02:00 daily); weekdays 0/7 = Sunday",
    )
    when.add_argument("--every", type=duration, metavar="DURATION", help="interval, e.g. 2h")
    sc.add_argument(
        "--report-cron",
        metavar="EXPR",
        help="also log a stats report on this schedule, e.g. '0 9 * * 1' (Mondays 09:00)",
    )
    sc.add_argument("--run-now", action="store_true", help="sweep once at start, then on schedule")
    sc.add_argument("--dry-run", action="store_true", help="report what would go; delete nothing")
    sc.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help=f"threads per transaction (default: {DEFAULT_BATCH_SIZE}, short for the app's writes)",
    )
    sc.add_argument(
        "--misfire-grace",
        type=duration,
        metavar="DURATION",
        help="run a late fire if at most this late, else skip it (default: 10m)",
    )
    sc.add_argument(
        "--metrics-port", type=port, metavar="P", help="serve Prometheus metrics on this port"
    )
    sc.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="address for --metrics-port (default: 127.0.0.1)",
    )
    sc.add_argument("--json", action="store_true", help="print each sweep's report as a JSON line")


def _pick(flag: T | None, setting: T | None, default: T) -> T:
    """A flag if given, else the settings file's value, else the default."""
    return flag if flag is not None else setting if setting is not None else default


def _print_json(report: PruneReport) -> None:
    print(json.dumps(report.to_dict(), ensure_ascii=False), flush=True)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    planned = settings.schedule
    cron, every = args.cron, args.every
    if cron is None and every is None:
        cron, every = planned.cron, planned.every
    if cron is None and every is None:
        raise UsageError("no schedule: give --cron EXPR or --every DURATION (or [schedule])")
    scheduler = Scheduler.for_url(
        args.url or "",
        policy_from_args(args, settings),
        cron=cron,
        every=every,
        timezone=_pick(args.timezone, planned.timezone, None),
        report_cron=_pick(args.report_cron, planned.report_cron, None),
        run_now=args.run_now,
        dry_run=args.dry_run,
        batch_size=_pick(args.batch_size, planned.batch_size, DEFAULT_BATCH_SIZE),
        misfire_grace=_pick(args.misfire_grace, planned.misfire_grace, DEFAULT_MISFIRE_GRACE),
        on_sweep=_print_json if args.json else None,
    )
    metrics_port = _pick(args.metrics_port, planned.metrics_port, None)
    metrics_host = _pick(args.metrics_host, planned.metrics_host, "127.0.0.1")
    with opened(args.url):  # a wrong URL or an empty database fails now, not at 02:00
        pass
    server = metrics.serve(metrics_port, metrics_host) if metrics_port else None

    def stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s: stopping after the batch in progress", signal.Signals(signum).name)
        scheduler.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        scheduler.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
    logger.info("scheduler stopped")
    sys.stdout.flush()
    return EXIT_OK
