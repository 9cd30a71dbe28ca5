"""The `langgraph-retention` command: demo, stats, prune, schedule, serve.

Exit codes: 0 success; 1 a thread or the store failed during the run; 2 bad input
(usage, URL, duration, cron expression, a store that cannot be opened or holds no
LangGraph checkpoints, a thread that does not exist), nothing touched; 3 another sweep
holds the store's sweep lock (`prune --all` skipped). Errors are one line on stderr;
`--json` prints machine-readable results on stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from langgraph_retention.errors import RetentionError, SweepLockHeld, UsageError

from . import demo, prune, schedule, serve, stats
from ._common import EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_FAILED", "EXIT_LOCKED", "EXIT_OK", "EXIT_USAGE", "main"]

logger = logging.getLogger("langgraph_retention")

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": demo.run,
    "stats": stats.run,
    "prune": prune.run,
    "schedule": schedule.run,
    "serve": serve.run,
}
#: Commands that run for long and say what they do at INFO level.
DAEMONS = frozenset({"schedule", "serve"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="langgraph-retention",
        description="Keep LangGraph checkpoint storage under control: keep the newest N "
        "checkpoints per thread, delete the rest safely.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, stats, prune, schedule, serve):
        module.add_parser(sub)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line as the console script does (exits 2 on a bad one)."""
    return _parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = parse_args(argv)
    daemon = args.command in DAEMONS
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if daemon else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        if daemon
        else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"langgraph-retention: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SweepLockHeld as exc:
        print(f"langgraph-retention: {args.command} skipped: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except RetentionError as exc:
        print(f"langgraph-retention: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a store that fails mid-run: one clear line
        logger.debug("command failed", exc_info=True)
        detail = " ".join(str(exc).split())  # drivers' messages span lines
        print(
            f"langgraph-retention: {args.command} failed: {type(exc).__name__}: {detail}",
            file=sys.stderr,
        )
        return EXIT_FAILED
