"""Settings from flags, environment and plain data, with one wording for every bad value.

Durations (`90s`, `30m`, `12h`, `7d`, `2w`, or combined: `1h30m`), retention policies as
plain data (what travels to Celery workers and arrives in HTTP request bodies), and the
environment variables the CLI, the daemon and the API read. Every bad value is a
`UsageError` naming the setting; nothing has been touched when one is raised.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from langgraph_retention.errors import UsageError
from langgraph_retention.policy import RetentionPolicy

__all__ = [
    "ENV_TOKEN",
    "ENV_TOKEN_FILE",
    "ENV_URL",
    "describe_policy",
    "format_duration",
    "parse_duration",
    "policy_from_mapping",
    "policy_to_mapping",
    "read_token",
]

#: The store URL when `--url` is not given (systemd's EnvironmentFile sets it).
ENV_URL = "LANGGRAPH_RETENTION_URL"
#: The API token when `--token` is not given; or a file holding it.
ENV_TOKEN = "LANGGRAPH_RETENTION_TOKEN"
ENV_TOKEN_FILE = "LANGGRAPH_RETENTION_TOKEN_FILE"

_UNIT_SECONDS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+)([wdhms])")


def parse_duration(text: str, *, name: str = "duration") -> timedelta:
    """`7d`, `12h`, `1h30m`, `90s` as a timedelta; UsageError naming `name` otherwise."""
    compact = text.strip().lower().replace(" ", "") if isinstance(text, str) else ""
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise UsageError(f"{name}: not a duration like 30m, 12h, 7d or 1h30m: {text!r}")
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))


def format_duration(value: timedelta) -> str:
    """The shortest `parse_duration` spelling of a whole number of seconds."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    out = []
    for unit, size in _UNIT_SECONDS.items():
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{key} must be a whole number, got {value!r}")
    return value


def _seconds_or_duration(key: str, value: Any) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise UsageError(f"{key} must not be negative, got {value!r}")
        return timedelta(seconds=value)
    if isinstance(value, str):
        return parse_duration(value, name=key)
    raise UsageError(f"{key} must be a duration like '7d' or a number of seconds, got {value!r}")


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{key} must be a string, got {value!r}")
    return value


#: Each policy setting and how plain data becomes its value.
_POLICY_FIELDS = {
    "keep_last": _int,
    "keep_within": _seconds_or_duration,
    "delta_channels": _text,
}


def policy_from_mapping(
    data: Mapping[str, Any], *, where: str = "policy", base: RetentionPolicy | None = None
) -> RetentionPolicy:
    """A `RetentionPolicy` from plain data (JSON, TOML, Celery arguments).

    Keys override `base` (default: `RetentionPolicy()`); an unknown key, a wrong type or
    an impossible value is a `UsageError` naming the key under `where`.
    """
    if not isinstance(data, Mapping):
        raise UsageError(f"{where} must be a table/object of settings, got {data!r}")
    unknown = sorted(set(data) - set(_POLICY_FIELDS))
    if unknown:
        raise UsageError(
            f"{where}: unknown setting {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(_POLICY_FIELDS)}"
        )
    values = policy_to_mapping(base or RetentionPolicy(), plain=False)
    for key, value in data.items():
        values[key] = _POLICY_FIELDS[key](f"{where}.{key}", value)
    try:
        return RetentionPolicy(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: {exc}") from None


def policy_to_mapping(policy: RetentionPolicy, *, plain: bool = True) -> dict[str, Any]:
    """The policy's settings; with `plain`, durations as `parse_duration` text (JSON-ready)."""
    values: dict[str, Any] = {key: getattr(policy, key) for key in _POLICY_FIELDS}
    if plain:
        values = {
            k: format_duration(v) if isinstance(v, timedelta) else v for k, v in values.items()
        }
    return values


def describe_policy(policy: RetentionPolicy) -> str:
    """The policy's settings on one line, for logs: keep_last=10, keep_within=7d."""
    values = policy_to_mapping(policy)
    defaults = policy_to_mapping(RetentionPolicy())
    shown = [
        f"{k}={v}"
        for k, v in values.items()
        if v is not None and (k == "keep_last" or v != defaults[k])
    ]
    return ", ".join(shown)


def read_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The API token: `token`, else the contents of `token_file`, else the environment
    (`LANGGRAPH_RETENTION_TOKEN`, then the file `LANGGRAPH_RETENTION_TOKEN_FILE` names)."""
    if token:
        return token
    path = token_file or os.environ.get(ENV_TOKEN_FILE)
    if not token_file and os.environ.get(ENV_TOKEN):
        return os.environ[ENV_TOKEN]
    if path:
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the token file {path}: {exc.strerror}") from None
        if not text:
            raise UsageError(f"the token file {path} is empty")
        return text
    return None
