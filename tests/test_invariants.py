"""DESIGN.md's invariants, on real compiled graphs, for every saver (sync and async).

Each test runs once per backend through the `sync_saver` / `async_saver` fixtures.
"""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from langgraph_retention import (
    RetentionPolicy,
    UnsupportedSaverError,
    aprune_thread,
    astats,
    asweep,
    prune_thread,
    stats,
    sweep,
)
from langgraph_retention.demo import SEED_THREAD_ID, chat

from .graphs import (
    build_agent,
    build_delta_graph,
    build_interrupt_graph,
    build_subgraph_graph,
    build_subgraph_interrupt_graph,
    config,
    resume,
    user_turn,
)

ODD_IDS = [SEED_THREAD_ID, "a/b c", "客服:会话 7", "tab\tand 'quote'"]


def history_ids(graph: Any, thread_id: str) -> list[str]:
    return [
        s.config["configurable"]["checkpoint_id"]
        for s in graph.get_state_history(config(thread_id))
    ]


# -- 1. the newest checkpoint survives, 2. current state is unchanged ----------------------


def test_prune_keeps_newest_n_and_current_state(sync_saver: Any) -> None:
    graph = build_agent(sync_saver)
    chat(graph, SEED_THREAD_ID, 10)
    before = graph.get_state(config(SEED_THREAD_ID))
    newest_five = history_ids(graph, SEED_THREAD_ID)[:5]

    report = prune_thread(sync_saver, SEED_THREAD_ID, RetentionPolicy(keep_last=5))

    assert report.ok and report.kept_checkpoints == 5 and report.deleted_checkpoints >= 25
    assert graph.get_state(config(SEED_THREAD_ID)) == before
    assert history_ids(graph, SEED_THREAD_ID) == newest_five


def test_keep_last_one_leaves_exactly_the_newest(sync_saver: Any) -> None:
    graph = build_agent(sync_saver)
    chat(graph, "t", 3)
    newest = history_ids(graph, "t")[0]

    prune_thread(sync_saver, "t", RetentionPolicy(keep_last=1))

    assert history_ids(graph, "t") == [newest]


def test_thread_keeps_running_after_prune(sync_saver: Any) -> None:
    graph = build_agent(sync_saver)
    chat(graph, "t", 4)
    messages_before = len(graph.get_state(config("t")).values["messages"])
    prune_thread(sync_saver, "t", RetentionPolicy(keep_last=2))

    chat(graph, "t", 1)

    assert len(graph.get_state(config("t")).values["messages"]) == messages_before + 4


def test_prune_frees_writes_of_deleted_checkpoints(sync_saver: Any) -> None:
    graph = build_agent(sync_saver)
    chat(graph, "t", 5)
    writes_before = stats(sync_saver).threads["t"].writes

    report = prune_thread(sync_saver, "t", RetentionPolicy(keep_last=2))

    after = stats(sync_saver).threads["t"]
    assert report.deleted_writes > 0
    assert after.writes == writes_before - report.deleted_writes
    assert after.checkpoints == 2


# -- interrupts -------------------------------------------------------------------------------


def test_interrupted_thread_resumes_after_prune(sync_saver: Any) -> None:
    graph = build_interrupt_graph(sync_saver)
    for _ in range(3):
        graph.invoke({"log": ["go"]}, config("t"))
        graph.invoke(resume("yes"), config("t"))
    graph.invoke({"log": ["go"]}, config("t"))  # paused at review
    before = graph.get_state(config("t"))
    assert before.next == ("review",)

    prune_thread(sync_saver, "t", RetentionPolicy(keep_last=1))

    assert graph.get_state(config("t")) == before
    result = graph.invoke(resume("ship it"), config("t"))
    assert result["log"][-2:] == ["review:ship it", "published"]


def test_interrupt_inside_subgraph_resumes_after_prune(sync_saver: Any) -> None:
    graph = build_subgraph_interrupt_graph(sync_saver)
    graph.invoke({"log": ["go"]}, config("t"))
    graph.invoke(resume("first"), config("t"))
    graph.invoke({"log": ["again"]}, config("t"))  # paused inside the child
    before = graph.get_state(config("t"), subgraphs=True)

    prune_thread(sync_saver, "t", RetentionPolicy(keep_last=1))

    assert graph.get_state(config("t"), subgraphs=True) == before
    result = graph.invoke(resume("second"), config("t"))
    assert result["log"][-1] == "approved:second"


# -- 6. subgraph namespaces -----------------------------------------------------------------


def test_finished_subgraph_calls_go_with_their_parent_checkpoints(sync_saver: Any) -> None:
    graph = build_subgraph_graph(sync_saver)
    for _ in range(4):
        graph.invoke({"log": ["start"]}, config("t"))
    before = graph.get_state(config("t"), subgraphs=True)
    assert stats(sync_saver).threads["t"].namespaces == 5

    prune_thread(sync_saver, "t", RetentionPolicy(keep_last=2))

    after = stats(sync_saver).threads["t"]
    assert after.namespaces == 1 and after.checkpoints == 2
    assert graph.get_state(config("t"), subgraphs=True) == before


def test_persistent_subgraph_keeps_its_newest_checkpoints(sync_saver: Any) -> None:
    graph = build_subgraph_graph(sync_saver, persistent_child=True)
    for _ in range(3):
        graph.invoke({"log": ["start"]}, config("t"))
    before = graph.get_state(config("t"), subgraphs=True)

    prune_thread(sync_saver, "t", RetentionPolicy(keep_last=2))

    assert graph.get_state(config("t"), subgraphs=True) == before
    child = sync_saver.list({"configurable": {"thread_id": "t", "checkpoint_ns": "child"}})
    assert len(list(child)) == 2
    graph.invoke({"log": ["more"]}, config("t"))  # the child's state carries on


# -- 5. DeltaChannel --------------------------------------------------------------------------


def test_delta_channel_state_is_rebuilt_exactly_after_prune(sync_saver: Any) -> None:
    graph = build_delta_graph(sync_saver, snapshot_frequency=7)
    for i in range(9):
        graph.invoke({"items": [f"in{i}"]}, config("t"))
    before = graph.get_state(config("t"))

    report = prune_thread(sync_saver, "t", RetentionPolicy(keep_last=1))

    if type(sync_saver).__name__ == "RedisSaver":  # refused there for now (backends/redis.py)
        assert "DeltaChannel" in report.errors["t"] and report.deleted_checkpoints == 0
        assert graph.get_state(config("t")) == before
        return

    assert report.ok and report.deleted_checkpoints > 0
    assert report.kept_checkpoints > 1  # ancestry back to the last snapshot
    assert graph.get_state(config("t")) == before
    graph.invoke({"items": ["later"]}, config("t"))
    assert graph.get_state(config("t")).values["items"] == [
        *before.values["items"],
        "later",
        "x9",
        "y",
    ]


def test_delta_channel_refuse_mode_deletes_nothing(sync_saver: Any) -> None:
    graph = build_delta_graph(sync_saver)
    for i in range(3):
        graph.invoke({"items": [f"in{i}"]}, config("t"))
    count = stats(sync_saver).threads["t"].checkpoints

    report = prune_thread(sync_saver, "t", RetentionPolicy(keep_last=1, delta_channels="refuse"))

    assert "DeltaChannel" in report.errors["t"]
    assert stats(sync_saver).threads["t"].checkpoints == count


# -- 8. any thread id; sweeps; dry runs; stats -------------------------------------------------


def test_sweep_finds_every_thread_whatever_its_id(sync_saver: Any) -> None:
    graph = build_agent(sync_saver)
    for tid in ODD_IDS:
        chat(graph, tid, 3)

    report = sweep(sync_saver, RetentionPolicy(keep_last=2))

    assert report.threads_seen == len(ODD_IDS) and report.ok
    s = stats(sync_saver)
    assert set(s.threads) == set(ODD_IDS)
    assert all(ts.checkpoints == 2 for ts in s.threads.values())


def test_dry_run_predicts_exactly_and_deletes_nothing(sync_saver: Any) -> None:
    graph = build_subgraph_graph(sync_saver)
    for _ in range(3):
        graph.invoke({"log": ["start"]}, config("t"))
    agent = build_agent(sync_saver)
    chat(agent, "u", 3)
    before = stats(sync_saver)

    dry = sweep(sync_saver, RetentionPolicy(keep_last=2), dry_run=True)
    assert stats(sync_saver) == before
    real = sweep(sync_saver, RetentionPolicy(keep_last=2))

    for field in (
        "deleted_checkpoints",
        "deleted_writes",
        "deleted_blobs",
        "kept_checkpoints",
        "bytes_freed",
        "threads_pruned",
    ):
        assert getattr(dry, field) == getattr(real, field), field
    assert dry.dry_run and not real.dry_run


def test_stats_count_every_namespace(sync_saver: Any) -> None:
    graph = build_subgraph_graph(sync_saver)
    graph.invoke({"log": ["start"]}, config("t"))
    reference = InMemorySaver()  # the same deterministic run, counted from its dicts
    build_subgraph_graph(reference).invoke({"log": ["start"]}, config("t"))
    expected = sum(len(cps) for cps in reference.storage["t"].values())

    ts = stats(sync_saver).threads["t"]

    assert ts.namespaces == 2 and ts.checkpoints == expected and ts.bytes > 0
    assert ts.newest is not None


def test_missing_thread_gives_an_empty_report(sync_saver: Any) -> None:
    report = prune_thread(sync_saver, "no such thread", RetentionPolicy(keep_last=1))

    assert report.ok and report.deleted_checkpoints == 0 and report.kept_checkpoints == 0


def test_sweep_of_given_threads_touches_only_those(sync_saver: Any) -> None:
    graph = build_agent(sync_saver)
    chat(graph, "a", 3)
    chat(graph, "b", 3)
    b_before = stats(sync_saver).threads["b"].checkpoints

    sweep(sync_saver, RetentionPolicy(keep_last=1), thread_ids=["a"])

    s = stats(sync_saver)
    assert s.threads["a"].checkpoints == 1 and s.threads["b"].checkpoints == b_before


# -- async twins -----------------------------------------------------------------------------


async def test_aprune_keeps_newest_n_and_current_state(async_saver: Any) -> None:
    graph = build_agent(async_saver)
    for i in range(6):
        await graph.ainvoke(user_turn(i), config(SEED_THREAD_ID))
    before = await graph.aget_state(config(SEED_THREAD_ID))

    report = await aprune_thread(async_saver, SEED_THREAD_ID, RetentionPolicy(keep_last=3))

    assert report.ok and report.kept_checkpoints == 3 and report.deleted_checkpoints > 10
    assert await graph.aget_state(config(SEED_THREAD_ID)) == before
    await graph.ainvoke(user_turn(99), config(SEED_THREAD_ID))


async def test_asweep_and_astats_cover_every_thread(async_saver: Any) -> None:
    graph = build_agent(async_saver)
    for tid in ODD_IDS:
        await graph.ainvoke(user_turn(0), config(tid))
        await graph.ainvoke(user_turn(1), config(tid))

    dry = await asweep(async_saver, RetentionPolicy(keep_last=2), dry_run=True)
    report = await asweep(async_saver, RetentionPolicy(keep_last=2))

    s = await astats(async_saver)
    assert set(s.threads) == set(ODD_IDS)
    assert all(ts.checkpoints == 2 for ts in s.threads.values())
    assert dry.deleted_checkpoints == report.deleted_checkpoints > 0


async def test_async_delta_channel_state_survives(async_saver: Any) -> None:
    graph = build_delta_graph(async_saver, snapshot_frequency=5)
    for i in range(7):
        await graph.ainvoke({"items": [f"in{i}"]}, config("t"))
    before = await graph.aget_state(config("t"))

    await aprune_thread(async_saver, "t", RetentionPolicy(keep_last=1))

    assert await graph.aget_state(config("t")) == before


async def test_async_interrupted_thread_resumes(async_saver: Any) -> None:
    graph = build_interrupt_graph(async_saver)
    await graph.ainvoke({"log": ["go"]}, config("t"))
    await graph.ainvoke(resume("yes"), config("t"))
    await graph.ainvoke({"log": ["go"]}, config("t"))

    await aprune_thread(async_saver, "t", RetentionPolicy(keep_last=1))

    result = await graph.ainvoke(resume("ok"), config("t"))
    assert result["log"][-2:] == ["review:ok", "published"]


# -- bad input ------------------------------------------------------------------------------


def test_unsupported_saver_is_a_type_error_naming_the_supported_ones() -> None:
    with pytest.raises(TypeError, match=r"InMemorySaver.*SqliteSaver"):
        prune_thread(object(), "t", RetentionPolicy(keep_last=1))
    assert issubclass(UnsupportedSaverError, TypeError)


def test_policy_must_be_a_retention_policy() -> None:
    with pytest.raises(TypeError, match="RetentionPolicy"):
        prune_thread(InMemorySaver(), "t", 5)  # type: ignore[arg-type]


def test_thread_id_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="thread_id"):
        prune_thread(InMemorySaver(), 42, RetentionPolicy())  # type: ignore[arg-type]


def test_thread_ids_must_not_be_a_single_string() -> None:
    with pytest.raises(TypeError, match="not a single str"):
        sweep(InMemorySaver(), RetentionPolicy(), thread_ids="abc")


# -- 7. a run writing while the thread is pruned loses nothing ------------------------------


def test_run_appending_during_prunes_loses_nothing(sync_saver: Any) -> None:
    import threading

    graph = build_agent(sync_saver)
    chat(graph, "busy", 2)
    done = threading.Event()
    errors: list[BaseException] = []

    def talk() -> None:
        try:
            chat(graph, "busy", 8)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=talk)
    worker.start()
    prunes = 0
    while not done.is_set() or prunes == 0:
        report = prune_thread(sync_saver, "busy", RetentionPolicy(keep_last=1))
        assert report.ok, report.errors
        prunes += 1
    worker.join()

    assert not errors
    state = graph.get_state(config("busy"))
    assert len(state.values["messages"]) == 10 * 4  # every turn's four messages are there
    chat(graph, "busy", 1)


# -- sync API on an async saver and back ------------------------------------------------------


async def test_sync_api_on_async_saver_runs_on_its_loop(tmp_path: Any) -> None:
    import asyncio

    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "a.db")) as saver:
        graph = build_agent(saver)
        for i in range(3):
            await graph.ainvoke(user_turn(i), config("t"))

        report = await asyncio.to_thread(prune_thread, saver, "t", RetentionPolicy(keep_last=1))

        assert report.deleted_checkpoints > 0
        assert (await astats(saver)).threads["t"].checkpoints == 1


async def test_sync_api_from_the_saver_loop_is_refused_clearly(tmp_path: Any) -> None:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "a.db")) as saver:
        with pytest.raises(RuntimeError, match="aprune_thread"):
            prune_thread(saver, "t", RetentionPolicy(keep_last=1))


async def test_async_api_on_sync_saver_runs_in_a_thread(tmp_path: Any) -> None:
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(str(tmp_path / "s.db"), check_same_thread=False)
    saver = SqliteSaver(conn)
    chat(build_agent(saver), "t", 3)

    report = await asweep(saver, RetentionPolicy(keep_last=2))

    assert report.threads_seen == 1 and (await astats(saver)).threads["t"].checkpoints == 2
    conn.close()
