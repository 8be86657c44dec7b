"""Usage limits, budgets and retryable API errors: how a run that ended on one is told
apart from a failure, and when the limit resets (runner/limits.py, runner/stream.py).

The lines written here follow the shapes named in issue #15 and seen in
tests/data/real-streams/ (2.1.x `rate_limit_event`, the synthetic assistant message,
the result's text); test_real_streams.py replays the real captures themselves.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from claude_hooks.report.render import failure_reason
from claude_hooks.runner.limits import NO_SIGNALS, reset_time
from claude_hooks.runner.stream import (
    ApiErrorMessage,
    RateLimit,
    Result,
    observe,
    outcome_of,
    parse_line,
)
from claude_hooks.tasks import FailureKind, Outcome, RunFailure, TaskState, UsageLimit

BERLIN = ZoneInfo("Europe/Berlin")
END = datetime(2026, 3, 2, 10, 30, tzinfo=UTC).timestamp()  # a Monday, 11:30 in Berlin


def at(zone: object, *parts: int) -> float:
    return datetime(*parts, tzinfo=zone).timestamp()  # type: ignore[arg-type, misc]


def result_line(**fields: object) -> str:
    return json.dumps({"type": "result", "subtype": "success", "session_id": "s-1", **fields})


def run(
    *lines: str, exit_code: int = 1, zone: object = None, budget: float | None = None
) -> Outcome:
    signals, result = NO_SIGNALS, None
    for line in lines:
        event = parse_line(line)
        signals = observe(signals, event)
        if isinstance(event, Result):
            result = event
    return outcome_of(
        result,
        exit_code,
        "",
        failure_reason,
        signals=signals,
        ended_at=END,
        zone=zone,  # type: ignore[arg-type]
        budget_usd=budget,
    )


RATE_LIMIT_EVENT = {
    "type": "rate_limit_event",
    "rate_limit_info": {
        "status": "rejected",
        "resetsAt": 1772460000,
        "rateLimitType": "five_hour",
        "overageStatus": "rejected",
        "isUsingOverage": False,
    },
}
SYNTHETIC_RATE_LIMIT = {
    "type": "assistant",
    "message": {
        "id": "m-1",
        "model": "<synthetic>",
        "role": "assistant",
        "content": [{"type": "text", "text": "You've hit your session limit · resets 9am"}],
    },
    "error": "rate_limit",
    "is_api_error_message": True,
}


def test_a_rate_limit_event_is_parsed() -> None:
    event = parse_line(json.dumps(RATE_LIMIT_EVENT))
    assert event == RateLimit(
        "rejected", 1772460000.0, "five_hour", raw=json.dumps(RATE_LIMIT_EVENT)
    )
    assert event.summary == "Claude usage rejected (five_hour), resets at 2026-03-02 14:00 UTC"


def test_a_synthetic_api_error_message_is_its_own_event() -> None:
    event = parse_line(json.dumps(SYNTHETIC_RATE_LIMIT))
    assert isinstance(event, ApiErrorMessage)
    assert (event.error, event.text) == ("rate_limit", "You've hit your session limit · resets 9am")


def test_rejected_event_gives_the_reset_time_and_the_type() -> None:
    outcome = run(
        json.dumps(RATE_LIMIT_EVENT),
        json.dumps(SYNTHETIC_RATE_LIMIT),
        result_line(is_error=True, result="You've hit your session limit · resets 9am"),
    )
    assert outcome.state is TaskState.FAILED
    assert outcome.usage_limit == UsageLimit(
        "five_hour", 1772460000.0, "You've hit your session limit · resets 9am"
    )
    assert outcome.reason == "Claude usage limit reached (five_hour), resets 2026-03-02 14:00 UTC"
    assert outcome.session_id == "s-1"  # the re-run resumes the session


def test_the_text_s_zone_places_the_reset() -> None:
    text = "You've hit your session limit · resets 9am (Europe/Berlin)"
    outcome = run(result_line(is_error=True, result=text))
    # 11:30 in Berlin already passed 9am: the next 9am is Tuesday's.
    assert outcome.usage_limit == UsageLimit("five_hour", at(BERLIN, 2026, 3, 3, 9, 0), text)


def test_without_a_zone_in_the_text_the_agent_s_zone_then_utc() -> None:
    text = "Weekly limit reached ∙ resets 5pm"
    in_berlin = run(result_line(is_error=True, result=text), zone=BERLIN).usage_limit
    assert in_berlin is not None and in_berlin.resets_at == at(BERLIN, 2026, 3, 2, 17, 0)
    in_utc = run(result_line(is_error=True, result=text)).usage_limit
    assert in_utc is not None and in_utc.resets_at == at(UTC, 2026, 3, 2, 17, 0)


def test_a_synthetic_rate_limit_without_a_reset_leaves_it_to_the_backoff() -> None:
    synthetic = dict(SYNTHETIC_RATE_LIMIT)
    synthetic["message"] = {"content": [{"type": "text", "text": "API Error: rate limited"}]}
    outcome = run(
        json.dumps(synthetic),
        result_line(is_error=True, terminal_reason="api_error", api_error_status=429),
    )
    assert outcome.usage_limit == UsageLimit(None, None, "API Error: rate limited")
    assert outcome.reason == "Claude usage limit reached"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("resets 5am", at(UTC, 2026, 3, 3, 5, 0)),
        ("resets 11:45am", at(UTC, 2026, 3, 2, 11, 45)),
        ("resets 12am", at(UTC, 2026, 3, 3, 0, 0)),
        ("resets 12pm", at(UTC, 2026, 3, 2, 12, 0)),
        ("resets Mar 9, 5am", at(UTC, 2026, 3, 9, 5, 0)),
        ("resets Feb 1 at 5am", at(UTC, 2027, 2, 1, 5, 0)),  # passed this year: next year's
        ("resets 2:58am (UTC)", at(UTC, 2026, 3, 3, 2, 58)),
        ("resets 9am (Not/AZone)", at(BERLIN, 2026, 3, 3, 9, 0)),  # unknown: the agent's zone
        ("Claude AI usage limit reached|1772460000", 1772460000.0),  # 1.0.x
        ("resets soon", None),
        ("no reset here", None),
    ],
)
def test_reset_time_from_text(text: str, expected: float | None) -> None:
    assert reset_time(text, after=END, zone=BERLIN if "AZone" in text else None) == expected


def test_reset_across_a_dst_change_keeps_the_wall_clock_time() -> None:
    # Berlin moves to summer time on 2026-03-29 at 02:00; "resets 5am" the day after.
    before = at(BERLIN, 2026, 3, 28, 23, 0)
    assert reset_time("resets 5am", after=before, zone=BERLIN) == at(BERLIN, 2026, 3, 29, 5, 0)


def test_allowed_warning_is_news_not_a_failure() -> None:
    warning = dict(RATE_LIMIT_EVENT, rate_limit_info={"status": "allowed_warning"})
    outcome = run(json.dumps(warning), result_line(is_error=False, result="done"), exit_code=0)
    assert (outcome.state, outcome.usage_limit, outcome.reason) == (
        TaskState.SUCCEEDED,
        None,
        None,
    )


def test_a_rejected_event_on_a_run_that_still_succeeded_changes_nothing() -> None:
    # Overage (extra usage) took over: the run went on and ended well.
    outcome = run(json.dumps(RATE_LIMIT_EVENT), result_line(is_error=False, result="ok"))
    assert (outcome.state, outcome.usage_limit) == (TaskState.SUCCEEDED, None)


@pytest.mark.parametrize(
    ("fields", "retryable"),
    [
        ({"api_error_status": 529}, True),
        ({"api_error_status": 500}, True),
        ({"api_error_status": 503}, True),
        ({"api_error_status": None, "api_error_type": "overloaded_error"}, True),
        ({"api_error_status": 400}, False),
        ({"api_error_status": 401}, False),
        ({"api_error_status": 404}, False),
    ],
)
def test_api_errors_that_may_pass_are_retryable(fields: dict, retryable: bool) -> None:
    outcome = run(result_line(is_error=True, terminal_reason="api_error", **fields))
    assert outcome.state is TaskState.FAILED
    assert outcome.retryable is retryable
    assert outcome.usage_limit is None


def test_budget_stop_names_the_budget() -> None:
    line = result_line(
        subtype="error_max_budget_usd", is_error=True, terminal_reason="budget_exhausted"
    )
    outcome = run(line, budget=5.0)
    assert (outcome.state, outcome.reason) == (TaskState.FAILED, "budget limit reached ($5.00)")
    assert run(line, budget=0.25).reason == "budget limit reached ($0.25)"
    assert run(line).reason == "budget limit reached"


@pytest.mark.parametrize(
    ("text", "is_limit"),
    [
        ("Weekly limit reached ∙ resets 5am", True),
        ("You've hit your session limit · resets 9am (Europe/Berlin)", True),
        ("You've hit your 5-hour limit · resets 2:58am (UTC)", True),
        ("Claude AI usage limit reached|1772460000", True),
        ("API Error: 529 This request would exceed your account's rate limit.", False),
        ("Subagent nesting limit reached (depth 3)", False),  # no reset: not a usage limit
        ("the cache resets at 5am; nothing else", False),
    ],
)
def test_which_texts_name_a_usage_limit(text: str, is_limit: bool) -> None:
    outcome = run(result_line(is_error=True, result=text))
    assert (outcome.usage_limit is not None) is is_limit, outcome


def test_failure_words_of_a_usage_limit() -> None:
    limit = UsageLimit("seven_day", at(UTC, 2026, 3, 3, 5, 0), "Weekly limit reached")
    words = failure_reason(RunFailure(FailureKind.USAGE_LIMIT, 1, usage_limit=limit))
    assert words == "Claude usage limit reached (seven_day), resets 2026-03-03 05:00 UTC"


def test_unknown_lines_before_init_are_tolerated() -> None:
    for line in (
        {"type": "system", "subtype": "hook_started", "hook_name": "SessionStart"},
        {"type": "system", "subtype": "status", "status": "compacting"},
        {"type": "system", "subtype": "thinking_tokens", "tokens": 12},
        {"type": "rate_limit_event"},
    ):
        event = parse_line(json.dumps(line))
        assert event.kind == "unknown"
    outcome = run(
        json.dumps({"type": "system", "subtype": "hook_started"}),
        result_line(is_error=False, result="ok"),
        exit_code=0,
    )
    assert outcome.state is TaskState.SUCCEEDED
