"""A staged sweep's doomed rows on SQLite, held compactly until the flush deletes them in
rowid order.

Each staged row costs 12 bytes: its rowid (`array('q')`) and a 32-bit guard
(`prune.guard`, `array('I')`). A batch's rows are kept as one sorted run per table; the
flush cuts all runs into chunks of consecutive rowid ranges (bisecting each run), so it
never builds one big sorted list.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

from ..base import Stage
from .prune import StagedBatch

__all__ = [
    "MAX_STAGED_ROWS",
    "MAX_STAGED_THREADS",
    "STAGE_ABOVE_BYTES",
    "SqliteStage",
    "StagedRows",
    "open_stage_program",
]

#: Rows (checkpoints and writes) a stage holds before the sweep flushes it: ~12 MB of
#: buffers. On a scattered store every flush rewrites most leaf pages of `writes` (13
#: rows of 13 threads on each), so fewer flushes write fewer pages; this bound keeps a
#: 20,000-thread sweep's memory flat (measured in the README, "At scale: SQLite").
MAX_STAGED_ROWS = 1_000_000

#: Threads a stage holds before the sweep flushes it (each staged thread's result waits
#: in memory, a few hundred bytes): the bound for stores of many small threads.
MAX_STAGED_THREADS = 20_000

#: A sweep stages its deletes when the database file is bigger than this; a smaller one
#: is swept batch by batch. Staging pays off when many batches would rewrite the same
#: pages (2,000 scattered threads, 952 MB: 1.82x the floor batch by batch, 1.10-1.41x
#: staged); on a store of a few batches the flush's extra commits cost more than the
#: order saves (200 threads, 95 MB: 1.16x batch by batch side by side, 1.32-1.40x staged;
#: scattered 1.21x and 1.26x). README, "At scale: SQLite".
STAGE_ABOVE_BYTES = 256 * 1024 * 1024

# The main database's size in bytes (pages in use and free alike).
STORE_SIZE_SQL = "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"

#: Chunk boundaries come from a sample of the staged rowids: at least this many samples
#: in the smallest chunk.
_SAMPLES_PER_CHUNK = 4

#: One chunk of a flush: rowids (ascending ranges, unordered inside) and their guards.
Chunk = tuple[list[int], list[int]]


class StagedRows:
    """One table's staged rows: a sorted run (rowids, guards) per staged batch."""

    def __init__(self) -> None:
        self.runs: list[tuple[array[int], array[int]]] = []
        self.count = 0

    def add(self, rowids: Sequence[int], guards: Sequence[int]) -> None:
        """Add a batch's rows (any order)."""
        if not rowids:
            return
        order = sorted(range(len(rowids)), key=rowids.__getitem__)
        self.runs.append(
            (array("q", [rowids[i] for i in order]), array("I", [guards[i] for i in order]))
        )
        self.count += len(rowids)

    def chunks(self, size: Callable[[], int], finest: int, most: int) -> Iterator[Chunk]:
        """Every row once, in chunks covering ascending rowid ranges, each of about
        `size()` rows (asked again before every chunk, never much below `finest`); a
        tail of less than half a chunk joins the chunk before it when both fit in `most`
        (one transaction fewer)."""
        step = max(1, finest // _SAMPLES_PER_CHUNK)
        sample = sorted(rowid for run, _ in self.runs for rowid in run[::step])
        per_sample = self.count / max(1, len(sample))
        positions = [0] * len(self.runs)
        at = 0
        while at < len(sample):
            wanted = max(1, round(size() / per_sample))
            left = len(sample) - at
            at += left if left < 1.5 * wanted and left * per_sample <= most else wanted
            hi = sample[at] if at < len(sample) else None
            rowids: list[int] = []
            guards: list[int] = []
            for i, (run, run_guards) in enumerate(self.runs):
                start = positions[i]
                end = len(run) if hi is None else bisect_left(run, hi, start)
                rowids.extend(run[start:end])
                guards.extend(run_guards[start:end])
                positions[i] = end
            if rowids:
                yield rowids, guards

    def last(self) -> int:
        """The highest staged rowid (0 when empty)."""
        return max((run[-1] for run, _ in self.runs), default=0)


class SqliteStage(Stage):
    """Doomed checkpoints and writes of a sweep's batches, by rowid, for one flush."""

    def __init__(self) -> None:
        super().__init__()
        self.max_rows = MAX_STAGED_ROWS
        self.max_threads = MAX_STAGED_THREADS
        self.checkpoints = StagedRows()
        self.writes = StagedRows()
        #: Checkpoints each staged thread's plan deletes (a shortfall is reported).
        self.planned: dict[str, int] = {}
        #: The most rows (checkpoints and writes) one staged batch doomed.
        self.largest_batch = 0
        #: Every write inserted after a staged batch's plan has a rowid above this: the
        #: lowest of the plans' highest write rowids and of the highest left after each
        #: of our deletes since (a row inserted after a delete of the top rows may get a
        #: rowid the plan already saw). None before the first batch.
        self.late_floor: int | None = None

    def full(self) -> bool:
        rows = self.checkpoints.count + self.writes.count
        return rows >= self.max_rows or len(self.results) >= self.max_threads

    def add(self, batch: StagedBatch) -> None:
        """Take a batch's doomed rows and its staged threads' results (only once the
        batch's program succeeded: a failing batch leaves the stage as it was)."""
        twice = [r.thread_id for r, _ in batch.staged if r.thread_id in self.results]
        if twice:  # a sweep visits each thread once; a result per thread, counted once
            raise ValueError(f"threads staged twice in one sweep: {twice[:5]}")
        for result, planned in batch.staged:
            self.results[result.thread_id] = result
            self.planned[result.thread_id] = planned
        rows = len(batch.checkpoint_rowids) + len(batch.write_rowids)
        self.largest_batch = max(self.largest_batch, rows)
        self.checkpoints.add(batch.checkpoint_rowids, batch.checkpoint_guards)
        self.writes.add(batch.write_rowids, batch.write_guards)
        self.lower_late_floor(batch.top_write)

    def lower_late_floor(self, top_write: int) -> None:
        """Note the writes table's highest rowid seen by a plan or after one of our deletes."""
        if self.late_floor is None or top_write < self.late_floor:
            self.late_floor = top_write

    def clear(self) -> None:
        super().clear()
        self.checkpoints = StagedRows()
        self.writes = StagedRows()
        self.planned = {}
        self.largest_batch = 0
        self.late_floor = None


def open_stage_program() -> Generator[tuple[str, Sequence[Any]], list[Any], SqliteStage | None]:
    """A stage for a sweep of a database bigger than `STAGE_ABOVE_BYTES`, else None: the
    sweep deletes batch by batch."""
    ((size,),) = yield STORE_SIZE_SQL, ()
    return SqliteStage() if int(size or 0) > STAGE_ABOVE_BYTES else None
