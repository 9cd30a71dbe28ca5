"""`max_bytes` in a batch-by-batch prune: decide without the cap, delete, then measure
what each thread kept with the statement that deletes its blobs, and cap only the threads
over it.

Knowing a thread's bytes before deciding meant reading every write and blob of the batch
once more (issue 10: 1.23x the time of keep-last at 200 x 60). The cap only withdraws
checkpoints the other rules keep, so the uncapped plan deletes a subset of what the capped
one deletes: its deletes run first, and what stays is all the cap must weigh. The blob
statement already reads the references of every remaining checkpoint; the kept blobs and
the kept checkpoints' writes are summed in it, through their primary keys. A thread over
the cap is sized per checkpoint (`SIZES_SQL`), decided again with the cap, and its extra
doomed checkpoints and their blobs go in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from langgraph_retention.errors import RetentionError
from langgraph_retention.policy import CheckpointEntry, RetentionPolicy
from langgraph_retention.report import ThreadResult

from ..base import Expire, decide
from .programs import (
    Decided,
    Key,
    add_totals,
    decide_program,
    doomed_params,
    expire_program,
    prune_program,
)
from .statements import (
    CHECKPOINT_KEY,
    DELETE_BLOBS_SQL,
    DELETE_CHECKPOINTS_SQL,
    REFERENCES,
    SIZES_SQL,
    Program,
    Rows,
    matches,
    text_array,
    totals,
)

__all__ = ["batch_program", "capped_prune_program"]

# The blobs of the threads no remaining checkpoint references, deleted as
# `DELETE_BLOBS_SQL` deletes them; with, per thread, the bytes of the blobs the remaining
# checkpoints reference and of the kept checkpoints' writes (rows 'kept', thread, rows,
# bytes). One scan of the threads' blobs sorts them into both; the doomed go by tuple id
# (a TID scan: a blob row is never updated, and none can move while this statement's
# snapshot sees it). Every CTE sees the snapshot taken after the checkpoint deletes.
MEASURED_BLOBS_SQL = f"""
WITH live AS ({REFERENCES}
),
b AS MATERIALIZED (
    SELECT b.ctid AS tid, b.thread_id, coalesce(pg_column_size(b.blob), 0) AS size,
           (b.thread_id, b.checkpoint_ns, b.channel, b.version) IN (SELECT * FROM live) AS live
    FROM checkpoint_blobs b WHERE b.thread_id = ANY(%(threads)s::text[])
),
gone_blobs AS (
    DELETE FROM checkpoint_blobs x WHERE x.ctid = ANY(ARRAY(SELECT tid FROM b WHERE NOT live))
    RETURNING x.thread_id, coalesce(pg_column_size(x.blob), 0) AS size
),
kept_writes AS (
    SELECT w.thread_id, pg_column_size(w.blob) AS size
    FROM unnest(%(kept_threads)s::text[], %(kept_ns)s::text[], %(kept_ids)s::text[])
         AS k(thread_id, checkpoint_ns, checkpoint_id)
    JOIN checkpoint_writes w ON {matches("k", "w", CHECKPOINT_KEY)}
),
kept AS (SELECT thread_id, size FROM b WHERE live UNION ALL SELECT * FROM kept_writes)
{totals("blobs", "gone_blobs")}
UNION ALL
{totals("kept", "kept")}
"""

# Around it: the planner prices a TID scan at a random page read per row, and for a few
# thousand rows takes a sequential scan of the whole table instead.
NO_SEQSCAN_SQL = "SET LOCAL enable_seqscan = off"
SEQSCAN_AS_BEFORE_SQL = "RESET enable_seqscan"


def batch_program(
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    dry_run: bool,
    now: datetime,
    explain: bool = False,
    expire: Expire | None = None,
) -> Program[list[ThreadResult]]:
    """A batch-by-batch prune: capped after its deletes where a byte cap allows it, else
    `prune_program` (dry runs and explanations size everything first, to show it)."""
    if policy.max_bytes is not None and not (dry_run or explain):
        return capped_prune_program(thread_ids, policy, now, expire)
    return prune_program(thread_ids, policy, dry_run, now, explain, expire)


def capped_prune_program(
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    now: datetime,
    expire: Expire | None = None,
) -> Program[list[ThreadResult]]:
    """Prune a batch under a policy with `max_bytes` (not a dry run, not explained: those
    read every size first, as they must show it)."""
    assert policy.max_bytes is not None
    decided = yield from decide_program(thread_ids, policy, now, expire=expire, uncapped=True)
    measured = [tid for tid in decided.threads if tid in decided.plans]
    kept: tuple[list[str], list[str], list[str]] = ([], [], [])
    kept_bytes: dict[str, int] = {}
    for tid in measured:
        plan = decided.plans[tid]
        kept_bytes[tid] = plan.kept_bytes  # the rows' own bytes (the index read sized them)
        for ns, ids in plan.keep.items():
            kept[0].extend([tid] * len(ids))
            kept[1].extend([ns] * len(ids))
            kept[2].extend(ids)
    totals_rows: Rows = []
    if decided.doomed[2]:
        totals_rows += yield DELETE_CHECKPOINTS_SQL, doomed_params(decided.doomed), True
    if measured:
        params = {
            "threads": text_array(measured),
            "kept_threads": text_array(kept[0]),
            "kept_ns": text_array(kept[1]),
            "kept_ids": text_array(kept[2]),
        }
        yield NO_SEQSCAN_SQL, {}, False
        for kind, tid, n, size in (yield MEASURED_BLOBS_SQL, params, True):
            if kind == "kept":
                kept_bytes[tid] += int(size)
            else:
                totals_rows.append((kind, tid, n, size))
        yield SEQSCAN_AS_BEFORE_SQL, {}, False
    over = sorted(tid for tid, size in kept_bytes.items() if size > policy.max_bytes)
    if over:
        totals_rows += yield from _cap_program(decided, over, policy, now)
    totals_rows += yield from expire_program(decided, dry_run=False)
    add_totals(decided.results, totals_rows)
    return [decided.results[tid] for tid in decided.threads]


def _cap_program(
    decided: Decided, over: list[str], policy: RetentionPolicy, now: datetime
) -> Program[Rows]:
    """Decide the threads over the cap again, with each remaining checkpoint sized, and
    delete what the capped plans delete besides what already went. The first pass's
    deletes stay counted (`add_totals` adds them to the new results)."""
    sizes: dict[Key, int] = {}
    for tid, ns, cid, size in (yield SIZES_SQL, {"threads": text_array(over)}, True):
        sizes[(tid, ns, cid)] = sizes.get((tid, ns, cid), 0) + int(size or 0)
    extra: tuple[list[str], list[str], list[str]] = ([], [], [])
    assert decided.entries is not None  # decided `uncapped`
    for tid in over:
        first = decided.plans[tid]
        gone = {(ns, cid) for ns, ids in first.delete.items() for cid in ids}
        entries = [_sized(e, tid, sizes, gone) for e in decided.entries[tid]]
        try:
            plan, result = decide(tid, entries, policy, now=now)
        except RetentionError as exc:  # not seen: the uncapped decision took these entries
            decided.results[tid].warnings.append(f"max_bytes not applied: {exc}")
            continue
        decided.results[tid] = result
        for ns, cid in plan.deleted_pairs():
            if (ns, cid) not in gone:
                extra[0].append(tid)
                extra[1].append(ns)
                extra[2].append(cid)
    rows: Rows = []
    if extra[2]:
        rows += yield DELETE_CHECKPOINTS_SQL, doomed_params(extra), True
        rows += yield DELETE_BLOBS_SQL, {"threads": text_array(sorted(set(extra[0])))}, True
    return rows


def _sized(
    entry: CheckpointEntry, tid: str, sizes: dict[Key, int], gone: set[tuple[str, str]]
) -> CheckpointEntry:
    """`entry` with its writes' and blobs' bytes added to its row's (a checkpoint the first
    pass deleted weighs nothing now)."""
    pair = (entry.checkpoint_ns, entry.checkpoint_id)
    if pair in gone:
        return entry._replace(size=0)
    return entry._replace(size=entry.size + sizes.get((tid, *pair), 0))
