"""Which pages one write transaction of a SQLite sweep rewrites, by B-tree and page kind.

Runs one batch of our sweep (the first `--batch` threads) or the floor on a copy of a
store with automatic WAL checkpoints off, then reads the page number of every frame in
the WAL and looks each up in `dbstat` of the untouched store. Every distinct page in the
WAL is written twice (WAL, then the checkpoint into the file) and fsynced: on a scattered
store, the cost of a transaction is about its distinct pages.

    python benchmarks/sqlite_pages.py STORE.db [--batch 100] [--floor] [--keep 5]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sqlite import FLOOR_SQL

WAL_HEADER = 32
FRAME_HEADER = 24

#: Each page's B-tree and kind (leaf, internal, overflow) in the untouched store.
PAGE_KINDS_SQL = "SELECT pageno, name, pagetype FROM dbstat"


def wal_pages(wal: Path, page_size: int) -> set[int]:
    """The distinct page numbers of every frame in a WAL file."""
    data = wal.read_bytes()
    pages = set()
    for off in range(WAL_HEADER, len(data) - FRAME_HEADER + 1, FRAME_HEADER + page_size):
        pages.add(struct.unpack(">I", data[off : off + 4])[0])
    return pages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("store", type=Path)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--keep", type=int, default=5)
    ap.add_argument("--floor", action="store_true", help="the floor's one transaction")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.store.parent) as scratch:
        run = Path(scratch) / "pages.db"
        shutil.copy(args.store, run)
        conn = sqlite3.connect(str(run), check_same_thread=False)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        if args.floor:
            conn.executescript("BEGIN IMMEDIATE;" + FLOOR_SQL.format(keep=args.keep) + "COMMIT;")
        else:
            from langgraph_retention import RetentionPolicy, sweep

            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT thread_id FROM checkpoints ORDER BY thread_id LIMIT ?",
                    (args.batch,),
                )
            ]
            policy = RetentionPolicy(keep_last=args.keep)
            sweep(SqliteSaver(conn), policy, thread_ids=ids, batch_size=args.batch)
        pages = wal_pages(Path(str(run) + "-wal"), page_size)
        conn.close()  # the last connection checkpoints and removes the WAL
    src = sqlite3.connect(str(args.store))
    kinds = {p: (name, kind) for p, name, kind in src.execute(PAGE_KINDS_SQL)}
    src.close()
    counts = collections.Counter(kinds.get(p, ("(new)", "")) for p in pages)
    who = "floor" if args.floor else f"one batch of {args.batch} threads"
    print(f"{args.store.name}, {who}: {len(pages)} distinct pages in the WAL")
    for (name, kind), n in counts.most_common():
        print(f"  {name:32s} {kind:9s} {n:8d}")


if __name__ == "__main__":
    main()
