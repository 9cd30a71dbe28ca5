"""The one Prometheus registry: what prunes and sweeps record, and pruner gauges."""

from __future__ import annotations

from langgraph.checkpoint.memory import InMemorySaver

from langgraph_retention import BackgroundPruner, RetentionPolicy, metrics, prune_thread, sweep
from langgraph_retention.demo import build_agent, populate


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


def store() -> InMemorySaver:
    saver = InMemorySaver()
    populate(build_agent(saver), [("a", 2), ("b", 2)])  # 10 checkpoints each
    return saver


def test_prune_counts_what_it_deleted() -> None:
    before = sample("langgraph_retention_deleted_checkpoints_total")

    prune_thread(store(), "a", RetentionPolicy(keep_last=4))

    assert sample("langgraph_retention_deleted_checkpoints_total") == before + 6


def test_dry_run_records_nothing() -> None:
    before = sample("langgraph_retention_deleted_checkpoints_total")
    sweeps = sample("langgraph_retention_sweeps_total", {"outcome": "ok"})

    sweep(store(), RetentionPolicy(keep_last=1), dry_run=True)

    assert sample("langgraph_retention_deleted_checkpoints_total") == before
    assert sample("langgraph_retention_sweeps_total", {"outcome": "ok"}) == sweeps


def test_sweep_stopped_before_its_end_is_counted_as_stopped() -> None:
    before = sample("langgraph_retention_sweeps_total", {"outcome": "stopped"})

    report = sweep(store(), RetentionPolicy(keep_last=1), batch_size=1, stop=lambda: True)

    assert report.stopped == "stop requested" and report.threads_seen == 0
    assert sample("langgraph_retention_sweeps_total", {"outcome": "stopped"}) == before + 1


def test_live_pruners_show_as_gauges() -> None:
    saver = store()
    with BackgroundPruner(saver, RetentionPolicy(keep_last=1)) as pruner:
        pruner.request("a")
        pruner.join(timeout=30)
        text = metrics.exposition()[0].decode()

    assert "langgraph_retention_pruners " in text
    assert "langgraph_retention_pruner_pruned " in text
    assert "langgraph_retention_pruner_lag_seconds " in text


def test_exposition_is_prometheus_text() -> None:
    body, content_type = metrics.exposition()

    assert content_type.startswith("text/plain") and b"# TYPE langgraph_retention_sweeps" in body
