"""The richer rules, thread expiry and explanations through async savers: the same
decisions as the sync path, on real graphs run with `ainvoke`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from langgraph_retention import RetentionPolicy, aprune_thread, astats, asweep
from langgraph_retention.demo import build_agent

from .graphs import build_interrupt_graph, config, resume, user_turn
from .test_expiry_explain import skip_if_config_metadata_is_dropped

#: Async savers whose backends read every fact the richer rules need.
KINDS = ["memory", "async_sqlite", "async_postgres", "async_redis"]
pytestmark = pytest.mark.parametrize("async_saver", KINDS, indirect=True)
LATER = datetime.now(UTC) + timedelta(days=40)


async def achat(graph: Any, thread_id: str, turns: int, **metadata: Any) -> None:
    extra = {"metadata": metadata} if metadata else {}
    for i in range(turns):
        await graph.ainvoke(user_turn(i), {**config(thread_id), **extra})


async def checkpoints(saver: Any) -> dict[str, int]:
    return {tid: ts.checkpoints for tid, ts in (await astats(saver)).threads.items()}


async def test_idle_thread_is_deleted_whole(async_saver: Any) -> None:
    graph = build_agent(async_saver)
    await achat(graph, "idle", 2)

    report = await asweep(async_saver, RetentionPolicy(idle_ttl=timedelta(days=30)), now=LATER)

    assert list(report.expired) == ["idle"] and report.deleted_checkpoints == 10
    assert await checkpoints(async_saver) == {}


async def test_a_run_that_starts_before_the_delete_keeps_its_thread(async_saver: Any) -> None:
    graph = build_agent(async_saver)
    await achat(graph, "returning user", 2)

    async def user_comes_back(thread_id: str, reason: str) -> bool:
        await achat(graph, thread_id, 1)  # between the decision and the deleting transaction
        return True

    report = await asweep(
        async_saver,
        RetentionPolicy(keep_last=20, idle_ttl=timedelta(days=30)),
        on_before_delete=user_comes_back,
        now=LATER,
    )

    assert report.deleted_threads == 0
    assert await checkpoints(async_saver) == {"returning user": 15}


async def test_a_coroutine_hook_can_veto_an_expiry(async_saver: Any) -> None:
    await achat(build_agent(async_saver), "keep-me", 1)

    async def veto(thread_id: str, reason: str) -> bool:
        return False

    report = await asweep(
        async_saver, RetentionPolicy(idle_ttl=timedelta(days=1)), on_before_delete=veto, now=LATER
    )

    assert report.deleted_threads == 0 and await checkpoints(async_saver) == {"keep-me": 5}


async def test_explain_gives_the_same_reasons_as_the_policy(async_saver: Any) -> None:
    skip_if_config_metadata_is_dropped(async_saver)
    graph = build_agent(async_saver)
    await achat(graph, "t", 1, pin=True)
    await achat(graph, "t", 2)

    report = await aprune_thread(
        async_saver,
        "t",
        RetentionPolicy(keep_last=2, keep_first=True, keep_tagged="pin"),
        dry_run=True,
        explain=True,
    )

    decisions = report.decisions["t"]
    assert [d.reasons for d in decisions[:2]] == [("last 1/2", "newest"), ("last 2/2",)]
    first = min(decisions, key=lambda d: d.checkpoint_id)
    assert first.kept and first.reasons == ("first", "tagged pin")
    assert sum("tagged pin" in d.reasons for d in decisions) == 5
    assert report.kept_checkpoints == 7 and report.deleted_checkpoints == 8


async def test_interrupted_checkpoints_are_kept_and_the_thread_resumes(async_saver: Any) -> None:
    graph = build_interrupt_graph(async_saver)
    await graph.ainvoke({"log": ["go"]}, config("t"))
    await graph.ainvoke(resume("yes"), config("t"))
    await graph.ainvoke({"log": ["again"]}, config("t"))

    report = await aprune_thread(
        async_saver, "t", RetentionPolicy(keep_last=1, keep_interrupted=True), explain=True
    )

    assert sum("interrupted" in d.reasons for d in report.decisions["t"] if d.kept) == 2
    await graph.ainvoke(resume("no"), config("t"))
    assert (await graph.aget_state(config("t"))).values["log"][-2:] == ["review:no", "published"]
