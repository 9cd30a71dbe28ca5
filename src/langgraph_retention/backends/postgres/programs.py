"""The decisions of a prune, a sweep and `stats`, shared by the sync and async drivers:
each program yields statements (`statements.py`) and receives their rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from operator import itemgetter
from types import MappingProxyType

from langgraph_retention.errors import RetentionError
from langgraph_retention.policy import (
    CheckpointEntry,
    RetentionPolicy,
    ThreadPlan,
    checkpoint_time,
    delta_needs,
)
from langgraph_retention.report import ThreadResult, ThreadStats

from ..base import Expire, Span, decide
from .statements import (
    DELETE_BLOBS_SQL,
    DELETE_CHECKPOINTS_SQL,
    DELETE_THREADS_SQL,
    DELTA_SQL,
    DRY_RUN_SQL,
    DRY_RUN_THREADS_SQL,
    FACTS_INDEX_SQL,
    FIRST_THREAD_PAGE_SQL,
    INDEX_SQL,
    INTERRUPTS_SQL,
    ISOLATION_SQL,
    LOCATED_FACTS_INDEX_SQL,
    LOCATED_INDEX_SQL,
    NEXT_THREAD_PAGE_SQL,
    SETTINGS_SQL,
    SIZES_SQL,
    SPANS_SQL,
    STATS_SQL,
    THREAD_BYTES_SQL,
    Program,
    Rows,
    text_array,
)

THREAD_PAGE_SIZE = 1000

DeltaFacts = Mapping[tuple[str, str, str], tuple[list[str], list[str]]]
Key = tuple[str, str, str]

_NO_NEEDS: frozenset[str] = frozenset()
_NO_PARENTS: Mapping[str, str] = MappingProxyType({})
#: An index row's columns a keep-last entry needs (whatever follows them).
_ENTRY_COLUMNS = itemgetter(0, 1, 2, 3, 4, 6)


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
        for tid, ns, cid, size in (yield SIZES_SQL, {"threads": text_array(over)}, True):
            sizes[(tid, ns, cid)] += int(size or 0)
        facts.sizes = sizes
    return facts


def _entries(
    rows: Rows, delta: DeltaFacts | None, policy: RetentionPolicy, facts: _Facts
) -> dict[str, list[CheckpointEntry]]:
    """Each thread's index (INDEX_SQL or FACTS_INDEX_SQL rows, located or not) as
    `CheckpointEntry`s, DeltaChannel needs resolved from DELTA_SQL's facts (None: no thread
    of the batch uses a DeltaChannel), interrupts and sizes from `facts`."""
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
    with_facts = _needs_facts(policy)
    if not with_facts and not interrupted:  # keep-last and friends
        for tid, ns, cid, parent, parents, sends in map(_ENTRY_COLUMNS, rows):
            needs = needs_of(tid, ns, cid) if names_by_ns else _NO_NEEDS
            by_thread[tid].append(
                CheckpointEntry(ns, cid, parent, parents or _NO_PARENTS, needs, sends)
            )
        return by_thread
    tag = policy.keep_tagged
    tags = frozenset({tag}) if tag is not None else frozenset()
    no_tags: frozenset[str] = frozenset()
    for row in rows:
        tid, ns, cid, parent, parents, _names, sends, *columns = row
        row_bytes, tagged = (columns[0], columns[1]) if with_facts else (0, False)
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


@dataclass
class Decided:
    """A batch decided: each thread's result, the checkpoints to delete (three parallel
    lists), the threads to delete whole (with the newest id each decision saw and how many
    checkpoints it read), and, for a staged sweep, each doomed thread's plan and where
    every checkpoint row of the batch is (tuple id, key hash)."""

    threads: list[str]
    results: dict[str, ThreadResult] = field(default_factory=dict)
    doomed: tuple[list[str], list[str], list[str]] = field(default_factory=lambda: ([], [], []))
    expired: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))
    read_counts: dict[str, int] = field(default_factory=dict)
    locating: bool = False
    plans: dict[str, ThreadPlan] = field(default_factory=dict)
    located: dict[Key, tuple[bytes, bytes]] = field(default_factory=dict)
    #: Each thread's index, kept when its decision may be taken again (`capped.py`).
    entries: dict[str, list[CheckpointEntry]] | None = None


def decide_program(
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    now: datetime,
    explain: bool = False,
    expire: Expire | None = None,
    located: bool = False,
    deferred_facts: bool = False,
    first: bool = True,
    uncapped: bool = False,
) -> Program[Decided]:
    """Read the batch's index (with each row's location when `located`) and decide each
    thread on its own rows. With `deferred_facts`, the writes and blobs are not read for
    interrupts and sizes: the staged reads measure them after the decision (rows are
    sized; `staging.py` decides again the threads the measures say it must). With
    `uncapped`, the threads are decided without `max_bytes`, their rows sized, their
    plans and indexes kept (`capped.py` caps those the deletes show over it). `first`:
    this opens the transaction (its settings go first)."""
    decided = Decided(list(thread_ids), locating=located)
    if first:
        yield ISOLATION_SQL, {}, False
        yield SETTINGS_SQL, {}, False
    threads_param = text_array(decided.threads)
    if _needs_facts(policy):
        params = {"threads": threads_param, "tag": policy.keep_tagged}
        rows = yield (LOCATED_FACTS_INDEX_SQL if located else FACTS_INDEX_SQL), params, True
    else:
        rows = yield (LOCATED_INDEX_SQL if located else INDEX_SQL), {"threads": threads_param}, True
    if located:
        decided.located = {(r[0], r[1], r[2]): (r[-2], r[-1]) for r in rows}

    delta: dict[tuple[str, str, str], tuple[list[str], list[str]]] | None = None
    if channels := sorted({name for r in rows if r[5] for name in r[5]}):
        delta = {}
        params = {
            "threads": text_array(sorted({r[0] for r in rows if r[5]})),
            "channels": text_array(channels),
        }
        for tid, ns, cid, versioned, stored in (yield DELTA_SQL, params, True):
            delta[(tid, ns, cid)] = (versioned, stored)
    deciding = replace(policy, max_bytes=None) if uncapped else policy
    if deferred_facts:
        facts = _Facts()
    else:
        facts = yield from _facts_program(rows, threads_param, deciding)

    by_thread = _entries(rows, delta, policy, facts)
    del rows, delta, facts  # decided below: let them go before the next round trip
    if uncapped:
        decided.entries = by_thread
    for tid in decided.threads:
        _decide_thread(decided, tid, by_thread.get(tid, []), deciding, now, explain, expire)
    return decided


def _decide_thread(
    decided: Decided,
    tid: str,
    entries: Sequence[CheckpointEntry],
    policy: RetentionPolicy,
    now: datetime,
    explain: bool,
    expire: Expire | None,
) -> None:
    """Fold one thread's decision into the batch's: an error, an expiry, or doomed ids."""
    try:
        plan, result = decide(tid, entries, policy, now=now, explain=explain, expire=expire)
    except RetentionError as exc:
        decided.results[tid] = ThreadResult(tid, error=str(exc))
        return
    decided.results[tid] = result
    if result.expired is not None:  # the decision saw `entries` whole: their newest
        decided.expired[0].append(tid)
        decided.expired[1].append(max(e.checkpoint_id for e in entries))
        decided.read_counts[tid] = len(entries)
        return
    doomed = decided.doomed
    for ns, ids in plan.delete.items():
        doomed[0].extend([tid] * len(ids))
        doomed[1].extend([ns] * len(ids))
        doomed[2].extend(ids)
    if (decided.locating and (plan.delete or plan.keep)) or decided.entries is not None:
        decided.plans[tid] = plan


def expire_program(decided: Decided, dry_run: bool) -> Program[Rows]:
    """Delete (or count) the expired threads whose newest checkpoint is still the one their
    decision saw; the others are reported kept whole."""
    if not decided.expired[0]:
        return []
    params = {
        "expired_threads": text_array(decided.expired[0]),
        "expired_newest": text_array(decided.expired[1]),
    }
    gone = yield (DRY_RUN_THREADS_SQL if dry_run else DELETE_THREADS_SQL), params, True
    _written_since(decided.results, decided.read_counts, gone)
    return gone


def add_totals(results: Mapping[str, ThreadResult], totals: Rows) -> None:
    """Add (kind, thread, rows, bytes) rows of deleting statements to the threads' results."""
    for kind, tid, n, size in totals:
        result = results[tid]
        result.bytes_freed += int(size)
        if kind == "checkpoints":
            result.deleted_checkpoints += int(n)
        elif kind == "writes":
            result.deleted_writes += int(n)
        else:
            result.deleted_blobs += int(n)


def prune_program(
    thread_ids: Sequence[str],
    policy: RetentionPolicy,
    dry_run: bool,
    now: datetime,
    explain: bool = False,
    expire: Expire | None = None,
) -> Program[list[ThreadResult]]:
    """Read the batch's index, decide each thread, delete (or count, in a dry run), report."""
    decided = yield from decide_program(thread_ids, policy, now, explain, expire)
    doomed = decided.doomed
    totals: Rows = []
    if doomed[2]:
        params = doomed_params(doomed)
        if dry_run:
            totals += yield DRY_RUN_SQL, params, True
        else:
            totals += yield DELETE_CHECKPOINTS_SQL, params, True
            totals += yield DELETE_BLOBS_SQL, {"threads": params["threads"]}, True
    totals += yield from expire_program(decided, dry_run)
    add_totals(decided.results, totals)
    return [decided.results[tid] for tid in decided.threads]


def doomed_params(doomed: tuple[list[str], list[str], list[str]]) -> dict[str, str]:
    """The parameters of `DELETE_CHECKPOINTS_SQL` / `DRY_RUN_SQL` for doomed checkpoints
    (threads, namespaces, ids: three parallel lists)."""
    return {
        "threads": text_array(sorted(set(doomed[0]))),
        "doomed_threads": text_array(doomed[0]),
        "doomed_ns": text_array(doomed[1]),
        "doomed_ids": text_array(doomed[2]),
    }


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


def spans_program(thread_ids: Sequence[str]) -> Program[dict[str, Span]]:
    rows = yield SPANS_SQL, {"threads": text_array(thread_ids)}, True
    return {tid: (first, newest) for tid, first, newest in rows}


def stats_program(thread_ids: Sequence[str]) -> Program[list[tuple[str, ThreadStats]]]:
    """Per-thread counts and on-disk bytes, aggregated by the server in one statement."""
    found: dict[str, ThreadStats] = {}
    for tid, checkpoints, newest, namespaces, writes, size in (
        yield (
            STATS_SQL,
            {"threads": text_array(thread_ids)},
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


def thread_page_program(after: str | None) -> Program[list[str]]:
    """One page of thread ids in key order, after `after` (None: the first page)."""
    if after is None:
        rows = yield FIRST_THREAD_PAGE_SQL, {"limit": THREAD_PAGE_SIZE}, True
    else:
        rows = yield NEXT_THREAD_PAGE_SQL, {"after": after, "limit": THREAD_PAGE_SIZE}, True
    return [r[0] for r in rows]
