"""Every real Claude Code capture in tests/data/real-streams/ (PROVENANCE.md says where
each came from), replayed through the parser and the outcome rules.

The expected outcome of each file is written here by hand from the file itself (its
result line, or its lack of one), not computed by the code under test. The runs end
at RUN_END; a reset the CLI gave only as text ("resets 5am") is the next one after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from claude_hooks.report.render import failure_reason
from claude_hooks.runner.limits import NO_SIGNALS
from claude_hooks.runner.stream import Malformed, Result, observe, outcome_of, parse_line
from claude_hooks.tasks import Outcome, TaskState, UsageLimit

STREAMS = Path(__file__).parent / "data" / "real-streams"
RUN_END = datetime(2025, 11, 13, 12, 0, tzinfo=UTC).timestamp()
KILLED = 143  # a cut-off capture: replayed as a run that ended without a result on SIGTERM


@dataclass(frozen=True)
class Expected:
    state: TaskState
    reason: str | None = None  # None: no failure; else the start of the words
    result_start: str | None = None
    num_turns: int | None = None
    cost_usd: float | None = None
    usage_limit: UsageLimit | None = None
    retryable: bool = False
    exit_code: int = 0
    budget_usd: float | None = None  # the agent's max_budget_usd, for the run that had one


def success(result_start: str, num_turns: int, cost: float) -> Expected:
    return Expected(TaskState.SUCCEEDED, None, result_start, num_turns, cost)


EXPECTED: dict[str, Expected] = {
    "success-tool-use-mcp-servers.v1.0.6x.presmihaylov-ccagent.jsonl": success(
        "## Summary\n\nI have successfully extracted", 139, 2.4637934999999995
    ),
    "success-image-tool-result.v2.0.22.presmihaylov-ccagent.jsonl": success(
        "Perfect! I've updated the BlueSky section", 153, 0.3451878
    ),
    "success-tool-use-task-subagent.v2.0.27.link-assistant-hive-mind.jsonl": success(
        "Perfect! Let me create a summary", 120, 0.9644162999999997
    ),
    "success-tool-use.v2.0.36.link-assistant-hive-mind.jsonl": success(
        "The CI is still running.", 68, 2.593711449999998
    ),
    "success-tool-use-background-bash.v2.0.55.link-assistant-hive-mind.jsonl": success(
        "Good, it already completed.", 54, 0.9584707500000001
    ),
    "success-tool-use-background-bash.v2.0.59.link-assistant-hive-mind.jsonl": success(
        "## Summary\n\nI've successfully updated PR #842", 50, 0.6268813499999999
    ),
    "success-tool-use-excerpt.v2.1.3.charlieyou-claude-agent-sdk-gleam.jsonl": success(
        "Here are the files in the current directory.", 2, 0.24722425
    ),
    "success-trimmed.v2.1.7.charlieyou-claude-agent-sdk-gleam.jsonl": success("4", 1, 0.1354875),
    # 1.0.x: an aborted run said is_error false; it is a failure all the same. No `result`.
    "error_during_execution-excerpt.v1.0.x.presmihaylov-ccagent.jsonl": Expected(
        TaskState.FAILED,
        "Claude Code failed (error_during_execution)",
        None,
        0,
        0.21045915,
        exit_code=1,
    ),
    "api-error-404-bad-model.v2.0.55.link-assistant-hive-mind.jsonl": Expected(
        TaskState.FAILED,
        "Claude Code failed (success): API Error: 404",
        "API Error: 404",
        1,
        0.027108,
        exit_code=1,
    ),
    # 2.0.x: the limit and its reset only as text; 5am UTC after RUN_END is the next day's.
    "rate-limited-weekly-limit-tail.v2.0.x.link-assistant-hive-mind.jsonl": Expected(
        TaskState.FAILED,
        "Claude usage limit reached (seven_day), resets 2025-11-14 05:00 UTC",
        "Weekly limit reached ∙ resets 5am",
        10,
        0.14746179999999998,
        UsageLimit(
            "seven_day",
            datetime(2025, 11, 14, 5, 0, tzinfo=UTC).timestamp(),
            "Weekly limit reached ∙ resets 5am",
        ),
        exit_code=1,
    ),
    # 2.1.332: the rate_limit_event's resetsAt (2026-12-02 02:58:27 UTC) wins over the text.
    "usage-limit-5h-rejected.v2.1.332.scripted-api.jsonl": Expected(
        TaskState.FAILED,
        "Claude usage limit reached (five_hour), resets 2026-12-02 02:58 UTC",
        "You've hit your 5-hour limit · resets 2:58am (UTC)",
        1,
        0.0,
        UsageLimit("five_hour", 1796180307.0, "You've hit your 5-hour limit · resets 2:58am (UTC)"),
        exit_code=1,
    ),
    "api-error-529-overloaded.v2.1.332.scripted-api.jsonl": Expected(
        TaskState.FAILED,
        "Claude API error 529 after retries",
        "API Error: 529",
        1,
        0.0,
        retryable=True,
        exit_code=1,
    ),
    # 2.1.332 run with --max-budget-usd 0.001: stopped after the first call ($0.0056).
    "budget-exhausted.v2.1.332.scripted-api.jsonl": Expected(
        TaskState.FAILED,
        "budget limit reached ($0.001)",
        None,
        1,
        0.0056,
        exit_code=1,
        budget_usd=0.001,
    ),
    "partial-cutoff-tool-use.v2.0.75.uke16-helix.jsonl": Expected(
        TaskState.FAILED, "claude exited 143 without a result (killed)", exit_code=KILLED
    ),
    "partial-cutoff.v2.0.76.uke16-helix.jsonl": Expected(
        TaskState.FAILED, "claude exited 143 without a result (killed)", exit_code=KILLED
    ),
}


def replay(name: str, exit_code: int, budget_usd: float | None = None) -> Outcome:
    signals, result = NO_SIGNALS, None
    for line in (STREAMS / name).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        event = parse_line(line)
        assert not isinstance(event, Malformed), event.error
        signals = observe(signals, event)
        if isinstance(event, Result):
            result = event
    return outcome_of(
        result,
        exit_code,
        "",
        failure_reason,
        signals=signals,
        ended_at=RUN_END,
        zone=None,
        budget_usd=budget_usd,
    )


def test_every_capture_has_an_expected_outcome() -> None:
    files = {p.name for p in STREAMS.glob("*.jsonl")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_real_capture_ends_as_expected(name: str) -> None:
    want = EXPECTED[name]
    outcome = replay(name, want.exit_code, want.budget_usd)
    assert outcome.state is want.state
    if want.reason is None:
        assert outcome.reason is None
    else:
        assert outcome.reason is not None and outcome.reason.startswith(want.reason), outcome.reason
    if want.result_start is None:
        assert outcome.result in (None, "")
    else:
        assert outcome.result is not None and outcome.result.startswith(want.result_start)
    assert outcome.num_turns == want.num_turns
    assert outcome.cost_usd == (pytest.approx(want.cost_usd) if want.cost_usd is not None else None)
    assert outcome.usage_limit == want.usage_limit
    assert outcome.retryable is want.retryable
