"""Request validation: bodies, query strings and policy overrides, checked before anything
runs. Every refusal is an `HttpError` (4xx) naming the field; nothing has been touched."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langgraph_retention.config import policy_from_mapping
from langgraph_retention.engine import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from langgraph_retention.errors import UsageError
from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.rules import EXEMPT, PolicySource, Resolution, Resolver, resolver_of

from .http import HttpError

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_KEEP_COUNT",
    "PruneParams",
    "StatsParams",
    "parse_body",
    "prune_params",
    "query_flags",
    "stats_params",
]

#: Request bodies above this are refused (413) unread: ours are a few fields.
MAX_BODY_BYTES = 64 * 1024
#: The largest `keep_count` taken (more is a typo, not a policy).
MAX_KEEP_COUNT = 1_000_000

THREAD_FIELDS = ("keep_count", "dry_run", "include_kept", "policy")
ALL_FIELDS = ("keep_count", "dry_run", "background", "policy")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True, slots=True)
class PruneParams:
    """A checked prune request: the policy to apply and how."""

    policy: PolicySource
    dry_run: bool = False
    explain: bool = False
    include_kept: bool = False
    background: bool = False


@dataclass(frozen=True, slots=True)
class StatsParams:
    """A checked stats request: whole store (`top` largest, or every thread up to a cap),
    or one page (`limit` threads after `after`)."""

    top: int | None = None
    limit: int | None = None
    after: str | None = None

    @property
    def paged(self) -> bool:
        return self.limit is not None or self.after is not None


def parse_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The JSON object of a POST body ({} when empty)."""
    if not body.strip():
        return {}
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HttpError(
            415,
            "unsupported_media_type",
            f"send the body as application/json, not {media or 'no content type'}",
        )
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise HttpError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HttpError(400, "invalid_body", "the body must be a JSON object")
    return data


def _query(query: Sequence[tuple[str, str]], known: Sequence[str]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for key, value in query:
        if key not in known:
            allowed = ", ".join(known) or "none"
            raise HttpError(
                400, "unknown_parameter", f"unknown query parameter {key!r}; known: {allowed}"
            )
        if key in seen:
            raise HttpError(400, "invalid_parameter", f"query parameter {key!r} given twice")
        seen[key] = value
    return seen


def _flag(name: str, text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise HttpError(400, "invalid_parameter", f"{name} must be 1/true or 0/false, got {text!r}")


def _bounded_int(name: str, text: str, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise HttpError(
            400, "invalid_parameter", f"{name} must be a whole number, got {text!r}"
        ) from None
    if not 1 <= value <= high:
        raise HttpError(400, "invalid_parameter", f"{name} must be from 1 to {high}, got {value}")
    return value


def query_flags(query: Sequence[tuple[str, str]], known: Sequence[str] = ()) -> dict[str, bool]:
    """Boolean query flags (`?explain=1`); any other parameter is refused."""
    return {k: _flag(k, v) for k, v in _query(query, known).items()}


def stats_params(query: Sequence[tuple[str, str]]) -> StatsParams:
    q = _query(query, ("top", "limit", "after"))
    top = _bounded_int("top", q["top"], MAX_PAGE_SIZE) if "top" in q else None
    limit = _bounded_int("limit", q["limit"], MAX_PAGE_SIZE) if "limit" in q else None
    if top is not None and ("limit" in q or "after" in q):
        raise HttpError(400, "invalid_parameter", "give top, or limit/after (paging), not both")
    if "after" in q and limit is None:
        limit = DEFAULT_PAGE_SIZE
    return StatsParams(top=top, limit=limit, after=q.get("after"))


def _bool_field(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise HttpError(400, "invalid_field", f"{key} must be true or false, got {value!r}")
    return value


def _keep_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpError(
            400, "invalid_field", f"keep_count must be a whole number, got {value!r}"[:300]
        )
    if not 1 <= value <= MAX_KEEP_COUNT:
        raise HttpError(
            400,
            "invalid_field",
            f"keep_count must be from 1 to {MAX_KEEP_COUNT} (the newest checkpoint is "
            f"always kept), got {value}"[:300],
        )
    return value


def prune_params(
    body: Mapping[str, Any],
    server_policy: PolicySource | None,
    *,
    known: Sequence[str],
    explain: bool = False,
) -> PruneParams:
    """A prune request's body checked against `known` fields, its policy resolved
    (`include_kept` needs the explanation: the kept ids come from it)."""
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise HttpError(
            400,
            "unknown_field",
            f"unknown field {', '.join(map(repr, unknown))}"[:300] + f"; known: {', '.join(known)}",
        )
    overrides: dict[str, Any] = {}
    if "policy" in body:
        if not isinstance(body["policy"], Mapping):
            raise HttpError(400, "invalid_field", "policy must be an object of policy settings")
        overrides.update(body["policy"])
    if "keep_count" in body:
        if "keep_last" in overrides:
            raise HttpError(400, "invalid_field", "give keep_count or policy.keep_last, not both")
        overrides["keep_last"] = _keep_count(body["keep_count"])
    include_kept = _bool_field(body, "include_kept")
    return PruneParams(
        policy=effective_policy(server_policy, overrides),
        dry_run=_bool_field(body, "dry_run"),
        explain=explain or include_kept,
        include_kept=include_kept,
        background=_bool_field(body, "background"),
    )


def effective_policy(server: PolicySource | None, overrides: Mapping[str, Any]) -> PolicySource:
    """The server's policy with a request's overrides applied (to every per-thread policy
    when the server has rules or a resolver); refused when neither states one."""
    try:
        if not overrides:
            if server is None:
                raise HttpError(
                    400,
                    "no_policy",
                    "this server has no default policy: send keep_count (or policy)",
                )
            return server
        if server is None or isinstance(server, RetentionPolicy):
            return policy_from_mapping(overrides, where="policy", base=server)
        policy_from_mapping(overrides, where="policy")  # every key checked now
    except UsageError as exc:
        raise HttpError(400, "invalid_policy", str(exc)[:500]) from None
    return _Overridden(resolver_of(server), dict(overrides))


class _Overridden:
    """A resolver whose every policy gets the request's overrides (exempt stays exempt)."""

    def __init__(self, resolve: Resolver, overrides: dict[str, Any]) -> None:
        self._resolve = resolve
        self._overrides = overrides
        self._cache: dict[RetentionPolicy, RetentionPolicy] = {}

    def __call__(self, thread_id: str) -> Resolution:
        found = self._resolve(thread_id)
        if found == EXEMPT or not isinstance(found, RetentionPolicy):
            return found
        if found not in self._cache:
            self._cache[found] = policy_from_mapping(self._overrides, base=found)
        return self._cache[found]
