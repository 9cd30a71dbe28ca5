"""The cyclic GC is paused only while a batch is decided, and always handed back as found."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from langgraph_retention import RetentionPolicy, prune_thread
from langgraph_retention.backends.base import gc_paused
from langgraph_retention.demo import chat

from .graphs import build_agent


@pytest.fixture
def gc_enabled() -> Iterator[None]:
    """Whatever a test does to the collector, the next test starts with it on."""
    yield
    gc.enable()


def test_a_prune_leaves_the_collector_on(sync_saver: Any, gc_enabled: None) -> None:
    chat(build_agent(sync_saver), "t", 3)

    report = prune_thread(sync_saver, "t", RetentionPolicy(keep_last=1))

    assert report.deleted_checkpoints > 0
    assert gc.isenabled()


def test_a_collector_the_app_turned_off_stays_off(sync_saver: Any, gc_enabled: None) -> None:
    chat(build_agent(sync_saver), "t", 3)
    gc.disable()

    prune_thread(sync_saver, "t", RetentionPolicy(keep_last=1))

    assert not gc.isenabled()


def test_the_collector_comes_back_when_the_paused_work_fails(gc_enabled: None) -> None:
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("decision failed")

    assert gc.isenabled()
