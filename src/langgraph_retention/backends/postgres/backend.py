"""`PostgresSaver` and `AsyncPostgresSaver`: one transaction per batch of threads.

The transaction reads the batch's checkpoint index in one statement (ids, parents and a
few metadata facts; state is never deserialized), lets `policy.plan_thread` decide each
thread on its own rows, then deletes the chosen checkpoints and their writes in one
set-based statement and the blobs no remaining checkpoint references in a second.
Checkpoints and writes go by explicit ids, so whatever a run commits meanwhile is never
deleted; the blob statement runs last, so a checkpoint committed meanwhile protects the
blobs it references. A deadlock or a serialization failure reruns the whole transaction
(index, plan, deletes) a few times.

The statements are named constants; `_prune_program` and friends yield them and receive
their rows, so the sync (`psycopg.Connection`) and async (`AsyncConnection`) drivers share
every decision. The saver may hold a connection (used under its own lock, pipeline mode
included) or a pool (a connection of our own is borrowed from it).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.types import INTERRUPT, TASKS
from psycopg import AsyncConnection, AsyncCursor, Connection, Cursor
from psycopg.rows import TupleRow, tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from langgraph_retention.errors import RetentionError, StoreUnavailableError
from langgraph_retention.policy import (
    CheckpointEntry,
    RetentionPolicy,
    checkpoint_time,
    delta_needs,
)
from langgraph_retention.report import ThreadResult, ThreadStats

from ..base import Backend, Expire, Span, Stage, decide, gc_paused
from .connection import server_name
from .lock import PostgresSweepLock
from .schema import missing_relation, missing_tables_program, not_ready

__all__ = ["AsyncPostgresBackend", "PostgresBackend", "PostgresUnavailableError"]


class PostgresUnavailableError(StoreUnavailableError):
    """The PostgreSQL server could not be reached, so the operation did not complete."""


# -- statements ---------------------------------------------------------------------------
# Thread ids travel as one text[] parameter (`= ANY`), doomed checkpoints as three parallel
# arrays, each sent as one array literal (`_text_array`). Statements run unprepared, so the
# planner sees the real array sizes.

# READ COMMITTED on purpose: each statement sees what committed before it started, so the
# blob statement sees checkpoints a run committed after the index was read.
ISOLATION_SQL = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"

# For this transaction only. No JIT: it compiles for tens of milliseconds whenever the
# estimated cost of a batch crosses its threshold, longer than the statements run. No
# wait for the WAL flush at commit: a prune lost to a server crash in the next fraction
# of a second just comes back whole (the transaction is atomic) and reruns, while the
# app's own commits do not queue behind our fsyncs. A work_mem big enough for a batch's
# doomed ids and blob references: at the default 4 MB the hashes of a batch of 1,000
# threads (55,000 doomed ids) spilled to disk in several batches, and a multi-batch hash
# join hands its rows to the DELETE out of physical order, so the DELETE re-read pages
# already evicted (at 2,000 scattered threads: 30,000 extra page reads per batch).
SETTINGS_SQL = (
    "SELECT set_config('jit', 'off', true), set_config('synchronous_commit', 'off', true),"
    " set_config('work_mem', '64MB', true)"
)

# The index, one row per checkpoint. `parents` only matters in subgraph call namespaces;
# the delta channel names come from the counters LangGraph keeps in metadata; a pre-v4
# checkpoint reads its parent's pending sends, so that parent must stay with it.
_INDEX_COLUMNS = f"""
       c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id,
       CASE WHEN strpos(c.checkpoint_ns, ':') > 0 THEN c.metadata -> 'parents' END,
       CASE WHEN jsonb_typeof(c.metadata -> 'counters_since_delta_snapshot') = 'object'
            THEN ARRAY(SELECT jsonb_object_keys(c.metadata -> 'counters_since_delta_snapshot'))
       END,
       CASE WHEN (c.checkpoint ->> 'v')::int < 4 AND c.parent_checkpoint_id IS NOT NULL
            THEN EXISTS (
                SELECT 1 FROM checkpoint_writes w
                WHERE w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns
                  AND w.checkpoint_id = c.parent_checkpoint_id AND w.channel = '{TASKS}')
            ELSE false
       END"""

INDEX_SQL = f"""
SELECT {_INDEX_COLUMNS}
FROM checkpoints c
WHERE c.thread_id = ANY(%(threads)s::text[])
"""

# The index with the facts of the checkpoint rows themselves, for the richer rules: each
# one's row bytes (`max_bytes`) and whether its metadata sets the tag to anything but a
# falsy JSON value (`keep_tagged`; a NULL tag sets nothing). Free in the same pass.
FACTS_INDEX_SQL = f"""
SELECT {_INDEX_COLUMNS},
       pg_column_size(c.checkpoint) + pg_column_size(c.metadata),
       coalesce(c.metadata ? %(tag)s::text
                AND c.metadata -> %(tag)s::text NOT IN ('null', 'false', '0', '""', '[]', '{{}}'),
                false)
FROM checkpoints c
WHERE c.thread_id = ANY(%(threads)s::text[])
"""

# Only for threads that use a DeltaChannel: per checkpoint, which of those channels have a
# version, and which of them store a value here (an inline `channel_values` key, or a
# non-empty blob at that version), as `_build_delta_stage1_sql` upstream decides.
DELTA_SQL = """
SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id,
       coalesce(array_agg(v.key) FILTER (WHERE v.key IS NOT NULL), '{}'),
       coalesce(array_agg(v.key) FILTER (
           WHERE c.checkpoint -> 'channel_values' ? v.key
              OR EXISTS (
                  SELECT 1 FROM checkpoint_blobs b
                  WHERE b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns
                    AND b.channel = v.key AND b.version = v.value AND b.type <> 'empty')
       ), '{}')
FROM checkpoints c
LEFT JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
       ON v.key = ANY(%(channels)s::text[])
WHERE c.thread_id = ANY(%(threads)s::text[])
GROUP BY c.thread_id, c.checkpoint_ns, c.checkpoint_id
"""

# -- the facts in the writes and blobs, read only when the policy uses them ---------------

# `keep_interrupted`: checkpoints with a pending interrupt write (the graph asked a human).
INTERRUPTS_SQL = f"""
SELECT DISTINCT thread_id, checkpoint_ns, checkpoint_id FROM checkpoint_writes
WHERE thread_id = ANY(%(threads)s::text[]) AND channel = '{INTERRUPT}'
"""

# `max_bytes`, first: each thread's bytes in writes and blobs (with the row bytes of the
# index, its on-disk total), and in the same scan of the writes its interrupted
# checkpoints (two parallel arrays). Only a thread over the cap needs its checkpoints
# sized (below it, whatever stays fits), which spares most batches the expansion of
# every checkpoint's channel versions.
THREAD_BYTES_SQL = f"""
SELECT thread_id, sum(pg_column_size(blob)),
       array_agg(checkpoint_ns) FILTER (WHERE channel = '{INTERRUPT}'),
       array_agg(checkpoint_id) FILTER (WHERE channel = '{INTERRUPT}')
FROM checkpoint_writes WHERE thread_id = ANY(%(threads)s::text[])
GROUP BY thread_id
UNION ALL
SELECT thread_id, coalesce(sum(pg_column_size(blob)), 0), NULL, NULL FROM checkpoint_blobs
WHERE thread_id = ANY(%(threads)s::text[])
GROUP BY thread_id
"""

# `max_bytes`, then, for threads over the cap: the bytes each checkpoint holds besides its
# row: its writes, and the blobs it is the newest checkpoint to reference (deleting it and
# everything older frees them).
SIZES_SQL = """
WITH refs AS (
    SELECT c.thread_id, c.checkpoint_ns, v.key AS channel, v.value AS version,
           max(c.checkpoint_id) AS checkpoint_id
    FROM checkpoints c
    CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
    WHERE c.thread_id = ANY(%(threads)s::text[])
      AND c.checkpoint -> 'channel_versions' ? v.key
    GROUP BY 1, 2, 3, 4
)
SELECT thread_id, checkpoint_ns, checkpoint_id, sum(pg_column_size(blob))
FROM checkpoint_writes WHERE thread_id = ANY(%(threads)s::text[])
GROUP BY 1, 2, 3
UNION ALL
SELECT r.thread_id, r.checkpoint_ns, r.checkpoint_id, sum(coalesce(pg_column_size(b.blob), 0))
FROM refs r JOIN checkpoint_blobs b
  ON b.thread_id = r.thread_id AND b.checkpoint_ns = r.checkpoint_ns
 AND b.channel = r.channel AND b.version = r.version
GROUP BY 1, 2, 3
"""

# Thread expiry: each thread's oldest and newest checkpoint over every namespace.
SPANS_SQL = """
SELECT thread_id, min(checkpoint_id), max(checkpoint_id) FROM checkpoints
WHERE thread_id = ANY(%(threads)s::text[]) GROUP BY thread_id
"""

# Expired threads whose newest checkpoint is still the one the decision saw, checked by
# the deleting statement itself: a thread a run wrote to since then is left whole.
_EXPIRED_CTE = """
expired AS MATERIALIZED (
    SELECT e.thread_id FROM unnest(%(expired_threads)s::text[], %(expired_newest)s::text[])
         AS e(thread_id, newest)
    WHERE NOT EXISTS (SELECT 1 FROM checkpoints c
                      WHERE c.thread_id = e.thread_id AND c.checkpoint_id > e.newest)
)"""

_DOOMED_CTE = """
doomed AS MATERIALIZED (
    SELECT * FROM unnest(%(doomed_threads)s::text[], %(doomed_ns)s::text[],
                         %(doomed_ids)s::text[]) AS d(thread_id, checkpoint_ns, checkpoint_id)
)"""

_CHECKPOINT_SIZE = "pg_column_size(c.checkpoint) + pg_column_size(c.metadata)"


def _matches(a: str, b: str, columns: tuple[str, ...]) -> str:
    """SQL equating `columns` of the tables aliased `a` and `b`."""
    return " AND ".join(f"{a}.{col} = {b}.{col}" for col in columns)


_CHECKPOINT_KEY = ("thread_id", "checkpoint_ns", "checkpoint_id")
_BLOB_KEY = ("thread_id", "checkpoint_ns", "channel", "version")


# Every (thread, namespace, channel, version) a checkpoint of the threads references: the
# blobs it loads. The `?` test is always true; it stands in for a row estimate the planner
# lacks (it takes 100 rows per `jsonb_each_text`, 25x too many, and then splits the hash
# of the references into dozens of batches spilled to disk).
_REFERENCES = """
    SELECT c.thread_id, c.checkpoint_ns, v.key AS channel, v.value AS version
    FROM checkpoints c
    CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
    WHERE c.thread_id = ANY(%(threads)s::text[])
      AND c.checkpoint -> 'channel_versions' ? v.key"""


def _totals(kind: str, rows: str) -> str:
    """SELECT of (kind, thread, rows, bytes) per thread over a CTE of (thread_id, size)."""
    return (
        f"SELECT '{kind}', thread_id, count(*), coalesce(sum(size), 0) FROM {rows} "
        "GROUP BY thread_id"
    )


_ALL_TOTALS = "\nUNION ALL\n".join(
    _totals(kind, rows)
    for kind, rows in (("checkpoints", "gone"), ("writes", "gone_writes"), ("blobs", "gone_blobs"))
)

DELETE_THREADS_SQL = f"""
WITH {_EXPIRED_CTE},
gone AS (
    DELETE FROM checkpoints c USING expired e WHERE c.thread_id = e.thread_id
    RETURNING c.thread_id, {_CHECKPOINT_SIZE} AS size
),
gone_writes AS (
    DELETE FROM checkpoint_writes w USING expired e WHERE w.thread_id = e.thread_id
    RETURNING w.thread_id, pg_column_size(w.blob) AS size
),
gone_blobs AS (
    DELETE FROM checkpoint_blobs b USING expired e WHERE b.thread_id = e.thread_id
    RETURNING b.thread_id, coalesce(pg_column_size(b.blob), 0) AS size
)
{_ALL_TOTALS}
"""

DRY_RUN_THREADS_SQL = f"""
WITH {_EXPIRED_CTE},
gone AS (
    SELECT c.thread_id, {_CHECKPOINT_SIZE} AS size
    FROM checkpoints c JOIN expired e USING (thread_id)
),
gone_writes AS (
    SELECT w.thread_id, pg_column_size(w.blob) AS size
    FROM checkpoint_writes w JOIN expired e USING (thread_id)
),
gone_blobs AS (
    SELECT b.thread_id, coalesce(pg_column_size(b.blob), 0) AS size
    FROM checkpoint_blobs b JOIN expired e USING (thread_id)
)
{_ALL_TOTALS}
"""

_BLOBS_OF_THREADS = "b.thread_id = ANY(%(threads)s::text[])"
_UNREFERENCED = f"NOT EXISTS (SELECT 1 FROM live l WHERE {_matches('l', 'b', _BLOB_KEY)})"

# First statement: the doomed checkpoints and their writes (which may commit before their
# checkpoint: they go by the ids deleted, never by "all but the kept"), counted per
# thread (rows, on-disk bytes). The `thread_id = ANY` bound is redundant with the ids but
# lets the planner reach the rows through the primary key: without it, each batch
# hash-joined the doomed ids against a sequential scan of both whole tables. The ids are
# a semi-join (`IN`), so the hashed side is the doomed list and the rows are deleted in
# the bitmap scan's physical order, each page visited once; a join probed the table in
# the list's order, from page to page all over a scattered table.
_KEY_IN_DOOMED = "({}.thread_id, {}.checkpoint_ns, {}.checkpoint_id) IN (SELECT * FROM doomed)"
DELETE_CHECKPOINTS_SQL = f"""
WITH {_DOOMED_CTE},
gone AS (
    DELETE FROM checkpoints c
    WHERE c.thread_id = ANY(%(threads)s::text[]) AND {_KEY_IN_DOOMED.format("c", "c", "c")}
    RETURNING c.thread_id, {_CHECKPOINT_SIZE} AS size
),
gone_writes AS (
    DELETE FROM checkpoint_writes w
    WHERE w.thread_id = ANY(%(threads)s::text[]) AND {_KEY_IN_DOOMED.format("w", "w", "w")}
    RETURNING w.thread_id, pg_column_size(w.blob) AS size
)
{_totals("checkpoints", "gone")}
UNION ALL
{_totals("writes", "gone_writes")}
"""

# Second statement, in the same transaction: the blobs of those threads that no remaining
# checkpoint references (the doomed ones' only, dropped subgraph calls', or orphans an
# earlier cleanup left). Its snapshot is taken after the first statement: it sees our
# deletes, and every checkpoint a run committed meanwhile, which protects its blobs. A
# blob is never visible before its checkpoint: the savers write both in one transaction
# (`put` runs in one pipeline sync or transaction), so a run in flight is invisible here,
# blob and checkpoint alike. Only the batch's threads are read (`thread_id` leads the blob
# primary key, so a big table is not scanned).
DELETE_BLOBS_SQL = f"""
WITH live AS ({_REFERENCES}
),
gone_blobs AS (
    DELETE FROM checkpoint_blobs b WHERE {_BLOBS_OF_THREADS} AND {_UNREFERENCED}
    RETURNING b.thread_id, coalesce(pg_column_size(b.blob), 0) AS size
)
{_totals("blobs", "gone_blobs")}
"""

# Both statements as one SELECT of the same rows, deleting nothing: the checkpoints that
# stay are those not doomed.
DRY_RUN_SQL = f"""
WITH {_DOOMED_CTE},
gone AS (
    SELECT c.thread_id, {_CHECKPOINT_SIZE} AS size
    FROM checkpoints c JOIN doomed d ON {_matches("d", "c", _CHECKPOINT_KEY)}
),
gone_writes AS (
    SELECT w.thread_id, pg_column_size(w.blob) AS size
    FROM checkpoint_writes w JOIN doomed d ON {_matches("d", "w", _CHECKPOINT_KEY)}
),
live AS ({_REFERENCES}
      AND NOT EXISTS (SELECT 1 FROM doomed d WHERE {_matches("d", "c", _CHECKPOINT_KEY)})
),
gone_blobs AS (
    SELECT b.thread_id, coalesce(pg_column_size(b.blob), 0) AS size
    FROM checkpoint_blobs b WHERE {_BLOBS_OF_THREADS} AND {_UNREFERENCED}
)
{_totals("checkpoints", "gone")}
UNION ALL
{_totals("writes", "gone_writes")}
UNION ALL
{_totals("blobs", "gone_blobs")}
"""

# Keyset pagination as a skip scan of the primary key: each step of the recursion is one
# index probe for the next thread id, so a page costs `limit` probes however many
# checkpoints the threads have (a DISTINCT read every row of the page's threads, and
# more as the table grew).
FIRST_THREAD_PAGE_SQL = """
WITH RECURSIVE t(thread_id) AS (
    (SELECT thread_id FROM checkpoints ORDER BY thread_id LIMIT 1)
    UNION ALL
    SELECT (SELECT c.thread_id FROM checkpoints c WHERE c.thread_id > t.thread_id
            ORDER BY c.thread_id LIMIT 1)
    FROM t WHERE t.thread_id IS NOT NULL
)
SELECT thread_id FROM t WHERE thread_id IS NOT NULL LIMIT %(limit)s
"""

NEXT_THREAD_PAGE_SQL = """
WITH RECURSIVE t(thread_id) AS (
    (SELECT thread_id FROM checkpoints WHERE thread_id > %(after)s
     ORDER BY thread_id LIMIT 1)
    UNION ALL
    SELECT (SELECT c.thread_id FROM checkpoints c WHERE c.thread_id > t.thread_id
            ORDER BY c.thread_id LIMIT 1)
    FROM t WHERE t.thread_id IS NOT NULL
)
SELECT thread_id FROM t WHERE thread_id IS NOT NULL LIMIT %(limit)s
"""

# Sizes are on-disk (`pg_column_size`: compressed or TOASTed as stored), as freed bytes are.
STATS_SQL = f"""
WITH cp AS (
    SELECT c.thread_id, count(*) AS checkpoints, sum({_CHECKPOINT_SIZE}) AS size,
           max(c.checkpoint_id) AS newest, count(DISTINCT c.checkpoint_ns) AS namespaces
    FROM checkpoints c WHERE c.thread_id = ANY(%(threads)s::text[]) GROUP BY c.thread_id
),
wr AS (
    SELECT thread_id, count(*) AS writes, sum(pg_column_size(blob)) AS size
    FROM checkpoint_writes WHERE thread_id = ANY(%(threads)s::text[]) GROUP BY thread_id
),
bl AS (
    SELECT thread_id, coalesce(sum(pg_column_size(blob)), 0) AS size
    FROM checkpoint_blobs WHERE thread_id = ANY(%(threads)s::text[]) GROUP BY thread_id
)
SELECT cp.thread_id, cp.checkpoints, cp.newest, cp.namespaces,
       coalesce(wr.writes, 0) AS writes,
       cp.size + coalesce(wr.size, 0) + coalesce(bl.size, 0) AS size
FROM cp LEFT JOIN wr USING (thread_id) LEFT JOIN bl USING (thread_id)
"""

THREAD_PAGE_SIZE = 1000

#: Threads per transaction of a sweep that names no batch size. On a store whose threads'
#: rows are interleaved on disk (every production store), each batch reads and dirties a
#: heap page per checkpoint, and a page holding rows of many threads is read again by
#: every batch that has one of them: fewer, bigger batches visit each page fewer times.
#: 1,000 threads x 60 checkpoints cost ~50 MB more client memory than 100 and take
#: 0.7x the time at 2,000 threads (README, At scale: PostgreSQL).
SWEEP_BATCH_SIZE = 1000

#: Attempts of a batch's transaction when Postgres reports a deadlock or a serialization
#: failure (another transaction changed the same rows); each attempt re-reads the index.
MAX_ATTEMPTS = 5
RETRY_BASE_DELAY = 0.05
RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)

R = TypeVar("R")
Rows = list[tuple[Any, ...]]
#: (sql, params, whether rows come back)
Statement = tuple[str, Mapping[str, Any], bool]
Program = Generator[Statement, Rows, R]
DeltaFacts = Mapping[tuple[str, str, str], tuple[list[str], list[str]]]
Key = tuple[str, str, str]

_NO_NEEDS: frozenset[str] = frozenset()
_NO_PARENTS: Mapping[str, str] = MappingProxyType({})


def _text_array(values: Sequence[str]) -> str:
    """A text[] literal of `values`, built with C-speed joins: psycopg's array dumpers walk
    the list in Python, which costs more than the statement on a batch of thousands."""
    joined = '","'.join(values)
    if "\\" in joined or joined.count('"') != 2 * max(len(values) - 1, 0):
        joined = '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return '{"' + joined + '"}' if values else "{}"


# -- programs: the decisions, shared by both drivers ------------------------------------


def _needs_facts(policy: RetentionPolicy) -> bool:
    """Whether the policy reads sizes or tags (FACTS_INDEX_SQL's columns)."""
    return policy.keep_tagged is not None or policy.max_bytes is not None


@dataclass
class _Facts:
    """What the richer rules read in the writes and blobs (empty when none needs them)."""

    interrupted: set[Key] = field(default_factory=set)
    sizes: dict[Key, int] = field(default_factory=dict)  # besides the row's own bytes


def _facts_program(rows: Rows, threads: str, policy: RetentionPolicy) -> Program[_Facts]:
    """Interrupts and sizes for the batch, each only if the policy uses it; checkpoints
    are sized only in threads over `max_bytes` (FACTS_INDEX_SQL `rows` size the rows)."""
    facts = _Facts()
    if policy.max_bytes is None:
        if policy.keep_interrupted:
            found = yield INTERRUPTS_SQL, {"threads": threads}, True
            facts.interrupted = {(tid, ns, cid) for tid, ns, cid in found}
        return facts
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        totals[row[0]] += row[7]
    for tid, size, interrupted_ns, interrupted_ids in (
        yield THREAD_BYTES_SQL, {"threads": threads}, True
    ):
        totals[tid] += int(size or 0)
        if interrupted_ids:
            facts.interrupted.update(
                zip([tid] * len(interrupted_ids), interrupted_ns, interrupted_ids, strict=True)
            )
    if over := [tid for tid, size in totals.items() if size > policy.max_bytes]:
        sizes: dict[Key, int] = defaultdict(int)
        for tid, ns, cid, size in (yield SIZES_SQL, {"threads": _text_array(over)}, True):
            sizes[(tid, ns, cid)] += int(size or 0)
        facts.sizes = sizes
    return facts


def _entries(
    rows: Rows, delta: DeltaFacts | None, tag: str | None, facts: _Facts
) -> dict[str, list[CheckpointEntry]]:
    """Each thread's index (INDEX_SQL or FACTS_INDEX_SQL rows) as `CheckpointEntry`s,
    DeltaChannel needs resolved from DELTA_SQL's facts (None: no thread of the batch uses
    a DeltaChannel), interrupts and sizes from `facts`."""
    names_by_ns: dict[tuple[str, str], set[str]] = {}
    found = delta if delta is not None else {}
    if delta is not None:
        for row in rows:
            if row[5]:
                names_by_ns.setdefault((row[0], row[1]), set()).update(row[5])

    def needs_of(tid: str, ns: str, cid: str) -> frozenset[str]:
        if names_by_ns and (channels := names_by_ns.get((tid, ns))):
            # Gone since the index was read (a concurrent prune): take it as needing
            # every channel, which can only keep more.
            versioned, stored = found.get((tid, ns, cid), (list(channels), []))
            return delta_needs(channels, versioned, stored)
        return _NO_NEEDS

    by_thread: dict[str, list[CheckpointEntry]] = defaultdict(list)
    interrupted, sizes = facts.interrupted, facts.sizes
    if not rows or (len(rows[0]) == 7 and not interrupted):  # keep-last and friends
        for tid, ns, cid, parent, parents, _names, sends in rows:
            needs = needs_of(tid, ns, cid) if names_by_ns else _NO_NEEDS
            by_thread[tid].append(
                CheckpointEntry(ns, cid, parent, parents or _NO_PARENTS, needs, sends)
            )
        return by_thread
    tags = frozenset({tag}) if tag is not None else frozenset()
    no_tags: frozenset[str] = frozenset()
    for row in rows:
        tid, ns, cid, parent, parents, _names, sends, *columns = row
        row_bytes, tagged = columns if columns else (0, False)
        key = (tid, ns, cid)
        by_thread[tid].append(
            CheckpointEntry(
                ns, cid, parent, parents or _NO_PARENTS,
                needs_of(tid, ns, cid) if names_by_ns else _NO_NEEDS, sends,
                row_bytes + sizes.get(key, 0) if sizes else row_bytes,
                tags if tagged else no_tags,
                key in interrupted,
            )
        )  # fmt: skip
    return by_thread


def _prune_program(
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    dry_run: bool,
    now: datetime,
    explain: bool = False,
    expire: Expire | None = None,
) -> Program[list[ThreadResult]]:
    """Read the batch's index, decide each thread, delete (or count, in a dry run), report."""
    threads = list(thread_ids)
    yield ISOLATION_SQL, {}, False
    yield SETTINGS_SQL, {}, False
    threads_param = _text_array(threads)
    if _needs_facts(policy):
        params = {"threads": threads_param, "tag": policy.keep_tagged}
        rows = yield FACTS_INDEX_SQL, params, True
    else:
        rows = yield INDEX_SQL, {"threads": threads_param}, True

    delta: dict[tuple[str, str, str], tuple[list[str], list[str]]] | None = None
    if channels := sorted({name for r in rows if r[5] for name in r[5]}):
        delta = {}
        params = {
            "threads": _text_array(sorted({r[0] for r in rows if r[5]})),
            "channels": _text_array(channels),
        }
        for tid, ns, cid, versioned, stored in (yield DELTA_SQL, params, True):
            delta[(tid, ns, cid)] = (versioned, stored)
    facts = yield from _facts_program(rows, threads_param, policy)

    results: dict[str, ThreadResult] = {}
    doomed: tuple[list[str], list[str], list[str]] = ([], [], [])
    expired: tuple[list[str], list[str]] = ([], [])
    read_counts: dict[str, int] = {}  # expiring thread -> checkpoints the decision read
    by_thread = _entries(rows, delta, policy.keep_tagged, facts)
    for tid in threads:
        entries = by_thread.get(tid, [])
        try:
            plan, result = decide(tid, entries, policy, now=now, explain=explain, expire=expire)
        except RetentionError as exc:
            results[tid] = ThreadResult(tid, error=str(exc))
            continue
        results[tid] = result
        if result.expired is not None:  # the decision saw `entries` whole: their newest
            expired[0].append(tid)
            expired[1].append(max(e.checkpoint_id for e in entries))
            read_counts[tid] = len(entries)
            continue
        for ns, ids in plan.delete.items():
            doomed[0].extend([tid] * len(ids))
            doomed[1].extend([ns] * len(ids))
            doomed[2].extend(ids)
    del rows, by_thread, delta, facts  # decided: let them go before the next round trip

    totals: Rows = []
    if doomed[2]:
        params = {
            "threads": _text_array(sorted(set(doomed[0]))),
            "doomed_threads": _text_array(doomed[0]),
            "doomed_ns": _text_array(doomed[1]),
            "doomed_ids": _text_array(doomed[2]),
        }
        if dry_run:
            totals += yield DRY_RUN_SQL, params, True
        else:
            totals += yield DELETE_CHECKPOINTS_SQL, params, True
            totals += yield DELETE_BLOBS_SQL, {"threads": params["threads"]}, True
    if expired[0]:
        params = {
            "expired_threads": _text_array(expired[0]),
            "expired_newest": _text_array(expired[1]),
        }
        gone = yield (DRY_RUN_THREADS_SQL if dry_run else DELETE_THREADS_SQL), params, True
        _written_since(results, read_counts, gone)
        totals += gone
    for kind, tid, n, size in totals:
        result = results[tid]
        result.bytes_freed += int(size)
        if kind == "checkpoints":
            result.deleted_checkpoints = int(n)
        elif kind == "writes":
            result.deleted_writes = int(n)
        else:
            result.deleted_blobs = int(n)
    return [results[tid] for tid in threads]


def _written_since(
    results: Mapping[str, ThreadResult], read_counts: Mapping[str, int], gone: Rows
) -> None:
    """Expired threads the deleting statement left whole (a run wrote a newer checkpoint
    since the decision): not expired after all, nothing deleted, every checkpoint kept."""
    deleted = {row[1] for row in gone if row[0] == "checkpoints"}
    for tid, count in read_counts.items():
        if tid not in deleted:
            result = results[tid]
            result.expired = None
            result.kept_checkpoints = count
            result.decisions = None
            result.warnings.append(
                f"thread {tid!r} was written to since it expired; it was left whole"
            )


def _spans_program(thread_ids: Sequence[str]) -> Program[dict[str, Span]]:
    rows = yield SPANS_SQL, {"threads": _text_array(thread_ids)}, True
    return {tid: (first, newest) for tid, first, newest in rows}


def _stats_program(thread_ids: Sequence[str]) -> Program[list[tuple[str, ThreadStats]]]:
    """Per-thread counts and on-disk bytes, aggregated by the server in one statement."""
    found: dict[str, ThreadStats] = {}
    for tid, checkpoints, newest, namespaces, writes, size in (
        yield (
            STATS_SQL,
            {"threads": _text_array(thread_ids)},
            True,
        )
    ):
        found[tid] = ThreadStats(
            checkpoints=int(checkpoints),
            writes=int(writes),
            bytes=int(size),
            namespaces=int(namespaces),
            newest=checkpoint_time(newest),
            newest_checkpoint_id=newest,
        )
    return [(tid, found[tid]) for tid in thread_ids if tid in found]


def _thread_page_program(after: str | None) -> Program[list[str]]:
    """One page of thread ids in key order, after `after` (None: the first page)."""
    if after is None:
        rows = yield FIRST_THREAD_PAGE_SQL, {"limit": THREAD_PAGE_SIZE}, True
    else:
        rows = yield NEXT_THREAD_PAGE_SQL, {"after": after, "limit": THREAD_PAGE_SIZE}, True
    return [r[0] for r in rows]


# -- drivers ------------------------------------------------------------------------------


def _retry_delay(attempt: int) -> float:
    """Jittered exponential backoff, so two colliding prunes do not collide again."""
    return float(RETRY_BASE_DELAY * (2 ** (attempt - 1)) * (0.5 + random.random()))


def _unavailable(exc: Exception, saver_conn: Any, used: Any) -> PostgresUnavailableError | None:
    """The error to raise instead of `exc` when it says the server is out of reach:
    no pooled connection came, the connection we used (None: we got none) is closed or
    broken, or the server reported a connection failure or its shutdown."""
    if isinstance(exc, PoolTimeout):
        reason = "no pooled connection could be opened"
    elif isinstance(exc, psycopg.OperationalError) and (
        used is None or used.closed or used.broken or (exc.sqlstate or "").startswith(("08", "57P"))
    ):
        reason = "the connection failed"
    else:
        return None
    return PostgresUnavailableError(
        f"PostgreSQL at {server_name(saver_conn)} is unreachable ({reason}: {exc}); "
        "the operation did not complete"
    )


def _drive(cur: Cursor[TupleRow], program: Program[R]) -> R:
    """Execute each statement a program yields, send it the rows, return its result.
    Turning rows into objects and deciding on them is CPU only: the GC waits."""
    try:
        sql, params, fetch = next(program)
        while True:
            cur.execute(sql, params, prepare=False)
            with gc_paused():
                sql, params, fetch = program.send(cur.fetchall() if fetch else [])
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _adrive(cur: AsyncCursor[TupleRow], program: Program[R]) -> R:
    """`_drive` on asyncio."""
    try:
        sql, params, fetch = next(program)
        while True:
            await cur.execute(sql, params, prepare=False)
            rows = await cur.fetchall() if fetch else []
            with gc_paused():
                sql, params, fetch = program.send(rows)
            del rows
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class PostgresBackend(Backend):
    """Prunes a `PostgresSaver`: on its connection under its lock, or on a pooled one."""

    name = "postgres"
    sweep_batch_size = SWEEP_BATCH_SIZE
    saver: PostgresSaver

    @contextmanager
    def _cursor(self) -> Iterator[Cursor[TupleRow]]:
        """A tuple-row cursor: on a pooled connection of our own (the app's checkpoints
        keep flowing meanwhile), else on the saver's connection under its lock."""
        conn = self.saver.conn
        if isinstance(conn, ConnectionPool):
            with conn.connection() as own, own.cursor(binary=True, row_factory=tuple_row) as cur:
                yield cur
            return
        with self.saver._cursor() as saver_cur:
            pipe = self.saver.pipe
            if pipe is not None:
                # A transaction must start clean, not take in what the pipeline queued.
                pipe.sync()
            with saver_cur.connection.cursor(binary=True, row_factory=tuple_row) as cur:
                yield cur
            if pipe is not None:
                pipe.sync()  # end the implicit transaction our reads opened in the pipeline

    def _exec(self, make: Callable[[], Program[R]], *, write: bool) -> R:
        """Run a program in one transaction (reads on an autocommit connection run bare),
        retrying the whole of it on a deadlock or a serialization failure."""
        attempt = 1
        while True:
            conn: Connection[Any] | None = None
            try:
                with self._cursor() as cur:
                    conn = cur.connection
                    if write or not conn.autocommit:
                        with conn.transaction():
                            return _drive(cur, make())
                    return _drive(cur, make())
            except RETRYABLE:
                if attempt >= MAX_ATTEMPTS:
                    raise
            except psycopg.errors.UndefinedTable as exc:
                raise not_ready(server_name(self.saver.conn), missing_relation(exc)) from exc
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if (unavailable := _unavailable(exc, self.saver.conn, conn)) is not None:
                    raise unavailable from exc
                raise
            time.sleep(_retry_delay(attempt))
            attempt += 1

    def prune_batch(
        self,
        thread_ids: Sequence[str],
        policy: RetentionPolicy,
        *,
        dry_run: bool,
        now: datetime,
        explain: bool = False,
        expire: Expire | None = None,
        stage: Stage | None = None,
    ) -> list[ThreadResult]:
        return self._exec(
            lambda: _prune_program(thread_ids, policy, dry_run, now, explain, expire), write=True
        )

    def thread_spans(self, thread_ids: Sequence[str]) -> dict[str, Span]:
        return self._exec(lambda: _spans_program(thread_ids), write=False)

    def iter_thread_ids(self) -> Iterator[str]:
        after: str | None = None
        while page := self._exec(partial(_thread_page_program, after), write=False):
            yield from page
            after = page[-1]

    def thread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        return self._exec(lambda: _stats_program(thread_ids), write=False)

    def check_store(self) -> None:
        if missing := self._exec(missing_tables_program, write=False):
            raise not_ready(server_name(self.saver.conn), missing)

    def sweep_lock(self) -> PostgresSweepLock:
        return PostgresSweepLock(self.saver.conn)


class AsyncPostgresBackend(Backend):
    """Prunes an `AsyncPostgresSaver`, on its connection or a pooled one (as above)."""

    name = "postgres"
    is_async = True
    sweep_batch_size = SWEEP_BATCH_SIZE
    saver: AsyncPostgresSaver

    @asynccontextmanager
    async def _cursor(self) -> AsyncIterator[AsyncCursor[TupleRow]]:
        """`PostgresBackend._cursor` on asyncio."""
        conn = self.saver.conn
        if isinstance(conn, AsyncConnectionPool):
            async with (
                conn.connection() as own,
                own.cursor(binary=True, row_factory=tuple_row) as cur,
            ):
                yield cur
            return
        async with self.saver._cursor() as saver_cur:
            pipe = self.saver.pipe
            if pipe is not None:
                await pipe.sync()
            async with saver_cur.connection.cursor(binary=True, row_factory=tuple_row) as cur:
                yield cur
            if pipe is not None:
                await pipe.sync()

    async def _aexec(self, make: Callable[[], Program[R]], *, write: bool) -> R:
        """`PostgresBackend._exec` on asyncio."""
        attempt = 1
        while True:
            conn: AsyncConnection[Any] | None = None
            try:
                async with self._cursor() as cur:
                    conn = cur.connection
                    if write or not conn.autocommit:
                        async with conn.transaction():
                            return await _adrive(cur, make())
                    return await _adrive(cur, make())
            except RETRYABLE:
                if attempt >= MAX_ATTEMPTS:
                    raise
            except psycopg.errors.UndefinedTable as exc:
                raise not_ready(server_name(self.saver.conn), missing_relation(exc)) from exc
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if (unavailable := _unavailable(exc, self.saver.conn, conn)) is not None:
                    raise unavailable from exc
                raise
            await asyncio.sleep(_retry_delay(attempt))
            attempt += 1

    async def aprune_batch(
        self,
        thread_ids: Sequence[str],
        policy: RetentionPolicy,
        *,
        dry_run: bool,
        now: datetime,
        explain: bool = False,
        expire: Expire | None = None,
        stage: Stage | None = None,
    ) -> list[ThreadResult]:
        return await self._aexec(
            lambda: _prune_program(thread_ids, policy, dry_run, now, explain, expire), write=True
        )

    async def athread_spans(self, thread_ids: Sequence[str]) -> dict[str, Span]:
        return await self._aexec(lambda: _spans_program(thread_ids), write=False)

    async def _aiter(self) -> AsyncIterator[str]:
        after: str | None = None
        while page := await self._aexec(partial(_thread_page_program, after), write=False):
            for tid in page:
                yield tid
            after = page[-1]

    def aiter_thread_ids(self) -> AsyncIterator[str]:
        return self._aiter()

    async def athread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        return await self._aexec(lambda: _stats_program(thread_ids), write=False)

    async def acheck_store(self) -> None:
        if missing := await self._aexec(missing_tables_program, write=False):
            raise not_ready(server_name(self.saver.conn), missing)

    async def asweep_lock(self) -> PostgresSweepLock:
        return PostgresSweepLock(self.saver.conn)
