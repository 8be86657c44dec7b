"""Where an agent's task runs: the seam between the task pipeline and Docker.

`DockerRuntime` is the product: the agent's own container, a workspace in it, and
`claude -p` as a `docker exec`. The demo has a second runtime for machines
without a Docker engine (claude_hooks/demo/local_runtime.py); nothing else does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from claude_hooks.config import AgentConfig
from claude_hooks.runner import workspace
from claude_hooks.runner.containers import ContainerManager
from claude_hooks.runner.engines import EnginePool
from claude_hooks.runner.execution import ClaudeExec, ExecResult, run_claude
from claude_hooks.runner.stream import StreamEvent


class AgentRuntime(Protocol):
    async def prepare(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> str:
        """Make the agent ready and the task's working tree exist; its HEAD sha or ""."""
        ...

    async def run(
        self, agent: AgentConfig, claude: ClaudeExec, on_event: Callable[[StreamEvent], None]
    ) -> ExecResult:
        """Run claude to its end; when cancelled, stop every process of the task first."""
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


class DockerRuntime:
    """Each agent in its own long-lived container; each task one `docker exec`.

    With an EnginePool, each agent's container is on the engine its docker_host names;
    the container object carries its engine's client, so exec and stop go there too.
    """

    def __init__(self, containers: ContainerManager | EnginePool) -> None:
        self.containers = containers

    def manager(self, agent: AgentConfig) -> ContainerManager:
        if isinstance(self.containers, EnginePool):
            return self.containers.manager(agent)
        return self.containers

    async def prepare(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> str:
        container = await self.manager(agent).ensure(agent)
        # Before each task: a newer login on the host replaces the one in the volume.
        await self.manager(agent).sync_credentials(container, agent)
        return await workspace.prepare(container, plan, user=agent.user, env=env)

    async def run(
        self, agent: AgentConfig, claude: ClaudeExec, on_event: Callable[[StreamEvent], None]
    ) -> ExecResult:
        container = await self.manager(agent).ensure(agent)
        # Over TLS the exec's stdin cannot be half-closed: the prompt goes by its length.
        half_close = agent.engine.tls is None
        return await run_claude(
            container, claude, user=agent.user, on_event=on_event, half_close=half_close
        )

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
