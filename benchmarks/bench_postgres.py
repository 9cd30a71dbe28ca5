"""PostgreSQL: the seed's way, upstream `prune`, a raw SQL floor and langgraph-retention.

Builds `--threads` x ~`--checkpoints` checkpoints once with the real demo agent through
`PostgresSaver`, keeps a pristine copy in side tables, and before every run restores the
saver's tables from it (INSERT ... SELECT, then VACUUM ANALYZE), so every contender prunes
identical data. Rounds are interleaved and the best of `--repeat` is reported.

    python benchmarks/bench_postgres.py [--threads 200] [--checkpoints 60] [--keep 5] [URL]

With a URL (a database you may create a schema in), the benchmark works in a schema of its
own there and drops it at the end; without one it uses the local server on 127.0.0.1:5432
if it answers, else starts a throwaway cluster, as the test fixtures do.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures_postgres

from tests.fixtures_postgres import postgres_server, scratch_database

from langgraph_retention import RetentionPolicy, sweep
from langgraph_retention.demo import build_agent, chat
from richest import richest, richest_uncapped

TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")

# The floor: one transaction, one statement, no per-thread logic: rank every
# (thread, namespace)'s checkpoints, delete those past `keep`, their writes, and every blob
# no kept checkpoint references.
FLOOR_SQL = """
WITH ranked AS (
    SELECT thread_id, checkpoint_ns, checkpoint_id,
           row_number() OVER (PARTITION BY thread_id, checkpoint_ns
                              ORDER BY checkpoint_id DESC) AS rn
    FROM checkpoints
),
doomed AS (SELECT thread_id, checkpoint_ns, checkpoint_id FROM ranked WHERE rn > %(keep)s),
gone_writes AS (
    DELETE FROM checkpoint_writes w USING doomed d
    WHERE w.thread_id = d.thread_id AND w.checkpoint_ns = d.checkpoint_ns
      AND w.checkpoint_id = d.checkpoint_id
),
gone AS (
    DELETE FROM checkpoints c USING doomed d
    WHERE c.thread_id = d.thread_id AND c.checkpoint_ns = d.checkpoint_ns
      AND c.checkpoint_id = d.checkpoint_id
),
referenced AS (
    SELECT c.thread_id, c.checkpoint_ns, v.key AS channel, v.value AS version
    FROM checkpoints c
    JOIN ranked r USING (thread_id, checkpoint_ns, checkpoint_id)
    CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
    WHERE r.rn <= %(keep)s
)
DELETE FROM checkpoint_blobs b
WHERE NOT EXISTS (
    SELECT 1 FROM referenced x
    WHERE x.thread_id = b.thread_id AND x.checkpoint_ns = b.checkpoint_ns
      AND x.channel = b.channel AND x.version = b.version)
"""

# What each contender leaves behind.
LEFTOVERS_SQL = """
SELECT
    (SELECT count(*) FROM checkpoints) AS checkpoints,
    (SELECT count(*) FROM checkpoint_writes w WHERE NOT EXISTS (
        SELECT 1 FROM checkpoints c WHERE c.thread_id = w.thread_id
        AND c.checkpoint_ns = w.checkpoint_ns AND c.checkpoint_id = w.checkpoint_id))
        AS orphan_writes,
    (SELECT count(*) FROM checkpoint_blobs b WHERE NOT EXISTS (
        SELECT 1 FROM checkpoints c WHERE c.thread_id = b.thread_id
        AND c.checkpoint_ns = b.checkpoint_ns
        AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version))
        AS orphan_blobs
"""

THREADS_SQL = "SELECT DISTINCT thread_id FROM checkpoints ORDER BY thread_id"


@contextmanager
def bench_database(url: str | None) -> Iterator[str]:
    """A URL whose search_path is a fresh schema of ours, dropped afterwards."""
    if url is None:
        with postgres_server() as admin, scratch_database(admin, "lgr_bench") as db:
            yield db
        return
    schema = f"lgr_bench_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        sep = "&" if "?" in url else "?"
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def build(url: str, threads: int, checkpoints: int) -> None:
    """Run the real agent on every thread (4 workers, each on its own connection)."""
    turns = max(1, checkpoints // 5)  # the agent writes 5 checkpoints per user turn
    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()

    def work(ids: list[str]) -> None:
        with PostgresSaver.from_conn_string(url) as saver:
            graph = build_agent(saver)
            for tid in ids:
                chat(graph, tid, turns)

    ids = [f"user{i % 17}:{i:05d}" for i in range(threads)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, [ids[k::4] for k in range(4)]))
    with psycopg.connect(url, autocommit=True) as conn:
        for t in TABLES:
            conn.execute(f"CREATE TABLE pristine_{t} AS SELECT * FROM {t}")


def restore(url: str) -> None:
    """Put the pristine data back in the saver's tables, vacuumed and analyzed, then
    CHECKPOINT: every contender starts with the same WAL state (its first change to each
    page logs the whole page, as on a server long after its last checkpoint) instead of
    whatever a checkpoint that happens to fall mid-run costs it."""
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("TRUNCATE " + ", ".join(TABLES))
            for t in TABLES:
                conn.execute(f"INSERT INTO {t} SELECT * FROM pristine_{t}")
        for t in TABLES:
            conn.execute(f"VACUUM ANALYZE {t}")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege as exc:
            # Not a superuser nor pg_checkpoint: results are noisier, not wrong.
            print(f"note: no CHECKPOINT before this run ({exc})", file=sys.stderr)


def seed_way(saver: PostgresSaver, keep: int) -> None:
    """The seed's cleanup: list every checkpoint, delete the old ones one by one.

    LangGraph has no `checkpointer.delete()`; its closest real form is one DELETE per
    checkpoint, committed like every saver call. Writes and blobs stay, as in the seed.
    """
    with saver._cursor() as cur:
        thread_ids = [r["thread_id"] for r in cur.execute(THREADS_SQL).fetchall()]
    for tid in thread_ids:
        for cp in list(saver.list({"configurable": {"thread_id": tid}}))[keep:]:
            c = cp.config["configurable"]
            with saver._cursor() as cur:
                cur.execute(
                    "DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = %s "
                    "AND checkpoint_id = %s",
                    (tid, c["checkpoint_ns"], c["checkpoint_id"]),
                )


def upstream(saver: PostgresSaver, keep: int) -> None:
    """langgraph-checkpoint-postgres' own `prune` (keeps the latest checkpoint only)."""
    with saver._cursor() as cur:
        thread_ids = [r["thread_id"] for r in cur.execute(THREADS_SQL).fetchall()]
    saver.prune(thread_ids, strategy="keep_latest")


def floor(saver: PostgresSaver, keep: int) -> None:
    with saver._cursor() as cur, cur.connection.transaction():
        cur.execute(FLOOR_SQL, {"keep": keep}, prepare=False)


def ours(saver: PostgresSaver, keep: int) -> None:
    report = sweep(saver, RetentionPolicy(keep_last=keep))
    assert report.ok, report.errors


def ours_richest(saver: PostgresSaver, keep: int) -> None:
    report = sweep(saver, richest(keep))
    assert report.ok, report.errors


def ours_richest_uncapped(saver: PostgresSaver, keep: int) -> None:
    report = sweep(saver, richest_uncapped(keep))
    assert report.ok, report.errors


CONTENDERS: dict[str, Callable[[PostgresSaver, int], None]] = {
    "seed's way (list + delete one by one)": seed_way,
    "upstream saver.prune (keeps 1)": upstream,
    "raw set-based SQL (floor)": floor,
    "langgraph-retention sweep": ours,
    "langgraph-retention sweep, richest policy": ours_richest,
    "richest policy without max_bytes": ours_richest_uncapped,
}


def leftovers(url: str) -> dict[str, Any]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = conn.execute(LEFTOVERS_SQL).fetchone()
    assert row is not None
    return dict(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url", nargs="?", help="postgresql:// URL (default: local or throwaway)")
    ap.add_argument("--threads", type=int, default=200)
    ap.add_argument("--checkpoints", type=int, default=60)
    ap.add_argument("--keep", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-seed", action="store_true", help="leave out the slow seed's way")
    args = ap.parse_args()
    contenders = {k: v for k, v in CONTENDERS.items() if not (args.skip_seed and v is seed_way)}

    with bench_database(args.url) as url:
        t0 = time.perf_counter()
        build(url, args.threads, args.checkpoints)
        built = leftovers(url)
        print(
            f"built {built['checkpoints']} checkpoints in {args.threads} threads "
            f"in {time.perf_counter() - t0:.1f}s (real agent, PostgresSaver)"
        )
        best: dict[str, float] = {}
        left: dict[str, dict[str, Any]] = {}
        for _ in range(args.repeat):
            for name, fn in contenders.items():  # interleaved rounds: noise hits all alike
                restore(url)
                with PostgresSaver.from_conn_string(url) as saver:
                    start = time.perf_counter()
                    fn(saver, args.keep)
                    elapsed = time.perf_counter() - start
                best[name] = min(best.get(name, elapsed), elapsed)
                left[name] = leftovers(url)

    floor_s = best["raw set-based SQL (floor)"]
    ours_s = best["langgraph-retention sweep"]
    print(
        f"\nPostgreSQL, {args.threads} threads x ~{args.checkpoints} checkpoints, "
        f"keep {args.keep} (best of {args.repeat})"
    )
    print(
        f"{'way':40} {'seconds':>8} {'x floor':>8} {'x ours':>8} {'left':>6} "
        f"{'orphan writes':>14} {'orphan blobs':>13} {'blobs reclaimed':>16}"
    )
    for name, secs in best.items():
        lo = left[name]
        print(
            f"{name:40} {secs:8.3f} {secs / floor_s:8.2f} {secs / ours_s:8.2f} "
            f"{lo['checkpoints']:6d} {lo['orphan_writes']:14d} {lo['orphan_blobs']:13d} "
            f"{'yes' if lo['orphan_blobs'] == 0 else 'no':>16}"
        )
    summary = f"\nours / floor = {ours_s / floor_s:.2f} (target <= 1.5)"
    if "upstream saver.prune (keeps 1)" in best:
        summary += f"; upstream / ours = {best['upstream saver.prune (keeps 1)'] / ours_s:.1f}x"
    if "seed's way (list + delete one by one)" in best:
        seed_s = best["seed's way (list + delete one by one)"]
        summary += f"; seed / ours = {seed_s / ours_s:.0f}x (target >= 50x)"
    print(summary)
    rich_s = best["langgraph-retention sweep, richest policy"]
    uncapped_s = best["richest policy without max_bytes"]
    print(
        f"richest policy / keep-last = {rich_s / ours_s:.3f} (target < 1.10); "
        f"without max_bytes {uncapped_s / ours_s:.3f}"
    )


if __name__ == "__main__":
    main()
