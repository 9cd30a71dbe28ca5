"""The files under deploy/: every command line parses with our CLI, the crontab's time is a
valid cron expression, and systemd finds nothing wrong with the units."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from datetime import UTC
from pathlib import Path

import pytest

from langgraph_retention.cli import parse_args
from langgraph_retention.triggers import parse_crontab

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted(DEPLOY.glob("*.service")) + sorted(DEPLOY.glob("*.timer"))
INSTALLED = "/opt/langgraph-retention/bin/langgraph-retention"


def env_file() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "langgraph-retention.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def exec_lines(unit: Path) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^ExecStart=(.+)$", unit.read_text(), re.M)]


def crontab_entries() -> list[tuple[str, str]]:
    """(schedule, command) of each job line (not comments, not VAR=value lines)."""
    entries = []
    for line in (DEPLOY / "crontab").read_text().splitlines():
        if not line.strip() or line.startswith("#") or re.match(r"^\w+=", line):
            continue
        fields = line.split(None, 5)
        entries.append((" ".join(fields[:5]), fields[5]))
    return entries


def test_deploy_has_the_daemon_the_oneshot_its_timer_and_a_crontab() -> None:
    names = {p.name for p in DEPLOY.iterdir()}

    assert {
        "langgraph-retention-scheduler.service",
        "langgraph-retention-prune.service",
        "langgraph-retention-prune.timer",
        "crontab",
        "langgraph-retention.env",
    } <= names


@pytest.mark.parametrize("unit", sorted(DEPLOY.glob("*.service")), ids=lambda p: p.name)
def test_every_exec_line_parses_with_our_cli(unit: Path) -> None:
    (line,) = exec_lines(unit)
    argv = shlex.split(line)

    assert argv[0] == INSTALLED
    args = parse_args(argv[1:])  # SystemExit(2) on anything our CLI would refuse
    assert args.command in {"schedule", "prune"}
    assert "--url" not in argv  # from the environment file: `ps` must not show a password


def test_crontab_command_parses_and_its_time_is_a_cron_expression() -> None:
    ((when, command),) = crontab_entries()
    argv = shlex.split(command.split(">>")[0])

    assert parse_crontab(when, timezone=UTC) is not None
    assert argv[0] == INSTALLED and parse_args(argv[1:]).all


def test_units_read_the_url_from_the_environment_file() -> None:
    assert env_file()["LANGGRAPH_RETENTION_URL"].startswith("postgresql://")
    for unit in sorted(DEPLOY.glob("*.service")):
        assert "EnvironmentFile=/etc/langgraph-retention/env" in unit.read_text()


def test_daemon_unit_restarts_on_failure_and_is_hardened() -> None:
    text = (DEPLOY / "langgraph-retention-scheduler.service").read_text()

    for setting in (
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "KillSignal=SIGTERM",
    ):
        assert setting in text


def test_timer_runs_the_oneshot_daily_at_two_and_catches_up() -> None:
    text = (DEPLOY / "langgraph-retention-prune.timer").read_text()

    assert "OnCalendar=*-*-* 02:00:00" in text and "Persistent=true" in text
    assert "Type=oneshot" in (DEPLOY / "langgraph-retention-prune.service").read_text()


def systemd_analyze() -> str:
    """systemd-analyze, installing Debian's systemd package if it is missing."""
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "systemd"]
        if subprocess.run(install, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=True)
            subprocess.run(install, env=env, check=True)
        found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing and could not be installed (apt-get, as root)")
    return found


def test_systemd_analyze_verify_finds_nothing_wrong(tmp_path: Path) -> None:
    installed = shutil.which("langgraph-retention")
    assert installed is not None, "the console script is not installed"
    for unit in UNITS:  # the same units, pointing at this machine's console script
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, installed))

    proc = subprocess.run(
        [systemd_analyze(), "verify", *(str(tmp_path / u.name) for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
