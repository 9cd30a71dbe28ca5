"""The HTTP API through both adapters (a Flask app with the blueprint, a FastAPI app with
the router): the same requests get the same answers, on a store filled by the real agent."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver

from langgraph_retention import RetentionPolicy, stats
from langgraph_retention.demo import SEED_THREAD_ID, build_agent, populate
from langgraph_retention.web.params import MAX_BODY_BYTES

from .web_clients import ADAPTERS, TOKEN, Client, api_client, thread_path

ODD_IDS = [
    SEED_THREAD_ID,
    "user/42/chat",
    "/lead//trail/",
    "with spaces ",
    "line\nbreak",
    "客服 会话·7",
    "a%2Fb?x=1#frag",
]
THREADS = [(tid, 3) for tid in ODD_IDS] + [("small", 1)]  # 3 turns: 15 checkpoints
POLICY = RetentionPolicy(keep_last=4)


def counts(saver: Any) -> dict[str, int]:
    return {tid: ts.checkpoints for tid, ts in stats(saver).threads.items()}


@pytest.fixture(scope="module")
def template() -> InMemorySaver:
    saver = InMemorySaver()
    populate(build_agent(saver), THREADS)
    return saver


@pytest.fixture
def saver(template: InMemorySaver) -> InMemorySaver:
    """A fresh copy of the filled store (the agent runs once per module)."""
    import copy

    fresh = InMemorySaver()
    fresh.storage = copy.deepcopy(template.storage)
    fresh.writes = copy.deepcopy(template.writes)
    fresh.blobs = copy.deepcopy(template.blobs)
    return fresh


@pytest.fixture(params=ADAPTERS)
def client(request: pytest.FixtureRequest, saver: InMemorySaver) -> Any:
    with api_client(request.param, saver, POLICY) as c:
        yield c


# -- the seed's endpoints -------------------------------------------------------------------


def test_stats_answers_the_seeds_keys(client: Client, saver: InMemorySaver) -> None:
    r = client.get("/api/cleanup/stats")

    assert r.status == 200
    data = r.json()
    assert data["total_threads"] == len(THREADS)
    assert data["thread_stats"] == counts(saver)
    assert data["total_checkpoints"] == sum(counts(saver).values())
    assert data["total_bytes"] > 0 and data["truncated"] is False


def test_stats_top_lists_the_largest_threads_first(client: Client) -> None:
    data = client.get("/api/cleanup/stats?top=2").json()

    assert len(data["thread_stats"]) == 2 and "small" not in data["thread_stats"]
    assert data["total_threads"] == len(THREADS) and data["truncated"] is True


def test_stats_pages_cover_every_thread_once(client: Client, saver: InMemorySaver) -> None:
    seen: dict[str, int] = {}
    after: str | None = None
    while True:
        query = "limit=2" + (f"&after={quote(after)}" if after is not None else "")
        page = client.get(f"/api/cleanup/stats?{query}").json()
        assert not set(page["thread_stats"]) & set(seen)
        seen.update(page["thread_stats"])
        after = page["next_after"]
        if after is None:
            break

    assert seen == counts(saver)


@pytest.mark.parametrize("thread_id", ODD_IDS)
def test_thread_prune_keeps_the_newest_n_of_that_thread_only(
    client: Client, saver: InMemorySaver, thread_id: str
) -> None:
    before = counts(saver)

    r = client.post(thread_path(thread_id), json={"keep_count": 5})

    assert r.status == 200, r.body
    data = r.json()
    assert data["status"] == "success" and data["thread_id"] == thread_id
    assert data["total_checkpoints"] == before[thread_id]
    assert data["deleted_count"] == before[thread_id] - 5 and data["remaining_count"] == 5
    assert data["deleted_writes"] > 0 and data["bytes_freed"] > 0
    after = counts(saver)
    assert after[thread_id] == 5
    assert {t: n for t, n in after.items() if t != thread_id} == {
        t: n for t, n in before.items() if t != thread_id
    }


def test_thread_without_keep_count_uses_the_server_policy(client: Client) -> None:
    data = client.post(thread_path(SEED_THREAD_ID)).json()

    assert data["remaining_count"] == POLICY.keep_last


def test_thread_with_nothing_to_delete_says_so(client: Client) -> None:
    data = client.post(thread_path("small"), json={"keep_count": 10}).json()

    assert data["status"] == "no_cleanup_needed" and data["deleted_count"] == 0
    assert data["total"] == data["total_checkpoints"] == 5


def test_thread_dry_run_counts_and_deletes_nothing(client: Client, saver: InMemorySaver) -> None:
    before = counts(saver)

    data = client.post(thread_path(SEED_THREAD_ID), json={"keep_count": 2, "dry_run": True}).json()

    assert data["dry_run"] is True and data["deleted_count"] == before[SEED_THREAD_ID] - 2
    assert counts(saver) == before


def test_unknown_thread_is_a_404_json(client: Client) -> None:
    r = client.post(thread_path("no such thread"), json={"keep_count": 2})

    assert r.status == 404
    assert r.json()["error"] == "thread_not_found"


def test_explain_lists_every_checkpoint_and_why(client: Client, saver: InMemorySaver) -> None:
    total = counts(saver)[SEED_THREAD_ID]

    data = client.post(thread_path(SEED_THREAD_ID) + "?explain=1", json={"keep_count": 3}).json()

    decisions = data["decisions"]
    assert len(decisions) == total
    assert sum(d["kept"] for d in decisions) == 3
    assert all(d["reasons"] for d in decisions if d["kept"])


def test_include_kept_returns_the_kept_checkpoint_ids(client: Client, saver: InMemorySaver) -> None:
    data = client.post(thread_path("small"), json={"keep_count": 2, "include_kept": True}).json()

    config = {"configurable": {"thread_id": "small"}}
    left = [t.config["configurable"]["checkpoint_id"] for t in saver.list(config)]
    assert sorted(data["kept_ids"]) == sorted(left) and len(left) == 2


def test_policy_in_the_body_overrides_the_server_policy(client: Client) -> None:
    data = client.post(thread_path(SEED_THREAD_ID), json={"policy": {"keep_last": 6}}).json()

    assert data["remaining_count"] == 6


def test_all_answers_the_seeds_keys(client: Client, saver: InMemorySaver) -> None:
    r = client.post("/api/cleanup/all", json={"keep_count": 3})

    assert r.status == 200, r.body
    data = r.json()
    assert data["status"] == "completed" and data["processed_threads"] == len(THREADS)
    assert data["total_deleted"] == sum(res["deleted_count"] for res in data["results"].values())
    assert set(data["results"]) == {tid for tid, _ in THREADS}
    assert all(n <= 3 for n in counts(saver).values())


def test_background_sweep_answers_202_and_its_job_reports_progress(
    client: Client, saver: InMemorySaver
) -> None:
    r = client.post("/api/cleanup/all", json={"keep_count": 2, "background": True})

    assert r.status == 202
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"jobs/{job_id}"
    job = _wait_for_job(client, job_id)
    assert job["status"] == "completed" and job["finished_at"] >= job["started_at"]
    assert job["threads_done"] == len(THREADS) and job["failed_threads"] == 0
    assert job["deleted_so_far"] == job["result"]["total_deleted"] > 0
    assert all(n <= 2 for n in counts(saver).values())
    listed = client.get("/api/cleanup/jobs").json()["jobs"]
    assert [j["job_id"] for j in listed] == [job_id]


def _wait_for_job(client: Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/cleanup/jobs/{job_id}").json()
        if job["finished_at"] is not None:
            return job
        time.sleep(0.02)
    raise AssertionError("the job never finished")


def test_unknown_job_is_a_404_json(client: Client) -> None:
    r = client.get("/api/cleanup/jobs/deadbeef")

    assert r.status == 404 and r.json()["error"] == "job_not_found"


def test_a_second_sweep_gets_the_running_job(saver: InMemorySaver) -> None:
    gate = threading.Event()

    def slow(_thread_id: str) -> RetentionPolicy:
        gate.wait(30)
        return POLICY

    with api_client("flask", saver, slow) as client:
        first = client.post("/api/cleanup/all", json={"background": True}).json()
        second = client.post("/api/cleanup/all", json={"dry_run": True})
        gate.set()
        job = _wait_for_job(client, first["job_id"])

    assert second.status == 202
    assert second.json()["job_id"] == first["job_id"] and second.json()["already_running"] is True
    assert job["status"] == "completed"


def test_a_server_without_policy_requires_keep_count(saver: InMemorySaver) -> None:
    before = counts(saver)
    with api_client("flask", saver, None) as client:
        r = client.post("/api/cleanup/all")

    assert r.status == 400 and r.json()["error"] == "no_policy"
    assert counts(saver) == before


# -- bad input: 4xx JSON, nothing deleted --------------------------------------------------

BAD_BODIES = [
    ({"keep_count": 0}, 400),
    ({"keep_count": -3}, 400),
    ({"keep_count": "five"}, 400),
    ({"keep_count": "5"}, 400),
    ({"keep_count": 2.5}, 400),
    ({"keep_count": True}, 400),
    ({"keep_count": None}, 400),
    ({"keep_count": 10**40}, 400),
    ({"keep_count": 3, "dry_run": "yes"}, 400),
    ({"keep_count": 3, "delete_everything": True}, 400),
    ({"policy": {"keep_within": "forever"}}, 400),
    ({"policy": {"keep_lastt": 3}}, 400),
    ({"policy": "keep_last=3"}, 400),
    ({"keep_count": 3, "policy": {"keep_last": 2}}, 400),
    ([3], 400),
]


@pytest.mark.parametrize("path", [thread_path(SEED_THREAD_ID), "/api/cleanup/all"])
@pytest.mark.parametrize(("body", "status"), BAD_BODIES)
def test_bad_bodies_are_refused_and_delete_nothing(
    client: Client, saver: InMemorySaver, path: str, body: Any, status: int
) -> None:
    before = counts(saver)

    r = client.post(path, json=body)

    assert r.status == status, r.body
    assert r.json()["status"] == "error" and r.json()["message"]
    assert counts(saver) == before


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{keep_count: 3", "application/json", 400),
        (b"\xff\xfe\x00", "application/json", 400),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 413),
        (b"[" * 30_000 + b"]" * 30_000, "application/json", 400),
        (b'{"keep_count": 3}', "text/plain", 415),
        (b"keep_count=3", "application/x-www-form-urlencoded", 415),
        (b'{"keep_count": NaN}', "application/json", 400),
        (b'{"keep_count": 1' + b"0" * 5000 + b"}", "application/json", 400),
        (b" " + b"x" * MAX_BODY_BYTES, "application/json", 413),
    ],
)
def test_malformed_bodies_are_refused_and_delete_nothing(
    client: Client, saver: InMemorySaver, body: bytes, content_type: str, status: int
) -> None:
    before = counts(saver)

    r = client.request(
        "POST", "/api/cleanup/all", body=body, headers={"Content-Type": content_type}
    )

    assert r.status == status, r.body
    assert r.json()["status"] == "error"
    assert counts(saver) == before


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/api/cleanup/all", "POST"),
        ("DELETE", thread_path(SEED_THREAD_ID), "POST"),
        ("POST", "/api/cleanup/stats", "GET"),
        ("PUT", "/healthz", "GET"),
    ],
)
def test_wrong_method_is_a_405_json(
    client: Client, saver: InMemorySaver, method: str, path: str, allow: str
) -> None:
    before = counts(saver)

    r = client.request(method, path, json_body={"keep_count": 1})

    assert r.status == 405 and r.json()["error"] == "method_not_allowed"
    assert r.headers["allow"] == allow
    assert counts(saver) == before


@pytest.mark.parametrize("query", ["?explain=maybe", "?keep_count=1", "?explain=1&explain=0"])
def test_bad_query_is_a_400_json(client: Client, saver: InMemorySaver, query: str) -> None:
    before = counts(saver)

    r = client.post(thread_path(SEED_THREAD_ID) + query, json={"keep_count": 1})

    assert r.status == 400
    assert counts(saver) == before


@pytest.mark.parametrize("query", ["top=0", "top=x", "limit=100000", "top=2&limit=2", "color=red"])
def test_bad_stats_query_is_a_400_json(client: Client, query: str) -> None:
    r = client.get(f"/api/cleanup/stats?{query}")

    assert r.status == 400 and r.json()["error"] in ("invalid_parameter", "unknown_parameter")


@pytest.mark.parametrize("path", ["/api/cleanup/nope", "/api/cleanup/thread/", "/api/cleanup/"])
def test_unknown_path_is_a_404_json(client: Client, path: str) -> None:
    r = client.request("POST", path)

    assert r.status == 404 and r.json()["status"] == "error"


# -- authentication -------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/api/cleanup/stats"),
    ("POST", "/api/cleanup/all"),
    ("POST", "/api/cleanup/thread/x"),
    ("GET", "/api/cleanup/jobs"),
    ("GET", "/api/cleanup/jobs/x"),
    ("GET", "/api/cleanup/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/api/cleanup/nope"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", ""]
)
def test_every_endpoint_but_healthz_needs_the_token(
    client: Client, saver: InMemorySaver, method: str, path: str, header: str | None
) -> None:
    before = counts(saver)
    headers = {} if header is None else {"Authorization": header}

    r = client.request(method, path, json_body={"keep_count": 1}, headers=headers, auth=False)

    assert r.status == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert counts(saver) == before


def test_healthz_needs_no_token(client: Client) -> None:
    r = client.get("/healthz", auth=False)

    assert r.status == 200 and r.json() == {"status": "ok"}
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("kind", ADAPTERS)
def test_healthz_is_503_with_the_reason_when_the_store_fails(kind: str, tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "s.db"), check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    conn.close()
    with api_client(kind, saver, POLICY) as client:
        r = client.get("/healthz", auth=False)

    assert r.status == 503
    assert r.json()["status"] == "unavailable" and "closed" in r.json()["reason"]


@pytest.mark.parametrize("kind", ADAPTERS)
def test_unexpected_errors_are_a_500_json_without_traceback(kind: str, tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "s.db"), check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    conn.close()
    with api_client(kind, saver, POLICY) as client:
        r = client.get("/api/cleanup/stats")
        metrics_text = client.get("/metrics").body.decode()

    assert r.status == 500
    data = r.json()
    assert data["error"] == "internal_error" and data["incident"]
    assert "Traceback" not in r.body.decode() and "sqlite3" not in r.body.decode()
    assert 'langgraph_retention_http_unexpected_errors_total{endpoint="stats"}' in metrics_text


# -- health, metrics, OpenAPI -----------------------------------------------------------------


def test_metrics_are_prometheus_text_from_the_shared_registry(client: Client) -> None:
    client.post(thread_path(SEED_THREAD_ID), json={"keep_count": 2})

    r = client.get("/metrics")

    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.body.decode()
    assert "langgraph_retention_deleted_checkpoints_total" in text
    assert 'langgraph_retention_http_requests_total{endpoint="thread",status="200"}' in text


def test_openapi_document_lists_every_endpoint(client: Client) -> None:
    doc = client.get("/api/cleanup/openapi.json").json()

    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/api/cleanup/thread/{thread_id}",
        "/api/cleanup/all",
        "/api/cleanup/stats",
        "/api/cleanup/jobs",
        "/api/cleanup/jobs/{job_id}",
        "/api/cleanup/openapi.json",
        "/healthz",
        "/metrics",
    }


from urllib.parse import quote  # noqa: E402  (used by the paging test)


def test_a_sweep_longer_than_the_wait_answers_202_with_its_job(saver: InMemorySaver) -> None:
    gate = threading.Event()

    def slow(_thread_id: str) -> RetentionPolicy:
        gate.wait(30)
        return POLICY

    with api_client("flask", saver, slow, sync_wait=0.05) as client:
        r = client.post("/api/cleanup/all", json={"keep_count": 2})
        gate.set()
        job = _wait_for_job(client, r.json()["job_id"])

    assert r.status == 202 and r.json()["status"] == "running"
    assert job["status"] == "completed" and job["result"]["total_deleted"] > 0


def test_all_with_explain_gives_each_threads_decisions(client: Client) -> None:
    data = client.post("/api/cleanup/all?explain=1", json={"keep_count": 2, "dry_run": True})

    results = data.json()["results"]
    assert all(sum(d["kept"] for d in r["decisions"]) == 2 for r in results.values())


@pytest.mark.parametrize("kind", ADAPTERS)
@pytest.mark.parametrize("remote", ["192.0.2.7", "2001:db8::1"])
def test_without_a_token_only_loopback_clients_are_answered(
    kind: str, saver: InMemorySaver, remote: str
) -> None:
    before = counts(saver)
    with api_client(kind, saver, POLICY, token=None, remote=remote) as client:
        prune = client.post("/api/cleanup/all", json={"keep_count": 1})
        health = client.get("/healthz")

    assert prune.status == 403 and prune.json()["error"] == "forbidden"
    assert health.status == 200
    assert counts(saver) == before


@pytest.mark.parametrize("kind", ADAPTERS)
@pytest.mark.parametrize("remote", ["127.0.0.1", "127.8.9.10", "::1"])
def test_without_a_token_loopback_clients_are_answered(
    kind: str, saver: InMemorySaver, remote: str
) -> None:
    with api_client(kind, saver, POLICY, token=None, remote=remote) as client:
        r = client.get("/api/cleanup/stats")

    assert r.status == 200
