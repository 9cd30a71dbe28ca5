"""Stores on every server kind, written by the real agent, addressed by URL (for tests
that run the CLI or a second process against them)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from langgraph_retention import stats
from langgraph_retention.demo import build_agent, populate
from langgraph_retention.urls import open_store

ROOT = Path(__file__).resolve().parent.parent
KINDS = ["sqlite", "postgres", "redis"]


def populated_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path, threads: Any) -> str:
    """A URL of a fresh store of `kind` holding the agent's `threads`."""
    if kind == "sqlite":
        path = tmp_path / "store.db"
        conn = sqlite3.connect(str(path), check_same_thread=False)
        populate(build_agent(SqliteSaver(conn)), threads)
        conn.close()
        return f"sqlite:///{path}"
    saver = request.getfixturevalue(f"{kind}_saver")  # empty and set up
    populate(build_agent(saver), threads)
    return str(request.getfixturevalue(f"{kind}_url"))


def checkpoint_counts(url: str) -> dict[str, int]:
    with open_store(url) as saver:
        return {tid: ts.checkpoints for tid, ts in stats(saver).threads.items()}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langgraph_retention.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@contextmanager
def lock_held_elsewhere(url: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the store's sweep lock until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.lock_holder", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        status = json.loads(proc.stdout.readline())
        assert status["held"], "the holder could not take the lock"
        yield proc
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)
