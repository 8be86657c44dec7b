"""Which engine of an agent's pool a task runs on, and the slot it holds there (issue 18).

An agent with `engines` has one container on each engine of its pool. The choice is
`choose_engine`, a plain function over the engines' loads: among the engines that are
up and have room (fewer tasks running than their max_concurrency, every agent's
together), the one holding the thread's working tree and Claude session if it is one
of them, else the least loaded (the smallest share of its max_concurrency in use; ties
go to the one named first). None up: the task is put off as in a Docker outage. None
with room: it waits here for a slot.

`EnginePlacer.lease` is the step the worker holds for a task: it records the engine in
the store (the thread's workspace is found again after a restart) and frees the slot
when the task ends, however it ends. An agent without `engines` is not placed: its
lease is the agent itself, on its one engine, as before pools existed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

import structlog

from claude_hooks.config import AgentConfig, Config, DockerEngine
from claude_hooks.runner.engines import EngineHealth, Seen
from claude_hooks.store import Store
from claude_hooks.tasks import Task

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EngineLoad:
    """One candidate engine as placement sees it."""

    name: str
    running: int  # tasks placed on it now, all agents together
    limit: int  # its max_concurrency
    up: bool


class Verdict(StrEnum):
    PLACED = "placed"
    WAIT = "wait"  # every engine that is up is full
    DOWN = "down"  # no engine of the pool is up


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    engine: str | None = None  # PLACED: where


def choose_engine(candidates: Sequence[EngineLoad], workspace: str | None) -> Decision:
    """The engine for one task: the workspace's if it is up with room, else the least
    loaded up engine with room; WAIT when all up ones are full; DOWN when none is up."""
    up = [engine for engine in candidates if engine.up]
    if not up:
        return Decision(Verdict.DOWN)
    room = [engine for engine in up if engine.running < engine.limit]
    if not room:
        return Decision(Verdict.WAIT)
    for engine in room:
        if engine.name == workspace:
            return Decision(Verdict.PLACED, engine.name)
    order = {engine.name: i for i, engine in enumerate(candidates)}
    least = min(room, key=lambda e: (e.running / e.limit, e.running, order[e.name]))
    return Decision(Verdict.PLACED, least.name)


class EnginesDown(Exception):
    """No engine of an agent's pool is up: the task waits it out like a Docker outage."""

    def __init__(self, agent: str, engines: Sequence[str]) -> None:
        super().__init__(f"every engine of agent {agent} is down: {', '.join(engines)}")
        self.agent = agent
        self.engines = tuple(engines)


@dataclass(frozen=True)
class Lease:
    """Where one task runs: `agent` narrowed to the chosen engine (what the runtime is
    given), the engine's name (None: the agent has no pool), and whether the thread's
    working tree and Claude session are there (a --resume finds its session)."""

    agent: AgentConfig
    engine: str | None = None
    keeps_workspace: bool = True


class EnginePlacer:
    """The running count of each pool engine, and the leases that move it; whether an
    engine is up is `health`'s (a change wakes the tasks waiting for room)."""

    def __init__(self, config: Config, store: Store, health: EngineHealth) -> None:
        self._limits = {engine.name: engine.max_concurrency for engine in config.engines}
        self._store = store
        self._health = health
        self._running: Counter[str] = Counter()
        self._change = asyncio.Event()
        self.waiting = 0  # tasks waiting for room on their pool now
        health.subscribe(lambda name, state: self.changed())

    def lost(self, engine: str) -> None:
        """A task could not reach `engine`: it is down until a ping answers."""
        self._health.seen(engine, Seen.EXEC_LOST)

    def running(self) -> Mapping[str, int]:
        """Tasks on each pool engine now, by name."""
        return {name: self._running[name] for name in self._limits}

    def changed(self) -> None:
        """A slot was freed or an engine came up or went down: waiting tasks look again."""
        self._change.set()
        self._change = asyncio.Event()

    def loads(self, pool: Sequence[DockerEngine]) -> list[EngineLoad]:
        return [
            EngineLoad(
                e.name, self._running[e.name], self._limits[e.name], self._health.is_up(e.name)
            )
            for e in pool
        ]

    @asynccontextmanager
    async def lease(self, task: Task, agent: AgentConfig) -> AsyncIterator[Lease]:
        if not agent.pool:
            yield Lease(agent)
            return
        spec = task.spec
        workspace = await self._store.thread_engine(agent.name, spec.repo, spec.number)
        engine = await self._slot(agent, workspace)
        self._running[engine.name] += 1
        try:
            log.info("task_placed", engine=engine.name, workspace=workspace)
            await self._store.set_engine(task.id, engine.name)
            yield Lease(
                agent.placed_on(engine), engine.name, keeps_workspace=workspace == engine.name
            )
        finally:  # nothing awaited before the count goes down: a cancel cannot skip it
            self._running[engine.name] -= 1
            self.changed()

    async def _slot(self, agent: AgentConfig, workspace: str | None) -> DockerEngine:
        waited = False
        while True:
            decision = choose_engine(self.loads(agent.pool), workspace)
            if decision.verdict is Verdict.DOWN:
                raise EnginesDown(agent.name, [engine.name for engine in agent.pool])
            if decision.verdict is Verdict.PLACED:
                return next(e for e in agent.pool if e.name == decision.engine)
            if not waited:
                log.info("task_waits_for_engine", engines=[e.name for e in agent.pool])
                waited = True
            self.waiting += 1
            try:
                await self._change.wait()
            finally:
                self.waiting -= 1
