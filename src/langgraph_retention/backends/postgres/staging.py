"""Staged sweeps: batches decide and locate their doomed rows, flushes delete them in
physical order.

On a store whose threads' rows are interleaved on disk, a batch of threads has rows on a
large share of the heap pages, so deleting batch by batch dirties each page (and, after
every server checkpoint, logs its full image to the WAL) once per batch with a row on
it. A staged sweep instead plans each batch in a transaction of reads: the index read
also returns each checkpoint row's location, and two more reads return the locations of
the doomed checkpoints' writes and of the blobs no kept checkpoint references, grouped
by block range and packed by the server (no Python object per row). The sweep's flushes
then delete by tuple id (`ctid = ANY(...)`, a TID scan that visits pages in order), one
block range after another, in short transactions: each page is changed once per flush.

A tuple id may hold another row by the time of the flush (VACUUM frees the slot of a row
someone else deleted and an insert takes it; VACUUM FULL or pg_repack move every row), so
every delete also matches the hash of the row's key the plan read: a row that is not one
of the doomed is left alone (a 64-bit hash of another key in a transaction's set of
~10,000: odds of 1 in 10^15 per displaced row). Writes go
first, then checkpoints, then blobs, so a flush stopped between two transactions leaves
only doomed checkpoints (the next sweep finds them) or unreferenced blobs (the next
sweep's blob read finds them). A blob is deleted only if no checkpoint of its thread
newer than the plan's newest references it, checked by the deleting statement: a run
that forked from a doomed checkpoint meanwhile keeps the blobs it needs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from langgraph.checkpoint.serde.types import INTERRUPT
from psycopg import AsyncCursor, Cursor
from psycopg.adapt import Dumper
from psycopg.pq import Format

from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.report import ThreadResult

from ..base import Expire, Stage
from .programs import Decided, add_totals, decide_program, expire_program
from .statements import (
    BLOB_KEY,
    CHECKPOINT_HASH,
    CHECKPOINT_KEY,
    CHECKPOINT_SIZE,
    ISOLATION_SQL,
    SETTINGS_SQL,
    Program,
    Rows,
    key_hash,
    matches,
    text_array,
    totals,
)

__all__ = ["PostgresStage", "StagedBatch", "flush_program", "register_dumpers", "staged_program"]

#: Heap blocks per bucket of staged locations (2**7 = 128 blocks, 1 MiB of heap): the
#: unit in which locations are grouped by the server and flushed in order.
BUCKET_SHIFT = 7
#: Rows per flush transaction (whole buckets, so a little more): short enough that an
#: app's statement waiting on one of our row locks waits briefly.
FLUSH_CHUNK_ROWS = 20_000
#: Memory a stage may hold before the sweep flushes it: 14 bytes per staged row, plus
#: `THREAD_BYTES` per staged thread (its result and its newest checkpoint id).
STAGE_BYTES = 32 * 1024 * 1024
THREAD_BYTES = 400

_TID_SIZE, _HASH_SIZE = 6, 8
_TID_OID, _INT8_OID, _TID_ARRAY_OID, _INT8_ARRAY_OID = 27, 20, 1010, 1016

_WRITE_HASH = key_hash("w", ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id"), "w.idx")
_BLOB_HASH = key_hash("b", BLOB_KEY)

# -- statements ---------------------------------------------------------------------------

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
SELECT {_BUCKETED.format(a="w", hash=_WRITE_HASH)}
FROM checkpoint_writes w
WHERE w.thread_id = ANY(%(threads)s::text[])
  AND {key_hash("w", CHECKPOINT_KEY)} = ANY(%(doomed)b)
GROUP BY 1
"""

# The blobs of the batch's threads no kept checkpoint references (the doomed ones' only,
# dropped subgraph calls', orphans of an earlier cleanup or a halted flush), located, and
# the threads with nothing doomed they belong to. Only the kept
# checkpoints' versions are read, each through the primary key (the LIMIT keeps it a
# probe per kept checkpoint: joined, the planner hashed the whole table). Checkpoints
# committed since the index read are not among them: the flush's re-check protects
# their blobs.
# The planner's guess of 100 versions per checkpoint (25 times too many) is what makes it
# hash the references: told fewer, it probed all of them once per blob.
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
SELECT {_BUCKETED.format(a="b", hash=_BLOB_HASH)},
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
SELECT {_BUCKETED.format(a="w", hash=_WRITE_HASH)}, NULL::text, NULL::bigint, NULL::bool
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
SELECT {_BUCKETED.format(a="b", hash=_BLOB_HASH)}, NULL::text, NULL::bigint, NULL::bool
FROM b WHERE NOT live GROUP BY 1
UNION ALL
SELECT NULL, NULL, NULL, thread_id, coalesce(sum(size) FILTER (WHERE live), 0),
       coalesce(bool_or(NOT live), false)
FROM b GROUP BY thread_id
"""

# The flush: one statement per block range and table, counting what it deleted per thread.
# Its transactions take the prune's settings and no sequential scans: the planner costs a
# TID scan at a random page read per row, and 10,000 rows of one block range cost more
# than scanning a table of 16,000 pages, so every flush transaction read the whole table.
FLUSH_SETTINGS_SQL = SETTINGS_SQL + ", set_config('enable_seqscan', 'off', true)"
_LOCATED = "{a}.ctid = ANY(%(tids)b) AND {hash} = ANY(%(hashes)b)"

FLUSH_WRITES_SQL = f"""
WITH gone AS (
    DELETE FROM checkpoint_writes w WHERE {_LOCATED.format(a="w", hash=_WRITE_HASH)}
    RETURNING w.thread_id, pg_column_size(w.blob) AS size
)
{totals("writes", "gone")}
"""

FLUSH_CHECKPOINTS_SQL = f"""
WITH gone AS (
    DELETE FROM checkpoints c WHERE {_LOCATED.format(a="c", hash=CHECKPOINT_HASH)}
    RETURNING c.thread_id, {CHECKPOINT_SIZE} AS size
)
{totals("checkpoints", "gone")}
"""

# Blobs, last, each kept if its thread gained a checkpoint since the plan in a namespace
# the plan saw (an id above the newest it saw there): a run that forked from a doomed
# checkpoint meanwhile may reference it. Such threads' blobs stay for the next sweep to
# judge. Checked by the deleting statement itself, once per planned namespace (a probe of
# the primary key that finds nothing); a scalar array, so the blobs stay a TID scan (a
# join let the planner read them through the thread index instead).
FLUSH_BLOBS_SQL = f"""
WITH planned AS MATERIALIZED (
    SELECT * FROM unnest(%(threads)s::text[], %(namespaces)s::text[], %(newest)s::text[])
         AS p(thread_id, checkpoint_ns, newest)
),
gone AS (
    DELETE FROM checkpoint_blobs b
    WHERE {_LOCATED.format(a="b", hash=_BLOB_HASH)}
      AND b.thread_id <> ALL(ARRAY(
          SELECT p.thread_id FROM planned p
          WHERE EXISTS (SELECT FROM checkpoints c
                        WHERE c.thread_id = p.thread_id AND c.checkpoint_ns = p.checkpoint_ns
                          AND c.checkpoint_id > p.newest)))
    RETURNING b.thread_id, coalesce(pg_column_size(b.blob), 0) AS size
)
{totals("blobs", "gone")}
"""

# -- binary arrays ------------------------------------------------------------------------


class TidArray(bytes):
    """A tid[] parameter, already in PostgreSQL's binary array format."""


class Int8Array(bytes):
    """An int8[] parameter, already in PostgreSQL's binary array format."""


class _TidArrayDumper(Dumper):
    format = Format.BINARY
    oid = _TID_ARRAY_OID

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


class _Int8ArrayDumper(_TidArrayDumper):
    oid = _INT8_ARRAY_OID


def register_dumpers(cur: Cursor[Any] | AsyncCursor[Any]) -> None:
    """Teach one cursor of ours (not the saver's connection) to send the location arrays."""
    cur.adapters.register_dumper(TidArray, _TidArrayDumper)
    cur.adapters.register_dumper(Int8Array, _Int8ArrayDumper)


def _binary_array(element_oid: int, size: int, packed: bytes) -> bytes:
    """A one-dimensional array of fixed-`size` elements given back to back in `packed`, in
    the binary wire format (each element behind its 4-byte length), built with strided
    byte copies rather than a Python object per element."""
    n = len(packed) // size
    if not n:
        return struct.pack(">iii", 0, 0, element_oid)
    stride = 4 + size
    out = bytearray(stride * n)
    out[3::stride] = bytes((size,)) * n  # the length's low byte; the rest stay 0
    for i in range(size):
        out[4 + i :: stride] = packed[i::size]
    return struct.pack(">iiiii", 1, 0, element_oid, n, 1) + out


# -- what a batch stages, and the stage -----------------------------------------------------


class Locations:
    """Where one table's doomed rows are: their tuple ids and their keys' hashes (6 + 8
    bytes a row), grouped by block range."""

    __slots__ = ("hashes", "rows", "tids")

    def __init__(self) -> None:
        self.tids: dict[int, bytearray] = {}
        self.hashes: dict[int, bytearray] = {}
        self.rows = 0

    def add(self, bucket: int, tids: bytes | bytearray, hashes: bytes | bytearray) -> None:
        if (held := self.tids.get(bucket)) is None:
            self.tids[bucket], self.hashes[bucket] = bytearray(tids), bytearray(hashes)
        else:
            held += tids
            self.hashes[bucket] += hashes
        self.rows += len(tids) // _TID_SIZE

    def add_row(self, tid: bytes, key_hash: bytes) -> None:
        self.add(int.from_bytes(tid, "big") >> (16 + BUCKET_SHIFT), tid, key_hash)

    def absorb(self, other: Locations) -> None:
        for bucket, tids in other.tids.items():
            self.add(bucket, tids, other.hashes[bucket])

    def nbytes(self) -> int:
        return self.rows * (_TID_SIZE + _HASH_SIZE) + 128 * len(self.tids)

    def chunks(self, size: int) -> Iterator[tuple[TidArray, Int8Array]]:
        """The rows in block order, whole buckets of at least `size` rows at a time, as
        parameters; each bucket is forgotten once handed out."""
        tids: list[bytearray] = []
        hashes: list[bytearray] = []
        n = 0
        for bucket in sorted(self.tids):
            tids.append(self.tids.pop(bucket))
            hashes.append(self.hashes.pop(bucket))
            n += len(tids[-1]) // _TID_SIZE
            if n >= size or not self.tids:
                yield (
                    TidArray(_binary_array(_TID_OID, _TID_SIZE, b"".join(tids))),
                    Int8Array(_binary_array(_INT8_OID, _HASH_SIZE, b"".join(hashes))),
                )
                tids, hashes, n = [], [], 0
        self.rows = 0


class StagedBatch:
    """What one batch staged: its doomed rows' locations, its threads' results, and the
    newest checkpoint id each thread's plan saw in each namespace (the blob re-check)."""

    def __init__(self) -> None:
        self.writes = Locations()
        self.checkpoints = Locations()
        self.blobs = Locations()
        self.results: dict[str, ThreadResult] = {}
        self.newest: dict[tuple[str, str], str] = {}


class PostgresStage(Stage):
    """A sweep's staged deletes, flushed in physical order (`PostgresBackend.flush_stage`)."""

    def __init__(self, budget: int | None = None) -> None:
        super().__init__()
        self.budget = STAGE_BYTES if budget is None else budget
        self.clear()

    def clear(self) -> None:
        super().clear()
        self.writes = Locations()
        self.checkpoints = Locations()
        self.blobs = Locations()
        self.newest: dict[tuple[str, str], str] = {}
        self.halted = False

    def absorb(self, batch: StagedBatch) -> None:
        """Take a batch's staged deletes (after its transaction succeeded)."""
        self.writes.absorb(batch.writes)
        self.checkpoints.absorb(batch.checkpoints)
        self.blobs.absorb(batch.blobs)
        self.results.update(batch.results)
        self.newest.update(batch.newest)

    def nbytes(self) -> int:
        held = self.writes.nbytes() + self.checkpoints.nbytes() + self.blobs.nbytes()
        return held + THREAD_BYTES * len(self.results)

    def full(self) -> bool:
        return self.nbytes() >= self.budget

    def statements(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The flush's deleting statements, in order: writes, checkpoints, then blobs, each
        table in block order."""
        for tids, hashes in self.writes.chunks(FLUSH_CHUNK_ROWS):
            yield FLUSH_WRITES_SQL, {"tids": tids, "hashes": hashes}
        for tids, hashes in self.checkpoints.chunks(FLUSH_CHUNK_ROWS):
            yield FLUSH_CHECKPOINTS_SQL, {"tids": tids, "hashes": hashes}
        planned = {
            "threads": text_array([tid for tid, _ns in self.newest]),
            "namespaces": text_array([ns for _tid, ns in self.newest]),
            "newest": text_array(list(self.newest.values())),
        }
        for tids, hashes in self.blobs.chunks(FLUSH_CHUNK_ROWS):
            yield FLUSH_BLOBS_SQL, {**planned, "tids": tids, "hashes": hashes}

    def count(self, rows: Rows) -> None:
        """Add what a committed flush transaction deleted to its threads' results."""
        add_totals(self.results, rows)

    def finish(self) -> list[ThreadResult]:
        """The staged threads' results (a halted flush warns on each), the stage cleared."""
        results = list(self.results.values())
        if self.halted:
            for result in results:
                result.warnings.append(
                    "the sweep stopped before all its deletes ran; the next sweep finds the rest"
                )
        self.clear()
        return results


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
    doomed = Int8Array(_binary_array(_INT8_OID, _HASH_SIZE, b"".join(doomed_hashes)))
    kept_params = {
        "kept_threads": text_array(kept[0]),
        "kept_ns": text_array(kept[1]),
        "kept_ids": text_array(kept[2]),
    }
    planned = text_array(list(decided.plans))
    kept_bytes: dict[str, int] = {tid: plan.kept_bytes for tid, plan in decided.plans.items()}
    redo: set[str] = set()
    if measuring is not None:
        params = {"threads": planned, "shift": BUCKET_SHIFT, "doomed": doomed}
        for bucket, tids, hashes, tid, size, interrupted in (
            yield STAGE_WRITES_FACTS_SQL, params, True
        ):
            if bucket is not None:
                batch.writes.add(bucket, tids, hashes)
            else:
                kept_bytes[tid] += int(size)
                if interrupted and measuring.keep_interrupted:
                    redo.add(tid)
        params = {"threads": planned, "shift": BUCKET_SHIFT, **kept_params}
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
                "shift": BUCKET_SHIFT,
                "doomed": doomed,
            }
            for bucket, tids, hashes in (yield STAGE_WRITES_SQL, params, True):
                batch.writes.add(bucket, tids, hashes)
        params = {
            "threads": planned,
            "doomed": text_array(sorted(staged)),
            "shift": BUCKET_SHIFT,
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


def flush_program(sql: str, params: dict[str, Any]) -> Program[Rows]:
    """One flush transaction: our settings, then one block range's deletes."""
    yield ISOLATION_SQL, {}, False
    yield FLUSH_SETTINGS_SQL, {}, False
    return (yield sql, params, True)
