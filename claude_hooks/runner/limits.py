"""Usage limits: whether a run ended on one, which, and when it resets. Pure functions.

A subscription login hits session (5-hour) and weekly limits. The CLI says so in
three ways, depending on its version (real captures in tests/data/real-streams/):
a `rate_limit_event` with status "rejected" and `resetsAt` (2.1.x), a synthetic
assistant message with top-level `error: "rate_limit"`, and a result whose text
names the limit and its reset: "Weekly limit reached ∙ resets 5am" (2.0.x),
"You've hit your 5-hour limit · resets 2:58am (UTC)" (2.1.x). The reset time comes
from `resetsAt` when there is one; else from the text, in the zone it names, else
the agent's zone, else UTC, as the next such time after the run ended; else none
(the caller waits agents.usage_limit_backoff).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from claude_hooks.tasks import UsageLimit

REJECTED = "rejected"
RATE_LIMIT_ERROR = "rate_limit"  # the synthetic assistant message's `error`
USAGE_LIMIT_API_ERROR = "usage_limit_reached"  # a 2.1.x result's `api_error`

# "Weekly limit reached ∙ resets 5am", "You've hit your session limit · resets 9am": a
# limit, and when it resets (the run's own limits, turns and budget, never reset).
_LIMIT_TEXT = re.compile(r"\blimit reached\b|\bhit your\b[^.·∙]{0,40}\blimit\b", re.I)
# 1.0.x said "Claude AI usage limit reached|<unix seconds of the reset>".
_PIPE_RESET = re.compile(r"usage limit reached\|(\d{9,11})\b", re.I)
_RESET = re.compile(
    r"\bresets?\s+(?:at\s+)?"
    r"(?:(?P<month>[A-Z][a-z]{2})\s+(?P<day>\d{1,2}),?\s+(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>am|pm)"
    r"(?:\s*\((?P<zone>[^)]+)\))?",
    re.I,
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_TYPE_WORDS = (
    ("session", "five_hour"),
    ("5-hour", "five_hour"),
    ("weekly", "seven_day"),
    ("opus", "seven_day_opus"),
    ("sonnet", "seven_day_sonnet"),
)


@dataclass(frozen=True)
class RunSignals:
    """What a run's lines said besides its result: the last usage-limit event that
    refused requests, and the last API error Claude Code wrote as a message."""

    rejected_limit: tuple[str | None, float | None] | None = None  # (rateLimitType, resetsAt)
    api_error: str | None = None  # the synthetic message's `error`
    api_error_text: str = ""


NO_SIGNALS = RunSignals()


def names_a_limit(text: str | None) -> bool:
    """Whether a result or message text says a usage limit stopped the run."""
    if not text:
        return False
    if _PIPE_RESET.search(text):
        return True
    return (
        _LIMIT_TEXT.search(text) is not None and re.search(r"\bresets?\b", text, re.I) is not None
    )


def limit_type_of(text: str) -> str | None:
    lowered = text.lower()
    return next((kind for word, kind in _TYPE_WORDS if word in lowered), None)


def zone_named(name: str | None) -> tzinfo | None:
    if not name:
        return None
    if name.strip().upper() in ("UTC", "GMT", "Z"):
        return UTC
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        return None


def reset_time(text: str, *, after: float, zone: tzinfo | None = None) -> float | None:
    """When "resets 5am" / "resets 9am (Europe/Berlin)" / "resets Dec 3, 5am" is, in unix
    seconds: the next such time after `after`, in the zone the text names, else `zone`,
    else UTC. None when the text names no reset time."""
    if piped := _PIPE_RESET.search(text):
        return float(piped[1])
    match = _RESET.search(text)
    if match is None:
        return None
    where = zone_named(match["zone"]) or zone or UTC
    hour = int(match["hour"]) % 12 + (12 if match["ampm"].lower() == "pm" else 0)
    minute = int(match["minute"] or 0)
    if hour > 23 or minute > 59:
        return None
    start = datetime.fromtimestamp(after, where)
    if match["month"] and match["month"].lower() in _MONTHS:
        month = _MONTHS.index(match["month"].lower()) + 1
        try:
            when = start.replace(month=month, day=int(match["day"]), hour=hour, minute=minute)
            when = when.replace(second=0, microsecond=0)
        except ValueError:
            return None
        if when.timestamp() <= after:
            when = when.replace(year=when.year + 1)
        return when.timestamp()
    when = start.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if when.timestamp() <= after:
        # A day on, at the same wall-clock time (a DST change in between keeps 5am 5am).
        when = (when + timedelta(days=1)).replace(hour=hour, minute=minute)
    return when.timestamp()


def usage_limit_of(
    result_text: str | None,
    api_error: str | None,
    signals: RunSignals,
    *,
    ended_at: float | None,
    zone: tzinfo | None = None,
) -> UsageLimit | None:
    """The usage limit a failed run ended on, or None when it was something else.

    `result_text` and `api_error` are the result line's `result` and `api_error`.
    """
    text = result_text or signals.api_error_text or ""
    said = (
        signals.rejected_limit is not None
        or signals.api_error == RATE_LIMIT_ERROR
        or api_error == USAGE_LIMIT_API_ERROR
        or names_a_limit(result_text)
    )
    if not said:
        return None
    limit_type, resets_at = signals.rejected_limit or (None, None)
    if resets_at is None and ended_at is not None:
        resets_at = reset_time(text, after=ended_at, zone=zone)
    return UsageLimit(
        limit_type=limit_type or limit_type_of(text),
        resets_at=resets_at,
        message=text,
    )
