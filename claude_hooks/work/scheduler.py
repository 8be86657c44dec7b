"""The bounded scheduler: which queued task runs next, and how each run ends in the store.

Slots: a global limit and a per-agent limit (an agent missing from `agent_limits`
gets DEFAULT_AGENT_LIMIT). Order: FIFO within an agent; across agents,
round-robin over the agents with work waiting, least recently served first, so a
busy agent cannot starve another.

Each run is an asyncio task wrapping `execute(task)` under the agent's timeout.
The runner stops its process when that task is cancelled (it catches
CancelledError, stops the process in a shielded block, re-raises), so the
scheduler stops runs through asyncio alone and records the state from *why* it
stopped one:

- user cancel → cancelled, "cancelled by @login"
- timeout → failed, "timeout after 1 min 30 s"
- drain (shutdown) → interrupted, "interrupted by shutdown — will resume"
- precheck says the task no longer makes sense → cancelled, "skipped: <reason>"
- precheck or execute raised an outage (Forgejo, Docker, the store: work/outages.py)
  → queued again after an exponential backoff, until the OutagePolicy's budget is
  spent; then failed, "gave up after N retries over …: Forgejo is unreachable"
- execute lost its pool engine mid-run (work/outages.py's EngineLost) → interrupted, and
  queued again at once, as a restart re-queues an interrupted task (failed the second time)
- execute raised anything else → failed, in words (the exception goes to the journal)
- the run (or its precheck) deferred it → queued again, not run before a time

A deferred task waits in its agent's queue without holding it up: the agent's next
ready task runs first. A paused agent's queue waits as a whole (a usage limit, a daily
budget) while other agents run. Both end on the scheduler's clock: one timer wakes the
dispatcher at the earliest such time (`wake` does it at once, for an injected clock).

(the words are report/render.py's, as everywhere people read them).

Recording (store.finish, then telling the listeners) runs in its own task, shielded
from the run's cancellation. The run's slot is free for the next task as soon as the
record is handed to the store's writer (the run itself is over): the next task's precheck
and start write queue behind that record, so they read it, and the freed slot does not
wait for the write's round trip to the store's thread and back. The next task of the same
agent is told running and executed only once its predecessors' records are written and
told: a follow-up on the same thread always sees its predecessor's session, even when
that record had to wait out a locked store.

Every state change is published to the listeners added with `subscribe`, in the order
they were added; the reports, the API's event feed and the metrics listen. The queue
itself (`TaskQueue`) is a separate object, so a listener that shows queue positions can
be built before the scheduler that runs the tasks.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import structlog

from claude_hooks.report.render import (
    INTERRUPTED_REASON,
    cancelled_reason,
    engine_lost_reason,
    skipped_reason,
    timeout_reason,
)
from claude_hooks.store import RecoveryReport, Store, StoreError, TaskNotFound
from claude_hooks.tasks import FINAL_STATES, AgentPause, Outcome, Task, TaskSpec, TaskState
from claude_hooks.work.outages import (
    OutagePolicy,
    crash_words,
    lost_engine,
    outage_of,
    outage_outcome,
)

log = structlog.get_logger(__name__)

DEFAULT_AGENT_LIMIT = 1
# A state change the store is too busy to take (another process holds its lock) is
# tried again for this long, so an outcome is not lost to a short lock.
RECORD_RETRY_FOR = 60.0
RECORD_RETRY_FIRST = 0.25


@dataclass(frozen=True)
class Precheck:
    """Whether a queued task still makes sense just before it starts."""

    skip_reason: str | None = None  # set: do not run it, and say why
    spec: TaskSpec | None = None  # set: run this updated spec (e.g. the PR's new head)
    deferral: Outcome | None = None  # set: not yet; back to the queue until its retry_at

    @classmethod
    def proceed(cls, spec: TaskSpec | None = None) -> Precheck:
        return cls(spec=spec)

    @classmethod
    def skip(cls, reason: str) -> Precheck:
        return cls(skip_reason=reason)

    @classmethod
    def later(
        cls,
        retry_at: float,
        reason: str,
        *,
        uses_attempt: bool = True,
        pause: AgentPause | None = None,
    ) -> Precheck:
        """Not now (CI still pending, Forgejo down, the agent over its daily budget):
        queued again until `retry_at`; with `pause`, the agent's whole queue waits."""
        deferral = Outcome(
            TaskState.QUEUED,
            reason=reason,
            retry_at=retry_at,
            uses_attempt=uses_attempt,
            pause=pause,
        )
        return cls(deferral=deferral)


PROCEED = Precheck()

Execute = Callable[[Task], Awaitable[Outcome]]
PrecheckFn = Callable[[Task], Awaitable[Precheck]]
# Told each state change the scheduler records. It may be a coroutine function; the
# scheduler awaits it before going on, so a listener that talks to Forgejo queues the
# work and returns (TaskReports) rather than holding up every start.
Listener = Callable[[Task], Awaitable[None] | None]


class SchedulerError(Exception):
    """A request the scheduler cannot honour in the task's current state."""


class StopReason(StrEnum):
    USER = "user"
    DRAIN = "drain"


def pick_agent(
    turns: Sequence[str],
    waiting: Mapping[str, int],
    running: Mapping[str, int],
    limits: Mapping[str, int],
) -> str | None:
    """The first agent in turn order with a task waiting and a free agent slot."""
    for agent in turns:
        limit = limits.get(agent, DEFAULT_AGENT_LIMIT)
        if waiting.get(agent, 0) > 0 and running.get(agent, 0) < limit:
            return agent
    return None


def records_in_flight(agent: str, runs: Iterable[_Run]) -> tuple[asyncio.Future[None], ...]:
    """What a new run of `agent` waits for before it is told running: its agent's runs
    that are over (their slot is free) but not yet recorded and told."""
    return tuple(
        run.released
        for run in runs
        if run.agent == agent and not run.holds_slot and not run.released.done()
    )


def checked_outcome(outcome: object) -> Outcome:
    """The runner's outcome if it is a way a run can end; a failure saying why otherwise."""
    if not isinstance(outcome, Outcome):
        return Outcome(TaskState.FAILED, reason=f"runner returned {type(outcome).__name__}")
    if outcome.deferred:
        return outcome
    if outcome.state not in FINAL_STATES:
        return Outcome(TaskState.FAILED, reason=f"runner ended the run as {outcome.state}")
    return outcome


class TaskQueue:
    """The queued tasks: FIFO per agent, and the order agents are served in (round-robin
    over the agents with work waiting, least recently served first)."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Task]] = {}
        self._agent_of: dict[int, str] = {}  # queued task id → its agent's queue
        self._turns: list[str] = []  # agents, least recently served first
        self._dated = 0  # queued tasks with a not_before (deferred once), for next_wake

    def __contains__(self, task_id: int) -> bool:
        return task_id in self._agent_of

    def __len__(self) -> int:
        return len(self._agent_of)

    def add(self, task: Task) -> None:
        if task.id in self._agent_of:
            return
        agent = task.spec.agent
        queue = self._queues.setdefault(agent, deque())
        if agent not in self._turns:
            self._turns.insert(0, agent)  # never served yet: the least recently served
        queue.append(task)
        if len(queue) > 1 and queue[-2].id > task.id:  # an older task reached us late
            self._queues[agent] = deque(sorted(queue, key=lambda t: t.id))
        self._agent_of[task.id] = agent
        self._dated += task.not_before is not None

    def _forget(self, task: Task) -> None:
        del self._agent_of[task.id]
        self._dated -= task.not_before is not None

    def refresh(self, task: Task) -> None:
        """Put the store's newer view of a queued task in its place (e.g. not deferred)."""
        agent = self._agent_of.get(task.id)
        if agent is not None:
            queue = self._queues[agent]
            i = next(i for i, t in enumerate(queue) if t.id == task.id)
            self._dated += (task.not_before is not None) - (queue[i].not_before is not None)
            queue[i] = task

    def take(self, task_id: int) -> Task | None:
        """Remove a queued task (None if it is not queued here)."""
        agent = self._agent_of.pop(task_id, None)
        if agent is None:
            return None
        queue = self._queues[agent]
        task = next(t for t in queue if t.id == task_id)
        queue.remove(task)
        self._dated -= task.not_before is not None
        return task

    def next_task(
        self,
        running: Mapping[str, int],
        limits: Mapping[str, int],
        now: float | None = None,
        paused: frozenset[str] = frozenset(),
    ) -> Task | None:
        """Remove and return the task to run next, given each agent's running count.

        With `now`, a task deferred past it is passed over (the agent's next ready
        one runs); the agents in `paused` are passed over as a whole.
        """
        # Agent by agent in turn order, stopping at the first task that may run: a
        # dispatch costs the agents ahead of it, not a walk over every queued task (with
        # a thousand queued, that walk was most of what each start cost).
        for agent in self._turns:
            if agent in paused or running.get(agent, 0) >= limits.get(agent, DEFAULT_AGENT_LIMIT):
                continue
            queue = self._queues.get(agent)
            task = next((t for t in queue or () if now is None or not _waits(t, now)), None)
            if task is None:
                continue
            self._turns.remove(agent)
            self._turns.append(agent)
            assert queue is not None
            queue.remove(task)
            self._forget(task)
            return task
        return None

    def next_wake(self, now: float) -> float | None:
        """The earliest time a deferred task becomes ready (None: nothing is deferred)."""
        if not self._dated:  # no walk over the queue when no queued task has a date
            return None
        times = [t.not_before for q in self._queues.values() for t in q if _waits(t, now)]
        return min((t for t in times if t is not None), default=None)

    def position(self, task_id: int) -> int | None:
        """1-based place of a queued task in its agent's queue (None if not queued here)."""
        agent = self._agent_of.get(task_id)
        if agent is None:
            return None
        ids = [task.id for task in self._queues[agent]]
        return ids.index(task_id) + 1


def _waits(task: Task, now: float) -> bool:
    return task.not_before is not None and task.not_before > now


@dataclass(eq=False)
class _Run:
    """One task holding a slot, from precheck until its outcome is recorded."""

    task: Task
    released: asyncio.Future[None]  # done when the slot is free again
    job: asyncio.Task[None] | None = None
    stop: StopReason | None = None
    stopped_by: str | None = None
    started: bool = False  # marked running in the store
    holds_slot: bool = True  # counts against the limits (until its outcome is handed on)
    after: tuple[asyncio.Future[None], ...] = ()  # its agent's records still being written
    deferred: bool = False  # recorded as deferred: queued again once the slot is free
    lost: bool = False  # its pool engine went away mid-run: interrupted, then re-queued
    completion: asyncio.Task[None] | None = None

    @property
    def agent(self) -> str:
        return self.task.spec.agent


class Scheduler:
    def __init__(
        self,
        store: Store,
        *,
        max_concurrency: int,
        agent_limits: Mapping[str, int],
        execute: Execute,
        precheck: PrecheckFn | None = None,
        timeouts: Mapping[str, float] | None = None,
        queue: TaskQueue | None = None,
        clock: Callable[[], float] = time.time,
        outages: OutagePolicy | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self._store = store
        self._max_concurrency = max_concurrency
        self._agent_limits = dict(agent_limits)
        self._execute = execute
        self._precheck = precheck
        self._timeouts = dict(timeouts or {})
        self._listeners: list[Listener] = []
        self._queue = queue if queue is not None else TaskQueue()
        self._running: dict[int, _Run] = {}  # from launch until recorded
        self._slots_used = 0  # the runs of _running that still hold a slot
        self._running_by_agent: Counter[str] = Counter()  # slots held, by agent
        self._started = False
        self._draining = False
        self._clock = clock
        self._outages = outages or OutagePolicy()
        self._pauses: dict[str, AgentPause] = {}
        self._pause_listeners: list[Callable[[str, AgentPause | None], None]] = []
        self._timer: asyncio.TimerHandle | None = None

    def subscribe(self, listener: Listener) -> None:
        """Tell `listener` every state change from now on (a failing one is logged)."""
        self._listeners.append(listener)

    # --- lifecycle ---

    async def start(self) -> RecoveryReport:
        """Recover what a previous process left, load the queue and start dispatching."""
        if self._started:
            raise SchedulerError("the scheduler is already started")
        report = await self._store.recover()
        for pause in await self._store.pauses():
            self._pauses[pause.agent] = pause
        self._started = True  # from here, submit() feeds the in-memory queue too
        for task in await self._store.queued():
            self._add_queued(task)
        log.info(
            "scheduler_started",
            queued=self.queue_depth(),
            requeued=[t.id for t in report.requeued],
            failed=[t.id for t in report.failed],
        )
        for task in report.requeued + report.failed:
            await self._notify(task)
        self._dispatch()
        return report

    async def drain(
        self, drain_timeout: float, *, skip: asyncio.Event | None = None
    ) -> tuple[int, ...]:
        """Stop dispatching; let running tasks end until the timeout (or `skip`), then
        interrupt the rest. The ids of the tasks cut short (they resume on the next
        start); empty when every running task ended in time."""
        self._draining = True
        self._cancel_timer()
        runs = list(self._running.values())
        if await _wait_released(runs, drain_timeout, skip):
            return ()
        left = [run for run in runs if not run.released.done()]
        for run in left:
            if run.stop is None and run.job is not None:
                run.stop = StopReason.DRAIN
                run.job.cancel("drain")
        if left:
            await asyncio.wait([run.released for run in left])
        log.warning("drain_interrupted", tasks=[run.task.id for run in left])
        return tuple(run.task.id for run in left)

    async def close(self) -> None:
        """Stop dispatching, interrupt what still runs, and return once each run is recorded:
        after this nothing of the scheduler uses the store."""
        await self.drain(0)

    # --- requests ---

    async def submit(self, spec: TaskSpec) -> tuple[Task, bool]:
        """Store the task (idempotent on its key) and run it when a slot is free."""
        task, created = await self._store.enqueue(spec)
        if created:
            log.info("task_queued", task_id=task.id, agent=spec.agent, thread=spec.thread)
            if self._started:
                self._add_queued(task)
            await self._notify(task)
            self._dispatch()
        return task, created

    async def cancel(self, task_id: int, by: str) -> Task:
        """A queued task is cancelled at once; a running one is stopped, then recorded."""
        reason = cancelled_reason(by)
        run = self._running.get(task_id)
        if run is not None:
            if run.stop is None and run.job is not None:
                run.stop, run.stopped_by = StopReason.USER, by
                run.job.cancel(reason)
            await asyncio.shield(run.released)
            return await self._get(task_id)
        if self._queue.take(task_id) is None:
            task = await self._get(task_id)
            if task.state is not TaskState.QUEUED:
                return task  # already over: nothing to cancel
        task = await self._store.finish(task_id, Outcome(TaskState.CANCELLED, reason=reason))
        log.info("task_cancelled", task_id=task_id, by=by)
        await self._notify(task)
        return task

    async def retry(self, task_id: int, by: str | None = None) -> Task:
        """Queue a finished (or interrupted) task again."""
        task = await self._get(task_id)
        busy = task_id in self._running or task_id in self._queue
        if busy or not (task.state.is_final or task.state is TaskState.INTERRUPTED):
            raise SchedulerError(f"task {task_id} is {task.state}; only an ended task can retry")
        reason = f"retry requested by {by}" if by else "retry requested"
        task = await self._store.requeue(task_id, reason)
        log.info("task_retried", task_id=task_id, by=by)
        if self._started:
            self._add_queued(task)
        await self._notify(task)
        self._dispatch()
        return task

    # --- paused agents ---

    async def pause(
        self, agent: str, until: float, reason: str, cause: str, *, limit_type: str | None = None
    ) -> AgentPause:
        """Hold `agent`'s queue until `until` (stored: a restart keeps it); a later pause
        of the same agent replaces it. Running tasks are not touched."""
        pause = AgentPause(agent, until, reason, cause, limit_type)
        await self._store.set_pause(pause)
        self._pauses[agent] = pause
        log.warning("agent_paused", agent=agent, until=until, reason=reason, cause=cause)
        self._tell_pause(agent, pause)
        self._dispatch()
        return pause

    async def resume(self, agent: str, *, by: str | None = None) -> bool:
        """Lift `agent`'s pause now; False when it was not paused."""
        was = self._pauses.pop(agent, None)
        cleared = await self._store.clear_pause(agent)
        if was is None and not cleared:
            return False
        log.info("agent_resumed", agent=agent, by=by or "clock")
        self._tell_pause(agent, None)
        if was is not None:  # the tasks the pause deferred to its end may run now
            for task in await self._store.release_held(agent, was.until):
                self._queue.refresh(task)
                await self._notify(task)
        self._dispatch()
        return True

    def paused(self) -> dict[str, AgentPause]:
        """The agents paused now, by name."""
        now = self._clock()
        return {a: p for a, p in self._pauses.items() if p.until > now}

    def subscribe_pauses(self, listener: Callable[[str, AgentPause | None], None]) -> None:
        """Tell `listener(agent, pause)` each pause and each resume (pause None)."""
        self._pause_listeners.append(listener)

    def wake(self) -> None:
        """Look at the queue again now: a deferral or a pause may have ended (the timer
        does this by itself; a test with an injected clock calls it)."""
        self._dispatch()

    def _tell_pause(self, agent: str, pause: AgentPause | None) -> None:
        for listener in self._pause_listeners:
            try:
                listener(agent, pause)
            except Exception:
                log.exception("on_pause_failed", agent=agent)

    def _expire_pauses(self, now: float) -> None:
        for agent in [a for a, p in self._pauses.items() if p.until <= now]:
            del self._pauses[agent]
            log.info("agent_resumed", agent=agent, by="clock")
            self._tell_pause(agent, None)
            # the stored row goes with the next pause or resume; an ended one is inert

    # --- views ---

    def position(self, task_id: int) -> int | None:
        """1-based place of a queued task in its agent's queue (None if not queued here)."""
        return self._queue.position(task_id)

    def running_ids(self) -> set[int]:
        return set(self._running)

    def running_by_agent(self) -> dict[str, int]:
        return {agent: n for agent, n in self._running_by_agent.items() if n}

    def queue_depth(self) -> int:
        return len(self._queue)

    # --- the queue ---

    def _add_queued(self, task: Task) -> None:
        if task.id not in self._running:
            self._queue.add(task)

    def _dispatch(self) -> None:
        if not self._started or self._draining:
            return
        now = self._clock()
        self._expire_pauses(now)
        paused = frozenset(self._pauses)
        while self._slots_used < self._max_concurrency:
            task = self._queue.next_task(self._running_by_agent, self._agent_limits, now, paused)
            if task is None:
                break
            self._launch(task)
        self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        """One timer, at the earliest deferral or pause end still ahead."""
        self._cancel_timer()
        times = [p.until for p in self._pauses.values()]
        if (deferred := self._queue.next_wake(now)) is not None:
            times.append(deferred)
        if times:
            delay = max(0.0, min(times) - now)
            self._timer = asyncio.get_running_loop().call_later(delay, self._dispatch)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _launch(self, task: Task) -> None:
        run = _Run(task=task, released=asyncio.get_running_loop().create_future())
        run.after = records_in_flight(run.agent, self._running.values())
        self._running[task.id] = run
        self._slots_used += 1
        self._running_by_agent[run.agent] += 1
        run.job = asyncio.create_task(self._run(run), name=f"claude-hooks-task-{task.id}")
        run.job.add_done_callback(functools.partial(self._job_ended, run))

    def _free_slot(self, run: _Run) -> None:
        if run.holds_slot:
            run.holds_slot = False
            self._slots_used -= 1
            self._running_by_agent[run.agent] -= 1

    def _release(self, run: _Run) -> None:
        if run.released.done():
            return
        del self._running[run.task.id]
        self._free_slot(run)
        if run.deferred:
            self._queue.add(run.task)
        run.released.set_result(None)
        self._dispatch()

    def _job_ended(self, run: _Run, job: asyncio.Task[None]) -> None:
        if not job.cancelled() and (exc := job.exception()) is not None:
            log.error("task_job_crashed", task_id=run.task.id, error=repr(exc), exc_info=exc)
        if run.completion is None:  # nothing to record: the completion would free the slot
            self._release(run)

    # --- one run ---

    async def _run(self, run: _Run) -> None:
        with structlog.contextvars.bound_contextvars(task_id=run.task.id, agent=run.agent):
            outcome = await self._attempt(run)
            if outcome is None:
                return
            run.completion = asyncio.create_task(self._complete(run, outcome))
            await asyncio.shield(run.completion)

    async def _attempt(self, run: _Run) -> Outcome | None:
        """Precheck, start and execute; the outcome to record, None for nothing to record."""
        try:
            check = await self._checked(run.task)
            if check.skip_reason is not None:
                return Outcome(TaskState.CANCELLED, reason=skipped_reason(check.skip_reason))
            if check.deferral is not None:
                return check.deferral
            if check.spec is not None and check.spec != run.task.spec:
                run.task = await self._store.update_spec(run.task.id, check.spec)
            run.task = await self._store.mark_running(run.task.id)
            run.started = True
            if pending := [f for f in run.after if not f.done()]:
                await asyncio.wait(pending)  # only when a predecessor's record was held up
            log.info("task_started", attempt=run.task.attempts)
            await self._notify(run.task)
            outcome = await self._execute_within_timeout(run.task)
        except asyncio.CancelledError:
            if run.stop is None:
                raise  # not ours (loop shutdown): the record stays running; recover() re-runs it
            return self._stop_outcome(run)
        except Exception as exc:
            if (engine := lost_engine(exc)) is not None and run.started:
                log.warning("task_engine_lost", engine=engine, error=repr(exc.__cause__))
                run.lost = True
                return Outcome(TaskState.INTERRUPTED, reason=engine_lost_reason(engine))
            if (down := outage_of(exc)) is not None:
                return self._outage(run.task, down, exc)
            log.exception("task_crashed")
            return Outcome(TaskState.FAILED, reason=crash_words(exc))
        return self._stop_outcome(run) if run.stop is not None else outcome

    def _outage(self, task: Task, down: str, exc: Exception) -> Outcome:
        outcome = outage_outcome(task, down, self._clock(), self._outages)
        log.warning(
            "task_outage",
            down=down,
            error=f"{type(exc).__name__}: {exc}",
            deferrals=task.deferrals,
            retry_at=outcome.retry_at,
            gave_up=not outcome.deferred,
        )
        return outcome

    async def _checked(self, task: Task) -> Precheck:
        if self._precheck is None:
            return PROCEED
        try:
            return await self._precheck(task)
        except Exception as exc:
            if (down := outage_of(exc)) is not None:
                return Precheck(deferral=self._outage(task, down, exc))
            # Anything else: the run itself will find out, and say it in words.
            log.warning("precheck_failed", error=f"{type(exc).__name__}: {exc}")
            return PROCEED

    async def _execute_within_timeout(self, task: Task) -> Outcome:
        limit = self._timeouts.get(task.spec.agent)
        timed_out = Outcome(TaskState.FAILED, reason=timeout_reason(limit or 0))
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                outcome = await self._execute(task)
        except TimeoutError:
            if deadline.expired():
                return timed_out
            raise  # the runner's own TimeoutError: a failure, worded by _attempt
        return timed_out if deadline.expired() else checked_outcome(outcome)

    def _stop_outcome(self, run: _Run) -> Outcome | None:
        if run.stop is StopReason.USER:
            return Outcome(TaskState.CANCELLED, reason=cancelled_reason(run.stopped_by))
        if run.started:
            return Outcome(TaskState.INTERRUPTED, reason=INTERRUPTED_REASON)
        return None  # drained before it started: it stays queued for the next start

    async def _complete(self, run: _Run, outcome: Outcome) -> None:
        """Record the outcome, then free the slot; runs shielded from the run's cancellation."""
        try:
            if outcome.deferred:
                await self._defer(run, outcome)
                return
            # The run is over: its slot takes the next task now. That task's first step
            # runs after this one, so its store calls queue behind the record below, often
            # in the same batch (one trip to the writer thread for both).
            self._free_slot(run)
            self._dispatch()
            written = self._store.finish_soon(run.task.id, outcome)
            run.task = await _while_busy(
                lambda: self._store.finish(run.task.id, outcome), what="finish", first=written
            )
            # A failure is worth an operator's look: `journalctl -p warning` shows it.
            emit = log.warning if outcome.state is TaskState.FAILED else log.info
            emit(
                "task_finished",
                task_id=run.task.id,
                agent=run.agent,
                state=str(outcome.state),
                reason=outcome.reason,
                cost_usd=outcome.cost_usd,
                duration_ms=outcome.duration_ms,
            )
            if run.lost:  # like recover(): the listeners see it queued again (or given up)
                task_id = run.task.id
                run.task = await _while_busy(
                    lambda: self._store.rerun_interrupted(task_id), what="re-queue"
                )
                run.deferred = run.task.state is TaskState.QUEUED  # back in the queue on release
            await self._notify(run.task)
        except Exception:
            log.exception("task_record_failed", task_id=run.task.id, state=str(outcome.state))
        finally:
            self._release(run)

    async def _defer(self, run: _Run, outcome: Outcome) -> None:
        if outcome.pause is not None:
            p = outcome.pause
            await self.pause(p.agent, p.until, p.reason, p.cause, limit_type=p.limit_type)
        run.task = await _while_busy(lambda: self._store.defer(run.task.id, outcome), what="defer")
        log.info(
            "task_deferred",
            task_id=run.task.id,
            agent=run.agent,
            until=outcome.retry_at,
            reason=outcome.reason,
            counted=outcome.uses_attempt,
        )
        await self._notify(run.task)
        run.deferred = True  # _release puts it back in the queue as it frees the slot

    async def _notify(self, task: Task) -> None:
        for listener in self._listeners:
            try:
                told = listener(task)
                if inspect.isawaitable(told):
                    await told
            except Exception:
                log.exception("on_change_failed", task_id=task.id, state=str(task.state))

    async def _get(self, task_id: int) -> Task:
        task = await self._store.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task


async def _while_busy(
    write: Callable[[], Awaitable[Task]], *, what: str, first: Awaitable[Task] | None = None
) -> Task:
    """`write()`, tried again while the store is locked by another process (bounded);
    `first`, when given, is the first try, already on its way."""
    waited, delay = 0.0, RECORD_RETRY_FIRST
    while True:
        try:
            if first is not None:
                attempt, first = first, None
                return await attempt
            return await write()
        except StoreError as exc:
            if not exc.busy or waited >= RECORD_RETRY_FOR:
                raise
            log.warning("task_record_busy", what=what, retry_in=delay)
        await asyncio.sleep(delay)  # the lock is another process's: nothing to wait on
        waited += delay
        delay = min(delay * 2, 5.0)


async def _wait_released(runs: Sequence[_Run], limit: float, skip: asyncio.Event | None) -> bool:
    """Wait until every run has freed its slot: True; False at the time limit or on `skip`."""
    pending: set[asyncio.Future[None]] = {r.released for r in runs if not r.released.done()}
    if not pending:
        return True
    skipping = asyncio.ensure_future(skip.wait()) if skip is not None else None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    try:
        while pending:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            watched = pending | ({skipping} if skipping is not None else set())
            done, _ = await asyncio.wait(
                watched, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if skipping is not None and skipping in done:
                return False
            pending -= done
        return True
    finally:
        if skipping is not None:
            skipping.cancel()
