"""What every command shares: exit codes, argument types, opening the store."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from langgraph_retention.config import ENV_URL, parse_duration
from langgraph_retention.errors import StoreNotReadyError, StoreUnavailableError, UsageError
from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.urls import open_store

__all__ = [
    "EXIT_FAILED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_USAGE",
    "BadStoreError",
    "add_policy_args",
    "add_url_arg",
    "duration",
    "opened",
    "policy_from_args",
    "port",
    "positive_int",
    "progress_enabled",
]

#: Exit codes: success; a thread or the store failed during the run; bad input (usage,
#: URL, duration, cron, a store that cannot be opened or is not a LangGraph store, a
#: thread that does not exist), nothing touched; another sweep holds the lock.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3


class BadStoreError(UsageError):
    """The store could not be opened, or is not a LangGraph checkpoint store."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def duration(text: str) -> Any:
    try:
        return parse_duration(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("duration: ")) from None


URL_HELP = (
    f"sqlite:///path.db, postgresql://user@host/db or redis://host:port (default: ${ENV_URL})"
)


def add_url_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get(ENV_URL), help=URL_HELP)


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-last",
        type=positive_int,
        required=True,
        metavar="N",
        help="keep the newest N checkpoints of every thread and namespace",
    )
    parser.add_argument(
        "--keep-within",
        type=duration,
        metavar="DURATION",
        help="also keep every checkpoint younger than this (e.g. 12h, 7d)",
    )


def policy_from_args(args: argparse.Namespace) -> RetentionPolicy:
    return RetentionPolicy(keep_last=args.keep_last, keep_within=args.keep_within)


def progress_enabled() -> bool:
    """Progress bars only on terminals."""
    return sys.stderr.isatty()


@contextmanager
def opened(url: str | None) -> Iterator[Any]:
    """The store at `url`, checked. A failure to open it (no URL, unreachable server, no
    checkpoint tables) is `BadStoreError`: bad input, nothing was touched. Errors
    after that are the command's own."""
    with ExitStack() as stack:
        try:
            saver = stack.enter_context(open_store(url or ""))
        except (StoreNotReadyError, StoreUnavailableError) as exc:
            raise BadStoreError(str(exc)) from exc
        yield saver
