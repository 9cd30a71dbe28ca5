"""Per-thread policies: glob rules (first match wins), exempt threads, custom resolvers,
on a real SQLite store written by the real agent."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from langgraph_retention import RetentionPolicy, prune_thread, sweep
from langgraph_retention.demo import build_agent, populate
from langgraph_retention.rules import EXEMPT, ThreadRules

from .stores import checkpoint_counts

THREADS = [("support:1", 3), ("support:2", 3), ("vip:alice", 3), ("eval-7", 3), ("chat/9", 3)]
RULES = ThreadRules(
    RetentionPolicy(keep_last=1),
    [
        ("support:*", RetentionPolicy(keep_last=4)),
        ("vip:*", EXEMPT),
        ("support:2", RetentionPolicy(keep_last=2)),  # never reached: support:* matched first
    ],
)


@pytest.fixture
def url(tmp_path: Path) -> str:
    path = tmp_path / "store.db"
    conn = sqlite3.connect(str(path), check_same_thread=False)
    populate(build_agent(SqliteSaver(conn)), THREADS)
    conn.close()
    return f"sqlite:///{path}"


def saver_of(url: str) -> SqliteSaver:
    return SqliteSaver(sqlite3.connect(url.removeprefix("sqlite:///"), check_same_thread=False))


def test_first_matching_pattern_decides() -> None:
    assert RULES.resolve("support:2") == RetentionPolicy(keep_last=4)
    assert RULES.resolve("vip:bob") == EXEMPT
    assert RULES.resolve("other") == RetentionPolicy(keep_last=1)


def test_patterns_are_case_sensitive_and_star_spans_separators() -> None:
    rules = ThreadRules(EXEMPT, [("tenant/*", RetentionPolicy(keep_last=2))])

    assert rules.resolve("tenant/a:b/c") == RetentionPolicy(keep_last=2)
    assert rules.resolve("Tenant/a") == EXEMPT


def test_sweep_applies_each_thread_its_own_policy(url: str) -> None:
    report = sweep(saver_of(url), RULES)

    assert checkpoint_counts(url) == {
        "support:1": 4, "support:2": 4, "vip:alice": 15, "eval-7": 1, "chat/9": 1,
    }  # fmt: skip
    assert report.threads_exempt == 1 and report.threads_seen == 5 and report.ok


def test_exempt_thread_is_untouched_by_prune_thread(url: str) -> None:
    report = prune_thread(saver_of(url), "vip:alice", RULES)

    assert report.threads_exempt == 1 and report.deleted_checkpoints == 0
    assert checkpoint_counts(url)["vip:alice"] == 15


def test_a_resolver_can_be_any_callable(url: str) -> None:
    premium = {"support:1"}

    def by_plan(thread_id: str) -> RetentionPolicy:
        return RetentionPolicy(keep_last=5 if thread_id in premium else 2)

    sweep(saver_of(url), by_plan)

    assert checkpoint_counts(url) == {
        "support:1": 5, "support:2": 2, "vip:alice": 2, "eval-7": 2, "chat/9": 2,
    }  # fmt: skip


def test_a_failing_resolver_fails_that_thread_only(url: str) -> None:
    def picky(thread_id: str) -> RetentionPolicy:
        if thread_id == "eval-7":
            raise LookupError("no plan for eval-7")
        return RetentionPolicy(keep_last=1)

    report = sweep(saver_of(url), picky)

    assert list(report.errors) == ["eval-7"] and "no plan for eval-7" in report.errors["eval-7"]
    assert checkpoint_counts(url)["eval-7"] == 15 and checkpoint_counts(url)["chat/9"] == 1


def test_rules_take_only_policies_or_exempt() -> None:
    with pytest.raises(TypeError, match="RetentionPolicy or EXEMPT"):
        ThreadRules(RetentionPolicy(), [("x*", "keep everything")])  # type: ignore[list-item]


def test_anything_else_as_a_policy_is_a_type_error(url: str) -> None:
    with pytest.raises(TypeError, match="policy must be a RetentionPolicy"):
        sweep(saver_of(url), {"keep_last": 3})  # type: ignore[arg-type]
