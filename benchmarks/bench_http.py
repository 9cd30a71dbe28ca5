"""The HTTP API under load: `langgraph-retention serve` on PostgreSQL, hammered from a
second process on loopback by `--clients` concurrent clients for `--seconds`, mixing the
seed's stats call (20%), per-thread prunes (40%) and per-thread dry runs (40%), while an
app writes checkpoints to the same store (a put every `--pace-ms`, to threads the API
prunes). Prints requests/s, p50/p99 per kind, errors (must be 0), and the app's put
latency (median, p99) during the load against the same writer with no load (measured
before and after the load, pooled).

    flock /tmp/bench.lock python benchmarks/bench_http.py [--clients 50] [--seconds 30]
        [--threads 200] [--checkpoints 30] [--serve-threads 8] [--pace-ms 5]

PostgreSQL: the server on 127.0.0.1:5432 if one answers, else a throwaway cluster (the
test fixtures' way); a scratch database, dropped at the end. Timings are printed, never
asserted: this is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fixtures_postgres
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_put_latency's recorded agent stream

TEMPLATE_THREADS = 10
TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


# -- the load: a second process ------------------------------------------------------------


def load(base: str, clients: int, seconds: float, thread_ids: list[str]) -> dict[str, Any]:
    """`clients` threads, each its own keep-alive session, for `seconds`."""
    latencies: dict[str, list[float]] = {"stats": [], "prune": [], "dry_run": []}
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        mine: dict[str, list[float]] = {k: [] for k in latencies}
        while time.perf_counter() < deadline:
            roll = rng.random()
            tid = quote(rng.choice(thread_ids), safe="")
            t0 = time.perf_counter()
            try:
                if roll < 0.2:
                    kind = "stats"
                    r = session.get(f"{base}/api/cleanup/stats", timeout=60)
                else:
                    kind = "prune" if roll < 0.6 else "dry_run"
                    body = (
                        {"keep_count": 10}
                        if kind == "prune"
                        else {"keep_count": 5, "dry_run": True}
                    )
                    r = session.post(f"{base}/api/cleanup/thread/{tid}", json=body, timeout=60)
                ok = r.status_code == 200
                detail = f"{kind}: HTTP {r.status_code} {r.text[:200]}"
            except requests.RequestException as exc:
                ok, detail = False, f"{kind}: {exc!r}"
            mine[kind].append(time.perf_counter() - t0)
            if not ok:
                with lock:
                    errors.append(detail)
        with lock:
            for k, v in mine.items():
                latencies[k].extend(v)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "latencies": latencies, "errors": errors}


# -- the store, the server, the app ----------------------------------------------------------


def fill(url: str, threads: int, checkpoints: int) -> list[str]:
    """Template threads of the demo agent's recorded checkpoints, copied in SQL."""
    from langgraph.checkpoint.postgres import PostgresSaver

    from bench_put_latency import Replayer, record_stream

    stream = record_stream()
    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()
        replay = Replayer(stream, TEMPLATE_THREADS, "user")
        for i in range(TEMPLATE_THREADS * checkpoints):
            saver.put(*replay.next_put(i))
    copies = max(0, threads // TEMPLATE_THREADS - 1)
    with psycopg.connect(url, autocommit=True) as conn:
        for table in TABLES:
            cols = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                    "ORDER BY ordinal_position",
                    (table,),
                )
            ]
            picked = ", ".join("thread_id || '/copy' || n" if c == "thread_id" else c for c in cols)
            conn.execute(
                f"INSERT INTO {table} ({', '.join(cols)}) SELECT {picked} "
                f"FROM {table}, generate_series(1, {copies}) AS n"
            )
        conn.execute("VACUUM ANALYZE")
        return [r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(url: str, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "langgraph_retention.cli", "serve", "--url", url, "--port",
         str(port), "--keep-last", "10", "--threads", str(threads)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit("serve did not start")


class App:
    """The chat path: one writer putting the agent's checkpoints to pruned threads."""

    def __init__(self, url: str, thread_ids: list[str], pace: float) -> None:
        from langgraph.checkpoint.postgres import PostgresSaver

        from bench_put_latency import Replayer, record_stream

        self._cm = PostgresSaver.from_conn_string(url)
        self.saver = self._cm.__enter__()
        self.replay = Replayer(record_stream(), 1, "app")
        self.replay.thread_ids = thread_ids[:20]
        self.replay.position = [0] * len(self.replay.thread_ids)
        self.replay.parent = [None] * len(self.replay.thread_ids)
        self.pace = pace
        self.i = 0

    def run(self, seconds: float) -> list[float]:
        out: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            args = self.replay.next_put(self.i)
            self.i += 1
            t0 = time.perf_counter()
            self.saver.put(*args)
            out.append(time.perf_counter() - t0)
            time.sleep(self.pace)
        return out

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=200)
    parser.add_argument("--checkpoints", type=int, default=30)
    parser.add_argument("--serve-threads", type=int, default=8)
    parser.add_argument("--pace-ms", type=float, default=5.0)
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--load-from", help=argparse.SUPPRESS)  # the second process
    args = parser.parse_args()
    if args.load_from:
        spec = json.loads(Path(args.load_from).read_text())
        result = load(spec["base"], args.clients, args.seconds, spec["thread_ids"])
        print(json.dumps(result))
        return

    from tests.fixtures_postgres import postgres_server, scratch_database

    with postgres_server() as admin, scratch_database(admin, prefix="lgr_bench_http") as url:
        thread_ids = fill(url, args.threads, args.checkpoints)
        print(f"store: {len(thread_ids)} threads x {args.checkpoints} checkpoints (PostgreSQL)")
        proc, base = serve(url, args.serve_threads)
        app = App(url, thread_ids, args.pace_ms / 1000)
        try:
            quiet = app.run(args.baseline_seconds)
            spec = Path(f"/tmp/bench_http_{os.getpid()}.json")
            spec.write_text(json.dumps({"base": base, "thread_ids": thread_ids}))
            loader = subprocess.Popen(
                [sys.executable, __file__, "--load-from", str(spec), "--clients",
                 str(args.clients), "--seconds", str(args.seconds)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            busy = app.run(args.seconds)
            out, _ = loader.communicate(timeout=args.seconds + 120)
            spec.unlink()
            quiet += app.run(args.baseline_seconds)
        finally:
            app.close()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
    report(json.loads(out), quiet, busy, args, code)


def report(
    result: dict[str, Any], quiet: list[float], busy: list[float], args: Any, code: int
) -> None:
    lat = result["latencies"]
    total = sum(len(v) for v in lat.values())
    print(
        f"load: {args.clients} clients x {result['elapsed']:.1f}s from a second process, "
        f"serve --threads {args.serve_threads}"
    )
    print(f"  {total} requests, {total / result['elapsed']:.0f} req/s, "
          f"errors: {len(result['errors'])}")  # fmt: skip
    everything = [x for v in lat.values() for x in v]
    print(f"  {'kind':<8} {'count':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for kind, values in [*lat.items(), ("all", everything)]:
        print(f"  {kind:<8} {len(values):>7} {pct(values, 0.5) * 1e3:>8.1f} "
              f"{pct(values, 0.99) * 1e3:>8.1f}")  # fmt: skip
    for line in result["errors"][:5]:
        print(f"  ERROR {line}")
    q50, q99 = statistics.median(quiet) * 1e3, pct(quiet, 0.99) * 1e3
    b50, b99 = statistics.median(busy) * 1e3, pct(busy, 0.99) * 1e3
    print("app put latency (PostgresSaver.put, same store, a put every "
          f"{args.pace_ms:.0f} ms):")  # fmt: skip
    print(f"  no load   n={len(quiet):>6}  median {q50:.2f} ms  p99 {q99:.2f} ms")
    print(
        f"  API load  n={len(busy):>6}  median {b50:.2f} ms  p99 {b99:.2f} ms  "
        f"(x{b50 / q50:.2f} median, x{b99 / q99:.2f} p99)"
    )
    print(f"serve exited {code} on SIGTERM")


if __name__ == "__main__":
    main()
