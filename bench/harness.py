"""What every benchmark needs: the simulator, deployments, a daemon subprocess, Docker.

A `Lab` starts the Forgejo simulator and builds the scripted agent image; each
`deployment()` is a fresh state directory, a fresh repository and agents with
unique names, so runs never share containers, tasks or notifications. Closing
the lab kills what is left of its daemons and removes every container and volume
its agents got. `second_engine()` starts a second dockerd on 127.0.0.1 over mutual TLS
(tests/second_dockerd.py) with the bench image in it, for the figures of remote engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer

from claude_hooks.config import Config, DockerEngine, load_config
from claude_hooks.demo.agent_image import ensure_image
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.runner.engines import open_docker
from claude_hooks.runner.workspace import ENTER_SCRIPT
from tests.fakes.configs import ConfigFactory, toml_table
from tests.second_dockerd import SecondDockerd, TlsEngine, make_engine_certs

IMAGE = "claude-hooks-bench:latest"
AGENT_UID = 1000  # the `agent` user of the scripted image
HUMAN = "alice"
API_TOKEN = "bench-api-token-0123456789"
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the daemon subprocess ------------------------------------------------------------------


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    config: Config
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self, sig: signal.Signals = signal.SIGTERM, limit: float = 60) -> int:
        self.process.send_signal(sig)
        async with asyncio.timeout(limit):
            return await self.process.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU of the daemon process so far (/proc/<pid>/stat)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime

    def rss_mb(self, key: str = "VmRSS") -> float:
        """Resident memory (VmRSS, or VmHWM for the peak) in MB (10^6 bytes)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / 1e6  # the kernel's "kB" is KiB
        raise LookupError(f"no {key} in /proc/{self.pid}/status")

    def output(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:]


# --- the store, read from outside -----------------------------------------------------------


@dataclass(frozen=True)
class TaskRow:
    id: int
    agent: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None


def task_rows(config: Config) -> list[TaskRow]:
    query = (
        "SELECT id, agent, state, created_at, started_at, finished_at, error FROM tasks ORDER BY id"
    )
    try:
        with contextlib.closing(sqlite3.connect(config.daemon.db_path, timeout=5)) as db:
            return [TaskRow(*row) for row in db.execute(query).fetchall()]
    except sqlite3.OperationalError:  # not created yet
        return []


async def wait_until(
    check: Callable[[], bool], limit: float, what: str, every: float = 0.02
) -> None:
    try:
        async with asyncio.timeout(limit):
            # The state is another process's (SQLite, Docker) or the simulator's: no event.
            while not check():  # noqa: ASYNC110
                await asyncio.sleep(every)
    except TimeoutError:
        raise AssertionError(f"timed out after {limit:g}s waiting for {what}") from None


# --- Docker exec events ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExecEvent:
    container: str
    exec_id: str
    action: str  # "exec_start" or "exec_die"
    command: str
    at: float  # the engine's wall-clock time of the event (timeNano)


# On a TLS engine the runner feeds claude its prompt through `head -c` (runner/containers.py
# read_exactly): the exec's command is `sh -c 'head -c "$0" | "$@"' <bytes> claude …`.
_BOUNDED_STDIN = re.compile(r'sh -c head -c "\$0" \| "\$@" \d+ ')
# With nothing to check out, claude's exec makes its directory (runner/workspace.py
# entering): `sh -c '<ENTER_SCRIPT>' enter-workspace <directory> claude …`.
_ENTERING = re.compile(rf"sh -c {re.escape(ENTER_SCRIPT)} enter-workspace \S+ ")


def is_claude_exec(command: str) -> bool:
    """Whether an exec_start event's command is the runner's claude exec."""
    for wrapper in (_BOUNDED_STDIN, _ENTERING):  # the outer one first
        if match := wrapper.match(command):
            command = command[match.end() :]
    return command.startswith("claude ")


@dataclass
class ExecWatcher:
    """Docker's exec_start/exec_die events, as the engine timestamps them.

    `claude` execs are told apart from the runner's other execs (workspace
    preparation, signalling) by the command the exec_start event names.
    """

    prefix: str = ""  # only containers whose name starts with it: other runs' are not ours
    engine: DockerEngine = field(default_factory=DockerEngine)  # default: the local one
    events: list[ExecEvent] = field(default_factory=list)
    _client: aiodocker.Docker | None = None
    _task: asyncio.Task[None] | None = None
    _claude_ids: set[str] = field(default_factory=set)

    async def start(self) -> None:
        self._client = open_docker(self.engine)
        filters = json.dumps({"type": ["container"], "event": ["exec_start", "exec_die"]})
        subscriber = self._client.events.subscribe(filters=filters)
        self._task = asyncio.create_task(self._consume(subscriber))
        await asyncio.sleep(0.2)  # the subscription is live once the engine answered

    async def _consume(self, subscriber: Any) -> None:
        while (data := await subscriber.get()) is not None:
            action, _, command = str(data.get("Action", "")).partition(": ")
            attributes = data.get("Actor", {}).get("Attributes", {})
            exec_id = attributes.get("execID", "")
            if not str(attributes.get("name", "")).startswith(self.prefix):
                continue
            if action == "exec_start" and is_claude_exec(command):
                self._claude_ids.add(exec_id)
            elif exec_id not in self._claude_ids:
                continue
            at = int(data.get("timeNano", 0)) / 1e9
            self.events.append(ExecEvent(attributes.get("name", ""), exec_id, action, command, at))

    def starts(self, since: float = 0.0) -> list[ExecEvent]:
        return [e for e in self.events if e.action == "exec_start" and e.at >= since]

    def dies(self, since: float = 0.0) -> list[ExecEvent]:
        return [e for e in self.events if e.action == "exec_die" and e.at >= since]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.events.stop()
            await self._client.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def throwaway_container(docker: aiodocker.Docker) -> AsyncIterator[DockerContainer]:
    """A running container of the bench image, no network, removed on the way out."""
    name = f"claude-hooks-bench-floor-{uuid.uuid4().hex[:8]}"
    container = await docker.containers.create_or_replace(
        name,
        {
            "Image": IMAGE,
            "Cmd": ["/bin/sleep", "1000"],
            "HostConfig": {"NetworkMode": "none", "AutoRemove": False},
            "Labels": {"claude-hooks.bench": "1"},
        },
    )
    try:
        await container.start()
        yield container
    finally:
        await container.delete(force=True)


async def exec_floor(
    docker: aiodocker.Docker, runs: int = 20, *, in_sequence: int = 1
) -> list[float]:
    """Round trips of a bare `docker exec true` through aiodocker, in ms, in a throwaway
    container of the bench image; with `in_sequence` n, each sample is n of them, one after
    another (a task's path has two: the workspace's, then claude's)."""
    async with throwaway_container(docker) as container:
        times = []
        for _ in range(runs + 1):
            began = time.perf_counter()
            for _ in range(in_sequence):
                await _bare_exec(container)
            times.append((time.perf_counter() - began) * 1000)
        return times[1:]  # the first exec warms the connection


async def _bare_exec(container: DockerContainer) -> None:
    execution = await container.exec(["true"])
    async with execution.start(detach=False) as stream:
        while await stream.read_out() is not None:
            pass
    await execution.inspect()


async def read_floor(docker: aiodocker.Docker, prompt: str) -> tuple[int, float]:
    """(lines, seconds) of reading the scripted claude's whole output for `prompt`
    through aiodocker, counting newlines and nothing else: the stream's floor."""
    script = f"echo '{prompt}' | claude -p --verbose --output-format stream-json"
    async with throwaway_container(docker) as container:
        execution = await container.exec(["/bin/sh", "-c", script])
        lines, began = 0, time.perf_counter()
        async with execution.start(detach=False) as stream:
            while (message := await stream.read_out()) is not None:
                lines += message.data.count(b"\n")
        return lines, time.perf_counter() - began


# --- the lab ---------------------------------------------------------------------------------


class Lab:
    """The simulator, the image, and the deployments one benchmark makes."""

    def __init__(self) -> None:
        self.sim = ForgejoSim()
        self.docker: aiodocker.Docker | None = None
        self.root = Path(tempfile.mkdtemp(prefix="claude-hooks-bench-"))
        self.run_id = uuid.uuid4().hex[:5]
        self.agents: list[str] = []
        self.daemons: list[Daemon] = []
        self._deployments = 0

    async def __aenter__(self) -> Lab:
        await self.sim.start()
        self.sim.add_user(HUMAN, token="forgejo-token-of-alice-0123456789")
        self.docker = aiodocker.Docker()
        await ensure_image(self.docker, IMAGE)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def container_prefix(self) -> str:
        """Every container of this lab's agents has a name starting with this."""
        return f"claude-hooks-b{self.run_id}"

    def watcher(self, engine: DockerEngine | None = None) -> ExecWatcher:
        return ExecWatcher(prefix=self.container_prefix, engine=engine or DockerEngine())

    @property
    def engine(self) -> aiodocker.Docker:
        assert self.docker is not None, "the lab is not started"
        return self.docker

    def deployment(
        self,
        agents: int,
        *,
        webhook: bool = False,
        agent: dict[str, Any] | None = None,
        per_agent: Sequence[dict[str, Any]] = (),
        engines: Sequence[dict[str, Any]] = (),
        **daemon: Any,
    ) -> Config:
        """A config for `agents` fresh agents on a fresh repository and state directory;
        `agent` overrides every agent's keys, `per_agent[i]` the i-th agent's after it;
        `engines` are its [[engines]] tables."""
        self._deployments += 1
        number = self._deployments
        factory = ConfigFactory(self.root / f"deployment-{number}")
        names = [f"b{self.run_id}d{number}a{i}" for i in range(agents)]
        for name in names:
            self.sim.add_user(name, token=f"forgejo-token-of-{name}-0123456789")
        self.agents += names
        repo = f"bench/app{number}"
        self.sim.add_repo(repo, collaborators={HUMAN: "write", **{name: "admin" for name in names}})
        # forgejo.repositories names what is served: none (or the factory's acme/*) is nothing
        forgejo: dict[str, Any] = {"url": self.sim.base_url, "repositories": [repo]}
        if webhook:
            secret = factory.secret("webhook-secret", WEBHOOK_SECRET)
            forgejo["webhook_secret_file"] = str(secret)
        api_listen = f"127.0.0.1:{free_port()}"
        text = factory.text(
            forgejo=forgejo,
            daemon={"log_format": "json", "drain_timeout": 30, **daemon},
            api={
                "listen": api_listen,
                "token_file": str(factory.secret("api-token", API_TOKEN)),
            },
            agents=[
                self._agent(factory, name, {**(agent or {}), **own})
                for name, own in zip(names, [*per_agent, *[{}] * agents], strict=False)
            ],
        )
        text += "".join(toml_table("[[engines]]", table) for table in engines)
        config = load_config(factory.write(text))
        if webhook:
            self.sim.add_webhook(f"{config.api.base_url}/hooks/forgejo", secret=WEBHOOK_SECRET)
        return config

    @staticmethod
    def _agent(factory: ConfigFactory, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
        creds = factory.secret(f"creds-{name}.json", '{"claudeAiOauth": {"accessToken": "x"}}')
        os.chown(creds, AGENT_UID, AGENT_UID)
        return factory.agent(
            name,
            token_file=str(factory.secret(f"token-{name}", f"forgejo-token-of-{name}-0123456789")),
            credentials_file=str(creds),
            image=IMAGE, network="none", checkout=False, timeout=900, memory="512m", cpus=1.0,
            **overrides,
        )  # fmt: skip

    @staticmethod
    def repo_of(config: Config) -> str:
        return f"bench/app{config.path.parent.name.rsplit('-', 1)[1]}"

    async def start_daemon(self, config: Config, ready_within: float = 30) -> Daemon:
        log = config.path.parent / f"daemon-{len(self.daemons)}.log"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "claude_hooks", "run", "--config", str(config.path),
            stdout=log.open("wb"), stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        daemon = Daemon(process, config, log)
        self.daemons.append(daemon)
        await wait_ready(daemon, ready_within)
        return daemon

    async def close(self) -> None:
        for daemon in self.daemons:
            if daemon.process.returncode is None:
                daemon.process.kill()
                await daemon.process.wait()
        if self.docker is not None:
            await remove_agents(self.docker, self.agents)
            await self.docker.close()
        await self.sim.stop()
        shutil.rmtree(self.root, ignore_errors=True)


async def remove_agents(docker: aiodocker.Docker, agents: Sequence[str]) -> None:
    """Remove the containers and state volumes of these agents, if they exist."""
    for name in agents:
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.containers.get(f"claude-hooks-{name}")).delete(force=True)
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.volumes.get(f"claude-hooks-{name}-state")).delete()


async def wait_ready(daemon: Daemon, limit: float = 30) -> None:
    url = f"{daemon.config.api.base_url}/healthz"
    try:
        async with asyncio.timeout(limit), aiohttp.ClientSession() as session:
            while True:
                if daemon.process.returncode is not None:
                    raise AssertionError(f"the daemon exited:\n{daemon.output()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(
            f"the daemon was not ready in {limit:g}s:\n{daemon.output()}"
        ) from None


async def submit(
    session: aiohttp.ClientSession, config: Config, agent: str, repo: str, prompt: str
) -> int:
    """POST /tasks, as `claude-hooks submit` does; the new task's id."""
    async with session.post(
        f"{config.api.base_url}/tasks",
        json={"agent": agent, "repo": repo, "prompt": prompt},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    ) as response:
        body = await response.json()
        if response.status not in (200, 201):
            raise AssertionError(f"POST /tasks: {response.status} {body}")
        return int(body["task_id"])


async def mention(sim: ForgejoSim, repo: str, agent: str, directive: str) -> tuple[int, int, float]:
    """An issue, then a comment mentioning the agent: (number, comment id, wall time of
    the comment). The comment comes once the issue's own webhook is delivered: the
    simulator delivers one at a time, and a sample times the comment's webhook."""
    number = sim.create_issue(repo, HUMAN, "Work", "Please work.")
    await sim.webhooks_idle()
    at = time.time()
    comment = sim.add_comment(repo, number, HUMAN, f"@{agent} go\n\nfake-claude: {directive}")
    return number, comment, at


# --- a second Docker engine ------------------------------------------------------------------


@dataclass(frozen=True)
class SecondEngine:
    """The lab's second dockerd (tests/second_dockerd.py: 127.0.0.1, mutual TLS, its own
    data and exec roots), with the bench image loaded and a client of it."""

    tls: TlsEngine
    docker: aiodocker.Docker

    @property
    def engine(self) -> DockerEngine:
        return self.tls.engine

    def agent_keys(self) -> dict[str, str]:
        """An agent's docker_host and docker_tls_*_file keys for this engine."""
        return self.tls.agent_keys()

    def engine_table(self, name: str, max_concurrency: int) -> dict[str, object]:
        return self.tls.engine_table(name, max_concurrency)


@contextlib.asynccontextmanager
async def second_engine() -> AsyncIterator[SecondEngine]:
    """Start a second dockerd, copy the bench image into it; on the way out remove every
    container on it (the engine is the bench's alone), stop it, delete its data root."""
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        raise RuntimeError("a second dockerd needs the dockerd binary and root")
    root = Path(tempfile.mkdtemp(prefix="ch-bench-engine-"))  # short: socket paths are bounded
    dockerd = SecondDockerd(root, free_port(), make_engine_certs(root / "certs"))
    try:
        try:
            await asyncio.to_thread(dockerd.start)  # it runs its own event loop while waiting
        except TimeoutError:
            raise RuntimeError(f"the second dockerd did not start: {dockerd.log_tail()}") from None
        await asyncio.to_thread(load_image, dockerd.tls_engine, IMAGE)
        docker = open_docker(dockerd.tls_engine.engine)
        try:
            yield SecondEngine(dockerd.tls_engine, docker)
        finally:
            for container in await docker.containers.list(all=True):
                with contextlib.suppress(aiodocker.DockerError):
                    await container.delete(force=True)
            await docker.close()
    finally:
        await asyncio.to_thread(dockerd.stop)
        shutil.rmtree(root, ignore_errors=True)


def load_image(engine: TlsEngine, image: str) -> None:
    """`docker save` of the local engine's `image` into `docker load` on `engine`."""
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    loaded = subprocess.run(
        [*engine.cli(), "load"], stdin=save.stdout, capture_output=True, timeout=300, check=False
    )
    if save.wait(timeout=60) != 0 or loaded.returncode != 0:
        raise RuntimeError(
            f"docker save {image} | docker load on {engine.host} failed:"
            f" {loaded.stderr.decode(errors='replace')[-500:]}"
        )
