"""Structured logs for journald, a terminal, or a log shipper — with secrets redacted.

One event per line. Under systemd (JOURNAL_STREAM set) the `journal` renderer
prefixes each line with `<N>` so journald records its PRIORITY, and leaves the
timestamp to journald. Every configured secret, and its encodings, is replaced by
`***` in every field, exception text included, before any renderer sees the event
(the shared `redactor` of claude_hooks.redact).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from claude_hooks.config import Config, LogFormat
from claude_hooks.redact import REDACTED, Redactor, redactor

__all__ = ["REDACTED", "Redactor", "config_secret_files", "redactor", "setup_logging"]

# syslog priorities, as journald reads them from a `<N>` line prefix (sd-daemon.h)
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def config_secret_files(config: Config) -> list[Path]:
    files: list[Path] = []
    for agent in config.agents:
        files += [agent.token_file, agent.credentials_file]
    if config.api.token_file:
        files.append(config.api.token_file)
    if config.forgejo.webhook_secret_file:
        files.append(config.forgejo.webhook_secret_file)
    return files


def _redact_processor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    return {key: redactor.value(value) for key, value in event.items()}


class JournalRenderer:
    """`<6>event key=value …` — journald takes the priority from the prefix."""

    def __init__(self) -> None:
        self._kv = structlog.processors.LogfmtRenderer()

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        level = str(event.pop("level", "info"))
        event.pop("timestamp", None)
        text = event.pop("event", "")
        exc = event.pop("exception", None)
        rest = self._kv(logger, name, event) if event else ""
        line = f"<{_PRIORITY.get(level, 6)}>{text}" + (f" {rest}" if rest else "")
        if exc:
            # journald splits on newlines; keep the traceback one record per line, same priority.
            prefix = f"<{_PRIORITY.get(level, 6)}>"
            line += "\n" + "\n".join(prefix + part for part in str(exc).splitlines())
        return line


def choose_format(requested: LogFormat | str, stream: TextIO) -> LogFormat:
    fmt = LogFormat(requested)
    if fmt is not LogFormat.AUTO:
        return fmt
    return LogFormat.JOURNAL if os.environ.get("JOURNAL_STREAM") else LogFormat.CONSOLE


def _renderer(fmt: LogFormat, stream: TextIO) -> Any:
    if fmt is LogFormat.JOURNAL:
        return JournalRenderer()
    if fmt is LogFormat.JSON:
        return structlog.processors.JSONRenderer()
    colors = stream.isatty() and not os.environ.get("NO_COLOR")
    return structlog.dev.ConsoleRenderer(
        colors=colors, exception_formatter=structlog.dev.plain_traceback
    )


def setup_logging(
    fmt: LogFormat | str = LogFormat.AUTO, level: str = "info", stream: TextIO | None = None
) -> LogFormat:
    """Configure structlog and route stdlib logging (aiohttp, asyncio) through it."""
    stream = stream or sys.stderr
    chosen = choose_format(fmt, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
    ]
    if chosen is not LogFormat.JOURNAL:
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    # The exception must be text before redaction, or a token inside it would escape.
    tail: list[Any] = [structlog.processors.format_exc_info, _redact_processor]
    numeric = logging.getLevelName(level.upper())
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            *tail,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _renderer(chosen, stream),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    logging.getLogger("aiohttp.access").setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )
    return chosen
