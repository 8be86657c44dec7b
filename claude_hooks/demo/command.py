"""`claude-hooks demo`: the real daemon and its agent team against a Forgejo simulator.

A newcomer sees what the product does in well under a minute: alice mentions
demo-dev on an issue; demo-dev opens a pull request and asks demo-reviewer for a
review; the reviewer asks for a change on a line; demo-dev fixes it by itself and
asks again; the reviewer approves; demo-lead merges and the issue closes. Every
step is the daemon's own code (webhooks, polling, the store, the scheduler, the
agents' Docker containers, real git over HTTP); only Claude is scripted
(demo/team.py), and a scripted CI reports success on each new head. Everything
runs on 127.0.0.1 and is removed at the end; `--stay` keeps it up for a look at
the status page.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiodocker

from claude_hooks.cli.main import AddCommand
from claude_hooks.config import DEFAULT_AGENT_UID, Config, load_config
from claude_hooks.daemon.services import Services
from claude_hooks.demo.host_image import (
    HOST_USR_MOUNT,
    HostImageError,
    ensure_host_image,
    host_problem,
)
from claude_hooks.demo.local_runtime import LocalRuntime
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.demo.team import (
    AGENTS,
    CI_CONTEXT,
    HUMAN,
    ISSUE_BODY,
    ISSUE_TITLE,
    MENTION,
    REPO,
    team_agents,
    write_team_claude,
)
from claude_hooks.demo.toml import toml_table
from claude_hooks.runner.runtime import AgentRuntime
from claude_hooks.tasks import Task, TaskState

DEMO_IMAGE = "claude-hooks-demo-host:latest"
DEMO_LABELS = {"claude-hooks.demo": "1"}
TEAM_CLAUDE_IN_CONTAINER = "/opt/demo/claude"
FINISHED_WITHIN = 60.0

Say = Callable[[str], None]


def register(add: AddCommand) -> None:
    parser = add("demo", cmd_demo, "watch the agent team close an issue (local simulator)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the demo's files (config, store) afterwards"
    )
    parser.add_argument(
        "--stay",
        action="store_true",
        help="keep the simulator and the daemon up afterwards (the status page), until Ctrl-C",
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from claude_hooks.daemon.log import setup_logging

    setup_logging("console", args.log_level or "warning")
    return asyncio.run(run_demo(sys.stdout, keep=args.keep, stay=args.stay))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_secret(path: Path, value: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    os.chmod(path, 0o600)
    return path


def demo_config(
    root: Path, forgejo_url: str, tokens: dict[str, str], *, image: str, local: bool
) -> Config:
    """A real config file, as an operator would write it, pointing at the simulator."""
    creds = write_secret(root / "credentials.json", '{"claudeAiOauth": {"accessToken": "demo"}}')
    if os.geteuid() == 0:
        os.chown(creds, DEFAULT_AGENT_UID, DEFAULT_AGENT_UID)  # readable by the image's agent user
    script = write_team_claude(root / "team")
    claude = str(script) if local else TEAM_CLAUDE_IN_CONTAINER
    mounts = [] if local else [HOST_USR_MOUNT, f"{script}:{TEAM_CLAUDE_IN_CONTAINER}:ro"]
    agent_tokens = {name: write_secret(root / f"token-{name}", tokens[name]) for name in AGENTS}
    agents = team_agents(
        image=image, mounts=mounts, claude=claude, tokens=agent_tokens, credentials=creds
    )
    text = toml_table(
        "[forgejo]",
        {
            "url": forgejo_url,
            "repositories": [REPO],
            "webhook_secret_file": str(write_secret(root / "webhook-secret", tokens["webhook"])),
        },
    )
    text += toml_table(
        "[daemon]",
        {"state_dir": str(root / "state"), "poll_interval": 1, "drain_timeout": 5},
    )
    text += toml_table(
        "[api]",
        {
            "listen": f"127.0.0.1:{free_port()}",
            "token_file": str(write_secret(root / "api-token", tokens["api"])),
        },
    )
    text += "".join(toml_table("[[agents]]", agent) for agent in agents)
    path = root / "config.toml"
    path.write_text(text)
    return load_config(path)


@asynccontextmanager
async def simulator(tokens: dict[str, str]) -> AsyncIterator[ForgejoSim]:
    sim = ForgejoSim()
    await sim.start()
    try:
        sim.add_user(HUMAN, token=tokens[HUMAN])
        for agent in AGENTS:
            sim.add_user(agent, token=tokens[agent])
        # The agents are repository admins so that they may ask who has write access.
        collaborators = {HUMAN: "write"} | dict.fromkeys(AGENTS, "admin")
        sim.add_repo(REPO, collaborators=collaborators)
        sim.commit_file(REPO, "main", "README.md", "# hello\n", "Initial commit", HUMAN)
        yield sim
    finally:
        await sim.stop()


async def run_demo(out: TextIO, *, keep: bool = False, stay: bool = False) -> int:
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    root = Path(tempfile.mkdtemp(prefix="claude-hooks-demo-"))
    tokens = {name: secrets.token_hex(16) for name in (HUMAN, *AGENTS, "api", "webhook")}
    try:
        await _remove_demo_containers()  # what an interrupted demo may have left
        local = not await _image_ready(say)
        runtime = LocalRuntime(root / "agent-state") if local else None
        async with simulator(tokens) as sim:
            config = demo_config(root, sim.base_url, tokens, image=DEMO_IMAGE, local=local)
            return await _play(sim, config, say, runtime, stay=stay, api_token=tokens["api"])
    finally:
        await _remove_demo_containers()
        if keep:
            say(f"kept: {root} (config.toml, state/claude-hooks.sqlite3)")
        else:
            shutil.rmtree(root, ignore_errors=True)


async def _image_ready(say: Say) -> bool:
    problem = host_problem()
    if problem is not None:
        say(f"This host's userland cannot be lent to the agents' containers ({problem}).")
    else:
        try:
            async with aiodocker.Docker() as docker:
                await docker.version()
                say(f"Docker engine reachable: building the agents' image {DEMO_IMAGE} …")
                await ensure_host_image(docker, DEMO_IMAGE)
            return True
        except (HostImageError, aiodocker.DockerError, OSError, ValueError) as exc:
            say(f"No Docker here ({exc}).")
    say("Running the scripted agents as local processes instead: the daemon runs agents")
    say("in Docker containers, so start an engine to see the real thing.")
    return False


async def _play(
    sim: ForgejoSim,
    config: Config,
    say: Say,
    runtime: AgentRuntime | None,
    *,
    stay: bool,
    api_token: str,
) -> int:
    async with Services.running(
        config, daemon_id=f"demo-{os.getpid()}", extra_labels=DEMO_LABELS, runtime=runtime
    ) as services:
        sim.add_webhook(
            f"{config.api.base_url}/hooks/forgejo",
            secret=(config.forgejo.webhook_secret_file or Path()).read_text().strip(),
        )
        say(f"Forgejo simulator on {sim.base_url}; daemon API on {config.api.base_url}")
        number = sim.create_issue(REPO, HUMAN, ISSUE_TITLE, ISSUE_BODY)
        watch = Watch(sim, services, number, say)
        sim.add_comment(REPO, number, HUMAN, MENTION)
        say(f"\n{watch.at()}  {HUMAN} on {REPO}#{number}: {MENTION!r}")
        closed = await watch.until_closed(FINISHED_WITHIN)
        if closed:
            said = sum(c.user == HUMAN for i in sim.state.issues.values()
                       for c in sim.comments(REPO, i.number))  # fmt: skip
            say(f"\nIssue #{number} was closed by the team; {HUMAN} wrote {said} comment(s).")
            _next_steps(say)
        else:
            say(f"\nThe flow did not finish within {FINISHED_WITHIN:g}s: run with --log-level info")
        if stay:
            await _stay(config, api_token, say)
        return 0 if closed else 1


@dataclass
class Watch:
    """Prints each step of the flow as it happens: tasks, the pull request, its reviews,
    CI and the merge. Also plays CI: a success status on every new head."""

    sim: ForgejoSim
    services: Services
    number: int
    say: Say
    started: float = field(default_factory=time.monotonic)
    states: dict[int, str] = field(default_factory=dict)
    heads: dict[int, str] = field(default_factory=dict)
    reviews: set[int] = field(default_factory=set)
    merged: set[int] = field(default_factory=set)

    def at(self) -> str:
        return f"{time.monotonic() - self.started:6.2f}s"

    async def until_closed(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            await self._tasks()
            self._pulls()
            if self.sim.issue(REPO, self.number).state == "closed":
                return await self._all_ended(deadline)  # the lead's task ends after its merge
            await asyncio.sleep(0.05)  # a demo's pace, not a test's wait
        return False

    async def _all_ended(self, deadline: float) -> bool:
        """Once the issue is closed: show the tasks until every one has ended."""
        while time.monotonic() < deadline:
            await self._tasks()
            if all(TaskState(state).is_final for state in self.states.values()):
                return True
            await asyncio.sleep(0.05)  # a demo's pace, not a test's wait
        return False

    async def _tasks(self) -> None:
        for task in sorted(await self.services.store.list_tasks(limit=50), key=lambda t: t.id):
            if self.states.get(task.id) != task.state:
                self.states[task.id] = task.state
                self.say(f"{self.at()}  {_task_line(task)}")

    def _pulls(self) -> None:
        for issue in self.sim.state.issues.values():
            pull = issue.pull
            if pull is None:
                continue
            if issue.number not in self.heads:
                self.say(f"{self.at()}  PR #{issue.number} opened by {issue.user}: {issue.title!r}")
            if self.heads.get(issue.number) != pull.head_sha and not pull.merged:
                self.heads[issue.number] = pull.head_sha
                self.sim.set_status(REPO, pull.head_sha, "success", CI_CONTEXT, creator=HUMAN)
                self.say(f"{self.at()}  CI: success on {pull.head_sha[:10]} ({CI_CONTEXT})")
            for review in self.sim.reviews(REPO, issue.number):
                if review.id in self.reviews or review.state == "PENDING":
                    continue
                self.reviews.add(review.id)
                if review.state == "REQUEST_REVIEW":
                    self.say(f"{self.at()}  review requested from {review.user}")
                    continue
                lines = self.sim.review_comments(review.id)
                where = "".join(f"; on {c.path}:{c.new_position}" for c in lines)
                self.say(f"{self.at()}  {review.user} reviewed: {review.state}{where}")
            if pull.merged and issue.number not in self.merged:
                self.merged.add(issue.number)
                gone = pull.head_ref not in self.sim.state.repos[issue.repo].branches
                deleted = ", branch deleted" if gone else ""
                self.say(f"{self.at()}  PR #{issue.number} merged by {pull.merged_by}{deleted}")


def _task_line(task: Task) -> str:
    spec = task.spec
    text = f"task {task.id} ({spec.agent}, {spec.kind}): {task.state}"
    if task.state.is_final and task.error:
        text += f" — {task.error}"
    return text


async def _stay(config: Config, api_token: str, say: Say) -> None:
    say(f"\nStatus page: {config.api.base_url}/   token: {api_token}")
    say("The simulator and the daemon stay up until Ctrl-C.")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _next_steps(say: Say) -> None:
    say("To go further:")
    say("  cp deploy/config.example.toml ~/.config/claude-hooks/config.toml   # then edit it")
    say("  claude-hooks check                                      # validates it, reaches Forgejo")
    say("  just image && just install                              # agent image + systemd unit")
    say("  journalctl --user -u claude-hooks -f -o cat             # watch it work")


async def _remove_demo_containers() -> None:
    try:
        async with aiodocker.Docker() as docker:
            selector = [f"{k}={v}" for k, v in DEMO_LABELS.items()]
            for container in await docker.containers.list(
                all=True, filters=json.dumps({"label": selector})
            ):
                await container.delete(force=True)
            for agent in AGENTS:
                try:
                    volume = await docker.volumes.get(f"claude-hooks-{agent}-state")
                    await volume.delete()
                except aiodocker.DockerError:
                    pass
    except (aiodocker.DockerError, OSError, ValueError):
        pass  # nothing was created without an engine
