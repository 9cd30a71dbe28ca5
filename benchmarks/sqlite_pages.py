"""Which pages a SQLite sweep writes, by B-tree and page kind.

Runs our sweep of the first `--batch` threads (or, with `--whole`, of every thread) or
the floor on a copy of a store with automatic WAL checkpoints off, then reads the page
number of every frame in the WAL and looks each up in `dbstat` of the untouched store.
Each frame is a page written to the WAL and (by the checkpoint after its commit) into
the file: a page rewritten by several transactions has a frame in each. On a scattered
store, a sweep's cost is about its frames.

    python benchmarks/sqlite_pages.py STORE.db [--batch 100 | --whole] [--floor] [--keep 5]
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


def wal_frames(wal: Path, page_size: int) -> collections.Counter[int]:
    """How many frames of a WAL file hold each page."""
    frames: collections.Counter[int] = collections.Counter()
    with wal.open("rb") as f:
        f.seek(WAL_HEADER)
        while header := f.read(FRAME_HEADER):
            if len(header) < FRAME_HEADER:
                break
            frames[struct.unpack(">I", header[:4])[0]] += 1
            f.seek(page_size, 1)
    return frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("store", type=Path)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--keep", type=int, default=5)
    ap.add_argument("--whole", action="store_true", help="our sweep of every thread")
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
            if args.whole:
                sweep(SqliteSaver(conn), policy, batch_size=args.batch)
            else:
                sweep(SqliteSaver(conn), policy, thread_ids=ids, batch_size=args.batch)
        frames = wal_frames(Path(str(run) + "-wal"), page_size)
        conn.close()  # the last connection checkpoints and removes the WAL
    src = sqlite3.connect(str(args.store))
    kinds = {p: (name, kind) for p, name, kind in src.execute(PAGE_KINDS_SQL)}
    src.close()
    pages: collections.Counter[tuple[str, str]] = collections.Counter()
    written: collections.Counter[tuple[str, str]] = collections.Counter()
    for p, n in frames.items():
        pages[kinds.get(p, ("(new)", ""))] += 1
        written[kinds.get(p, ("(new)", ""))] += n
    if args.floor:
        who = "floor"
    else:
        who = "our whole sweep" if args.whole else f"our sweep of {args.batch} threads"
    print(f"{args.store.name}, {who}: {sum(frames.values())} frames, {len(frames)} distinct pages")
    print(f"  {'b-tree':32s} {'kind':9s} {'pages':>8s} {'frames':>8s}")
    for key, n in written.most_common():
        print(f"  {key[0]:32s} {key[1]:9s} {pages[key]:8d} {n:8d}")


if __name__ == "__main__":
    main()
