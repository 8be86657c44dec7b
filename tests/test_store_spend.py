"""The daily budget's query (#15): what an agent's tasks cost in the last 24 hours, and
when that total drops below a budget again as the oldest costs age out."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_hooks.store import Spend, Store
from claude_hooks.tasks import Outcome, TaskState
from tests.fakes.clock import FakeClock
from tests.test_store import make_spec

HOUR = 3600.0


async def finish(store: Store, n: int, agent: str, cost: float | None, state: TaskState) -> None:
    task, _ = await store.enqueue(make_spec(n, agent=agent))
    await store.mark_running(task.id)
    await store.finish(task.id, Outcome(state=state, cost_usd=cost))


async def test_spend_sums_the_agent_s_costs_of_the_last_24_hours(tmp_path: Path) -> None:
    clock = FakeClock()
    store = await Store.open(tmp_path / "s.sqlite3", clock=clock)
    try:
        await finish(store, 1, "dev", 4.0, TaskState.SUCCEEDED)  # at t0: ages out at t0+24h
        clock.now += 2 * HOUR
        await finish(store, 2, "dev", 3.0, TaskState.FAILED)  # a failed run costs too
        await finish(store, 3, "reviewer", 50.0, TaskState.SUCCEEDED)  # another agent's
        await finish(store, 4, "dev", None, TaskState.FAILED)  # no cost known
        clock.now += HOUR
        spend = await store.spend("dev")
        assert spend.total_usd == pytest.approx(7.0)
        assert spend.oldest_ages_out_at == 1_000_000.0 + 24 * HOUR
        # Budget 5: 7 ≥ 5 until the 4.0 of t0 ages out; budget 8: below already.
        assert spend.under_budget_at(5.0) == 1_000_000.0 + 24 * HOUR
        assert spend.under_budget_at(2.0) == 1_000_000.0 + 26 * HOUR
        assert spend.under_budget_at(8.0) is None
        clock.now = 1_000_000.0 + 24 * HOUR + 1  # the first task left the window
        later = await store.spend("dev")
        assert later.total_usd == pytest.approx(3.0)
        assert (await store.spend("nobody")) == Spend(24 * HOUR, ())
    finally:
        await store.close()


async def test_a_run_cut_short_by_a_usage_limit_still_counts_and_so_does_a_retried_task(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    store = await Store.open(tmp_path / "s.sqlite3", clock=clock)
    try:
        task, _ = await store.enqueue(make_spec(1, agent="dev"))
        await store.mark_running(task.id)
        limited = Outcome(
            TaskState.QUEUED, retry_at=clock.now + HOUR, uses_attempt=False, cost_usd=2.0
        )
        await store.defer(task.id, limited)
        clock.now += 10
        assert (await store.spend("dev")).total_usd == pytest.approx(2.0)  # while it waits
        clock.now += HOUR
        await store.mark_running(task.id)
        done = await store.finish(task.id, Outcome(TaskState.SUCCEEDED, cost_usd=1.0))
        assert done.cost_usd == pytest.approx(3.0)  # the task's two runs
        assert (await store.spend("dev")).total_usd == pytest.approx(3.0)
        await store.requeue(task.id, "retry requested by alice")  # a fresh chance, same money
        assert (await store.spend("dev")).total_usd == pytest.approx(3.0)
        spend = await store.spend("dev")
        assert spend.oldest_ages_out_at == 1_000_000.0 + 24 * HOUR  # the cut-short run's time
    finally:
        await store.close()
