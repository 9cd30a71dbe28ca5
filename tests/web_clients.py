"""The API mounted in a real Flask app and a real FastAPI app, behind one small client
interface, so every behaviour test runs through both adapters unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask

from langgraph_retention.web import Api, make_blueprint, make_router

ADAPTERS = ["flask", "fastapi"]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Answer:
    """A response: status, body, headers (names lower-case)."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """`request` through the adapter's own test client; `token` sent unless told not to."""

    def __init__(self, raw: Any, kind: str, token: str | None, api: Api) -> None:
        self.api = api
        self.raw = raw
        self.kind = kind
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> Answer:
        sent = dict(headers or {})
        if auth and self.token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        if self.kind == "flask":
            r = self.raw.open(path, method=method, data=body, headers=sent)
            return Answer(r.status_code, r.data, {k.lower(): v for k, v in r.headers.items()})
        r = self.raw.request(method, path, content=body, headers=sent)
        return Answer(r.status_code, r.content, {k.lower(): v for k, v in r.headers.items()})

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> Answer:
        return self.request("POST", path, json_body=json, **kw)


def thread_path(thread_id: str) -> str:
    return "/api/cleanup/thread/" + quote(thread_id, safe="")


@contextmanager
def api_client(
    kind: str,
    saver: Any,
    policy: Any,
    *,
    token: str | None = TOKEN,
    remote: str = "127.0.0.1",
    **options: Any,
) -> Iterator[Client]:
    """The API over `saver` in a fresh app of `kind` (flask: sync engine; fastapi: async)."""
    core = Api(saver, policy, token=token, **options)
    if kind == "flask":
        app = Flask("test_app")
        app.register_blueprint(make_blueprint(saver, policy, api=core))
        flask_client = app.test_client()
        flask_client.environ_base["REMOTE_ADDR"] = remote
        yield Client(flask_client, kind, token, core)
        return
    client_address = (remote, 50000)
    fast = FastAPI()
    fast.include_router(make_router(saver, policy, api=core))
    with TestClient(fast, raise_server_exceptions=False, client=client_address) as client:
        yield Client(client, kind, token, core)
