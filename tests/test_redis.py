"""Redis-specific behaviour of the RedisSaver / AsyncRedisSaver backend, on a real server.

The generic invariants (state unchanged, subgraphs, interrupts, DeltaChannel) run on this
backend through `sync_saver` / `async_saver`; these tests check the Redis layout itself:
write keys, registries, latest pointers, search indexes, TTLs, odd ids, failures.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import pytest
import redis
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import create_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.redis import RedisSaver
from langgraph.graph import END, START, StateGraph

from langgraph_retention import (
    RetentionError,
    RetentionPolicy,
    asweep,
    prune_thread,
    stats,
    sweep,
)
from langgraph_retention.backends import resolve_backend
from langgraph_retention.backends.redis import backend as redis_backend
from langgraph_retention.backends.redis import scripts as redis_scripts
from langgraph_retention.backends.redis.backend import RedisUnavailableError
from langgraph_retention.backends.redis.search import IDS_PER_QUERY
from langgraph_retention.demo import SEED_THREAD_ID, chat

from .fixtures_redis import flush, open_async_saver, redis_stack_server
from .graphs import build_agent, build_delta_graph, build_subgraph_graph, config

TTL_MINUTES = 60
LONG_THREAD_RUNS = 400  # 3 checkpoints each: more than one query's and one Lua call's worth
LOOKALIKE_IDS = [SEED_THREAD_ID, "wang1", "Wang1", "wang1,x", "客服/会话 7", "emoji 🎉 t", " "]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test database, for looking at keys directly."""
    c = redis.Redis.from_url(redis_url, protocol=2, decode_responses=True)
    yield c
    c.close()


@pytest.fixture
def ttl_saver(redis_url: str) -> Iterator[RedisSaver]:
    """A set-up `RedisSaver` whose keys expire after `TTL_MINUTES`."""
    flush(redis_url)
    with RedisSaver.from_conn_string(redis_url, ttl={"default_ttl": TTL_MINUTES}) as saver:
        saver.setup()
        yield saver


class Counter(TypedDict):
    n: Annotated[int, operator.add]


def build_counter_graph(checkpointer: Any) -> Any:
    """The smallest real graph: one node, three checkpoints per invoke."""
    g = StateGraph(Counter)
    g.add_node("noop", lambda s: {"n": 0})
    g.add_edge(START, "noop")
    g.add_edge("noop", END)
    return g.compile(checkpointer=checkpointer)


def scan(client: redis.Redis, prefix: str) -> set[str]:
    return set(client.scan_iter(match=f"{prefix}:*", count=1000))


def checkpoint_key_of_write(client: redis.Redis, saver: RedisSaver, write_key: str) -> str:
    """The checkpoint a write document belongs to, from its fields (keys are not split)."""
    doc: Any = client.json().get(write_key)
    return saver._make_redis_checkpoint_key(
        doc["thread_id"], doc["checkpoint_ns"], doc["checkpoint_id"]
    )


def indexed_keys(client: redis.Redis, index: str) -> set[str]:
    reply = client.execute_command("FT.SEARCH", index, "*", "NOCONTENT", "LIMIT", 0, 100_000)
    return set(reply[1:])


def human_turns(graph: Any, thread_id: str) -> list[str]:
    messages = graph.get_state(config(thread_id)).values["messages"]
    return [m.content for m in messages if isinstance(m, HumanMessage)]


# -- storage is really reclaimed, and nothing still needed goes ----------------------------


def test_no_write_key_outlives_its_checkpoint(redis_saver: RedisSaver, client: redis.Redis) -> None:
    graph = build_agent(redis_saver)
    chat(graph, SEED_THREAD_ID, 6)
    writes_before = len(scan(client, "checkpoint_write"))

    report = prune_thread(redis_saver, SEED_THREAD_ID, RetentionPolicy(keep_last=3))

    checkpoints = scan(client, "checkpoint")
    writes = scan(client, "checkpoint_write")
    assert report.deleted_writes > 0
    assert len(writes) == writes_before - report.deleted_writes
    assert all(checkpoint_key_of_write(client, redis_saver, w) in checkpoints for w in writes)


def test_no_registry_outlives_its_checkpoint_or_lists_a_deleted_write(
    redis_saver: RedisSaver, client: redis.Redis
) -> None:
    graph = build_agent(redis_saver)
    chat(graph, SEED_THREAD_ID, 6)

    prune_thread(redis_saver, SEED_THREAD_ID, RetentionPolicy(keep_last=3))

    checkpoints = scan(client, "checkpoint")
    registries = scan(client, "write_keys_zset")
    assert registries
    for zset in registries:
        assert "checkpoint" + zset.removeprefix("write_keys_zset") in checkpoints
        assert all(client.exists(member) for member in client.zrange(zset, 0, -1))


def test_writes_left_orphaned_by_another_tool_do_not_stop_a_complete_prune(
    redis_saver: RedisSaver, client: redis.Redis
) -> None:
    graph = build_agent(redis_saver)
    chat(graph, "t", 4)
    oldest = min(scan(client, "checkpoint"))
    client.delete(oldest)  # the seed's way: a checkpoint deleted, its writes left behind
    orphans = {w for w in scan(client, "checkpoint_write")
               if checkpoint_key_of_write(client, redis_saver, w) == oldest}  # fmt: skip

    report = prune_thread(redis_saver, "t", RetentionPolicy(keep_last=2))

    checkpoints = scan(client, "checkpoint")
    left = {w for w in scan(client, "checkpoint_write")
            if checkpoint_key_of_write(client, redis_saver, w) not in checkpoints}  # fmt: skip
    assert orphans and report.deleted_writes > 0
    assert left == orphans  # only what was orphaned before; nothing of ours


def test_search_indexes_hold_exactly_the_remaining_documents(
    redis_saver: RedisSaver, client: redis.Redis
) -> None:
    graph = build_agent(redis_saver)
    chat(graph, SEED_THREAD_ID, 6)
    chat(graph, "other", 2)

    sweep(redis_saver, RetentionPolicy(keep_last=2))

    assert indexed_keys(client, "checkpoint") == scan(client, "checkpoint")
    assert indexed_keys(client, "checkpoint_write") == scan(client, "checkpoint_write")


def test_stats_bytes_drop_by_exactly_the_bytes_freed(redis_saver: RedisSaver) -> None:
    chat(build_agent(redis_saver), "t", 5)
    before = stats(redis_saver).threads["t"].bytes

    report = prune_thread(redis_saver, "t", RetentionPolicy(keep_last=2))

    assert report.bytes_freed > 0
    assert stats(redis_saver).threads["t"].bytes == before - report.bytes_freed


def test_finished_subgraph_calls_leave_no_dangling_latest_pointer(
    redis_saver: RedisSaver, client: redis.Redis
) -> None:
    graph = build_subgraph_graph(redis_saver)
    for i in range(3):
        graph.invoke({"log": [f"run{i}"]}, config("t"))
    state_before = graph.get_state(config("t"))

    prune_thread(redis_saver, "t", RetentionPolicy(keep_last=1))

    pointers = scan(client, "checkpoint_latest")
    assert pointers and all(client.exists(client.get(p)) for p in pointers)
    assert graph.get_state(config("t")) == state_before


def test_a_long_thread_is_pruned_completely_across_query_and_lua_chunks(
    redis_saver: RedisSaver, client: redis.Redis
) -> None:
    graph = build_counter_graph(redis_saver)
    for _ in range(LONG_THREAD_RUNS):
        graph.invoke({"n": 1}, config("long"))
    total = len(scan(client, "checkpoint"))
    assert total > IDS_PER_QUERY + 1

    report = prune_thread(redis_saver, "long", RetentionPolicy(keep_last=1))

    assert report.deleted_checkpoints == total - 1
    assert len(scan(client, "checkpoint")) == 1
    assert scan(client, "checkpoint_write") == set() and scan(client, "write_keys_zset") == set()
    assert graph.get_state(config("long")).values == {"n": LONG_THREAD_RUNS}


def test_delta_channel_thread_is_refused_and_left_whole(
    redis_saver: RedisSaver, client: redis.Redis
) -> None:
    graph = build_delta_graph(redis_saver, snapshot_frequency=7)
    for i in range(9):
        graph.invoke({"items": [f"in{i}"]}, config("t"))
    state_before = graph.get_state(config("t"))
    keys_before = scan(client, "checkpoint")

    report = prune_thread(redis_saver, "t", RetentionPolicy(keep_last=1))

    assert "DeltaChannel" in report.errors["t"] and report.deleted_checkpoints == 0
    assert scan(client, "checkpoint") == keys_before
    assert graph.get_state(config("t")) == state_before


@pytest.mark.xfail(
    strict=True,
    reason="langgraph-checkpoint-redis 0.5.2 rebuilds DeltaChannel values without the nodes' "
    "writes even when nothing was pruned; while it does, DeltaChannel threads are refused",
)
def test_redis_saver_rebuilds_delta_channels_like_the_in_memory_saver(
    redis_saver: RedisSaver,
) -> None:
    on_redis = build_delta_graph(redis_saver, snapshot_frequency=7)
    in_memory = build_delta_graph(InMemorySaver(), snapshot_frequency=7)

    for i in range(3):
        on_redis.invoke({"items": [f"in{i}"]}, config("t"))
        in_memory.invoke({"items": [f"in{i}"]}, config("t"))

    assert on_redis.get_state(config("t")).values == in_memory.get_state(config("t")).values


# -- checkpoint_latest pointers and TTLs -------------------------------------------------


def test_latest_pointer_still_names_the_newest_checkpoint(
    redis_saver: RedisSaver, client: redis.Redis
) -> None:
    graph = build_agent(redis_saver)
    chat(graph, SEED_THREAD_ID, 4)
    pointer = redis_saver._make_redis_checkpoint_latest_key(SEED_THREAD_ID, "")
    newest = client.get(pointer)
    state_before = graph.get_state(config(SEED_THREAD_ID))

    prune_thread(redis_saver, SEED_THREAD_ID, RetentionPolicy(keep_last=1))

    assert client.get(pointer) == newest and client.exists(newest)
    assert graph.get_state(config(SEED_THREAD_ID)) == state_before


def test_pointer_left_on_a_deleted_checkpoint_is_repaired_with_its_ttl(
    ttl_saver: RedisSaver, client: redis.Redis
) -> None:
    graph = build_agent(ttl_saver)
    chat(graph, "t", 2)
    pointer = ttl_saver._make_redis_checkpoint_latest_key("t", "")
    newest = client.get(pointer)
    oldest = min(scan(client, "checkpoint"))  # same thread and ns: uuid6 order is age
    client.set(pointer, oldest, keepttl=True)  # as if puts had landed out of order

    prune_thread(ttl_saver, "t", RetentionPolicy(keep_last=1))

    assert not client.exists(oldest)
    assert client.get(pointer) == newest
    assert client.ttl(pointer) > 0


def test_remaining_keys_keep_their_ttl_unrefreshed(
    ttl_saver: RedisSaver, client: redis.Redis
) -> None:
    chat(build_agent(ttl_saver), "t", 4)
    ttl_before = {k: client.pttl(k) for k in client.scan_iter(count=1000)}

    prune_thread(ttl_saver, "t", RetentionPolicy(keep_last=2))

    remaining = list(client.scan_iter(count=1000))
    assert remaining and len(remaining) < len(ttl_before)
    for key in remaining:
        assert 0 < client.pttl(key) <= ttl_before[key], key


# -- thread ids ------------------------------------------------------------------------------


def test_ids_with_colons_commas_case_and_unicode_enumerate_exactly(
    redis_saver: RedisSaver,
) -> None:
    graph = build_agent(redis_saver)
    for tid in LOOKALIKE_IDS:
        chat(graph, tid, 1)

    listed = list(resolve_backend(redis_saver).iter_thread_ids())

    assert sorted(listed) == sorted(LOOKALIKE_IDS)
    assert set(stats(redis_saver).threads) == set(LOOKALIKE_IDS)


def test_threads_are_listed_once_each_in_short_scan_steps(
    redis_saver: RedisSaver, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = build_agent(redis_saver)
    ids = [f"glob[*?]\\{i}" for i in range(12)] + ["with-subgraph-calls"]
    for tid in ids[:-1]:
        chat(graph, tid, 1)
    build_subgraph_graph(redis_saver).invoke({"log": []}, config("with-subgraph-calls"))
    monkeypatch.setattr(redis_backend, "SCAN_COUNT", 3)  # many steps, each a few keys

    listed = list(resolve_backend(redis_saver).iter_thread_ids())

    assert sorted(listed) == sorted(ids)


def test_pruning_one_id_never_touches_lookalike_ids(redis_saver: RedisSaver) -> None:
    graph = build_agent(redis_saver)
    for tid in LOOKALIKE_IDS:
        chat(graph, tid, 2)
    before = {tid: ts.checkpoints for tid, ts in stats(redis_saver).threads.items()}

    report = prune_thread(redis_saver, "wang1", RetentionPolicy(keep_last=1))

    after = {tid: ts.checkpoints for tid, ts in stats(redis_saver).threads.items()}
    assert report.deleted_checkpoints == before["wang1"] - 1
    assert after == {**before, "wang1": 1}


def test_sweep_prunes_every_lookalike_id(redis_saver: RedisSaver) -> None:
    graph = build_agent(redis_saver)
    for tid in LOOKALIKE_IDS:
        chat(graph, tid, 2)

    report = sweep(redis_saver, RetentionPolicy(keep_last=2))

    assert report.ok and report.threads_pruned == len(LOOKALIKE_IDS)
    assert {ts.checkpoints for ts in stats(redis_saver).threads.values()} == {2}


# -- dry runs, concurrency, clients ----------------------------------------------------------


def test_dry_run_deletes_nothing_and_predicts_the_real_run(
    redis_saver: RedisSaver, client: redis.Redis
) -> None:
    graph = build_agent(redis_saver)
    chat(graph, SEED_THREAD_ID, 5)
    chat(graph, "other", 3)
    keys_before = set(client.scan_iter(count=1000))

    dry = sweep(redis_saver, RetentionPolicy(keep_last=2), dry_run=True)

    assert set(client.scan_iter(count=1000)) == keys_before
    real = sweep(redis_saver, RetentionPolicy(keep_last=2))
    fields = ("deleted_checkpoints", "deleted_writes", "deleted_blobs", "kept_checkpoints")
    assert [getattr(dry, f) for f in fields] == [getattr(real, f) for f in fields]
    assert dry.bytes_freed == real.bytes_freed > 0


def test_a_run_appending_while_pruned_loses_nothing(redis_saver: RedisSaver) -> None:
    graph = build_agent(redis_saver)
    chat(graph, "t", 2)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            chat(graph, "t", 8)
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    prunes = 0
    while worker.is_alive() or prunes == 0:
        prune_thread(redis_saver, "t", RetentionPolicy(keep_last=1))
        prunes += 1
    worker.join()

    assert not failures and prunes > 1
    turns = [f"where is my order? ({i})" for i in (*range(2), *range(8))]
    assert human_turns(graph, "t") == turns
    assert len(graph.get_state(config("t")).values["messages"]) == 4 * len(turns)


@pytest.mark.parametrize(("protocol", "decode"), [(3, False), (2, True), (3, True)])
def test_any_client_protocol_prunes_alike(redis_url: str, protocol: int, decode: bool) -> None:
    flush(redis_url)
    user_client = redis.Redis.from_url(redis_url, protocol=protocol, decode_responses=decode)
    saver = RedisSaver(redis_client=user_client)
    saver.setup()
    graph = build_agent(saver)
    chat(graph, SEED_THREAD_ID, 3)
    state_before = graph.get_state(config(SEED_THREAD_ID))

    report = sweep(saver, RetentionPolicy(keep_last=2))

    user_client.close()
    assert report.ok and report.threads_seen == 1 and report.kept_checkpoints == 2
    assert report.deleted_checkpoints > 0 and report.deleted_writes > 0
    assert graph.get_state(config(SEED_THREAD_ID)) == state_before


async def test_async_sweep_reclaims_like_the_sync_one(redis_url: str, client: redis.Redis) -> None:
    async with open_async_saver(redis_url) as saver:
        graph = build_agent(saver)
        for i in range(4):
            await graph.ainvoke({"messages": [HumanMessage(f"turn {i}")]}, config("t"))

        report = await asweep(saver, RetentionPolicy(keep_last=2))

    assert report.ok and report.kept_checkpoints == 2 and report.deleted_writes > 0
    assert indexed_keys(client, "checkpoint") == scan(client, "checkpoint")
    checkpoints = scan(client, "checkpoint")
    assert len(checkpoints) == 2
    assert all("checkpoint" + z.removeprefix("write_keys_zset") in checkpoints
               for z in scan(client, "write_keys_zset"))  # fmt: skip


# -- failures are clear ------------------------------------------------------------------------


def _saver_whose_server_is_gone() -> tuple[RedisSaver, redis.Redis, str]:
    with redis_stack_server() as url:
        c = redis.Redis.from_url(url, protocol=2, socket_connect_timeout=1)
        saver = RedisSaver(redis_client=c)
        saver.setup()
        chat(build_agent(saver), "t", 1)
    return saver, c, url


def test_unreachable_server_is_a_clear_error() -> None:
    saver, c, url = _saver_whose_server_is_gone()
    port = url.rsplit(":", 1)[1]

    with pytest.raises(RedisUnavailableError, match=rf"unreachable.*:{port}|:{port}.*unreachable"):
        prune_thread(saver, "t", RetentionPolicy(keep_last=1))
    c.close()


def test_sweep_reports_an_unreachable_server_per_thread() -> None:
    saver, c, _url = _saver_whose_server_is_gone()

    report = sweep(saver, RetentionPolicy(keep_last=1), thread_ids=["t", "u"])

    c.close()
    assert set(report.errors) == {"t", "u"}
    assert all("unreachable" in msg for msg in report.errors.values())


def test_missing_search_indexes_say_to_call_setup(
    redis_saver: RedisSaver, client: redis.Redis
) -> None:
    chat(build_agent(redis_saver), "t", 1)
    client.execute_command("FT.DROPINDEX", "checkpoint")

    with pytest.raises(RetentionError, match=r"setup\(\)"):
        prune_thread(redis_saver, "t", RetentionPolicy(keep_last=1))


def test_redis_saver_does_not_store_config_metadata_upstream(redis_saver: RedisSaver) -> None:
    """Pins an upstream gap: `config["metadata"]` (how apps tag runs elsewhere) never
    reaches RedisSaver's checkpoints, so `keep_tagged` sees only metadata put directly.
    When this fails, upstream stores it: drop `skip_if_config_metadata_is_dropped`."""
    graph = build_agent(redis_saver)
    graph.invoke({"messages": [HumanMessage("hi")]}, {**config("t"), "metadata": {"pin": True}})

    assert all("pin" not in t.metadata for t in redis_saver.list(config("t")))


def test_checkpoints_tagged_in_their_metadata_stay_pinned(redis_saver: RedisSaver) -> None:
    graph = build_agent(redis_saver)
    graph.invoke({"messages": [HumanMessage("one")]}, config("t"))
    head = redis_saver.get_tuple(config("t"))
    assert head is not None
    pinned = create_checkpoint(head.checkpoint, None, 99)
    redis_saver.put(head.config, pinned, {"source": "update", "step": 99, "pin": True}, {})
    graph.invoke({"messages": [HumanMessage("two")]}, config("t"))

    report = prune_thread(
        redis_saver, "t", RetentionPolicy(keep_last=1, keep_tagged="pin"), explain=True
    )

    kept = [d for d in report.decisions["t"] if d.kept]
    assert [d.reasons for d in kept] == [("last 1/1", "newest"), ("tagged pin",)]
    assert kept[1].checkpoint_id == pinned["id"]
    assert (
        redis_saver.get_tuple(
            {"configurable": {**config("t")["configurable"], "checkpoint_id": pinned["id"]}}
        )
        is not None
    )


def test_the_delete_script_leaves_a_thread_whose_pointer_moved_whole(
    redis_saver: RedisSaver,
) -> None:
    graph = build_agent(redis_saver)
    graph.invoke({"messages": [HumanMessage("one")]}, config("t"))
    client = redis_saver._redis
    keys = sorted(k.decode() for k in client.keys("checkpoint:t:*"))
    pointer = next(k.decode() for k in client.keys("checkpoint_latest:t:*"))
    seen_newest = client.get(pointer).decode()
    graph.invoke({"messages": [HumanMessage("two")]}, config("t"))  # the pointer moves on

    reply = client.eval(
        redis_scripts.SIZE_AND_DELETE_LUA, len(keys), *keys, "1", "1", pointer, seen_newest
    )

    assert reply == -1 and all(client.exists(k) for k in keys)
    assert len(graph.get_state(config("t")).values["messages"]) == 8


def test_bytes_measured_for_max_bytes_are_the_bytes_reported_freed(
    redis_saver: RedisSaver,
) -> None:
    chat(build_agent(redis_saver), "t", 3)
    measured_by_the_script = sweep(redis_saver, RetentionPolicy(keep_last=2), dry_run=True)

    measured_first = sweep(redis_saver, RetentionPolicy(keep_last=2, max_bytes=2**30))

    assert measured_first.deleted_checkpoints == measured_by_the_script.deleted_checkpoints == 13
    assert measured_first.bytes_freed == measured_by_the_script.bytes_freed > 0
