"""What counts as an outage, how long a task waits it out, and the words the thread reads.

Pure functions (claude_hooks/work/outages.py): no network, no Docker, no store.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp
import pytest
from aiodocker.exceptions import DockerError

from claude_hooks.forgejo.client import ForgejoError, RepositoryNotServed
from claude_hooks.runner.containers import ContainerError, ContainerStopped
from claude_hooks.runner.workspace import WorkspaceError
from claude_hooks.store import StoreError
from claude_hooks.store.db import Database
from claude_hooks.tasks import Task, TaskState
from claude_hooks.work.outages import (
    CONTAINER_STOPPED,
    DOCKER_DOWN,
    FORGEJO_DOWN,
    STORE_BUSY,
    OutagePolicy,
    crash_words,
    delivery_words,
    engine_failed,
    outage_of,
    outage_outcome,
)
from tests.test_store import make_spec

HOST_PATH = "/srv/claude-hooks/state"


def wrapped(outer: Exception, inner: Exception) -> Exception:
    """`outer` raised `from None` while handling `inner`, as ContainerError does."""
    try:
        try:
            raise inner
        except Exception:
            raise outer from None
    except Exception as exc:
        return exc


def store_error(message: str) -> StoreError:
    try:
        Database.run(Path(HOST_PATH), "start task 1", _raise, sqlite3.OperationalError(message))
    except StoreError as exc:
        return exc
    raise AssertionError("Database.run did not raise")


def _raise(exc: Exception) -> None:
    raise exc


@pytest.mark.parametrize(
    ("exc", "down"),
    [
        (ForgejoError("GET", "/repos/acme/app", 500, "boom"), FORGEJO_DOWN),
        (ForgejoError("GET", "/repos/acme/app", 502, "bad gateway"), FORGEJO_DOWN),
        (ForgejoError("GET", "/repos/acme/app", 429, "slow down"), FORGEJO_DOWN),
        (ForgejoError("GET", "/repos/acme/app", None, "TimeoutError: x"), FORGEJO_DOWN),
        (ForgejoError("GET", "/repos/acme/app", 404, "not found"), None),
        (ForgejoError("GET", "/repos/acme/app", 403, "forbidden"), None),
        (RepositoryNotServed("evil/repo"), None),
        (DockerError(900, f"Cannot connect to Docker Engine via unix://{HOST_PATH}"), DOCKER_DOWN),
        (DockerError(500, "container is not running"), None),
        (DockerError(404, "no such image"), None),
        (wrapped(ContainerError("cannot create"), DockerError(900, "no engine")), DOCKER_DOWN),
        (wrapped(ContainerError("image missing"), DockerError(404, "missing")), None),
        (aiohttp.ServerDisconnectedError(), DOCKER_DOWN),
        (ContainerStopped("2ff57c0278c3"), CONTAINER_STOPPED),  # its next try starts it again
        (store_error("database is locked"), STORE_BUSY),
        (store_error("attempt to write a readonly database"), None),
        (RuntimeError("a bug"), None),
        (ConnectionError("raw, from nowhere known"), None),
    ],
)
def test_an_exception_says_what_is_down_or_nothing(exc: Exception, down: str | None) -> None:
    assert outage_of(exc) == down


@pytest.mark.parametrize(
    ("exc", "failed"),
    [
        (ContainerStopped("2ff57c0278c3"), True),
        (DockerError(900, "Cannot connect to the Docker daemon"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (DockerError(500, "Container 2ff57c is not running: Exited (143)"), True),
        (wrapped(ContainerError("cannot start"), DockerError(500, "failed to update store")), True),
        (DockerError(404, "No such image: agent:gone"), False),
        (DockerError(400, "invalid mount config"), False),
        (ForgejoError("GET", "/repos/acme/app", 502, "bad gateway"), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_an_engine_failed_a_run_when_it_is_gone_stopped_the_container_or_answers_5xx(
    exc: Exception, failed: bool
) -> None:
    """What makes a pool try another engine (the 5xx only there: alone, an agent's task
    fails on it in words, as before)."""
    assert engine_failed(exc) is failed


def task(deferrals: int = 0, since: float | None = None) -> Task:
    return Task(1, make_spec(1), TaskState.RUNNING, deferrals=deferrals, deferred_since=since)


def test_an_outage_defers_with_a_doubling_backoff_up_to_its_cap() -> None:
    policy = OutagePolicy(attempts=20, within=10_000, backoff=10, max_backoff=100)
    waits = [outage_outcome(task(n, 0.0), FORGEJO_DOWN, 50.0, policy) for n in range(6)]
    assert all(w.state is TaskState.QUEUED and w.uses_attempt for w in waits)
    assert [w.retry_at - 50.0 for w in waits if w.retry_at] == [10, 20, 40, 80, 100, 100]
    assert waits[0].reason == "Forgejo is unreachable, will retry (try 1 of 20)"


def test_an_outage_fails_the_task_after_its_attempts() -> None:
    policy = OutagePolicy(attempts=3, within=10_000, backoff=1)
    assert outage_outcome(task(2, 0.0), DOCKER_DOWN, 5.0, policy).deferred
    gave_up = outage_outcome(task(3, 0.0), DOCKER_DOWN, 5.0, policy)
    assert gave_up.state is TaskState.FAILED
    assert gave_up.reason == "gave up after 3 retries over 5 s: Docker is unreachable"


def test_an_outage_fails_the_task_after_its_total_time_whatever_the_count() -> None:
    policy = OutagePolicy(attempts=100, within=600, backoff=1)
    assert outage_outcome(task(1, 1000.0), STORE_BUSY, 1599.0, policy).deferred
    gave_up = outage_outcome(task(1, 1000.0), STORE_BUSY, 1600.0, policy)
    assert gave_up.state is TaskState.FAILED
    assert gave_up.reason == "gave up after 1 retries over 10 min 0 s: the task store is busy"


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (ContainerError(f"agent dev: mount {HOST_PATH} refused"), "the agent's container"),
        (WorkspaceError(f"preparing {HOST_PATH} failed (exit 128): fatal"), "working tree"),
        (ForgejoError("POST", "/repos/acme/app/pulls", 422, "exists"), "HTTP 422"),
        (DockerError(500, f"bind source path does not exist: {HOST_PATH}"), "Docker refused"),
        (store_error("disk I/O error"), "task store"),
        (RuntimeError(f"{HOST_PATH}: KeyError"), "an internal error"),
    ],
)
def test_a_crash_is_worded_without_its_text_or_class(exc: Exception, words: str) -> None:
    reason = crash_words(exc)
    assert words in reason and "journal" in reason
    assert HOST_PATH not in reason and type(exc).__name__ not in reason


def test_a_failed_delivery_is_worded_without_its_text() -> None:
    push = WorkspaceError(f"pushing dev/7 failed (exit 1): {HOST_PATH}")
    assert delivery_words(push) == "delivering failed: pushing the branch failed"
    refused = ForgejoError("POST", "/repos/acme/app/pulls", 409, f"at {HOST_PATH}")
    assert delivery_words(refused) == "delivering failed: Forgejo refused it (HTTP 409)"
