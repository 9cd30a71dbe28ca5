"""Whole-thread expiry, explanations and the richer rules, end to end on real savers and
real graphs: what goes, what stays, and that every kept thread still runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from langgraph_retention import RetentionPolicy, prune_thread, stats, sweep
from langgraph_retention.demo import build_agent, chat
from langgraph_retention.rules import ThreadRules

from .graphs import build_interrupt_graph, config, resume, user_turn

#: Savers whose backends read every fact the richer rules need.
KINDS = ["memory", "sqlite", "postgres", "redis"]
pytestmark = pytest.mark.parametrize("sync_saver", KINDS, indirect=True)
LATER = datetime.now(UTC) + timedelta(days=40)


def checkpoints(saver: Any) -> dict[str, int]:
    return {tid: ts.checkpoints for tid, ts in stats(saver).threads.items()}


def test_idle_thread_is_deleted_whole(sync_saver: Any) -> None:
    graph = build_agent(sync_saver)
    chat(graph, "idle", 2)
    chat(graph, "busy", 2)

    report = sweep(
        sync_saver,
        RetentionPolicy(keep_last=3, idle_ttl=timedelta(days=30)),
        thread_ids=["idle"],
        now=LATER,
    )

    assert report.deleted_threads == 1 and report.expired["idle"].startswith("idle 39d")
    assert report.deleted_checkpoints == 10 and "idle" not in checkpoints(sync_saver)
    assert graph.get_state(config("idle")).values == {}
    assert checkpoints(sync_saver)["busy"] == 10


def test_dry_run_lists_expiring_threads_and_deletes_nothing(sync_saver: Any) -> None:
    chat(build_agent(sync_saver), "idle", 2)

    report = sweep(
        sync_saver, RetentionPolicy(idle_ttl=timedelta(days=30)), dry_run=True, now=LATER
    )

    assert list(report.expired) == ["idle"] and report.deleted_threads == 1
    assert checkpoints(sync_saver) == {"idle": 10}


def test_on_before_delete_can_veto_an_expiry(sync_saver: Any) -> None:
    chat(build_agent(sync_saver), "keep-me", 2)
    asked: list[tuple[str, str]] = []

    def veto(thread_id: str, reason: str) -> bool:
        asked.append((thread_id, reason))
        return False

    report = sweep(
        sync_saver,
        RetentionPolicy(keep_last=20, idle_ttl=timedelta(days=30)),
        on_before_delete=veto,
        now=LATER,
    )

    assert [tid for tid, _ in asked] == ["keep-me"] and report.deleted_threads == 0
    assert checkpoints(sync_saver) == {"keep-me": 10}


def test_a_failing_hook_keeps_the_thread_and_reports_it(sync_saver: Any) -> None:
    chat(build_agent(sync_saver), "t", 1)

    def broken(thread_id: str, reason: str) -> bool:
        raise ConnectionError("billing service down")

    report = sweep(
        sync_saver, RetentionPolicy(idle_ttl=timedelta(days=1)), on_before_delete=broken, now=LATER
    )

    assert "billing service down" in report.errors["t"] and checkpoints(sync_saver) == {"t": 5}


def test_a_run_that_starts_before_the_delete_keeps_its_thread(sync_saver: Any) -> None:
    graph = build_agent(sync_saver)
    chat(graph, "returning user", 2)

    def user_comes_back(thread_id: str, reason: str) -> bool:
        chat(graph, thread_id, 1)  # between the decision and the deleting transaction
        return True

    report = sweep(
        sync_saver,
        RetentionPolicy(keep_last=20, idle_ttl=timedelta(days=30)),
        on_before_delete=user_comes_back,
        now=LATER,
    )

    assert report.deleted_threads == 0 and checkpoints(sync_saver) == {"returning user": 15}
    chat(graph, "returning user", 1)
    assert len(graph.get_state(config("returning user")).values["messages"]) == 16


def test_rules_expire_only_the_threads_they_match(sync_saver: Any) -> None:
    graph = build_agent(sync_saver)
    chat(graph, "eval-1", 1)
    chat(graph, "user-1", 1)
    rules = ThreadRules(
        RetentionPolicy(keep_last=5), [("eval-*", RetentionPolicy(idle_ttl=timedelta(days=1)))]
    )

    report = sweep(sync_saver, rules, now=LATER)

    assert list(report.expired) == ["eval-1"] and checkpoints(sync_saver) == {"user-1": 5}


def test_explain_says_why_every_checkpoint_stays_or_goes(sync_saver: Any) -> None:
    chat(build_agent(sync_saver), "t", 2)

    report = prune_thread(
        sync_saver, "t", RetentionPolicy(keep_last=3, keep_first=True), dry_run=True, explain=True
    )

    decisions = report.decisions["t"]
    assert len(decisions) == 10
    kept = [d for d in decisions if d.kept]
    assert kept[0].reasons == ("last 1/3", "newest")
    assert ("first",) in [d.reasons for d in kept] and len(kept) == 4
    assert all(not d.reasons for d in decisions if not d.kept)


def test_interrupted_checkpoints_are_kept_and_the_thread_resumes(sync_saver: Any) -> None:
    graph = build_interrupt_graph(sync_saver)
    graph.invoke({"log": ["go"]}, config("t"))
    graph.invoke(resume("yes"), config("t"))
    graph.invoke({"log": ["again"]}, config("t"))  # waiting at the second review
    before = graph.get_state(config("t"))

    report = prune_thread(
        sync_saver, "t", RetentionPolicy(keep_last=1, keep_interrupted=True), explain=True
    )

    interrupted = [d for d in report.decisions["t"] if "interrupted" in d.reasons]
    assert len(interrupted) == 2 and all(d.kept for d in interrupted)
    assert graph.get_state(config("t")) == before
    graph.invoke(resume("no"), config("t"))
    assert graph.get_state(config("t")).values["log"][-2:] == ["review:no", "published"]


def test_interrupted_checkpoints_are_found_when_the_policy_also_sizes_them(
    sync_saver: Any,
) -> None:
    graph = build_interrupt_graph(sync_saver)
    graph.invoke({"log": ["go"]}, config("t"))
    graph.invoke(resume("yes"), config("t"))
    graph.invoke({"log": ["again"]}, config("t"))
    capped = RetentionPolicy(keep_last=1, keep_interrupted=True, max_bytes=2**30)

    report = prune_thread(sync_saver, "t", capped, explain=True)

    interrupted = [d for d in report.decisions["t"] if "interrupted" in d.reasons]
    assert len(interrupted) == 2 and all(d.kept for d in interrupted)


def skip_if_config_metadata_is_dropped(saver: Any) -> None:
    """langgraph-checkpoint-redis does not store `config["metadata"]` in checkpoints
    (pinned by tests/test_redis.py); apps pin there through the checkpoint's own metadata."""
    if type(saver).__name__ in ("RedisSaver", "AsyncRedisSaver"):
        pytest.skip("RedisSaver drops config metadata upstream (see tests/test_redis.py)")


def test_tagged_checkpoints_stay_pinned(sync_saver: Any) -> None:
    skip_if_config_metadata_is_dropped(sync_saver)
    graph = build_agent(sync_saver)
    graph.invoke(user_turn(0), {**config("t"), "metadata": {"pin": True}})
    for i in range(1, 4):
        graph.invoke(user_turn(i), config("t"))

    report = prune_thread(
        sync_saver, "t", RetentionPolicy(keep_last=1, keep_tagged="pin"), explain=True
    )

    pinned = [d for d in report.decisions["t"] if "tagged pin" in d.reasons]
    assert len(pinned) == 5 and report.kept_checkpoints == 6


def test_max_bytes_shrinks_a_thread_and_keeps_it_running(sync_saver: Any) -> None:
    graph = build_agent(sync_saver)
    chat(graph, "t", 6)
    before = graph.get_state(config("t"))
    size = stats(sync_saver).threads["t"].bytes

    report = prune_thread(sync_saver, "t", RetentionPolicy(keep_last=30, max_bytes=size // 3))

    assert report.ok and 1 <= report.kept_checkpoints < 30 and not report.warnings
    assert stats(sync_saver).threads["t"].bytes <= size // 3
    assert graph.get_state(config("t")) == before
    chat(graph, "t", 1)


def test_a_coroutine_hook_in_a_sync_sweep_keeps_the_thread_and_says_why(sync_saver: Any) -> None:
    chat(build_agent(sync_saver), "t", 1)

    async def approve(thread_id: str, reason: str) -> bool:
        return True

    report = sweep(
        sync_saver, RetentionPolicy(idle_ttl=timedelta(days=1)), on_before_delete=approve, now=LATER
    )

    assert "needs asweep" in report.errors["t"] and checkpoints(sync_saver) == {"t": 5}
