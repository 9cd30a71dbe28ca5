"""What every command shares: exit codes, argument types, opening the store."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from langgraph_retention.config import ENV_URL, Settings, load_settings, parse_duration, parse_size
from langgraph_retention.errors import StoreNotReadyError, StoreUnavailableError, UsageError
from langgraph_retention.rules import PolicySource
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
    "settings_from_args",
    "size",
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


def size(text: str) -> int:
    try:
        return parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("size: ")) from None


URL_HELP = (
    "sqlite:///path.db, postgresql://user@host/db or redis://host:port "
    f"(default: ${ENV_URL}, then the --config file's url)"
)


def add_url_arg(parser: argparse.ArgumentParser) -> None:
    """--url and --config: where the store is, and a settings file."""
    parser.add_argument("--url", default=os.environ.get(ENV_URL), help=URL_HELP)
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML settings file (url, [policy], [[rules]], [schedule], [serve]); "
        "flags win over it",
    )


#: Policy flags: (flag, dest, type, help). `--keep-first` and `--keep-interrupted` are
#: switches; everything else takes a value.
_POLICY_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--keep-last", "N", positive_int, "the newest N checkpoints of every thread and namespace"),
    ("--keep-within", "DURATION", duration, "every checkpoint younger than this (12h, 7d)"),
    ("--keep-hourly", "N", positive_int, "the newest checkpoint of each of the last N hours"),
    ("--keep-daily", "N", positive_int, "the newest checkpoint of each of the last N days"),
    ("--keep-weekly", "N", positive_int, "the newest checkpoint of each of the last N weeks"),
    ("--keep-monthly", "N", positive_int, "the newest checkpoint of each of the last N months"),
    ("--keep-tagged", "KEY", str, "checkpoints whose metadata sets KEY (an app's pin)"),
    ("--max-bytes", "SIZE", size, "then drop the oldest count/time choices until a thread fits"),
    ("--idle-ttl", "DURATION", duration, "delete whole threads idle longer than this"),
    ("--max-age", "DURATION", duration, "delete whole threads older than this"),
    ("--timezone", "TZ", str, "IANA zone for hours/days/weeks/months (and --cron)"),
)


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    """The retention policy's flags (all combine: a checkpoint stays if any keeps it)."""
    group = parser.add_argument_group(
        "policy", "what to keep (the newest checkpoint is always kept); overrides --config"
    )
    for flag, metavar, kind, help_text in _POLICY_FLAGS:
        group.add_argument(flag, type=kind, metavar=metavar, help=help_text)
    group.add_argument(
        "--keep-first", action="store_true", default=None, help="the thread's first checkpoint"
    )
    group.add_argument(
        "--keep-interrupted",
        action="store_true",
        default=None,
        help="checkpoints where the graph asked a human (interrupts)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The --config file's settings (empty without one); the URL resolved: --url, then
    $LANGGRAPH_RETENTION_URL, then the file's `url`."""
    settings = load_settings(args.config) if getattr(args, "config", None) else Settings()
    if not getattr(args, "url", None):
        args.url = settings.url
    return settings


def policy_from_args(args: argparse.Namespace, settings: Settings) -> PolicySource:
    """The policy: the file's [policy] and [[rules]], then the flags given. A command that
    deletes needs one stated somewhere: there is no silent default."""
    overrides = {
        dest: value
        for flag, *_rest in _POLICY_FLAGS
        if (value := getattr(args, (dest := flag[2:].replace("-", "_")), None)) is not None
    }
    for switch in ("keep_first", "keep_interrupted"):
        if getattr(args, switch, None):
            overrides[switch] = True
    if not overrides and settings.policy is None and not settings.rules:
        raise UsageError(
            "no policy: give --keep-last N (and any other --keep-* flag) or --config FILE "
            "with a [policy] table"
        )
    return settings.policy_source(overrides)


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
