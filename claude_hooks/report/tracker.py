"""The tracking comment on Forgejo, and the order of each task's writes there.

One task, one tracking comment from the agent: queued (with position) → working
(a checklist of the latest steps, edited at most every few seconds) → finished,
failed, cancelled or interrupted. The comment carries a hidden marker with the
task id, so a re-run (after a restart) finds and edits it instead of posting a
duplicate.

`Reporter` is the thin I/O shell around report/render.py; `TaskReports` turns the
scheduler's state changes and the worker's steps into Reporter calls, in order per
task. Reporting never crashes a task: a failed edit is logged and the next edit
tries again. A final state is the one thing the thread must show: the store keeps it
in an outbox (`Task.final_reported`) until an edit lands, and `TaskReports.redeliver`
(at start-up, then every OUTBOX_INTERVAL) posts what is still undelivered. The
outputs that *are* the work (pull request, review, merge) are work/delivery.py's.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from claude_hooks.forgejo.client import ForgejoClient, ForgejoError
from claude_hooks.precedence import PRECEDENCE
from claude_hooks.report.render import (
    INTERRUPTED_REASON,
    MAX_STEPS,
    Phase,
    Redact,
    phase_of,
    posts_only_final,
    render_tracking,
)
from claude_hooks.store import Store
from claude_hooks.tasks import Outcome, Task, TaskState
from claude_hooks.text import find_marker

log: structlog.typing.FilteringBoundLogger = structlog.get_logger(__name__)


# ---------------------------------------------------------------- throttle


@dataclass
class ProgressThrottle:
    """Edit at most every `interval` seconds (the final edit does not wait for it)."""

    interval: float
    last: float | None = None

    def wait(self, now: float) -> float:
        """Seconds until the next edit is due."""
        return 0.0 if self.last is None else max(0.0, self.last + self.interval - now)

    def mark(self, now: float) -> None:
        self.last = now


# ---------------------------------------------------------------- I/O


@dataclass
class _Tracker:
    """What the reporter remembers about one task's tracking comment."""

    throttle: ProgressThrottle
    comment_id: int | None = None
    started_at: float | None = None
    steps: tuple[str, ...] = ()
    last_body: str | None = None
    flush: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Reporter:
    """Writes one task's progress and results to Forgejo as the task's agent."""

    def __init__(
        self,
        client_for: Callable[[str], ForgejoClient],
        *,
        redact: Redact,
        edit_interval: float = 5.0,
        final_attempts: int = 4,
        final_backoff: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client_for = client_for
        self._redact = redact
        self._edit_interval = edit_interval
        self._final_attempts = final_attempts
        self._final_backoff = final_backoff
        self._clock = clock
        self._wall = wall_clock
        self._trackers: dict[int, _Tracker] = {}
        # Tasks whose final text is posted: a late progress call must not overwrite it.
        self._finished: set[int] = set()

    async def close(self) -> None:
        """Drop progress edits still waiting for their throttle slot (at shutdown)."""
        flushes = [t.flush for t in self._trackers.values() if t.flush and not t.flush.done()]
        for flush in flushes:
            flush.cancel()
        await asyncio.gather(*flushes, return_exceptions=True)

    def _tracker(self, task: Task) -> _Tracker:
        tracker = self._trackers.get(task.id)
        if tracker is None:
            tracker = _Tracker(ProgressThrottle(self._edit_interval))
            tracker.comment_id = task.tracking_comment_id
            self._trackers[task.id] = tracker
        return tracker

    def _log(self, task: Task) -> structlog.typing.FilteringBoundLogger:
        return log.bind(task_id=task.id, agent=task.spec.agent, thread=task.spec.thread)

    # -- tracking comment

    async def acknowledge(self, task: Task, position: int | None = None) -> int | None:
        """👀 on the trigger and the queued tracking comment; its id, or None if none exists."""
        if task.spec.number is None or posts_only_final(task):
            return None
        self._finished.discard(task.id)
        if not task.deferred:  # a deferred task was acknowledged when it came in
            await self._react(task)
        tracker = self._tracker(task)
        body = self._render(task, Phase.QUEUED, position=position)
        async with tracker.lock:
            try:
                await self._write(task, tracker, body)
            except Exception as exc:  # reporting never fails the task
                self._tracking_failed(task, "queued", exc)
        return tracker.comment_id

    async def progress(self, task: Task, steps: Sequence[str]) -> None:
        """Show the latest steps; edits are throttled, a skipped one is flushed later."""
        if task.spec.number is None or task.id in self._finished:
            return
        tracker = self._tracker(task)
        tracker.steps = tuple(steps)
        if tracker.started_at is None:
            tracker.started_at = task.started_at or self._wall()
        wait = tracker.throttle.wait(self._clock())
        if wait <= 0:
            await self._flush_progress(task, tracker)
        elif tracker.flush is None or tracker.flush.done():
            tracker.flush = asyncio.create_task(self._flush_later(task, tracker, wait))

    async def _flush_later(self, task: Task, tracker: _Tracker, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._flush_progress(task, tracker)

    async def _flush_progress(self, task: Task, tracker: _Tracker) -> None:
        async with tracker.lock:
            started = (
                task if task.started_at is not None else task.with_(started_at=tracker.started_at)
            )
            body = self._render(started, Phase.WORKING, steps=tracker.steps)
            try:
                await self._write(task, tracker, body)
            except Exception as exc:  # reporting never fails the task
                # Not marked as done: the next progress call (or the final edit) retries.
                self._tracking_failed(task, "working", exc)
                return
            tracker.throttle.mark(self._clock())

    async def finish(self, task: Task, outcome: Outcome) -> bool:
        """The final edit: result, status, duration, turns, cost, links or the failure reason.

        True once the thread shows it (or the task has no thread, or Forgejo refuses it
        for good); False when it is worth trying again later."""
        if task.spec.number is None:
            return True
        tracker = self._trackers.pop(task.id, None) or self._tracker(task)
        self._finished.add(task.id)
        if tracker.flush is not None:
            # A flush cut off mid-request may have created the comment unseen; the
            # write below then finds it by its marker.
            tracker.flush.cancel()
        body = self._render(task, phase_of(outcome), outcome=outcome)
        # The client already retries one request for seconds; the final state is the
        # one thing people must see, so the whole find-or-edit is retried over a longer
        # window too (Forgejo restarting, a proxy briefly down).
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._final_attempts),
            wait=wait_exponential(multiplier=self._final_backoff, max=60),
            retry=retry_if_exception(lambda exc: isinstance(exc, ForgejoError) and exc.retryable),
            reraise=True,
        )
        try:
            async with tracker.lock:
                async for attempt in retrying:
                    with attempt:
                        await self._write(task, tracker, body)
        except Exception as exc:  # reporting never fails the task
            self._tracking_failed(task, "final", exc)
            # Forgejo refusing for good (the issue gone, no access) is no outage to wait
            # out: the outbox would try it every round for ever.
            return isinstance(exc, ForgejoError) and not exc.retryable
        return True

    def _tracking_failed(self, task: Task, phase: str, exc: Exception) -> None:
        # A ForgejoError already says what and where; anything else is a bug: keep its trace.
        self._log(task).warning(
            "tracking_comment_failed",
            phase=phase,
            error=str(exc),
            exc_info=False if isinstance(exc, ForgejoError) else exc,
        )

    def _render(self, task: Task, phase: Phase, **kwargs: object) -> str:
        return render_tracking(task, phase, now=self._wall(), redact=self._redact, **kwargs)  # type: ignore[arg-type]

    async def _write(self, task: Task, tracker: _Tracker, body: str) -> None:
        """Edit the task's comment (found by its marker after a restart), else create it."""
        if body == tracker.last_body:
            return
        client, spec = self._client_for(task.spec.agent), task.spec
        assert spec.number is not None
        if tracker.comment_id is None:
            tracker.comment_id = await self.find_tracking_comment(task)
        if tracker.comment_id is not None:
            try:
                await client.edit_comment(spec.repo, tracker.comment_id, body)
                tracker.last_body = body
                return
            except ForgejoError as exc:
                if exc.status != 404:
                    raise
                self._log(task).info("tracking_comment_gone", comment_id=tracker.comment_id)
        comment = await client.create_comment(spec.repo, spec.number, body)
        tracker.comment_id, tracker.last_body = comment.id, body

    async def find_tracking_comment(self, task: Task) -> int | None:
        """The agent's comment carrying this task's marker, if a run already posted one."""
        spec = task.spec
        if spec.number is None:
            return None
        comments = await self._client_for(spec.agent).list_comments(spec.repo, spec.number)
        for comment in comments:
            if (
                comment.user.login.lower() == spec.agent.lower()
                and find_marker(comment.body) == task.id
            ):
                return comment.id
        return None

    async def _react(self, task: Task) -> None:
        client, spec = self._client_for(task.spec.agent), task.spec
        try:
            if spec.comment_id is not None:
                await client.react_to_comment(spec.repo, spec.comment_id, "eyes")
            elif spec.number is not None:
                await client.react_to_issue(spec.repo, spec.number, "eyes")
        except ForgejoError as exc:
            self._log(task).warning("reaction_failed", error=str(exc))


# ---------------------------------------------------------------- per-task ordering


def outcome_of_task(task: Task) -> Outcome:
    """The outcome a stored task records, for the final report."""
    return Outcome(
        state=task.state,
        reason=task.error,
        result=task.result,
        session_id=task.session_id,
        cost_usd=task.cost_usd,
        num_turns=task.num_turns,
        duration_ms=task.duration_ms,
        links=task.links,
    )


REPORTS_CLOSE_WITHIN = 10.0  # seconds the report chains may finish at shutdown
OUTBOX_INTERVAL = 30.0  # seconds between two looks for final reports not yet delivered


class TaskReports:
    """Each task's Forgejo writes, in order, off the scheduler's path.

    The scheduler waits for on_change before it dispatches the next task; a
    Forgejo round trip there would slow every start. So each change queues its
    report on the task's own chain and returns at once; `close` lets the chains
    finish (bounded) at shutdown.
    """

    def __init__(
        self, reporter: Reporter, store: Store, scheduler_position: Callable[[int], int | None]
    ) -> None:
        self._reporter = reporter
        self._store = store
        self._position = scheduler_position
        self._chains: dict[int, asyncio.Task[None]] = {}
        self._outbox: asyncio.Task[None] | None = None

    def _chain(self, task_id: int, make: Callable[[], Awaitable[None]]) -> None:
        previous = self._chains.get(task_id)

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            try:
                await make()
            except Exception:
                log.exception("report_failed", task_id=task_id)

        chain = asyncio.create_task(run(), name=f"report-{task_id}")
        self._chains[task_id] = chain
        chain.add_done_callback(
            lambda t: self._chains.get(task_id) is t and self._chains.pop(task_id)
        )

    async def on_change(self, task: Task) -> None:
        if task.spec.number is None:
            return
        if task.state is TaskState.QUEUED:
            self._chain(task.id, lambda: self._acknowledge(task))
        elif task.state.is_final or task.state is TaskState.INTERRUPTED:
            outcome = outcome_of_task(task)
            if task.state is TaskState.INTERRUPTED and not outcome.reason:
                outcome = replace(outcome, reason=INTERRUPTED_REASON)
            self._chain(task.id, lambda: self._finish(task, outcome))

    async def _finish(self, task: Task, outcome: Outcome) -> None:
        if await self._reporter.finish(task, outcome) and task.state.is_final:
            await self._store.mark_reported(task.id)

    async def redeliver(self) -> int:
        """Post the final states the threads do not show yet (a Forgejo outage swallowed
        them, or the daemon died first); how many were queued for delivery."""
        waiting = [t for t in await self._store.unreported() if t.id not in self._chains]
        for task in waiting:
            log.info("final_report_redelivered", task_id=task.id, state=str(task.state))
            self._chain(task.id, functools.partial(self._finish, task, outcome_of_task(task)))
        return len(waiting)

    def start_outbox(self, interval: float = OUTBOX_INTERVAL) -> None:
        """Look for undelivered final reports now and every `interval` seconds until close."""
        self._outbox = asyncio.create_task(self._run_outbox(interval), name="report-outbox")

    async def _run_outbox(self, interval: float) -> None:
        while True:
            try:
                await self.redeliver()
            except Exception as exc:  # the store busy: the next round tries again
                log.warning("report_outbox_failed", error=str(exc))
            await asyncio.sleep(interval)

    def progress(self, task: Task, steps: tuple[str, ...]) -> None:
        if task.spec.number is not None:
            self._chain(task.id, lambda: self._reporter.progress(task, steps))

    def checklist(self, task: Task) -> Callable[[str], None]:
        """One run's `step(text)`: a line more on its checklist, shown (throttled) at once."""
        steps: list[str] = []

        def step(text: str) -> None:
            steps.append(text)
            del steps[:-MAX_STEPS]
            self.progress(task, tuple(steps))

        return step

    async def _acknowledge(self, task: Task) -> None:
        with PRECEDENCE.first():  # the 👀 and the tracking comment a person waits for
            comment_id = await self._reporter.acknowledge(task, self._position(task.id))
        if comment_id is not None and comment_id != task.tracking_comment_id:
            await self._store.set_tracking_comment(task.id, comment_id)

    async def close(self, limit: float = REPORTS_CLOSE_WITHIN) -> None:
        """Let the chains finish for `limit` seconds, then cancel the rest: after this no
        chain uses the store or a Forgejo client, which close next."""
        if self._outbox is not None:
            self._outbox.cancel()
            await asyncio.gather(self._outbox, return_exceptions=True)
        pending = list(self._chains.values())
        if pending:
            _, left = await asyncio.wait(pending, timeout=limit)
            if left:
                cut = sorted(task_id for task_id, chain in self._chains.items() if chain in left)
                log.warning("reports_cut_short", tasks=cut, within=limit)
                for chain in left:
                    chain.cancel()
                await asyncio.wait(left)
        await self._reporter.close()
