"""Bearer-token authentication, compared in constant time."""

from __future__ import annotations

import hmac

from .http import HttpError

__all__ = ["check_bearer"]

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
