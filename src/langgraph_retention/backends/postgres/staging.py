"""Staged sweeps, the planning half: each batch decides and locates its doomed rows in a
transaction of reads; the sweep's flushes delete them (`stage.py`).

The index read also returns each checkpoint row's location (tuple id, key hash), and two
more reads return the locations of the doomed checkpoints' writes and of the blobs no
kept checkpoint references, grouped by block range and packed by the server (no Python
object per row). For the richer rules (`keep_interrupted`, `max_bytes`) the same two reads
measure what those need (issue 10: their own reads of every write and blob cost more
than the rules' planning).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from langgraph.checkpoint.serde.types import INTERRUPT

from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.report import ThreadResult

from ..base import Expire
from . import stage
from .programs import Decided, add_totals, decide_program, expire_program
from .stage import BLOB_HASH, HASH_SIZE, INT8_OID, WRITE_HASH, Int8Array, StagedBatch, packed_array
from .statements import BLOB_KEY, CHECKPOINT_KEY, Program, key_hash, matches, text_array

__all__ = ["staged_program"]

# A row's bucket, its location and its key's hash, aggregated per bucket as the server
# packs them (both aggregates see the group's rows in the same order).
_BUCKETED = """(({a}.ctid::text::point)[0])::bigint >> %(shift)s, string_agg(tidsend({a}.ctid), ''),
       string_agg(int8send({hash}), '')"""

# The doomed checkpoints' writes (by checkpoint key, so writes saved ahead of a kept
# checkpoint stay), located. The doomed keys go as their 64-bit hashes (the index read
# returned them), one int8[] the server probes with a hash table: half the time of a
# semi-join on three text columns (odds of a kept checkpoint's key colliding with one of a
# batch's doomed: ~10^-12).
STAGE_WRITES_SQL = f"""
SELECT {_BUCKETED.format(a="w", hash=WRITE_HASH)}
FROM checkpoint_writes w
WHERE w.thread_id = ANY(%(threads)s::text[])
  AND {key_hash("w", CHECKPOINT_KEY)} = ANY(%(doomed)b)
GROUP BY 1
"""

# The blobs of the batch's threads no kept checkpoint references (the doomed ones' only,
# dropped subgraph calls', orphans of an earlier cleanup or a halted flush), located, and
# the threads with nothing doomed they belong to. Only the kept checkpoints' versions are
# read, each through the primary key (the LIMIT keeps it a probe per kept checkpoint:
# joined, the planner hashed the whole table). Checkpoints committed since the index read
# are not among them: the flush's re-check protects their blobs. The planner's guess of
# 100 versions per checkpoint (25 times too many) is what makes it hash the references:
# told fewer, it probed all of them once per blob.
_KEPT_REFERENCES = """kept AS MATERIALIZED (
    SELECT * FROM unnest(%(kept_threads)s::text[], %(kept_ns)s::text[], %(kept_ids)s::text[])
         AS k(thread_id, checkpoint_ns, checkpoint_id)
),
live AS (
    SELECT k.thread_id, k.checkpoint_ns, v.key AS channel, v.value AS version
    FROM kept k
    CROSS JOIN LATERAL (
        SELECT c.checkpoint -> 'channel_versions' AS versions FROM checkpoints c
        WHERE c.thread_id = k.thread_id AND c.checkpoint_ns = k.checkpoint_ns
          AND c.checkpoint_id = k.checkpoint_id
        LIMIT 1
    ) c
    CROSS JOIN LATERAL jsonb_each_text(c.versions) AS v
)"""

STAGE_BLOBS_SQL = f"""
WITH {_KEPT_REFERENCES}
SELECT {_BUCKETED.format(a="b", hash=BLOB_HASH)},
       array_agg(DISTINCT b.thread_id) FILTER (WHERE b.thread_id <> ALL(%(doomed)s::text[]))
FROM checkpoint_blobs b
WHERE b.thread_id = ANY(%(threads)s::text[])
  AND NOT EXISTS (SELECT 1 FROM live l WHERE {matches("l", "b", BLOB_KEY)})
GROUP BY 1
"""

# The same two reads for the richer rules, measuring what they need on the way instead
# of in reads of their own before the decision (issue 10: `max_bytes` cost a read of every
# write and blob of the batch): per thread, the bytes of the writes the plan keeps, and
# whether a doomed checkpoint has a pending interrupt (`keep_interrupted` would keep it);
# per thread, the bytes of the blobs its kept checkpoints reference.
STAGE_WRITES_FACTS_SQL = f"""
WITH w AS MATERIALIZED (
    SELECT w.ctid, w.thread_id, w.channel, pg_column_size(w.blob) AS size,
           {key_hash("w", CHECKPOINT_KEY)} = ANY(%(doomed)b) AS doomed,
           w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx
    FROM checkpoint_writes w WHERE w.thread_id = ANY(%(threads)s::text[])
)
SELECT {_BUCKETED.format(a="w", hash=WRITE_HASH)}, NULL::text, NULL::bigint, NULL::bool
FROM w WHERE doomed GROUP BY 1
UNION ALL
SELECT NULL, NULL, NULL, thread_id, coalesce(sum(size) FILTER (WHERE NOT doomed), 0),
       coalesce(bool_or(doomed AND channel = '{INTERRUPT}'), false)
FROM w GROUP BY thread_id
"""

STAGE_BLOBS_FACTS_SQL = f"""
WITH {_KEPT_REFERENCES},
b AS MATERIALIZED (
    SELECT b.ctid, b.thread_id, b.checkpoint_ns, b.channel, b.version,
           coalesce(pg_column_size(b.blob), 0) AS size,
           (b.thread_id, b.checkpoint_ns, b.channel, b.version) IN (SELECT * FROM live) AS live
    FROM checkpoint_blobs b WHERE b.thread_id = ANY(%(threads)s::text[])
)
SELECT {_BUCKETED.format(a="b", hash=BLOB_HASH)}, NULL::text, NULL::bigint, NULL::bool
FROM b WHERE NOT live GROUP BY 1
UNION ALL
SELECT NULL, NULL, NULL, thread_id, coalesce(sum(size) FILTER (WHERE live), 0),
       coalesce(bool_or(NOT live), false)
FROM b GROUP BY thread_id
"""

# -- programs -------------------------------------------------------------------------------


def staged_program(
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    now: datetime,
    explain: bool = False,
    expire: Expire | None = None,
) -> Program[tuple[list[ThreadResult], StagedBatch]]:
    """Decide the batch and locate its doomed rows (reads only; expired threads are still
    deleted here, where their newest checkpoint is re-checked). Returns the results of the
    threads with nothing staged, and what the batch staged.

    Interrupts and sizes (`keep_interrupted`, `max_bytes`) are measured by the staged
    reads themselves; the few threads whose measures change their plan (a doomed
    checkpoint with a pending interrupt, kept bytes over the cap) are decided again as an
    unstaged prune decides them, and the batch is located again. With `explain`, the
    facts are read first (every reason must be there)."""
    measured = (policy.max_bytes is not None or policy.keep_interrupted) and not explain
    decided = yield from decide_program(
        thread_ids, policy, now, explain, expire, located=True, deferred_facts=measured
    )
    batch = StagedBatch()
    if decided.plans:
        redo = yield from _locate_program(decided, batch, policy if measured else None)
        if redo:
            again = yield from decide_program(
                sorted(redo), policy, now, explain, expire, located=True, first=False
            )
            for tid in redo:
                decided.plans.pop(tid, None)
            decided.results.update(again.results)
            decided.plans.update(again.plans)
            decided.located.update(again.located)
            batch = StagedBatch()
            yield from _locate_program(decided, batch, None)
    decided.located = {}
    add_totals(decided.results, (yield from expire_program(decided, dry_run=False)))
    results = [decided.results[tid] for tid in decided.threads if tid not in batch.results]
    return results, batch


def _locate_program(
    decided: Decided, batch: StagedBatch, measuring: RetentionPolicy | None
) -> Program[set[str]]:
    """Stage the doomed checkpoints (located by the index read), their writes, and the
    blobs no kept checkpoint references, in every planned thread: also those with nothing
    doomed, whose blobs a halted flush may have left unreferenced. Note each staged
    thread's result and the newest checkpoint id its plan saw in each namespace.

    `measuring`: the policy whose interrupts and sizes the reads measure; returns the
    threads whose plan they change (to be decided again)."""
    kept: tuple[list[str], list[str], list[str]] = ([], [], [])
    doomed_hashes: list[bytes] = []
    located, add_row = decided.located, batch.checkpoints.add_row
    staged: set[str] = set()
    for tid, plan in decided.plans.items():
        for ns, ids in plan.delete.items():
            staged.add(tid)
            for cid in ids:
                tid_bytes, key_hash = located[(tid, ns, cid)]
                add_row(tid_bytes, key_hash)
                doomed_hashes.append(key_hash)
        for ns, ids in plan.keep.items():
            kept[0].extend([tid] * len(ids))
            kept[1].extend([ns] * len(ids))
            kept[2].extend(ids)
    doomed = Int8Array(packed_array(INT8_OID, HASH_SIZE, b"".join(doomed_hashes)))
    kept_params = {
        "kept_threads": text_array(kept[0]),
        "kept_ns": text_array(kept[1]),
        "kept_ids": text_array(kept[2]),
    }
    planned = text_array(list(decided.plans))
    kept_bytes: dict[str, int] = {tid: plan.kept_bytes for tid, plan in decided.plans.items()}
    redo: set[str] = set()
    if measuring is not None:
        params = {"threads": planned, "shift": stage.BUCKET_SHIFT, "doomed": doomed}
        for bucket, tids, hashes, tid, size, interrupted in (
            yield STAGE_WRITES_FACTS_SQL, params, True
        ):
            if bucket is not None:
                batch.writes.add(bucket, tids, hashes)
            else:
                kept_bytes[tid] += int(size)
                if interrupted and measuring.keep_interrupted:
                    redo.add(tid)
        params = {"threads": planned, "shift": stage.BUCKET_SHIFT, **kept_params}
        for bucket, tids, hashes, tid, size, unreferenced in (
            yield STAGE_BLOBS_FACTS_SQL, params, True
        ):
            if bucket is not None:
                batch.blobs.add(bucket, tids, hashes)
            else:
                kept_bytes[tid] += int(size)
                if unreferenced:
                    staged.add(tid)
        cap = measuring.max_bytes
        if cap is not None:
            redo.update(tid for tid, size in kept_bytes.items() if size > cap)
        if redo:
            return redo
    else:
        if staged:
            params = {
                "threads": text_array(sorted(staged)),
                "shift": stage.BUCKET_SHIFT,
                "doomed": doomed,
            }
            for bucket, tids, hashes in (yield STAGE_WRITES_SQL, params, True):
                batch.writes.add(bucket, tids, hashes)
        params = {
            "threads": planned,
            "doomed": text_array(sorted(staged)),
            "shift": stage.BUCKET_SHIFT,
            **kept_params,
        }
        for bucket, tids, hashes, threads in (yield STAGE_BLOBS_SQL, params, True):
            batch.blobs.add(bucket, tids, hashes)
            if threads:
                staged.update(threads)
    for tid in staged:
        batch.results[tid] = decided.results[tid]
        plan = decided.plans[tid]
        for ns in {*plan.keep, *plan.delete}:
            batch.newest[(tid, ns)] = max(plan.keep.get(ns, []) + plan.delete.get(ns, []))
    return redo
