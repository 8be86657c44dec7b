from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiodocker.exceptions import DockerError
from structlog.testing import capture_logs

from claude_hooks.forgejo.client import ForgejoError
from claude_hooks.report.render import timeout_reason
from claude_hooks.store import Store
from claude_hooks.tasks import AgentPause, Outcome, Task, TaskState
from claude_hooks.work import scheduler as scheduler_module
from claude_hooks.work.outages import OutagePolicy
from claude_hooks.work.scheduler import (
    Precheck,
    Scheduler,
    SchedulerError,
    TaskQueue,
    pick_agent,
)
from tests.fakes.clock import FakeClock
from tests.test_store import make_spec
from tests.waiting import wait_until

DONE = Outcome(TaskState.SUCCEEDED, result="done")


class FakeRunner:
    """Stands in for execute(): each run waits for its gate (or a few milliseconds in auto
    mode) and records starts, cancellations and the concurrency it saw."""

    def __init__(self, auto: random.Random | None = None) -> None:
        self.auto = auto
        self.gates: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.outcomes: dict[int, Outcome | Exception] = {}
        self.started: list[Task] = []
        self.cancelled: list[int] = []
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.peak_total = 0
        self.before_run: Callable[[Task], Awaitable[None]] | None = None
        self.hold = asyncio.Event()  # auto mode: runs wait for it
        self.hold.set()

    async def __call__(self, task: Task) -> Outcome:
        agent = task.spec.agent
        self.started.append(task)
        self.running[agent] += 1
        self.peak[agent] = max(self.peak[agent], self.running[agent])
        self.peak_total = max(self.peak_total, sum(self.running.values()))
        try:
            if self.before_run is not None:
                await self.before_run(task)
            if self.auto is not None:
                await self.hold.wait()
                await asyncio.sleep(self.auto.uniform(0.002, 0.02))  # not a wait: a run's length
            else:
                await self.gates[task.id].wait()
            outcome = self.outcomes.get(task.id, DONE)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        except asyncio.CancelledError:
            self.cancelled.append(task.id)
            raise
        finally:
            self.running[agent] -= 1

    def release(self, task_id: int) -> None:
        self.gates[task_id].set()

    @property
    def started_ids(self) -> list[int]:
        return [t.id for t in self.started]


async def state_of(store: Store, task_id: int) -> TaskState:
    task = await store.get(task_id)
    assert task is not None
    return task.state


async def until_state(store: Store, task_id: int, state: TaskState) -> Task:
    """Follows the task's event log, where every state change is a `state` event."""
    seen = 0
    async with asyncio.timeout(5):
        while (task := await store.get(task_id)).state is not state:
            events = await store.wait_for_events(task_id, seen, max_wait=1)
            seen = events[-1].seq if events else seen
    return task


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "tasks.sqlite3")
    yield store
    await store.close()


@pytest.fixture
async def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
async def make_scheduler(
    store: Store, runner: FakeRunner
) -> AsyncIterator[Callable[..., Awaitable[Scheduler]]]:
    made: list[Scheduler] = []

    async def make(**options: Any) -> Scheduler:
        options = {"max_concurrency": 2, "agent_limits": {}, "execute": runner} | options
        scheduler = Scheduler(store, **options)
        await scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        await scheduler.drain(0)


def test_pick_agent_takes_the_first_in_turn_with_work_and_a_free_slot() -> None:
    limits = {"a": 1, "b": 2}
    assert pick_agent(["a", "b"], {"a": 3, "b": 1}, {"a": 1}, limits) == "b"
    assert pick_agent(["a", "b"], {"a": 3, "b": 1}, {}, limits) == "a"
    assert pick_agent(["a", "b"], {"a": 0, "b": 1}, {"b": 2}, limits) is None
    assert pick_agent(["c"], {"c": 1}, {"c": 1}, limits) is None  # unknown agent: limit 1


async def test_submitting_the_same_trigger_twice_runs_it_once(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    scheduler = await make_scheduler()
    first, created = await scheduler.submit(make_spec(1))
    again, created_again = await scheduler.submit(make_spec(1))
    assert created and not created_again and again.id == first.id
    runner.release(first.id)
    await until_state(store, first.id, TaskState.SUCCEEDED)
    assert runner.started_ids == [first.id]


async def test_one_agents_tasks_start_in_submission_order(
    make_scheduler: Callable[..., Awaitable[Scheduler]], store: Store
) -> None:
    runner = FakeRunner(auto=random.Random(1))
    scheduler = await make_scheduler(execute=runner, agent_limits={"dev": 3}, max_concurrency=3)
    ids = [(await scheduler.submit(make_spec(n)))[0].id for n in range(30)]
    await wait_until(lambda: len(runner.started) == 30 and not scheduler.running_ids())
    assert runner.started_ids == ids


async def test_a_busy_agent_cannot_starve_the_others(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner
) -> None:
    scheduler = await make_scheduler(max_concurrency=1, agent_limits=dict.fromkeys("abcd", 4))
    for agent in "abcd":  # agent a's whole backlog arrives before anyone else's
        for n in range(10):
            await scheduler.submit(make_spec(n, agent=agent))
    for k in range(40):
        await wait_until(lambda k=k: len(runner.started) == k + 1)
        runner.release(runner.started[k].id)
    agents = [t.spec.agent for t in runner.started]
    assert agents[:2] == ["a", "d"]  # a newcomer goes before the agent just served
    for window in range(1, 37, 4):  # every round of four starts serves each agent once
        assert sorted(agents[window : window + 4]) == ["a", "b", "c", "d"], agents


async def test_limits_hold_under_load_of_200_tasks_over_4_agents(
    make_scheduler: Callable[..., Awaitable[Scheduler]], store: Store
) -> None:
    runner = FakeRunner(auto=random.Random(7))
    limits = {"a": 1, "b": 2, "c": 3, "d": 4}
    rng = random.Random(3)
    for n in range(100):  # a backlog waiting at start ...
        await store.enqueue(make_spec(n, agent=rng.choice("abcd")))
    runner.hold.clear()
    scheduler = await make_scheduler(execute=runner, max_concurrency=5, agent_limits=limits)
    await wait_until(lambda: sum(runner.running.values()) == 5)  # the backlog fills every slot
    runner.hold.set()
    for n in range(100, 200):  # ... and more arriving while it runs
        await scheduler.submit(make_spec(n, agent=rng.choice("abcd")))
    await wait_until(lambda: len(runner.started) == 200 and not scheduler.running_ids(), timeout=30)
    assert runner.peak_total == 5
    for agent, limit in limits.items():
        assert 1 <= runner.peak[agent] <= limit
    counts = await store.counts()
    assert sum(n for (_, state), n in counts.items() if state is TaskState.SUCCEEDED) == 200
    for agent in limits:  # FIFO per agent held throughout
        ids = [t.id for t in runner.started if t.spec.agent == agent]
        assert ids == sorted(ids)


async def test_cancelling_a_queued_task_removes_it_before_it_runs(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    scheduler = await make_scheduler(max_concurrency=1)
    running, _ = await scheduler.submit(make_spec(1))
    waiting, _ = await scheduler.submit(make_spec(2))
    later, _ = await scheduler.submit(make_spec(3))
    assert (scheduler.position(waiting.id), scheduler.position(later.id)) == (1, 2)

    cancelled = await scheduler.cancel(waiting.id, by="alice")
    assert cancelled.state is TaskState.CANCELLED and cancelled.error == "cancelled by alice"
    assert scheduler.position(later.id) == 1 and scheduler.queue_depth() == 1

    runner.release(running.id)
    runner.release(later.id)
    await until_state(store, later.id, TaskState.SUCCEEDED)
    assert runner.started_ids == [running.id, later.id]


async def test_cancelling_a_running_task_stops_it_and_frees_the_slot(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    scheduler = await make_scheduler(max_concurrency=1)
    running, _ = await scheduler.submit(make_spec(1))
    queued, _ = await scheduler.submit(make_spec(2))
    await wait_until(lambda: runner.started_ids == [running.id])

    cancelled = await scheduler.cancel(running.id, by="bob")
    assert cancelled.state is TaskState.CANCELLED and cancelled.error == "cancelled by bob"
    assert runner.cancelled == [running.id]
    await wait_until(lambda: runner.started_ids == [running.id, queued.id])


async def test_a_run_over_its_timeout_is_stopped_and_failed(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    scheduler = await make_scheduler(timeouts={"dev": 0.05})
    task, _ = await scheduler.submit(make_spec(1))
    failed = await until_state(store, task.id, TaskState.FAILED)
    # In the words of every other comment: the scheduler had its own ("timeout after
    # 1.5 min" where report/render.py says "timeout after 1 min 30 s").
    assert failed.error == timeout_reason(0.05) == "timeout after 0 s"
    assert runner.cancelled == [task.id]


async def test_a_runner_exception_fails_the_task_in_words_and_its_text_goes_to_the_journal(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    # Issue 16: the thread read "❌ Failed: DockerError: … unix:///<host path> …".
    scheduler = await make_scheduler()
    task, _ = await scheduler.submit(make_spec(1))
    runner.outcomes[task.id] = RuntimeError("/srv/claude-hooks/state: container is gone")
    with capture_logs() as logs:
        runner.release(task.id)
        failed = await until_state(store, task.id, TaskState.FAILED)
    assert failed.error == "an internal error (the daemon's journal has the details)"
    [crash] = [e for e in logs if e["event"] == "task_crashed"]
    assert crash["exc_info"] is True  # the journal keeps the exception and its trace


async def test_drain_lets_tasks_that_end_in_time_finish(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    scheduler = await make_scheduler(max_concurrency=1)
    running, _ = await scheduler.submit(make_spec(1))
    queued, _ = await scheduler.submit(make_spec(2))
    await wait_until(lambda: runner.started_ids == [running.id])

    drain = asyncio.create_task(scheduler.drain(5))
    # Callbacks run in the order scheduled: the drain has begun when the task is released.
    asyncio.get_running_loop().call_soon(runner.release, running.id)
    assert await asyncio.wait_for(drain, 2) == ()
    assert await state_of(store, running.id) is TaskState.SUCCEEDED
    assert await state_of(store, queued.id) is TaskState.QUEUED  # resumes on the next start
    assert runner.started_ids == [running.id]


async def test_drain_interrupts_tasks_that_outlive_it_and_the_next_start_resumes_them(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    scheduler = await make_scheduler()
    task, _ = await scheduler.submit(make_spec(1))
    await wait_until(lambda: runner.started_ids == [task.id])

    assert await scheduler.drain(0.05) == (task.id,)
    interrupted = await store.get(task.id)
    assert interrupted.state is TaskState.INTERRUPTED
    assert interrupted.error == "interrupted by shutdown — will resume"
    assert runner.cancelled == [task.id]

    resumed = FakeRunner(auto=random.Random(0))
    await make_scheduler(execute=resumed)
    done = await until_state(store, task.id, TaskState.SUCCEEDED)
    assert done.attempts == 2


async def test_a_second_signal_skips_the_rest_of_the_drain(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    scheduler = await make_scheduler()
    task, _ = await scheduler.submit(make_spec(1))
    await wait_until(lambda: runner.started_ids == [task.id])
    skip = asyncio.Event()
    drain = asyncio.create_task(scheduler.drain(60, skip=skip))
    asyncio.get_running_loop().call_soon(skip.set)  # after the drain has begun waiting
    assert await asyncio.wait_for(drain, 2) == (task.id,)
    assert await state_of(store, task.id) is TaskState.INTERRUPTED


async def test_start_reruns_a_task_a_crash_left_running(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    crashed, _ = await store.enqueue(make_spec(1))
    await store.mark_running(crashed.id)  # the previous process died here
    twice, _ = await store.enqueue(make_spec(2))
    await store.mark_running(twice.id)
    await store.recover()
    await store.mark_running(twice.id)  # ... and died again on the same task

    scheduler = await make_scheduler()
    await wait_until(lambda: runner.started_ids == [crashed.id])
    runner.release(crashed.id)
    assert (await until_state(store, crashed.id, TaskState.SUCCEEDED)).attempts == 2
    failed = await store.get(twice.id)
    assert failed.state is TaskState.FAILED and "interrupted twice" in failed.error
    assert scheduler.queue_depth() == 0


async def test_a_skipped_precheck_records_why_and_never_runs(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    async def precheck(task: Task) -> Precheck:
        return Precheck.skip("the issue was closed")

    scheduler = await make_scheduler(precheck=precheck)
    task, _ = await scheduler.submit(make_spec(1))
    skipped = await until_state(store, task.id, TaskState.CANCELLED)
    assert skipped.error == "skipped: the issue was closed"
    assert runner.started == [] and skipped.attempts == 0


async def test_a_moved_pr_head_is_reviewed_at_the_new_head(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    async def precheck(task: Task) -> Precheck:
        return Precheck.proceed(spec=dataclasses.replace(task.spec, head_sha="new"))

    scheduler = await make_scheduler(precheck=precheck)
    task, _ = await scheduler.submit(make_spec(1, head_sha="old", is_pull=True))
    await wait_until(lambda: len(runner.started) == 1)
    assert runner.started[0].spec.head_sha == "new"
    runner.release(task.id)
    assert (await until_state(store, task.id, TaskState.SUCCEEDED)).spec.head_sha == "new"


async def test_a_failing_precheck_does_not_drop_the_task(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    async def precheck(task: Task) -> Precheck:
        raise RuntimeError("an unexpected answer")  # not an outage: the run finds out

    scheduler = await make_scheduler(precheck=precheck)
    task, _ = await scheduler.submit(make_spec(1))
    runner.release(task.id)
    await until_state(store, task.id, TaskState.SUCCEEDED)


async def test_on_change_sees_every_state_in_order_and_its_errors_are_not_fatal(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    seen: list[tuple[int, TaskState]] = []

    async def on_change(task: Task) -> None:
        seen.append((task.id, task.state))
        raise RuntimeError("the reporter is broken")

    scheduler = await make_scheduler()
    scheduler.subscribe(on_change)
    task, _ = await scheduler.submit(make_spec(1))
    runner.release(task.id)
    await wait_until(lambda: len(seen) == 3)
    assert seen == [
        (task.id, TaskState.QUEUED),
        (task.id, TaskState.RUNNING),
        (task.id, TaskState.SUCCEEDED),
    ]


async def test_listeners_added_after_the_build_hear_each_change_in_the_order_they_were_added(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner
) -> None:
    heard: list[tuple[str, TaskState]] = []

    async def broken_reporter(task: Task) -> None:
        heard.append(("reporter", task.state))
        raise RuntimeError("the reporter is broken")

    def feed(task: Task) -> None:  # a plain function listens too
        heard.append(("feed", task.state))

    scheduler = await make_scheduler()
    scheduler.subscribe(broken_reporter)
    scheduler.subscribe(feed)
    task, _ = await scheduler.submit(make_spec(1))
    runner.release(task.id)
    await wait_until(lambda: len(heard) == 6)
    states = (TaskState.QUEUED, TaskState.RUNNING, TaskState.SUCCEEDED)
    assert heard == [(who, state) for state in states for who in ("reporter", "feed")]


async def test_a_queue_made_before_its_scheduler_gives_the_positions_the_scheduler_keeps(
    store: Store, runner: FakeRunner
) -> None:
    # The reports show queue positions and are built before the scheduler (the worker
    # writes progress through them): they read the positions from the queue itself.
    queue = TaskQueue()
    shown: list[int | None] = []

    def acknowledge(task: Task) -> None:
        if task.state is TaskState.QUEUED:
            shown.append(queue.position(task.id))

    scheduler = Scheduler(store, max_concurrency=1, agent_limits={}, execute=runner, queue=queue)
    scheduler.subscribe(acknowledge)
    await scheduler.start()
    try:
        tasks = [(await scheduler.submit(make_spec(n)))[0] for n in (1, 2, 3)]
        await wait_until(lambda: runner.started_ids == [tasks[0].id])
        assert shown == [1, 1, 2]  # each as it was queued; the first started at once
        assert [scheduler.position(t.id) for t in tasks] == [None, 1, 2]
        assert [queue.position(t.id) for t in tasks] == [None, 1, 2]
    finally:
        await scheduler.close()


async def test_a_slot_is_freed_only_once_the_previous_run_is_recorded(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    sessions: dict[int, str | None] = {}
    changes: list[tuple[int, TaskState]] = []

    async def look_up_session(task: Task) -> None:
        sessions[task.id] = await store.last_session("dev", "acme/app", 7)

    async def on_change(task: Task) -> None:
        changes.append((task.id, task.state))

    runner.before_run = look_up_session
    scheduler = await make_scheduler(agent_limits={"dev": 1})
    scheduler.subscribe(on_change)
    first, _ = await scheduler.submit(make_spec(1))
    follow_up, _ = await scheduler.submit(make_spec(2))
    runner.outcomes[first.id] = Outcome(TaskState.SUCCEEDED, session_id="sess-1")
    runner.release(first.id)
    runner.release(follow_up.id)
    await until_state(store, follow_up.id, TaskState.SUCCEEDED)
    assert sessions == {first.id: None, follow_up.id: "sess-1"}  # a follow-up can --resume
    started = changes.index((follow_up.id, TaskState.RUNNING))
    assert changes.index((first.id, TaskState.SUCCEEDED)) < started


async def test_a_new_run_waits_only_for_its_own_agents_records_still_on_their_way() -> None:
    loop = asyncio.get_running_loop()

    def run(
        n: int, agent: str, *, holds_slot: bool, recorded: bool = False
    ) -> scheduler_module._Run:
        made = scheduler_module._Run(
            task=Task(id=n, spec=make_spec(n, agent=agent), state=TaskState.RUNNING),
            released=loop.create_future(),
            holds_slot=holds_slot,
        )
        if recorded:
            made.released.set_result(None)
        return made

    runs = [
        run(1, "dev", holds_slot=False),  # over, its record on the way: wait for it
        run(2, "dev", holds_slot=True),  # still running: its slot is not free
        run(3, "dev", holds_slot=False, recorded=True),  # over and recorded
        run(4, "reviewer", holds_slot=False),  # another agent's
    ]
    assert scheduler_module.records_in_flight("dev", runs) == (runs[0].released,)
    assert scheduler_module.records_in_flight("lead", runs) == ()


async def test_a_freed_slot_starts_its_next_task_while_the_last_record_is_still_written(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    # Bench figure 4: each freed slot waited for its run's record to come back from the
    # store's thread before the next task could even ask to start: ~1 ms × 2 per task.
    writer_held = threading.Event()
    prechecked: list[int] = []
    changes: list[tuple[int, TaskState]] = []

    async def hold_the_writer(task: Task) -> None:
        if task.id == first.id:  # the record of this run queues behind a held writer
            store._writer.submit("hold", writer_held.wait, 5)

    async def precheck(task: Task) -> Precheck:
        prechecked.append(task.id)
        return Precheck.proceed()

    runner.before_run = hold_the_writer
    scheduler = await make_scheduler(agent_limits={"dev": 1}, precheck=precheck)
    scheduler.subscribe(lambda task: changes.append((task.id, task.state)))
    first, _ = await scheduler.submit(make_spec(1))
    follow_up, _ = await scheduler.submit(make_spec(2))
    runner.outcomes[first.id] = Outcome(TaskState.SUCCEEDED, session_id="sess-1")
    runner.release(first.id)
    runner.release(follow_up.id)
    try:
        await wait_until(lambda: follow_up.id in prechecked)
        assert (first.id, TaskState.SUCCEEDED) not in changes  # its record is still on the way
        assert runner.started_ids == [first.id]  # but the follow-up runs only after it
    finally:
        writer_held.set()
    await until_state(store, follow_up.id, TaskState.SUCCEEDED)
    assert runner.peak["dev"] == 1
    started = changes.index((follow_up.id, TaskState.RUNNING))
    assert changes.index((first.id, TaskState.SUCCEEDED)) < started


async def test_a_finished_runs_record_and_its_slots_next_start_share_one_transaction(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    # One trip to the store's thread, and one commit, for "A succeeded" and "B running".
    scheduler = await make_scheduler(agent_limits={"dev": 1})
    first, _ = await scheduler.submit(make_spec(1))
    follow_up, _ = await scheduler.submit(make_spec(2))
    await wait_until(lambda: runner.started_ids == [first.id])
    began = store.transactions
    runner.release(first.id)
    await wait_until(lambda: runner.started_ids == [first.id, follow_up.id])
    assert store.transactions - began == 1
    assert await state_of(store, first.id) is TaskState.SUCCEEDED
    runner.release(follow_up.id)


async def lockable_by_another_process(
    store: Store, monkeypatch: pytest.MonkeyPatch, *, record_retry: float
) -> sqlite3.Connection:
    """A second connection to the store, for the test to take its write lock with; the
    store waits only 50 ms for a lock, and a record retries first after `record_retry` s."""
    monkeypatch.setattr(scheduler_module, "RECORD_RETRY_FIRST", record_retry)
    await store._call("shorten", lambda: store._db.conn.execute("PRAGMA busy_timeout = 50"))
    return sqlite3.connect(store.path, isolation_level=None)


async def test_a_follow_up_waits_for_a_record_that_waits_out_a_locked_store(
    make_scheduler: Callable[..., Awaitable[Scheduler]],
    runner: FakeRunner,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The freed slot's next task may be marked running before its predecessor's record
    # (which met a lock another process held) is written; it must not run before it.
    other = await lockable_by_another_process(store, monkeypatch, record_retry=0.2)
    sessions: dict[int, str | None] = {}
    changes: list[tuple[int, TaskState]] = []

    async def before_run(task: Task) -> None:
        if task.id == first.id:  # another process takes the lock as the run ends
            other.execute("BEGIN EXCLUSIVE")
        sessions[task.id] = await store.last_session("dev", "acme/app", 7)

    async def precheck(task: Task) -> Precheck:
        if task.id == follow_up.id:  # the lock ends once the first record met it
            await wait_until(lambda: any(e["event"] == "task_record_busy" for e in logs))
            other.execute("ROLLBACK")
        return Precheck.proceed()

    with capture_logs() as logs:
        runner.before_run = before_run
        scheduler = await make_scheduler(agent_limits={"dev": 1}, precheck=precheck)
        scheduler.subscribe(lambda task: changes.append((task.id, task.state)))
        first, _ = await scheduler.submit(make_spec(1))
        follow_up, _ = await scheduler.submit(make_spec(2))
        runner.outcomes[first.id] = Outcome(TaskState.SUCCEEDED, session_id="sess-1")
        runner.release(first.id)
        runner.release(follow_up.id)
        await until_state(store, follow_up.id, TaskState.SUCCEEDED)
    other.close()
    assert sessions == {first.id: None, follow_up.id: "sess-1"}
    started = changes.index((follow_up.id, TaskState.RUNNING))
    assert changes.index((first.id, TaskState.SUCCEEDED)) < started


async def test_retry_queues_an_ended_task_again_but_not_a_running_one(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    scheduler = await make_scheduler()
    task, _ = await scheduler.submit(make_spec(1))
    await wait_until(lambda: runner.started_ids == [task.id])
    with pytest.raises(SchedulerError, match="is running"):
        await scheduler.retry(task.id)

    runner.outcomes[task.id] = Outcome(TaskState.FAILED, reason="max turns reached")
    runner.release(task.id)
    await until_state(store, task.id, TaskState.FAILED)
    runner.outcomes[task.id] = DONE
    retried = await scheduler.retry(task.id, by="alice")
    assert retried.state is TaskState.QUEUED and retried.error is None
    done = await until_state(store, task.id, TaskState.SUCCEEDED)
    assert done.attempts == 2 and runner.started_ids == [task.id, task.id]


async def test_a_failed_task_is_logged_at_warning_so_journalctl_p_warning_shows_it(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    scheduler = await make_scheduler()
    failing, _ = await scheduler.submit(make_spec(1))
    runner.outcomes[failing.id] = Outcome(TaskState.FAILED, reason="claude exited 1")
    fine, _ = await scheduler.submit(make_spec(2))
    with capture_logs() as logs:
        runner.release(failing.id)
        runner.release(fine.id)
        await until_state(store, failing.id, TaskState.FAILED)
        await until_state(store, fine.id, TaskState.SUCCEEDED)
        await wait_until(lambda: sum(e["event"] == "task_finished" for e in logs) == 2)
    levels = {e["task_id"]: e["log_level"] for e in logs if e["event"] == "task_finished"}
    assert levels == {failing.id: "warning", fine.id: "info"}


# --- deferrals and paused agents --------------------------------------------------------


async def test_a_deferred_run_waits_its_time_without_holding_up_the_agents_next_task(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    clock = FakeClock()
    scheduler = await make_scheduler(clock=clock, max_concurrency=1)
    first, _ = await scheduler.submit(make_spec(1))
    second, _ = await scheduler.submit(make_spec(2))
    runner.outcomes[first.id] = Outcome(
        TaskState.QUEUED, reason="waiting for Forgejo", retry_at=clock.now + 60, session_id="s-1"
    )
    runner.release(first.id)
    await wait_until(lambda: second.id in runner.started_ids)
    waiting = await store.get(first.id)
    assert waiting is not None and waiting.deferred
    assert (waiting.not_before, waiting.deferrals, waiting.session_id) == (
        clock.now + 60,
        1,
        "s-1",
    )
    assert waiting.error == "waiting for Forgejo"
    runner.release(second.id)
    await until_state(store, second.id, TaskState.SUCCEEDED)
    scheduler.wake()
    assert runner.started_ids == [first.id, second.id]  # not yet: its time has not come
    clock.now += 61
    runner.outcomes.pop(first.id)
    runner.gates[first.id] = asyncio.Event()
    runner.release(first.id)
    scheduler.wake()
    done = await until_state(store, first.id, TaskState.SUCCEEDED)
    assert runner.started_ids == [first.id, second.id, first.id]
    assert done.not_before is None and done.attempts == 2


async def test_a_deferral_that_does_not_use_an_attempt_leaves_the_retry_budget(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    clock = FakeClock()
    scheduler = await make_scheduler(clock=clock)
    task, _ = await scheduler.submit(make_spec(1))
    runner.outcomes[task.id] = Outcome(
        TaskState.QUEUED, reason="usage limit", retry_at=clock.now + 5, uses_attempt=False
    )
    runner.release(task.id)
    await wait_until(lambda: scheduler.running_ids() == set())
    waiting = await store.get(task.id)
    assert waiting is not None and waiting.deferred and waiting.deferrals == 0


async def test_a_precheck_can_put_a_task_off_without_running_it(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    clock = FakeClock()
    checks: list[int] = []

    async def precheck(task: Task) -> Precheck:
        checks.append(task.id)
        if len(checks) == 1:
            return Precheck.later(clock.now + 30, "CI is still running")
        return Precheck.proceed()

    scheduler = await make_scheduler(clock=clock, precheck=precheck)
    task, _ = await scheduler.submit(make_spec(1))
    await wait_until(lambda: checks == [task.id] and not scheduler.running_ids())
    waiting = await store.get(task.id)
    assert waiting is not None and waiting.deferred and waiting.attempts == 0
    assert runner.started == []
    clock.now += 31
    runner.release(task.id)
    scheduler.wake()
    await until_state(store, task.id, TaskState.SUCCEEDED)
    assert checks == [task.id, task.id]


async def test_a_paused_agent_waits_while_others_run_and_resume_lifts_it(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    clock = FakeClock()
    told: list[tuple[str, bool]] = []
    scheduler = await make_scheduler(clock=clock)
    scheduler.subscribe_pauses(lambda agent, pause: told.append((agent, pause is not None)))
    await scheduler.pause("dev", clock.now + 3600, "Claude usage limit", "usage_limit")
    dev, _ = await scheduler.submit(make_spec(1, agent="dev"))
    other, _ = await scheduler.submit(make_spec(2, agent="reviewer"))
    runner.release(other.id)
    await until_state(store, other.id, TaskState.SUCCEEDED)
    assert dev.id not in runner.started_ids and set(scheduler.paused()) == {"dev"}
    runner.release(dev.id)
    assert await scheduler.resume("dev", by="alice")
    await until_state(store, dev.id, TaskState.SUCCEEDED)
    assert told == [("dev", True), ("dev", False)] and scheduler.paused() == {}
    assert not await scheduler.resume("dev")  # not paused any more


async def test_a_pause_ends_on_the_clock_and_survives_a_restart(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    clock = FakeClock()
    first = await make_scheduler(clock=clock)
    await first.pause("dev", clock.now + 600, "Claude usage limit", "usage_limit")
    await first.drain(0)
    scheduler = await make_scheduler(clock=clock)  # a restart: the pause is stored
    assert set(scheduler.paused()) == {"dev"}
    task, _ = await scheduler.submit(make_spec(1, agent="dev"))
    runner.release(task.id)
    scheduler.wake()
    assert runner.started == []
    clock.now += 601
    scheduler.wake()
    await until_state(store, task.id, TaskState.SUCCEEDED)
    assert scheduler.paused() == {}


async def test_the_timer_wakes_the_queue_when_a_deferral_ends(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    scheduler = await make_scheduler()  # the real clock: the timer, not wake(), runs it
    task, _ = await scheduler.submit(make_spec(1))
    runner.outcomes[task.id] = Outcome(
        TaskState.QUEUED, reason="Docker is unreachable", retry_at=time.time() + 0.2
    )
    runner.release(task.id)
    await wait_until(lambda: runner.started_ids == [task.id] and not scheduler.running_ids())
    runner.outcomes.pop(task.id)
    await until_state(store, task.id, TaskState.SUCCEEDED)
    assert runner.started_ids == [task.id, task.id]


async def test_a_usage_limit_deferral_pauses_the_agent_and_requeues_the_task(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    clock = FakeClock()
    scheduler = await make_scheduler(clock=clock)
    limited, _ = await scheduler.submit(make_spec(1, agent="dev"))
    later, _ = await scheduler.submit(make_spec(2, agent="dev"))
    resets = clock.now + 900
    pause = AgentPause("dev", resets, "Claude usage limit", "usage_limit", "five_hour")
    runner.outcomes[limited.id] = Outcome(
        TaskState.QUEUED, reason="paused", retry_at=resets, uses_attempt=False, pause=pause
    )
    runner.release(limited.id)
    await wait_until(lambda: not scheduler.running_ids() and "dev" in scheduler.paused())
    assert runner.started_ids == [limited.id]  # the agent's next task waits too
    assert (await store.pauses()) == [replace(pause, limit_type=None)]  # the type is not stored
    clock.now = resets + 1
    runner.outcomes.pop(limited.id)
    runner.gates[limited.id] = asyncio.Event()
    runner.release(limited.id)
    runner.release(later.id)
    scheduler.wake()
    await until_state(store, later.id, TaskState.SUCCEEDED)
    assert (await until_state(store, limited.id, TaskState.SUCCEEDED)).deferrals == 0


# --- outages (issue 16): waited out with a backoff, bounded, worded ---

FORGEJO_500 = ForgejoError("GET", "/repos/acme/app", 500, "injected failure")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def clocked(
    tmp_path: Path, clock: FakeClock, runner: FakeRunner
) -> AsyncIterator[Callable[..., Awaitable[tuple[Scheduler, Store]]]]:
    """A scheduler and its store on one injected clock (the outage budget spans both)."""
    opened: list[tuple[Scheduler, Store]] = []

    async def make(**options: Any) -> tuple[Scheduler, Store]:
        store = await Store.open(tmp_path / "clocked.sqlite3", clock=clock)
        options = {"max_concurrency": 2, "agent_limits": {}, "execute": runner} | options
        scheduler = Scheduler(store, clock=clock, **options)
        await scheduler.start()
        opened.append((scheduler, store))
        return scheduler, store

    yield make
    for scheduler, store in opened:
        await scheduler.drain(0)
        await store.close()


async def until_deferred(store: Store, scheduler: Scheduler, task_id: int) -> Task:
    async def deferred() -> Task | None:
        task = await store.get(task_id)
        ready = task is not None and task.deferred and task_id in scheduler._queue
        return task if ready else None

    return await wait_until(deferred, what=f"task {task_id} deferred")


async def test_an_outage_in_the_run_defers_the_task_until_the_backoff_and_then_it_succeeds(
    clocked: Callable[..., Awaitable[tuple[Scheduler, Store]]],
    runner: FakeRunner,
    clock: FakeClock,
) -> None:
    # Issue 16: the task failed for good ("ForgejoError: Forgejo GET /repos/acme/app: HTTP 500").
    policy = OutagePolicy(attempts=3, within=3600, backoff=10)
    scheduler, store = await clocked(outages=policy)
    task, _ = await scheduler.submit(make_spec(1))
    runner.outcomes[task.id] = FORGEJO_500
    runner.release(task.id)
    waiting = await until_deferred(store, scheduler, task.id)
    assert waiting.deferred and waiting.not_before == clock.now + 10
    assert waiting.error == "Forgejo is unreachable, will retry (try 1 of 3)"
    assert (waiting.deferrals, waiting.deferred_since) == (1, clock.now)
    scheduler.wake()
    assert runner.started_ids == [task.id]  # not before its time
    runner.outcomes.pop(task.id)
    clock.now += 10
    scheduler.wake()
    done = await until_state(store, task.id, TaskState.SUCCEEDED)
    assert runner.started_ids == [task.id, task.id] and done.attempts == 2


async def test_an_outage_that_outlasts_the_retry_budget_fails_the_task_in_words(
    clocked: Callable[..., Awaitable[tuple[Scheduler, Store]]],
    runner: FakeRunner,
    clock: FakeClock,
) -> None:
    policy = OutagePolicy(attempts=2, within=3600, backoff=10)
    scheduler, store = await clocked(outages=policy)
    task, _ = await scheduler.submit(make_spec(1))
    runner.outcomes[task.id] = DockerError(900, "Cannot connect via unix:///srv/docker.sock")
    runner.release(task.id)
    for tries in (1, 2):
        await wait_until(lambda n=tries: runner.started_ids.count(task.id) == n)
        waiting = await until_deferred(store, scheduler, task.id)
        assert waiting.deferrals == tries
        clock.now += 3600 / 100 * tries
        scheduler.wake()
    failed = await until_state(store, task.id, TaskState.FAILED)
    assert runner.started_ids == [task.id] * 3
    assert failed.error == "gave up after 2 retries over 1 min 48 s: Docker is unreachable"


async def test_an_outage_in_the_precheck_defers_the_task_without_starting_it(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    clock = FakeClock()
    down = [True]

    async def precheck(task: Task) -> Precheck:
        if down[0]:
            raise FORGEJO_500
        return Precheck.proceed()

    scheduler = await make_scheduler(clock=clock, precheck=precheck)
    task, _ = await scheduler.submit(make_spec(1))
    waiting = await until_deferred(store, scheduler, task.id)
    assert waiting.deferred and waiting.attempts == 0 and runner.started_ids == []
    down[0] = False
    clock.now += 3600
    scheduler.wake()
    runner.release(task.id)
    await until_state(store, task.id, TaskState.SUCCEEDED)


async def test_a_store_locked_past_its_busy_timeout_defers_the_start_and_the_record_waits(
    make_scheduler: Callable[..., Awaitable[Scheduler]],
    runner: FakeRunner,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 16: "StoreError: <host path>: start task 64 failed: database is locked", failed.
    other = await lockable_by_another_process(store, monkeypatch, record_retry=0.01)
    locked = [False]

    async def precheck(task: Task) -> Precheck:
        if not locked[0]:  # another process takes the lock just as the task starts
            other.execute("BEGIN EXCLUSIVE")
            locked[0] = True
        return Precheck.proceed()

    clock = FakeClock()
    with capture_logs() as logs:
        scheduler = await make_scheduler(clock=clock, precheck=precheck)
        task, _ = await scheduler.submit(make_spec(1))
        await wait_until(lambda: any(e["event"] == "task_record_busy" for e in logs))
        other.execute("ROLLBACK")  # the lock ends: the deferral is recorded
        await wait_until(lambda: task.id in scheduler._queue)
    other.close()
    waiting = await store.get(task.id)
    assert waiting is not None and waiting.deferred and runner.started_ids == []
    assert waiting.error == "the task store is busy, will retry (try 1 of 8)"
    clock.now += 3600
    scheduler.wake()
    runner.release(task.id)
    await until_state(store, task.id, TaskState.SUCCEEDED)


async def test_resume_lifts_a_usage_limit_pause_early_and_the_held_task_runs_at_once(
    make_scheduler: Callable[..., Awaitable[Scheduler]], runner: FakeRunner, store: Store
) -> None:
    clock = FakeClock()
    scheduler = await make_scheduler(clock=clock)
    limited, _ = await scheduler.submit(make_spec(1, agent="dev"))
    resets = clock.now + 900
    pause = AgentPause("dev", resets, "paused", "usage_limit", "five_hour")
    runner.outcomes[limited.id] = Outcome(
        TaskState.QUEUED, reason="paused", retry_at=resets, uses_attempt=False, pause=pause
    )
    runner.release(limited.id)
    await wait_until(lambda: not scheduler.running_ids() and "dev" in scheduler.paused())
    runner.outcomes.pop(limited.id)
    runner.gates[limited.id] = asyncio.Event()
    runner.release(limited.id)
    assert await scheduler.resume("dev", by="alice")  # long before the reset
    done = await until_state(store, limited.id, TaskState.SUCCEEDED)
    assert runner.started_ids == [limited.id, limited.id] and done.not_before is None


def test_taking_the_next_task_looks_at_the_head_of_one_queue_not_at_every_queued_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every dispatch calls next_task and next_wake: walking all 1,000 queued tasks each
    # time made a start's cost grow with the queue (the scheduling bench's makespan).
    looked: list[int] = []
    real_waits = scheduler_module._waits

    def counted(task: Task, now: float) -> bool:
        looked.append(task.id)
        return real_waits(task, now)

    monkeypatch.setattr(scheduler_module, "_waits", counted)
    queue = TaskQueue()
    for n in range(1, 1001):
        agent = f"agent{n % 4}"
        queue.add(Task(id=n, spec=make_spec(n, agent=agent), state=TaskState.QUEUED))
    later = Task(
        id=1001, spec=make_spec(1001, agent="agent1"), state=TaskState.QUEUED,
        not_before=time.time() + 60,
    )  # fmt: skip
    queue.add(later)  # deferred, at its queue's end
    taken = [queue.next_task({}, {}, now=time.time()) for _ in range(8)]
    assert [t.id for t in taken if t is not None] == [4, 3, 2, 1, 8, 7, 6, 5]  # round-robin
    assert len(looked) <= 8  # one head per task taken
    assert queue.next_wake(time.time()) == later.not_before  # a dated task: it is found
    queue.take(1001)
    looked.clear()
    assert queue.next_wake(time.time()) is None
    assert looked == []  # nothing dated in the queue: no walk over it
