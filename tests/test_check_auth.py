"""`claude-hooks check` reports each agent's Claude login (#15): the auth mode, whether
its file is readable and private, and a credentials file's expiry."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime

from claude_hooks.cli.check import run_checks
from claude_hooks.cli.check_auth import login_report
from claude_hooks.config import AgentConfig
from tests.fakes.configs import ConfigFactory

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()
ACCESS = "sk-ant-oat01-access-token-never-printed"


def credentials(*, expires_in: float | None, refresh: bool) -> str:
    oauth: dict[str, object] = {"accessToken": ACCESS}
    if expires_in is not None:
        oauth["expiresAt"] = int((NOW + expires_in) * 1000)  # Claude Code writes milliseconds
    if refresh:
        oauth["refreshToken"] = "sk-ant-ort01-refresh-never-printed"
    return json.dumps({"claudeAiOauth": oauth})


def agent_with(factory: ConfigFactory, text: str, *, mode: int = 0o600) -> AgentConfig:
    creds = factory.secret("creds.json", text)
    agent = factory.load(agents=[factory.agent("dev", credentials_file=str(creds))]).agents[0]
    os.chmod(creds, mode)
    return agent


def test_a_valid_credentials_file(config_factory: ConfigFactory) -> None:
    agent = agent_with(config_factory, credentials(expires_in=3600, refresh=True))
    name, ok, detail = login_report(agent, NOW)
    assert (name, ok) == ("claude login of agent dev", True)
    assert detail == (
        f"credentials_file {agent.credentials_file}: readable and private; "
        "access token expires 2026-12-02 13:00 UTC, a refresh token renews it"
    )


def test_expired_without_a_refresh_token_is_a_warning(config_factory: ConfigFactory) -> None:
    agent = agent_with(config_factory, credentials(expires_in=-60, refresh=False))
    _, ok, detail = login_report(agent, NOW)
    assert ok and detail.startswith("warning: ")
    assert "access token expired 2026-12-02 11:59 UTC and no refresh token: log in again" in detail
    assert ACCESS not in detail


def test_expired_with_a_refresh_token_is_fine(config_factory: ConfigFactory) -> None:
    agent = agent_with(config_factory, credentials(expires_in=-60, refresh=True))
    _, ok, detail = login_report(agent, NOW)
    assert ok and not detail.startswith("warning:")
    assert "Claude Code renews it with the refresh token" in detail


def test_a_file_others_can_read_is_a_warning(config_factory: ConfigFactory) -> None:
    agent = agent_with(config_factory, credentials(expires_in=60, refresh=True), mode=0o644)
    _, ok, detail = login_report(agent, NOW)
    assert ok and detail.startswith("warning: ") and "mode 0644; chmod 600" in detail


def test_unreadable_or_broken_files_fail(config_factory: ConfigFactory) -> None:
    agent = agent_with(config_factory, "not json")
    assert login_report(agent, NOW)[1:] == (
        False,
        f"credentials_file {agent.credentials_file}: not JSON (a .credentials.json from "
        "`claude /login` is)",
    )
    assert agent.credentials_file is not None
    agent.credentials_file.unlink()
    _, ok, detail = login_report(agent, NOW)
    assert not ok and "cannot read: No such file or directory" in detail


def test_token_modes_report_their_key_and_file(config_factory: ConfigFactory) -> None:
    key = config_factory.secret("api-key", "sk-ant-api03-never-printed")
    config = config_factory.load(
        agents=[config_factory.agent("dev", credentials_file=None, api_key_file=str(key))]
    )
    results = asyncio.run(run_checks(config, offline=True))
    (line,) = [r.line() for r in results if r.name == "claude login of agent dev"]
    assert line == f"OK   claude login of agent dev: api_key_file {key}: readable and private"
