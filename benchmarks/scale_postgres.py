"""PostgreSQL at scale: ours, the raw floor and upstream `prune` on big, scattered stores.

Runs the real demo agent on `--seed-threads` threads once, then replicates them server-side
under new thread ids IN RANDOM ORDER (one thread's rows spread over the whole table, as in
production) up to each of `--sizes` threads, and on identical data (restored before each
contender) times:

- ours: `sweep` keeping `--keep`, in a fresh child process, so its peak RSS is the sweep's own;
- the floor: bench_postgres' one-statement raw SQL;
- upstream `saver.prune(keep_latest)`, at the smallest size only (too slow beyond);
- the put latency (median, p99) of an app writing to the same store, with and without our
  sweep running, and the time and peak RSS of the CLI's `stats --top 10` on the largest store.

    python benchmarks/scale_postgres.py [--sizes 200,2000,20000] [--checkpoints 60] [URL]

Run it under `flock /tmp/bench.lock`: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.*, benchmarks.*

from benchmarks.bench_postgres import TABLES, bench_database, build, floor, upstream

from langgraph_retention.demo import build_agent, chat

# Copies of the seed threads, `copy` numbering the replica, each table's rows shuffled.
REPLICATE_SQL = {
    "checkpoints": """
        INSERT INTO checkpoints
        SELECT 'r' || g || ':' || p.thread_id, p.checkpoint_ns, p.checkpoint_id,
               p.parent_checkpoint_id, p.type, p.checkpoint, p.metadata
        FROM pristine_checkpoints p CROSS JOIN generate_series(0, %(copies)s - 1) g
        ORDER BY random()""",
    "checkpoint_blobs": """
        INSERT INTO checkpoint_blobs
        SELECT 'r' || g || ':' || p.thread_id, p.checkpoint_ns, p.channel, p.version,
               p.type, p.blob
        FROM pristine_checkpoint_blobs p CROSS JOIN generate_series(0, %(copies)s - 1) g
        ORDER BY random()""",
    "checkpoint_writes": """
        INSERT INTO checkpoint_writes
        SELECT 'r' || g || ':' || p.thread_id, p.checkpoint_ns, p.checkpoint_id, p.task_id,
               p.idx, p.channel, p.type, p.blob, p.task_path
        FROM pristine_checkpoint_writes p CROSS JOIN generate_series(0, %(copies)s - 1) g
        ORDER BY random()""",
}

# Ours, in a child process: seconds and peak RSS (KiB on Linux) as JSON on stdout.
CHILD_SWEEP = """
import json, resource, sys, time
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph_retention import RetentionPolicy, sweep
with PostgresSaver.from_conn_string(sys.argv[1]) as saver:
    t = time.perf_counter()
    report = sweep(saver, RetentionPolicy(keep_last=int(sys.argv[2])))
    elapsed = time.perf_counter() - t
assert report.ok, report.errors
print(json.dumps({"seconds": elapsed, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "deleted": report.deleted_checkpoints}))
"""

CHILD_STATS = """
import contextlib, io, json, resource, sys, time
from langgraph_retention.cli import main
t = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(["stats", "--url", sys.argv[1], "--top", "10"])
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "rc": rc,
                  "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def sql(url: str, statement: str, params: Any = None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


def scalar(url: str, statement: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(statement).fetchone()
    assert row is not None
    return row[0]


def restore_scattered(url: str, copies: int) -> None:
    """The saver's tables: `copies` shuffled replicas of the seed, vacuumed, analyzed and
    checkpointed, so each contender starts on the same physical layout."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(TABLES))
        for table in TABLES:
            conn.execute(REPLICATE_SQL[table], {"copies": copies})
        for table in TABLES:
            conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute("CHECKPOINT")


def child(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def ours(url: str, keep: int) -> dict[str, Any]:
    return child(CHILD_SWEEP, url, str(keep))


def timed(fn: Any, url: str, keep: int) -> float:
    with PostgresSaver.from_conn_string(url) as saver:
        start = time.perf_counter()
        fn(saver, keep)
        return time.perf_counter() - start


def put_latencies(url: str, seconds: float | None, during: Any = None) -> list[float]:
    """Latencies of the app's checkpoint puts (one chat turn = 5 puts, timed per turn / 5)
    for `seconds`, or for as long as `during` (a thread) runs."""
    lat: list[float] = []
    with PostgresSaver.from_conn_string(url) as saver:
        graph = build_agent(saver)
        end = time.perf_counter() + (seconds or 0.0)
        i = 0
        while (during is not None and during.is_alive()) or (
            during is None and time.perf_counter() < end
        ):
            start = time.perf_counter()
            chat(graph, f"app:{i % 7}", 1)
            lat.append((time.perf_counter() - start) / 5)
            i += 1
    return lat


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url", nargs="?", help="postgresql:// URL (default: local or throwaway)")
    ap.add_argument("--sizes", default="200,2000,20000")
    ap.add_argument("--seed-threads", type=int, default=200)
    ap.add_argument("--checkpoints", type=int, default=60)
    ap.add_argument("--keep", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    rows = []
    with bench_database(args.url) as url:
        t0 = time.perf_counter()
        build(url, args.seed_threads, args.checkpoints)
        print(f"seed: {args.seed_threads} threads in {time.perf_counter() - t0:.1f}s", flush=True)
        for n, size in enumerate(sizes):
            copies = max(1, size // args.seed_threads)
            t0 = time.perf_counter()
            restore_scattered(url, copies)
            total = scalar(url, "SELECT count(*) FROM checkpoints")
            mb = scalar(url, "SELECT pg_database_size(current_database())") / 1e6
            print(
                f"size {size}: {total} checkpoints, {mb:.0f} MB, "
                f"built in {time.perf_counter() - t0:.1f}s",
                flush=True,
            )
            floor_s = timed(floor, url, args.keep)
            restore_scattered(url, copies)
            mine = ours(url, args.keep)
            up_s = None
            if n == 0:
                restore_scattered(url, copies)
                up_s = timed(upstream, url, args.keep)
            rows.append((size, total, floor_s, mine, up_s))
            print(f"  floor {floor_s:.2f}s, ours {mine}, upstream {up_s}", flush=True)
        # On the largest store: the app's put latency with and without our sweep, and stats.
        restore_scattered(url, copies)
        idle = put_latencies(url, 5.0)
        sweeper = threading.Thread(target=ours, args=(url, args.keep))
        sweeper.start()
        busy = put_latencies(url, None, during=sweeper)
        sweeper.join()
        restore_scattered(url, copies)
        st = child(CHILD_STATS, url)

    print(f"\nPostgreSQL at scale, scattered layout, ~{args.checkpoints} checkpoints/thread,")
    print(f"keep {args.keep}; ours in a fresh process (peak RSS is the sweep's own)")
    print(
        f"{'threads':>8} {'checkpoints':>12} {'floor s':>8} {'ours s':>8} {'x floor':>8} "
        f"{'ours s/1k cp':>13} {'ours RSS MB':>12} {'upstream s':>11}"
    )
    for size, total, floor_s, mine, up_s in rows:
        print(
            f"{size:8d} {total:12d} {floor_s:8.2f} {mine['seconds']:8.2f} "
            f"{mine['seconds'] / floor_s:8.2f} {1000 * mine['seconds'] / total:13.4f} "
            f"{mine['rss_kib'] / 1024:12.0f} {'' if up_s is None else f'{up_s:.2f}':>11}"
        )
    print(
        f"\nput latency on the largest store (ms): idle median {1000 * statistics.median(idle):.1f}"
        f" p99 {1000 * pct(idle, 0.99):.1f}; during our sweep median "
        f"{1000 * statistics.median(busy):.1f} p99 {1000 * pct(busy, 0.99):.1f} "
        f"({len(busy)} turns)"
    )
    print(
        f"stats --top 10 on the largest store: {st['seconds']:.2f}s, "
        f"peak RSS {st['rss_kib'] / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
