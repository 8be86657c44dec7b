from __future__ import annotations

import base64
import io
import json
import logging
import textwrap
import urllib.parse

import pytest
import structlog

from claude_hooks.config import LogFormat
from claude_hooks.daemon.log import config_secret_files, redactor, setup_logging
from tests.fakes.configs import ConfigFactory
from tests.fakes.leaks import leaks

TOKEN = "forgejo-token-of-dev-0123456789"
OAUTH = "oauth-dev-abcdef"


@pytest.fixture
def secrets_loaded(config_factory: ConfigFactory) -> None:
    config = config_factory.load()
    redactor.add_files(config_secret_files(config))


def _emit_everything(stream: io.StringIO, fmt: LogFormat) -> str:
    setup_logging(fmt, "debug", stream)
    log = structlog.get_logger("test").bind(agent="dev", task_id=7)
    log.info("clone_started", url=f"http://x-access-token:{TOKEN}@forge/r.git")
    log.warning("header", headers={"Authorization": f"token {TOKEN}"}, items=[OAUTH])
    try:
        raise RuntimeError(f"request failed with token {TOKEN}")
    except RuntimeError:
        log.exception("request_failed")
    logging.getLogger("aiohttp.client").error("stdlib says %s", TOKEN)
    return stream.getvalue()


@pytest.mark.parametrize("fmt", [LogFormat.JOURNAL, LogFormat.CONSOLE, LogFormat.JSON])
def test_configured_secrets_never_appear_in_any_renderer(
    secrets_loaded: None, fmt: LogFormat
) -> None:
    out = _emit_everything(io.StringIO(), fmt)
    assert "request_failed" in out and "RuntimeError" in out  # the events themselves are there
    assert TOKEN not in out
    assert OAUTH not in out
    assert "***" in out


def test_journal_lines_carry_syslog_priority_and_no_timestamp(secrets_loaded: None) -> None:
    out = _emit_everything(io.StringIO(), LogFormat.JOURNAL)
    lines = out.splitlines()
    assert lines[0].startswith("<6>clone_started ")
    assert "agent=dev" in lines[0] and "task_id=7" in lines[0]
    assert lines[1].startswith("<4>header")
    assert all(line.startswith("<3>") for line in lines[2:-1])  # exception + traceback lines
    assert not any("T" in line[:30] and "Z" in line[:40] for line in lines[:2])


def test_json_renderer_emits_one_object_per_line(secrets_loaded: None) -> None:
    out = _emit_everything(io.StringIO(), LogFormat.JSON)
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0]["event"] == "clone_started"
    assert records[0]["task_id"] == 7
    assert records[2]["level"] == "error" and "RuntimeError" in records[2]["exception"]


def test_auto_format_picks_journal_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    assert setup_logging(LogFormat.AUTO, "info", io.StringIO()) is LogFormat.JOURNAL
    monkeypatch.delenv("JOURNAL_STREAM")
    assert setup_logging(LogFormat.AUTO, "info", io.StringIO()) is LogFormat.CONSOLE


def test_log_level_filters_debug(secrets_loaded: None) -> None:
    stream = io.StringIO()
    setup_logging(LogFormat.JSON, "info", stream)
    structlog.get_logger().debug("noise")
    structlog.get_logger().info("signal")
    assert "noise" not in stream.getvalue() and "signal" in stream.getvalue()


ACCESS = "sk-ant-oat01-access-Zm9vYmFy+/4kq"
REFRESH = "sk-ant-ort01-refresh-0a1b2c3d4e5f"
API_TOKEN = "api token/with+specials=&?42"  # what percent-encoding changes
CREDENTIALS = json.dumps(
    {"claudeAiOauth": {"accessToken": ACCESS, "refreshToken": REFRESH, "expiresAt": 1}}, indent=2
)


def exfiltrated() -> dict[str, str]:
    """What a prompt-injected Claude's Bash tool prints when told to smuggle secrets out."""
    env_line = f"GIT_CONFIG_VALUE_0=Authorization: token {TOKEN}\n".encode()
    creds = CREDENTIALS.encode()
    return {
        # the attack, byte for byte: coreutils/busybox base64 wraps at 76 columns
        "env | grep GIT_CONFIG_VALUE | base64": base64.encodebytes(env_line).decode(),
        "base64 -w0 .credentials.json": base64.b64encode(creds).decode(),
        "basenc --base64url .credentials.json": base64.urlsafe_b64encode(creds).decode(),
        "printf x%s $TOKEN | base64": base64.b64encode(b"x" + TOKEN.encode()).decode(),
        "printf xy%s $TOKEN | base64": base64.b64encode(b"xy" + TOKEN.encode()).decode(),
        "xxd -p .credentials.json": "\n".join(textwrap.wrap(creds.hex(), 60)),
        "od | tr a-f A-F": TOKEN.encode().hex().upper(),
        "a URL, quote": "https://x/?t=" + urllib.parse.quote(API_TOKEN, safe=""),
        "a URL, quote_plus": "https://x/?t=" + urllib.parse.quote_plus(API_TOKEN),
    }


@pytest.mark.parametrize("command", list(exfiltrated()))
@pytest.mark.parametrize("fmt", [LogFormat.JOURNAL, LogFormat.JSON])
def test_encoded_secrets_never_appear_in_the_log(
    config_factory: ConfigFactory, fmt: LogFormat, command: str
) -> None:
    """Fails before the redactor knew encodings: the issue's base64 reply went out whole."""
    creds = config_factory.secret("creds-enc.json", CREDENTIALS)
    api = config_factory.secret("api-token", API_TOKEN)
    config = config_factory.load(
        agents=[config_factory.agent(credentials_file=str(creds))], api={"token_file": str(api)}
    )
    redactor.add_files(config_secret_files(config))
    stream = io.StringIO()
    setup_logging(fmt, "debug", stream)
    output = exfiltrated()[command]
    structlog.get_logger("test").info("claude_event", type="tool_result", text=output)
    secrets = {"token": TOKEN, "access": ACCESS, "refresh": REFRESH, "api token": API_TOKEN}
    assert "claude_event" in stream.getvalue()
    assert leaks(secrets, "the log", stream.getvalue()) == []
