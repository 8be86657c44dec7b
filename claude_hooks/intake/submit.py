"""Where granted triggers go: a TaskSpec is queued, `@agent stop|retry` acts on the thread.

A control command names no task: it stops or retries the agent's latest task on the
thread it was posted on. Seen by a webhook and again by polling it is still one
command (its idempotency key is remembered in the store), and it never holds up the
intake: stopping a running task takes up to the stop grace, so that waits apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

import structlog

from claude_hooks.tasks import ControlAction, ControlCommand, Task, TaskSpec, TaskState, Trigger

log = structlog.get_logger(__name__)

BUSY = (TaskState.QUEUED, TaskState.RUNNING)
# Seconds `close` waits for stops under way: the scheduler's own drain ends the runs.
STOPS_CLOSE_WITHIN = 5.0


class TaskQueue(Protocol):
    """The scheduler calls a trigger ends in (claude_hooks.work.scheduler.Scheduler)."""

    async def submit(self, spec: TaskSpec) -> tuple[Task, bool]: ...
    async def cancel(self, task_id: int, by: str) -> Task: ...
    async def retry(self, task_id: int, by: str | None = None) -> Task: ...


class ControlRecords(Protocol):
    """What a control command looks up and remembers (claude_hooks.store.Store)."""

    async def get_cursor(self, name: str) -> str | None: ...
    async def set_cursor(self, name: str, value: str) -> None: ...
    async def latest_on_thread(self, agent: str, repo: str, number: int) -> Task | None: ...


class Submitter:
    """Stores what the Intake granted; `close` waits (bounded) for stops still under way."""

    def __init__(
        self,
        queue: TaskQueue,
        records: ControlRecords,
        serves: Callable[[str], bool],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._records = records
        self._serves = serves
        self._clock = clock
        self._stopping: set[asyncio.Task[object]] = set()

    async def submit(self, triggers: Sequence[Trigger]) -> None:
        """Durable when this returns: the caller marks its source read after it."""
        for trigger in triggers:
            if not self._serves(trigger.repo):  # the Intake checked; never store it anyway
                log.warning(
                    "trigger_refused", reason="repository_not_configured", repo=trigger.repo
                )
                continue
            if isinstance(trigger, ControlCommand):
                await self.control(trigger)
            else:
                await self._queue.submit(trigger)

    async def control(self, command: ControlCommand) -> None:
        """Stop a queued or running task, or retry an ended one; anything else is moot."""
        seen = f"control:{command.idempotency_key}"
        if await self._records.get_cursor(seen):
            return  # the same command seen by webhook and by poll
        await self._records.set_cursor(seen, str(self._clock()))
        task = await self._records.latest_on_thread(command.agent, command.repo, command.number)
        if task is None:
            log.info("control_without_task", action=str(command.action), agent=command.agent)
            return
        if command.action is ControlAction.STOP and task.state in BUSY:
            self._in_background(self._queue.cancel(task.id, by=command.requested_by))
        elif command.action is ControlAction.RETRY and task.state not in BUSY:
            await self._queue.retry(task.id, by=command.requested_by)

    def _in_background(self, stop: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(stop)
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        """Stops still waiting for their run get a moment, then are cancelled."""
        if not self._stopping:
            return
        _, left = await asyncio.wait(self._stopping, timeout=STOPS_CLOSE_WITHIN)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)
