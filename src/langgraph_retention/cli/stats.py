"""`langgraph-retention stats`: totals and the largest threads, streamed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator

from tqdm import tqdm

from langgraph_retention.engine import iter_stats
from langgraph_retention.report import ThreadStats, format_bytes, summarize

from ._common import EXIT_OK, EXIT_USAGE, add_url_arg, opened, positive_int, progress_enabled

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    st = sub.add_parser("stats", help="checkpoints, writes and bytes per thread")
    add_url_arg(st)
    st.add_argument("--thread", action="append", metavar="T", help="only this thread (repeatable)")
    st.add_argument("--json", action="store_true", help="print JSON (every thread, streamed)")
    st.add_argument(
        "--top",
        type=positive_int,
        default=20,
        metavar="N",
        help="list the N largest threads (default: %(default)s)",
    )


def _with_progress(rows: Iterable[tuple[str, ThreadStats]]) -> Iterator[tuple[str, ThreadStats]]:
    yield from tqdm(
        rows,
        desc="threads",
        unit=" thr",
        disable=not progress_enabled(),
        file=sys.stderr,
        leave=False,
    )


def _noting(
    rows: Iterable[tuple[str, ThreadStats]], wanted: set[str], found: set[str]
) -> Iterator[tuple[str, ThreadStats]]:
    """Pass rows through, noting which of the `wanted` thread ids came by."""
    for tid, ts in rows:
        if tid in wanted:
            found.add(tid)
        yield tid, ts


def _print_json(rows: Iterable[tuple[str, ThreadStats]]) -> None:
    """Write the JSON document as rows arrive (memory flat in the number of threads)."""
    totals = {"total_threads": 0, "total_checkpoints": 0, "total_writes": 0, "total_bytes": 0}
    out = sys.stdout
    out.write('{\n  "threads": {')
    for tid, ts in rows:
        out.write(("," if totals["total_threads"] else "") + "\n    ")
        out.write(f"{json.dumps(tid, ensure_ascii=False)}: {json.dumps(ts.to_dict())}")
        totals["total_threads"] += 1
        totals["total_checkpoints"] += ts.checkpoints
        totals["total_writes"] += ts.writes
        totals["total_bytes"] += ts.bytes
    out.write("\n  }")
    for key, value in totals.items():
        out.write(f',\n  "{key}": {value}')
    out.write("\n}\n")


def run(args: argparse.Namespace) -> int:
    wanted, found = set(args.thread or ()), set[str]()
    with opened(args.url) as saver:
        rows = _noting(_with_progress(iter_stats(saver, thread_ids=args.thread)), wanted, found)
        if args.json:
            _print_json(rows)
        else:
            summary = summarize(rows, args.top)
            print(summary.line())
            for tid, ts in summary.largest:
                newest = ts.newest.strftime("%Y-%m-%d %H:%M:%S") if ts.newest else "-"
                print(
                    f"  {ts.checkpoints:6d} checkpoints  {format_bytes(ts.bytes):>10}  "
                    f"{newest}  {tid}"
                )
    if missing := [t for t in args.thread or () if t not in found]:
        print(f"no checkpoints for: {', '.join(map(repr, missing))}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
