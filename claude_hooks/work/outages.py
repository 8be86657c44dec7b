"""What is down, and what a task does about it: pure decisions, no I/O.

An infrastructure failure (Forgejo not answering or answering 5xx, the Docker engine
unreachable, the task store locked by another process) is not the task's fault: the
scheduler puts the task back in the queue with an exponential backoff instead of
failing it, until the task has waited `OutagePolicy.attempts` times or
`OutagePolicy.within` seconds; then it fails, saying in words what stayed down.

A container stopped under a run (from outside, or by its engine shutting down) is such
an outage too: the next try starts it again.

A task of an engine pool whose engine fails it (`engine_failed`: it stops answering, the
container stops under the run, or it answers 5xx) is not waited out: the worker raises
`EngineLost`, the scheduler records the run interrupted and queues it again at once
(placement picks an engine that is up), once, as a restart does.

Every other exception a run raises is a failure, worded by `crash_words`: the
exception's text (paths of the host, addresses, Docker's own messages) stays in the
journal and never reaches a comment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
from aiodocker.exceptions import DockerError

from claude_hooks.forgejo.client import ForgejoError, RepositoryNotServed
from claude_hooks.report.render import (
    crashed_reason,
    delivery_failed_reason,
    gave_up_reason,
    outage_reason,
)
from claude_hooks.runner.containers import ContainerError, ContainerStopped, ForeignContainer
from claude_hooks.runner.placement import EnginesDown
from claude_hooks.runner.workspace import WorkspaceError
from claude_hooks.store import StoreError
from claude_hooks.tasks import Outcome, Task, TaskState

DOCKER_UNREACHABLE = 900  # aiodocker's status for "cannot connect to the Docker engine"

FORGEJO_DOWN = "Forgejo is unreachable"
DOCKER_DOWN = "Docker is unreachable"
CONTAINER_STOPPED = "the agent's container stopped during the run"
STORE_BUSY = "the task store is busy"


@dataclass(frozen=True)
class OutagePolicy:
    """How long a task waits out an outage: exponential backoff, bounded twice."""

    attempts: int = 8  # deferrals for outages before the task fails
    within: float = 3600.0  # seconds from the first deferral after which it fails
    backoff: float = 30.0  # seconds before the first retry; doubles each time
    max_backoff: float = 600.0  # no single wait is longer

    def delay(self, deferrals: int) -> float:
        """Seconds to wait after `deferrals` earlier deferrals."""
        return float(min(self.max_backoff, self.backoff * 2 ** min(deferrals, 32)))


class EngineLost(Exception):
    """A task's pool engine stopped answering while the task held it (raised from the
    Docker error that showed it)."""

    def __init__(self, engine: str) -> None:
        super().__init__(f"Docker engine {engine} stopped answering")
        self.engine = engine


def lost_engine(exc: BaseException) -> str | None:
    """The pool engine a run lost, when `exc` says so; None otherwise."""
    return exc.engine if isinstance(exc, EngineLost) else None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what caused it (a wrapper raised `from None` still has one)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def outage_of(exc: BaseException) -> str | None:
    """What is down, in words, when `exc` is an infrastructure failure; None otherwise."""
    for error in _chain(exc):
        if isinstance(error, RepositoryNotServed):
            return None
        if isinstance(error, EnginesDown):
            return DOCKER_DOWN
        if isinstance(error, ContainerStopped):
            return CONTAINER_STOPPED
        if isinstance(error, ForgejoError):
            return FORGEJO_DOWN if error.retryable else None
        if isinstance(error, DockerError):
            return DOCKER_DOWN if error.status == DOCKER_UNREACHABLE else None
        if isinstance(error, StoreError):
            return STORE_BUSY if error.busy else None
        # Outside the Forgejo client (which wraps its own), an aiohttp connection error
        # comes from the Docker engine's socket: the exec stream of a run cut off.
        if isinstance(error, aiohttp.ClientConnectionError):
            return DOCKER_DOWN
    return None


def engine_failed(exc: BaseException) -> bool:
    """Whether `exc` says the engine failed the run rather than the run itself: it is
    unreachable, the container stopped under the run, or the engine answered 5xx. (A
    dockerd on its way down stops its containers and still answers on the connections it
    holds, "container is not running" or "failed to update store": a pool tries another
    engine on those, which it would not on a refusal of the request itself, a 4xx.)"""
    if outage_of(exc) in (DOCKER_DOWN, CONTAINER_STOPPED):
        return True
    return any(
        isinstance(error, DockerError) and 500 <= error.status < DOCKER_UNREACHABLE
        for error in _chain(exc)
    )


def outage_outcome(task: Task, what: str, now: float, policy: OutagePolicy) -> Outcome:
    """Back to the queue after the next backoff; failed once the budget is spent."""
    tries = task.deferrals + 1  # this one included
    since = task.deferred_since if task.deferred_since is not None else now
    if tries > policy.attempts or now - since >= policy.within:
        return Outcome(TaskState.FAILED, reason=gave_up_reason(what, task.deferrals, now - since))
    retry_at = now + policy.delay(task.deferrals)
    return Outcome(
        TaskState.QUEUED,
        reason=outage_reason(what, tries, policy.attempts),
        retry_at=retry_at,
        uses_attempt=True,
    )


def crash_words(exc: BaseException) -> str:
    """Why a run failed, for the thread, when it raised something other than an outage."""
    for error in _chain(exc):
        if isinstance(error, ForeignContainer):  # the operator's to sort out: say which
            return crashed_reason(
                f"container {error.container} belongs to another claude-hooks instance"
            )
        if isinstance(error, ContainerError):
            return crashed_reason("the agent's container could not be used")
        if isinstance(error, WorkspaceError):
            return crashed_reason("preparing the working tree failed")
        if isinstance(error, ForgejoError) and error.status is not None:
            return crashed_reason(f"Forgejo refused a request (HTTP {error.status})")
        if isinstance(error, DockerError):
            return crashed_reason(f"Docker refused a request ({error.status})")
        if isinstance(error, StoreError):
            return crashed_reason("the task store could not be written")
    return crashed_reason("an internal error")


def delivery_words(exc: BaseException) -> str:
    """Why delivering the work (push, pull request, review, merge) failed, in words."""
    if isinstance(exc, WorkspaceError):
        return delivery_failed_reason("pushing the branch failed")
    if isinstance(exc, ForgejoError) and exc.status is not None:
        return delivery_failed_reason(f"Forgejo refused it (HTTP {exc.status})")
    return delivery_failed_reason("Forgejo did not take it")
