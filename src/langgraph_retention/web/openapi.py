"""The OpenAPI 3 document of the API (served at `/api/cleanup/openapi.json`; the fuzz tests
generate requests from it)."""

from __future__ import annotations

from typing import Any

from langgraph_retention.engine import MAX_PAGE_SIZE

from .params import MAX_KEEP_COUNT

__all__ = ["document"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_POLICY = {
    "type": "object",
    "description": "policy settings overriding the server's (keep_within: '7d', ...)",
    "properties": {
        "keep_last": {"type": "integer", "minimum": 1},
        "keep_within": {"type": "string", "example": "7d"},
        "keep_hourly": {"type": "integer", "minimum": 0},
        "keep_daily": {"type": "integer", "minimum": 0},
        "keep_weekly": {"type": "integer", "minimum": 0},
        "keep_monthly": {"type": "integer", "minimum": 0},
        "keep_first": {"type": "boolean"},
        "keep_interrupted": {"type": "boolean"},
        "keep_tagged": {"type": "string"},
        "max_bytes": {"type": "integer", "minimum": 1},
        "timezone": {"type": "string", "example": "UTC"},
        "idle_ttl": {"type": "string", "example": "30d"},
        "max_age": {"type": "string", "example": "90d"},
        "delta_channels": {"type": "string", "example": "keep_ancestry"},
    },
    "additionalProperties": False,
}
_KEEP = {"type": "integer", "minimum": 1, "maximum": MAX_KEEP_COUNT, "example": 10}


def _body(*extra: str) -> dict[str, Any]:
    props: dict[str, Any] = {
        "keep_count": _KEEP,
        "dry_run": {"type": "boolean", "default": False},
        "policy": {"$ref": "#/components/schemas/Policy"},
    }
    for name in extra:
        props[name] = {"type": "boolean", "default": False}
    return {
        "required": False,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": props, "additionalProperties": False}
            }
        },
    }


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "bad input (nothing deleted)",
        401: "missing or wrong bearer token",
        404: "no such thread, job or endpoint",
        405: "wrong method",
        409: "another sweep holds the store's sweep lock",
        413: "body too large",
        415: "body is not JSON",
        422: "the thread cannot be pruned safely (nothing deleted)",
        503: "the store is unavailable",
    }
    return {str(c): _json(words[c], _ERROR) for c in (401, *codes)}


_EXPLAIN = {
    "name": "explain",
    "in": "query",
    "required": False,
    "description": "1: list every checkpoint and why it stays or goes",
    "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
}


def _int_query(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.0 document."""
    auth: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "langgraph-retention cleanup API",
            "version": "1",
            "description": "Prune LangGraph checkpoints: the seed's endpoints, made safe.",
        },
        "security": auth,
        "paths": {
            "/api/cleanup/thread/{thread_id}": {
                "post": {
                    "summary": "Prune one thread (keep its newest keep_count checkpoints)",
                    "parameters": [
                        {
                            "name": "thread_id",
                            "in": "path",
                            "required": True,
                            "description": "URL-encoded; may contain ':', '/', spaces, unicode",
                            "schema": {"type": "string", "minLength": 1},
                        },
                        _EXPLAIN,
                    ],
                    "requestBody": _body("include_kept"),
                    "responses": {
                        "200": _json("pruned (or, with dry_run, what would go)"),
                        **_errors(400, 404, 413, 415, 422, 503),
                    },
                }
            },
            "/api/cleanup/all": {
                "post": {
                    "summary": "Prune every thread (202 and a job when background or long)",
                    "parameters": [_EXPLAIN],
                    "requestBody": _body("background"),
                    "responses": {
                        "200": _json("the finished sweep"),
                        "202": _json("running: poll Location (jobs/<job_id>)"),
                        **_errors(400, 409, 413, 415, 503),
                    },
                }
            },
            "/api/cleanup/stats": {
                "get": {
                    "summary": "Checkpoints per thread: totals, top N, or pages in id order",
                    "parameters": [
                        _int_query("top", "list the N threads with most checkpoints"),
                        _int_query("limit", "page size (paging in thread-id order)"),
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "description": "the next_after of the previous page",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {"200": _json("stats"), **_errors(400, 503)},
                }
            },
            "/api/cleanup/jobs": {
                "get": {"summary": "Recent sweep jobs", "responses": {"200": _json("jobs")}}
            },
            "/api/cleanup/jobs/{job_id}": {
                "get": {
                    "summary": "A sweep job's progress",
                    "parameters": [
                        {
                            "name": "job_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": _json("job"), **_errors(404)},
                }
            },
            "/api/cleanup/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json("OpenAPI")}}
            },
            "/healthz": {
                "get": {
                    "summary": "Whether the store answers (no token needed)",
                    "security": [],
                    "responses": {
                        "200": _json("ok"),
                        "503": _json("unavailable, with the reason"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (the scheduler's registry)",
                    "responses": {
                        "200": {
                            "description": "text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Policy": _POLICY,
                "Error": {
                    "type": "object",
                    "required": ["status", "error", "message"],
                    "properties": {
                        "status": {"type": "string", "enum": ["error"]},
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }
