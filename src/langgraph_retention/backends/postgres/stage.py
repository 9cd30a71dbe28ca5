"""The stage of a PostgreSQL sweep: where the doomed rows of its batches are, and the
flush that deletes them in physical order.

Each staged row is its heap tuple id (6 bytes: block, line) and the 64-bit hash of its
key (8 bytes), grouped by block range. A flush deletes one block range after another, by
tuple id (`ctid = ANY(...)`: a TID scan, which visits pages in order), in short
transactions: each heap page is changed once per flush, where deleting batch by batch
changed (and, after every server checkpoint, logged the full image of) a page once per
batch with a row on it.

A tuple id may hold another row by the time of the flush (VACUUM frees the slot of a row
someone else deleted and an insert takes it; VACUUM FULL or pg_repack move every row), so
every delete also matches its key's hash: a row that is not one of the doomed is left
alone (a 64-bit hash of another key in a transaction's set of ~20,000: odds of 1 in 10^15
per displaced row). Writes go first, then checkpoints, then blobs, so a flush stopped
between two transactions leaves only doomed checkpoints (the next sweep finds them) or
unreferenced blobs (the next sweep's blob read finds them).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from psycopg import AsyncCursor, Cursor
from psycopg.adapt import Dumper
from psycopg.pq import Format

from langgraph_retention.report import ThreadResult

from ..base import Stage
from .programs import add_totals
from .statements import (
    BLOB_KEY,
    CHECKPOINT_HASH,
    CHECKPOINT_SIZE,
    ISOLATION_SQL,
    SETTINGS_SQL,
    Program,
    Rows,
    key_hash,
    text_array,
    totals,
)

__all__ = [
    "STAGE_ABOVE_BUFFERS",
    "Int8Array",
    "Locations",
    "PostgresStage",
    "StagedBatch",
    "flush_program",
    "packed_array",
    "register_dumpers",
    "stage_program",
]

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

#: A sweep stages its deletes when the saver's tables (heap and TOAST) are bigger than
#: this many times the server's `shared_buffers`. Batch by batch, a page holding rows of
#: several threads is dirtied once per batch with a row on it; while most of the store
#: stays in the buffer cache those revisits are cheap, and staging's second read of each
#: table costs more than it saves. Far beyond the cache, every revisit is a page read, a
#: write-back and, after each server checkpoint, a full-page image in the WAL. Measured
#: with 128 MB of buffers (README, "At scale: PostgreSQL"): 2,000 scattered threads (441
#: MB) 1.58x the floor batch by batch, 1.63x staged; 6,000 (1.3 GB) 1.31x and 1.47x;
#: 20,000 (4.4 GB) 1.2-1.4x and 0.8-1.0x.
STAGE_ABOVE_BUFFERS = 16

# The saver's tables' size and the server's buffer cache, both in bytes (a table the saver
# has not created counts as empty; `check_store` says so elsewhere).
STORE_SIZE_SQL = """
SELECT coalesce(sum(pg_table_size(t.oid)), 0)::bigint,
       pg_size_bytes(current_setting('shared_buffers'))
FROM unnest(ARRAY[to_regclass('checkpoints'), to_regclass('checkpoint_writes'),
                  to_regclass('checkpoint_blobs')]) AS t(oid)
WHERE t.oid IS NOT NULL
"""

_TID_SIZE, HASH_SIZE = 6, 8
_TID_OID, INT8_OID, _TID_ARRAY_OID, _INT8_ARRAY_OID = 27, 20, 1010, 1016

WRITE_HASH = key_hash("w", ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id"), "w.idx")
BLOB_HASH = key_hash("b", BLOB_KEY)

# The flush: one statement per block range and table, counting what it deleted per thread.
# Its transactions take the prune's settings and no sequential scans: the planner costs a
# TID scan at a random page read per row, and 10,000 rows of one block range cost more
# than scanning a table of 16,000 pages, so every flush transaction read the whole table.
FLUSH_SETTINGS_SQL = SETTINGS_SQL + ", set_config('enable_seqscan', 'off', true)"
_LOCATED = "{a}.ctid = ANY(%(tids)b) AND {hash} = ANY(%(hashes)b)"

FLUSH_WRITES_SQL = f"""
WITH gone AS (
    DELETE FROM checkpoint_writes w WHERE {_LOCATED.format(a="w", hash=WRITE_HASH)}
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

# The same, also deleting the writes of the checkpoints it deletes, by key: for a flush
# whose writes did not all go where the plan found them (moved by VACUUM FULL or
# pg_repack, or deleted by someone else), so a checkpoint never leaves writes behind
# that no later sweep could find. A primary-key probe per checkpoint, so only then.
FLUSH_CHECKPOINTS_AND_WRITES_SQL = f"""
WITH gone AS (
    DELETE FROM checkpoints c WHERE {_LOCATED.format(a="c", hash=CHECKPOINT_HASH)}
    RETURNING c.thread_id, c.checkpoint_ns, c.checkpoint_id, {CHECKPOINT_SIZE} AS size
),
gone_writes AS (
    DELETE FROM checkpoint_writes w USING gone g
    WHERE w.thread_id = g.thread_id AND w.checkpoint_ns = g.checkpoint_ns
      AND w.checkpoint_id = g.checkpoint_id
    RETURNING w.thread_id, pg_column_size(w.blob) AS size
)
{totals("checkpoints", "gone")}
UNION ALL
{totals("writes", "gone_writes")}
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
    WHERE {_LOCATED.format(a="b", hash=BLOB_HASH)}
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


def packed_array(element_oid: int, size: int, packed: bytes) -> bytes:
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
        return self.rows * (_TID_SIZE + HASH_SIZE) + 128 * len(self.tids)

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
                    TidArray(packed_array(_TID_OID, _TID_SIZE, b"".join(tids))),
                    Int8Array(packed_array(INT8_OID, HASH_SIZE, b"".join(hashes))),
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
        #: Rows the writes transaction being run was staged with (None: not writes).
        self.expected: int | None = None
        #: Some staged writes were not where the plan found them.
        self.writes_missed = False

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
            self.expected = len(hashes) // HASH_SIZE  # what `count` checks
            yield FLUSH_WRITES_SQL, {"tids": tids, "hashes": hashes}
        self.expected = None
        for tids, hashes in self.checkpoints.chunks(FLUSH_CHUNK_ROWS):
            sql = FLUSH_CHECKPOINTS_AND_WRITES_SQL if self.writes_missed else FLUSH_CHECKPOINTS_SQL
            yield sql, {"tids": tids, "hashes": hashes}
        planned = {
            "threads": text_array([tid for tid, _ns in self.newest]),
            "namespaces": text_array([ns for _tid, ns in self.newest]),
            "newest": text_array(list(self.newest.values())),
        }
        for tids, hashes in self.blobs.chunks(FLUSH_CHUNK_ROWS):
            yield FLUSH_BLOBS_SQL, {**planned, "tids": tids, "hashes": hashes}

    def count(self, rows: Rows) -> None:
        """Add what a committed flush transaction deleted to its threads' results, and
        note a writes transaction that found fewer rows than were staged."""
        add_totals(self.results, rows)
        if self.expected is not None and sum(int(r[2]) for r in rows) < self.expected:
            self.writes_missed = True

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


def flush_program(sql: str, params: dict[str, Any]) -> Program[Rows]:
    """One flush transaction: our settings, then one block range's deletes."""
    yield ISOLATION_SQL, {}, False
    yield FLUSH_SETTINGS_SQL, {}, False
    return (yield sql, params, True)


def stage_program(budget: int | None = None) -> Program[PostgresStage | None]:
    """A stage for a sweep of a store too big for the server's buffer cache (see
    `STAGE_ABOVE_BUFFERS`), else None: the sweep deletes batch by batch."""
    ((store_bytes, buffer_bytes),) = yield STORE_SIZE_SQL, {}, True
    if int(store_bytes) <= STAGE_ABOVE_BUFFERS * int(buffer_bytes):
        return None
    return PostgresStage(budget)
