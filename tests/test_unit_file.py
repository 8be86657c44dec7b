"""deploy/claude-hooks.service: what systemd will accept, and what operators rely on."""

from __future__ import annotations

import configparser
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from claude_hooks.api.connections import connection_limits
from claude_hooks.config import SYSTEMD_STOP_TIMEOUT, DaemonConfig
from tests.conftest import REPO_ROOT

UNIT = REPO_ROOT / "deploy" / "claude-hooks.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    script = shutil.which("claude-hooks")
    if analyze is None or script is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must have systemd-analyze and the installed claude-hooks script")
        pytest.skip("systemd-analyze or the claude-hooks script is not installed")
    # %h is the home directory: give the unit one where %h/.local/bin/claude-hooks exists.
    (tmp_path / ".local" / "bin").mkdir(parents=True)
    (tmp_path / ".local" / "bin" / "claude-hooks").symlink_to(script)
    done = subprocess.run(
        [analyze, "verify", str(UNIT)], capture_output=True, text=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_unit_is_notify_with_a_stop_timeout_above_the_drain() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert float(service["TimeoutStopSec"]) == SYSTEMD_STOP_TIMEOUT
    assert DaemonConfig().drain_timeout < SYSTEMD_STOP_TIMEOUT
    assert service["ExecStartPre"].endswith("claude-hooks containers up")
    assert service["ExecStart"].endswith("claude-hooks run")
    assert service["Restart"] == "on-failure" and "WatchdogSec" in service


def test_unit_names_no_system_unit_a_user_manager_cannot_see() -> None:
    """docker.service and network-online.target are LoadState=not-found in a user manager:
    ordering on them or pulling them in does nothing (the systemd test shows it)."""
    section = unit()["Unit"]
    for key in ("Requires", "Wants", "After", "BindsTo", "Requisite"):
        named = section.get(key, "").split()
        assert not {"docker.service", "network-online.target"} & set(named), f"{key}={named}"


def start_limit_hit_after(interval: float, burst: int, period: float) -> float:
    """Seconds of back-to-back failing starts, one per `period`, until systemd refuses
    with start-limit-hit: its rate limit allows `burst` starts per window of `interval`
    opened by the first start; infinity when a window closes before the burst is spent."""
    return math.inf if burst * period >= interval else burst * period


def test_restarts_outlast_minutes_of_docker_being_down() -> None:
    """ExecStartPre fails while Docker is down (a restart, or starting after this unit at
    boot) and Restart= retries: that must last minutes, not the 50 s of 5 per 600 s."""
    limits, service = unit()["Unit"], unit()["Service"]
    attempt = 1.0  # one `containers up` finding no Docker: about a second
    period = float(service["RestartSec"]) + attempt
    window = start_limit_hit_after(
        float(limits["StartLimitIntervalSec"]), int(limits["StartLimitBurst"]), period
    )
    assert 5 * 60 <= window < math.inf  # minutes of retries, yet a hopeless loop stops
    assert start_limit_hit_after(600, 5, 10 + attempt) < 60  # what it was


def test_unit_sets_an_open_file_limit_the_api_cap_fits() -> None:
    """Without LimitNOFILE= the daemon inherits whatever the user manager has (often
    1024); the API's connection cap is derived from it and must leave room to spare."""
    limit = int(unit()["Service"]["LimitNOFILE"])
    limits = connection_limits(limit)
    assert 1000 <= limits.max_connections <= limit // 2, limits
