"""The systemd journal: native entries with fields, or lines with a `<N>` priority prefix.

Under systemd a unit's stdout and stderr are a stream to journald, and JOURNAL_STREAM
holds that stream's "device:inode" (systemd.exec(5)). There, each log event is sent
natively through cysystemd (the `journal` extra, a maintained binding of libsystemd):
MESSAGE reads as the `<N>` line would, PRIORITY comes from the level, and every other
key of the event becomes an upper-case field (TASK_ID, AGENT, EVENT…), so
`journalctl --user -u claude-hooks TASK_ID=42` finds one task's lines. Without
cysystemd, without journald's socket, or for an entry that cannot be sent, the event
goes to the stream as `<N>text`, which journald stores at priority N (sd-daemon(3)).
CLI messages printed under systemd carry the same prefix (`cli_line`).

Secrets are redacted before anything here sees an event (claude_hooks/daemon/log.py).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

# syslog priorities, as journald reads them from a `<N>` line prefix (sd-daemon.h)
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}
IDENTIFIER = "claude-hooks"  # as journald names the unit's stream, so both read alike
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")  # where libsystemd sends entries

# Fields journald or journalctl give a meaning of their own: an event key never sets them.
_RESERVED = frozenset(
    {"MESSAGE", "MESSAGE_ID", "PRIORITY", "SYSLOG_IDENTIFIER", "SYSLOG_FACILITY", "SYSLOG_PID"}
    | {"SYSLOG_TIMESTAMP", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "ERRNO", "TID", "UNIT"}
    | {"USER_UNIT", "INVOCATION_ID", "USER_INVOCATION_ID", "DOCUMENTATION"}
)
_NOT_IN_A_NAME = re.compile(r"[^A-Z0-9_]")
_MAX_NAME = 64  # journald drops longer field names

_LOGFMT = structlog.processors.LogfmtRenderer()

JournalSend = Callable[..., int]  # cysystemd.journal.send: fields as keywords → 0 or -errno


def priority(level: str) -> int:
    return PRIORITY.get(level, 6)


# --- decisions ------------------------------------------------------------------------------


def message_parts(event: Mapping[str, Any]) -> tuple[int, str, str]:
    """(priority, `event key=value …`, exception text) of an event; it is not changed."""
    rest = {k: v for k, v in event.items() if k not in ("level", "timestamp", "event", "exception")}
    text = str(event.get("event", ""))
    if rest:
        text += " " + _LOGFMT(None, "", rest)
    return priority(str(event.get("level", "info"))), text, str(event.get("exception") or "")


def prefixed(text: str, prio: int) -> str:
    """Every line with `<prio>`: journald splits on newlines, each record keeps its priority."""
    return "\n".join(f"<{prio}>{line}" for line in (text.splitlines() or [""]))


def field_name(key: str) -> str:
    """The journal field for an event key: upper case, [A-Z0-9_], not one journald owns."""
    name = _NOT_IN_A_NAME.sub("_", key.upper()).lstrip("_") or "FIELD"
    if name[0].isdigit() or name in _RESERVED:
        name = f"EVENT_{name}"
    return name[:_MAX_NAME]


def field_value(value: Any) -> str | None:
    """Text of a field value: JSON for lists and tables, none for None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def journal_entry(event: Mapping[str, Any]) -> dict[str, str]:
    """The fields of one journal entry for a (redacted) log event."""
    prio, text, exc = message_parts(event)
    fields: dict[str, str] = {}
    for key, value in event.items():
        if key in ("level", "exception"):  # PRIORITY and MESSAGE carry them
            continue
        if (text_value := field_value(value)) is not None:
            fields[field_name(key)] = text_value
    fields.update(
        MESSAGE=text + (f"\n{exc}" if exc else ""),
        PRIORITY=str(prio),
        SYSLOG_IDENTIFIER=IDENTIFIER,
    )
    return fields


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether `stream` is the journal stream systemd connected (JOURNAL_STREAM names it);
    a terminal that merely inherited the variable is not."""
    expected = environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        found = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return expected == f"{found.st_dev}:{found.st_ino}"


# --- I/O at the edges -----------------------------------------------------------------------


def _import_send() -> JournalSend | None:
    try:
        from cysystemd.journal import send
    except ImportError:  # the `journal` extra is not installed: `<N>` lines instead
        return None
    return send


def native_sender(
    stream: TextIO,
    *,
    environ: Mapping[str, str] = os.environ,
    socket: Path = JOURNAL_SOCKET,
    load: Callable[[], JournalSend | None] = _import_send,
) -> JournalSend | None:
    """cysystemd's send when this process logs to the journal and can reach it, else None.
    (libsystemd drops entries silently when the socket is missing: hence the look.)"""
    if not stream_is_journal(stream, environ):
        return None
    try:
        if not stat.S_ISSOCK(socket.stat().st_mode):
            return None
    except OSError:
        return None
    return load()


class JournalRenderer:
    """`<6>event key=value …` — journald takes the priority from the prefix."""

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        prio, text, exc = message_parts(event)
        return prefixed(text + (f"\n{exc}" if exc else ""), prio)


class EntryRenderer:
    """The journal entry of an event, as JSON text (ProcessorFormatter wants a string)."""

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        return json.dumps(journal_entry(event), ensure_ascii=False)


class JournalHandler(logging.Handler):
    """Sends each record natively; one it cannot send goes to `fallback` (`<N>` lines).
    Its formatter must end in EntryRenderer."""

    def __init__(self, send: JournalSend, fallback: logging.Handler) -> None:
        super().__init__()
        self._send = send
        self._fallback = fallback

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sent = self._send(**json.loads(self.format(record)))
        except Exception:  # a bad entry must not lose the line: print it instead
            sent = -1
        if sent is None or sent >= 0:  # cysystemd returns sd_journal_sendv's result
            return
        self._fallback.handle(record)


def cli_line(text: str, level: str = "error", stream: TextIO | None = None) -> None:
    """Print a CLI message; on the journal stream each line carries its priority, so
    `journalctl -p warning` shows why an ExecStartPre failed."""
    stream = stream or sys.stderr
    if stream_is_journal(stream):
        text = prefixed(text, priority(level))
    print(text, file=stream, flush=True)
