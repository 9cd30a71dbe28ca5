"""Framework-neutral requests and responses, the JSON error shape, and the API's counters.

Adapters (Flask, FastAPI) turn their request into a `Request` and send back a `Response`;
everything between lives in `core` and never imports a web framework.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from langgraph_retention.metrics import REGISTRY

__all__ = [
    "HTTP_FAILURES",
    "HTTP_REQUESTS",
    "JSON_TYPE",
    "HttpError",
    "Request",
    "Response",
    "error_body",
]

JSON_TYPE = "application/json"

HTTP_REQUESTS = Counter(
    "langgraph_retention_http_requests",
    "HTTP API requests answered, by endpoint and status code",
    ["endpoint", "status"],
    registry=REGISTRY,
)
HTTP_FAILURES = Counter(
    "langgraph_retention_http_unexpected_errors",
    "HTTP API requests that failed on an unexpected error (answered 500, logged)",
    ["endpoint"],
    registry=REGISTRY,
)


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request as the core sees it: the path relative to where the API is mounted
    (`/api/cleanup/stats`, `/healthz`), already percent-decoded; header names lower-case;
    at most the allowed body (`body_too_large` says the client sent more); the client's
    address as the server saw it."""

    method: str
    path: str
    query: Sequence[tuple[str, str]] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    body_too_large: bool = False
    #: The client's address (None: unknown, e.g. a unix socket).
    remote: str | None = None


@dataclass(slots=True)
class Response:
    """What the adapter sends back."""

    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data: Any, headers: Mapping[str, str] | None = None) -> Response:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return cls(status, text.encode(), JSON_TYPE + "; charset=utf-8", dict(headers or {}))

    def data(self) -> Any:
        """The JSON body, decoded (tests, the job waiter)."""
        return json.loads(self.body)


def error_body(error: str, message: str, **extra: Any) -> dict[str, Any]:
    """Every error answer: a machine code, a sentence for people, and details."""
    return {"status": "error", "error": error, "message": message, **extra}


class HttpError(Exception):
    """A request the API refuses: its status, code and message become the JSON answer."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> Response:
        return Response.json(
            self.status, error_body(self.error, self.message, **self.extra), self.headers
        )
