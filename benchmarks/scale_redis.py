"""Redis at scale: ours (`sweep`, keep 5) vs the pipelined-UNLINK floor (and upstream
`prune` at the smallest size), on identical data at several store sizes.

A few threads are built with the real demo agent (`--base`), read back once, then
replicated under new thread ids in random (scattered) order to each size: JSON documents
through JSON.SET (their `thread_id` field rewritten), registries and pointers rewritten
too. Every contender runs on a FRESH server holding exactly that data (no blocking
FLUSHDB of millions of module keys). Ours runs in a fresh child process so its peak RSS
is the sweep's own. During each run a probe PINGs the server every 10 ms (worst PING
reported), and SLOWLOG (threshold 50 ms) gives the slowest server command. Then ours
again while an app chats on the same server: its put latency (median, p99) during our
sweep, against 5 s of chatting before it. On the largest size also the CLI's `stats
--top 10` (time, peak RSS), on the floor's copy before the floor prunes it.

    python benchmarks/scale_redis.py [--sizes 200,2000] [--base 40] [--checkpoints 60]
        [--search-config FORK_GC_RUN_INTERVAL=3600] [--skip-extras]

`--search-config` sets RediSearch options (FT.CONFIG SET) on every contender's server
before its store is built, alike for all; `--skip-extras` leaves out `ours+app` and
`stats`. Each row also says how many times the server forked during the run (RediSearch's
fork garbage collector; every fork stops the server for its duration) and the longest.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis
from langgraph.checkpoint.redis import RedisSaver

from langgraph_retention.demo import build_agent, chat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
bench: Any = importlib.import_module("bench_redis")
fixtures: Any = importlib.import_module("tests.fixtures_redis")

PIPELINE = 2000
SLOW_US = 50_000
Record = tuple[str, str, Any]  # key, type, value

#: Peak RSS from VmHWM, not `ru_maxrss`: Linux carries `ru_maxrss` across exec, so a child
#: forked from this (big) process would report the parent's size.
PEAK_RSS_MB = (
    "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024"
)

CHILD = f"""
import sys, time
from langgraph.checkpoint.redis import RedisSaver
from langgraph_retention import RetentionPolicy, sweep
with RedisSaver.from_conn_string(sys.argv[1]) as saver:
    t0 = time.perf_counter()
    report = sweep(saver, RetentionPolicy(keep_last=int(sys.argv[2])))
    elapsed = time.perf_counter() - t0
assert report.ok, report.errors
print(elapsed, {PEAK_RSS_MB})
"""


CHILD_STATS = f"""
import contextlib, io, sys, time
from langgraph_retention.cli import main
t = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(["stats", "--url", sys.argv[1], "--top", "10"])
print(time.perf_counter() - t, {PEAK_RSS_MB}, rc)
"""


def build_base(url: str, threads: int, checkpoints: int) -> dict[str, list[Record]]:
    """`threads` real agent threads, read back as records grouped by thread id."""
    with RedisSaver.from_conn_string(url) as saver:
        saver.setup()
        graph = build_agent(saver)
        for i in range(threads):
            chat(graph, f"base{i:04d}", max(1, checkpoints // 5))
    client = redis.Redis.from_url(url, protocol=2, decode_responses=True)
    by_thread: dict[str, list[Record]] = defaultdict(list)
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "ReJSON-RL":
            value: Any = json.loads(client.execute_command("JSON.GET", key, "$"))[0]
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "string":
            value = client.get(key)
        else:
            continue
        by_thread[key.split(":")[1]].append((key, kind, value))
    client.close()
    return by_thread


def replicate(url: str, base: dict[str, list[Record]], threads: int, seed: int = 7) -> int:
    """Write `threads` copies of the base threads under new ids, in random key order."""
    client = redis.Redis.from_url(url, protocol=2, decode_responses=True)
    with RedisSaver.from_conn_string(url) as saver:
        saver.setup()
    names = sorted(base)
    jobs = [(f"t{j:06d}", names[j % len(names)], i) for j in range(threads)
            for i in range(len(base[names[j % len(names)]]))]  # fmt: skip
    random.Random(seed).shuffle(jobs)
    for start in range(0, len(jobs), PIPELINE):
        pipe = client.pipeline(transaction=False)
        for new, old, i in jobs[start : start + PIPELINE]:
            key, kind, value = base[old][i]
            swap = (f":{old}:", f":{new}:")
            new_key = key.replace(*swap)
            if kind == "ReJSON-RL":
                doc = dict(value, thread_id=new)
                pipe.execute_command("JSON.SET", new_key, "$", json.dumps(doc))
            elif kind == "zset":
                pipe.zadd(new_key, {m.replace(*swap): s for m, s in value})
            else:
                pipe.set(new_key, value.replace(*swap))
        pipe.execute()
    for index in ("checkpoint", "checkpoint_write"):
        while int(client.ft(index).info().get("indexing", 0)):
            time.sleep(0.05)
    client.close()
    return len(jobs)


class Probe:
    """PINGs the server every 10 ms on its own connection; keeps the worst round trip."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, protocol=2)
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            self.client.ping()
            self.worst = max(self.worst, time.perf_counter() - t0)
            time.sleep(0.01)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


def put_latencies(url: str, seconds: float, running: Any = None) -> list[float]:
    """Latencies of an app's checkpoint puts (one chat turn = 5 puts, timed per turn / 5),
    on connections named `app` (so SLOWLOG can tell them apart): for `seconds`, or for as
    long as `running()` says."""
    lat: list[float] = []
    with RedisSaver.from_conn_string(_named(url, "app")) as saver:
        graph = build_agent(saver)
        end = time.perf_counter() + seconds
        i = 0
        while running() if running is not None else time.perf_counter() < end:
            start = time.perf_counter()
            chat(graph, f"app:{i % 7}", 1)
            lat.append((time.perf_counter() - start) / 5)
            i += 1
    return lat


def _named(url: str, name: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}client_name={name}"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def run_one(
    name: str,
    base: dict[str, list[Record]],
    threads: int,
    keep: int,
    *,
    stats: bool = False,
    search_config: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One contender on a fresh server with the size's data: seconds, RSS, SLOWLOG, PING.

    `ours+app` is ours again while an app chats on the same server: its put latency
    during the sweep, against 5 s of chatting before it (on two shared cores the app also
    takes CPU from the sweep, so its time is not compared). With `stats`, the CLI's
    `stats --top 10` runs first. SLOWLOG leaves out the app's and the probe's commands."""
    out: dict[str, Any] = {"rss_mb": None, "idle": [], "busy": [], "stats": None}
    with fixtures.redis_stack_server() as url:
        client = redis.Redis.from_url(url, protocol=2, decode_responses=True)
        for option, value in (search_config or {}).items():
            client.execute_command("FT.CONFIG", "SET", option, value)
        replicate(url, base, threads)
        client.config_set("slowlog-log-slower-than", SLOW_US)
        client.config_set("slowlog-max-len", 1024)
        if stats:
            line = subprocess.run(
                [sys.executable, "-c", CHILD_STATS, url], check=True, capture_output=True, text=True
            ).stdout.split()
            out["stats"] = (float(line[0]), int(line[1]))
        app = name == "ours+app"
        if app:
            out["idle"] = put_latencies(url, 5.0)
        client.slowlog_reset()
        forks_before = int(client.info("stats")["total_forks"])
        with Probe(_named(url, "probe")) as probe:
            start = time.perf_counter()
            if name.startswith("ours"):
                proc = subprocess.Popen(
                    [sys.executable, "-c", CHILD, url, str(keep)],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                if app:
                    out["busy"] = put_latencies(url, 0.0, running=lambda: proc.poll() is None)
                reply, _ = proc.communicate()
                assert proc.returncode == 0, "our sweep failed"
                seconds_text, rss_text = reply.split()
                out["seconds"], out["rss_mb"] = float(seconds_text), int(rss_text)
            else:
                (bench.floor if name == "floor" else bench.upstream)(
                    url, keep, [f"t{j:06d}" for j in range(threads)]
                )
                out["seconds"] = time.perf_counter() - start
        slow = [e for e in client.slowlog_get(1024) if e.get("client_name") not in ("app", "probe")]
        worst = max(slow, key=lambda e: e["duration"], default=None)
        server_stats = client.info("stats")
        out["forks"] = int(server_stats["total_forks"]) - forks_before
        out["fork_ms"] = int(server_stats["latest_fork_usec"]) / 1000 if out["forks"] else 0.0
        out["used_gb"] = int(client.info("memory")["used_memory_peak"]) / 2**30
        out["left"] = bench.leftovers(redis.Redis.from_url(url, protocol=2))
        client.close()
    out.update(
        slow_count=len(slow),
        slow_max_ms=worst["duration"] / 1000 if worst else 0.0,
        slow_cmd=" ".join(map(str, worst["command"].split()[:3])) if worst else "",
        ping_ms=probe.worst * 1000,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="200,2000")
    ap.add_argument("--base", type=int, default=40)
    ap.add_argument("--checkpoints", type=int, default=60)
    ap.add_argument("--keep", type=int, default=5)
    ap.add_argument("--upstream-max", type=int, default=200)
    ap.add_argument("--search-config", default="", help="OPTION=VALUE,... for FT.CONFIG SET")
    ap.add_argument("--skip-extras", action="store_true", help="no ours+app, no stats")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    search_config = dict(kv.split("=", 1) for kv in args.search_config.split(",") if kv)

    t0 = time.perf_counter()
    with fixtures.redis_stack_server() as url:
        base = build_base(url, args.base, args.checkpoints)
    per_thread = sum(1 for recs in base.values() for k, _t, _v in recs
                     if k.startswith("checkpoint:")) / len(base)  # fmt: skip
    print(f"built {len(base)} agent threads (~{per_thread:.0f} checkpoints each) "
          f"in {time.perf_counter() - t0:.1f}s")  # fmt: skip

    header = (
        f"{'threads':>8} {'way':10} {'seconds':>8} {'x floor':>8} {'s/1k cp':>8} {'RSS MB':>7} "
        f"{'slow>50ms':>9} {'max ms':>7} {'PING ms':>8} {'left':>7} {'forks':>5} "
        f"{'fork ms':>7} {'peak GB':>7}  slowest"
    )
    rows, notes = [], []
    for threads in sizes:
        ways = ["floor", "ours"] + (["upstream"] if threads <= args.upstream_max else [])
        ways += [] if args.skip_extras else ["ours+app"]
        last = threads == sizes[-1] and not args.skip_extras
        res = {
            w: run_one(
                w, base, threads, args.keep,
                stats=w == "floor" and last, search_config=search_config,
            )
            for w in ways
        }  # fmt: skip
        cps = threads * per_thread / 1000
        for w in ways:
            r = res[w]
            rows.append(
                f"{threads:8d} {w:10} {r['seconds']:8.2f} "
                f"{r['seconds'] / res['floor']['seconds']:8.2f} {r['seconds'] / cps:8.3f} "
                f"{r['rss_mb'] or 0:7d} {r['slow_count']:9d} {r['slow_max_ms']:7.1f} "
                f"{r['ping_ms']:8.1f} {r['left'][0]:7d} {r['forks']:5d} {r['fork_ms']:7.0f} "
                f"{r['used_gb']:7.2f}  {r['slow_cmd']}"
            )
            print(rows[-1], flush=True)
        if args.skip_extras:
            continue
        idle, busy, ms = res["ours+app"]["idle"], res["ours+app"]["busy"], 1000
        notes.append(
            f"put latency at {threads} threads (ms): idle median {ms * statistics.median(idle):.1f}"
            f" p99 {ms * pct(idle, 0.99):.1f}; during our sweep median "
            f"{ms * statistics.median(busy):.1f} p99 {ms * pct(busy, 0.99):.1f} ({len(busy)} turns)"
        )
        if res["floor"]["stats"]:
            seconds, rss = res["floor"]["stats"]
            notes.append(f"stats --top 10 at {threads} threads: {seconds:.2f}s, peak RSS {rss} MB")
        print(notes[-1], flush=True)
    print("\n" + header)
    print("\n".join(rows))
    print("\n".join(notes))


if __name__ == "__main__":
    main()
