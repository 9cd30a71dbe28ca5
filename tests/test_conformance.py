"""`RetainingSaver` passes LangGraph's checkpointer conformance suite over real savers.

`langgraph-checkpoint-conformance` registers a factory of fresh checkpointers, detects
capabilities from which methods the checkpointer's class overrides, and runs each
detected capability's spec. The wrapper must pass every base capability, detect exactly
the wrapped saver's capabilities plus PRUNE (implemented on this project's engine), and
pass PRUNE too.

Each saver runs in three configurations: retention dormant (pure delegation), an inline
prune after every put, and a background hand-off after every put. In the last two the
policy keeps far more checkpoints than the suite writes, so retention runs on the hot
path of every spec without changing what the spec may observe.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import (
    BASE_CAPABILITIES,
    Capability,
    DetectedCapabilities,
)
from langgraph.checkpoint.conformance.report import CapabilityReport
from langgraph.checkpoint.conformance.test_utils import generate_metadata, put_test_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from langgraph_retention import RetentionPolicy
from langgraph_retention.saver import RetainingSaver

from .conftest import HAVE_POSTGRES, HAVE_REDIS

KINDS = (
    ["memory", "async_sqlite"]
    + (["async_postgres"] if HAVE_POSTGRES else [])
    + (["async_redis"] if HAVE_REDIS else [])
)

#: Keeps more than any spec writes to a thread: retention runs, the specs see no change.
KEEP_ALL = RetentionPolicy(keep_last=1_000_000)

CONFIGURATIONS: dict[str, tuple[RetentionPolicy, dict[str, Any]]] = {
    "dormant": (RetentionPolicy(keep_last=1), {"mode": "inline", "every": 10**9}),
    "inline-every-put": (KEEP_ALL, {"mode": "inline", "every": 1}),
    "background-every-put": (KEEP_ALL, {"mode": "background", "threshold": 1}),
}

Opener = Callable[[], AbstractAsyncContextManager[BaseCheckpointSaver[Any]]]


def _opener(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """A factory of fresh, empty, set-up savers of `kind` (one per capability suite)."""
    if kind == "memory":

        @asynccontextmanager
        async def memory() -> AsyncIterator[BaseCheckpointSaver[Any]]:
            yield InMemorySaver()

        return memory
    if kind == "async_sqlite":
        counter = iter(range(1_000_000))

        @asynccontextmanager
        async def sqlite() -> AsyncIterator[BaseCheckpointSaver[Any]]:
            path = tmp_path / f"conformance-{next(counter)}.db"
            async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
                await saver.setup()
                yield saver

        return sqlite
    server = kind.removeprefix("async_")
    plugin = importlib.import_module(f"tests.fixtures_{server}")
    url = request.getfixturevalue(f"{server}_url")
    return lambda: plugin.open_async_saver(url)  # type: ignore[no-any-return]


def _failed_tests(report: CapabilityReport, capability: Capability) -> set[str]:
    """Names of the spec tests of `capability` that failed ("test_x: message" entries)."""
    return {f.split(":", 1)[0] for f in report.results[capability.value].failures}


async def _run_suites(
    kind: str, configuration: str, opener: Opener
) -> tuple[CapabilityReport, CapabilityReport, frozenset[Capability], frozenset[Capability]]:
    """The suite over the bare saver, then over the wrapped one (fresh savers each)."""
    policy, options = CONFIGURATIONS[configuration]
    detected: dict[str, frozenset[Capability]] = {}

    @checkpointer_test(name=f"{kind} (bare)")
    async def bare() -> AsyncIterator[BaseCheckpointSaver[Any]]:
        async with opener() as inner:
            yield inner

    @checkpointer_test(name=f"RetainingSaver[{kind}] {configuration}")
    async def wrapped_factory() -> AsyncIterator[BaseCheckpointSaver[Any]]:
        async with opener() as inner:
            wrapped = RetainingSaver(inner, policy, **options)
            detected["inner"] = DetectedCapabilities.from_instance(inner).detected
            detected["outer"] = DetectedCapabilities.from_instance(wrapped).detected
            try:
                yield wrapped
            finally:
                drained = await wrapped.aclose(timeout=60)
                assert drained, f"background pruner did not drain: {wrapped.pruner!r}"
                if wrapped.pruner is not None:
                    counters = wrapped.pruner.counters
                    assert counters.failed == 0 and counters.dropped == 0, counters
                assert wrapped.counters.failed == 0, wrapped.counters

    bare_report = await validate(bare)
    report = await validate(wrapped_factory)
    return report, bare_report, detected["inner"], detected["outer"]


@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
@pytest.mark.parametrize("kind", KINDS)
async def test_wrapper_passes_the_conformance_suite(
    kind: str, configuration: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    report, bare, inner_caps, outer_caps = await _run_suites(
        kind, configuration, _opener(kind, request, tmp_path)
    )

    # Detection: exactly the wrapped saver's capabilities, plus PRUNE.
    assert outer_caps == inner_caps | {Capability.PRUNE}
    for cap in Capability:
        assert report.results[cap.value].detected == (cap in outer_caps), cap

    # Every capability but PRUNE is the wrapped saver's own: the wrapper must pass
    # exactly the spec tests the bare saver passes.
    for cap in Capability:
        if cap is not Capability.PRUNE and report.results[cap.value].detected:
            assert _failed_tests(report, cap) == _failed_tests(bare, cap), (
                f"{report.checkpointer_name} {cap.value}: "
                f"{report.results[cap.value].failures} vs bare {bare.results[cap.value].failures}"
            )

    # PRUNE is ours and must pass. The one exception: a saver whose own `alist` ignores
    # checkpoint_ns="" (langgraph-checkpoint-redis 0.5.2, failing the LIST spec's
    # test_list_by_namespace) fails the PRUNE spec that *verifies* through that alist;
    # test_redis_keep_latest_across_namespaces checks that case without the bug.
    list_ignores_namespace = "test_list_by_namespace" in _failed_tests(bare, Capability.LIST)
    allowed = {"test_prune_keep_latest_across_namespaces"} if list_ignores_namespace else set()
    prune = report.results[Capability.PRUNE.value]
    assert prune.detected
    assert _failed_tests(report, Capability.PRUNE) <= allowed, prune.failures
    assert prune.tests_passed + prune.tests_failed == 8

    if kind in ("memory", "async_sqlite", "async_postgres"):
        assert report.passed_all(), report.to_dict()
        assert report.conformance_level() == "FULL"
    assert all(
        report.results[c.value].passed or bare.results[c.value].passed is False
        for c in BASE_CAPABILITIES
    )


@pytest.mark.skipif(not HAVE_REDIS, reason="tests/fixtures_redis.py is missing")
async def test_redis_keep_latest_across_namespaces(request: pytest.FixtureRequest) -> None:
    """The PRUNE spec's namespace case on Redis, read back without the upstream alist bug
    (there, `checkpoint_ns=""` lists every namespace): group one listing by namespace."""
    plugin = importlib.import_module("tests.fixtures_redis")
    async with plugin.open_async_saver(request.getfixturevalue("redis_url")) as inner:
        wrapped = RetainingSaver(inner, RetentionPolicy(keep_last=1), every=10**9)
        newest: dict[str, str] = {}
        for ns, count in (("", 3), ("child:1", 2)):
            parent: Any = None
            for step in range(count):
                parent = await put_test_checkpoint(
                    wrapped,
                    thread_id="t",
                    checkpoint_ns=ns,
                    parent_config=parent,
                    metadata=generate_metadata(step=step),
                )
            newest[ns] = parent["configurable"]["checkpoint_id"]

        await wrapped.aprune(["t"], strategy="keep_latest")

        by_ns: dict[str, list[str]] = {}
        async for tup in inner.alist({"configurable": {"thread_id": "t"}}):
            conf = tup.config["configurable"]
            by_ns.setdefault(conf["checkpoint_ns"], []).append(conf["checkpoint_id"])
        assert by_ns == {ns: [cid] for ns, cid in newest.items()}
