"""`RetainingSaver` on real compiled graphs and real savers: what it prunes, when, where.

Backend-independent behaviours run over every saver through the `sync_saver` /
`async_saver` fixtures. Failures are real storage failures (a SQLite trigger that
forbids deletes) or real policy refusals (a DeltaChannel thread under "refuse").
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance.capabilities import Capability, DetectedCapabilities
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from langgraph_retention import RetentionPolicy, UnsupportedSaverError, stats
from langgraph_retention.backends import resolve_backend
from langgraph_retention.demo import SEED_THREAD_ID, chat
from langgraph_retention.saver import PruneError, RetainingSaver
from langgraph_retention.worker import BackgroundPruner

from .graphs import (
    build_agent,
    build_delta_graph,
    build_interrupt_graph,
    build_subgraph_graph,
    config,
    resume,
    user_turn,
)

KEEP = RetentionPolicy(keep_last=5)
TURN_PUTS = 5  # checkpoints the demo agent writes per user turn (input + 4 loop steps)


def transcript(graph: Any, thread_id: str) -> list[tuple[str, Any, list[str]]]:
    """The conversation as (message type, content, tool names): ids differ per run."""
    return [
        (type(m).__name__, m.content, [c["name"] for c in getattr(m, "tool_calls", [])])
        for m in graph.get_state(config(thread_id)).values["messages"]
    ]


async def atranscript(graph: Any, thread_id: str) -> list[tuple[str, Any, list[str]]]:
    return [
        (type(m).__name__, m.content, [c["name"] for c in getattr(m, "tool_calls", [])])
        for m in (await graph.aget_state(config(thread_id))).values["messages"]
    ]


def checkpoints(saver: Any, thread_id: str) -> int:
    found = stats(saver, thread_ids=[thread_id]).threads.get(thread_id)
    return found.checkpoints if found else 0


def history(graph: Any, thread_id: str) -> list[str]:
    return [
        s.config["configurable"]["checkpoint_id"]
        for s in graph.get_state_history(config(thread_id))
    ]


def no_delete_sqlite(path: Path) -> SqliteSaver:
    """A real SqliteSaver whose database refuses every checkpoint delete (a trigger):
    puts work, prunes fail with a storage error."""
    conn = sqlite3.connect(str(path), check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    conn.execute(
        "CREATE TRIGGER no_deletes BEFORE DELETE ON checkpoints "
        "BEGIN SELECT RAISE(ABORT, 'checkpoint deletes are forbidden here'); END"
    )
    conn.commit()
    return saver


# -- it is a checkpointer ------------------------------------------------------------------


def test_is_a_checkpointer_langgraph_compiles_and_runs(sync_saver: Any) -> None:
    wrapped = RetainingSaver(sync_saver, KEEP)

    graph = build_agent(wrapped)
    chat(graph, "t", 1)

    assert isinstance(wrapped, BaseCheckpointSaver)
    assert isinstance(wrapped, RetainingSaver)
    assert wrapped.retention_wrapped_saver is sync_saver
    assert len(graph.get_state(config("t")).values["messages"]) == 4


async def test_async_graph_runs_through_the_wrapper(async_saver: Any) -> None:
    graph = build_agent(RetainingSaver(async_saver, KEEP))

    await graph.ainvoke(user_turn(0), config("t"))

    assert len((await graph.aget_state(config("t"))).values["messages"]) == 4


# -- inline mode ------------------------------------------------------------------------


def test_inline_prunes_every_n_puts_and_leaves_the_state_alone(
    sync_saver: Any, tmp_path: Path
) -> None:
    wrapped = RetainingSaver(sync_saver, KEEP, mode="inline", every=TURN_PUTS)
    graph = build_agent(wrapped)
    reference = build_agent(InMemorySaver())  # same conversation, never pruned

    for i in range(6):
        chat(graph, SEED_THREAD_ID, 1)
        chat(reference, SEED_THREAD_ID, 1)
        c = wrapped.counters
        assert (c.triggered, c.pruned, c.failed) == (i + 1, i + 1, 0)

    assert checkpoints(sync_saver, SEED_THREAD_ID) == KEEP.keep_last
    assert wrapped.counters.deleted_checkpoints == 6 * TURN_PUTS - KEEP.keep_last
    assert transcript(graph, SEED_THREAD_ID) == transcript(reference, SEED_THREAD_ID)
    chat(graph, SEED_THREAD_ID, 1)  # and the thread keeps running
    assert len(graph.get_state(config(SEED_THREAD_ID)).values["messages"]) == 7 * 4


def test_inline_counts_each_thread_separately(sync_saver: Any) -> None:
    wrapped = RetainingSaver(sync_saver, KEEP, every=2 * TURN_PUTS)
    graph = build_agent(wrapped)

    chat(graph, "a", 1)
    chat(graph, "b", 1)
    assert wrapped.counters.triggered == 0  # 4 puts each: neither reached 8
    chat(graph, "a", 1)

    assert wrapped.counters.triggered == 1
    assert wrapped.counters.tracked_threads == 1  # "a" restarted, "b" is at 4


def test_inline_counts_root_namespace_puts_only(sync_saver: Any) -> None:
    bare = InMemorySaver()
    build_subgraph_graph(bare).invoke({"log": []}, config("t"))
    root_puts = len(list(bare.list({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})))
    all_puts = stats(bare).total_checkpoints
    assert all_puts > root_puts  # the subgraph call wrote checkpoints of its own

    wrapped = RetainingSaver(sync_saver, RetentionPolicy(keep_last=2), every=root_puts)
    graph = build_subgraph_graph(wrapped)
    graph.invoke({"log": []}, config("t"))
    graph.invoke({"log": []}, config("t"))

    assert wrapped.counters.puts == 2 * all_puts
    assert wrapped.counters.triggered == 2
    assert graph.get_state(config("t")).values["log"][-1] == "finish"


def test_inline_interrupted_thread_resumes(sync_saver: Any) -> None:
    graph = build_interrupt_graph(RetainingSaver(sync_saver, RetentionPolicy(keep_last=1), every=1))

    graph.invoke({"log": ["go"]}, config("t"))
    assert graph.get_state(config("t")).next == ("review",)
    result = graph.invoke(resume("yes"), config("t"))

    assert result["log"][-2:] == ["review:yes", "published"]
    assert len(history(graph, "t")) == 1


def test_inline_storage_failure_is_logged_counted_and_the_run_completes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saver = no_delete_sqlite(tmp_path / "locked.db")
    wrapped = RetainingSaver(saver, RetentionPolicy(keep_last=1), every=TURN_PUTS)
    graph = build_agent(wrapped)

    with caplog.at_level(logging.ERROR, logger="langgraph_retention"):
        chat(graph, SEED_THREAD_ID, 2)

    assert len(graph.get_state(config(SEED_THREAD_ID)).values["messages"]) == 8
    assert wrapped.counters.failed == 2 and wrapped.counters.pruned == 0
    assert checkpoints(saver, SEED_THREAD_ID) == 2 * TURN_PUTS  # nothing half-deleted
    failures = [r for r in caplog.records if "inline prune" in r.getMessage()]
    assert len(failures) == 2
    assert all(repr(SEED_THREAD_ID) in r.getMessage() and r.exc_info for r in failures)
    assert "checkpoint deletes are forbidden" in caplog.text
    saver.conn.close()


def test_inline_policy_refusal_is_logged_counted_and_the_run_completes(
    sync_saver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    refuse = RetentionPolicy(keep_last=1, delta_channels="refuse")
    wrapped = RetainingSaver(sync_saver, refuse, every=2)
    graph = build_delta_graph(wrapped, snapshot_frequency=50)

    with caplog.at_level(logging.ERROR, logger="langgraph_retention"):
        for i in range(3):
            graph.invoke({"items": [f"in{i}"]}, config("delta thread"))

    assert graph.get_state(config("delta thread")).values["rounds"] == 3
    assert wrapped.counters.failed >= 1 and wrapped.counters.pruned == 0
    assert "'delta thread'" in caplog.text and "refuse" in caplog.text


async def test_async_inline_prunes_every_n_puts(async_saver: Any) -> None:
    wrapped = RetainingSaver(async_saver, KEEP, every=TURN_PUTS)
    graph = build_agent(wrapped)
    reference = build_agent(InMemorySaver())

    for i in range(5):
        await graph.ainvoke(user_turn(i), config("t"))
        await reference.ainvoke(user_turn(i), config("t"))

    assert (wrapped.counters.pruned, wrapped.counters.failed) == (5, 0)
    assert [s async for s in graph.aget_state_history(config("t"))].__len__() == KEEP.keep_last
    assert await atranscript(graph, "t") == await atranscript(reference, "t")


# -- background mode -----------------------------------------------------------------------


def test_background_prunes_off_the_hot_path(sync_saver: Any) -> None:
    pruned_on: list[threading.Thread] = []
    pruner = BackgroundPruner(
        sync_saver, KEEP, on_report=lambda tid, rep: pruned_on.append(threading.current_thread())
    )
    wrapped = RetainingSaver(
        sync_saver, KEEP, mode="background", threshold=TURN_PUTS, pruner=pruner
    )
    graph = build_agent(wrapped)
    reference = build_agent(InMemorySaver())

    chat(graph, "t", 6)
    chat(reference, "t", 6)
    assert pruner.close(timeout=30)

    assert wrapped.counters.handed_off == 6
    assert (wrapped.counters.pruned, wrapped.counters.deleted_checkpoints) == (0, 0)
    assert pruned_on and all(t is not threading.main_thread() for t in pruned_on)
    assert {t.name for t in pruned_on} == {"langgraph-retention-pruner"}
    assert pruner.counters.failed == 0 and pruner.counters.pruned >= 1
    assert checkpoints(sync_saver, "t") == KEEP.keep_last
    assert transcript(graph, "t") == transcript(reference, "t")


def test_background_owned_pruner_drains_on_exit(sync_saver: Any) -> None:
    with RetainingSaver(sync_saver, KEEP, mode="background", threshold=TURN_PUTS) as wrapped:
        graph = build_agent(wrapped)
        for tid in ("a", "b", "c"):
            chat(graph, tid, 3)
        pruner = wrapped.pruner
        assert pruner is not None and pruner.runner == "thread"

    assert pruner.closed and not pruner.running
    assert pruner.counters.waiting == 0 and pruner.counters.failed == 0
    assert all(checkpoints(sync_saver, tid) == KEEP.keep_last for tid in ("a", "b", "c"))


async def test_background_async_saver_prunes_from_an_asyncio_task(async_saver: Any) -> None:
    seen: list[tuple[threading.Thread, str | None]] = []

    def on_report(tid: str, report: Any) -> None:
        import asyncio

        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        seen.append((threading.current_thread(), task.get_name() if task else None))

    pruner = BackgroundPruner(async_saver, KEEP, on_report=on_report)
    wrapped = RetainingSaver(
        async_saver, KEEP, mode="background", threshold=TURN_PUTS, pruner=pruner
    )
    graph = build_agent(wrapped)
    for i in range(4):
        await graph.ainvoke(user_turn(i), config("t"))
    assert await pruner.aclose(timeout=30)

    if resolve_backend(async_saver).is_async:
        assert pruner.runner == "asyncio"
        assert seen and all(
            t is threading.main_thread() and name == "langgraph-retention-pruner"
            for t, name in seen
        )
    else:  # InMemorySaver's async methods are sync underneath: a worker thread
        assert pruner.runner == "thread"
        assert seen and all(t.name == "langgraph-retention-pruner" for t, _ in seen)
    assert len([s async for s in graph.aget_state_history(config("t"))]) == KEEP.keep_last


async def test_background_async_wrapper_context_manager_drains(async_saver: Any) -> None:
    async with RetainingSaver(async_saver, KEEP, mode="background", threshold=TURN_PUTS) as wrapped:
        graph = build_agent(wrapped)
        for i in range(3):
            await graph.ainvoke(user_turn(i), config("t"))
        pruner = wrapped.pruner
        assert pruner is not None and wrapped.counters.handed_off == 3

    # exiting drained the pruner first, then exited the wrapped saver (which may close
    # its connection, as AsyncRedisSaver's does): the counters tell what happened
    c = pruner.counters
    assert pruner.closed and not pruner.running
    assert c.pruned + c.deduplicated == 3  # a hand-off may find the thread still waiting
    assert (c.failed, c.waiting, c.abandoned) == (0, 0, 0)
    assert c.deleted_checkpoints == 3 * TURN_PUTS - KEEP.keep_last


def test_background_handoff_dropped_when_the_pruner_is_closed(sync_saver: Any) -> None:
    pruner = BackgroundPruner(sync_saver, KEEP)
    pruner.close()
    wrapped = RetainingSaver(sync_saver, KEEP, mode="background", threshold=1, pruner=pruner)

    chat(build_agent(wrapped), "t", 1)

    assert wrapped.counters.dropped == TURN_PUTS and wrapped.counters.handed_off == 0
    assert pruner.counters.dropped == TURN_PUTS


# -- bounded memory ------------------------------------------------------------------------


def test_put_counters_are_bounded() -> None:
    inner = InMemorySaver()
    wrapped = RetainingSaver(inner, KEEP, every=3, max_tracked_threads=100)

    for n in range(5000):
        wrapped.put(generate_config(f"thread {n}"), generate_checkpoint(), generate_metadata(), {})
        assert wrapped.counters.tracked_threads <= 100

    c = wrapped.counters
    assert (c.puts, c.tracked_threads, c.evicted, c.triggered) == (5000, 100, 4900, 0)
    # the most recent threads are the ones still counting
    for _ in range(2):
        wrapped.put(generate_config("thread 4999"), generate_checkpoint(), generate_metadata(), {})
    assert wrapped.counters.triggered == 1


# -- delegation --------------------------------------------------------------------------


def test_reads_are_the_wrapped_savers(sync_saver: Any) -> None:
    wrapped = RetainingSaver(sync_saver, RetentionPolicy(keep_last=100))
    chat(build_agent(wrapped), "t", 3)
    cfg = config("t")
    newest = sync_saver.get_tuple(cfg)
    older = list(sync_saver.list(cfg))[4].config

    assert wrapped.get_tuple(cfg) == newest
    assert wrapped.get_tuple(older) == sync_saver.get_tuple(older)
    assert wrapped.get(cfg) == sync_saver.get(cfg)
    assert list(wrapped.list(cfg)) == list(sync_saver.list(cfg))
    assert list(wrapped.list(None, limit=3)) == list(sync_saver.list(None, limit=3))
    assert list(wrapped.list(cfg, before=older)) == list(sync_saver.list(cfg, before=older))
    assert list(wrapped.list(cfg, filter={"source": "input"})) == list(
        sync_saver.list(cfg, filter={"source": "input"})
    )
    assert wrapped.get_delta_channel_history(
        config=cfg, channels=["messages"]
    ) == sync_saver.get_delta_channel_history(config=cfg, channels=["messages"])
    current = newest.checkpoint["channel_versions"]["messages"]
    for version in (None, current):  # string versions end in a random fraction
        ours, theirs = (
            wrapped.get_next_version(version, None),
            sync_saver.get_next_version(version, None),
        )
        assert type(ours) is type(theirs)
        assert str(ours).split(".")[0] == str(theirs).split(".")[0]
    assert wrapped.serde is sync_saver.serde
    assert wrapped.config_specs == sync_saver.config_specs


def test_writes_and_deletes_reach_the_wrapped_saver(sync_saver: Any) -> None:
    wrapped = RetainingSaver(sync_saver, KEEP)
    chat(build_agent(wrapped), "t", 1)
    chat(build_agent(wrapped), "u", 1)
    cfg = sync_saver.get_tuple(config("t")).config

    wrapped.put_writes(cfg, [("messages", "extra")], "task-1", "path")
    wrapped.delete_thread("u")

    pending = sync_saver.get_tuple(cfg).pending_writes
    assert ("task-1", "messages", "extra") in pending
    assert sync_saver.get_tuple(config("u")) is None


async def test_async_methods_are_the_wrapped_savers(async_saver: Any) -> None:
    wrapped = RetainingSaver(async_saver, RetentionPolicy(keep_last=100))
    graph = build_agent(wrapped)
    await graph.ainvoke(user_turn(0), config("t"))
    await graph.ainvoke(user_turn(0), config("u"))
    cfg = config("t")
    newest = await async_saver.aget_tuple(cfg)

    assert await wrapped.aget_tuple(cfg) == newest
    assert await wrapped.aget(cfg) == await async_saver.aget(cfg)
    assert [t async for t in wrapped.alist(cfg)] == [t async for t in async_saver.alist(cfg)]
    assert [t async for t in wrapped.alist(cfg, limit=2)] == [
        t async for t in async_saver.alist(cfg, limit=2)
    ]
    assert await wrapped.aget_delta_channel_history(
        config=cfg, channels=["messages"]
    ) == await async_saver.aget_delta_channel_history(config=cfg, channels=["messages"])
    await wrapped.aput_writes(newest.config, [("messages", "extra")], "task-1")
    await wrapped.adelete_thread("u")

    assert ("task-1", "messages", "extra") in (await async_saver.aget_tuple(cfg)).pending_writes
    assert await async_saver.aget_tuple(config("u")) is None


def test_capabilities_are_the_wrapped_savers_plus_prune(sync_saver: Any) -> None:
    wrapped = RetainingSaver(sync_saver, KEEP)

    inner = DetectedCapabilities.from_instance(sync_saver).detected
    outer = DetectedCapabilities.from_instance(wrapped).detected

    assert outer == inner | {Capability.PRUNE}


def test_missing_capabilities_raise_like_the_base_class() -> None:
    wrapped = RetainingSaver(InMemorySaver(), KEEP)  # no copy_thread, no delete_for_runs

    with pytest.raises(NotImplementedError):
        wrapped.copy_thread("a", "b")
    with pytest.raises(NotImplementedError):
        wrapped.delete_for_runs(["run"])
    assert type(wrapped).copy_thread is BaseCheckpointSaver.copy_thread
    assert type(wrapped).acopy_thread is BaseCheckpointSaver.acopy_thread


def test_other_attributes_come_from_the_wrapped_saver(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "x.db"), check_same_thread=False)
    inner = SqliteSaver(conn)
    wrapped = RetainingSaver(inner, KEEP)

    wrapped.setup()

    assert wrapped.conn is conn and wrapped.is_setup
    with pytest.raises(AttributeError):
        _ = wrapped.no_such_attribute
    conn.close()


def test_context_manager_enters_and_exits_the_wrapped_saver() -> None:
    inner = InMemorySaver()
    entered = []
    inner.stack.callback(lambda: entered.append("exited"))

    with RetainingSaver(inner, KEEP) as wrapped:
        assert isinstance(wrapped, RetainingSaver)

    assert entered == ["exited"]


def test_with_allowlist_clone_shares_counters_and_pruner() -> None:
    strict = JsonPlusSerializer(allowed_msgpack_modules=[("my_module", "Known")])
    inner = InMemorySaver(serde=strict)
    wrapped = RetainingSaver(inner, KEEP, mode="background", threshold=2)

    clone = wrapped.with_allowlist([("my_module", "MyType")])
    clone.put(generate_config("t"), generate_checkpoint(), generate_metadata(), {})

    assert clone is not wrapped and type(clone) is type(wrapped)
    assert clone.retention_wrapped_saver is not inner
    assert clone.retention_wrapped_saver.storage is inner.storage
    assert clone.serde is not strict
    assert clone.pruner is wrapped.pruner
    assert wrapped.counters.puts == 1
    assert wrapped.with_allowlist([("my_module", "Known")]) is wrapped
    wrapped.close()


# -- prune / aprune (BaseCheckpointSaver's contract) -------------------------------------


def test_prune_keep_latest_leaves_the_newest_and_the_state(sync_saver: Any) -> None:
    wrapped = RetainingSaver(sync_saver, KEEP)
    graph = build_agent(wrapped)
    chat(graph, "a", 3)
    chat(graph, "b", 2)
    before = {tid: graph.get_state(config(tid)) for tid in ("a", "b")}
    newest = {tid: history(graph, tid)[0] for tid in ("a", "b")}

    wrapped.prune(["a", "b", "missing"])

    for tid in ("a", "b"):
        assert history(graph, tid) == [newest[tid]]
        assert graph.get_state(config(tid)) == before[tid]


def test_prune_keep_latest_keeps_delta_channel_ancestry(sync_saver: Any) -> None:
    wrapped = RetainingSaver(sync_saver, KEEP)
    graph = build_delta_graph(wrapped, snapshot_frequency=4)
    for i in range(5):
        graph.invoke({"items": [f"in{i}"]}, config("t"))
    before = graph.get_state(config("t")).values

    if type(sync_saver).__name__ == "RedisSaver":  # DeltaChannel threads refused there
        with pytest.raises(PruneError, match="DeltaChannel"):
            wrapped.prune(["t"])
        assert graph.get_state(config("t")).values == before
        return
    wrapped.prune(["t"])

    assert graph.get_state(config("t")).values == before
    assert 1 < len(history(graph, "t")) < 5 * 3


def test_prune_raises_when_a_thread_is_refused(sync_saver: Any) -> None:
    wrapped = RetainingSaver(sync_saver, RetentionPolicy(keep_last=3, delta_channels="refuse"))
    graph = build_delta_graph(wrapped, snapshot_frequency=50)
    graph.invoke({"items": ["x"]}, config("t"))
    graph.invoke({"items": ["y"]}, config("t"))

    with pytest.raises(PruneError, match="'t'") as raised:
        wrapped.prune(["t"])

    assert "t" in raised.value.report.errors


def test_prune_delete_removes_the_threads(sync_saver: Any) -> None:
    wrapped = RetainingSaver(sync_saver, KEEP)
    graph = build_agent(wrapped)
    chat(graph, "a", 1)
    chat(graph, "b", 1)

    wrapped.prune(["a"], strategy="delete")

    assert sync_saver.get_tuple(config("a")) is None
    assert sync_saver.get_tuple(config("b")) is not None


async def test_aprune_keep_latest_and_delete(async_saver: Any) -> None:
    wrapped = RetainingSaver(async_saver, KEEP)
    graph = build_agent(wrapped)
    for tid in ("a", "b"):
        await graph.ainvoke(user_turn(0), config(tid))
        await graph.ainvoke(user_turn(1), config(tid))
    before = await graph.aget_state(config("a"))

    await wrapped.aprune(["a"])
    await wrapped.aprune(["b"], strategy="delete")

    assert len([s async for s in graph.aget_state_history(config("a"))]) == 1
    assert await graph.aget_state(config("a")) == before
    assert await async_saver.aget_tuple(config("b")) is None


def test_prune_rejects_bad_arguments() -> None:
    wrapped = RetainingSaver(InMemorySaver(), KEEP)
    with pytest.raises(ValueError, match="strategy"):
        wrapped.prune(["t"], strategy="keep_some")
    with pytest.raises(TypeError, match="single str"):
        wrapped.prune("t")


# -- argument checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "sometimes"}, ValueError, "mode must be"),
        ({"every": 0}, ValueError, "every must be at least 1"),
        ({"every": 2.5}, TypeError, "every must be an int"),
        ({"mode": "background", "threshold": 0}, ValueError, "threshold must be at least 1"),
        ({"threshold": 5}, ValueError, "threshold= is for mode='background'"),
        ({"mode": "background", "every": 5}, ValueError, "every= is for mode='inline'"),
        ({"max_tracked_threads": 0}, ValueError, "max_tracked_threads must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_clearly(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        RetainingSaver(InMemorySaver(), KEEP, **kwargs)


def test_policy_and_saver_types_are_checked() -> None:
    with pytest.raises(TypeError, match="RetentionPolicy"):
        RetainingSaver(InMemorySaver(), 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BaseCheckpointSaver"):
        RetainingSaver(object(), KEEP)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="already a RetainingSaver"):
        RetainingSaver(RetainingSaver(InMemorySaver(), KEEP), KEEP)


def test_unsupported_saver_is_refused_at_construction() -> None:
    class HomeMadeSaver(BaseCheckpointSaver[int]):
        pass

    with pytest.raises(UnsupportedSaverError, match="InMemorySaver"):
        RetainingSaver(HomeMadeSaver(), KEEP)


def test_pruner_must_match_the_saver_and_policy(tmp_path: Path) -> None:
    inner, other = InMemorySaver(), InMemorySaver()
    with pytest.raises(ValueError, match="different saver"):
        RetainingSaver(inner, KEEP, mode="background", pruner=BackgroundPruner(other, KEEP))
    with pytest.raises(ValueError, match="policy"):
        RetainingSaver(
            inner, KEEP, mode="background", pruner=BackgroundPruner(inner, RetentionPolicy())
        )
    with pytest.raises(ValueError, match="pruner= is for mode='background'"):
        RetainingSaver(inner, KEEP, pruner=BackgroundPruner(inner, KEEP))


def test_background_pruning_every_put_loses_nothing(sync_saver: Any) -> None:
    # the harshest schedule: each put hands its thread off, and keeps only the newest,
    # so the pruner races the run that is writing to the same thread
    one = RetentionPolicy(keep_last=1)
    with RetainingSaver(sync_saver, one, mode="background", threshold=1) as wrapped:
        graph = build_agent(wrapped)
        reference = build_agent(InMemorySaver())
        for _ in range(8):
            chat(graph, SEED_THREAD_ID, 1)
            chat(reference, SEED_THREAD_ID, 1)
            assert transcript(graph, SEED_THREAD_ID) == transcript(reference, SEED_THREAD_ID)
        pruner = wrapped.pruner
        assert pruner is not None and pruner.join(30)

    assert pruner.counters.failed == 0
    assert checkpoints(sync_saver, SEED_THREAD_ID) == 1
    assert transcript(graph, SEED_THREAD_ID) == transcript(reference, SEED_THREAD_ID)


async def test_async_background_pruning_every_put_loses_nothing(async_saver: Any) -> None:
    one = RetentionPolicy(keep_last=1)
    pruner = BackgroundPruner(async_saver, one)
    wrapped = RetainingSaver(async_saver, one, mode="background", threshold=1, pruner=pruner)
    graph = build_agent(wrapped)
    reference = build_agent(InMemorySaver())
    for i in range(8):
        await graph.ainvoke(user_turn(i), config("t"))
        await reference.ainvoke(user_turn(i), config("t"))
        assert await atranscript(graph, "t") == await atranscript(reference, "t")
    assert await pruner.aclose(timeout=30)

    assert pruner.counters.failed == 0
    assert len([s async for s in graph.aget_state_history(config("t"))]) == 1
    assert await atranscript(graph, "t") == await atranscript(reference, "t")
