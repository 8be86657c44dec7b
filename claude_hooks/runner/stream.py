"""One line of `claude -p --output-format stream-json --verbose` → one typed event.

The CLI prints one JSON object per line (see docs/CLAUDE-CLI.md): `system/init`
first, then `assistant` lines (one content block each), `user` lines carrying tool
results, `system` notices (api_retry, permission_denied, …) and a `result` last —
unless the process was killed. New line types appear between CLI versions, so
anything unrecognised becomes `Unknown`, and anything unreadable `Malformed`:
`parse_line` never raises.

`failure_of` says why a run failed, as facts (a `RunFailure`), from the result line
(or its absence) and the exit code; `outcome_of` makes the run's `Outcome`, with the
failure in the words it is given (report/render.py's, which the runner does not import).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import Any, ClassVar, TypeGuard

import orjson

from claude_hooks.runner.limits import NO_SIGNALS, REJECTED, RunSignals, usage_limit_of
from claude_hooks.tasks import FailureKind, Outcome, RunFailure, TaskState
from claude_hooks.text import format_cost, format_duration, one_line

SUMMARY_LIMIT = 160  # characters of one summary line (log line, progress comment)
_SIGNAL_EXIT_BASE = 128  # a shell's exit code for "killed by signal N" is 128 + N


def summary_line(text: str) -> str:
    """One event's summary: one line of at most SUMMARY_LIMIT characters."""
    return one_line(text, SUMMARY_LIMIT)


@dataclass(frozen=True, slots=True)
class Init:
    session_id: str | None
    model: str | None
    cwd: str | None
    tools: tuple[str, ...]
    permission_mode: str | None
    claude_code_version: str | None
    raw: str = field(repr=False)
    kind: ClassVar[str] = "init"

    @property
    def summary(self) -> str:
        return summary_line(
            f"session {self.session_id} started: model {self.model}, cwd {self.cwd}, "
            f"{len(self.tools)} tools"
        )


@dataclass(frozen=True, slots=True)
class AssistantText:
    text: str
    message_id: str | None
    raw: str = field(repr=False)
    kind: ClassVar[str] = "text"

    @property
    def summary(self) -> str:
        return summary_line(self.text)


@dataclass(frozen=True, slots=True)
class ToolUse:
    tool_id: str | None
    name: str
    input_summary: str  # the argument that says what the call does: command, path, pattern
    message_id: str | None
    raw: str = field(repr=False)
    kind: ClassVar[str] = "tool_use"

    @property
    def summary(self) -> str:
        return summary_line(
            f"{self.name}: {self.input_summary}" if self.input_summary else self.name
        )


@dataclass(frozen=True, slots=True)
class Thinking:
    text: str
    message_id: str | None
    raw: str = field(repr=False)
    kind: ClassVar[str] = "thinking"

    @property
    def summary(self) -> str:
        return summary_line(f"thinking: {self.text}" if self.text else "thinking")


@dataclass(frozen=True, slots=True)
class ToolResult:
    tool_use_id: str | None
    is_error: bool
    content: str
    raw: str = field(repr=False)
    kind: ClassVar[str] = "tool_result"

    @property
    def summary(self) -> str:
        return summary_line(f"{'error' if self.is_error else 'ok'}: {self.content}")


@dataclass(frozen=True, slots=True)
class ApiRetry:
    attempt: int | None
    max_retries: int | None
    retry_delay_ms: int | None
    error_status: int | None
    error: str | None
    raw: str = field(repr=False)
    kind: ClassVar[str] = "api_retry"

    @property
    def summary(self) -> str:
        status = " ".join(str(p) for p in (self.error_status, self.error) if p is not None)
        delay = f", next in {self.retry_delay_ms / 1000:.1f}s" if self.retry_delay_ms else ""
        return summary_line(
            f"Claude API retry {self.attempt}/{self.max_retries} after {status or 'error'}{delay}"
        )


@dataclass(frozen=True, slots=True)
class PermissionDenied:
    tool_name: str | None
    tool_use_id: str | None
    message: str
    raw: str = field(repr=False)
    kind: ClassVar[str] = "permission_denied"

    @property
    def summary(self) -> str:
        return summary_line(f"permission denied for {self.tool_name}: {self.message}")


ALLOWED_WARNING = "allowed_warning"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A `rate_limit_event` (2.1.x): where the account stands against a usage limit.

    "allowed_warning" is only news; "rejected" means requests are being refused
    until `resets_at` (unix seconds) — the run is about to end on it.
    """

    status: str | None  # allowed | allowed_warning | rejected
    resets_at: float | None
    limit_type: str | None  # five_hour | seven_day | … (rateLimitType)
    raw: str = field(repr=False)
    kind: ClassVar[str] = "rate_limit"

    @property
    def is_warning(self) -> bool:
        """Close to a usage limit: worth telling people, nothing else changes."""
        return self.status == ALLOWED_WARNING

    @property
    def summary(self) -> str:
        resets = f", resets at {_utc(self.resets_at)}" if self.resets_at is not None else ""
        kind = f" ({self.limit_type})" if self.limit_type else ""
        if self.is_warning:
            return summary_line(f"Claude usage is close to its limit{kind}{resets}")
        return summary_line(f"Claude usage {self.status or 'unknown'}{kind}{resets}")


@dataclass(frozen=True, slots=True)
class ApiErrorMessage:
    """The assistant message Claude Code writes itself when the API failed for good
    (`model: "<synthetic>"`, a top-level `error`: "rate_limit", "server_error", …)."""

    error: str
    text: str
    message_id: str | None
    raw: str = field(repr=False)
    kind: ClassVar[str] = "api_error"

    @property
    def summary(self) -> str:
        return summary_line(f"Claude API error ({self.error}): {self.text}")


@dataclass(frozen=True, slots=True)
class Result:
    subtype: str | None
    is_error: bool
    result: str | None
    num_turns: int | None
    duration_ms: int | None
    total_cost_usd: float | None
    session_id: str | None
    terminal_reason: str | None
    api_error_status: int | None
    errors: tuple[str, ...]
    raw: str = field(repr=False)
    api_error: str | None = None  # 2.1.x: what the API error was, e.g. "usage_limit_reached"
    api_error_type: str | None = None  # 2.1.x: the error body's type, e.g. "overloaded_error"
    kind: ClassVar[str] = "result"

    @property
    def summary(self) -> str:
        parts = [f"{self.num_turns} turns" if self.num_turns is not None else None]
        if self.total_cost_usd is not None:
            parts.append(format_cost(self.total_cost_usd))
        if self.duration_ms is not None:
            parts.append(format_duration(self.duration_ms / 1000))
        how = "error" if self.is_error else "done"
        reason = self.terminal_reason or self.subtype
        stats = ", ".join(p for p in parts if p)
        return summary_line(f"{how} ({reason}): {stats}" if stats else f"{how} ({reason})")


@dataclass(frozen=True, slots=True)
class Unknown:
    type: str  # "type" or "type/subtype" of a line this parser does not know
    raw: str = field(repr=False)
    kind: ClassVar[str] = "unknown"

    @property
    def summary(self) -> str:
        return summary_line(f"unrecognised line: {self.type}")


@dataclass(frozen=True, slots=True)
class Malformed:
    raw: str
    error: str
    kind: ClassVar[str] = "malformed"

    @property
    def summary(self) -> str:
        return summary_line(f"unreadable line ({self.error}): {self.raw}")


StreamEvent = (
    Init
    | AssistantText
    | ToolUse
    | Thinking
    | ToolResult
    | ApiRetry
    | PermissionDenied
    | RateLimit
    | ApiErrorMessage
    | Result
    | Unknown
    | Malformed
)


def parse_line(line: str | bytes) -> StreamEvent:
    """The event one output line stands for. Never raises."""
    raw = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
    raw = raw.rstrip("\r\n")
    try:
        obj = orjson.loads(raw)  # ~3× json.loads; every line of every run comes here
    except (ValueError, RecursionError) as exc:
        return Malformed(raw=raw, error=f"not JSON: {exc}")
    if not isinstance(obj, dict):
        return Malformed(raw=raw, error=f"a JSON {type(obj).__name__}, not an object")
    try:
        return _event(obj, raw)
    except Exception as exc:  # a shape no parser branch expected must not stop the run
        return Malformed(raw=raw, error=f"unexpected shape: {type(exc).__name__}: {exc}")


def _event(obj: dict[str, Any], raw: str) -> StreamEvent:
    kind = obj.get("type")
    if kind == "assistant":
        return _assistant(obj, raw)
    if kind == "user":
        return _user(obj, raw)
    if kind == "result":
        return _result(obj, raw)
    if kind == "system":
        return _system(obj, raw)
    if kind == "rate_limit_event":
        return _rate_limit(obj, raw)
    return Unknown(type=_str(kind) or "(no type)", raw=raw)


def _system(obj: dict[str, Any], raw: str) -> StreamEvent:
    subtype = obj.get("subtype")
    if subtype == "init":
        tools = obj.get("tools")
        return Init(
            session_id=_str(obj.get("session_id")),
            model=_str(obj.get("model")),
            cwd=_str(obj.get("cwd")),
            tools=tuple(t for t in tools if isinstance(t, str)) if isinstance(tools, list) else (),
            permission_mode=_str(obj.get("permissionMode")),
            claude_code_version=_str(obj.get("claude_code_version")),
            raw=raw,
        )
    if subtype == "api_retry":
        return ApiRetry(
            attempt=_int(obj.get("attempt")),
            max_retries=_int(obj.get("max_retries")),
            retry_delay_ms=_int(obj.get("retry_delay_ms")),
            error_status=_int(obj.get("error_status")),
            error=_text(obj.get("error")) or None,
            raw=raw,
        )
    if subtype == "permission_denied":
        return PermissionDenied(
            tool_name=_str(obj.get("tool_name")),
            tool_use_id=_str(obj.get("tool_use_id")),
            message=_text(obj.get("message")),
            raw=raw,
        )
    return Unknown(type=f"system/{_str(subtype) or '?'}", raw=raw)


def _blocks(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    message = obj.get("message")
    if not isinstance(message, dict):
        return None, []
    content = message.get("content")
    if not isinstance(content, list):
        return message, []
    return message, [b for b in content if isinstance(b, dict)]


def _assistant(obj: dict[str, Any], raw: str) -> StreamEvent:
    # The CLI prints one content block per line; should a line ever carry more, the
    # first block decides the event and the texts of all text blocks are kept.
    if (text := _lone_text(obj)) is not None:  # most lines of a run: the short way
        return AssistantText(text, _str(obj["message"].get("id")), raw)
    message, blocks = _blocks(obj)
    if message is None or not blocks:
        return Unknown(type="assistant", raw=raw)
    message_id = _str(message.get("id"))
    error = _str(obj.get("error"))
    if error is not None:
        text = "\n".join(_text(b.get("text")) for b in blocks if b.get("type") == "text")
        return ApiErrorMessage(error=error, text=text, message_id=message_id, raw=raw)
    first = blocks[0]
    block_type = first.get("type")
    if block_type == "text":
        text = "\n".join(_text(b.get("text")) for b in blocks if b.get("type") == "text")
        return AssistantText(text=text, message_id=message_id, raw=raw)
    if block_type == "tool_use":
        name = _str(first.get("name")) or "?"
        return ToolUse(
            tool_id=_str(first.get("id")),
            name=name,
            input_summary=tool_input_summary(name, first.get("input")),
            message_id=message_id,
            raw=raw,
        )
    if block_type in ("thinking", "redacted_thinking"):
        return Thinking(text=_text(first.get("thinking")), message_id=message_id, raw=raw)
    return Unknown(type=f"assistant/{_str(block_type) or '?'}", raw=raw)


def _lone_text(obj: dict[str, Any]) -> str | None:
    """The text of a line that is one text block and no error, else None."""
    message = obj.get("message")
    if "error" in obj or not isinstance(message, dict):
        return None
    content = message.get("content")
    if not isinstance(content, list) or len(content) != 1:
        return None
    block = content[0]
    if not isinstance(block, dict) or block.get("type") != "text":
        return None
    text = block.get("text")
    return text if isinstance(text, str) else None


def _user(obj: dict[str, Any], raw: str) -> StreamEvent:
    _, blocks = _blocks(obj)
    results = [b for b in blocks if b.get("type") == "tool_result"]
    if not results:
        return Unknown(type="user", raw=raw)
    first = results[0]
    return ToolResult(
        tool_use_id=_str(first.get("tool_use_id")),
        is_error=first.get("is_error") is True,
        content=_content_text(first.get("content")),
        raw=raw,
    )


def _result(obj: dict[str, Any], raw: str) -> Result:
    errors = obj.get("errors")
    cost = obj.get("total_cost_usd")
    return Result(
        subtype=_str(obj.get("subtype")),
        is_error=obj.get("is_error") is True,
        result=_str(obj.get("result")),
        num_turns=_int(obj.get("num_turns")),
        duration_ms=_int(obj.get("duration_ms")),
        total_cost_usd=float(cost) if _is_number(cost) else None,
        session_id=_str(obj.get("session_id")),
        terminal_reason=_str(obj.get("terminal_reason")),
        api_error_status=_int(obj.get("api_error_status")),
        errors=tuple(_text(e) for e in errors) if isinstance(errors, list) else (),
        raw=raw,
        api_error=_str(obj.get("api_error")),
        api_error_type=_str(obj.get("api_error_type")),
    )


def _rate_limit(obj: dict[str, Any], raw: str) -> StreamEvent:
    info = obj.get("rate_limit_info")
    if not isinstance(info, dict):
        return Unknown(type="rate_limit_event", raw=raw)
    resets = info.get("resetsAt")
    return RateLimit(
        status=_str(info.get("status")),
        resets_at=float(resets) if _is_number(resets) else None,
        limit_type=_str(info.get("rateLimitType")),
        raw=raw,
    )


# The one argument that says what a call of a known tool does.
_TOOL_KEYS: dict[str, tuple[str, ...]] = {
    "Bash": ("command",),
    "Edit": ("file_path",),
    "MultiEdit": ("file_path",),
    "Write": ("file_path",),
    "Read": ("file_path",),
    "NotebookEdit": ("notebook_path",),
    "Glob": ("pattern",),
    "Grep": ("pattern",),
    "WebFetch": ("url",),
    "WebSearch": ("query",),
    "Task": ("description", "prompt"),
}
_FALLBACK_KEYS = ("command", "file_path", "path", "pattern", "url", "query", "description")


def tool_input_summary(name: str, tool_input: object) -> str:
    """One line saying what a tool call does: `git status` for Bash, the path for Edit."""
    if not isinstance(tool_input, dict):
        return ""
    for key in (*_TOOL_KEYS.get(name, ()), *_FALLBACK_KEYS):
        value = tool_input.get(key)
        if isinstance(value, str) and value.strip():
            return summary_line(value)
    for value in tool_input.values():
        if isinstance(value, str) and value.strip():
            return summary_line(value)
    return ""


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [_text(c.get("text")) for c in content if isinstance(c, dict)]
        return "\n".join(p for p in parts if p)
    return ""


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


# What an operator follows in the journal: what Claude does (tool calls), what went
# wrong, and how the run ends. Text and thinking, successful tool output and routine
# rate-limit news are at debug: a run prints thousands of them (all stay in the task's
# event log), and logging each at info cost half the stream's throughput.
_JOURNAL_INFO_KINDS = frozenset(
    {"init", "tool_use", "api_retry", "permission_denied", "api_error", "result", "malformed"}
)
RATE_LIMIT_ALLOWED = "allowed"


def journal_level(event: StreamEvent) -> int:
    """The logging level of the daemon's `claude_event` line for this event."""
    if isinstance(event, ToolResult):
        return logging.INFO if event.is_error else logging.DEBUG
    if isinstance(event, RateLimit):
        if event.is_warning:  # close to a usage limit: worth `journalctl -p warning`
            return logging.WARNING
        return logging.DEBUG if event.status == RATE_LIMIT_ALLOWED else logging.INFO
    return logging.INFO if event.kind in _JOURNAL_INFO_KINDS else logging.DEBUG


# HTTP statuses (and error body types) that may pass: the API overloaded or failing,
# a timeout. Another run later can succeed where the CLI's own retries did not.
_RETRYABLE_STATUS = frozenset({408, 500, 502, 503, 504, 529})
_RETRYABLE_TYPES = frozenset({"overloaded_error", "api_error", "timeout_error"})
_RETRYABLE_ERRORS = frozenset({"server_error", "overloaded"})


def observe(signals: RunSignals, event: StreamEvent) -> RunSignals:
    """`signals` after one more event: what the outcome rules need besides the result."""
    if isinstance(event, RateLimit) and event.status == REJECTED:
        return replace(signals, rejected_limit=(event.limit_type, event.resets_at))
    if isinstance(event, ApiErrorMessage):
        return replace(signals, api_error=event.error, api_error_text=event.text)
    return signals


def _failed(result: Result) -> bool:
    # 1.0.x ends an aborted run with subtype "error_during_execution" but is_error false.
    return result.is_error or (result.subtype or "").startswith("error_")


def failure_of(
    result: Result | None,
    exit_code: int | None,
    stderr_tail: str,
    *,
    signals: RunSignals = NO_SIGNALS,
    ended_at: float | None = None,
    zone: tzinfo | None = None,
    budget_usd: float | None = None,
) -> RunFailure | None:
    """Why a run failed, from its result line (if any), the other lines' `signals`,
    its exit code and the end of stderr; None when it succeeded.

    Decided by `is_error` and `terminal_reason`, never by `subtype` alone: an API failure
    after all retries ends with subtype "success" but is_error true (docs/CLAUDE-CLI.md).
    A usage limit is told apart from other failures (limits.py): `ended_at` and the
    agent's `zone` place a reset time the CLI gave only as text ("resets 5am").
    """
    if result is None:
        if exit_code is not None and exit_code > _SIGNAL_EXIT_BASE:
            return RunFailure(FailureKind.KILLED, exit_code)
        last = next((ln for ln in reversed(stderr_tail.splitlines()) if ln.strip()), "")
        return RunFailure(FailureKind.NO_RESULT, exit_code, detail=last)
    if not _failed(result):
        return None
    reason = result.terminal_reason
    # The run's own limits first: their texts are the CLI's, never a usage limit's.
    if reason == "budget_exhausted" or result.subtype == "error_max_budget_usd":
        return RunFailure(FailureKind.BUDGET, exit_code, budget_usd=budget_usd)
    if reason == "max_turns" or (reason is None and result.subtype == "error_max_turns"):
        return RunFailure(FailureKind.MAX_TURNS, exit_code)
    limit = usage_limit_of(result.result, result.api_error, signals, ended_at=ended_at, zone=zone)
    if limit is not None:
        return RunFailure(FailureKind.USAGE_LIMIT, exit_code, usage_limit=limit)
    if reason == "api_error":
        return RunFailure(
            FailureKind.API_ERROR,
            exit_code,
            api_status=result.api_error_status,
            retryable=_retryable(result, signals),
        )
    detail = "; ".join(e for e in result.errors if e) or result.result or ""
    what = reason or result.subtype
    return RunFailure(FailureKind.CLAUDE_ERROR, exit_code, what=what, detail=detail)


def _retryable(result: Result, signals: RunSignals) -> bool:
    return (
        result.api_error_status in _RETRYABLE_STATUS
        or result.api_error_type in _RETRYABLE_TYPES
        or signals.api_error in _RETRYABLE_ERRORS
    )


def outcome_of(
    result: Result | None,
    exit_code: int | None,
    stderr_tail: str,
    words: Callable[[RunFailure], str],
    *,
    signals: RunSignals = NO_SIGNALS,
    ended_at: float | None = None,
    zone: tzinfo | None = None,
    budget_usd: float | None = None,
) -> Outcome:
    """How a run ended; a failure is stated in `words` (report/render.failure_reason).

    A usage limit or a retryable API error is still FAILED, carrying `usage_limit` /
    `retryable`: whoever records the outcome decides to pause and requeue instead.
    """
    failure = failure_of(
        result,
        exit_code,
        stderr_tail,
        signals=signals,
        ended_at=ended_at,
        zone=zone,
        budget_usd=budget_usd,
    )
    tail = stderr_tail or None
    state = TaskState.SUCCEEDED if failure is None else TaskState.FAILED
    reason = None if failure is None else words(failure)
    flags: dict[str, Any] = {}
    if failure is not None:
        flags = {"usage_limit": failure.usage_limit, "retryable": failure.retryable}
    if result is None:
        return Outcome(state=state, reason=reason, exit_code=exit_code, stderr_tail=tail, **flags)
    return Outcome(
        state=state,
        reason=reason,
        result=result.result,
        session_id=result.session_id,
        cost_usd=result.total_cost_usd,
        num_turns=result.num_turns,
        duration_ms=result.duration_ms,
        exit_code=exit_code,
        stderr_tail=tail,
        **flags,
    )


def _utc(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return str(seconds)
