"""The Redis backend's read paths and staged deletes, on a real server: keys read from the
index alone (FT.SEARCH ... NOCONTENT) and the threads that must fall back to the
field-by-field read; sweeps whose deletes overlap the next batch's reads (`stage`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import create_checkpoint
from langgraph.checkpoint.redis import RedisSaver

from langgraph_retention import RetentionPolicy, asweep, prune_thread, stats, sweep
from langgraph_retention.backends.redis import reads as redis_reads
from langgraph_retention.backends.redis import search as redis_search
from langgraph_retention.backends.redis import stage as redis_stage
from langgraph_retention.backends.redis.deletes import _calls, _job
from langgraph_retention.backends.redis.model import _Layout, _Thread
from langgraph_retention.demo import chat
from langgraph_retention.report import ThreadResult

from .fixtures_redis import open_async_saver
from .graphs import build_agent, config


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, protocol=2, decode_responses=True)
    yield c
    c.close()


@pytest.fixture
def detailed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The thread ids each prune read field by field (a spy on the real read)."""
    seen: list[str] = []
    real = redis_reads._read_details

    def spy(layout: _Layout, threads: dict[str, _Thread]) -> Any:
        seen.extend(tid for tid, t in threads.items() if t.detailed)
        return (yield from real(layout, threads))

    monkeypatch.setattr(redis_reads, "_read_details", spy)
    monkeypatch.setattr("langgraph_retention.backends.redis.backend._read_details", spy)
    return seen


def scan(client: redis.Redis, prefix: str) -> set[str]:
    return set(client.scan_iter(match=f"{prefix}:*", count=1000))


def assert_no_orphans(client: redis.Redis) -> None:
    """Every write and registry belongs to a checkpoint that still exists."""
    checkpoints = {k.removeprefix("checkpoint:") for k in scan(client, "checkpoint")}
    for key in scan(client, "write_keys_zset"):
        assert key.removeprefix("write_keys_zset:") in checkpoints, key
    for key in scan(client, "checkpoint_write"):
        doc: Any = client.json().get(key)
        owner = f"{doc['thread_id']}:{doc['checkpoint_ns']}:{doc['checkpoint_id']}"
        assert owner in checkpoints, key


def chatted(saver: RedisSaver, ids: Sequence[str], turns: int = 2) -> dict[str, Any]:
    """Chat on each thread; each thread's state before any prune."""
    graph = build_agent(saver)
    for tid in ids:
        chat(graph, tid, turns)
    return {tid: graph.get_state(config(tid)) for tid in ids}


# -- keys from the index, and the fallbacks -----------------------------------------------


def test_a_search_matching_more_than_a_reply_holds_reads_field_by_field(
    redis_saver: RedisSaver,
    client: redis.Redis,
    detailed: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = ["long one", "long two"]
    before = chatted(redis_saver, ids)
    monkeypatch.setattr(redis_search, "SEARCH_LIMIT", 3)  # fewer than one thread's keys

    report = sweep(redis_saver, RetentionPolicy(keep_last=2))

    assert report.ok and sorted(detailed) == sorted(ids)
    assert {ts.checkpoints for ts in stats(redis_saver).threads.values()} == {2}
    graph = build_agent(redis_saver)
    assert all(graph.get_state(config(tid)) == before[tid] for tid in ids)
    assert_no_orphans(client)


def test_a_key_that_fits_two_threads_of_a_query_reads_both_field_by_field(
    redis_saver: RedisSaver, client: redis.Redis, detailed: list[str]
) -> None:
    ids = ["a", "a:b", "plain"]  # `checkpoint:a:b:…` starts like a key of both "a" and "a:b"
    before = chatted(redis_saver, ids)

    report = sweep(redis_saver, RetentionPolicy(keep_last=1))

    assert report.ok and report.threads_pruned == 3
    assert sorted(detailed) == ["a", "a:b"]
    assert {ts.checkpoints for ts in stats(redis_saver).threads.values()} == {1}
    graph = build_agent(redis_saver)
    assert all(graph.get_state(config(tid)) == before[tid] for tid in ids)
    assert_no_orphans(client)


def test_another_thread_matching_the_tag_query_is_never_touched(
    redis_saver: RedisSaver, client: redis.Redis, detailed: list[str]
) -> None:
    # The tag query for "x,y" is {x} and {y}: "x,y:q,Y" has both pieces, and its keys
    # start with `checkpoint:x,y:` too; the key split then fails and "x,y" is read
    # field by field, by its exact id.
    before = chatted(redis_saver, ["x,y", "x,y:q,Y"])
    other_keys = {k for k in client.scan_iter(count=1000) if ":x,y:q,Y:" in k}

    report = prune_thread(redis_saver, "x,y", RetentionPolicy(keep_last=1))

    assert report.ok and report.deleted_checkpoints > 0 and detailed == ["x,y"]
    assert {k for k in client.scan_iter(count=1000) if ":x,y:q,Y:" in k} == other_keys
    assert stats(redis_saver).threads["x,y"].checkpoints == 1
    graph = build_agent(redis_saver)
    assert graph.get_state(config("x,y")) == before["x,y"]
    assert graph.get_state(config("x,y:q,Y")) == before["x,y:q,Y"]


def test_plain_threads_are_planned_from_their_keys_alone(
    redis_saver: RedisSaver, detailed: list[str]
) -> None:
    chatted(redis_saver, ["p1", "p2", "客服 7"])

    report = sweep(redis_saver, RetentionPolicy(keep_last=2))

    assert report.ok and report.threads_pruned == 3 and detailed == []


def test_tags_are_found_in_the_metadata_pass_and_for_ids_no_tag_query_matches(
    redis_saver: RedisSaver,
) -> None:
    # "p" is looked at in the overview's one pass over the metadata (DeltaChannel marks
    # and the tag together); " " (only whitespace) needs the separate field-by-field reads.
    graph = build_agent(redis_saver)
    pinned: dict[str, str] = {}
    for tid in ("p", " "):
        graph.invoke({"messages": [HumanMessage("one")]}, config(tid))
        head = redis_saver.get_tuple(config(tid))
        assert head is not None
        checkpoint = create_checkpoint(head.checkpoint, None, 99)
        redis_saver.put(head.config, checkpoint, {"source": "update", "step": 99, "pin": 1}, {})
        pinned[tid] = checkpoint["id"]
        graph.invoke({"messages": [HumanMessage("two")]}, config(tid))

    report = sweep(redis_saver, RetentionPolicy(keep_last=1, keep_tagged="pin"), explain=True)

    assert report.ok
    for tid in ("p", " "):
        kept = [d for d in report.decisions[tid] if d.kept]
        assert [(d.checkpoint_id, d.reasons) for d in kept][1:] == [(pinned[tid], ("tagged pin",))]
    assert {ts.checkpoints for ts in stats(redis_saver).threads.values()} == {2}


# -- deletes: order and counts --------------------------------------------------------------


def test_each_call_deletes_writes_before_registries_before_their_checkpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("langgraph_retention.backends.redis.deletes.LUA_KEYS", 4)
    writes = [f"checkpoint_write:t::c{i}:task:0" for i in range(5)]
    pairs = [
        (f"write_keys_zset:t:__empty__:c{i}", f"checkpoint:t:__empty__:c{i}") for i in range(3)
    ]
    job = _job(ThreadResult("t"), writes, pairs, ["ptr", "checkpoint:t::c9"], [], None)

    calls = _calls([job], delete=True)

    keys = [k for c in calls for k in c.command[3 : 3 + c.command[2]]]
    assert keys == writes + [k for pair in pairs for k in pair]
    assert [(c.writes, c.checkpoints) for c in calls] == [(4, 0), (1, 1), (0, 2)]
    assert [c.command[-2:] == ("ptr", "checkpoint:t::c9") for c in calls] == [
        False,
        False,
        True,
    ]


# -- staged sweeps ------------------------------------------------------------------------------


def test_a_staged_sweep_reports_exactly_what_it_deleted(
    redis_saver: RedisSaver, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_stage, "STAGE_THREADS", 3)  # several flushes
    ids = [f"s{i}" for i in range(8)]
    before = chatted(redis_saver, ids)
    counts = {tid: ts.checkpoints for tid, ts in stats(redis_saver).threads.items()}
    writes_before = len(scan(client, "checkpoint_write"))

    report = sweep(redis_saver, RetentionPolicy(keep_last=2), batch_size=2)

    assert report.ok and report.threads_pruned == len(ids)
    assert report.deleted_checkpoints == sum(counts.values()) - 2 * len(ids)
    assert report.deleted_writes == writes_before - len(scan(client, "checkpoint_write"))
    graph = build_agent(redis_saver)
    assert all(graph.get_state(config(tid)) == before[tid] for tid in ids)
    assert_no_orphans(client)


def test_a_stopped_staged_sweep_leaves_whole_threads_and_no_orphans(
    redis_saver: RedisSaver, client: redis.Redis
) -> None:
    ids = [f"s{i}" for i in range(10)]
    chatted(redis_saver, ids)
    counts = {tid: ts.checkpoints for tid, ts in stats(redis_saver).threads.items()}
    asked = 0

    def stop() -> bool:
        nonlocal asked
        asked += 1
        return asked > 2  # two batches, then stop

    report = sweep(redis_saver, RetentionPolicy(keep_last=1), batch_size=2, stop=stop)

    assert report.stopped == "stop requested" and not report.errors
    assert report.threads_seen == 4  # two batches decided; no third read
    after = {tid: ts.checkpoints for tid, ts in stats(redis_saver).threads.items()}
    pruned = {tid for tid in ids if after[tid] == 1}
    assert all(after[tid] == counts[tid] for tid in set(ids) - pruned)  # whole, or pruned
    assert report.deleted_checkpoints == sum(counts[tid] - 1 for tid in pruned)
    left = {tid for tid, note in report.warnings.items() if redis_stage.NOT_STARTED in note}
    assert len(pruned) + len(left) == 4 and not pruned & left
    assert_no_orphans(client)


async def test_an_async_staged_sweep_over_many_batches_reclaims_everything(
    redis_url: str, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_stage, "STAGE_THREADS", 2)
    ids = [f"a{i}" for i in range(5)]
    async with open_async_saver(redis_url) as saver:
        graph = build_agent(saver)
        for tid in ids:
            for i in range(3):
                await graph.ainvoke({"messages": [HumanMessage(f"turn {i}")]}, config(tid))
        before = {tid: await graph.aget_state(config(tid)) for tid in ids}

        report = await asweep(saver, RetentionPolicy(keep_last=2), batch_size=1)

        assert report.ok and report.threads_pruned == len(ids) and report.deleted_writes > 0
        after = {tid: await graph.aget_state(config(tid)) for tid in ids}
        assert after == before
    assert len(scan(client, "checkpoint")) == 2 * len(ids)
    assert_no_orphans(client)
