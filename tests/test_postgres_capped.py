"""`max_bytes` on PostgreSQL batch by batch: decided without the cap, deleted, measured by
the blob statement, and capped after for the threads over it. It must delete exactly what
deciding with every size first (a dry run) plans. Real server, real graphs."""

from __future__ import annotations

import pytest
from langgraph.checkpoint.postgres import PostgresSaver

from langgraph_retention import RetentionPolicy, prune_thread, stats, sweep

from .graphs import build_interrupt_graph, config, resume
from .test_postgres_stage import ORPHANS_SQL, agents, sql, states

CAPS = [
    RetentionPolicy(keep_last=4, keep_interrupted=True, max_bytes=4_000),
    RetentionPolicy(keep_last=4, keep_first=True, max_bytes=10_800),  # "long" only
    RetentionPolicy(keep_last=4, keep_first=True, keep_daily=2, max_bytes=2**30),
]
IDS = ["binding-everywhere", "binding-somewhere", "not-reached"]


def remaining(url: str, thread_id: str) -> list[str]:
    rows = sql(url, "SELECT checkpoint_id FROM checkpoints WHERE thread_id = %s", (thread_id,))
    return sorted(r[0] for r in rows)


@pytest.mark.parametrize("policy", CAPS, ids=IDS)
def test_a_capped_sweep_deletes_what_the_sized_plan_chose(
    postgres_saver: PostgresSaver, postgres_url: str, policy: RetentionPolicy
) -> None:
    graph = agents(postgres_saver, ["short"], turns=2)
    agents(postgres_saver, ["long"], turns=6)
    review = build_interrupt_graph(postgres_saver)
    review.invoke({"log": ["go"]}, config("r"))
    review.invoke(resume("yes"), config("r"))
    review.invoke({"log": ["again"]}, config("r"))  # waiting at the second review
    threads = ["short", "long"]
    before = {**states(graph, threads), "r": review.get_state(config("r"))}

    planned = sweep(postgres_saver, policy, dry_run=True, explain=True)  # every size first
    report = sweep(postgres_saver, policy)

    reasons = {r for ds in planned.decisions.values() for d in ds for r in d.reasons}
    assert ("over max_bytes" in reasons) == (policy.max_bytes < 2**30)
    assert report.ok and report.deleted_checkpoints > 0
    assert (report.deleted_checkpoints, report.deleted_writes, report.deleted_blobs) == (
        planned.deleted_checkpoints,
        planned.deleted_writes,
        planned.deleted_blobs,
    )
    assert (report.kept_checkpoints, report.bytes_freed) == (
        planned.kept_checkpoints,
        planned.bytes_freed,
    )
    assert report.warnings == planned.warnings
    for tid, decisions in planned.decisions.items():
        assert remaining(postgres_url, tid) == sorted(d.checkpoint_id for d in decisions if d.kept)
    assert sql(postgres_url, ORPHANS_SQL)[0] == (0, 0)
    assert {**states(graph, threads), "r": review.get_state(config("r"))} == before
    review.invoke(resume("no"), config("r"))
    assert review.get_state(config("r")).values["log"][-2:] == ["review:no", "published"]


def test_a_capped_thread_fits_its_cap_after_the_prune(
    postgres_saver: PostgresSaver, postgres_url: str
) -> None:
    graph = agents(postgres_saver, ["t"], turns=6)
    size = stats(postgres_saver).threads["t"].bytes
    before = states(graph, ["t"])

    report = prune_thread(postgres_saver, "t", RetentionPolicy(keep_last=30, max_bytes=size // 3))

    assert report.ok and report.deleted_checkpoints > 0 and not report.warnings
    assert stats(postgres_saver).threads["t"].bytes <= size // 3
    assert states(graph, ["t"]) == before
    assert sql(postgres_url, ORPHANS_SQL)[0] == (0, 0)
