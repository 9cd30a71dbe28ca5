"""A staged sweep's deletes, in rowid order, in short write transactions.

All staged writes go first, then the checkpoints, each table in ascending rowid ranges:
on a store whose threads' rows are interleaved, every leaf page is rewritten about once
per flush (batch by batch, each page was rewritten by every batch with a row on it).
Stopped between two transactions, the flush leaves no writes without their checkpoint.

Each transaction reads its rows back first and deletes only those whose guard still
matches (a rowid freed and taken by a new row since the plan is not ours), counting what
it deletes per thread. Writes inserted after a plan for a checkpoint it dooms (a task of
that checkpoint committing late) are found above `SqliteStage.late_floor` and deleted
with their checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from langgraph_retention.report import ThreadResult

from .prune import DELETE_CHECKPOINTS_SQL, DELETE_WRITES_SQL, TOP_WRITE_ROWID_SQL, Program, guard
from .stage import SqliteStage

__all__ = ["TRANSACTION_SECONDS", "Pace", "StagedFlush"]

#: How long each flush transaction aims to take, its commit (and the WAL checkpoint the
#: commit runs) included: an app's write waits for about one at most. Fewer, longer
#: transactions cost less in all: each rewrites the primary-key index pages its rows'
#: entries sit on (a rowid range holds rows of every thread), and its commit is
#: checkpointed into the file and synced separately.
TRANSACTION_SECONDS = 0.4

#: No transaction deletes more rows than this many of the largest staged batch would
#: have deleted in their own transactions (a smaller `batch_size` still means shorter
#: waits; a write costs less to delete than a checkpoint, so a transaction of writes
#: alone may take more rows than a batch in the same time). The first transaction of
#: each table deletes one batch's worth of writes, or this share of it in checkpoints
#: (a checkpoint row costs more: its body's overflow pages are freed, and zeroed where
#: SQLite is built with secure delete). Later ones are sized from the time the previous
#: took (`Pace`).
MOST_BATCHES = 2
FIRST_CHECKPOINTS_SHARE = 0.5
MIN_ROWS = 200
MAX_ROWS = 200_000


class Pace:
    """Rows per transaction for one table, steered toward `TRANSACTION_SECONDS`, at most
    `most` rows."""

    def __init__(self, rows: int, most: int) -> None:
        self.most = max(MIN_ROWS, min(MAX_ROWS, most))
        self.rows = max(MIN_ROWS, min(self.most, rows))

    def __call__(self) -> int:
        return self.rows

    def took(self, rows: int, seconds: float) -> None:
        """A transaction of `rows` rows took `seconds`: size the next one (at most double
        or half this one's size, within the bounds)."""
        if rows <= 0 or seconds <= 0:
            return
        wanted = rows * TRANSACTION_SECONDS / seconds
        self.rows = int(max(MIN_ROWS, min(self.most, 2 * rows, max(rows / 2, wanted))))


WRITE_ROWS_SQL = """
SELECT rowid, thread_id, checkpoint_ns, checkpoint_id, coalesce(length(value), 0)
FROM writes
WHERE rowid IN (SELECT value FROM json_each(?))
"""

CHECKPOINT_ROWS_SQL = """
SELECT rowid, thread_id, checkpoint_ns, checkpoint_id,
       coalesce(length(checkpoint), 0) + coalesce(length(metadata), 0)
FROM checkpoints
WHERE rowid IN (SELECT value FROM json_each(?))
"""

# Writes inserted since the last look (rowid above the floor), with the rowid of the
# checkpoint each belongs to, if that checkpoint exists.
LATE_WRITES_SQL = """
SELECT w.rowid, w.thread_id, w.checkpoint_ns, w.checkpoint_id, c.rowid
FROM writes AS w
LEFT JOIN checkpoints AS c
  ON c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns
 AND c.checkpoint_id = w.checkpoint_id
WHERE w.rowid > ?
"""

#: Late writes waiting for their checkpoint's transaction: checkpoint rowid -> [(write
#: rowid, guard)].
Pending = dict[int, list[tuple[int, int]]]


@dataclass(slots=True)
class Deleted:
    """What one flush transaction deleted, applied to the results once it committed."""

    #: The staged threads (only their rows are ever deleted).
    owners: Mapping[str, ThreadResult]
    #: thread id -> [checkpoints, writes, bytes]
    counts: dict[str, list[int]] = field(default_factory=dict)
    #: The late floor after this transaction (see `SqliteStage.late_floor`).
    late_floor: int = 0
    #: Late writes still waiting (checkpoint transactions only).
    pending: Pending | None = None

    def verified(
        self, rows: list[tuple[int, str, str, str, int]], expected: dict[int, int], column: int
    ) -> list[int]:
        """The rowids of `rows` (read back) still holding the staged rows, each counted
        for its thread (`column` 0: a checkpoint, 1: a write) with its bytes."""
        counts = self.counts
        owners = self.owners
        keep = []
        for rowid, tid, ns, cid, size in rows:
            if expected.get(rowid) == guard(tid, ns, cid) and tid in owners:
                keep.append(rowid)
                c = counts.get(tid)
                if c is None:
                    c = counts[tid] = [0, 0, 0]
                c[column] += 1
                c[2] += size
        return keep


def writes_program(rowids: list[int], guards: list[int], stage: SqliteStage) -> Program[Deleted]:
    """Delete one chunk of staged writes that still match."""
    out = Deleted(stage.results)
    rows = yield WRITE_ROWS_SQL, (json.dumps(rowids),)
    doomed = out.verified(rows, dict(zip(rowids, guards, strict=True)), 1)
    if doomed:
        yield DELETE_WRITES_SQL, (json.dumps(doomed),)
    ((top,),) = yield TOP_WRITE_ROWID_SQL, ()
    floor = stage.late_floor
    out.late_floor = int(top) if floor is None else min(floor, int(top))
    return out


def checkpoints_program(
    rowids: list[int], guards: list[int], stage: SqliteStage, pending: Pending, last: int
) -> Program[Deleted]:
    """Delete one chunk of staged checkpoints that still match, with their late writes.

    Writes inserted above the late floor are read once each; those of a staged checkpoint
    not yet reached wait in `pending` for its transaction (`last`: the highest staged
    checkpoint rowid)."""
    out = Deleted(stage.results, pending={})
    lo, hi = min(rowids), max(rowids)
    waiting = {cp: list(ws) for cp, ws in pending.items()}
    floor = stage.late_floor or 0
    for w_rowid, tid, ns, cid, cp_rowid in (yield LATE_WRITES_SQL, (floor,)):
        if cp_rowid is not None and lo <= cp_rowid <= last and tid in stage.results:
            waiting.setdefault(cp_rowid, []).append((w_rowid, guard(tid, ns, cid)))
    rows = yield CHECKPOINT_ROWS_SQL, (json.dumps(rowids),)
    doomed = out.verified(rows, dict(zip(rowids, guards, strict=True)), 0)
    late = {w: g for cp in doomed for w, g in waiting.pop(cp, ())}
    if late:
        late_rows = yield WRITE_ROWS_SQL, (json.dumps(sorted(late)),)
        matched = out.verified(late_rows, late, 1)
        if matched:
            yield DELETE_WRITES_SQL, (json.dumps(matched),)
    if doomed:
        yield DELETE_CHECKPOINTS_SQL, (json.dumps(doomed),)
    ((top,),) = yield TOP_WRITE_ROWID_SQL, ()
    out.late_floor = int(top)  # every write above the old floor was read just now
    out.pending = {cp: ws for cp, ws in waiting.items() if cp > hi}
    return out


class StagedFlush:
    """One flush of a `SqliteStage`: its transactions as programs, in rowid order, and
    the results as they commit. The drivers run each program in a write transaction and
    hand what it returns, and how long it took, to `committed`."""

    def __init__(self, stage: SqliteStage) -> None:
        self.stage = stage
        self.pending: Pending = {}
        batch = stage.largest_batch
        self.writes = Pace(batch, MOST_BATCHES * batch)
        self.checkpoints = Pace(int(batch * FIRST_CHECKPOINTS_SHARE), MOST_BATCHES * batch)
        self._pace = self.writes
        self._rows = 0

    def transactions(self) -> Iterator[Program[Deleted]]:
        """The flush's transactions, writes first; each is made once the one before it
        committed (it reads the late floor that one left, and is sized by its time)."""
        self._pace = self.writes
        for rowids, guards in self.stage.writes.chunks(self.writes, MIN_ROWS, self.writes.most):
            self._rows = len(rowids)
            yield writes_program(rowids, guards, self.stage)
        self._pace = self.checkpoints
        last = self.stage.checkpoints.last()
        for rowids, guards in self.stage.checkpoints.chunks(
            self.checkpoints, MIN_ROWS, self.checkpoints.most
        ):
            self._rows = len(rowids)
            yield checkpoints_program(rowids, guards, self.stage, self.pending, last)

    def committed(self, deleted: Deleted, seconds: float) -> None:
        """Count a committed transaction's deletes into the staged threads' results."""
        for tid, (checkpoints, writes, size) in deleted.counts.items():
            result = self.stage.results[tid]
            result.deleted_checkpoints += checkpoints
            result.deleted_writes += writes
            result.bytes_freed += size
        self.stage.late_floor = deleted.late_floor
        if deleted.pending is not None:
            self.pending = deleted.pending
        self._pace.took(self._rows, seconds)

    def finish(self, halted: bool) -> list[ThreadResult]:
        """The staged threads' results (a warning on each that fell short of its plan);
        the stage is cleared."""
        for tid, result in self.stage.results.items():
            planned = self.stage.planned.get(tid, 0)
            done = result.deleted_checkpoints
            if done >= planned:
                continue
            if halted:
                result.warnings.append(
                    f"sweep stopped after {done} of {planned} checkpoint deletes; "
                    "the next sweep deletes the rest"
                )
            else:
                result.warnings.append(
                    f"{planned - done} checkpoint(s) changed after the plan and were kept; "
                    "the next sweep decides again"
                )
        results = list(self.stage.results.values())
        self.stage.clear()
        return results
