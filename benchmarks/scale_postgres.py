"""PostgreSQL at scale: ours, the raw floor and upstream `prune` on big, scattered stores.

Runs the real demo agent on `--seed-threads` threads once, then for each of `--sizes` builds
ONE scattered copy of the store server-side (`CREATE TABLE AS`, the seed's rows under new
thread ids IN RANDOM ORDER: one thread's rows spread over the whole table, as in
production) and, before every contender, restores the saver's tables from it (TRUNCATE,
INSERT ... SELECT in that order, VACUUM ANALYZE, CHECKPOINT), so each starts on the same
physical layout. Times:

- ours: `sweep` keeping `--keep` at each of `--batch-sizes`, in a fresh child process, so
  its peak RSS is the sweep's own; with the time each statement took over the sweep;
- the floor: bench_postgres' one-statement raw SQL;
- upstream `saver.prune(keep_latest)`, at `--upstream-sizes` only (the smallest by default:
  it is too slow beyond);
- the put latency (median, p99) of an app writing to the same store, with and without our
  sweep running, and the time and peak RSS of the CLI's `stats --top 10` on the largest store.

    python benchmarks/scale_postgres.py [--sizes 200,2000,20000] [--batch-sizes 100,1000] [URL]

Run it under `flock /tmp/bench.lock`: it takes about 20 minutes with 20,000 threads
(`--rebuild-indexes`: faster restores, but compact indexes a grown store does not have).
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

# One scattered copy per size: `copies` replicas of the seed threads (`copy` numbering the
# replica in the new thread id), each table's rows shuffled. Built once per size; every
# contender's store is restored from it in that order.
SCATTER_SQL = {
    "checkpoints": """
        CREATE TABLE scattered_checkpoints AS
        SELECT 'r' || g || ':' || p.thread_id AS thread_id, p.checkpoint_ns, p.checkpoint_id,
               p.parent_checkpoint_id, p.type, p.checkpoint, p.metadata
        FROM pristine_checkpoints p CROSS JOIN generate_series(0, %(copies)s - 1) g
        ORDER BY random()""",
    "checkpoint_blobs": """
        CREATE TABLE scattered_checkpoint_blobs AS
        SELECT 'r' || g || ':' || p.thread_id AS thread_id, p.checkpoint_ns, p.channel,
               p.version, p.type, p.blob
        FROM pristine_checkpoint_blobs p CROSS JOIN generate_series(0, %(copies)s - 1) g
        ORDER BY random()""",
    "checkpoint_writes": """
        CREATE TABLE scattered_checkpoint_writes AS
        SELECT 'r' || g || ':' || p.thread_id AS thread_id, p.checkpoint_ns, p.checkpoint_id,
               p.task_id, p.idx, p.channel, p.type, p.blob, p.task_path
        FROM pristine_checkpoint_writes p CROSS JOIN generate_series(0, %(copies)s - 1) g
        ORDER BY random()""",
}

# The saver's indexes and the constraint each backs (None: a plain index), to drop before
# the bulk INSERT and rebuild after it with --rebuild-indexes: a sorted build instead of a
# million random inserts halves the restore.
INDEXES_SQL = """
SELECT i.tablename, i.indexname, i.indexdef, c.conname, c.contype
FROM pg_indexes i
LEFT JOIN pg_constraint c ON c.conindid = format('%%I.%%I', i.schemaname, i.indexname)::regclass
WHERE i.schemaname = current_schema() AND i.tablename = ANY(%(tables)s)
"""

# Peak RSS of this process in KiB: VmHWM, its own memory's high-water mark (getrusage's
# ru_maxrss is not: Linux carries the parent's over fork and exec, so every child started
# from this ~100 MB benchmark reported at least the benchmark's size).
PEAK_RSS = """
def peak_rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
"""

# Ours, in a child process: seconds, peak RSS (KiB) and the seconds each of the backend's
# statements took over the whole sweep (by constant name), as JSON on stdout.
CHILD_SWEEP = (
    PEAK_RSS
    + """
import collections, json, sys, time
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph_retention import RetentionPolicy, sweep
import langgraph_retention.backends.postgres.backend as backend
import langgraph_retention.backends.postgres.capped as capped
import langgraph_retention.backends.postgres.stage as stage
import langgraph_retention.backends.postgres.staging as staging
import langgraph_retention.backends.postgres.statements as statements

names = {
    v: k
    for module in (statements, staging, stage, capped)
    for k, v in vars(module).items()
    if k.endswith("_SQL") and isinstance(v, str)
}
spent = collections.Counter()
execute = backend.Cursor.execute

def timed_execute(self, query, params=None, **kw):
    t = time.perf_counter()
    try:
        return execute(self, query, params, **kw)
    finally:
        spent[names.get(query, "other")] += time.perf_counter() - t

backend.Cursor.execute = timed_execute
# argv[3]: how to sweep: "auto" (the store's own choice and batch size), "N" (own choice,
# batch N), "staged:N" or "batched:N" (staging forced on or off; N may be "auto").
mode, _, size = sys.argv[3].rpartition(":") if ":" in sys.argv[3] else ("", "", sys.argv[3])
if mode:
    stage.STAGE_ABOVE_BUFFERS = -1 if mode == "staged" else 10**12
with PostgresSaver.from_conn_string(sys.argv[1]) as saver:
    t = time.perf_counter()
    batch_size = None if size == "auto" else int(size)
    report = sweep(saver, RetentionPolicy(keep_last=int(sys.argv[2])), batch_size=batch_size)
    elapsed = time.perf_counter() - t
assert report.ok, report.errors
print(json.dumps({"seconds": elapsed, "rss_kib": peak_rss_kib(),
                  "deleted": report.deleted_checkpoints, "statements": spent}))
"""
)

CHILD_STATS = (
    PEAK_RSS
    + """
import contextlib, io, json, sys, time
from langgraph_retention.cli import main
t = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(["stats", "--url", sys.argv[1], "--top", "10"])
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "rc": rc, "rss_kib": peak_rss_kib()}))
"""
)


def scalar(url: str, statement: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(statement).fetchone()
    assert row is not None
    return row[0]


def scatter(url: str, copies: int) -> None:
    """This size's scattered copy of the seed, replacing the previous size's."""
    with psycopg.connect(url, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"DROP TABLE IF EXISTS scattered_{table}")
            conn.execute(SCATTER_SQL[table], {"copies": copies})


def restore(url: str, rebuild_indexes: bool = False) -> None:
    """The saver's tables as the scattered copy, row for row in its order, vacuumed,
    analyzed and checkpointed: every contender starts on the same physical layout.

    The indexes are maintained row by row as the rows go in, in random key order, as an
    app's inserts grow them (leaves part full, in no physical order); `rebuild_indexes`
    drops them first and rebuilds them sorted after (half the restore time, but compact
    indexes a grown store does not have; the timings came out within noise of these)."""
    with psycopg.connect(url, autocommit=True) as conn:
        indexes = conn.execute(INDEXES_SQL, {"tables": list(TABLES)}).fetchall()
        conn.execute("TRUNCATE " + ", ".join(TABLES))
        if not rebuild_indexes:
            indexes = []
        for table, name, _definition, constraint, _kind in indexes:
            if constraint is not None:
                conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{constraint}"')
            else:
                conn.execute(f'DROP INDEX "{name}"')
        for table in TABLES:
            conn.execute(f"INSERT INTO {table} SELECT * FROM scattered_{table}")
        for table, _name, definition, constraint, kind in indexes:
            if constraint is None:
                conn.execute(definition)
            else:
                assert kind == "p", f"unexpected constraint {constraint} ({kind})"
                columns = definition[definition.index("(") :]
                conn.execute(
                    f'ALTER TABLE {table} ADD CONSTRAINT "{constraint}" PRIMARY KEY {columns}'
                )
        for table in TABLES:
            conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute("CHECKPOINT")


def child(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def ours(url: str, keep: int, how: str) -> dict[str, Any]:
    return child(CHILD_SWEEP, url, str(keep), how)


# The server's WAL position and checkpoints so far: a contender's WAL bytes and the
# checkpoints it set off (each makes the next change to every page log the whole page).
WAL_SQL = """
SELECT pg_current_wal_lsn(), checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter
"""


def wal_since(url: str, before: tuple[str, int] | None = None) -> Any:
    """The WAL position now, or (MB written, checkpoints) since `before`."""
    with psycopg.connect(url, autocommit=True) as conn:
        lsn, checkpoints = conn.execute(WAL_SQL).fetchone() or ("0/0", 0)
        if before is None:
            return lsn, checkpoints
        row = conn.execute("SELECT pg_wal_lsn_diff(%s, %s)::bigint", (lsn, before[0])).fetchone()
    assert row is not None
    return f"{row[0] / 1e6:.0f} MB WAL, {checkpoints - before[1]} checkpoints"


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


def ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url", nargs="?", help="postgresql:// URL (default: local or throwaway)")
    ap.add_argument("--sizes", default="200,2000,20000")
    ap.add_argument(
        "--batch-sizes",
        default="auto",
        help="ours each of these ways: auto (the store's choice), N (batch N), "
        "staged:N / batched:N (staging forced on / off; N may be auto)",
    )
    ap.add_argument("--upstream-sizes", default=None, help="default: the smallest size")
    ap.add_argument("--seed-threads", type=int, default=200)
    ap.add_argument("--checkpoints", type=int, default=60)
    ap.add_argument("--keep", type=int, default=5)
    ap.add_argument("--latency-batch", default=None, help="default: the first way")
    ap.add_argument(
        "--rebuild-indexes", action="store_true", help="faster restores, compact indexes"
    )
    ap.add_argument(
        "--skip-extras", action="store_true", help="no put latency, no stats, no summary"
    )
    args = ap.parse_args()
    sizes, batches = ints(args.sizes), args.batch_sizes.split(",")
    upstream_sizes = ints(args.upstream_sizes) if args.upstream_sizes is not None else sizes[:1]
    latency_batch = args.latency_batch or batches[0]

    rows = []
    with bench_database(args.url) as url:
        t0 = time.perf_counter()
        build(url, args.seed_threads, args.checkpoints)
        print(f"seed: {args.seed_threads} threads in {time.perf_counter() - t0:.1f}s", flush=True)
        for size in sizes:
            copies = max(1, size // args.seed_threads)
            t0 = time.perf_counter()
            scatter(url, copies)
            t1 = time.perf_counter()
            restore(url, args.rebuild_indexes)
            total = scalar(url, "SELECT count(*) FROM checkpoints")
            mb = scalar(
                url,
                "SELECT sum(pg_total_relation_size(t))::bigint FROM unnest("
                "ARRAY['checkpoints', 'checkpoint_blobs', 'checkpoint_writes']) t",
            )
            print(
                f"size {size}: {total} checkpoints, {mb / 1e6:.0f} MB, scattered copy in "
                f"{t1 - t0:.1f}s, restored in {time.perf_counter() - t1:.1f}s",
                flush=True,
            )
            before = wal_since(url)
            floor_s = timed(floor, url, args.keep)
            print(f"  floor {floor_s:.2f}s ({wal_since(url, before)})", flush=True)
            mine = {}
            for batch in batches:
                restore(url, args.rebuild_indexes)
                before = wal_since(url)
                mine[batch] = ours(url, args.keep, batch)
                print(
                    f"  ours (batch {batch}) {mine[batch]} ({wal_since(url, before)})", flush=True
                )
            up_s = None
            if size in upstream_sizes:
                restore(url, args.rebuild_indexes)
                up_s = timed(upstream, url, args.keep)
                print(f"  upstream {up_s:.2f}s", flush=True)
            rows.append((size, total, floor_s, mine, up_s))
        if args.skip_extras:
            return
        # On the largest store: the app's put latency with and without our sweep, and stats.
        restore(url, args.rebuild_indexes)
        idle = put_latencies(url, 10.0)
        sweeper = threading.Thread(target=ours, args=(url, args.keep, latency_batch))
        sweeper.start()
        busy = put_latencies(url, None, during=sweeper)
        sweeper.join()
        restore(url, args.rebuild_indexes)
        st = child(CHILD_STATS, url)

    print(f"\nPostgreSQL at scale, scattered layout, ~{args.checkpoints} checkpoints/thread,")
    print(f"keep {args.keep}; ours in a fresh process (peak RSS is the sweep's own)")
    print(
        f"{'threads':>8} {'checkpoints':>12} {'floor s':>8} {'way':>12} {'ours s':>8} "
        f"{'x floor':>8} {'ms/1k cp':>9} {'RSS MB':>7} {'upstream s':>11}"
    )
    for size, total, floor_s, mine, up_s in rows:
        for batch, m in mine.items():
            print(
                f"{size:8d} {total:12d} {floor_s:8.2f} {batch:>12} {m['seconds']:8.2f} "
                f"{m['seconds'] / floor_s:8.2f} {1e6 * m['seconds'] / total:9.1f} "
                f"{m['rss_kib'] / 1024:7.0f} {'' if up_s is None else f'{up_s:.2f}':>11}"
            )
    print("\nours, seconds per statement over the whole sweep:")
    for size, _total, _floor_s, mine, _up_s in rows:
        for batch, m in mine.items():
            spent = sorted(m["statements"].items(), key=lambda kv: -kv[1])
            print(
                f"  {size} threads, batch {batch}: " + ", ".join(f"{k} {v:.2f}" for k, v in spent)
            )
    print(
        f"\nput latency on the largest store (ms): idle median {1000 * statistics.median(idle):.1f}"
        f" p99 {1000 * pct(idle, 0.99):.1f} ({len(idle)} turns); during our sweep (batch "
        f"{latency_batch}) median {1000 * statistics.median(busy):.1f} p99 "
        f"{1000 * pct(busy, 0.99):.1f} ({len(busy)} turns)"
    )
    print(
        f"stats --top 10 on the largest store: {st['seconds']:.2f}s, "
        f"peak RSS {st['rss_kib'] / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
