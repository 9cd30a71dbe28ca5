"""Redis: upstream `RedisSaver.prune` vs langgraph-retention vs a pipelined-UNLINK floor.

Starts its own valkey-server with RedisJSON + RediSearch (as the test fixtures do), builds
`--threads` x ~`--checkpoints` checkpoints once with the real demo agent, snapshots every
key (DUMP), and before each run restores exactly that data (FLUSHDB + RESTORE, then waits
for RediSearch to finish indexing). Contenders run interleaved, best of `--repeat`.

    python benchmarks/bench_redis.py [--threads 200] [--checkpoints 60] [--keep 5]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from langgraph.checkpoint.redis import RedisSaver

from langgraph_retention import RetentionPolicy, sweep
from langgraph_retention.demo import build_agent, chat
from richest import richest, richest_uncapped

ROOT = Path(__file__).resolve().parents[1]
SCAN_COUNT = 1000
PIPELINE = 5000
Snapshot = list[tuple[bytes, int, bytes]]  # key, pttl, DUMP payload


def thread_ids(threads: int) -> list[str]:
    """Ids with ':' inside, like the seed's `wang1:20250729235038043`."""
    return [f"user{i % 17}:{i:05d}" for i in range(threads)]


def build(url: str, threads: int, checkpoints: int) -> None:
    with RedisSaver.from_conn_string(url) as saver:
        saver.setup()
        graph = build_agent(saver)
        turns = max(1, checkpoints // 5)  # the agent writes 5 checkpoints per user turn
        for tid in thread_ids(threads):
            chat(graph, tid, turns)


def snapshot(client: redis.Redis) -> Snapshot:
    keys = list(client.scan_iter(count=SCAN_COUNT))
    out: Snapshot = []
    for i in range(0, len(keys), PIPELINE):
        chunk = keys[i : i + PIPELINE]
        pipe = client.pipeline(transaction=False)
        for k in chunk:
            pipe.pttl(k)
            pipe.dump(k)
        replies = pipe.execute()
        out += [(k, replies[2 * j], replies[2 * j + 1]) for j, k in enumerate(chunk)]
    return out


def restore(url: str, client: redis.Redis, snap: Snapshot) -> None:
    """Exactly the built data again, fully indexed."""
    client.flushdb(asynchronous=False)
    with RedisSaver.from_conn_string(url) as saver:
        saver.setup()  # the indexes, in case the flush dropped them
    for i in range(0, len(snap), PIPELINE):
        pipe = client.pipeline(transaction=False)
        for key, pttl, payload in snap[i : i + PIPELINE]:
            pipe.restore(key, max(pttl, 0), payload, replace=True)
        pipe.execute()
    for index in ("checkpoint", "checkpoint_write"):
        while True:
            info = client.ft(index).info()
            if int(info.get("indexing", 0)) == 0:
                break
            time.sleep(0.01)


def upstream(url: str, keep: int, ids: list[str]) -> None:
    with RedisSaver.from_conn_string(url) as saver:
        saver.setup()
        saver.prune(ids, keep_last=keep)


def ours(url: str, keep: int, ids: list[str]) -> None:
    with RedisSaver.from_conn_string(url) as saver:
        report = sweep(saver, RetentionPolicy(keep_last=keep))
        assert report.ok, report.errors


def ours_richest(url: str, keep: int, ids: list[str]) -> None:
    with RedisSaver.from_conn_string(url) as saver:
        report = sweep(saver, richest(keep))
        assert report.ok, report.errors


def ours_richest_uncapped(url: str, keep: int, ids: list[str]) -> None:
    with RedisSaver.from_conn_string(url) as saver:
        report = sweep(saver, richest_uncapped(keep))
        assert report.ok, report.errors


def _split(key: str, prefix: str, tail: int) -> tuple[str, ...]:
    """(thread, ns, id, ...) of a key: the last `tail` parts and the ns are ':'-free here
    (no subgraphs in the demo agent), so the thread is whatever lies between."""
    parts = key[len(prefix) + 1 :].split(":")
    return (":".join(parts[: -tail - 1]), *parts[-tail - 1 :])


def floor(url: str, keep: int, ids: list[str]) -> None:
    """One SCAN, then pipelined UNLINK of exactly the keys that must go (layout-specific)."""
    client = redis.Redis.from_url(url, protocol=2, decode_responses=True)
    checkpoints: dict[tuple[str, str], list[str]] = defaultdict(list)
    writes: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for key in client.scan_iter(count=SCAN_COUNT):
        if key.startswith("checkpoint:"):
            tid, ns, cid = _split(key, "checkpoint", 1)
            checkpoints[(tid, ns)].append(cid)
        elif key.startswith("checkpoint_write:"):
            tid, ns, cid, _task, _idx = _split(key, "checkpoint_write", 3)
            writes[(tid, ns, cid)].append(key)
    doomed: list[str] = []
    for (tid, ns), cids in checkpoints.items():
        for cid in sorted(cids, reverse=True)[keep:]:
            doomed += [f"checkpoint:{tid}:{ns}:{cid}", f"write_keys_zset:{tid}:{ns}:{cid}"]
            doomed += writes.get((tid, ns, cid), [])
    pipe = client.pipeline(transaction=False)
    for i in range(0, len(doomed), 500):
        pipe.unlink(*doomed[i : i + 500])
    pipe.execute()
    client.close()


def leftovers(client: redis.Redis) -> tuple[int, int, int]:
    """(checkpoints left, orphaned write/registry keys, index entries without a key)."""
    cps, others = set(), []
    for key in client.scan_iter(count=SCAN_COUNT):
        k = key.decode()
        if k.startswith("checkpoint:"):
            cps.add(k)
        elif k.startswith(("checkpoint_write:", "write_keys_zset:")):
            others.append(k)
    orphans = 0
    for k in others:
        prefix, rest = k.split(":", 1)
        tid_ns_cid = rest if prefix == "write_keys_zset" else rest.rsplit(":", 2)[0]
        if f"checkpoint:{tid_ns_cid}" not in cps:
            orphans += 1
    indexed = int(client.ft("checkpoint").info()["num_docs"])
    return len(cps), orphans, indexed - len(cps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=200)
    ap.add_argument("--checkpoints", type=int, default=60)
    ap.add_argument("--keep", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    fixtures: Any = importlib.import_module("tests.fixtures_redis")
    with fixtures.redis_stack_server() as url:
        client = redis.Redis.from_url(url, protocol=2)
        t0 = time.perf_counter()
        build(url, args.threads, args.checkpoints)
        snap = snapshot(client)
        total = sum(1 for k, _t, _p in snap if k.startswith(b"checkpoint:"))
        print(
            f"built {total} checkpoints ({len(snap)} keys) in {args.threads} threads "
            f"in {time.perf_counter() - t0:.1f}s (real agent, RedisSaver, valkey + modules)"
        )

        ids = thread_ids(args.threads)
        contenders: dict[str, Callable[[str, int, list[str]], None]] = {
            f"upstream saver.prune(keep_last={args.keep})": upstream,
            "one SCAN + pipelined UNLINK (floor)": floor,
            "langgraph-retention sweep": ours,
            "langgraph-retention sweep, richest policy": ours_richest,
            "richest policy without max_bytes": ours_richest_uncapped,
        }
        best: dict[str, float] = {}
        left: dict[str, tuple[int, int, int]] = {}
        for _ in range(args.repeat):
            for name, fn in contenders.items():  # interleaved rounds: noise hits all alike
                restore(url, client, snap)
                start = time.perf_counter()
                fn(url, args.keep, ids)
                elapsed = time.perf_counter() - start
                best[name] = min(best.get(name, elapsed), elapsed)
                left[name] = leftovers(client)
        client.close()

    floor_s = best["one SCAN + pipelined UNLINK (floor)"]
    ours_s = best["langgraph-retention sweep"]
    print(
        f"\nRedis, {args.threads} threads x ~{args.checkpoints} checkpoints, keep {args.keep} "
        f"(best of {args.repeat})"
    )
    print(
        f"{'way':40} {'seconds':>9} {'x floor':>8} {'x ours':>8} {'left':>6} "
        f"{'orphan keys':>12} {'stale index':>12}"
    )
    for name, secs in best.items():
        n, orphans, stale = left[name]
        print(
            f"{name:40} {secs:9.3f} {secs / floor_s:8.2f} {secs / ours_s:8.2f} {n:6d} "
            f"{orphans:12d} {stale:12d}"
        )
    upstream_s = best[next(iter(best))]
    print(
        f"\nours / floor = {ours_s / floor_s:.2f} (target <= 1.5); "
        f"upstream / ours = {upstream_s / ours_s:.1f}x"
    )
    rich_s = best["langgraph-retention sweep, richest policy"]
    uncapped_s = best["richest policy without max_bytes"]
    print(
        f"richest policy / keep-last = {rich_s / ours_s:.3f} (target < 1.10); "
        f"without max_bytes {uncapped_s / ours_s:.3f}"
    )


if __name__ == "__main__":
    main()
