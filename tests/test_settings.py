"""Settings files (`--config retention.toml`) and policy flags: one loader, and every
mistake is one error naming the file and the key, with nothing deleted."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from langgraph_retention import RetentionPolicy
from langgraph_retention.config import load_settings
from langgraph_retention.errors import UsageError
from langgraph_retention.rules import EXEMPT, ThreadRules

from .stores import checkpoint_counts, cli, populated_url

FULL = """
url = "sqlite:///checkpoints.db"
token_file = "/etc/langgraph-retention/token"

[policy]
keep_last = 10
keep_within = "7d"
keep_daily = 7
keep_first = true
keep_tagged = "pin"
max_bytes = "50MiB"
timezone = "Asia/Shanghai"

[[rules]]
match = "support:*"
keep_last = 50

[[rules]]
match = "eval-*"
idle_ttl = "1d"

[[rules]]
match = "vip:*"
exempt = true

[schedule]
cron = "0 2 * * *"
report_cron = "0 9 * * 1"
batch_size = 20
misfire_grace = "15m"

[serve]
host = "0.0.0.0"
port = 8080
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "retention.toml"
    path.write_text(text)
    return path


def test_a_full_settings_file_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL))

    rules = settings.policy_source()
    assert isinstance(rules, ThreadRules)
    assert rules.default == RetentionPolicy(
        keep_last=10,
        keep_within=timedelta(days=7),
        keep_daily=7,
        keep_first=True,
        keep_tagged="pin",
        max_bytes=50 * 1024 * 1024,
        timezone="Asia/Shanghai",
    )
    assert rules.resolve("support:9").keep_last == 50  # type: ignore[union-attr]
    assert rules.resolve("support:9").keep_daily == 7  # type: ignore[union-attr]
    assert rules.resolve("eval-3").idle_ttl == timedelta(days=1)  # type: ignore[union-attr]
    assert rules.resolve("vip:x") == EXEMPT
    assert settings.schedule.cron == "0 2 * * *" and settings.schedule.batch_size == 20
    assert settings.serve.port == 8080 and settings.url == "sqlite:///checkpoints.db"


def test_flags_override_the_file_policy_and_its_rules_inherit_them(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL))

    rules = settings.policy_source({"keep_first": False})

    assert isinstance(rules, ThreadRules)
    assert not rules.default.keep_first  # type: ignore[union-attr]
    assert not rules.resolve("support:1").keep_first  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[policy]\nkeep_lst = 3\n", r"\[policy\]: unknown setting 'keep_lst'"),
        ('[policy]\nkeep_within = "a week"\n', r"\[policy\]\.keep_within: not a duration"),
        ("[policy]\nkeep_last = 0\n", "keep_last must be at least 1"),
        ('[policy]\nmax_bytes = "lots"\n', "max_bytes: not a size"),
        ("[[rules]]\nkeep_last = 3\n", r"\[\[rules\]\] #1: needs match"),
        ('[[rules]]\nmatch = "a*"\nkeep_cont = 3\n', r"#1 \('a\*'\): unknown setting 'keep_cont'"),
        ('[[rules]]\nmatch = "a*"\nexempt = true\nkeep_last = 3\n', "exempt rule takes no policy"),
        ('[schedule]\ncron = "0 2 * * *"\nevery = "1h"\n', "cron or every, not both"),
        ("[schedule]\nwhen = 3\n", r"\[schedule\]: unknown setting 'when'"),
        ('[serve]\nport = "80"\n', r"\[serve\]\.port must be a whole number"),
        ("colour = 'blue'\n", "unknown setting 'colour'"),
        ("[policy\n", "not valid TOML"),
    ],
)
def test_a_bad_settings_file_is_one_error_naming_the_key(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(UsageError, match=says) as raised:
        load_settings(write(tmp_path, text))

    assert str(tmp_path / "retention.toml") in str(raised.value)


def test_missing_settings_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read the settings file"):
        load_settings(tmp_path / "nope.toml")


THREADS = [("support:1", 3), ("vip:bob", 3), ("plain", 3)]  # 15 checkpoints each


def test_prune_follows_the_config_file_rules(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = populated_url("sqlite", request, tmp_path, THREADS)
    config = write(
        tmp_path,
        f'url = "{url}"\n[policy]\nkeep_last = 2\n'
        '[[rules]]\nmatch = "support:*"\nkeep_last = 6\n'
        '[[rules]]\nmatch = "vip:*"\nexempt = true\n',
    )

    proc = cli("prune", "--config", str(config), "--all")

    assert proc.returncode == 0, proc.stderr
    assert checkpoint_counts(url) == {"support:1": 6, "vip:bob": 15, "plain": 2}


def test_flags_win_over_the_config_file(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = populated_url("sqlite", request, tmp_path, THREADS)
    config = write(tmp_path, f'url = "{url}"\n[policy]\nkeep_last = 2\n')

    proc = cli("prune", "--config", str(config), "--keep-last", "4", "--all")

    assert proc.returncode == 0, proc.stderr
    assert set(checkpoint_counts(url).values()) == {4}


def test_prune_without_any_policy_is_refused(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = populated_url("sqlite", request, tmp_path, THREADS)

    proc = cli("prune", "--url", url, "--all")

    assert proc.returncode == 2 and "no policy" in proc.stderr
    assert set(checkpoint_counts(url).values()) == {15}


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--keep-daily", "-1"), "argument --keep-daily"),
        (("--max-bytes", "huge"), "argument --max-bytes"),
        (("--keep-last", "2", "--timezone", "Moon/Base"), "unknown time zone 'Moon/Base'"),
        (("--keep-last", "2", "--config", "/nonexistent.toml"), "cannot read the settings file"),
    ],
)
def test_bad_policy_flags_are_usage_errors(
    request: pytest.FixtureRequest, tmp_path: Path, flags: tuple[str, ...], says: str
) -> None:
    url = populated_url("sqlite", request, tmp_path, THREADS)

    proc = cli("prune", "--url", url, "--all", *flags)

    assert proc.returncode == 2 and says in proc.stderr
    assert set(checkpoint_counts(url).values()) == {15}


def test_calendar_and_pin_flags_reach_the_policy(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = populated_url("sqlite", request, tmp_path, THREADS)

    proc = cli(
        "prune", "--url", url, "--all", "--keep-last", "1", "--keep-daily", "1", "--keep-first",
        "--keep-interrupted", "--keep-tagged", "pin", "--max-bytes", "10MiB", "--dry-run",
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    assert "would delete 39 checkpoints" in proc.stdout  # each keeps its newest and first
