"""Settings from flags, environment and plain data, with one wording for every bad value.

Durations (`90s`, `30m`, `12h`, `7d`, `2w`, or combined: `1h30m`), retention policies as
plain data (what travels to Celery workers and arrives in HTTP request bodies), and the
environment variables the CLI, the daemon and the API read. Every bad value is a
`UsageError` naming the setting; nothing has been touched when one is raised.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from langgraph_retention.errors import UsageError
from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.rules import EXEMPT, PolicySource, Resolution, ThreadRules

__all__ = [
    "ENV_TOKEN",
    "ENV_TOKEN_FILE",
    "ENV_URL",
    "ScheduleSettings",
    "ServeSettings",
    "Settings",
    "describe_policy",
    "format_duration",
    "load_settings",
    "parse_duration",
    "parse_size",
    "policy_from_mapping",
    "policy_to_mapping",
    "read_token",
    "settings_from_mapping",
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


def _text_or_none(key: str, value: Any) -> str | None:
    return None if value is None else _text(key, value)


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{key} must be true or false, got {value!r}")
    return value


_SIZE = re.compile(r"^(\d+)\s*(?:([kmgt])(i?))?b?$", re.I)


def parse_size(text: str, *, name: str = "size") -> int:
    """`500000`, `512KB`, `10MiB`, `2g` as bytes (KB = 1000, KiB = 1024)."""
    match = _SIZE.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise UsageError(f"{name}: not a size like 500000, 512KB or 10MiB: {text!r}")
    number, prefix, binary = match.groups()
    power = "kmgt".index(prefix.lower()) + 1 if prefix else 0
    factor: int = (1024 if binary else 1000) ** power
    return int(number) * factor


def _size_or_none(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_size(value, name=key)
    return _int(key, value)


#: Each policy setting and how plain data becomes its value.
_POLICY_FIELDS = {
    "keep_last": _int,
    "keep_within": _seconds_or_duration,
    "keep_hourly": _int,
    "keep_daily": _int,
    "keep_weekly": _int,
    "keep_monthly": _int,
    "keep_first": _flag,
    "keep_interrupted": _flag,
    "keep_tagged": _text_or_none,
    "max_bytes": _size_or_none,
    "timezone": _text,
    "idle_ttl": _seconds_or_duration,
    "max_age": _seconds_or_duration,
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


def describe_policy(policy: PolicySource) -> str:
    """The policy's settings on one line, for logs: keep_last=10, keep_within=7d."""
    if isinstance(policy, ThreadRules):
        patterns = ", ".join(pattern for pattern, _resolution in policy.rules)
        default = "exempt" if policy.default == EXEMPT else describe_policy(policy.default)
        return f"{default}; own rules for {patterns}"
    if not isinstance(policy, RetentionPolicy):
        return f"policy from {getattr(policy, '__qualname__', type(policy).__name__)}"
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


# -- settings files -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    """The `[schedule]` table: when `schedule` sweeps (see `Scheduler` for each field)."""

    cron: str | None = None
    every: timedelta | None = None
    timezone: str | None = None
    report_cron: str | None = None
    batch_size: int | None = None
    misfire_grace: timedelta | None = None
    metrics_port: int | None = None
    metrics_host: str | None = None


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """The `[serve]` table: where `serve` listens."""

    host: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a settings file says; flags given on the command line win over it."""

    url: str | None = None
    token: str | None = None
    token_file: str | None = None
    policy: Mapping[str, Any] | None = None
    rules: tuple[tuple[str, Mapping[str, Any] | None], ...] = ()
    schedule: ScheduleSettings = ScheduleSettings()
    serve: ServeSettings = ServeSettings()
    source: str = "settings"

    def policy_source(self, overrides: Mapping[str, Any] | None = None) -> PolicySource:
        """The default policy (file `[policy]`, then `overrides`, e.g. flags) and, with
        `[[rules]]`, the per-pattern policies built on it (a `ThreadRules`)."""
        base = policy_from_mapping(self.policy or {}, where=f"{self.source}: [policy]")
        if overrides:
            base = policy_from_mapping(overrides, where="command line", base=base)
        if not self.rules:
            return base
        rules: list[tuple[str, Resolution]] = []
        for i, (pattern, data) in enumerate(self.rules, 1):
            where = f"{self.source}: [[rules]] #{i} ({pattern!r})"
            rules.append((pattern, EXEMPT if data is None else policy_from_mapping(
                data, where=where, base=base
            )))  # fmt: skip
        return ThreadRules(base, rules)


_TOP_KEYS = {"url", "token", "token_file", "policy", "rules", "schedule", "serve"}


def _table(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise UsageError(f"{where} must be a table, got {value!r}")
    return value


def _only(where: str, table: Mapping[str, Any], known: Iterable[str]) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise UsageError(
            f"{where}: unknown setting {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )


def _schedule(where: str, table: Mapping[str, Any]) -> ScheduleSettings:
    fields = {f.name: f for f in dataclass_fields(ScheduleSettings)}
    _only(where, table, fields)
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{where}.{key}"
        if key in ("every", "misfire_grace"):
            values[key] = _seconds_or_duration(name, value)
        elif key in ("batch_size", "metrics_port"):
            values[key] = _int(name, value)
        else:
            values[key] = _text(name, value)
    if values.get("cron") is not None and values.get("every") is not None:
        raise UsageError(f"{where}: give cron or every, not both")
    return ScheduleSettings(**values)


def _serve(where: str, table: Mapping[str, Any]) -> ServeSettings:
    _only(where, table, ("host", "port"))
    return ServeSettings(
        host=_text(f"{where}.host", table["host"]) if "host" in table else None,
        port=_int(f"{where}.port", table["port"]) if "port" in table else None,
    )


def _rules(where: str, value: Any) -> tuple[tuple[str, Mapping[str, Any] | None], ...]:
    if not isinstance(value, list):
        raise UsageError(f"{where} must be an array of tables ([[rules]]), got {value!r}")
    rules: list[tuple[str, Mapping[str, Any] | None]] = []
    for i, raw in enumerate(value, 1):
        table = dict(_table(f"{where} #{i}", raw))
        pattern = table.pop("match", None)
        if not isinstance(pattern, str) or not pattern:
            raise UsageError(f'{where} #{i}: needs match = "<thread id glob>"')
        if table.pop("exempt", False) is True:
            if table:
                raise UsageError(f"{where} #{i} ({pattern!r}): an exempt rule takes no policy")
            rules.append((pattern, None))
            continue
        _only(f"{where} #{i} ({pattern!r})", table, _POLICY_FIELDS)
        rules.append((pattern, table))
    return tuple(rules)


def settings_from_mapping(data: Mapping[str, Any], source: str = "settings") -> Settings:
    """`Settings` from parsed TOML (or any plain data), every key checked."""
    _only(source, data, _TOP_KEYS)
    policy = dict(_table(f"{source}: [policy]", data.get("policy", {})))
    settings = Settings(
        url=_text_or_none(f"{source}: url", data.get("url")),
        token=_text_or_none(f"{source}: token", data.get("token")),
        token_file=_text_or_none(f"{source}: token_file", data.get("token_file")),
        policy=policy if "policy" in data else None,
        rules=_rules(f"{source}: [[rules]]", data.get("rules", [])),
        schedule=_schedule(f"{source}: [schedule]", _table("[schedule]", data.get("schedule", {}))),
        serve=_serve(f"{source}: [serve]", _table("[serve]", data.get("serve", {}))),
        source=source,
    )
    settings.policy_source()  # every policy checked now, not at 02:00
    return settings


def load_settings(path: str | Path) -> Settings:
    """Read a TOML settings file (`--config retention.toml`); UsageError naming the file
    and key for anything wrong."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read the settings file {file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{file}: not valid TOML: {exc}") from None
    return settings_from_mapping(data, source=str(file))
