"""intake/submit.py: granted triggers into the queue; `@agent stop|retry` on the thread's task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from claude_hooks.intake.submit import Submitter
from claude_hooks.store import Store
from claude_hooks.tasks import (
    ControlAction,
    ControlCommand,
    Outcome,
    Task,
    TaskKind,
    TaskSpec,
    TaskState,
    TriggerSource,
)

REPO = "acme/app"


class Queue:
    """The scheduler's calls, recorded; a stop holds until `release` is set."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[tuple[str, int | str, str | None]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def submit(self, spec: TaskSpec) -> tuple[Task, bool]:
        self.calls.append(("submit", spec.idempotency_key, spec.requested_by))
        return await self.store.enqueue(spec)

    async def cancel(self, task_id: int, by: str) -> Task:
        self.calls.append(("cancel", task_id, by))
        await self.release.wait()  # a running task takes up to the stop grace
        return await self.store.finish(task_id, Outcome(TaskState.CANCELLED))

    async def retry(self, task_id: int, by: str | None = None) -> Task:
        self.calls.append(("retry", task_id, by))
        return await self.store.requeue(task_id, "retry")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "tasks.sqlite3")
    yield opened
    await opened.close()


def spec(key: str, repo: str = REPO) -> TaskSpec:
    return TaskSpec(
        agent="dev",
        kind=TaskKind.MENTION,
        repo=repo,
        number=7,
        idempotency_key=key,
        requested_by="alice",
        request="@dev go",
        source=TriggerSource.POLL,
    )


def command(action: ControlAction, comment_id: int = 12) -> ControlCommand:
    return ControlCommand(
        agent="dev",
        action=action,
        repo=REPO,
        number=7,
        requested_by="bob",
        idempotency_key=f"{REPO}#7/comment/{comment_id}/dev/{action}",
        comment_id=comment_id,
    )


def served(repo: str) -> bool:
    return repo.startswith("acme/")


async def test_a_task_spec_is_queued_and_an_unserved_one_never_is(store: Store) -> None:
    queue = Queue(store)
    submitter = Submitter(queue, store, served)
    with capture_logs() as logs:
        await submitter.submit([spec("a"), spec("b", repo="mallory/evil")])
    assert queue.calls == [("submit", "a", "alice")]
    assert [e["reason"] for e in logs if e["event"] == "trigger_refused"] == [
        "repository_not_configured"
    ]


async def test_stop_cancels_the_threads_running_task_without_holding_up_intake(
    store: Store,
) -> None:
    queue = Queue(store)
    submitter = Submitter(queue, store, served)
    task, _ = await store.enqueue(spec("a"))
    await store.mark_running(task.id)
    queue.release.clear()
    async with asyncio.timeout(5):
        await submitter.submit([command(ControlAction.STOP)])  # returns while the stop waits
        assert (await store.get(task.id)).state is TaskState.RUNNING  # type: ignore[union-attr]
        queue.release.set()
        await submitter.close()  # waits for the stop under way
    assert queue.calls == [("cancel", task.id, "bob")]
    assert (await store.get(task.id)).state is TaskState.CANCELLED  # type: ignore[union-attr]


async def test_the_same_command_by_webhook_and_by_poll_acts_once(store: Store) -> None:
    queue = Queue(store)
    submitter = Submitter(queue, store, served)
    task, _ = await store.enqueue(spec("a"))
    await store.finish(task.id, Outcome(TaskState.FAILED, reason="boom"))
    await submitter.submit([command(ControlAction.RETRY)])
    await store.finish(task.id, Outcome(TaskState.FAILED, reason="boom again"))
    await submitter.submit([command(ControlAction.RETRY)])  # seen again: no second retry
    assert queue.calls == [("retry", task.id, "bob")]
    await submitter.submit([command(ControlAction.RETRY, comment_id=13)])  # a new comment
    assert queue.calls == [("retry", task.id, "bob")] * 2


async def test_a_command_that_does_not_fit_the_tasks_state_does_nothing(store: Store) -> None:
    queue = Queue(store)
    submitter = Submitter(queue, store, served)
    task, _ = await store.enqueue(spec("a"))
    await submitter.submit([command(ControlAction.RETRY, comment_id=1)])  # still queued
    await store.mark_running(task.id)
    await submitter.submit([command(ControlAction.RETRY, comment_id=3)])  # still running
    await store.finish(task.id, Outcome(TaskState.SUCCEEDED))
    await submitter.submit([command(ControlAction.STOP, comment_id=2)])  # already over
    await submitter.close()
    assert queue.calls == []


async def test_a_command_on_a_thread_without_a_task_is_logged(store: Store) -> None:
    queue = Queue(store)
    with capture_logs() as logs:
        await Submitter(queue, store, served).submit([command(ControlAction.STOP)])
    assert queue.calls == []
    assert [(e["event"], e["action"]) for e in logs if e["event"].startswith("control")] == [
        ("control_without_task", "stop")
    ]
