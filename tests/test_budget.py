"""The shutdown budget: a stop (drain, stopping what is left, closing) fits TimeoutStopSec."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from claude_hooks.cli.main import main
from claude_hooks.config import SYSTEMD_STOP_TIMEOUT, DaemonConfig
from claude_hooks.daemon.budget import STOP_MARGIN, shutdown_budget
from tests.conftest import REPO_ROOT
from tests.fakes.configs import ConfigFactory
from tests.test_unit_file import unit


def test_check_offline_refuses_a_drain_timeout_whose_stop_overruns_the_unit(
    config_factory: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # 290 is below TimeoutStopSec=300, yet stopping what is left and closing take longer.
    path = config_factory.write(daemon={"drain_timeout": 290})
    assert main(["check", "--offline", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL config: {path}: daemon.drain_timeout: ")
    assert "drain 290s + stop 20s + close 17s = 327s" in out
    assert "TimeoutStopSec=300" in out


def test_the_longest_drain_that_fits_passes_and_one_second_more_is_refused(
    config_factory: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    most = SYSTEMD_STOP_TIMEOUT - STOP_MARGIN - shutdown_budget(0).total
    fits = config_factory.write(daemon={"drain_timeout": most})
    assert main(["check", "--offline", "--config", str(fits)]) == 0
    over = config_factory.write(daemon={"drain_timeout": most + 1})
    assert main(["check", "--offline", "--config", str(over)]) == 1
    assert f"set it to at most {most:g}s" in capsys.readouterr().out


def test_run_refuses_a_drain_timeout_whose_stop_overruns_the_unit(
    config_factory: ConfigFactory,
) -> None:
    path = config_factory.write(daemon={"drain_timeout": 290})
    # A process of its own: were the budget not checked, the daemon would run (and the
    # timeout end the test) instead of refusing.
    done = subprocess.run(
        [sys.executable, "-m", "claude_hooks", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "daemon.drain_timeout" in done.stderr and "327s" in done.stderr


def test_the_budget_is_counted_against_the_units_own_timeout_stop_sec() -> None:
    timeout_stop = float(unit()["Service"]["TimeoutStopSec"])
    assert timeout_stop == SYSTEMD_STOP_TIMEOUT
    assert shutdown_budget(DaemonConfig().drain_timeout).total <= timeout_stop - STOP_MARGIN
    example = tomllib.loads((REPO_ROOT / "deploy" / "config.example.toml").read_text())
    assert shutdown_budget(float(example["daemon"]["drain_timeout"])).fits
