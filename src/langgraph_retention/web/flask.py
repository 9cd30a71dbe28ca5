"""The Flask adapter: `make_blueprint` mounts the API into your app (sync savers);
`make_app` is the standalone app `langgraph-retention serve` runs on waitress."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask
from flask import Response as FlaskResponse
from flask import request as flask_request
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from langgraph_retention.rules import PolicySource

from .core import Api
from .http import HTTP_FAILURES, Request, Response, error_body

__all__ = ["make_app", "make_blueprint"]

#: Every method reaches the core, which answers 405 (JSON) for the wrong one.
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class _AnyPath(PathConverter):
    """`path`, newlines included (thread ids may hold any character)."""

    regex = r"[\s\S]*?"
    part_isolating = False  # werkzeug guesses True for a regex without "/"


def _register_converter(state: BlueprintSetupState) -> None:
    state.app.url_map.converters.setdefault("anypath", _AnyPath)


def _request(path: str, max_body: int) -> Request:
    length = flask_request.content_length
    if length is not None and length > max_body:
        body, too_large = b"", True
    else:
        body = flask_request.stream.read(max_body + 1)
        too_large = len(body) > max_body
    return Request(
        method=flask_request.method,
        path=path,
        query=list(flask_request.args.items(multi=True)),
        headers={k.lower(): v for k, v in flask_request.headers.items()},
        body=body[:max_body],
        body_too_large=too_large,
        remote=flask_request.remote_addr,
    )


def _send(response: Response) -> FlaskResponse:
    return FlaskResponse(
        response.body,
        status=response.status,
        headers=response.headers,
        content_type=response.content_type,
    )


def make_blueprint(
    saver: Any,
    policy: PolicySource | None,
    *,
    token: str | None = None,
    name: str = "langgraph_retention",
    api: Api | None = None,
    **options: Any,
) -> Blueprint:
    """A Flask blueprint serving the cleanup API for a sync `saver`: the seed's
    `/api/cleanup/...` endpoints, `/healthz` and `/metrics`. `token`: the bearer token
    every endpoint but `/healthz` requires (None: no authentication, loopback only).
    `options` go to `Api` (max_body, sync_wait, stats_cap, jobs)."""
    core = api or Api(saver, policy, token=token, **options)
    bp = Blueprint(name, __name__)
    bp.record_once(_register_converter)

    def health() -> FlaskResponse:
        return _send(core.handle(_request("/healthz", core.max_body)))

    def prom() -> FlaskResponse:
        return _send(core.handle(_request("/metrics", core.max_body)))

    def cleanup(rest: str = "") -> FlaskResponse:
        return _send(core.handle(_request(f"/api/cleanup/{rest}", core.max_body)))

    for rule, view in (
        ("/healthz", health),
        ("/metrics", prom),
        ("/api/cleanup/", cleanup),
        ("/api/cleanup/<anypath:rest>", cleanup),
    ):
        bp.add_url_rule(
            rule,
            f"{view.__name__}{'_root' if rule.endswith('/') else ''}",
            view,
            methods=_METHODS,
            provide_automatic_options=False,
            strict_slashes=False,
            merge_slashes=False,
        )
    bp.api = core  # type: ignore[attr-defined]
    return bp


def _json_error(exc: HTTPException) -> FlaskResponse:
    code = exc.code or 500
    error = (exc.name or "error").lower().replace(" ", "_")
    return _send(Response.json(code, error_body(error, exc.description or error)))


def _internal_error(exc: Exception) -> FlaskResponse:
    if isinstance(exc, HTTPException):
        return _json_error(exc)
    HTTP_FAILURES.labels("flask").inc()
    return _send(Response.json(500, error_body("internal_error", "see the server log")))


def make_app(
    saver: Any, policy: PolicySource | None, *, token: str | None = None, **options: Any
) -> Flask:
    """A Flask app holding only the API, every error as JSON, never in debug mode."""
    app = Flask("langgraph_retention")
    app.debug = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.url_map.merge_slashes = False
    app.register_blueprint(make_blueprint(saver, policy, token=token, **options))
    app.register_error_handler(HTTPException, _json_error)
    app.register_error_handler(Exception, _internal_error)
    return app
