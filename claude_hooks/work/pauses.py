"""When an agent, not its task, has to wait: pure decisions, no I/O.

A run that ended on a Claude usage limit is not the task's fault: the task goes back
to the queue without using up an attempt, its session kept for `--resume`, and the
agent's whole queue is paused until the limit resets (or `agents.usage_limit_backoff`
when Claude gave no reset time). An API error that may pass (overloaded, a 5xx after
Claude Code's own retries) is waited out like an outage (work/outages.py): a backoff,
a bounded number of tries, then a failure saying what kept failing. An agent at or
over `agents.daily_budget_usd` over the last 24 hours pauses until enough of its
spend ages out.
"""

from __future__ import annotations

from dataclasses import replace

from claude_hooks.report.render import (
    USAGE_LIMIT_PAUSE,
    daily_budget_pause,
    paused_reason,
)
from claude_hooks.store import Spend
from claude_hooks.tasks import AgentPause, Outcome, Task, TaskState
from claude_hooks.work.outages import OutagePolicy, outage_outcome

USAGE_LIMIT = "usage_limit"  # AgentPause.cause, the metric's label
DAILY_BUDGET = "daily_budget"


def run_deferral(
    task: Task, outcome: Outcome, now: float, *, backoff: float, retries: OutagePolicy
) -> Outcome:
    """The outcome to record for a run: a usage limit or a retryable API error becomes a
    deferral (or, once the retries are spent, a failure); any other outcome is kept."""
    if outcome.state is not TaskState.FAILED:
        return outcome
    if (limit := outcome.usage_limit) is not None:
        resets = limit.resets_at
        until = resets if resets is not None and resets > now else now + backoff
        reason = paused_reason(until, USAGE_LIMIT_PAUSE)
        pause = AgentPause(task.spec.agent, until, reason, USAGE_LIMIT, limit.limit_type)
        return replace(
            outcome,
            state=TaskState.QUEUED,
            reason=reason,
            retry_at=until,
            uses_attempt=False,
            pause=pause,
        )
    if outcome.retryable:
        what = outcome.reason or "Claude API error after retries"
        waited = outage_outcome(task, what, now, retries)
        return replace(
            outcome,
            state=waited.state,
            reason=waited.reason,
            retry_at=waited.retry_at,
            uses_attempt=waited.uses_attempt,
        )
    return outcome


def budget_pause(agent: str, spend: Spend, budget_usd: float | None) -> AgentPause | None:
    """The pause of an agent whose last 24 hours cost `budget_usd` or more: until the
    total is below it again as costs age out; None when it may run."""
    if budget_usd is None:
        return None
    until = spend.under_budget_at(budget_usd)
    if until is None:
        return None
    return AgentPause(
        agent, until, paused_reason(until, daily_budget_pause(budget_usd)), DAILY_BUDGET
    )
