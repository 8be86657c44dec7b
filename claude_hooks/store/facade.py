"""The task store's async facade: what intake, work, the API and the daemon call.

Durable state lives in one SQLite file: the task table, each task's append-only
event log, and the poller's cursors. This module holds no SQL (db.py does); it
turns each call into one job on the store's writer thread and wakes readers
waiting for a task's new events (the API's SSE stream, `claude-hooks logs -f`).
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from claude_hooks.precedence import PRECEDENCE, Precedence
from claude_hooks.redact import redactor
from claude_hooks.store.db import DAY, RecoveryReport, Spend, StoredWebhook
from claude_hooks.store.events import EventCap, EventSink, NewEvent
from claude_hooks.store.schema import SCHEMA_VERSION
from claude_hooks.store.writer import WriterThread
from claude_hooks.tasks import AgentPause, Outcome, Task, TaskEvent, TaskSpec, TaskState

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Store:
    """The task store as the daemon uses it: async, one job per call on the writer thread."""

    def __init__(self, writer: WriterThread) -> None:
        self.path = writer.path
        self._writer = writer
        self._db = writer.db  # the synchronous side; only ever called through _call
        self._sinks: set[EventSink] = set()
        self._signals: weakref.WeakValueDictionary[int, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        event_cap: EventCap | None = None,
        clock: Callable[[], float] = time.time,
        redact: Callable[[str], str] = redactor,
        precedence: Precedence = PRECEDENCE,
    ) -> Store:
        """`redact` hides secrets in every text before it is stored (the shared redactor);
        the event lane waits while `precedence` is held."""
        path = Path(path)
        writer = await WriterThread.open(path, event_cap or EventCap(), clock, redact, precedence)
        log.info("store_opened", path=str(path), schema_version=SCHEMA_VERSION)
        return cls(writer)

    async def close(self) -> None:
        """Flush open event sinks, then close the connection and the writer thread."""
        if self._writer.closed:
            return
        for sink in list(self._sinks):
            await sink.close()
        await self._writer.close()

    def jobs_waiting(self) -> bool:
        """Whether calls wait for the writer thread to begin them."""
        return self._writer.jobs_waiting()

    @property
    def transactions(self) -> int:
        """Transactions begun so far (tests and benchmarks measure batching with it)."""
        return self._db.transactions

    async def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        return await self._writer.submit(what, fn, *args)

    def _notify(self, task_id: int) -> None:
        signal = self._signals.pop(task_id, None)
        if signal is not None:
            signal.set()

    # --- tasks ---

    async def enqueue(self, spec: TaskSpec) -> tuple[Task, bool]:
        """Store a new queued task; the same idempotency key again returns the first one."""
        task, created = await self._call("enqueue", self._db.enqueue, spec)
        if created:
            self._notify(task.id)
        return task, created

    async def get(self, task_id: int) -> Task | None:
        return await self._call(f"read task {task_id}", self._db.get, task_id)

    async def task_hop(self, task_id: int) -> int | None:
        """The agent-to-agent hop stored with a task (None: no such task here)."""
        task = await self.get(task_id)
        return task.spec.hop if task is not None else None

    async def list_tasks(
        self,
        *,
        state: TaskState | None = None,
        agent: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[Task]:
        """Newest first; pass the last id of a page as `before_id` for the next page."""
        return await self._call("list tasks", self._db.list_tasks, state, agent, limit, before_id)

    async def queued(self) -> list[Task]:
        """Queued tasks, oldest first."""
        return await self._call("list queued tasks", self._db.queued)

    async def mark_running(self, task_id: int) -> Task:
        return await self._changed(f"start task {task_id}", self._db.mark_running, task_id)

    async def finish(self, task_id: int, outcome: Outcome) -> Task:
        """Record how a run ended (a final state, or interrupted by shutdown)."""
        return await self._changed(f"finish task {task_id}", self._db.finish, task_id, outcome)

    def finish_soon(self, task_id: int, outcome: Outcome) -> asyncio.Future[Task]:
        """`finish`, in the writer's job order from now: any store call made after this
        returns runs after the record is written, and so reads it. The future ends when
        the record is durable."""
        what = f"finish task {task_id}"
        written = self._writer.submit(what, self._db.finish, task_id, outcome)
        written.add_done_callback(self._notify_written)
        return written

    def _notify_written(self, written: asyncio.Future[Task]) -> None:
        if not written.cancelled() and written.exception() is None:
            self._notify(written.result().id)

    async def requeue(self, task_id: int, reason: str) -> Task:
        return await self._changed(f"re-queue task {task_id}", self._db.requeue, task_id, reason)

    async def defer(self, task_id: int, outcome: Outcome) -> Task:
        """Back to the queue until `outcome.retry_at`, keeping its session."""
        return await self._changed(f"defer task {task_id}", self._db.defer, task_id, outcome)

    async def set_pause(self, pause: AgentPause) -> None:
        await self._call(f"pause agent {pause.agent}", self._db.set_pause, pause)

    async def clear_pause(self, agent: str) -> bool:
        return await self._call(f"resume agent {agent}", self._db.clear_pause, agent)

    async def release_held(self, agent: str, until: float) -> list[Task]:
        what = f"release the tasks of agent {agent}"
        return await self._call(what, self._db.release_held, agent, until)

    async def pauses(self) -> list[AgentPause]:
        return await self._call("list paused agents", self._db.pauses)

    async def update_spec(self, task_id: int, spec: TaskSpec) -> Task:
        return await self._changed(f"update task {task_id}", self._db.update_spec, task_id, spec)

    async def _changed(self, what: str, fn: Callable[..., Task], *args: Any) -> Task:
        task = await self._call(what, fn, *args)
        self._notify(task.id)
        return task

    async def recover(self) -> RecoveryReport:
        """Deal with tasks a crashed or drained process left running or interrupted."""
        report = await self._call("recover interrupted tasks", self._db.recover)
        for task in report.requeued + report.failed:
            self._notify(task.id)
        return report

    async def last_session(self, agent: str, repo: str, number: int | None) -> str | None:
        """The newest Claude session of `agent` on this thread, for --resume."""
        return await self._call("find last session", self._db.last_session, agent, repo, number)

    async def set_engine(self, task_id: int, engine: str) -> None:
        await self._call(
            f"record the engine of task {task_id}", self._db.set_engine, task_id, engine
        )

    async def thread_engine(self, agent: str, repo: str, number: int | None) -> str | None:
        """The pool engine holding `agent`'s working tree of this thread, if any."""
        what = "find the engine of a thread"
        return await self._call(what, self._db.thread_engine, agent, repo, number)

    async def rerun_interrupted(self, task_id: int) -> Task:
        """An interrupted task queued again (or failed, interrupted too often)."""
        return await self._changed(f"re-queue task {task_id}", self._db.rerun_interrupted, task_id)

    async def latest_on_thread(self, agent: str, repo: str, number: int) -> Task | None:
        what = "find latest task on thread"
        return await self._call(what, self._db.latest_on_thread, agent, repo, number)

    async def set_tracking_comment(self, task_id: int, comment_id: int) -> None:
        what = f"set tracking comment of task {task_id}"
        await self._call(what, self._db.set_tracking_comment, task_id, comment_id)

    async def spend(self, agent: str, window: float = DAY) -> Spend:
        """The cost of `agent`'s tasks finished in the last `window` seconds (24 h)."""
        return await self._call(f"sum the spend of {agent}", self._db.spend, agent, window)

    async def mark_reported(self, task_id: int) -> None:
        await self._call(f"mark task {task_id} reported", self._db.mark_reported, task_id)

    async def unreported(self, limit: int = 100) -> list[Task]:
        """Ended tasks whose final state is not yet on their thread, oldest first."""
        return await self._call("list unreported tasks", self._db.unreported, limit)

    async def writable(self, busy_timeout: float = 0.5) -> None:
        """Raise StoreError unless the store takes a write now (BEGIN IMMEDIATE; ROLLBACK)."""
        ms = int(busy_timeout * 1000)
        await self._call("try a write", self._db.try_write, ms)

    async def counts(self) -> dict[tuple[str, TaskState], int]:
        return await self._call("count tasks", self._db.counts)

    async def get_cursor(self, name: str) -> str | None:
        return await self._call(f"read cursor {name}", self._db.get_cursor, name)

    async def set_cursor(self, name: str, value: str) -> None:
        await self._call(f"write cursor {name}", self._db.set_cursor, name, value)

    async def add_webhook(self, event: str, payload: str, delivery: str | None) -> int | None:
        return await self._call(
            "keep a webhook delivery", self._db.add_webhook, event, payload, delivery
        )

    async def pending_webhooks(self) -> list[StoredWebhook]:
        return await self._call("read webhook deliveries", self._db.pending_webhooks)

    async def webhook_attempted(self, webhook_id: int) -> None:
        await self._call(f"count webhook {webhook_id}", self._db.webhook_attempted, webhook_id)

    async def webhook_decided(self, webhook_id: int) -> None:
        await self._call(f"drop webhook {webhook_id}", self._db.webhook_decided, webhook_id)

    async def integrity_check(self) -> bool:
        problems = await self._call("integrity check", self._db.integrity_check)
        if problems != ["ok"]:
            log.error("store_integrity_check_failed", path=str(self.path), problems=problems[:10])
        return problems == ["ok"]

    # --- events ---

    def event_sink(self, task_id: int, *, interval: float = 0.1, max_batch: int = 500) -> EventSink:
        """A batching sink for one task's events; the store flushes it on close."""
        sink = EventSink(
            task_id,
            write=functools.partial(self._write_events, task_id),
            stored=functools.partial(self._notify, task_id),
            closed=self._sinks.discard,
            store_path=self.path,
            interval=interval,
            max_batch=max_batch,
            detail_limit=self._db.cap.max_events + 1,
        )
        self._sinks.add(sink)
        return sink

    def _write_events(self, task_id: int, batch: list[NewEvent]) -> asyncio.Future[None]:
        return self._writer.submit_events(task_id, batch)

    async def events(self, task_id: int, after_seq: int = 0, limit: int = 1000) -> list[TaskEvent]:
        what = f"read events of task {task_id}"
        return await self._call(what, self._db.events, task_id, after_seq, limit)

    async def wait_for_events(
        self, task_id: int, after_seq: int, max_wait: float, limit: int = 1000
    ) -> list[TaskEvent]:
        """Events after `after_seq`, waiting up to `max_wait` seconds for some to be stored."""
        signal = self._signals.get(task_id)
        if signal is None:
            signal = self._signals[task_id] = asyncio.Event()
        events = await self.events(task_id, after_seq, limit)
        if events:
            return events
        try:
            async with asyncio.timeout(max_wait):
                await signal.wait()
        except TimeoutError:
            return []
        return await self.events(task_id, after_seq, limit)
