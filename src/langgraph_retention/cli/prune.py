"""`langgraph-retention prune`: one thread, some threads, or every thread (`--all`)."""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from langgraph_retention.engine import (
    DEFAULT_BATCH_SIZE,
    can_compact,
    compact,
    iter_stats,
    prune_thread,
    sweep,
)
from langgraph_retention.policy import checkpoint_time
from langgraph_retention.report import PruneReport

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_policy_args,
    add_url_arg,
    opened,
    policy_from_args,
    positive_int,
    progress_enabled,
    settings_from_args,
)

__all__ = ["add_parser", "print_report", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pr = sub.add_parser("prune", help="keep the newest N checkpoints per thread, delete the rest")
    add_url_arg(pr)
    add_policy_args(pr)
    which = pr.add_mutually_exclusive_group(required=True)
    which.add_argument("--thread", action="append", metavar="T", help="this thread (repeatable)")
    which.add_argument(
        "--all",
        action="store_true",
        help="every thread in the store, holding the store's sweep lock (exit 3 when "
        "another sweep holds it)",
    )
    pr.add_argument("--dry-run", action="store_true", help="report what would go; delete nothing")
    pr.add_argument(
        "--explain",
        action="store_true",
        help="list every checkpoint, kept or deleted, with each rule that kept it "
        "(a table; with --json, in the report)",
    )
    pr.add_argument("--json", action="store_true", help="print the report as JSON")
    pr.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"threads per transaction (default: the store's own, {DEFAULT_BATCH_SIZE} on "
        "SQLite and Redis, 1000 on PostgreSQL)",
    )
    pr.add_argument(
        "--vacuum", action="store_true", help="SQLite only: compact the file after pruning"
    )


def print_report(report: PruneReport, as_json: bool) -> None:
    """The report on stdout (one line, or JSON); each failed thread on stderr."""
    if as_json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        print_decisions(report)
        print(report.summary())
        for tid, reason in report.expired.items():
            print(f"  {'would expire' if report.dry_run else 'expired'} {tid!r}: {reason}")
        for tid, warning in report.warnings.items():
            print(f"  WARNING {tid!r}: {warning}", file=sys.stderr)
    for tid, err in report.errors.items():
        print(f"  FAILED {tid!r}: {err}", file=sys.stderr)


def print_decisions(report: PruneReport) -> None:
    """Every explained checkpoint, a line each, thread by thread (restic's `forget`)."""
    for tid, decisions in report.decisions.items():
        kept = sum(d.kept for d in decisions)
        gone = "to delete" if report.dry_run else "deleted"
        print(f"thread {tid!r}: {kept} kept, {len(decisions) - kept} {gone}")
        print(f"  {'namespace':<12} {'checkpoint':<36} {'created (UTC)':<19}  {'':<6} reasons")
        for d in decisions:
            created = checkpoint_time(d.checkpoint_id)
            when = created.strftime("%Y-%m-%d %H:%M:%S") if created else "-"
            verdict = "keep" if d.kept else "delete"
            ns = d.checkpoint_ns or "''"
            print(
                f"  {ns[:12]:<12} {d.checkpoint_id:<36} {when:<19}  {verdict:<6} "
                f"{', '.join(d.reasons) or '-'}"
            )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    policy = policy_from_args(args, settings)
    with opened(args.url) as saver:
        if args.vacuum and not can_compact(saver):
            print("langgraph-retention: error: --vacuum only applies to SQLite", file=sys.stderr)
            return EXIT_USAGE
        if args.thread:
            found = {tid for tid, _ in iter_stats(saver, thread_ids=args.thread)}
            if missing := [t for t in args.thread if t not in found]:
                print(
                    f"langgraph-retention: error: no checkpoints for thread "
                    f"{', '.join(map(repr, missing))}; nothing deleted",
                    file=sys.stderr,
                )
                return EXIT_USAGE
        if args.thread and len(args.thread) == 1:
            report = prune_thread(
                saver, args.thread[0], policy, dry_run=args.dry_run, explain=args.explain
            )
        else:
            with tqdm(
                desc="pruning",
                unit=" thr",
                disable=not progress_enabled(),
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
                    explain=args.explain,
                    # One sweeper at a time; a dry run deletes nothing and needs no lock.
                    exclusive=args.all and not args.dry_run,
                )
        if args.vacuum and not args.dry_run:
            compact(saver)
    print_report(report, args.json)
    return EXIT_OK if report.ok else EXIT_FAILED
