"""Structured logs for journald, a terminal, or a log shipper — with secrets redacted.

One event per line. Under systemd (JOURNAL_STREAM set) the `journal` format sends
each event to journald natively with its fields (TASK_ID, AGENT…) when cysystemd is
installed, else prefixes each line with `<N>` so journald records its PRIORITY
(claude_hooks/journal.py); either way journald stamps the time. Every configured
secret is replaced by `***` in every field, exception text included, before any
renderer sees the event.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from claude_hooks.config import Config, LogFormat
from claude_hooks.journal import EntryRenderer, JournalHandler, JournalRenderer, native_sender

REDACTED = "***"
# Shorter values are too likely to occur by chance in ordinary text to redact safely.
MIN_SECRET_LENGTH = 6


class Redactor:
    """Holds the secret values to hide; shared by the log pipeline and report text."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, *values: str) -> None:
        fresh = {v.strip() for v in values if v and len(v.strip()) >= MIN_SECRET_LENGTH}
        with self._lock:
            # Longest first, so a secret containing another is hidden whole.
            self._secrets = tuple(sorted(set(self._secrets) | fresh, key=len, reverse=True))

    def add_files(self, files: Iterable[Path]) -> None:
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            self.add(text.strip(), *_json_string_values(text))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(v) for v in value)
        if isinstance(value, BaseException | Path):
            return self(str(value))
        return value


def _json_string_values(text: str) -> list[str]:
    """String leaves of a JSON document (the tokens inside .credentials.json)."""
    import json

    try:
        doc = json.loads(text)
    except ValueError:
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, str):
            found.append(node)
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    return found


# One process-wide instance: every logger and every report goes through it.
redactor = Redactor()


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
