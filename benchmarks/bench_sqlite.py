"""SQLite: the seed's way vs langgraph-retention vs a raw set-based SQL floor, side by side.

Builds `--threads` x ~`--checkpoints` checkpoints once with the real demo agent, then
runs every contender on its own copy of that file (identical data), best of `--repeat`.

    python benchmarks/bench_sqlite.py [--threads 200] [--checkpoints 60] [--keep 5]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver

from langgraph_retention import RetentionPolicy, sweep
from langgraph_retention.demo import build_agent, chat
from richest import richest, richest_uncapped

# The floor: one statement pair over the whole store, newest `keep` per (thread, ns).
FLOOR_SQL = """
CREATE TEMP TABLE doomed AS
SELECT thread_id, checkpoint_ns, checkpoint_id FROM (
    SELECT thread_id, checkpoint_ns, checkpoint_id,
           row_number() OVER (PARTITION BY thread_id, checkpoint_ns
                              ORDER BY checkpoint_id DESC) AS rn
    FROM checkpoints)
WHERE rn > {keep};
DELETE FROM writes WHERE (thread_id, checkpoint_ns, checkpoint_id) IN
    (SELECT thread_id, checkpoint_ns, checkpoint_id FROM doomed);
DELETE FROM checkpoints WHERE (thread_id, checkpoint_ns, checkpoint_id) IN
    (SELECT thread_id, checkpoint_ns, checkpoint_id FROM doomed);
DROP TABLE doomed;
"""


def build(path: Path, threads: int, checkpoints: int) -> None:
    conn = sqlite3.connect(str(path), check_same_thread=False)
    graph = build_agent(SqliteSaver(conn))
    turns = max(1, checkpoints // 5)  # the agent writes 5 checkpoints per user turn
    for i in range(threads):
        chat(graph, f"user{i % 17}:{i:05d}", turns)
    conn.close()


def seed_way(path: Path, keep: int) -> None:
    """The seed's cleanup: list every checkpoint, delete the old ones one by one.

    LangGraph has no `checkpointer.delete()`; its closest real form is one DELETE per
    checkpoint, committed like every saver call. Writes are left behind, as in the seed.
    """
    conn = sqlite3.connect(str(path), check_same_thread=False)
    saver = SqliteSaver(conn)
    thread_ids = [r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")]
    for tid in thread_ids:
        for cp in list(saver.list({"configurable": {"thread_id": tid}}))[keep:]:
            c = cp.config["configurable"]
            conn.execute(
                "DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
                "AND checkpoint_id = ?",
                (tid, c["checkpoint_ns"], c["checkpoint_id"]),
            )
            conn.commit()
    conn.close()


def ours(path: Path, keep: int) -> None:
    conn = sqlite3.connect(str(path), check_same_thread=False)
    report = sweep(SqliteSaver(conn), RetentionPolicy(keep_last=keep))
    assert report.ok, report.errors
    conn.close()


def ours_richest(path: Path, keep: int) -> None:
    conn = sqlite3.connect(str(path), check_same_thread=False)
    report = sweep(SqliteSaver(conn), richest(keep))
    assert report.ok, report.errors
    conn.close()


def ours_richest_uncapped(path: Path, keep: int) -> None:
    conn = sqlite3.connect(str(path), check_same_thread=False)
    report = sweep(SqliteSaver(conn), richest_uncapped(keep))
    assert report.ok, report.errors
    conn.close()


def floor(path: Path, keep: int) -> None:
    conn = sqlite3.connect(str(path))
    conn.executescript("BEGIN IMMEDIATE;" + FLOOR_SQL.format(keep=keep) + "COMMIT;")
    conn.close()


def leftovers(path: Path) -> tuple[int, int]:
    """(checkpoints, orphaned writes) left in the store."""
    conn = sqlite3.connect(str(path))
    n = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    orphans = conn.execute(
        "SELECT count(*) FROM writes w WHERE NOT EXISTS (SELECT 1 FROM checkpoints c "
        "WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns "
        "AND c.checkpoint_id = w.checkpoint_id)"
    ).fetchone()[0]
    conn.close()
    return int(n), int(orphans)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=200)
    ap.add_argument("--checkpoints", type=int, default=60)
    ap.add_argument("--keep", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pristine = Path(tmp) / "pristine.db"
        t0 = time.perf_counter()
        build(pristine, args.threads, args.checkpoints)
        total, _ = leftovers(pristine)
        print(
            f"built {total} checkpoints in {args.threads} threads "
            f"in {time.perf_counter() - t0:.1f}s (real agent, SqliteSaver)"
        )

        contenders: dict[str, Callable[[Path, int], None]] = {
            "seed's way (list + delete one by one)": seed_way,
            "raw set-based SQL (floor)": floor,
            "langgraph-retention sweep": ours,
            "langgraph-retention sweep, richest policy": ours_richest,
            "richest policy without max_bytes": ours_richest_uncapped,
        }
        best: dict[str, float] = {}
        left: dict[str, tuple[int, int]] = {}
        for _ in range(args.repeat):
            for name, fn in contenders.items():  # interleaved rounds: noise hits all alike
                copy = Path(tmp) / "run.db"
                for suffix in ("", "-wal", "-shm"):
                    Path(str(copy) + suffix).unlink(missing_ok=True)
                shutil.copy(pristine, copy)
                start = time.perf_counter()
                fn(copy, args.keep)
                elapsed = time.perf_counter() - start
                best[name] = min(best.get(name, elapsed), elapsed)
                left[name] = leftovers(copy)

    floor_s = best["raw set-based SQL (floor)"]
    ours_s = best["langgraph-retention sweep"]
    print(
        f"\nSQLite, {args.threads} threads x ~{args.checkpoints} checkpoints, keep {args.keep}"
        f" (best of {args.repeat})"
    )
    print(
        f"{'way':40} {'seconds':>9} {'x floor':>8} {'x ours':>8} {'left':>6} {'orphan writes':>14}"
    )
    for name, secs in best.items():
        n, orphans = left[name]
        print(
            f"{name:40} {secs:9.3f} {secs / floor_s:8.2f} {secs / ours_s:8.2f} {n:6d} {orphans:14d}"
        )
    print(
        f"\nours / floor = {ours_s / floor_s:.2f} (target <= 1.5); "
        f"seed / ours = {best[next(iter(best))] / ours_s:.0f}x (target >= 50x)"
    )
    rich_s = best["langgraph-retention sweep, richest policy"]
    uncapped_s = best["richest policy without max_bytes"]
    print(
        f"richest policy / keep-last = {rich_s / ours_s:.3f} (target < 1.10); "
        f"without max_bytes {uncapped_s / ours_s:.3f}"
    )


if __name__ == "__main__":
    main()
