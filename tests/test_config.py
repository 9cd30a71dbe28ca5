"""Durations, policies as plain data, and the API token: every bad value names itself."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from langgraph_retention import RetentionPolicy
from langgraph_retention.config import (
    describe_policy,
    format_duration,
    parse_duration,
    policy_from_mapping,
    policy_to_mapping,
    read_token,
)
from langgraph_retention.errors import UsageError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        (" 1D 2H ", timedelta(days=1, hours=2)),
    ],
)
def test_durations_parse(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "7", "7 days", "-1h", "1.5h", "h", "7d!"])
def test_bad_duration_is_a_usage_error_naming_the_setting(text: str) -> None:
    with pytest.raises(UsageError, match="keep_within"):
        parse_duration(text, name="keep_within")


def test_duration_round_trips_through_its_shortest_spelling() -> None:
    assert format_duration(timedelta(days=8, minutes=5)) == "1w1d5m"
    assert parse_duration(format_duration(timedelta(days=8, minutes=5))) == timedelta(
        days=8, minutes=5
    )


def test_policy_round_trips_as_plain_data() -> None:
    policy = RetentionPolicy(keep_last=5, keep_within=timedelta(hours=12))

    data = policy_to_mapping(policy)

    assert data["keep_last"] == 5 and data["keep_within"] == "12h"
    assert data["keep_daily"] == 0 and data["max_bytes"] is None and data["timezone"] == "UTC"
    assert policy_from_mapping(data) == policy


def test_policy_keys_override_a_base_policy() -> None:
    base = RetentionPolicy(keep_last=10, keep_within=timedelta(days=1))

    assert policy_from_mapping({"keep_last": 3}, base=base) == RetentionPolicy(
        keep_last=3, keep_within=timedelta(days=1)
    )


def test_keep_within_may_be_a_number_of_seconds() -> None:
    assert policy_from_mapping({"keep_within": 3600}).keep_within == timedelta(hours=1)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"keep_count": 3}, "unknown setting 'keep_count'"),
        ({"keep_last": 0}, "keep_last must be at least 1"),
        ({"keep_last": "5"}, "policy.keep_last must be a whole number"),
        ({"keep_last": True}, "policy.keep_last must be a whole number"),
        ({"keep_within": "soon"}, "policy.keep_within: not a duration"),
        ({"keep_within": -5}, "policy.keep_within must not be negative"),
        ({"delta_channels": "ignore"}, "delta_channels must be"),
        ([1, 2], "must be a table/object"),
    ],
)
def test_bad_policy_data_is_a_usage_error_naming_the_key(data: object, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        policy_from_mapping(data)  # type: ignore[arg-type]


def test_describe_policy_shows_what_differs_from_the_default() -> None:
    policy = RetentionPolicy(keep_last=3, keep_within=timedelta(days=7))

    assert describe_policy(policy) == "keep_last=3, keep_within=1w"


def test_token_comes_from_the_argument_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGGRAPH_RETENTION_TOKEN", "from-env")

    assert read_token("given") == "given"


def test_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGGRAPH_RETENTION_TOKEN", "from-env")

    assert read_token() == "from-env"


def test_token_comes_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANGGRAPH_RETENTION_TOKEN", raising=False)
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("LANGGRAPH_RETENTION_TOKEN_FILE", str(secret))

    assert read_token() == "s3cret"


def test_unreadable_or_empty_token_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")

    with pytest.raises(UsageError, match="cannot read the token file"):
        read_token(token_file=tmp_path / "missing")
    with pytest.raises(UsageError, match="is empty"):
        read_token(token_file=tmp_path / "empty")
