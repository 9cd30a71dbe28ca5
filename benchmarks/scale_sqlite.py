"""SQLite at scale: ours (`sweep`, keep 5) vs the raw SQL floor on 200 .. 20,000 threads.

Builds `--templates` real demo-agent threads once (~`--checkpoints` checkpoints each),
then, per size, a store of that many threads: template rows copied server-side under new
thread ids IN RANDOM ROW ORDER (one thread's rows scattered over the whole table, as
after months of interleaved production writes). Each contender runs on its own copy of
that store in a fresh child process (so its peak RSS is its own). Also: the put latency
of an app writing to the store while our sweep runs vs while nothing does, `stats` (the
CLI's streamed top-N) on the largest store, and `EXPLAIN QUERY PLAN` of our statements.

    python benchmarks/scale_sqlite.py [--sizes 200,2000,20000] [--checkpoints 60]
        [--templates 200] [--keep 5] [--batch 100] [--dir DIR] [--no-latency]

Nothing here is a test: timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sqlite import FLOOR_SQL, build, leftovers

# -- building ---------------------------------------------------------------------------

#: Copies template rows under new ids, one row at a time in the random order of `plan`:
#: (new thread id, template rowid) pairs inserted shuffled, read back in rowid order.
COPY_SQL = """
INSERT INTO main.{table} ({columns})
SELECT p.thread_id, {rest} FROM temp.plan AS p JOIN tmpl.{table} AS t ON t.rowid = p.src
ORDER BY p.rowid
"""


def replicate(template: Path, path: Path, threads: int, seed: int = 7) -> int:
    """A store of `threads` threads copied from the template's, rows in random order."""
    shutil.copy(template, path)
    conn = sqlite3.connect(str(path))
    conn.execute("DELETE FROM checkpoints")
    conn.execute("DELETE FROM writes")
    conn.commit()
    conn.execute("VACUUM")
    conn.execute("ATTACH ? AS tmpl", (str(template),))
    tmpl_ids = [r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM tmpl.checkpoints")]
    rng = random.Random(seed)
    new_ids = {
        i: f"{rng.getrandbits(64):016x}:{tmpl_ids[i % len(tmpl_ids)]}" for i in range(threads)
    }
    for table in ("checkpoints", "writes"):
        columns = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
        assert columns[0] == "thread_id"
        rows_by_tid: dict[str, list[int]] = {}
        for rowid, tid in conn.execute(f"SELECT rowid, thread_id FROM tmpl.{table}"):
            rows_by_tid.setdefault(tid, []).append(rowid)
        pairs = [
            (new_ids[i], src)
            for i in range(threads)
            for src in rows_by_tid.get(tmpl_ids[i % len(tmpl_ids)], [])
        ]
        rng.shuffle(pairs)
        conn.execute("CREATE TEMP TABLE plan (thread_id TEXT, src INTEGER)")
        conn.executemany("INSERT INTO temp.plan VALUES (?, ?)", pairs)
        rest = ", ".join(f"t.{c}" for c in columns[1:])
        conn.execute(COPY_SQL.format(table=table, columns=", ".join(columns), rest=rest))
        conn.execute("DROP TABLE temp.plan")
        conn.commit()
    conn.execute("DETACH tmpl")
    total = int(conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0])
    conn.close()
    return total


def fresh_copy(pristine: Path, path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    shutil.copy(pristine, path)


# -- contenders (each runs in its own child process) ------------------------------------

#: Our flush transactions' time target for the children (`--flush-seconds`).
FLUSH_SECONDS_ENV = "SCALE_SQLITE_FLUSH_SECONDS"


def run_ours(path: Path, keep: int, batch: int) -> dict[str, Any]:
    from langgraph_retention import RetentionPolicy, sweep
    from langgraph_retention.backends.sqlite import flush
    from langgraph_retention.backends.sqlite.backend import SqliteBackend

    if os.environ.get(FLUSH_SECONDS_ENV):
        flush.TRANSACTION_SECONDS = float(os.environ[FLUSH_SECONDS_ENV])
    writes: list[float] = []  # our write transactions' seconds (their checkpoints included)
    run_program = SqliteBackend._exec

    def timed(self: SqliteBackend, program: Any, *, write: bool) -> Any:
        start = time.perf_counter()
        try:
            return run_program(self, program, write=write)
        finally:
            if write:
                writes.append(time.perf_counter() - start)

    SqliteBackend._exec = timed  # type: ignore[method-assign]
    conn = sqlite3.connect(str(path), check_same_thread=False)
    report = sweep(SqliteSaver(conn), RetentionPolicy(keep_last=keep), batch_size=batch)
    assert report.ok, report.errors
    conn.close()
    writes.sort()
    return {
        "deleted": report.deleted_checkpoints,
        "write_txns": len(writes),
        "write_txn_median_ms": statistics.median(writes) * 1e3 if writes else 0.0,
        "write_txn_max_ms": writes[-1] * 1e3 if writes else 0.0,
    }


def run_floor(path: Path, keep: int, batch: int) -> dict[str, Any]:
    conn = sqlite3.connect(str(path))
    conn.executescript("BEGIN IMMEDIATE;" + FLOOR_SQL.format(keep=keep) + "COMMIT;")
    conn.close()
    return {}


def run_stats(path: Path, keep: int, batch: int) -> dict[str, Any]:
    from langgraph_retention.cli import main as cli_main

    code = cli_main(["stats", "--url", f"sqlite:///{path}", "--top", "10"])
    return {"exit": code}


CONTENDERS = {"ours": run_ours, "floor": run_floor, "stats": run_stats}


def peak_rss_kib() -> int:
    """This process's own peak RSS (VmHWM): getrusage's ru_maxrss is not, Linux carries
    the parent's over fork and exec."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def child(name: str, path: Path, keep: int, batch: int) -> None:
    start = time.perf_counter()
    out = CONTENDERS[name](path, keep, batch)
    out["seconds"] = time.perf_counter() - start
    out["rss_mb"] = peak_rss_kib() / 1024
    print("RESULT " + json.dumps(out), flush=True)


def in_child(name: str, path: Path, keep: int, batch: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, str(path), str(keep), str(batch)],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]


# -- the app writing meanwhile ------------------------------------------------------------


def put_latencies(path: Path, stop: threading.Event, out: list[float]) -> None:
    """Puts real checkpoints to 20 app threads on its own connection until `stop`."""
    from bench_put_latency import Replayer, record_stream

    stream = record_stream(4)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    saver = SqliteSaver(conn)
    replay = Replayer(stream, 20, "app")
    i = 0
    while not stop.is_set():
        cfg, cp, meta, versions = replay.next_put(i)
        t0 = time.perf_counter()
        saver.put(cfg, cp, meta, versions)  # type: ignore[arg-type]
        out.append(time.perf_counter() - t0)
        i += 1
        time.sleep(0.002)  # an app between turns, not a write loop
    conn.close()


def latency_during(
    path: Path, keep: int, batch: int, idle_for: float | None
) -> tuple[list[float], float]:
    """Put latencies while our sweep runs in a child process (or `idle_for` seconds of
    no sweep)."""
    samples: list[float] = []
    stop = threading.Event()
    writer = threading.Thread(target=put_latencies, args=(path, stop, samples))
    writer.start()
    time.sleep(0.5)
    samples.clear()
    start = time.perf_counter()
    if idle_for is None:
        in_child("ours", path, keep, batch)
    else:
        time.sleep(idle_for)
    elapsed = time.perf_counter() - start
    stop.set()
    writer.join()
    return samples, elapsed


def median_p99(xs: list[float]) -> str:
    if not xs:
        return "no samples"
    ordered = sorted(xs)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"median {statistics.median(xs) * 1e3:6.2f} ms  p99 {p99 * 1e3:7.2f} ms  "
        f"max {ordered[-1] * 1e3:7.2f} ms  over 100 ms {sum(x > 0.1 for x in xs):3d}  "
        f"(n={len(xs)})"
    )


# -- query plans --------------------------------------------------------------------------


def query_plans(path: Path) -> None:
    """`EXPLAIN QUERY PLAN` of every statement ours runs, on this store."""
    from langgraph_retention.backends.sqlite import backend as b
    from langgraph_retention.backends.sqlite import flush as f
    from langgraph_retention.backends.sqlite import prune as p

    conn = sqlite3.connect(str(path))
    tid = conn.execute("SELECT thread_id FROM checkpoints LIMIT 1").fetchone()[0]
    ids = json.dumps([tid])
    keys = json.dumps(
        [
            [tid, ns, cid]
            for ns, cid in conn.execute(
                "SELECT checkpoint_ns, checkpoint_id FROM checkpoints WHERE thread_id = ?", (tid,)
            )
        ]
    )
    rowids = json.dumps([r[0] for r in conn.execute("SELECT rowid FROM checkpoints LIMIT 60")])
    statements: dict[str, tuple[str, Any]] = {
        "FIRST_THREAD_PAGE_SQL": (b.FIRST_THREAD_PAGE_SQL, (100,)),
        "NEXT_THREAD_PAGE_SQL": (b.NEXT_THREAD_PAGE_SQL, (tid, 100)),
        "INDEX_SQL": (p.INDEX_SQL, {"threads": ids, "tag_path": None, "tag_text": None}),
        "SPECIAL_WRITES_SQL": (p.SPECIAL_WRITES_SQL, (ids,)),
        "DOOMED_WRITES_SQL": (p.DOOMED_WRITES_SQL, (keys,)),
        "DOOMED_WRITE_ROWIDS_SQL": (p.DOOMED_WRITE_ROWIDS_SQL, (keys,)),
        "TOP_WRITE_ROWID_SQL": (p.TOP_WRITE_ROWID_SQL, ()),
        "WRITE_ROWS_SQL": (f.WRITE_ROWS_SQL, (rowids,)),
        "CHECKPOINT_ROWS_SQL": (f.CHECKPOINT_ROWS_SQL, (rowids,)),
        "LATE_WRITES_SQL": (f.LATE_WRITES_SQL, (0,)),
        "DELETE_WRITES_SQL": (p.DELETE_WRITES_SQL, (rowids,)),
        "DELETE_CHECKPOINTS_SQL": (p.DELETE_CHECKPOINTS_SQL, (rowids,)),
        "CHECKPOINT_STATS_SQL": (b.CHECKPOINT_STATS_SQL, (ids,)),
        "WRITE_STATS_SQL": (b.WRITE_STATS_SQL, (ids,)),
    }
    print("\nEXPLAIN QUERY PLAN (largest store)")
    for name, (sql, params) in statements.items():
        plan = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        print(f"  {name}: " + " | ".join(str(r[3]) for r in plan))
    conn.close()


# -- main -------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="200,2000,20000")
    ap.add_argument("--checkpoints", type=int, default=60)
    ap.add_argument("--templates", type=int, default=200)
    ap.add_argument("--keep", type=int, default=5)
    ap.add_argument("--batch", type=int, default=100, help="our sweep's threads per batch")
    ap.add_argument("--dir", type=Path, default=None, help="keep the stores here")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--floor-sizes", default=None, help="run the floor only at these sizes")
    ap.add_argument("--latency-size", type=int, default=None, help="default: the largest size")
    ap.add_argument(
        "--flush-seconds",
        type=float,
        default=None,
        help="our flush transactions' time target (default: the library's)",
    )
    ap.add_argument("--child", nargs=4, metavar=("NAME", "PATH", "KEEP", "BATCH"))
    args = ap.parse_args()
    if args.child:
        name, path, keep, batch = args.child
        child(name, Path(path), int(keep), int(batch))
        return

    if args.flush_seconds is not None:
        os.environ[FLUSH_SECONDS_ENV] = str(args.flush_seconds)
    sizes = [int(s) for s in args.sizes.split(",")]
    floor_sizes = [int(s) for s in (args.floor_sizes or args.sizes).split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        root = args.dir or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        template = root / "template.db"
        t0 = time.perf_counter()
        if not template.exists():
            build(template, args.templates, args.checkpoints)
        print(f"template: {args.templates} real agent threads, {time.perf_counter() - t0:.1f}s")
        rows = []
        for size in sizes:
            pristine = root / f"scattered-{size}.db"
            t0 = time.perf_counter()
            if not pristine.exists():
                replicate(template, pristine, size)
            total, _ = leftovers(pristine)
            mb = pristine.stat().st_size / 2**20
            print(
                f"{size} threads: {total} checkpoints, {mb:.0f} MB, "
                f"built in {time.perf_counter() - t0:.1f}s"
            )
            run = root / "run.db"
            result: dict[str, dict[str, Any]] = {}
            names = ["ours"] if size not in floor_sizes else ["floor", "ours"]
            for name in names:
                fresh_copy(pristine, run)
                result[name] = in_child(name, run, args.keep, args.batch)
                left, orphans = leftovers(run)
                result[name]["left"] = left
                assert orphans == 0, (name, orphans)
            rows.append((size, total, result))
            print(f"  {json.dumps(result)}", flush=True)

        print(f"\nSQLite, scattered layout, keep {args.keep}, our batch {args.batch}")
        print(
            f"{'threads':>8} {'checkpoints':>12} {'floor s':>8} {'ours s':>8} {'x floor':>8}"
            f" {'ours ms/1k cp':>14} {'ours peak RSS MB':>17} {'write txns':>10}"
            f" {'median ms':>9} {'max ms':>7}"
        )
        for size, total, r in rows:
            o = r["ours"]["seconds"]
            f = r["floor"]["seconds"] if "floor" in r else float("nan")
            print(
                f"{size:8d} {total:12d} {f:8.2f} {o:8.2f} {o / f:8.2f} "
                f"{o / total * 1e6:14.1f} {r['ours']['rss_mb']:17.0f}"
                f" {r['ours']['write_txns']:10d} {r['ours']['write_txn_median_ms']:9.0f}"
                f" {r['ours']['write_txn_max_ms']:7.0f}"
            )

        largest = root / f"scattered-{sizes[-1]}.db"
        fresh_copy(largest, root / "run.db")
        query_plans(root / "run.db")
        st = in_child("stats", root / "run.db", args.keep, args.batch)
        print(
            f"\nstats --top 10 on {sizes[-1]} threads: {st['seconds']:.2f}s, "
            f"peak RSS {st['rss_mb']:.0f} MB"
        )
        if not args.no_latency:
            lsize = args.latency_size or sizes[-1]
            latency_store = root / f"scattered-{lsize}.db"
            idle_for = next(r["ours"]["seconds"] for size, _, r in rows if size == lsize)
            fresh_copy(latency_store, root / "run.db")
            idle, _ = latency_during(root / "run.db", args.keep, args.batch, idle_for)
            fresh_copy(latency_store, root / "run.db")
            during, secs = latency_during(root / "run.db", args.keep, args.batch, None)
            print(f"\napp puts on {lsize} threads (own connection, WAL)")
            print(f"  no sweep      {median_p99(idle)}")
            print(f"  during ours   {median_p99(during)}  (sweep {secs:.1f}s)")


if __name__ == "__main__":
    main()
