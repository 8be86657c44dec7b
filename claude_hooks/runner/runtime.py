"""Where an agent's task runs: the seam between the task pipeline and Docker.

`DockerRuntime` is the product: the agent's own container, a workspace in it, and
`claude -p` as a `docker exec`. The demo has a second runtime for machines
without a Docker engine (claude_hooks/demo/local_runtime.py); nothing else does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar, cast

import structlog
from aiodocker.containers import DockerContainer

from claude_hooks.config import AgentConfig
from claude_hooks.runner import workspace
from claude_hooks.runner.containers import ContainerManager
from claude_hooks.runner.engines import EnginePool
from claude_hooks.runner.execution import ClaudeExec, ExecResult, Room, run_claude
from claude_hooks.runner.stream import StreamEvent

log = structlog.get_logger(__name__)

A = TypeVar("A")
B = TypeVar("B")


async def all_of(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both results, the two run side by side. Unlike a bare gather, neither is left
    running unwatched when the other fails: both end first, then the first argument's
    error (else the second's) is raised as it is, so callers catch what they always did."""
    one, two = await asyncio.gather(first, second, return_exceptions=True)
    for outcome in (one, two):
        if isinstance(outcome, BaseException):
            raise outcome
    return cast(A, one), cast(B, two)


class AgentRuntime(Protocol):
    async def ready(self, agent: AgentConfig) -> None:
        """Make the agent's container ready for a task (before its working tree is known:
        the worker reads the thread meanwhile); `prepare` then goes on from there."""
        ...

    async def prepare(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> str:
        """Make the agent ready and the task's working tree exist; its HEAD sha or ""."""
        ...

    async def run(
        self,
        agent: AgentConfig,
        claude: ClaudeExec,
        on_event: Callable[[StreamEvent], None],
        room: Room | None = None,
    ) -> ExecResult:
        """Run claude to its end; when cancelled, stop every process of the task first.
        `room` is awaited between output frames (see execution.Room)."""
        ...

    async def publish(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> workspace.Published:
        """Push the dev branch if Claude committed to it."""
        ...

    async def diff_since(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str], since: str
    ) -> workspace.DiffSince:
        """What changed in the prepared tree since the commit `since` (a re-review)."""
        ...


# A container a task's prepare exec just ran in is not inspected again for the claude exec
# that follows it (one engine round trip less before Claude); older than this, it is.
REUSE_FOR = 5.0


class DockerRuntime:
    """Each agent in its own long-lived container; each task one `docker exec`.

    With an EnginePool, each agent's container is on the engine its docker_host names;
    the container object carries its engine's client, so exec and stop go there too. An
    agent with an engine pool comes here placed (Lease.agent: narrowed to the engine
    chosen for the task), so every call of one task goes to that engine.
    """

    def __init__(
        self,
        containers: ContainerManager | EnginePool,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.containers = containers
        self._clock = clock
        # (agent, engine): the container a prepare just ran in, and when
        self._prepared: dict[tuple[str, str], tuple[DockerContainer, float]] = {}
        # (agent, engine): the container `ready` just made current, and when
        self._readied: dict[tuple[str, str], tuple[DockerContainer, float]] = {}
        # container id: the look at the login's copy after its last run, while it lasts
        self._reading_back: dict[str, asyncio.Task[None]] = {}
        self._reads_back = True  # False once no task will follow (the daemon stops)

    def manager(self, agent: AgentConfig) -> ContainerManager:
        if isinstance(self.containers, EnginePool):
            return self.containers.manager(agent)
        return self.containers

    async def ready(self, agent: AgentConfig) -> None:
        """The container, current and running: looked at while the worker reads the
        thread, so that `prepare` goes straight to its execs."""
        container = await self.manager(agent).ensure(agent)
        self._readied[agent.name, agent.engine.name] = (container, self._clock())

    async def prepare(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> str:
        readied = self._readied.pop((agent.name, agent.engine.name), None)
        if readied is not None and self._clock() - readied[1] <= REUSE_FOR:
            container = readied[0]
        else:
            container = await self.manager(agent).ensure(agent)
        # What the last run here left in the login's copy is learnt before this run.
        if (reading := self._reading_back.get(container.id)) is not None:
            await asyncio.wait([reading])  # (its failure is its own: logged, then looked at)
        # Before each task: a newer login on the host replaces the one in the volume
        # (no exec when the last run here left a copy as new). The two touch different
        # paths and neither needs the other: side by side. Both run to their end before
        # an error of either is raised (the credentials' first).
        sync = self.manager(agent).sync_credentials(container, agent)
        if workspace.claude_makes_directory(plan):  # nothing to check out: no workspace exec
            await sync
            head = ""
        else:
            _, head = await all_of(
                sync, workspace.prepare(container, plan, user=agent.user, env=env)
            )
        self._prepared[agent.name, agent.engine.name] = (container, self._clock())  # ran just now
        return head

    async def run(
        self,
        agent: AgentConfig,
        claude: ClaudeExec,
        on_event: Callable[[StreamEvent], None],
        room: Room | None = None,
    ) -> ExecResult:
        manager = self.manager(agent)
        container = self._just_prepared(agent) or await manager.ensure(agent)
        # Over TLS the exec's stdin cannot be half-closed: the prompt goes by its length.
        half_close = agent.engine.tls is None
        try:
            result = await run_claude(
                container, claude, user=agent.user, on_event=on_event, room=room,
                half_close=half_close,
            )  # fmt: skip
        except BaseException:
            manager.forget_credentials(container)  # stopped: what it left is not known
            raise
        if self._reads_back:
            self._read_back(manager, container, agent)
        else:
            manager.forget_credentials(container)  # not looked at: what it left is not known
        return result

    def _read_back(
        self, manager: ContainerManager, container: DockerContainer, agent: AgentConfig
    ) -> None:
        """Nothing of the task runs now: what Claude left in the login's copy stays until
        the next task, which then needs no exec for it on its way to Claude. Looked at
        beside the task's report, not before it (an exec's round trip on every task's
        end, and on a drain); the next prepare in this container waits for it."""
        reading = asyncio.create_task(manager.read_back_credentials(container, agent))
        self._reading_back[container.id] = reading

        def done(_: asyncio.Task[None]) -> None:
            if self._reading_back.get(container.id) is reading:
                del self._reading_back[container.id]
            if not reading.cancelled() and (error := reading.exception()) is not None:
                manager.forget_credentials(container)
                log.error("credentials_read_back_failed", agent=agent.name, error=repr(error))

        reading.add_done_callback(done)

    def stop_reading_back(self) -> None:
        """The daemon takes no more work: the runs ending in its drain have no next task
        to save an exec for, so they leave the copy alone (it is only a cache)."""
        self._reads_back = False
        for reading in self._reading_back.values():
            reading.cancel()

    async def close(self) -> None:
        """At shutdown: a look still under way is dropped."""
        readings = list(self._reading_back.values())
        self.stop_reading_back()
        await asyncio.gather(*readings, return_exceptions=True)

    def _just_prepared(self, agent: AgentConfig) -> DockerContainer | None:
        seen = self._prepared.get((agent.name, agent.engine.name))
        if seen is None or self._clock() - seen[1] > REUSE_FOR:
            return None
        return seen[0]

    async def publish(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> workspace.Published:
        container = await self.manager(agent).ensure(agent)
        return await workspace.publish(container, plan, user=agent.user, env=env)

    async def diff_since(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str], since: str
    ) -> workspace.DiffSince:
        container = await self.manager(agent).ensure(agent)
        return await workspace.diff_since(container, plan, since, user=agent.user, env=env)
