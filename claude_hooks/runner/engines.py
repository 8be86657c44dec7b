"""The Docker engines the agents' containers are on: one client and one ContainerManager each.

An agent names its engine with `docker_host` (config.py), or several with `engines` (an
engine pool: one container of the agent on each); agents naming the same one share its
client. Whether each engine is up is `EngineHealth`'s (see `engine_up`).

A tcp engine is reached over mutual TLS (Docker's --tlsverify): aiodocker takes the SSL
context but only speaks TLS to an https:// URL, so a tcp:// host is handed to it as
https://. Every manager labels its containers with its engine's name
and only ever lists, sweeps or recreates containers carrying that label, so two names
for one engine never take each other's containers for orphans.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import aiodocker
import structlog

from claude_hooks.config import AgentConfig, DockerEngine, engine_tls_context
from claude_hooks.runner.containers import ENGINE_LABEL, ContainerManager

log = structlog.get_logger(__name__)


def docker_url(engine: DockerEngine) -> str | None:
    """The URL aiodocker is given: None for its default, https:// for a TLS tcp engine."""
    if engine.host is None:
        return None
    if engine.tls is not None and engine.host.startswith("tcp://"):
        return "https://" + engine.host.removeprefix("tcp://")
    return engine.host


def open_docker(engine: DockerEngine) -> aiodocker.Docker:
    """A client of `engine`; ValueError when aiodocker finds no socket to talk to."""
    url = docker_url(engine)
    if url is None:
        return aiodocker.Docker()
    if engine.tls is None:
        return aiodocker.Docker(url=url)
    return aiodocker.Docker(url=url, ssl_context=engine_tls_context(engine.tls))


def engines_of(agents: Iterable[AgentConfig]) -> tuple[DockerEngine, ...]:
    """Each distinct engine the agents name (pools included), in the order first named."""
    return tuple(dict.fromkeys(engine for agent in agents for engine in agent.on_engines))


class Seen(StrEnum):
    """What the daemon learnt about an engine."""

    PING_OK = "ping_ok"  # the periodic ping (or /readyz) got an answer
    PING_FAILED = "ping_failed"  # ... got none
    EXEC_LOST = "exec_lost"  # a task's exec, or a call before it, could not reach it


@dataclass(frozen=True)
class EngineState:
    up: bool = True  # until the first ping says otherwise: the start must not wait on it
    since: float = 0.0  # when `up` last changed (the clock of EngineHealth)
    why: str = ""  # the last observation that made it down


def engine_up(state: EngineState, seen: Seen, now: float) -> EngineState:
    """An engine is down from the first failed ping or lost exec, up from the first
    answered ping. One answer is enough either way: a ping is a cheap GET /version, so a
    failure is an engine that cannot take an exec, and a lost exec already cost a task."""
    up = seen is Seen.PING_OK
    if up == state.up:
        return state
    return EngineState(up, now, "" if up else str(seen))


class EngineHealth:
    """The up/down of each engine by name; `on_change` is told each change."""

    def __init__(self, names: Iterable[str], *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._states = {name: EngineState(since=clock()) for name in names}
        self._listeners: list[Callable[[str, EngineState], None]] = []

    def subscribe(self, listener: Callable[[str, EngineState], None]) -> None:
        self._listeners.append(listener)

    def is_up(self, name: str) -> bool:
        return self._states[name].up

    def states(self) -> dict[str, EngineState]:
        return dict(self._states)

    def seen(self, name: str, seen: Seen) -> None:
        before = self._states[name]
        after = engine_up(before, seen, self._clock())
        if after is before:
            return
        self._states[name] = after
        log_at = log.info if after.up else log.warning
        log_at("engine_up" if after.up else "engine_down", engine=name, seen=str(seen))
        for listener in self._listeners:
            listener(name, after)


@dataclass(frozen=True)
class EngineClient:
    engine: DockerEngine
    docker: aiodocker.Docker
    manager: ContainerManager


class EnginePool:
    """The engines of a set of agents, opened once; `close` closes every client."""

    def __init__(self, clients: Sequence[EngineClient]) -> None:
        self.clients = tuple(clients)
        self._by_engine = {client.engine: client for client in self.clients}

    @classmethod
    async def open(
        cls,
        agents: Iterable[AgentConfig],
        labels: Mapping[str, str],
        declared: Iterable[DockerEngine] = (),
    ) -> EnginePool:
        """A client and a manager (with `labels` and the engine's name) per engine the agents
        name, and per `declared` one ([[engines]] no agent names: its housekeeping still
        removes the containers of agents taken off it); if one cannot be opened, the ones
        opened before it are closed and the error raised."""
        clients: list[EngineClient] = []
        wanted = tuple(dict.fromkeys((*engines_of(agents), *declared)))
        try:
            for engine in wanted or (DockerEngine(),):
                docker = open_docker(engine)
                engine_labels = {**labels, ENGINE_LABEL: engine.name}
                clients.append(
                    EngineClient(
                        engine, docker, ContainerManager(docker, extra_labels=engine_labels)
                    )
                )
        except BaseException:
            await cls(clients).close()
            raise
        return cls(clients)

    def client(self, agent: AgentConfig) -> EngineClient:
        return self._by_engine[agent.engine]

    def manager(self, agent: AgentConfig) -> ContainerManager:
        """The manager of the engine `agent`'s container is on."""
        return self._by_engine[agent.engine].manager

    def agents_on(self, client: EngineClient, agents: Iterable[AgentConfig]) -> list[AgentConfig]:
        """The agents with a container on this client's engine, each placed on it."""
        return [
            agent.placed_on(client.engine) for agent in agents if client.engine in agent.on_engines
        ]

    async def ping(self, health: EngineHealth | None = None) -> dict[str, bool]:
        """Whether each engine answers, by name (all at once); told to `health` too."""
        answers = await asyncio.gather(*(client.manager.ping() for client in self.clients))
        named = {client.engine.name: ok for client, ok in zip(self.clients, answers, strict=True)}
        if health is not None:
            for name, ok in named.items():
                health.seen(name, Seen.PING_OK if ok else Seen.PING_FAILED)
        return named

    async def close(self) -> None:
        """Close every client; the first failure is raised once all were tried."""
        failure: Exception | None = None
        for client in self.clients:
            try:
                await client.docker.close()
            except Exception as exc:  # the others still close
                log.error("docker_close_failed", engine=client.engine.name, error=repr(exc))
                failure = failure or exc
        if failure is not None:
            raise failure
