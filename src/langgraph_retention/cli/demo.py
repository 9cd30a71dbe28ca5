"""`langgraph-retention demo`: a real agent's SQLite store, pruned and verified."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ._common import EXIT_FAILED, EXIT_OK, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="build a SQLite store from a real agent, prune it, verify")
    demo.add_argument(
        "--db",
        type=Path,
        default=Path(tempfile.gettempdir()) / "langgraph-retention-demo.db",
        help="SQLite file to create (default: %(default)s)",
    )
    demo.add_argument("--keep-last", type=positive_int, default=5, metavar="N")


def run(args: argparse.Namespace) -> int:
    from langgraph_retention.demo import run_demo

    ok = run_demo(args.db, keep_last=args.keep_last)
    print(f"demo {'passed' if ok else 'FAILED'}: database left at {args.db}")
    return EXIT_OK if ok else EXIT_FAILED
