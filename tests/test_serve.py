"""`langgraph-retention serve` as a real process on waitress, driven by the seed's own
client code (`CheckpointCleanupScheduler`, `cleanup_once`) on SQLite, PostgreSQL and Redis;
tokens, refusing a public address without one, and SIGTERM with a request in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import requests

from langgraph_retention.demo import SEED_THREAD_ID

from .seed_clients import CheckpointCleanupScheduler, cleanup_once
from .stores import KINDS, ROOT, checkpoint_counts, cli, lock_held_elsewhere, populated_url
from .test_schedule_daemon import free_port, wait_for_delete_blocked

THREADS = [(SEED_THREAD_ID, 4), ("客服/会话 7", 3), ("with space", 3)]  # 5 per turn


class Server:
    """A running `serve` process: its base URL and its log."""

    def __init__(self, proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.proc = proc
        self.base = base
        self.log = log

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@contextmanager
def serving(
    url: str, *args: str, tmp_path: Path, env: dict[str, str] | None = None, port: int = 0
) -> Iterator[Server]:
    """`serve` on `port` (a free one given as --port unless told which, e.g. by --config)."""
    flag = [] if port else ["--port", str(port := free_port())]
    log = tmp_path / f"serve-{port}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "langgraph_retention.cli", "serve", "--url", url,
             *flag, *args],
            stdout=err, stderr=err, cwd=ROOT, env={**os.environ, **(env or {})},
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield Server(proc, base, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_the_seeds_clients_work_unchanged(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = populated_url(kind, request, tmp_path, THREADS)
    with serving(url, "--keep-last", "10", tmp_path=tmp_path) as server:
        seed = CheckpointCleanupScheduler(flask_api_url=server.base, keep_count=3)

        stats = seed.get_cleanup_stats()
        assert stats is not None and stats["total_threads"] == len(THREADS)
        assert stats["thread_stats"] == checkpoint_counts(url)

        assert seed.cleanup_specific_thread(SEED_THREAD_ID) is True
        assert checkpoint_counts(url)[SEED_THREAD_ID] == 3

        assert seed.cleanup_all_checkpoints() is True
        assert all(n == 3 for n in checkpoint_counts(url).values())

        assert cleanup_once(server.base) == 0
        assert "清理成功: 删除了0个checkpoint" in capsys.readouterr().out
        code = server.stop()

    assert code == 0


def test_thread_ids_with_slashes_and_unicode_arrive_whole(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = populated_url("sqlite", request, tmp_path, THREADS)
    with serving(url, tmp_path=tmp_path) as server:
        r = requests.post(
            f"{server.base}/api/cleanup/thread/{quote('客服/会话 7', safe='')}",
            json={"keep_count": 2},
            timeout=30,
        )

    assert r.status_code == 200, r.text
    assert r.json()["thread_id"] == "客服/会话 7" and r.json()["remaining_count"] == 2


def test_a_token_is_required_everywhere_but_healthz(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = populated_url("sqlite", request, tmp_path, THREADS)
    before = checkpoint_counts(url)
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    with serving(url, "--keep-last", "1", "--token-file", str(token_file), tmp_path=tmp_path) as s:
        open_health = requests.get(f"{s.base}/healthz", timeout=10)
        missing = requests.post(f"{s.base}/api/cleanup/all", json={}, timeout=10)
        wrong = requests.get(
            f"{s.base}/api/cleanup/stats", headers={"Authorization": "Bearer nope"}, timeout=10
        )
        right = requests.get(
            f"{s.base}/api/cleanup/stats",
            headers={"Authorization": "Bearer from-a-file"},
            timeout=10,
        )

    assert open_health.status_code == 200
    assert missing.status_code == 401 and wrong.status_code == 401
    assert right.status_code == 200 and right.json()["total_threads"] == len(THREADS)
    assert checkpoint_counts(url) == before


def test_the_token_comes_from_the_environment_too(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = populated_url("sqlite", request, tmp_path, THREADS)
    env = {"LANGGRAPH_RETENTION_TOKEN": "from-env"}
    with serving(url, tmp_path=tmp_path, env=env) as server:
        missing = requests.get(f"{server.base}/metrics", timeout=10)
        right = requests.get(
            f"{server.base}/metrics", headers={"Authorization": "Bearer from-env"}, timeout=10
        )

    assert missing.status_code == 401
    assert right.status_code == 200 and "langgraph_retention_sweeps_total" in right.text


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_a_public_address_without_a_token_is_refused(
    request: pytest.FixtureRequest, tmp_path: Path, host: str
) -> None:
    url = populated_url("sqlite", request, tmp_path, THREADS)
    env_token = os.environ.pop("LANGGRAPH_RETENTION_TOKEN", None)
    try:
        proc = cli("serve", "--url", url, "--host", host, "--port", str(free_port()))
    finally:
        if env_token is not None:
            os.environ["LANGGRAPH_RETENTION_TOKEN"] = env_token

    assert proc.returncode == 2
    assert f"refusing to serve on {host} without a token" in proc.stderr


def test_unknown_paths_and_methods_get_json_from_the_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = populated_url("sqlite", request, tmp_path, THREADS)
    with serving(url, tmp_path=tmp_path) as server:
        unknown = requests.get(f"{server.base}/nope", timeout=10)
        wrong = requests.delete(f"{server.base}/api/cleanup/all", timeout=10)

    assert unknown.status_code == 404 and unknown.json()["status"] == "error"
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


@pytest.mark.slow
def test_sigterm_answers_the_request_in_flight_then_exits_0(
    postgres_saver: Any, postgres_url: str, tmp_path: Path
) -> None:
    from langgraph_retention.demo import build_agent, populate

    populate(build_agent(postgres_saver), THREADS)
    answers: list[requests.Response] = []
    with serving(postgres_url, tmp_path=tmp_path) as server:
        with psycopg.connect(postgres_url) as blocker:
            blocker.execute("LOCK TABLE checkpoints IN SHARE ROW EXCLUSIVE MODE")
            call = threading.Thread(
                target=lambda: answers.append(
                    requests.post(
                        f"{server.base}/api/cleanup/thread/{quote(SEED_THREAD_ID)}",
                        json={"keep_count": 2},
                        timeout=60,
                    )
                )
            )
            call.start()
            wait_for_delete_blocked(postgres_url)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            still_running = server.proc.poll() is None
            blocker.rollback()  # the request in flight goes on and commits
        call.join(60)
        code = server.proc.wait(timeout=60)

    assert still_running and code == 0
    assert answers and answers[0].status_code == 200 and answers[0].json()["deleted_count"] > 0
    assert checkpoint_counts(postgres_url)[SEED_THREAD_ID] == 2
    assert "SIGTERM: finishing the requests in flight" in server.log.read_text()


@pytest.mark.slow
def test_a_sweep_another_process_runs_is_a_409_naming_it(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = populated_url("postgres", request, tmp_path, THREADS)
    before = checkpoint_counts(url)
    with lock_held_elsewhere(url), serving(url, tmp_path=tmp_path) as server:
        r = requests.post(f"{server.base}/api/cleanup/all", json={"keep_count": 1}, timeout=60)

    assert r.status_code == 409 and r.json()["error"] == "sweep_running"
    assert "another sweep holds the lock" in r.json()["message"]
    assert checkpoint_counts(url) == before


def test_the_settings_file_gives_port_token_and_policy(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = populated_url("sqlite", request, tmp_path, THREADS)
    port = free_port()
    config = tmp_path / "retention.toml"
    config.write_text(f'token = "from-config"\n[policy]\nkeep_last = 2\n[serve]\nport = {port}\n')
    with serving(url, "--config", str(config), tmp_path=tmp_path, port=port) as server:
        r = requests.post(
            f"{server.base}/api/cleanup/thread/{quote(SEED_THREAD_ID)}",
            headers={"Authorization": "Bearer from-config"},
            timeout=30,
        )

    assert r.status_code == 200 and r.json()["remaining_count"] == 2
