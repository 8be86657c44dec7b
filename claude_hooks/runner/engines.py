"""The Docker engines the agents' containers are on: one client and one ContainerManager each.

An agent names its engine with `docker_host` (config.py); agents naming the same one
share its client. A tcp engine is reached over mutual TLS (Docker's --tlsverify):
aiodocker takes the SSL context but only speaks TLS to an https:// URL, so a tcp:// host
is handed to it as https://. Every manager labels its containers with its engine's name
and only ever lists, sweeps or recreates containers carrying that label, so two names
for one engine never take each other's containers for orphans.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

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
    """Each distinct engine the agents name, in the order the agents first name it."""
    return tuple(dict.fromkeys(agent.engine for agent in agents))


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
    async def open(cls, agents: Iterable[AgentConfig], labels: Mapping[str, str]) -> EnginePool:
        """A client and a manager (with `labels` and the engine's name) per engine; if one
        cannot be opened, the ones opened before it are closed and the error raised."""
        clients: list[EngineClient] = []
        try:
            for engine in engines_of(agents) or (DockerEngine(),):
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
        return [agent for agent in agents if agent.engine == client.engine]

    async def ping(self) -> dict[str, bool]:
        """Whether each engine answers, by name."""
        return {client.engine.name: await client.manager.ping() for client in self.clients}

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
