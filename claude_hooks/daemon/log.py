"""Structured logs for journald, a terminal, or a log shipper — with secrets redacted.

One event per line. Under systemd (JOURNAL_STREAM set) the `journal` format sends
each event to journald natively with its fields (TASK_ID, AGENT…) when cysystemd is
installed, else prefixes each line with `<N>` so journald records its PRIORITY
(claude_hooks/daemon/journal.py); either way journald stamps the time. Every
configured secret, and its encodings, is replaced by `***` in every field, exception
text included, before any renderer sees the event (the shared `redactor` of
claude_hooks.redact).
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
from claude_hooks.daemon.journal import (
    EntryRenderer,
    JournalHandler,
    JournalRenderer,
    native_sender,
)
from claude_hooks.redact import REDACTED, Redactor, redactor

__all__ = ["REDACTED", "Redactor", "config_secret_files", "redactor", "setup_logging"]


def config_secret_files(config: Config) -> list[Path]:
    files: list[Path] = []
    for agent in config.agents:
        files.append(agent.token_file)
        if agent.auth_file is not None:
            files.append(agent.auth_file)
        files += agent.secret_env.values()
    if config.api.token_file:
        files.append(config.api.token_file)
    if config.forgejo.webhook_secret_file:
        files.append(config.forgejo.webhook_secret_file)
    return files


def _redact_processor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    return {key: redactor.value(value) for key, value in event.items()}


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

    def formatter(renderer: Any) -> logging.Formatter:
        return structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                *tail,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )

    handler: logging.Handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(_renderer(chosen, stream)))
    send = native_sender(stream) if chosen is LogFormat.JOURNAL else None
    if send is not None:  # the `<N>` lines stay, for an entry journald will not take
        handler = JournalHandler(send, fallback=handler)
        handler.setFormatter(formatter(EntryRenderer()))
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
