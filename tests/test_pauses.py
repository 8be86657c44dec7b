"""Usage limits pause the agent, not the task; an overloaded API is retried, bounded; a
daily budget pauses the agent (#15). The decisions, without a network or a clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from claude_hooks.report.render import Phase, render_tracking
from claude_hooks.runner.stream import RateLimit
from claude_hooks.store import Spend, Store
from claude_hooks.tasks import AgentPause, Outcome, Task, TaskState, UsageLimit
from claude_hooks.work.outages import OutagePolicy
from claude_hooks.work.pauses import budget_pause, run_deferral
from claude_hooks.work.scheduler import Precheck
from claude_hooks.work.worker import TaskWorker, checklist_line
from tests.fakes.configs import ConfigFactory
from tests.test_store import make_spec

MIDNIGHT = 1_699_920_000.0  # 2023-11-14 00:00 UTC
NOW = MIDNIGHT + 2 * 3600  # 02:00 UTC
FIVE_AM = MIDNIGHT + 5 * 3600
DAY = 24 * 3600.0
RETRIES = OutagePolicy(attempts=3, within=3600.0, backoff=30.0, max_backoff=600.0)


def task(**changes: object) -> Task:
    return Task(id=7, spec=make_spec(1), state=TaskState.RUNNING, attempts=1).with_(**changes)


def limited(resets_at: float | None) -> Outcome:
    limit = UsageLimit("five_hour", resets_at, "You've hit your session limit · resets 5am")
    return Outcome(
        TaskState.FAILED,
        reason="Claude usage limit reached (five_hour)",
        session_id="sess-1",
        cost_usd=0.25,
        usage_limit=limit,
    )


def decide(outcome: Outcome, on: Task | None = None, now: float = NOW) -> Outcome:
    return run_deferral(on or task(), outcome, now, backoff=1800.0, retries=RETRIES)


def test_a_usage_limit_requeues_the_task_keeps_its_session_and_pauses_the_agent() -> None:
    deferred = decide(limited(FIVE_AM))
    assert deferred.state is TaskState.QUEUED and deferred.deferred
    assert (deferred.retry_at, deferred.uses_attempt) == (FIVE_AM, False)
    assert (deferred.session_id, deferred.cost_usd) == ("sess-1", 0.25)  # --resume; it cost
    words = "paused until 2023-11-14 05:00 UTC (Claude usage limit)"
    assert deferred.reason == words
    assert deferred.pause == AgentPause("dev", FIVE_AM, words, "usage_limit", "five_hour")


def test_a_usage_limit_without_a_reset_time_waits_the_backoff() -> None:
    deferred = decide(limited(None))
    assert deferred.retry_at == NOW + 1800.0
    assert deferred.pause is not None and deferred.pause.until == NOW + 1800.0
    assert deferred.reason == "paused until 2023-11-14 02:30 UTC (Claude usage limit)"


def test_a_reset_time_already_past_waits_the_backoff_rather_than_spinning() -> None:
    deferred = decide(limited(NOW - 60))
    assert deferred.retry_at == NOW + 1800.0


def test_an_overloaded_api_is_retried_after_a_backoff_using_an_attempt() -> None:
    overloaded = Outcome(
        TaskState.FAILED, reason="Claude API error 529 after retries", retryable=True
    )
    first = decide(overloaded)
    assert first.deferred and first.uses_attempt and first.pause is None
    assert first.retry_at == NOW + 30.0
    assert first.reason == "Claude API error 529 after retries, will retry (try 1 of 3)"
    third = decide(overloaded, task(deferrals=2, deferred_since=NOW - 90))
    assert third.retry_at == NOW + 120.0 and third.reason is not None
    assert third.reason.endswith("(try 3 of 3)")


def test_an_overloaded_api_fails_in_words_once_its_retries_are_spent() -> None:
    overloaded = Outcome(
        TaskState.FAILED, reason="Claude API error 529 after retries", retryable=True
    )
    spent = decide(overloaded, task(deferrals=3, deferred_since=NOW - 600))
    assert spent.state is TaskState.FAILED and not spent.deferred
    assert (
        spent.reason
        == "gave up after 3 retries over 10 min 0 s: Claude API error 529 after retries"
    )


def test_other_failures_and_successes_are_recorded_as_they_are() -> None:
    for outcome in (
        Outcome(TaskState.FAILED, reason="max turns reached"),
        Outcome(TaskState.FAILED, reason="Claude API error 400 after retries"),
        Outcome(TaskState.SUCCEEDED, result="done"),
        Outcome(TaskState.CANCELLED, reason="cancelled by alice"),
    ):
        assert decide(outcome) == outcome


def test_an_agent_at_its_daily_budget_pauses_until_enough_spend_ages_out() -> None:
    spend = Spend(DAY, ((NOW - 20 * 3600, 3.0), (NOW - 3600, 2.5)))
    pause = budget_pause("dev", spend, 5.0)
    assert pause is not None
    # 5.50 ≥ 5.00 until the 3.00 of 20 h ago ages out, 4 h from now.
    assert (pause.until, pause.cause) == (NOW + 4 * 3600, "daily_budget")
    assert pause.reason == "paused until 2023-11-14 06:00 UTC (daily budget of $5.00 reached)"
    assert budget_pause("dev", spend, 6.0) is None  # under it
    assert budget_pause("dev", spend, None) is None  # no budget set
    assert budget_pause("dev", Spend(DAY, ()), 5.0) is None


def test_the_tracking_comment_of_a_task_held_by_a_pause_says_so() -> None:
    deferred = decide(limited(FIVE_AM))
    waiting = task(state=TaskState.QUEUED, not_before=deferred.retry_at, error=deferred.reason)
    body = render_tracking(waiting, Phase.QUEUED, now=NOW, redact=lambda text: text)
    assert "paused until 2023-11-14 05:00 UTC (Claude usage limit); will resume." in body
    assert body.count("05:00") == 1  # the time is said once


async def test_the_precheck_pauses_an_agent_over_its_daily_budget(
    tmp_path: Path, config_factory: ConfigFactory
) -> None:
    config = config_factory.load(agents=[config_factory.agent("dev", daily_budget_usd=1.0)])
    store = await Store.open(tmp_path / "s.sqlite3")
    try:
        worker = TaskWorker(
            config,
            store,
            None,  # type: ignore[arg-type]  # the precheck of an API task runs nothing
            lambda agent: None,  # type: ignore[arg-type,return-value]
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            daemon_id="d",
            permissions=None,  # type: ignore[arg-type]
        )
        queued, _ = await store.enqueue(make_spec(1, number=None))
        assert (await worker.precheck(queued)) == Precheck.proceed()
        spent, _ = await store.enqueue(make_spec(2, number=None))
        await store.mark_running(spent.id)
        await store.finish(spent.id, Outcome(TaskState.SUCCEEDED, cost_usd=1.25))
        check = await worker.precheck(queued)
        assert check.deferral is not None and check.deferral.pause is not None
        assert check.deferral.pause.cause == "daily_budget" and not check.deferral.uses_attempt
        assert "(daily budget of $1.00 reached)" in (check.deferral.reason or "")
        assert check.deferral.retry_at == pytest.approx(time.time() + DAY, abs=60)
    finally:
        await store.close()


def test_a_usage_warning_is_listed_on_the_tracking_comment_and_nothing_else_is_done() -> None:
    def rate_limit(status: str) -> RateLimit:
        return RateLimit(status, FIVE_AM, "five_hour", raw="{}")

    warning = checklist_line(rate_limit("allowed_warning"))
    assert (
        warning == "Claude usage is close to its limit (five_hour), resets at 2023-11-14 05:00 UTC"
    )
    assert checklist_line(rate_limit("allowed")) is None  # routine: the event log only
    assert checklist_line(rate_limit("rejected")) is None  # the outcome says it
