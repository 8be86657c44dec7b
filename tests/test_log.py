from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from claude_hooks.config import LogFormat
from claude_hooks.log import config_secret_files, redactor, setup_logging
from tests.fakes.configs import ConfigFactory

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
