"""The pure planner alone: `plan_thread` with keep-last 5 against the richest policy.

Indexes are built in memory the way backends hand them over: 60 checkpoints per thread,
UUIDv6 ids 37 minutes apart starting up to 40 days back, sizes, a pinned checkpoint every
17 and an interrupted one every 23. Both policies run side by side, interleaved, best of
`--repeat`; the output is milliseconds per 100 threads and the ratio.

    python benchmarks/bench_planner.py [--threads 200] [--checkpoints 60] [--repeat 20]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from langgraph_retention.policy import CheckpointEntry, RetentionPolicy, plan_thread
from richest import richest

_UUID_EPOCH_OFFSET = 0x01B21DD213814000
NOW = datetime(2026, 11, 25, tzinfo=UTC)

KEEP_LAST = RetentionPolicy(keep_last=5)
#: The benchmarks' richest policy, with a cap these synthetic threads exceed (so `fit`
#: runs) and a window some checkpoints fall in.
RICHEST = replace(richest(5), max_bytes=40_000, keep_within=timedelta(hours=2))


def uuid6(when: datetime, rng: random.Random) -> str:
    ticks = int(when.timestamp() * 10_000_000) + _UUID_EPOCH_OFFSET
    high, mid, low = ticks >> 28, (ticks >> 12) & 0xFFFF, ticks & 0x0FFF
    clock, node = rng.getrandbits(14) | 0x8000, rng.getrandbits(48)
    return f"{high:08x}-{mid:04x}-{0x6000 | low:04x}-{clock:04x}-{node:012x}"


def thread_index(rng: random.Random, checkpoints: int) -> list[CheckpointEntry]:
    start = NOW - timedelta(days=rng.uniform(0, 40))
    ids = sorted(uuid6(start + timedelta(minutes=37 * i), rng) for i in range(checkpoints))
    entries, parent = [], None
    for i, cid in enumerate(ids):
        entries.append(
            CheckpointEntry(
                "",
                cid,
                parent,
                size=2000 + 10 * i,
                tags=frozenset({"pin"}) if i % 17 == 0 else frozenset(),
                interrupted=i % 23 == 0,
            )
        )
        parent = cid
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=200)
    parser.add_argument("--checkpoints", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(1)
    threads = [thread_index(rng, args.checkpoints) for _ in range(args.threads)]
    best = {"keep-last 5": float("inf"), "richest": float("inf")}
    deleted = {}
    for _ in range(args.repeat):
        for name, policy in (("keep-last 5", KEEP_LAST), ("richest", RICHEST)):
            began = time.perf_counter()
            deleted[name] = sum(plan_thread(t, policy, now=NOW).deleted_count for t in threads)
            best[name] = min(best[name], time.perf_counter() - began)
    per_100 = {name: 1000 * secs * 100 / args.threads for name, secs in best.items()}
    print(f"{args.threads} threads x {args.checkpoints} checkpoints, best of {args.repeat}")
    for name in best:
        print(f"  {name:12} {per_100[name]:7.2f} ms per 100 threads, deletes {deleted[name]}")
    print(f"  richest / keep-last: {best['richest'] / best['keep-last 5']:.2f}x")


if __name__ == "__main__":
    main()
