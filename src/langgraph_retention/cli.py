"""The `langgraph-retention` command: demo, stats, prune.

Exit codes: 0 success, 1 a thread (or the store) failed, 2 bad usage. Errors are one
line on stderr; `--json` prints machine-readable results on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from tqdm import tqdm

from langgraph_retention.engine import DEFAULT_BATCH_SIZE, iter_stats, prune_thread, sweep
from langgraph_retention.errors import RetentionError
from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.report import PruneReport, Stats
from langgraph_retention.urls import UsageError, check_url, open_saver

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

logger = logging.getLogger("langgraph_retention")

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration like 30m, 12h or 7d: {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="langgraph-retention",
        description="Keep LangGraph checkpoint storage under control: keep the newest N "
        "checkpoints per thread, delete the rest safely.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="build a SQLite store from a real agent, prune it, verify")
    demo.add_argument(
        "--db",
        type=Path,
        default=Path(tempfile.gettempdir()) / "langgraph-retention-demo.db",
        help="SQLite file to create (default: %(default)s)",
    )
    demo.add_argument("--keep-last", type=_positive_int, default=5, metavar="N")

    url_help = "sqlite:///path.db, postgresql://user@host/db or redis://host:port"
    st = sub.add_parser("stats", help="checkpoints, writes and bytes per thread")
    st.add_argument("--url", required=True, help=url_help)
    st.add_argument("--thread", action="append", metavar="T", help="only this thread (repeatable)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument(
        "--top",
        type=_positive_int,
        default=20,
        metavar="N",
        help="list the N largest threads (default: %(default)s)",
    )

    pr = sub.add_parser("prune", help="keep the newest N checkpoints per thread, delete the rest")
    pr.add_argument("--url", required=True, help=url_help)
    pr.add_argument("--keep-last", type=_positive_int, required=True, metavar="N")
    pr.add_argument(
        "--keep-within",
        type=_duration,
        metavar="DURATION",
        help="also keep every checkpoint younger than this (e.g. 12h, 7d)",
    )
    which = pr.add_mutually_exclusive_group(required=True)
    which.add_argument("--thread", action="append", metavar="T", help="this thread (repeatable)")
    which.add_argument("--all", action="store_true", help="every thread in the store")
    pr.add_argument("--dry-run", action="store_true", help="report what would go; delete nothing")
    pr.add_argument("--json", action="store_true", help="print the report as JSON")
    pr.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, metavar="N")
    pr.add_argument(
        "--vacuum", action="store_true", help="SQLite only: compact the file after pruning"
    )
    return parser


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _cmd_demo(args: argparse.Namespace) -> int:
    from langgraph_retention.demo import run_demo

    ok = run_demo(args.db, keep_last=args.keep_last)
    print(f"demo {'passed' if ok else 'FAILED'}: database left at {args.db}")
    return EXIT_OK if ok else EXIT_FAILED


def _cmd_stats(args: argparse.Namespace) -> int:
    check_url(args.url)
    result = Stats()
    with open_saver(args.url) as saver:
        rows = iter_stats(saver, thread_ids=args.thread)
        for tid, ts in tqdm(
            rows,
            desc="threads",
            unit=" thr",
            disable=not sys.stderr.isatty(),
            file=sys.stderr,
            leave=False,
        ):
            result.add(tid, ts)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return EXIT_OK
    print(
        f"{result.total_threads} threads, {result.total_checkpoints} checkpoints, "
        f"{result.total_writes} writes, {_fmt_bytes(result.total_bytes)}"
    )
    largest = sorted(result.threads.items(), key=lambda kv: kv[1].checkpoints, reverse=True)
    for tid, ts in largest[: args.top]:
        newest = ts.newest.strftime("%Y-%m-%d %H:%M:%S") if ts.newest else "-"
        print(f"  {ts.checkpoints:6d} checkpoints  {_fmt_bytes(ts.bytes):>10}  {newest}  {tid}")
    if missing := [t for t in (args.thread or []) if t not in result.threads]:
        print(f"  no checkpoints for: {', '.join(missing)}")
    return EXIT_OK


def _print_report(report: PruneReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
        return
    verb = "would delete" if report.dry_run else "deleted"
    print(
        f"{report.threads_seen} threads: {verb} {report.deleted_checkpoints} checkpoints, "
        f"{report.deleted_writes} writes, {report.deleted_blobs} blobs "
        f"({_fmt_bytes(report.bytes_freed)}); kept {report.kept_checkpoints} checkpoints "
        f"in {report.elapsed_seconds:.2f}s"
    )
    for tid, err in report.errors.items():
        print(f"  FAILED {tid!r}: {err}", file=sys.stderr)


def _cmd_prune(args: argparse.Namespace) -> int:
    check_url(args.url)
    if args.vacuum and not args.url.startswith("sqlite:"):
        raise UsageError("--vacuum only applies to sqlite:/// URLs")
    policy = RetentionPolicy(keep_last=args.keep_last, keep_within=args.keep_within)
    with open_saver(args.url) as saver:
        if args.thread and len(args.thread) == 1:
            report = prune_thread(saver, args.thread[0], policy, dry_run=args.dry_run)
        else:
            with tqdm(
                desc="pruning",
                unit=" thr",
                disable=not sys.stderr.isatty(),
                file=sys.stderr,
                leave=False,
            ) as bar:
                report = sweep(
                    saver,
                    policy,
                    thread_ids=args.thread,
                    dry_run=args.dry_run,
                    batch_size=args.batch_size,
                    progress=lambda _r: bar.update(),
                )
        if args.vacuum and not args.dry_run:
            from langgraph_retention.backends.sqlite import SqliteBackend

            SqliteBackend(saver).vacuum()
    _print_report(report, args.json)
    return EXIT_OK if report.ok else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    commands: dict[str, Any] = {"demo": _cmd_demo, "stats": _cmd_stats, "prune": _cmd_prune}
    try:
        code: int = commands[args.command](args)
        return code
    except UsageError as exc:
        print(f"langgraph-retention: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RetentionError as exc:
        print(f"langgraph-retention: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a store that cannot be reached or read: one clear line
        logger.debug("command failed", exc_info=True)
        detail = " ".join(str(exc).split())  # drivers' messages span lines
        print(
            f"langgraph-retention: {args.command} failed: {type(exc).__name__}: {detail}",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
