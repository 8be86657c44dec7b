from __future__ import annotations

import subprocess
import sys

import pytest

from claude_hooks import __version__
from claude_hooks.cli.main import main
from tests.conftest import REPO_ROOT
from tests.fakes.configs import ConfigFactory


def test_help_lists_every_subcommand_with_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "claude_hooks", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in ("run", "check", "version"):
        assert f"    {command} " in out


def test_version_prints_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"claude-hooks {__version__}"


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("misspelt-key.toml", "daemon.pol_interval: unknown key (did you mean 'poll_interval'?)"),
        ("missing-token.toml", "agents[0].token_file: the Forgejo token of agent 'dev'"),
        ("bad-duration.toml", "daemon.drain_timeout: bad duration 'four minutes'"),
    ],
)
def test_check_explains_a_broken_example_config(
    example: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = REPO_ROOT / "examples" / "broken" / example
    assert main(["check", "--offline", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL config: ")
    assert str(path) in out and expected in out


def test_check_offline_passes_a_valid_config_and_shows_warnings(
    config_factory: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    loose = config_factory.secret("loose", "forgejo-token-loose-123456", mode=0o640)
    path = config_factory.write(agents=[config_factory.agent(token_file=str(loose))])
    assert main(["check", "--offline", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"OK   config: {path} is valid" in out
    assert "chmod 600" in out


def test_run_with_a_broken_config_exits_2_naming_the_key(
    config_factory: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_factory.write(daemon={"max_concurrency": 0})
    assert main(["run", "--config", str(path)]) == 2
    assert "daemon.max_concurrency: must be at least 1" in capsys.readouterr().err
