"""A batch's prune as programs: read its index, decide each thread, then either delete in
the same write transaction (`prune_program`) or, for a staged sweep, only read and hand
the doomed rows to the stage (`stage_program`, a read transaction: no write lock).

Programs yield statements and receive their rows, so the sync (`sqlite3`) and async
(`aiosqlite`) drivers share every decision.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from langgraph.checkpoint.serde.types import INTERRUPT, TASKS

from langgraph_retention.errors import RetentionError
from langgraph_retention.policy import CheckpointEntry, RetentionPolicy, delta_needs
from langgraph_retention.report import ThreadResult

from ..base import Expire, decide

__all__ = [
    "DELETE_CHECKPOINTS_SQL",
    "DELETE_WRITES_SQL",
    "TOP_WRITE_ROWID_SQL",
    "Loads",
    "Program",
    "StagedBatch",
    "guard",
    "prune_program",
    "stage_program",
    "with_top_write",
]

R = TypeVar("R")
Statement = tuple[str, Sequence[Any] | Mapping[str, Any]]
Program = Generator[Statement, list[Any], R]
Loads = Callable[[tuple[str, bytes]], Any]

# -- statements ---------------------------------------------------------------------------
# Thread id lists travel as one JSON array parameter (`json_each`), so a batch of any size
# is one statement and the primary key (thread_id first) does the lookups.

INDEX_SQL = """
SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
       coalesce(length(checkpoint), 0) + coalesce(length(metadata), 0),
       CASE WHEN instr(checkpoint_ns, ':')
            THEN json_extract(CAST(metadata AS TEXT), '$.parents') END,
       CASE WHEN instr(CAST(metadata AS TEXT), 'counters_since_delta_snapshot')
            THEN json_extract(CAST(metadata AS TEXT), '$.counters_since_delta_snapshot') END,
       CASE WHEN :tag_path IS NOT NULL AND instr(CAST(metadata AS TEXT), :tag_text)
            THEN json_extract(CAST(metadata AS TEXT), :tag_path) END,
       rowid
FROM checkpoints
WHERE thread_id IN (SELECT value FROM json_each(:threads))
"""

# Checkpoints whose pending writes carry sends (a pre-v4 child reads them when it loads)
# or an interrupt (a place the graph asked a human: `keep_interrupted`).
SPECIAL_WRITES_SQL = f"""
SELECT DISTINCT thread_id, checkpoint_ns, checkpoint_id, channel
FROM writes
WHERE thread_id IN (SELECT value FROM json_each(?)) AND channel IN ('{TASKS}', '{INTERRUPT}')
"""

# Instead, for `max_bytes`: the same facts and each checkpoint's pending writes' bytes
# in one pass over the writes (its inline values and metadata come with the index).
SIZED_WRITES_SQL = f"""
SELECT thread_id, checkpoint_ns, checkpoint_id, sum(length(value)),
       max(channel = '{TASKS}'), max(channel = '{INTERRUPT}')
FROM writes
WHERE thread_id IN (SELECT value FROM json_each(?))
GROUP BY thread_id, checkpoint_ns, checkpoint_id
"""

# A whole expired thread, read and deleted in one write transaction (the index read in it
# saw the newest checkpoint the expiry names, and no writer can commit in between).
THREAD_WRITES_SIZE_SQL = """
SELECT count(*), coalesce(sum(length(value)), 0) FROM writes WHERE thread_id = ?
"""
DELETE_THREAD_WRITES_SQL = "DELETE FROM writes WHERE thread_id = ?"
DELETE_THREAD_CHECKPOINTS_SQL = "DELETE FROM checkpoints WHERE thread_id = ?"

# Only for threads that use a DeltaChannel: which channels each checkpoint stores.
DELTA_BODIES_SQL = """
SELECT thread_id, checkpoint_ns, checkpoint_id, type, checkpoint
FROM checkpoints
WHERE thread_id IN (SELECT value FROM json_each(?))
"""

# A batch's deletes go by rowid: the checkpoints' rowids come with the index read, the
# doomed writes' with their sizes. Rowids are stable inside the write transaction that
# read them. Sorted, they visit each table in file order (a leaf page holding rows of
# several doomed checkpoints is reached once). The rowid list is a plain `json_each`
# column: a function call in a multi-row DELETE (`json_extract`, say) makes SQLite keep a
# statement journal, which for a batch's thousands of pages spills to a temp file.
DOOMED_KEYS_SQL = """
SELECT d.key AS i, json_extract(d.value, '$[0]') AS thread_id,
       json_extract(d.value, '$[1]') AS ns, json_extract(d.value, '$[2]') AS checkpoint_id
FROM json_each(?) AS d
"""

# Every write of the batch's doomed checkpoints ([thread, ns, id] triples, one JSON array):
# its rowid (for the delete), thread and bytes (for the report).
DOOMED_WRITES_SQL = f"""
WITH doomed AS ({DOOMED_KEYS_SQL})
SELECT w.rowid, w.thread_id, coalesce(length(w.value), 0)
FROM doomed AS d
JOIN writes AS w
  ON w.thread_id = d.thread_id AND w.checkpoint_ns = d.ns AND w.checkpoint_id = d.checkpoint_id
"""

# For the stage: each doomed write's rowid and the position of its checkpoint in the
# doomed list (whose guard it shares); sizes are read when the flush deletes it.
DOOMED_WRITE_ROWIDS_SQL = f"""
WITH doomed AS ({DOOMED_KEYS_SQL})
SELECT w.rowid, d.i
FROM doomed AS d
JOIN writes AS w
  ON w.thread_id = d.thread_id AND w.checkpoint_ns = d.ns AND w.checkpoint_id = d.checkpoint_id
"""

DELETE_WRITES_SQL = "DELETE FROM writes WHERE rowid IN (SELECT value FROM json_each(?))"

DELETE_CHECKPOINTS_SQL = "DELETE FROM checkpoints WHERE rowid IN (SELECT value FROM json_each(?))"

# The highest rowid of the writes table (a seek to the last row). A row inserted later gets
# a higher one, unless rows at the top are deleted first: see `stage.SqliteStage.late_floor`.
TOP_WRITE_ROWID_SQL = "SELECT coalesce(max(rowid), 0) FROM writes"


# -- the plan: read and decide ----------------------------------------------------------


#: Per doomed checkpoint: namespace, checkpoint id, rowid, bytes (body + metadata).
Doomed = list[tuple[str, str, int, int]]


@dataclass(slots=True)
class BatchPlan:
    """A batch's decisions, before anything is deleted."""

    #: One per thread, in the batch's order (counts at zero; errors for refused threads).
    results: list[ThreadResult] = field(default_factory=list)
    #: Threads to delete whole: (result, checkpoints, their bytes).
    expired: list[tuple[ThreadResult, int, int]] = field(default_factory=list)
    #: Threads with checkpoints to delete, and those checkpoints.
    doomed: list[tuple[ThreadResult, Doomed]] = field(default_factory=list)


def _tag_value_is_set(value: Any) -> bool:
    """A metadata value pins a checkpoint when truthy (JSON arrays/objects arrive as text)."""
    return bool(value) and value not in ("[]", "{}")


def _plan_program(
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    now: datetime,
    loads: Loads,
    explain: bool = False,
    expire: Expire | None = None,
) -> Program[BatchPlan]:
    """Read the batch's index and facts, and decide each thread."""
    ids_json = json.dumps(list(thread_ids))
    tag = policy.keep_tagged
    # The key's text test only where its spelling in stored JSON is certain (ASCII).
    quoted = json.dumps(tag, ensure_ascii=False) if tag is not None else None
    rows = yield (
        INDEX_SQL,
        {
            "threads": ids_json,
            "tag_path": f"$.{quoted}" if quoted else None,
            "tag_text": quoted if quoted and quoted.isascii() else "",
        },
    )
    sends: set[tuple[str, str, str]] = set()
    interrupted: set[tuple[str, str, str]] = set()
    write_bytes: dict[tuple[str, str, str], int] = {}
    if policy.max_bytes is None:
        for tid, ns, cid, channel in (yield SPECIAL_WRITES_SQL, (ids_json,)):
            (sends if channel == TASKS else interrupted).add((tid, ns, cid))
    else:
        for tid, ns, cid, size, has_sends, has_interrupt in (yield SIZED_WRITES_SQL, (ids_json,)):
            write_bytes[(tid, ns, cid)] = size or 0
            if has_sends:
                sends.add((tid, ns, cid))
            if has_interrupt:
                interrupted.add((tid, ns, cid))
    tagged = {(r[0], r[1], r[2]) for r in rows if tag is not None and _tag_value_is_set(r[7])}
    by_thread: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        by_thread[row[0]].append(row)

    delta_threads = [tid for tid, trows in by_thread.items() if any(r[6] for r in trows)]
    stored: dict[tuple[str, str, str], tuple[set[str], set[str]]] = {}
    if delta_threads:
        for tid, ns, cid, type_, blob in (yield DELTA_BODIES_SQL, (json.dumps(delta_threads),)):
            body = loads((type_, blob))
            stored[(tid, ns, cid)] = (
                set(body.get("channel_versions", {})),
                set(body.get("channel_values", {})),
            )

    tag_set = frozenset({tag}) if tag is not None else frozenset()
    batch = BatchPlan()
    for tid in thread_ids:
        trows = by_thread.get(tid, [])
        names_by_ns: dict[str, set[str]] = defaultdict(set)
        for r in trows:
            if r[6]:
                names_by_ns[r[1]].update(json.loads(r[6]))
        entries = []
        sizes: dict[tuple[str, str], int] = {}
        rowids: dict[tuple[str, str], int] = {}
        for _tid, ns, cid, parent, size, parents_json, _counters, _tag, rowid in trows:
            sizes[(ns, cid)] = size
            rowids[(ns, cid)] = rowid
            names = names_by_ns.get(ns)
            needs: frozenset[str] = frozenset()
            if names:
                versioned, values = stored.get((tid, ns, cid), (set(), set()))
                needs = delta_needs(names, versioned, values)
            key = (tid, ns, cid)
            entries.append(
                CheckpointEntry(
                    checkpoint_ns=ns,
                    checkpoint_id=cid,
                    parent_id=parent,
                    parents=json.loads(parents_json) if parents_json else {},
                    delta_needs=needs,
                    # The format version sits inside the serialized body; assume it may
                    # predate v4 and keep the parent whenever it holds sends.
                    sends_parent=(tid, ns, parent) in sends,
                    size=size + write_bytes.get(key, 0),
                    tags=tag_set if key in tagged else frozenset(),
                    interrupted=key in interrupted,
                )
            )
        try:
            plan, result = decide(tid, entries, policy, now=now, explain=explain, expire=expire)
        except RetentionError as exc:
            batch.results.append(ThreadResult(tid, error=str(exc)))
            continue
        batch.results.append(result)
        if result.expired is not None:
            batch.expired.append((result, len(entries), sum(sizes.values())))
            continue
        doomed = [
            (ns, cid, rowids[(ns, cid)], sizes[(ns, cid)])
            for ns, cids in plan.delete.items()
            for cid in cids
        ]
        if doomed:
            batch.doomed.append((result, doomed))
    return batch


# -- unstaged: decide and delete in one write transaction (or a dry run) -----------------


def prune_program(
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    dry_run: bool,
    now: datetime,
    loads: Loads,
    explain: bool = False,
    expire: Expire | None = None,
) -> Program[list[ThreadResult]]:
    """Read the batch's index, decide each thread, delete (unless dry run), report."""
    batch = yield from _plan_program(thread_ids, policy, now, loads, explain, expire)
    for result, n_checkpoints, checkpoint_bytes in batch.expired:
        tid = result.thread_id
        ((n_writes, all_write_bytes),) = yield THREAD_WRITES_SIZE_SQL, (tid,)
        result.deleted_checkpoints = n_checkpoints
        result.deleted_writes = n_writes
        result.bytes_freed = all_write_bytes + checkpoint_bytes
        if not dry_run:
            yield DELETE_THREAD_WRITES_SQL, (tid,)
            yield DELETE_THREAD_CHECKPOINTS_SQL, (tid,)
    doomed_keys: list[list[str]] = []  # [thread, ns, id] of every doomed checkpoint
    doomed_rowids: list[int] = []
    for result, doomed in batch.doomed:
        tid = result.thread_id
        result.deleted_checkpoints += len(doomed)
        result.bytes_freed += sum(size for _ns, _cid, _rowid, size in doomed)
        doomed_keys.extend([tid, ns, cid] for ns, cid, _rowid, _size in doomed)
        doomed_rowids.extend(rowid for _ns, _cid, rowid, _size in doomed)
    if doomed_keys:
        by_id = {r.thread_id: r for r, _doomed in batch.doomed}
        write_rowids = []
        for rowid, tid, size in (yield DOOMED_WRITES_SQL, (json.dumps(doomed_keys),)):
            write_rowids.append(rowid)
            by_id[tid].deleted_writes += 1
            by_id[tid].bytes_freed += size
        if not dry_run:
            yield DELETE_WRITES_SQL, (json.dumps(sorted(write_rowids)),)
            yield DELETE_CHECKPOINTS_SQL, (json.dumps(sorted(doomed_rowids)),)
    return batch.results


def with_top_write(program: Program[R]) -> Program[tuple[R, int]]:
    """`program`, then the writes table's highest rowid in the same transaction (after
    its deletes: what a staged flush must treat as possibly new above it)."""
    out = yield from program
    ((top,),) = yield TOP_WRITE_ROWID_SQL, ()
    return out, int(top)


# -- staged: decide in a read transaction, deletes left to the stage ----------------------


def guard(thread_id: str, ns: str, checkpoint_id: str) -> int:
    """A row's 32-bit fingerprint of the checkpoint it belongs to, checked before a staged
    delete (a rowid freed and reused by a new row in the meantime no longer matches).

    Python's own string hash: fast, keyed per process, and a stage never leaves its process.
    """
    return hash((thread_id, ns, checkpoint_id)) & 0xFFFFFFFF


@dataclass(slots=True)
class StagedBatch:
    """What a staged batch read: its doomed rows for the stage, and what it settles now."""

    #: Threads settled here: nothing to delete, or refused by the policy.
    results: list[ThreadResult] = field(default_factory=list)
    #: Threads with deletes, counts at zero, and how many checkpoints each plans to delete.
    staged: list[tuple[ThreadResult, int]] = field(default_factory=list)
    #: Threads to delete whole (in a write transaction of their own, re-checked there).
    expired: list[str] = field(default_factory=list)
    checkpoint_rowids: list[int] = field(default_factory=list)
    checkpoint_guards: list[int] = field(default_factory=list)
    write_rowids: list[int] = field(default_factory=list)
    write_guards: list[int] = field(default_factory=list)
    #: The writes table's highest rowid in the plan's snapshot.
    top_write: int = 0


def stage_program(
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    now: datetime,
    loads: Loads,
    explain: bool = False,
    expire: Expire | None = None,
) -> Program[StagedBatch]:
    """Read and decide the batch as `prune_program` does, deleting nothing: the doomed
    checkpoints' and writes' rowids with their guards, for the stage."""
    batch = yield from _plan_program(thread_ids, policy, now, loads, explain, expire)
    ((top,),) = yield TOP_WRITE_ROWID_SQL, ()
    out = StagedBatch(top_write=int(top))
    out.expired = [r.thread_id for r, _n, _size in batch.expired]
    later = set(out.expired) | {r.thread_id for r, _doomed in batch.doomed}
    out.results = [r for r in batch.results if r.thread_id not in later]
    keys: list[list[str]] = []
    for result, doomed in batch.doomed:
        tid = result.thread_id
        out.staged.append((result, len(doomed)))
        for ns, cid, rowid, _size in doomed:
            keys.append([tid, ns, cid])
            out.checkpoint_rowids.append(rowid)
            out.checkpoint_guards.append(guard(tid, ns, cid))
    if keys:
        guards = out.checkpoint_guards
        for rowid, i in (yield DOOMED_WRITE_ROWIDS_SQL, (json.dumps(keys),)):
            out.write_rowids.append(rowid)
            out.write_guards.append(guards[i])
    return out
