from __future__ import annotations

import builtins
import io
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# --- issue 16 §4: what `check --offline` passed as valid and broke at run time -------------


def _secret_bytes(factory: ConfigFactory, name: str, content: bytes) -> str:
    path = factory.root / "secrets" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(0o600)
    return str(path)


def _agent_with(**overrides: Any) -> Callable[[ConfigFactory], dict[str, Any]]:
    return lambda f: {"agents": [f.agent(**overrides)]}


def _token_file(content: bytes) -> Callable[[ConfigFactory], dict[str, Any]]:
    return lambda f: {"agents": [f.agent(token_file=_secret_bytes(f, "tok", content))]}


def _api_token(content: bytes) -> Callable[[ConfigFactory], dict[str, Any]]:
    return lambda f: {"api": {"token_file": _secret_bytes(f, "api", content)}}


Sections = Callable[[ConfigFactory], dict[str, Any]]

# Each: the config an operator wrote, the key `check --offline` must name, what it must say.
REFUSED: list[tuple[str, Sections, str, str]] = [
    ("poll nan", lambda f: {"daemon": {"poll_interval": math.nan}}, "daemon.poll_interval", "nan"),
    ("drain nan", lambda f: {"daemon": {"drain_timeout": math.nan}}, "daemon.drain_timeout", "nan"),
    ("body 0", lambda f: {"api": {"max_body_bytes": 0}}, "api.max_body_bytes", "0"),
    ("memory", _agent_with(memory="lots"), "agents[0].memory", "lots"),
    ("cpus", _agent_with(cpus=-2.0), "agents[0].cpus", "-2"),
    ("pids 0", _agent_with(pids_limit=0), "agents[0].pids_limit", "0"),
    ("prompt", _agent_with(prompt_file="/nonexistent"), "agents[0].prompt_file", "/nonexistent"),
    ("req 0", lambda f: {"forgejo": {"request_timeout": 0}}, "forgejo.request_timeout", "0"),
    ("timeout inf", _agent_with(timeout=math.inf), "agents[0].timeout", "inf"),
    ("review self", _agent_with(review_by="dev"), "agents[0].review_by", "'dev'"),
    ("token empty", _token_file(b""), "agents[0].token_file", "empty"),
    ("token blank", _token_file(b"\n"), "agents[0].token_file", "empty"),
    ("token latin-1", _token_file(b"t\xf6ken\n"), "agents[0].token_file", "UTF-8"),
    ("token 2 lines", _token_file(b"token-one\ntoken-two\n"), "agents[0].token_file", "line"),
    ("api token empty", _api_token(b""), "api.token_file", "empty"),
    ("api token lines", _api_token(b"a-token\n\n"), "api.token_file", "line"),
    (
        "webhook empty",
        lambda f: {"forgejo": {"webhook_secret_file": _secret_bytes(f, "hook", b" \n")}},
        "forgejo.webhook_secret_file",
        "empty",
    ),
    (
        "credentials empty",
        lambda f: {"agents": [f.agent(credentials_file=_secret_bytes(f, "creds", b""))]},
        "agents[0].credentials_file",
        "empty",
    ),
]


@pytest.mark.parametrize(
    ("sections", "key", "says"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_check_offline_refuses_what_breaks_at_run_time_naming_the_key(
    config_factory: ConfigFactory,
    capsys: pytest.CaptureFixture[str],
    sections: Sections,
    key: str,
    says: str,
) -> None:
    path = config_factory.write(**sections(config_factory))
    assert main(["check", "--offline", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL config: {path}: {key}: "), out
    assert says in out.splitlines()[0]


WARNED: list[tuple[str, Sections, str, str]] = [
    ("listen any", lambda f: {"api": {"listen": ":8765"}}, "api.listen", "every address"),
    ("listen 0.0.0.0", lambda f: {"api": {"listen": "0.0.0.0:8765"}}, "api.listen", "every"),
    ("listen [::]", lambda f: {"api": {"listen": "[::]:8765"}}, "api.listen", "every address"),
    ("listen public", lambda f: {"api": {"listen": "192.0.2.7:8765"}}, "api.listen", "loopback"),
    ("root", _agent_with(user="0:0"), "agents[0].user", "root"),
    ("root by name", _agent_with(user="root"), "agents[0].user", "root"),
    (
        "docker socket",
        _agent_with(mounts=["/var/run/docker.sock:/var/run/docker.sock"]),
        "agents[0].mounts[0]",
        "Docker socket",
    ),
    ("socket dir", _agent_with(mounts=["/run:/host-run:ro"]), "agents[0].mounts[0]", "Docker"),
    ("host root", _agent_with(mounts=["/:/host:ro"]), "agents[0].mounts[0]", "whole host"),
    ("host network", _agent_with(network="host"), "agents[0].network", "loopback"),
]


@pytest.mark.parametrize(
    ("sections", "key", "says"), [w[1:] for w in WARNED], ids=[w[0] for w in WARNED]
)
def test_check_offline_warns_about_risky_settings_naming_the_key(
    config_factory: ConfigFactory,
    capsys: pytest.CaptureFixture[str],
    sections: Sections,
    key: str,
    says: str,
) -> None:
    path = config_factory.write(**sections(config_factory))
    assert main(["check", "--offline", "--config", str(path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if f"{path}: {key}: " in line]
    assert len(lines) == 1 and "warning: " in lines[0] and says in lines[0], lines


def _refuse_reading(monkeypatch: pytest.MonkeyPatch, refused: Path) -> None:
    """chmod cannot make a file unreadable to root (the tests' user here): the read fails."""
    real_open = io.open

    def refusing_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(refused):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", refusing_open)
    monkeypatch.setattr(builtins, "open", refusing_open)


def test_check_offline_names_the_key_of_an_unreadable_secret(
    config_factory: ConfigFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = config_factory.secret("hook", "webhook-secret-0123456789")
    path = config_factory.write(forgejo={"webhook_secret_file": str(secret)})
    _refuse_reading(monkeypatch, secret)
    assert main(["check", "--offline", "--config", str(path)]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"FAIL config: {path}: forgejo.webhook_secret_file: ")
    assert str(secret) in first and "Permission denied" in first


def test_credentials_the_daemon_cannot_read_are_refused_naming_the_key(
    config_factory: ConfigFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon copies the credentials into the agent's state volume before each task
    (so Claude Code can refresh them there): a file it cannot read is no login at all."""
    agent = config_factory.agent()
    path = config_factory.write(agents=[agent])
    _refuse_reading(monkeypatch, Path(agent["credentials_file"]))
    assert main(["check", "--offline", "--config", str(path)]) != 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "agents[0].credentials_file" in out and "Permission denied" in out


@pytest.fixture
def no_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` must stop at the config: a daemon that starts is the failure, not a hang."""

    async def started(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("the daemon started on a config it should have refused")

    monkeypatch.setattr("claude_hooks.daemon.main.run_daemon", started)


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"daemon": {"poll_interval": math.nan}}, "daemon.poll_interval"),
        ({"api": {"max_body_bytes": 0}}, "api.max_body_bytes"),
    ],
)
def test_run_refuses_the_same_config_check_refuses(
    no_daemon: None,
    config_factory: ConfigFactory,
    capsys: pytest.CaptureFixture[str],
    sections: dict[str, Any],
    key: str,
) -> None:
    path = config_factory.write(**sections)
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"config error: {path}: {key}: " in err[0], err


def test_run_refuses_an_unreadable_prompt_file_before_starting(
    no_daemon: None, config_factory: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = config_factory.root / "prompts" / "dev.md"
    path = config_factory.write(agents=[config_factory.agent(prompt_file=str(missing))])
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: agents[0].prompt_file: " in err and str(missing) in err
