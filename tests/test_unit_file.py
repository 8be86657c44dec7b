"""deploy/claude-hooks.service: what systemd will accept, and what operators rely on."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

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


def test_unit_does_not_pretend_to_require_a_system_service() -> None:
    assert "Requires" not in unit()["Unit"]  # ignored in user scope; see the unit's comment
    assert "docker.service" in unit()["Unit"]["After"]
