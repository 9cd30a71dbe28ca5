"""Property-based fuzz of every endpoint in the API's own OpenAPI document, through both
adapters: valid, half-valid and garbage requests never get a 5xx, always get JSON, and a
refused request (4xx) never deletes a checkpoint."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.checkpoint.memory import InMemorySaver

from langgraph_retention import RetentionPolicy, stats
from langgraph_retention.demo import SEED_THREAD_ID, build_agent, populate
from langgraph_retention.web import openapi

from .web_clients import ADAPTERS, Client, api_client

DOC = openapi.document()
OPERATIONS = [
    (path, method.upper(), op) for path, item in DOC["paths"].items() for method, op in item.items()
]
THREADS = [(SEED_THREAD_ID, 2), ("a/b c", 2), ("客服", 1)]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = DOC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the schema allows, and (one time in four) any JSON value instead."""
    schema = _resolve(schema)
    kind = schema.get("type")
    if "enum" in schema:
        valid: st.SearchStrategy[Any] = st.sampled_from(schema["enum"])
    elif kind == "integer":
        valid = st.integers(schema.get("minimum"), schema.get("maximum"))
    elif kind == "boolean":
        valid = st.booleans()
    elif kind == "string":
        valid = TEXT
    elif kind == "object":
        props = {k: from_schema(v) for k, v in schema.get("properties", {}).items()}
        valid = st.fixed_dictionaries({}, optional=props)
    else:
        valid = JSON_VALUES
    return st.one_of(valid, valid, valid, JSON_VALUES)


@st.composite
def requests_for(draw: st.DrawFn, path: str, method: str, op: dict[str, Any]) -> dict[str, Any]:
    """One request for an operation: its path parameters, query and body fuzzed."""
    url = path
    query: list[tuple[str, str]] = []
    for param in op.get("parameters", []):
        if param["in"] == "path":
            value = draw(st.sampled_from([tid for tid, _ in THREADS]) | TEXT.filter(bool))
            url = url.replace("{" + param["name"] + "}", quote(value, safe=""))
        elif draw(st.booleans()):
            value = draw(from_schema(param["schema"]))
            query.append((param["name"], value if isinstance(value, str) else json.dumps(value)))
    if draw(st.integers(0, 9)) == 0:
        query.append((draw(TEXT.filter(bool)), draw(TEXT)))
    body = b""
    content_type = "application/json"
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    choice = draw(st.integers(0, 9))
    if "schema" in schema and choice < 6:
        value = draw(from_schema(schema["schema"]))
        if choice == 5 and isinstance(value, dict):
            value[draw(TEXT)] = draw(JSON_VALUES)
        body = json.dumps(value).encode()
    elif choice < 8:
        body = json.dumps(draw(JSON_VALUES)).encode()
    elif choice == 8:
        body = draw(st.binary(max_size=40))
    if draw(st.integers(0, 9)) == 0:
        content_type = draw(st.sampled_from(["text/plain", "application/x-www-form-urlencoded"]))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(METHODS))
    target = url + ("?" + urlencode(query) if query else "")
    return {"method": method, "path": target, "body": body, "content_type": content_type}


ANY_REQUEST = st.one_of([requests_for(p, m, op) for p, m, op in OPERATIONS])


@pytest.fixture(scope="module")
def template() -> InMemorySaver:
    saver = InMemorySaver()
    populate(build_agent(saver), THREADS)
    return saver


@pytest.fixture(params=ADAPTERS)
def fuzzed(request: pytest.FixtureRequest, template: InMemorySaver) -> Iterator[Any]:
    saver = InMemorySaver()
    with api_client(request.param, saver, RetentionPolicy(keep_last=3)) as client:
        yield client, saver, template


def _reset(saver: InMemorySaver, template: InMemorySaver) -> None:
    for name in ("storage", "writes", "blobs"):
        target = getattr(saver, name)
        target.clear()
        target.update(copy.deepcopy(getattr(template, name)))


def _counts(saver: InMemorySaver) -> dict[str, int]:
    return {tid: ts.checkpoints for tid, ts in stats(saver).threads.items()}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(req=ANY_REQUEST)
def test_no_request_gets_a_5xx_and_refused_ones_delete_nothing(
    fuzzed: tuple[Client, InMemorySaver, InMemorySaver], req: dict[str, Any]
) -> None:
    client, saver, template = fuzzed
    _reset(saver, template)
    before = _counts(saver)

    r = client.request(
        req["method"], req["path"], body=req["body"], headers={"Content-Type": req["content_type"]}
    )
    running = client.api.jobs.running()
    if running is not None:
        running.done.wait(30)

    assert r.status < 500, (req, r.body)
    if not (r.status == 200 and req["path"].startswith("/metrics")):
        assert isinstance(r.json(), dict), (req, r.body)
    if r.status >= 400:
        assert r.json()["status"] == "error" and r.json()["message"], (req, r.body)
        assert _counts(saver) == before, req
