"""Bearer-token authentication, compared in constant time."""

from __future__ import annotations

import hmac
import ipaddress

from .http import HttpError

__all__ = ["check_bearer", "check_client", "is_loopback"]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="langgraph-retention"'}


def check_bearer(header: str | None, token: str | None) -> None:
    """Pass when no token is configured or `Authorization: Bearer <token>` matches;
    401 otherwise (the same answer for a missing and a wrong token)."""
    if token is None:
        return
    scheme, _, given = (header or "").strip().partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8")
    )
    if not ok:
        raise HttpError(
            401,
            "unauthorized",
            "send Authorization: Bearer <token>" if not header else "wrong token",
            headers=_CHALLENGE,
        )


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or `localhost`) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def check_client(remote: str | None, token: str | None) -> None:
    """Without a token the API answers loopback clients only (403 for anyone else): the
    deleting endpoints are never open to the network."""
    if token is None and remote is not None and not is_loopback(remote):
        raise HttpError(
            403,
            "forbidden",
            "this API has no token configured, so it only answers clients on this machine",
        )
