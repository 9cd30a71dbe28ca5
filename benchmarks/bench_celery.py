"""PostgreSQL fleet sweep: one in-process `sweep` against the Celery tasks on 2 workers.

Builds `--base` threads x ~`--checkpoints` checkpoints with the real demo agent through
`PostgresSaver` (as bench_postgres.py does), replicates them server-side under new thread
ids (INSERT ... SELECT) up to `--threads`, and keeps a pristine copy. Then, restoring the
store before every run, it times one in-process `sweep(saver, policy, exclusive=True)`
against the fleet sweep (`run_sweep(...).get()`: the sweep task takes the store's lock,
sends shards, a `celery worker --pool prefork -c N` prunes them, the fold returns one
report), for each `--shard-size`. Rounds are interleaved; the best of `--repeat` counts.

    python benchmarks/bench_celery.py [--threads 2000] [--base 200] [--checkpoints 60]
        [--keep 5] [--concurrency 2] [--shard-size N ...] [URL]

The broker and result backend are a throwaway Valkey on a free port (as the tests start
it); the database comes from URL, or the local server, or a throwaway cluster.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for bench_postgres

from tests.celery_app import Worker, broker_url, celery_worker
from tests.fixtures_redis import redis_stack_server

from bench_postgres import TABLES, bench_database, build, leftovers, restore
from langgraph_retention import RetentionPolicy, sweep

#: Where copies' thread ids differ from their original's.
COPY_MARK = "/copy"


def replicate(url: str, copies: int) -> None:
    """Add `copies` copies of every pristine thread under new ids (`<id>/copy<k>`), in the
    pristine tables; `restore` then puts them all in the saver's tables."""
    if copies < 1:
        return
    with psycopg.connect(url, autocommit=True) as conn:
        for table in TABLES:
            rows = conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s "
                "ORDER BY ordinal_position",
                (f"pristine_{table}",),
            ).fetchall()
            columns = [r[0] for r in rows]
            select = ", ".join(
                f"t.thread_id || '{COPY_MARK}' || g" if c == "thread_id" else f"t.{c}"
                for c in columns
            )
            conn.execute(
                f"INSERT INTO pristine_{table} SELECT {select} "
                f"FROM pristine_{table} t CROSS JOIN generate_series(1, {copies}) g"
            )


def in_process(url: str, keep: int, _worker: Worker, _shard_size: int) -> dict[str, Any]:
    with PostgresSaver.from_conn_string(url) as saver:
        start = time.perf_counter()
        report = sweep(saver, RetentionPolicy(keep_last=keep), exclusive=True)
        elapsed = time.perf_counter() - start
    assert report.ok, report.errors
    return {
        "seconds": elapsed,
        "threads": report.threads_seen,
        "deleted": report.deleted_checkpoints,
    }


def fleet(url: str, keep: int, worker: Worker, shard_size: int) -> dict[str, Any]:
    tasks = worker.tasks["postgres"]
    start = time.perf_counter()
    report = tasks.run_sweep({"keep_last": keep}, shard_size=shard_size).get(timeout=3600)
    elapsed = time.perf_counter() - start
    assert report["ok"], (report["errors"], report["failed_shards"], report["skipped"])
    return {"seconds": elapsed, "threads": report["threads_seen"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url", nargs="?", help="postgresql:// URL (default: local or throwaway)")
    ap.add_argument("--threads", type=int, default=2000)
    ap.add_argument("--base", type=int, default=200, help="threads the real agent writes")
    ap.add_argument("--checkpoints", type=int, default=60)
    ap.add_argument("--keep", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=2, help="worker processes")
    ap.add_argument("--shard-size", type=int, action="append", dest="shard_sizes")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.threads % args.base:
        ap.error("--threads must be a multiple of --base")
    shard_sizes = args.shard_sizes or [100, 250, 500]

    with bench_database(args.url) as url, redis_stack_server() as redis_url:
        t0 = time.perf_counter()
        build(url, args.base, args.checkpoints)
        replicate(url, args.threads // args.base - 1)
        restore(url)
        built = leftovers(url)
        print(
            f"built {built['checkpoints']} checkpoints in {args.threads} threads in "
            f"{time.perf_counter() - t0:.1f}s ({args.base} by the real agent, the rest copied)"
        )
        contenders: dict[str, tuple[Callable[..., dict[str, Any]], int]] = {
            "in-process sweep (1 process)": (in_process, 0)
        }
        for size in shard_sizes:
            name = f"fleet sweep, {args.concurrency} workers, shards of {size}"
            contenders[name] = (fleet, size)

        with tempfile.TemporaryDirectory(prefix="lgr-bench-celery-") as tmp:
            log = Path(tmp) / "worker.log"
            stores = {"postgres": url}
            with celery_worker(
                broker_url(redis_url), stores, log, concurrency=args.concurrency
            ) as worker:
                # Warm up: every worker process opens its store (a dry run deletes nothing).
                worker.tasks["postgres"].run_sweep(
                    {"keep_last": args.keep}, shard_size=25, dry_run=True
                ).get(timeout=600)
                best: dict[str, float] = {}
                runs: dict[str, list[float]] = {n: [] for n in contenders}
                left: dict[str, dict[str, Any]] = {}
                for _ in range(args.repeat):
                    for name, (fn, size) in contenders.items():  # interleaved rounds
                        restore(url)
                        out = fn(url, args.keep, worker, size)
                        assert out["threads"] == args.threads, out
                        runs[name].append(out["seconds"])
                        best[name] = min(best.get(name, out["seconds"]), out["seconds"])
                        left[name] = leftovers(url)

    base_s = best["in-process sweep (1 process)"]
    print(
        f"\nPostgreSQL, {args.threads} threads x ~{args.checkpoints} checkpoints, keep "
        f"{args.keep}; best of {args.repeat} (all runs in brackets)"
    )
    print(
        f"{'way':44} {'seconds':>8} {'speedup':>8} {'left':>7} {'orphan writes':>14} "
        f"{'orphan blobs':>13}  runs"
    )
    for name, secs in best.items():
        lo = left[name]
        print(
            f"{name:44} {secs:8.3f} {base_s / secs:7.2f}x {lo['checkpoints']:7d} "
            f"{lo['orphan_writes']:14d} {lo['orphan_blobs']:13d}  "
            f"[{', '.join(f'{s:.2f}' for s in runs[name])}]"
        )


if __name__ == "__main__":
    main()
