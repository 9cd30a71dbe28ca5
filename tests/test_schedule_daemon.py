"""`langgraph-retention schedule` as a real process: sweeps, signals, the lock, metrics,
and bad input."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .stores import ROOT, checkpoint_counts, cli, lock_held_elsewhere, populated_url

THREADS = [("a:1", 3), ("b:2", 3), ("c:3", 3)]  # 15 checkpoints each


class Daemon:
    """A running `schedule` process: JSON report lines from stdout, its log on stderr."""

    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc = proc
        self.log = log
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def next_report(self, timeout: float = 60) -> dict[str, Any]:
        try:
            return dict(json.loads(self._lines.get(timeout=timeout)))
        except queue.Empty:
            raise AssertionError(f"no sweep report; log:\n{self.log.read_text()}") from None

    def wait_for_log(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never logged; log:\n{self.log.read_text()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@contextmanager
def daemon(url: str, *args: str, tmp_path: Path) -> Iterator[Daemon]:
    log = tmp_path / f"daemon-{time.monotonic_ns()}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "langgraph_retention.cli", "schedule", "--url", url,
             "--json", *args],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
        )  # fmt: skip
    try:
        yield Daemon(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sqlite_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return populated_url("sqlite", request, tmp_path, THREADS)


def test_daemon_sweeps_on_start_and_stops_cleanly_on_sigterm(
    sqlite_url: str, tmp_path: Path
) -> None:
    with daemon(sqlite_url, "--keep-last", "2", "--every", "1h", "--run-now",
                tmp_path=tmp_path) as d:  # fmt: skip
        report = d.next_report()
        code = d.stop(signal.SIGTERM)

    assert report["deleted_checkpoints"] == 3 * 13 and report["errors"] == {}
    assert code == 0
    assert "SIGTERM: stopping after the batch in progress" in d.log.read_text()
    assert checkpoint_counts(sqlite_url) == {tid: 2 for tid, _ in THREADS}


def test_sigint_stops_it_as_well(sqlite_url: str, tmp_path: Path) -> None:
    with daemon(sqlite_url, "--keep-last", "2", "--cron", "0 2 * * *", tmp_path=tmp_path) as d:
        d.wait_for_log("scheduler started")

        assert d.stop(signal.SIGINT) == 0


def test_log_says_when_the_next_sweep_is(sqlite_url: str, tmp_path: Path) -> None:
    with daemon(sqlite_url, "--keep-last", "2", "--cron", "0 2 * * *", "--timezone",
                "Asia/Shanghai", tmp_path=tmp_path) as d:  # fmt: skip
        line = d.wait_for_log("scheduler started")
        d.stop()

    assert "keep_last=2" in line and "next sweep at " in line and "02:00:00+08:00" in line


def test_sigterm_mid_sweep_commits_the_batch_in_progress_and_exits_0(
    postgres_saver: Any, postgres_url: str, tmp_path: Path
) -> None:
    from langgraph_retention.demo import build_agent, populate

    populate(build_agent(postgres_saver), THREADS)
    with psycopg.connect(postgres_url) as blocker:
        # Another transaction's lock: the sweep's first DELETE waits for it.
        blocker.execute("LOCK TABLE checkpoints IN SHARE ROW EXCLUSIVE MODE")
        with daemon(postgres_url, "--keep-last", "2", "--cron", "0 2 * * *", "--run-now",
                    "--batch-size", "1", tmp_path=tmp_path) as d:  # fmt: skip
            wait_for_delete_blocked(postgres_url)
            d.proc.send_signal(signal.SIGTERM)
            d.wait_for_log("SIGTERM: stopping")
            blocker.rollback()  # the batch in progress goes on and commits
            report = d.next_report()
            code = d.proc.wait(timeout=60)

    assert code == 0
    assert report["stopped"] == "stop requested" and report["threads_seen"] == 1
    assert sorted(checkpoint_counts(postgres_url).values()) == [2, 15, 15]


def wait_for_delete_blocked(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%DELETE FROM checkpoints%'"
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.05)
    raise AssertionError("the sweep never reached its DELETE")


def test_daemon_skips_while_another_process_holds_the_lock_and_names_it(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = populated_url("postgres", request, tmp_path, THREADS)
    with (
        lock_held_elsewhere(url) as holder,
        daemon(url, "--keep-last", "2", "--every", "1h", "--run-now", tmp_path=tmp_path) as d,
    ):
        line = d.wait_for_log("skipped: another sweep holds the lock")
        assert d.stop() == 0

    assert f"pid {holder.pid}" in line and "next at " in line
    assert checkpoint_counts(url) == {tid: 15 for tid, _ in THREADS}


def test_metrics_port_serves_prometheus_text(sqlite_url: str, tmp_path: Path) -> None:
    port = free_port()
    with daemon(sqlite_url, "--keep-last", "2", "--every", "1h", "--run-now",
                "--metrics-port", str(port), tmp_path=tmp_path) as d:  # fmt: skip
        d.next_report()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        d.stop()

    assert 'langgraph_retention_sweeps_total{outcome="ok"} 1.0' in text
    assert "langgraph_retention_deleted_checkpoints_total 39.0" in text
    assert "langgraph_retention_sweep_duration_seconds_count 1.0" in text


def test_url_comes_from_the_environment(sqlite_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "LANGGRAPH_RETENTION_URL": sqlite_url}
    proc = subprocess.run(
        [sys.executable, "-m", "langgraph_retention.cli", "prune", "--keep-last", "2", "--all"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    assert checkpoint_counts(sqlite_url) == {tid: 2 for tid, _ in THREADS}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--cron", "61 2 * * *"), "bad cron expression '61 2 * * *'"),
        (("--cron", "0 2 * *"), "want 5 fields"),
        (("--cron", "0 2 * * *", "--timezone", "Mars/Olympus"), "unknown time zone"),
        (("--cron", "0 2 * * *", "--report-cron", "whenever"), "bad cron expression 'whenever'"),
        (("--every", "5 minutes"), "argument --every"),
        (("--every", "0s"), "at least 1s"),
        ((), "no schedule: give --cron EXPR or --every DURATION"),
        (("--cron", "0 2 * * *", "--metrics-port", "99999"), "not a TCP port"),
    ],
)
def test_bad_schedule_is_a_one_line_usage_error(
    sqlite_url: str, args: tuple[str, ...], says: str
) -> None:
    proc = cli("schedule", "--url", sqlite_url, "--keep-last", "2", *args)

    assert proc.returncode == 2
    assert says in proc.stderr
    assert checkpoint_counts(sqlite_url) == {tid: 15 for tid, _ in THREADS}


def test_missing_url_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LANGGRAPH_RETENTION_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "langgraph_retention.cli", "schedule", "--keep-last", "2",
         "--cron", "0 2 * * *"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip

    assert proc.returncode == 2 and "no store URL" in proc.stderr
