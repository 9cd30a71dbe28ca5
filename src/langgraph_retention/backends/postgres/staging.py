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

Tuple ids are reused after VACUUM frees them, so every delete also matches the `xmin`
the plan saw: a tuple written into a freed slot after the plan has a newer one (its
writer was not yet committed when the plan read the table), and is left alone. Writes go
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

from psycopg import AsyncCursor, Cursor
from psycopg.adapt import Dumper
from psycopg.pq import Format

from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.report import ThreadResult

from ..base import Expire, Stage
from .programs import Decided, add_totals, decide_program, expire_program
from .statements import (
    BLOB_KEY,
    CHECKPOINT_SIZE,
    DOOMED_CTE,
    ISOLATION_SQL,
    KEY_IN_DOOMED,
    SETTINGS_SQL,
    Program,
    Rows,
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
FLUSH_CHUNK_ROWS = 10_000
#: Memory a stage may hold before the sweep flushes it: 10 bytes per staged row, plus
#: `THREAD_BYTES` per staged thread (its result and its newest checkpoint id).
STAGE_BYTES = 32 * 1024 * 1024
THREAD_BYTES = 400

_TID_SIZE, _XID_SIZE = 6, 4
_TID_OID, _XID_OID, _TID_ARRAY_OID, _XID_ARRAY_OID = 27, 28, 1010, 1011

# -- statements ---------------------------------------------------------------------------

# A row's bucket, its location and its xmin, aggregated per bucket as the server packs them.
_BUCKETED = """(({a}.ctid::text::point)[0])::bigint >> {shift}, string_agg(tidsend({a}.ctid), ''),
       string_agg(xidsend({a}.xmin), '')"""

# The doomed checkpoints' writes (by checkpoint key, so writes saved ahead of a kept
# checkpoint stay), located.
STAGE_WRITES_SQL = f"""
WITH {DOOMED_CTE}
SELECT {_BUCKETED.format(a="w", shift=BUCKET_SHIFT)}
FROM checkpoint_writes w
WHERE w.thread_id = ANY(%(threads)s::text[]) AND {KEY_IN_DOOMED.format("w", "w", "w")}
GROUP BY 1
"""

# The blobs of the doomed threads no kept checkpoint references (the doomed ones' only,
# dropped subgraph calls', orphans of an earlier cleanup), located. Only the kept
# checkpoints' versions are read, each through the primary key; checkpoints committed
# since the index read are not among them, and the flush's re-check protects their blobs.
STAGE_BLOBS_SQL = f"""
WITH kept AS MATERIALIZED (
    SELECT * FROM unnest(%(kept_threads)s::text[], %(kept_ns)s::text[], %(kept_ids)s::text[])
         AS k(thread_id, checkpoint_ns, checkpoint_id)
),
live AS (
    SELECT c.thread_id, c.checkpoint_ns, v.key AS channel, v.value AS version
    FROM kept k
    JOIN checkpoints c ON {matches("c", "k", ("thread_id", "checkpoint_ns", "checkpoint_id"))}
    CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
    WHERE c.checkpoint -> 'channel_versions' ? v.key
)
SELECT {_BUCKETED.format(a="b", shift=BUCKET_SHIFT)}
FROM checkpoint_blobs b
WHERE b.thread_id = ANY(%(threads)s::text[])
  AND NOT EXISTS (SELECT 1 FROM live l WHERE {matches("l", "b", BLOB_KEY)})
GROUP BY 1
"""

# The flush: one statement per block range and table, counting what it deleted per thread.
_LOCATED = "{a}.ctid = ANY(%(tids)b) AND {a}.xmin = ANY(%(xmins)b)"

FLUSH_WRITES_SQL = f"""
WITH gone AS (
    DELETE FROM checkpoint_writes w WHERE {_LOCATED.format(a="w")}
    RETURNING w.thread_id, pg_column_size(w.blob) AS size
)
{totals("writes", "gone")}
"""

FLUSH_CHECKPOINTS_SQL = f"""
WITH gone AS (
    DELETE FROM checkpoints c WHERE {_LOCATED.format(a="c")}
    RETURNING c.thread_id, {CHECKPOINT_SIZE} AS size
)
{totals("checkpoints", "gone")}
"""

# Blobs, last, each re-checked against the checkpoints its thread gained since the plan
# (ids above the oldest of the newest ids the plan saw in the thread's namespaces). The
# re-check is a scalar subquery so it stays one primary-key probe per blob (an anti-join
# could hash the whole checkpoints table instead); it finds nothing unless a run wrote.
FLUSH_BLOBS_SQL = f"""
WITH planned AS MATERIALIZED (
    SELECT * FROM unnest(%(threads)s::text[], %(newest)s::text[]) AS p(thread_id, newest)
),
gone AS (
    DELETE FROM checkpoint_blobs b USING planned p
    WHERE {_LOCATED.format(a="b")} AND p.thread_id = b.thread_id
      AND (SELECT true FROM checkpoints c
           WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
             AND c.checkpoint_id > p.newest
             AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version
           LIMIT 1) IS NULL
    RETURNING b.thread_id, coalesce(pg_column_size(b.blob), 0) AS size
)
{totals("blobs", "gone")}
"""

# -- binary arrays ------------------------------------------------------------------------


class TidArray(bytes):
    """A tid[] parameter, already in PostgreSQL's binary array format."""


class XidArray(bytes):
    """An xid[] parameter, already in PostgreSQL's binary array format."""


class _TidArrayDumper(Dumper):
    format = Format.BINARY
    oid = _TID_ARRAY_OID

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


class _XidArrayDumper(_TidArrayDumper):
    oid = _XID_ARRAY_OID


def register_dumpers(cur: Cursor[Any] | AsyncCursor[Any]) -> None:
    """Teach one cursor of ours (not the saver's connection) to send the location arrays."""
    cur.adapters.register_dumper(TidArray, _TidArrayDumper)
    cur.adapters.register_dumper(XidArray, _XidArrayDumper)


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
    """Where one table's doomed rows are: their tuple ids and the xmin each had when read
    (6 + 4 bytes a row), grouped by block range."""

    __slots__ = ("rows", "tids", "xmins")

    def __init__(self) -> None:
        self.tids: dict[int, bytearray] = {}
        self.xmins: dict[int, bytearray] = {}
        self.rows = 0

    def add(self, bucket: int, tids: bytes | bytearray, xmins: bytes | bytearray) -> None:
        if (held := self.tids.get(bucket)) is None:
            self.tids[bucket], self.xmins[bucket] = bytearray(tids), bytearray(xmins)
        else:
            held += tids
            self.xmins[bucket] += xmins
        self.rows += len(tids) // _TID_SIZE

    def add_row(self, tid: bytes, xmin: bytes) -> None:
        self.add(int.from_bytes(tid, "big") >> (16 + BUCKET_SHIFT), tid, xmin)

    def absorb(self, other: Locations) -> None:
        for bucket, tids in other.tids.items():
            self.add(bucket, tids, other.xmins[bucket])

    def nbytes(self) -> int:
        return self.rows * (_TID_SIZE + _XID_SIZE) + 128 * len(self.tids)

    def chunks(self, size: int) -> Iterator[tuple[TidArray, XidArray]]:
        """The rows in block order, whole buckets of at least `size` rows at a time, as
        parameters; each bucket is forgotten once handed out."""
        tids: list[bytearray] = []
        xmins: list[bytearray] = []
        n = 0
        for bucket in sorted(self.tids):
            tids.append(self.tids.pop(bucket))
            xmins.append(self.xmins.pop(bucket))
            n += len(tids[-1]) // _TID_SIZE
            if n >= size or not self.tids:
                yield (
                    TidArray(_binary_array(_TID_OID, _TID_SIZE, b"".join(tids))),
                    XidArray(_binary_array(_XID_OID, _XID_SIZE, b"".join(xmins))),
                )
                tids, xmins, n = [], [], 0
        self.rows = 0


class StagedBatch:
    """What one batch staged: its doomed rows' locations, its threads' results, and the
    newest checkpoint id each thread's plan saw (the blob re-check's bound)."""

    def __init__(self) -> None:
        self.writes = Locations()
        self.checkpoints = Locations()
        self.blobs = Locations()
        self.results: dict[str, ThreadResult] = {}
        self.newest: dict[str, str] = {}


class PostgresStage(Stage):
    """A sweep's staged deletes, flushed in physical order (`PostgresBackend.flush_stage`)."""

    def __init__(self, budget: int = STAGE_BYTES) -> None:
        super().__init__()
        self.budget = budget
        self.clear()

    def clear(self) -> None:
        super().clear()
        self.writes = Locations()
        self.checkpoints = Locations()
        self.blobs = Locations()
        self.newest: dict[str, str] = {}
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
        for tids, xmins in self.writes.chunks(FLUSH_CHUNK_ROWS):
            yield FLUSH_WRITES_SQL, {"tids": tids, "xmins": xmins}
        for tids, xmins in self.checkpoints.chunks(FLUSH_CHUNK_ROWS):
            yield FLUSH_CHECKPOINTS_SQL, {"tids": tids, "xmins": xmins}
        planned = {
            "threads": text_array(list(self.newest)),
            "newest": text_array(list(self.newest.values())),
        }
        for tids, xmins in self.blobs.chunks(FLUSH_CHUNK_ROWS):
            yield FLUSH_BLOBS_SQL, {**planned, "tids": tids, "xmins": xmins}

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
    threads with nothing staged, and what the batch staged."""
    decided = yield from decide_program(thread_ids, policy, now, explain, expire, located=True)
    batch = StagedBatch()
    if decided.plans:
        yield from _locate_program(decided, batch)
    add_totals(decided.results, (yield from expire_program(decided, dry_run=False)))
    results = [decided.results[tid] for tid in decided.threads if tid not in batch.results]
    return results, batch


def _locate_program(decided: Decided, batch: StagedBatch) -> Program[None]:
    """Stage the doomed checkpoints (located by the index read), their writes and the
    blobs left unreferenced; note each thread's result and newest checkpoint id."""
    kept: tuple[list[str], list[str], list[str]] = ([], [], [])
    located, add_row = decided.located, batch.checkpoints.add_row
    for tid, plan in decided.plans.items():
        batch.results[tid] = decided.results[tid]
        tops = []
        for ns, ids in plan.delete.items():
            for cid in ids:
                add_row(*located[(tid, ns, cid)])
            tops.append(max(ids + plan.keep.get(ns, [])))
        for ns, ids in plan.keep.items():
            kept[0].extend([tid] * len(ids))
            kept[1].extend([ns] * len(ids))
            kept[2].extend(ids)
            if ns not in plan.delete:
                tops.append(max(ids))
        batch.newest[tid] = min(tops)
    decided.located = {}
    doomed = decided.doomed
    threads = text_array(list(decided.plans))
    params = {
        "threads": threads,
        "doomed_threads": text_array(doomed[0]),
        "doomed_ns": text_array(doomed[1]),
        "doomed_ids": text_array(doomed[2]),
    }
    for bucket, tids, xmins in (yield STAGE_WRITES_SQL, params, True):
        batch.writes.add(bucket, tids, xmins)
    params = {
        "threads": threads,
        "kept_threads": text_array(kept[0]),
        "kept_ns": text_array(kept[1]),
        "kept_ids": text_array(kept[2]),
    }
    for bucket, tids, xmins in (yield STAGE_BLOBS_SQL, params, True):
        batch.blobs.add(bucket, tids, xmins)


def flush_program(sql: str, params: dict[str, Any]) -> Program[Rows]:
    """One flush transaction: our settings, then one block range's deletes."""
    yield ISOLATION_SQL, {}, False
    yield SETTINGS_SQL, {}, False
    return (yield sql, params, True)
