"""RediSearch queries over the saver's indexes, each over the documents of a few threads
(never the whole index): FT.SEARCH ... NOCONTENT for keys alone (straight from the index,
no document loaded), FT.AGGREGATE drained through its cursor where fields are needed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langgraph.checkpoint.redis.util import from_storage_safe_id, to_storage_safe_id

from .model import Command, Program, Row, _parse_page

#: Rows (or thread groups) per FT.AGGREGATE / FT.CURSOR READ reply.
CURSOR_PAGE = 1_000
#: Threads per FT.AGGREGATE: the server aggregates every matching document before the
#: first reply, so a query's cost follows its threads' documents (~60 each here).
THREADS_PER_QUERY = 10
#: Threads per FT.SEARCH ... NOCONTENT: ids come from the index without loading a
#: document (~2-3.5 us each here against ~4-7 us for an aggregation's row), ~60 per
#: thread: ~2 ms a query, far from 50 ms even when the server is slowed down.
THREADS_PER_SEARCH = 10
#: Keys per FT.SEARCH reply; the threads of a query matching more are read by the
#: cursor-paged aggregations instead (field by field), a page at a time.
SEARCH_LIMIT = 5_000
#: Checkpoint ids per write-key query (a tag union; keeps each query string modest).
IDS_PER_QUERY = 1_000
#: The metadata key LangGraph keeps on checkpoints whose DeltaChannels have pending deltas.
DELTA_MARK = "counters_since_delta_snapshot"
#: The TAG separator the saver's schema uses: a thread id is indexed as its pieces.
TAG_SEPARATOR = ","
#: What RediSearch trims around each tag piece (C isspace).
TAG_WHITESPACE = " \t\n\v\f\r"
#: ASCII punctuation and whitespace must be backslash-escaped inside a tag query.
_TAG_ESCAPES = str.maketrans(
    {c: "\\" + c for c in map(chr, range(128)) if not (c.isalnum() or c == "_")}
)
_TAIL = ("WITHCURSOR", "COUNT", CURSOR_PAGE, "TIMEOUT", 0, "DIALECT", 2)
#: No timeout: RediSearch's default returns partial results silently after 500 ms.
_SEARCH_TAIL = ("TIMEOUT", 0, "DIALECT", 2)

#: Threads any of whose checkpoints may involve a DeltaChannel (the metadata counter, or
#: no metadata at all): only they come back, so the reply is small.
MARKS_LOAD = ("$.metadata", "AS", "metadata")
MARKS_STEPS = (
    "FILTER", f'!exists(@metadata) || contains(@metadata, "{DELTA_MARK}")',
    "LOAD", 1, "@thread_id",
    "GROUPBY", 1, "@thread_id",
)  # fmt: skip
#: Threads with pending sends (`__pregel_tasks` writes): pre-v4 children depend on them.
SENDS_STEPS = ("GROUPBY", 1, "@thread_id", "REDUCE", "COUNT", 0, "AS", "sends")
#: Field-by-field reads, for threads the overview cannot plan (DeltaChannel, subgraph
#: calls, sends, unusual keys): identity, lineage and load dependencies, never the state.
DETAIL_LOAD = (
    "@__key", "@thread_id", "@checkpoint_ns", "@checkpoint_id", "@parent_checkpoint_id",
    "$.metadata", "AS", "metadata", "$.checkpoint.v", "AS", "v",
)  # fmt: skip
DETAIL_WRITE_LOAD = ("@__key", "@thread_id", "@checkpoint_ns", "@checkpoint_id", "@channel")
#: Write keys grouped by exact thread id.
KEYS_LOAD = ("@__key", "@thread_id")
KEYS_STEPS = ("GROUPBY", 1, "@thread_id", "REDUCE", "TOLIST", 1, "@__key", "AS", "keys")
STATS_LOAD = ("@__key", "@thread_id", "@checkpoint_ns", "@checkpoint_id")
STATS_STEPS = (
    "GROUPBY", 1, "@thread_id",
    "REDUCE", "TOLIST", 1, "@__key", "AS", "keys",
    "REDUCE", "COUNT_DISTINCT", 1, "@checkpoint_ns", "AS", "namespaces",
    "REDUCE", "FIRST_VALUE", 4, "@checkpoint_id", "BY", "@checkpoint_id", "DESC", "AS", "newest",
)  # fmt: skip

#: Interrupt writes (`keep_interrupted`) and tagged checkpoints (`keep_tagged`).
INTERRUPT_LOAD = ("@thread_id", "@checkpoint_ns", "@checkpoint_id")
TAG_LOAD = ("@__key", "@thread_id", "$.metadata", "AS", "metadata")
#: Per thread: its oldest and newest checkpoint id (thread expiry).
SPANS_LOAD = ("@thread_id", "@checkpoint_id")
SPANS_STEPS = (
    "GROUPBY", 1, "@thread_id",
    "REDUCE", "FIRST_VALUE", 4, "@checkpoint_id", "BY", "@checkpoint_id", "ASC", "AS", "first",
    "REDUCE", "FIRST_VALUE", 4, "@checkpoint_id", "BY", "@checkpoint_id", "DESC", "AS", "newest",
)  # fmt: skip


# -- queries -------------------------------------------------------------------------------


def _tag(value: str) -> str:
    """`value` escaped for a RediSearch tag query (non-ASCII passes through)."""
    return value.translate(_TAG_ESCAPES)


def _thread_query(thread_ids: Sequence[str]) -> tuple[str | None, list[str]]:
    """A RediSearch query matching the threads' documents, and ids no tag query can match.

    The match is a superset (tags are case-insensitive and split at ','); rows are kept
    by their exact `thread_id` afterwards. An id made only of separators and whitespace is
    indexed as no tag at all and needs a FILTER scan instead.
    """
    simple: list[str] = []
    clauses: list[str] = []
    unmatched: list[str] = []
    for tid in thread_ids:
        stored = to_storage_safe_id(tid)
        pieces = [p.strip(TAG_WHITESPACE) for p in stored.split(TAG_SEPARATOR)]
        pieces = [p for p in pieces if p]
        if not pieces:
            unmatched.append(stored)
        elif len(pieces) == 1:
            simple.append(_tag(pieces[0]))
        else:
            clauses.append("(" + " ".join(f"@thread_id:{{{_tag(p)}}}" for p in pieces) + ")")
    if simple:
        clauses.insert(0, "(@thread_id:{" + "|".join(dict.fromkeys(simple)) + "})")
    return (" | ".join(clauses) if clauses else None), unmatched


def _taggable(thread_id: str) -> bool:
    """Whether a tag query can find the thread's documents (some piece is not blank)."""
    stored = to_storage_safe_id(thread_id)
    return any(p.strip(TAG_WHITESPACE) for p in stored.split(TAG_SEPARATOR))


def _searches(index: str, thread_ids: Sequence[str]) -> tuple[list[Command], list[list[str]]]:
    """FT.SEARCH ... NOCONTENT commands for the keys of every document of the given
    (taggable) threads, `THREADS_PER_SEARCH` each, and the threads each one covers."""
    commands: list[Command] = []
    groups: list[list[str]] = []
    for start in range(0, len(thread_ids), THREADS_PER_SEARCH):
        group = list(thread_ids[start : start + THREADS_PER_SEARCH])
        query, _unmatched = _thread_query(group)
        if query is not None:
            commands.append(
                ("FT.SEARCH", index, query, "NOCONTENT", "LIMIT", 0, SEARCH_LIMIT, *_SEARCH_TAIL)
            )
            groups.append(group)
    return commands, groups


def _aggregates(
    index: str,
    thread_ids: Sequence[str],
    load: Sequence[str],
    steps: Sequence[Any] = (),
    where: str = "",
) -> list[Command]:
    """FT.AGGREGATE commands over every document of the given threads (and `where`),
    `THREADS_PER_QUERY` threads each."""
    commands: list[Command] = []
    unmatched: list[str] = []
    for start in range(0, len(thread_ids), THREADS_PER_QUERY):
        query, odd = _thread_query(thread_ids[start : start + THREADS_PER_QUERY])
        unmatched += odd
        if query is not None:
            full = f"({query}) {where}" if where else query
            commands.append(("FT.AGGREGATE", index, full, "LOAD", len(load), *load, *steps, *_TAIL))
    for stored in unmatched:  # only separators/whitespace: no quote can end the literal
        fields = tuple(load) if "@thread_id" in load else (*load, "@thread_id")
        commands.append(
            ("FT.AGGREGATE", index, where or "*", "LOAD", len(fields), *fields,
             "FILTER", f'@thread_id == "{stored}"', *steps, *_TAIL)
        )  # fmt: skip
    return commands


def _read_all(commands: list[Command]) -> Program[list[list[Row]]]:
    """Run FT.AGGREGATE commands in one pipeline and drain their cursors; rows per command."""
    _plain, rows = yield from _read_with([], commands)
    return rows


def _read_with(
    plain: list[Command], commands: list[Command]
) -> Program[tuple[list[Any], list[list[Row]]]]:
    """`plain` commands (their replies as they come) and FT.AGGREGATE `commands` (their
    cursors drained, rows per command) in one round trip."""
    out: list[list[Row]] = [[] for _ in commands]
    if not commands and not plain:
        return [], out
    replies = yield plain + commands
    plain_replies, replies = replies[: len(plain)], replies[len(plain) :]
    open_cursors: dict[int, int] = {}
    for i, reply in enumerate(replies):
        rows, cursor = _parse_page(reply)
        out[i].extend(rows)
        if cursor:
            open_cursors[i] = cursor
    while open_cursors:
        order = list(open_cursors)
        replies = yield [
            ("FT.CURSOR", "READ", commands[i][1], open_cursors[i], "COUNT", CURSOR_PAGE)
            for i in order
        ]
        for i, reply in zip(order, replies, strict=True):
            rows, cursor = _parse_page(reply)
            out[i].extend(rows)
            if cursor:
                open_cursors[i] = cursor
            else:
                del open_cursors[i]
    return plain_replies, out


def _thread_of(row: Row, wanted: set[str]) -> str | None:
    """The row's exact thread id if it is one we asked for (tag matches are a superset)."""
    raw = row.get("thread_id")
    if not isinstance(raw, str):
        return None
    tid = from_storage_safe_id(raw)
    return tid if tid in wanted else None
