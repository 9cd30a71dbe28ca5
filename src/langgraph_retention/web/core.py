"""The API itself, framework-neutral: route a `Request`, check it, run the engine, build the
`Response`. `handle` serves sync savers (Flask), `ahandle` async ones (FastAPI); both share
the routing, validation and response code, so both answer every request the same way."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable
from typing import Any

from langgraph_retention import engine, metrics
from langgraph_retention.config import describe_policy
from langgraph_retention.errors import RetentionError, SweepLockHeld, UsageError
from langgraph_retention.report import PruneReport
from langgraph_retention.rules import PolicySource

from . import openapi
from .auth import check_bearer, check_client
from .bodies import StatsFold, page_body, thread_body
from .http import HTTP_FAILURES, HTTP_REQUESTS, HttpError, Request, Response, error_body
from .jobs import Job, Jobs
from .params import (
    ALL_FIELDS,
    MAX_BODY_BYTES,
    THREAD_FIELDS,
    PruneParams,
    StatsParams,
    parse_body,
    prune_params,
    query_flags,
    stats_params,
)

__all__ = ["DEFAULT_STATS_CAP", "DEFAULT_SYNC_WAIT", "Api"]

logger = logging.getLogger("langgraph_retention.web")

#: How long `POST /all` without `background` waits for its sweep before answering 202.
DEFAULT_SYNC_WAIT = 240.0
#: Threads listed by `GET /stats` without paging (totals always cover every thread).
DEFAULT_STATS_CAP = 1000

#: (endpoint, path pattern, methods): the whole API; `healthz` needs no token.
ROUTES: tuple[tuple[str, re.Pattern[str], frozenset[str]], ...] = tuple(
    (name, re.compile(pattern, re.S), frozenset(methods))
    for name, pattern, methods in (
        ("healthz", r"/healthz", {"GET"}),
        ("metrics", r"/metrics", {"GET"}),
        ("openapi", r"/api/cleanup/openapi\.json", {"GET"}),
        ("stats", r"/api/cleanup/stats", {"GET"}),
        ("all", r"/api/cleanup/all", {"POST"}),
        ("jobs", r"/api/cleanup/jobs", {"GET"}),
        ("job", r"/api/cleanup/jobs/(?P<job_id>[^/]+)", {"GET"}),
        ("thread", r"/api/cleanup/thread/(?P<thread_id>.+)", {"POST"}),
    )
)


def _route(req: Request) -> tuple[str, dict[str, str]]:
    for name, pattern, methods in ROUTES:
        match = pattern.fullmatch(req.path)
        if match is None:
            continue
        if req.method.upper() not in methods:
            allowed = ", ".join(sorted(methods))
            raise HttpError(
                405,
                "method_not_allowed",
                f"{req.method} is not allowed on {req.path}; use {allowed}",
                headers={"Allow": allowed},
            )
        return name, match.groupdict()
    raise HttpError(404, "not_found", f"no such endpoint: {req.path}"[:300])


class Api:
    """The cleanup API over one saver and its default policy (None: requests must send
    `keep_count` or `policy`). `token` None means no authentication, and then only
    loopback clients are answered (403 for others; `/healthz` stays open)."""

    def __init__(
        self,
        saver: Any,
        policy: PolicySource | None,
        *,
        token: str | None = None,
        jobs: Jobs | None = None,
        max_body: int = MAX_BODY_BYTES,
        sync_wait: float = DEFAULT_SYNC_WAIT,
        stats_cap: int = DEFAULT_STATS_CAP,
    ) -> None:
        if token is not None and not token.strip():
            raise UsageError("the API token is empty")
        self.saver = saver
        self.policy = policy
        self.token = token
        self.jobs = jobs or Jobs()
        self.max_body = max_body
        self.sync_wait = sync_wait
        self.stats_cap = stats_cap

    # -- the shared front half: route, authenticate, validate ----------------------------

    def _prepare(self, req: Request) -> tuple[str, dict[str, str], Any]:
        name, args = _route(req) if req.path == "/healthz" else ("", {})
        if name != "healthz":
            check_client(req.remote, self.token)
            check_bearer(req.headers.get("authorization"), self.token)
            name, args = _route(req)
        if name in ("thread", "all"):
            if req.body_too_large:
                raise HttpError(
                    413, "body_too_large", f"the body is larger than {self.max_body} bytes"
                )
            explain = query_flags(req.query, ("explain",)).get("explain", False)
            body = parse_body(req.body, req.headers.get("content-type"))
            fields = THREAD_FIELDS if name == "thread" else ALL_FIELDS
            return name, args, prune_params(body, self.policy, known=fields, explain=explain)
        if name == "stats":
            return name, args, stats_params(req.query)
        query_flags(req.query)  # no parameters elsewhere
        return name, args, None

    # -- sync ------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        """Answer `req` with the sync engine (sync savers)."""
        name = "unknown"
        try:
            name, args, params = self._prepare(req)
            response = self._sync(name, args, params)
        except Exception as exc:
            response = self._failure(exc, req, name)
        return _sent(name, response)

    def _sync(self, name: str, args: dict[str, str], params: Any) -> Response:
        if name == "healthz":
            try:
                engine.check_store(self.saver)
            except Exception as exc:
                return self._unhealthy(exc)
            return Response.json(200, {"status": "ok"})
        if name == "thread":
            tid = args["thread_id"]
            report = engine.prune_thread(
                self.saver, tid, params.policy, dry_run=params.dry_run, explain=params.explain
            )
            return self._thread(tid, report, params)
        if name == "all":
            job, created = self.jobs.start_thread(
                lambda j: self._sweep(j, params), dry_run=params.dry_run, policy=self._says(params)
            )
            if created and not params.background:
                job.done.wait(self.sync_wait)
            return self._job_answer(job, created, params)
        if name == "stats":
            if params.paged:
                rows, after = engine.stats_page(self.saver, after=params.after, limit=params.limit)
                return Response.json(200, page_body(rows, after))
            fold = StatsFold(top=params.top, cap=params.top or self.stats_cap)
            for tid, ts in engine.iter_stats(self.saver):
                fold.add(tid, ts)
            return Response.json(200, fold.body())
        return self._plain(name, args)

    def _sweep(self, job: Job, params: PruneParams) -> PruneReport:
        return engine.sweep(self.saver, params.policy, **_sweep_options(job, params))

    # -- async -----------------------------------------------------------------------------

    async def ahandle(self, req: Request) -> Response:
        """Answer `req` with the async engine (async savers; sync ones run in threads)."""
        name = "unknown"
        try:
            name, args, params = self._prepare(req)
            response = await self._async(name, args, params)
        except Exception as exc:
            response = self._failure(exc, req, name)
        return _sent(name, response)

    async def _async(self, name: str, args: dict[str, str], params: Any) -> Response:
        if name == "healthz":
            try:
                await engine.acheck_store(self.saver)
            except Exception as exc:
                return self._unhealthy(exc)
            return Response.json(200, {"status": "ok"})
        if name == "thread":
            tid = args["thread_id"]
            report = await engine.aprune_thread(
                self.saver, tid, params.policy, dry_run=params.dry_run, explain=params.explain
            )
            return self._thread(tid, report, params)
        if name == "all":
            job, created = self.jobs.start_task(
                lambda j: self._asweep(j, params), dry_run=params.dry_run, policy=self._says(params)
            )
            if created and not params.background:
                await _wait(job, self.sync_wait)
            return self._job_answer(job, created, params)
        if name == "stats":
            return await self._astats(params)
        return self._plain(name, args)

    def _asweep(self, job: Job, params: PruneParams) -> Awaitable[PruneReport]:
        return engine.asweep(self.saver, params.policy, **_sweep_options(job, params))

    async def _astats(self, params: StatsParams) -> Response:
        if params.paged:
            rows, after = await engine.astats_page(
                self.saver, after=params.after, limit=params.limit or engine.DEFAULT_PAGE_SIZE
            )
            return Response.json(200, page_body(rows, after))
        fold = StatsFold(top=params.top, cap=params.top or self.stats_cap)
        async for tid, ts in engine.aiter_stats(self.saver):
            fold.add(tid, ts)
        return Response.json(200, fold.body())

    # -- the shared back half: answers -----------------------------------------------------

    def _plain(self, name: str, args: dict[str, str]) -> Response:
        """Endpoints that touch no store: metrics, the OpenAPI document, jobs."""
        if name == "metrics":
            data, content_type = metrics.exposition()
            return Response(200, data, content_type)
        if name == "openapi":
            return Response.json(200, openapi.document())
        if name == "jobs":
            return Response.json(200, {"jobs": [j.to_dict() for j in self.jobs.all()]})
        job = self.jobs.get(args["job_id"])
        if job is None:
            raise HttpError(404, "job_not_found", f"no such job: {args['job_id']!r}"[:200])
        return Response.json(200, job.to_dict())

    @staticmethod
    def _says(params: PruneParams) -> str:
        return describe_policy(params.policy)

    @staticmethod
    def _thread(tid: str, report: PruneReport, params: PruneParams) -> Response:
        if tid in report.errors:
            raise HttpError(
                422, "thread_refused", report.errors[tid][:1000], thread_id=tid, deleted_count=0
            )
        if report.kept_checkpoints + report.deleted_checkpoints == 0 and not report.threads_exempt:
            raise HttpError(
                404, "thread_not_found", "no checkpoints for this thread", thread_id=tid
            )
        return Response.json(200, thread_body(tid, report, include_kept=params.include_kept))

    @staticmethod
    def _job_answer(job: Job, created: bool, params: PruneParams) -> Response:
        if job.done.is_set() and created and not params.background:
            if job.status == "locked":
                raise HttpError(409, "sweep_running", job.error or "locked", job_id=job.id)
            if job.status == "failed":
                raise HttpError(503, "sweep_failed", job.error or "failed", job_id=job.id)
            return Response.json(200, job.result())
        body = job.to_dict()
        body["already_running"] = not created
        return Response.json(202, body, {"Location": f"jobs/{job.id}"})

    @staticmethod
    def _unhealthy(exc: Exception) -> Response:
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
        logger.warning("health check failed: %s", reason)
        return Response.json(503, {"status": "unavailable", "reason": reason})

    @staticmethod
    def _failure(exc: Exception, req: Request, name: str) -> Response:
        """Every error as JSON: ours as they say, the store's as 4xx/503, anything else a
        500 with an incident id (the traceback goes to the log, never to the client)."""
        if isinstance(exc, HttpError):
            return exc.response()
        if isinstance(exc, SweepLockHeld):
            return Response.json(409, error_body("sweep_running", str(exc)))
        if isinstance(exc, UsageError):
            return Response.json(400, error_body("invalid_request", str(exc)[:500]))
        if isinstance(exc, ConnectionError | TimeoutError):
            logger.error("%s %s: store unavailable: %s", req.method, req.path, exc)
            return Response.json(503, error_body("store_unavailable", str(exc)[:500]))
        if isinstance(exc, RetentionError):
            return Response.json(422, error_body("cannot_prune", str(exc)[:500]))
        incident = uuid.uuid4().hex[:12]
        HTTP_FAILURES.labels(name).inc()
        logger.error(
            "%s %s failed (incident %s)", req.method, req.path[:200], incident, exc_info=exc
        )
        return Response.json(
            500,
            error_body("internal_error", "see the server log", incident=incident),
        )


#: On every answer: nothing here may be cached or sniffed into another type.
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _sent(name: str, response: Response) -> Response:
    """Count the answer and add the common headers."""
    HTTP_REQUESTS.labels(name, str(response.status)).inc()
    for key, value in _HEADERS.items():
        response.headers.setdefault(key, value)
    return response


def _sweep_options(job: Job, params: PruneParams) -> dict[str, Any]:
    """A job's sweep: progress into the job, stoppable, and (unless a dry run) holding the
    store's sweep lock so no other process sweeps it meanwhile."""
    return {
        "dry_run": params.dry_run,
        "progress": job.progress,
        "stop": job.stop_requested,
        "exclusive": not params.dry_run,
        "explain": params.explain,
    }


async def _wait(job: Job, timeout: float) -> None:
    """Wait for `job` on asyncio (it runs as a task of this loop), at most `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not job.done.is_set() and loop.time() < deadline:
        await asyncio.sleep(0.02)
