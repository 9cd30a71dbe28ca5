"""The FastAPI adapter: `make_router` mounts the API into your async app (async savers:
`aprune_thread`, `asweep`, `astats_page`; sync savers run in worker threads)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse

from langgraph_retention.rules import PolicySource

from .core import Api
from .http import Request, Response

__all__ = ["make_router"]

_PREFIX = "/api/cleanup/"
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def _request(req: StarletteRequest, path: str, max_body: int) -> Request:
    too_large = False
    declared = req.headers.get("content-length")
    chunks: list[bytes] = []
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        too_large = True
    else:
        size = 0
        async for chunk in req.stream():
            size += len(chunk)
            if size > max_body:
                too_large = True
                break
            chunks.append(chunk)
    return Request(
        method=req.method,
        path=path,
        query=list(req.query_params.multi_items()),
        headers={k.lower(): v for k, v in req.headers.items()},
        body=b"".join(chunks),
        body_too_large=too_large,
        remote=req.client.host if req.client is not None else None,
    )


class _AnyPath(Convertor[str]):
    """Starlette's `path`, newlines included (thread ids may hold any character)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("lgr_anypath", _AnyPath())


def _undecoded_rest(req: StarletteRequest, rest: str) -> str:
    """The path after /api/cleanup/, percent-decoded exactly once from the raw path (some
    servers and test clients decode `scope["path"]` twice: `%252F` would become `/`)."""
    raw = req.scope.get("raw_path")
    if not isinstance(raw, bytes):
        return rest
    text = raw.decode("latin-1")
    at = text.find(_PREFIX)
    if at < 0:
        return rest
    return unquote(text[at + len(_PREFIX) :].encode("latin-1").decode("utf-8", "replace"))


def _send(response: Response) -> StarletteResponse:
    return StarletteResponse(
        content=response.body,
        status_code=response.status,
        headers=response.headers,
        media_type=response.content_type,
    )


def make_router(
    saver: Any,
    policy: PolicySource | None,
    *,
    token: str | None = None,
    api: Api | None = None,
    **options: Any,
) -> APIRouter:
    """A FastAPI router serving the same endpoints, JSON and errors as `make_blueprint`.
    `options` go to `Api` (max_body, sync_wait, stats_cap, jobs)."""
    core = api or Api(saver, policy, token=token, **options)
    router = APIRouter()

    async def health(request: StarletteRequest) -> StarletteResponse:
        return _send(await core.ahandle(await _request(request, "/healthz", core.max_body)))

    async def prom(request: StarletteRequest) -> StarletteResponse:
        return _send(await core.ahandle(await _request(request, "/metrics", core.max_body)))

    async def cleanup(request: StarletteRequest, rest: str) -> StarletteResponse:
        path = f"/api/cleanup/{_undecoded_rest(request, rest)}"
        return _send(await core.ahandle(await _request(request, path, core.max_body)))

    for rule, view in (
        ("/healthz", health),
        ("/metrics", prom),
        ("/api/cleanup/{rest:lgr_anypath}", cleanup),
    ):
        router.add_api_route(rule, view, methods=_METHODS, include_in_schema=False)
    router.api = core  # type: ignore[attr-defined]
    return router
