"""The chaos driver: a real `claude-hooks run` subprocess, SIGKILLed at seeded random moments.

Forgejo is the simulator in the test process, tasks run in real Docker with the scripted
fake claude. The driver submits mentions (Forgejo comments) and API tasks, kills the daemon,
restarts it, and at the end lets one clean run finish everything so the record can be
audited: what was accepted, what finished, what was duplicated or lost. With `outages`,
a cycle may also take Forgejo down (502s or dropped connections) or the Docker engine
(the daemon's DOCKER_HOST is a link the driver removes) for part of its run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sqlite3
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiodocker
import aiohttp

from claude_hooks.config import Config
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.text import find_marker
from tests.fakes.configs import ConfigFactory
from tests.waiting import wait_until

REPO = "acme/app"
API_TOKEN = "chaos-api-token-0123456789"
FINISHED = ("succeeded", "failed", "cancelled")
# The tracking comment's headline while a task is not done (claude_hooks/report).
UNFINISHED = ("**Queued**", "**Working**")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chaos_config(
    factory: ConfigFactory,
    sim: ForgejoSim,
    image: str,
    agent: str,
    daemon: dict[str, object] | None = None,
    **overrides: object,
) -> Config:
    token = f"forgejo-token-of-{agent}-0123456789"
    sim.add_user("alice", token="forgejo-token-of-alice-0123456789")
    sim.add_user(agent, token=token)
    sim.add_repo(REPO, collaborators={"alice": "write", agent: "admin"})
    creds = factory.secret("creds.json", '{"claudeAiOauth": {"accessToken": "oauth-chaos-1"}}')
    values = factory.agent(
        agent, token_file=str(factory.secret("agent-token", token)),
        credentials_file=str(creds), image=image, network="none", checkout=False,
        timeout=60, max_concurrency=2,
    )  # fmt: skip
    values.update(overrides)
    return factory.load(
        forgejo={"url": sim.base_url},
        daemon={"poll_interval": 0.2, "drain_timeout": 5, "log_format": "json", **(daemon or {})},
        api={
            "listen": f"127.0.0.1:{free_port()}",
            "token_file": str(factory.secret("api-token", API_TOKEN)),
        },
        agents=[values],
    )


@dataclass(frozen=True)
class TaskRow:
    id: int
    state: str
    error: str | None
    number: int | None
    comment_id: int | None
    source: str


@dataclass
class Figures:
    cycles: int = 0
    accepted: int = 0
    finished: int = 0
    duplicated: int = 0
    lost: int = 0
    failed_interrupted_twice: int = 0
    tasks: int = 0
    forgejo_outages: int = 0
    docker_outages: int = 0

    def line(self) -> str:
        return (
            f"chaos: cycles={self.cycles} accepted={self.accepted} finished={self.finished} "
            f"duplicated={self.duplicated} lost={self.lost} tasks={self.tasks} "
            f"failed_interrupted_twice={self.failed_interrupted_twice} "
            f"forgejo_outages={self.forgejo_outages} docker_outages={self.docker_outages}"
        )


@dataclass
class ChaosDriver:
    sim: ForgejoSim
    config: Config
    agent: str
    rng: random.Random
    mentions: list[int] = field(default_factory=list)  # comment ids of accepted mentions
    api_tasks: list[int] = field(default_factory=list)  # task ids the API answered 201 with
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    strays: int = 0  # claude processes a killed daemon left running in the container
    survivors: list[str] = field(default_factory=list)  # strays still alive after a restart
    outages: bool = False  # cycles may take Forgejo or Docker down for a while
    outages_taken: Counter[str] = field(default_factory=Counter)

    @property
    def log_dir(self) -> Path:
        return self.config.path.parent

    @property
    def docker_link(self) -> Path:
        """The daemon's Docker socket with `outages`: a link to the engine's, or nothing."""
        return self.log_dir / "docker.sock"

    def docker_up(self) -> None:
        engine = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if not self.docker_link.is_symlink():
            self.docker_link.symlink_to(engine.removeprefix("unix://"))

    def docker_down(self) -> None:
        self.docker_link.unlink(missing_ok=True)

    async def start(self, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> Path:
        """Start `claude-hooks run`; its output goes to the returned log file."""
        log = self.log_dir / f"daemon-{self.starts}.log"
        self.starts += 1
        if self.outages:
            self.docker_up()
            env = {"DOCKER_HOST": f"unix://{self.docker_link}", **(env or {})}
        self.process = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-m", "claude_hooks", "run", "--config",
            str(self.config.path), stdout=log.open("wb"), stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        return log

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self, limit: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(limit):
            return await self.process.wait()

    def mention(self) -> None:
        number = self.sim.create_issue(REPO, "alice", "Chaos", "Please work.")
        delay = self.rng.choice(["0", "0.05", "0.2"])
        body = f"@{self.agent} go\n\nfake-claude: delay={delay}"
        self.mentions.append(self.sim.add_comment(REPO, number, "alice", body))

    async def submit_api(self, session: aiohttp.ClientSession) -> None:
        number = self.sim.create_issue(REPO, "alice", "Chaos API", "Please work.")
        body = {"agent": self.agent, "repo": REPO, "number": number, "prompt": "fake-claude: x=1"}
        headers = {"Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": uuid.uuid4().hex}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.post(
                f"{self.config.api.base_url}/tasks", json=body, headers=headers
            ) as response:
                if response.status == 201:
                    self.api_tasks.append(int((await response.json())["task_id"]))

    async def cycle(self, session: aiohttp.ClientSession, docker: aiodocker.Docker) -> None:
        """Start, feed it for a random moment, SIGKILL; the last run's strays must die."""
        left = await claude_processes(docker, self.config.agents[0].container_name)
        self.strays += len(left)
        await self.start()
        await self.reap(docker, left)
        outage = self.rng.choice([None, None, "forgejo", "docker"]) if self.outages else None
        deadline = asyncio.get_running_loop().time() + self.rng.uniform(0.8, 2.5)
        while asyncio.get_running_loop().time() < deadline:
            if outage is not None and self.rng.random() < 0.4:
                self.outage_begins(outage)
                outage = None
            if self.rng.random() < 0.5:
                self.mention()
            else:
                await self.submit_api(session)
            await asyncio.sleep(self.rng.uniform(0.1, 0.6))  # not a wait: the seeded chaos
        self.outages_end()  # before the kill: the next start must reach Docker to reap
        await self.kill()

    def outage_begins(self, kind: str) -> None:
        self.outages_taken[kind] += 1
        if kind == "docker":
            self.docker_down()
        else:
            self.sim.outage(lambda method, path: True, status=self.rng.choice([502, None]))

    def outages_end(self) -> None:
        self.sim.end_outage()
        if self.outages:
            self.docker_up()

    async def reap(self, docker: aiodocker.Docker, left: dict[str, str], limit: float = 8) -> None:
        """Wait for the restarted daemon to kill what its dead predecessor left running."""
        name = self.config.agents[0].container_name
        alive = left

        async def reaped() -> bool:
            nonlocal alive
            now = await claude_processes(docker, name)
            alive = {pid: args for pid, args in left.items() if now.get(pid) == args}
            return not alive

        with contextlib.suppress(TimeoutError):  # what outlives the limit is counted, not fatal
            await wait_until(reaped, timeout=limit, interval=0.2)
        self.survivors += list(alive.values())

    def rows(self) -> list[TaskRow]:
        if not self.config.daemon.db_path.exists():  # the daemon has not created it yet
            return []
        with contextlib.closing(sqlite3.connect(self.config.daemon.db_path)) as db:
            query = "SELECT id, state, error, number, comment_id, source FROM tasks ORDER BY id"
            try:
                return [TaskRow(*row) for row in db.execute(query).fetchall()]
            except sqlite3.OperationalError:  # file created, schema not migrated yet
                return []

    def integrity(self) -> str:
        with contextlib.closing(sqlite3.connect(self.config.daemon.db_path)) as db:
            return str(db.execute("PRAGMA integrity_check").fetchone()[0])

    async def settle(self, limit: float = 90) -> list[TaskRow]:
        """The final clean run: every mention has a task, every task has finished and
        every task on a thread shows its final report (posted after the state is final)."""
        await self.start()

        def settled() -> list[TaskRow] | None:
            rows = self.rows()
            seen = {row.comment_id for row in rows}
            if not set(self.mentions) <= seen or not all(row.state in FINISHED for row in rows):
                return None
            reports = self.final_reports({row.number for row in rows if row.number is not None})
            threaded = [row.id for row in rows if row.number is not None]
            return rows if all(reports[task_id] for task_id in threaded) else None

        return await wait_until(
            settled,
            timeout=limit,
            interval=0.3,
            what="every accepted trigger to finish and be reported",
            details=lambda: "\n".join(map(str, self.rows())),
        )

    def tracking_comments(self, numbers: set[int]) -> Counter[int]:
        """How many comments on Forgejo carry each task's marker."""
        markers: Counter[int] = Counter()
        for number in numbers:
            for comment in self.sim.comments(REPO, number):
                task_id = find_marker(comment.body)
                if task_id is not None and comment.user == self.agent:
                    markers[task_id] += 1
        return markers

    def final_reports(self, numbers: set[int]) -> Counter[int]:
        """How many of each task's tracking comments are past queued and working."""
        final: Counter[int] = Counter()
        for number in numbers:
            for comment in self.sim.comments(REPO, number):
                task_id = find_marker(comment.body)
                if task_id is not None and comment.user == self.agent:
                    final[task_id] += not any(word in comment.body for word in UNFINISHED)
        return final


async def claude_processes(docker: aiodocker.Docker, name: str) -> dict[str, str]:
    """pid → command line of each fake claude process alive in the agent's container."""
    try:
        top = await (await docker.containers.get(name)).top()  # ps -ef
    except aiodocker.DockerError:  # not created yet, or not running
        return {}
    pid, args = top["Titles"].index("PID"), len(top["Titles"]) - 1
    return {p[pid]: p[args] for p in top.get("Processes") or [] if "claude" in p[args]}
