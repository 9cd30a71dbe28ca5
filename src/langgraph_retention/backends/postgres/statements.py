"""The SQL a prune, a sweep and `stats` run, as named constants, and how their parameters
are spelled: thread ids travel as one text[] parameter (`= ANY`), doomed checkpoints as
three parallel arrays, each sent as one array literal (`text_array`). Statements run
unprepared, so the planner sees the real array sizes."""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any, TypeVar

from langgraph.checkpoint.serde.types import INTERRUPT, TASKS

R = TypeVar("R")
Rows = list[tuple[Any, ...]]
#: (sql, params, whether rows come back)
Statement = tuple[str, Mapping[str, Any], bool]
#: Yields statements, receives their rows, returns its result (run by the drivers).
Program = Generator[Statement, Rows, R]


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


def key_hash(alias: str, columns: tuple[str, ...], seed: str = "0") -> str:
    """SQL of a 64-bit hash of a row's key `columns` (text), chained through the seed:
    what a staged delete matches besides the tuple id, which VACUUM may give another row
    (and VACUUM FULL or pg_repack may give to any row) before the flush."""
    sql = seed
    for column in columns:
        sql = f"hashtextextended({alias}.{column}, {sql})"
    return sql


CHECKPOINT_HASH = key_hash("c", ("thread_id", "checkpoint_ns", "checkpoint_id"))

# The same, for a staged sweep, with where each row is: its heap tuple id (6 bytes: block,
# line) and its key's hash (8 bytes), in their binary forms.
_LOCATION = f", tidsend(c.ctid), int8send({CHECKPOINT_HASH})\nFROM checkpoints c"
LOCATED_INDEX_SQL = INDEX_SQL.replace("\nFROM checkpoints c", _LOCATION)
LOCATED_FACTS_INDEX_SQL = FACTS_INDEX_SQL.replace("\nFROM checkpoints c", _LOCATION)

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

DOOMED_CTE = """
doomed AS MATERIALIZED (
    SELECT * FROM unnest(%(doomed_threads)s::text[], %(doomed_ns)s::text[],
                         %(doomed_ids)s::text[]) AS d(thread_id, checkpoint_ns, checkpoint_id)
)"""

CHECKPOINT_SIZE = "pg_column_size(c.checkpoint) + pg_column_size(c.metadata)"


def matches(a: str, b: str, columns: tuple[str, ...]) -> str:
    """SQL equating `columns` of the tables aliased `a` and `b`."""
    return " AND ".join(f"{a}.{col} = {b}.{col}" for col in columns)


CHECKPOINT_KEY = ("thread_id", "checkpoint_ns", "checkpoint_id")
BLOB_KEY = ("thread_id", "checkpoint_ns", "channel", "version")


# Every (thread, namespace, channel, version) a checkpoint of the threads references: the
# blobs it loads. The `?` test is always true; it stands in for a row estimate the planner
# lacks (it takes 100 rows per `jsonb_each_text`, 25x too many, and then splits the hash
# of the references into dozens of batches spilled to disk).
REFERENCES = """
    SELECT c.thread_id, c.checkpoint_ns, v.key AS channel, v.value AS version
    FROM checkpoints c
    CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
    WHERE c.thread_id = ANY(%(threads)s::text[])
      AND c.checkpoint -> 'channel_versions' ? v.key"""


def totals(kind: str, rows: str) -> str:
    """SELECT of (kind, thread, rows, bytes) per thread over a CTE of (thread_id, size)."""
    return (
        f"SELECT '{kind}', thread_id, count(*), coalesce(sum(size), 0) FROM {rows} "
        "GROUP BY thread_id"
    )


_ALL_TOTALS = "\nUNION ALL\n".join(
    totals(kind, rows)
    for kind, rows in (("checkpoints", "gone"), ("writes", "gone_writes"), ("blobs", "gone_blobs"))
)

DELETE_THREADS_SQL = f"""
WITH {_EXPIRED_CTE},
gone AS (
    DELETE FROM checkpoints c USING expired e WHERE c.thread_id = e.thread_id
    RETURNING c.thread_id, {CHECKPOINT_SIZE} AS size
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
    SELECT c.thread_id, {CHECKPOINT_SIZE} AS size
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
UNREFERENCED = f"NOT EXISTS (SELECT 1 FROM live l WHERE {matches('l', 'b', BLOB_KEY)})"

# First statement: the doomed checkpoints and their writes (which may commit before their
# checkpoint: they go by the ids deleted, never by "all but the kept"), counted per
# thread (rows, on-disk bytes). The `thread_id = ANY` bound is redundant with the ids but
# lets the planner reach the rows through the primary key: without it, each batch
# hash-joined the doomed ids against a sequential scan of both whole tables. The ids are
# a semi-join (`IN`), so the hashed side is the doomed list and the rows are deleted in
# the bitmap scan's physical order, each page visited once; a join probed the table in
# the list's order, from page to page all over a scattered table.
KEY_IN_DOOMED = "({}.thread_id, {}.checkpoint_ns, {}.checkpoint_id) IN (SELECT * FROM doomed)"
DELETE_CHECKPOINTS_SQL = f"""
WITH {DOOMED_CTE},
gone AS (
    DELETE FROM checkpoints c
    WHERE c.thread_id = ANY(%(threads)s::text[]) AND {KEY_IN_DOOMED.format("c", "c", "c")}
    RETURNING c.thread_id, {CHECKPOINT_SIZE} AS size
),
gone_writes AS (
    DELETE FROM checkpoint_writes w
    WHERE w.thread_id = ANY(%(threads)s::text[]) AND {KEY_IN_DOOMED.format("w", "w", "w")}
    RETURNING w.thread_id, pg_column_size(w.blob) AS size
)
{totals("checkpoints", "gone")}
UNION ALL
{totals("writes", "gone_writes")}
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
WITH live AS ({REFERENCES}
),
gone_blobs AS (
    DELETE FROM checkpoint_blobs b WHERE {_BLOBS_OF_THREADS} AND {UNREFERENCED}
    RETURNING b.thread_id, coalesce(pg_column_size(b.blob), 0) AS size
)
{totals("blobs", "gone_blobs")}
"""

# Both statements as one SELECT of the same rows, deleting nothing: the checkpoints that
# stay are those not doomed.
DRY_RUN_SQL = f"""
WITH {DOOMED_CTE},
gone AS (
    SELECT c.thread_id, {CHECKPOINT_SIZE} AS size
    FROM checkpoints c JOIN doomed d ON {matches("d", "c", CHECKPOINT_KEY)}
),
gone_writes AS (
    SELECT w.thread_id, pg_column_size(w.blob) AS size
    FROM checkpoint_writes w JOIN doomed d ON {matches("d", "w", CHECKPOINT_KEY)}
),
live AS ({REFERENCES}
      AND NOT EXISTS (SELECT 1 FROM doomed d WHERE {matches("d", "c", CHECKPOINT_KEY)})
),
gone_blobs AS (
    SELECT b.thread_id, coalesce(pg_column_size(b.blob), 0) AS size
    FROM checkpoint_blobs b WHERE {_BLOBS_OF_THREADS} AND {UNREFERENCED}
)
{totals("checkpoints", "gone")}
UNION ALL
{totals("writes", "gone_writes")}
UNION ALL
{totals("blobs", "gone_blobs")}
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
    SELECT c.thread_id, count(*) AS checkpoints, sum({CHECKPOINT_SIZE}) AS size,
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


def text_array(values: Sequence[str]) -> str:
    """A text[] literal of `values`, built with C-speed joins: psycopg's array dumpers walk
    the list in Python, which costs more than the statement on a batch of thousands."""
    joined = '","'.join(values)
    if "\\" in joined or joined.count('"') != 2 * max(len(values) - 1, 0):
        joined = '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return '{"' + joined + '"}' if values else "{}"
