"""Logging to the journal: native entries with fields, `<N>` lines as the fallback, and the
CLI's error lines under systemd. The real journald is in tests/systemd/; here the sender is
a recording stand-in and "the journal stream" is a file whose device:inode JOURNAL_STREAM
names, as systemd names the unit's stream socket."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest
import structlog

from claude_hooks.config import LogFormat
from claude_hooks.daemon import journal, log
from claude_hooks.daemon.journal import (
    field_name,
    journal_entry,
    native_sender,
    stream_is_journal,
)
from claude_hooks.daemon.log import config_secret_files, redactor, setup_logging
from tests.fakes.configs import ConfigFactory

TOKEN = "forgejo-token-of-dev-0123456789"


def journal_env(stream: TextIO) -> dict[str, str]:
    found = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"}


@pytest.fixture
def journal_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TextIO]:
    """A stream this process 'was given by systemd'."""
    with (tmp_path / "journal-stream").open("w+") as stream:
        for key, value in journal_env(stream).items():
            monkeypatch.setenv(key, value)
        yield stream


@pytest.fixture
def journald_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "journal.socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield path


# --- decisions ------------------------------------------------------------------------------


def test_an_entry_has_message_priority_and_each_key_as_an_upper_case_field() -> None:
    event = {"event": "task_finished", "level": "warning", "task_id": 42, "agent": "dev",
             "state": "failed", "reason": None, "tasks": [3, 4], "clean": False}  # fmt: skip
    assert journal_entry(event) == {
        "EVENT": "task_finished",
        "TASK_ID": "42",
        "AGENT": "dev",
        "STATE": "failed",
        "TASKS": "[3, 4]",
        "CLEAN": "false",
        # As the `<N>` line reads (logfmt), so `journalctl -o cat` shows what it showed.
        "MESSAGE": 'task_finished task_id=42 agent=dev state=failed reason= tasks="[3, 4]" '
        "clean=false",
        "PRIORITY": "4",
        "SYSLOG_IDENTIFIER": "claude-hooks",
    }


def test_an_exception_is_in_the_message_and_error_is_priority_3() -> None:
    entry = journal_entry({"event": "boom", "level": "error", "exception": "Traceback…\nE: x"})
    assert entry["PRIORITY"] == "3"
    assert entry["MESSAGE"] == "boom\nTraceback…\nE: x"
    assert "EXCEPTION" not in entry and "LEVEL" not in entry


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("task_id", "TASK_ID"),
        ("priority", "EVENT_PRIORITY"),  # journald's own fields are never set by an event
        ("message", "EVENT_MESSAGE"),
        ("_pid", "PID"),  # a leading underscore is for journald's trusted fields
        ("2fa", "EVENT_2FA"),
        ("x-request.id", "X_REQUEST_ID"),
        ("a" * 80, "A" * 64),
    ],
)
def test_field_names_are_what_journald_accepts_and_never_its_own(key: str, name: str) -> None:
    assert field_name(key) == name


def test_only_the_stream_journal_stream_names_is_the_journal(
    tmp_path: Path, journal_stream: TextIO
) -> None:
    assert stream_is_journal(journal_stream)
    with (tmp_path / "terminal").open("w") as other:  # inherited the variable, not the stream
        assert not stream_is_journal(other)
    assert not stream_is_journal(journal_stream, environ={})


def test_native_sending_needs_the_journal_stream_the_socket_and_the_library(
    tmp_path: Path, journal_stream: TextIO, journald_socket: Path
) -> None:
    def send(**fields: str) -> int:
        return 0

    found = native_sender(journal_stream, socket=journald_socket, load=lambda: send)
    assert found is send
    assert native_sender(journal_stream, socket=tmp_path / "absent", load=lambda: send) is None
    plain_file = tmp_path / "not-a-socket"
    plain_file.write_text("")
    assert native_sender(journal_stream, socket=plain_file, load=lambda: send) is None
    assert native_sender(journal_stream, socket=journald_socket, load=lambda: None) is None
    elsewhere = native_sender(journal_stream, environ={}, socket=journald_socket, load=lambda: send)
    assert elsewhere is None


# --- the logging pipeline -------------------------------------------------------------------


class Journald:
    """Records what the handler sends; answers `result` (0, or -errno like libsystemd)."""

    def __init__(self, result: int = 0) -> None:
        self.entries: list[dict[str, str]] = []
        self.result = result

    def send(self, **fields: Any) -> int:
        self.entries.append(fields)
        return self.result


def native_logging(
    monkeypatch: pytest.MonkeyPatch, stream: TextIO, journald: Journald
) -> LogFormat:
    monkeypatch.setattr(log, "native_sender", lambda _stream: journald.send)
    return setup_logging(LogFormat.JOURNAL, "debug", stream)


def test_events_reach_the_journal_with_their_fields_and_secrets_redacted(
    monkeypatch: pytest.MonkeyPatch, config_factory: ConfigFactory, journal_stream: TextIO
) -> None:
    redactor.add_files(config_secret_files(config_factory.load()))
    journald = Journald()
    native_logging(monkeypatch, journal_stream, journald)
    with structlog.contextvars.bound_contextvars(task_id=7, agent="dev"):
        structlog.get_logger("test").info("clone_started", url=f"http://x:{TOKEN}@forge/r.git")
        structlog.get_logger("test").warning("precheck_failed", error=f"token {TOKEN} refused")
        try:
            raise RuntimeError(f"request failed with token {TOKEN}")
        except RuntimeError:
            structlog.get_logger("test").exception("task_crashed")
    logging.getLogger("aiohttp.client").error("stdlib says %s", TOKEN)

    entries = journald.entries
    assert [e["EVENT"] for e in entries] == [
        "clone_started", "precheck_failed", "task_crashed", "stdlib says ***",
    ]  # fmt: skip
    assert [e["PRIORITY"] for e in entries] == ["6", "4", "3", "3"]
    assert all(e["TASK_ID"] == "7" and e["AGENT"] == "dev" for e in entries[:3])
    assert "RuntimeError" in entries[2]["MESSAGE"]
    assert not any(TOKEN in value for entry in entries for value in entry.values())
    journal_stream.seek(0)
    assert journal_stream.read() == ""  # nothing went the fallback way


def test_an_entry_journald_refuses_is_printed_as_a_priority_line_instead(
    monkeypatch: pytest.MonkeyPatch, journal_stream: TextIO
) -> None:
    native_logging(monkeypatch, journal_stream, Journald(result=-11))  # -EAGAIN
    structlog.get_logger("test").warning("drain_interrupted", tasks=[5])
    journal_stream.seek(0)
    assert journal_stream.read() == "<4>drain_interrupted tasks=[5]\n"


def test_without_the_library_or_socket_journal_lines_carry_the_priority_prefix(
    journal_stream: TextIO,
) -> None:
    # The host has no journald socket: the real native_sender says no, as it must.
    assert not journal.JOURNAL_SOCKET.exists() or pytest.skip("this host runs journald")
    setup_logging(LogFormat.JOURNAL, "info", journal_stream)
    structlog.get_logger("test").error("daemon_start_failed", path="/x")
    journal_stream.seek(0)
    assert journal_stream.read() == "<3>daemon_start_failed path=/x\n"


# --- CLI error lines under systemd -----------------------------------------------------------


def test_a_failing_exec_start_pre_prints_its_errors_at_error_priority(
    config_factory: ConfigFactory, tmp_path: Path
) -> None:
    """`containers up` is the unit's ExecStartPre: under `journalctl -p warning` an operator
    must see why the start failed, not only systemd's `Failed with result 'exit-code'`."""
    path = config_factory.write()
    with (tmp_path / "stream").open("w+") as stream:
        done = subprocess.run(
            [sys.executable, "-m", "claude_hooks", "containers", "up", "--config", str(path)],
            stdout=stream, stderr=stream, timeout=60, text=True,
            env={**os.environ, **journal_env(stream),
                 "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
        )  # fmt: skip
        stream.seek(0)
        lines = stream.read().splitlines()
    assert done.returncode == 1
    failures = [line for line in lines if "does not answer" in line or "cannot connect" in line]
    assert failures and all(line.startswith("<3>claude-hooks containers: ") for line in failures)


def test_cli_lines_are_plain_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    journal.cli_line("dev: FAILED: image x is not present", "error", sys.stderr)
    assert capsys.readouterr().err == "dev: FAILED: image x is not present\n"
