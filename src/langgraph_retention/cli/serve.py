"""`langgraph-retention serve`: the cleanup API on waitress (a production WSGI server,
never Flask's development server), in the foreground until SIGTERM.

Without a token it listens on loopback only; SIGTERM or SIGINT stop accepting, let the
requests in flight finish (and a running sweep job end after its batch), then exit 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from langgraph_retention.config import read_token
from langgraph_retention.errors import UsageError
from langgraph_retention.web.auth import is_loopback

from ._common import (
    EXIT_OK,
    add_policy_args,
    add_url_arg,
    opened,
    policy_from_args,
    port,
    positive_int,
    settings_from_args,
)

__all__ = ["add_parser", "run"]

logger = logging.getLogger("langgraph_retention.web")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5000
#: How long a stop waits for requests in flight before closing their connections.
DRAIN_SECONDS = 30.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sv = sub.add_parser(
        "serve",
        help="serve the cleanup HTTP API (the seed's endpoints) until SIGTERM",
        description="Serve POST /api/cleanup/thread/<id>, POST /api/cleanup/all, GET "
        "/api/cleanup/stats, job progress, /healthz and /metrics on waitress. Requests "
        "without keep_count use the policy flags (or --config). A non-loopback --host "
        "needs a token.",
    )
    add_url_arg(sv)
    add_policy_args(sv)
    sv.add_argument("--host", help=f"address to listen on (default: {DEFAULT_HOST})")
    sv.add_argument("--port", type=port, help=f"TCP port (default: {DEFAULT_PORT})")
    sv.add_argument(
        "--token",
        help="bearer token every endpoint but /healthz requires (prefer "
        "$LANGGRAPH_RETENTION_TOKEN or --token-file: a flag shows in ps)",
    )
    sv.add_argument("--token-file", metavar="FILE", help="read the bearer token from FILE")
    sv.add_argument(
        "--threads", type=positive_int, default=8, metavar="N", help="worker threads (default 8)"
    )


def _policy(args: argparse.Namespace, settings: Any) -> Any:
    """The default policy, or None: then every request must send keep_count."""
    try:
        return policy_from_args(args, settings)
    except UsageError as exc:
        if str(exc).startswith("no policy"):
            return None
        raise


def run(args: argparse.Namespace) -> int:
    from waitress import wasyncore
    from waitress.server import create_server

    from langgraph_retention.web.flask import make_app

    settings = settings_from_args(args)
    host = args.host or settings.serve.host or DEFAULT_HOST
    listen_port = args.port or settings.serve.port or DEFAULT_PORT
    token = read_token(args.token, args.token_file) or read_token(
        settings.token, settings.token_file
    )
    if token is None and not is_loopback(host):
        raise UsageError(
            f"refusing to serve on {host} without a token: the API deletes data. Set "
            "$LANGGRAPH_RETENTION_TOKEN (or --token-file), or listen on 127.0.0.1"
        )
    policy = _policy(args, settings)
    with opened(args.url) as saver:
        app = make_app(saver, policy, token=token)
        sockets: dict[int, Any] = {}
        server = create_server(
            app,
            map=sockets,
            host=host,
            port=listen_port,
            threads=args.threads,
            ident="langgraph-retention",
            expose_tracebacks=False,
            clear_untrusted_proxy_headers=True,
        )
        stopping = threading.Event()

        def stop(signum: int, _frame: FrameType | None) -> None:
            logger.info("%s: finishing the requests in flight", signal.Signals(signum).name)
            stopping.set()

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        logger.info(
            "serving the cleanup API on http://%s:%s (%s)",
            host,
            server.effective_port,  # type: ignore[union-attr]
            "bearer token required" if token else "no token: loopback only",
        )
        try:
            while not stopping.is_set():
                wasyncore.loop(timeout=0.2, map=sockets, count=1)
            # A running sweep ends after its batch (a request waiting on it then answers),
            # then every request in flight is answered before the connections close.
            app.blueprints["langgraph_retention"].api.jobs.stop_all()  # type: ignore[attr-defined]
            _drain(server, sockets, wasyncore)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wasyncore.close_all(sockets)
    logger.info("server stopped")
    return EXIT_OK


def _drain(server: Any, sockets: dict[int, Any], wasyncore: Any) -> None:
    """Stop accepting, then run the loop until every request in flight was answered."""
    wasyncore.dispatcher.close(server)  # the listening socket only; the trigger stays
    dispatcher = server.task_dispatcher
    deadline = time.monotonic() + DRAIN_SECONDS

    def busy() -> bool:
        if dispatcher.queue or dispatcher.active_count:
            return True
        return any(
            getattr(ch, "requests", None) or getattr(ch, "total_outbufs_len", 0)
            for ch in list(sockets.values())
        )

    while busy() and time.monotonic() < deadline:
        wasyncore.loop(timeout=0.05, map=sockets, count=1)
    dispatcher.shutdown(timeout=5)
