"""`claude-hooks demo`: the real daemon against a Forgejo simulator, on 127.0.0.1 only.

A newcomer sees what the product does in under a minute: alice mentions the agent
on an issue, the webhook arrives, the agent acknowledges with 👀 and a tracking
comment, Claude (here a scripted stand-in that replays a recorded run) works in
the agent's Docker container, and the result lands on the issue. Nothing touches
a real Forgejo; the demo's container, volume and files are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TextIO

import aiodocker

from claude_hooks.cli.main import AddCommand
from claude_hooks.config import DEFAULT_AGENT_UID, Config, load_config
from claude_hooks.daemon.services import Services
from claude_hooks.demo.agent_image import ImageBuildError, ensure_image
from claude_hooks.demo.local_runtime import LocalRuntime
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.runner.runtime import AgentRuntime
from claude_hooks.tasks import Task, TaskState
from claude_hooks.text import find_marker

DEMO_IMAGE = "claude-hooks-demo:latest"
DEMO_LABELS = {"claude-hooks.demo": "1"}
AGENT = "demo-dev"  # not "dev": never touch an operator's real claude-hooks-dev container
HUMAN = "alice"
REPO = "demo/hello"
MENTION = f"@{AGENT} please add a friendly greeting to the README."
FINISHED_WITHIN = 60.0

Say = Callable[[str], None]


def register(add: AddCommand) -> None:
    parser = add("demo", cmd_demo, "watch a mention become a finished task (local simulator)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the demo's files (config, store) afterwards"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from claude_hooks.daemon.log import setup_logging

    setup_logging("console", args.log_level or "warning")
    return asyncio.run(run_demo(sys.stdout, keep=args.keep))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_secret(path: Path, value: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    os.chmod(path, 0o600)
    return path


def demo_config(root: Path, forgejo_url: str, tokens: dict[str, str]) -> Config:
    """A real config file, as an operator would write it, pointing at the simulator."""
    creds = write_secret(root / "credentials.json", '{"claudeAiOauth": {"accessToken": "demo"}}')
    if os.geteuid() == 0:
        os.chown(creds, DEFAULT_AGENT_UID, DEFAULT_AGENT_UID)  # readable by the image's agent user
    text = f"""
[forgejo]
url = "{forgejo_url}"
repositories = ["{REPO}"]
webhook_secret_file = "{write_secret(root / "webhook-secret", tokens["webhook"])}"

[daemon]
state_dir = "{root / "state"}"
poll_interval = 2
drain_timeout = 5
log_level = "warning"

[api]
listen = "127.0.0.1:{free_port()}"
token_file = "{write_secret(root / "api-token", tokens["api"])}"

[[agents]]
name = "{AGENT}"
role = "dev"
token_file = "{write_secret(root / "agent-token", tokens[AGENT])}"
credentials_file = "{creds}"
image = "{DEMO_IMAGE}"
network = "none"
checkout = false
timeout = "2m"
"""
    path = root / "config.toml"
    path.write_text(text)
    return load_config(path)


@asynccontextmanager
async def simulator(tokens: dict[str, str]) -> AsyncIterator[ForgejoSim]:
    sim = ForgejoSim()
    await sim.start()
    try:
        sim.add_user(HUMAN, token=tokens[HUMAN])
        sim.add_user(AGENT, token=tokens[AGENT])
        # The agent is a repository admin so that it may ask who has write access.
        sim.add_repo(REPO, collaborators={HUMAN: "write", AGENT: "admin"})
        yield sim
    finally:
        await sim.stop()


async def run_demo(out: TextIO, *, keep: bool = False) -> int:
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    root = Path(tempfile.mkdtemp(prefix="claude-hooks-demo-"))
    tokens = {name: secrets.token_hex(16) for name in (HUMAN, AGENT, "api", "webhook")}
    try:
        runtime = None if await _image_ready(say) else LocalRuntime(root / "agent-state")
        async with simulator(tokens) as sim:
            config = demo_config(root, sim.base_url, tokens)
            return await _play(sim, config, say, runtime)
    finally:
        await _remove_demo_containers()
        if keep:
            say(f"kept: {root} (config.toml, state/claude-hooks.sqlite3)")
        else:
            shutil.rmtree(root, ignore_errors=True)


async def _image_ready(say: Say) -> bool:
    try:
        async with aiodocker.Docker() as docker:
            await docker.version()
            say(f"Docker engine reachable: building the scripted agent image {DEMO_IMAGE} …")
            await ensure_image(docker, DEMO_IMAGE)
    except (ImageBuildError, aiodocker.DockerError, OSError, ValueError) as exc:
        say(f"No Docker here ({exc}).")
        say("Running the scripted agent as a local process instead: the daemon runs agents")
        say("in Docker containers, so start an engine to see the real thing.")
        return False
    return True


async def _play(sim: ForgejoSim, config: Config, say: Say, runtime: AgentRuntime | None) -> int:
    async with Services.running(
        config, daemon_id=f"demo-{os.getpid()}", extra_labels=DEMO_LABELS, runtime=runtime
    ) as services:
        sim.add_webhook(
            f"{config.api.base_url}/hooks/forgejo",
            secret=(config.forgejo.webhook_secret_file or Path()).read_text().strip(),
        )
        say(f"Forgejo simulator on {sim.base_url}; daemon API on {config.api.base_url}")
        number = sim.create_issue(REPO, HUMAN, "Greet our visitors", "The README says nothing.")
        started = time.monotonic()
        comment = sim.add_comment(REPO, number, HUMAN, MENTION)
        say(f"\n@{HUMAN} on {REPO}#{number}: {MENTION!r}")
        task = await _follow(services, sim, number, comment, started, say)
        return 0 if task is not None and task.state is TaskState.SUCCEEDED else 1


async def _follow(
    services: Services, sim: ForgejoSim, number: int, comment: int, started: float, say
) -> Task | None:
    def at() -> str:
        return f"{time.monotonic() - started:6.2f}s"

    seen_state: str | None = None
    reacted = False
    shown = 0
    deadline = time.monotonic() + FINISHED_WITHIN
    while time.monotonic() < deadline:
        if not reacted and sim.reactions(REPO, comment_id=comment):
            reacted = True
            say(f"{at()}  👀 @{AGENT} reacted to the comment")
        tasks = await services.store.list_tasks(limit=1)
        task = tasks[0] if tasks else None
        if task is not None:
            if task.state != seen_state:
                seen_state = task.state
                say(f"{at()}  task {task.id}: {task.state}")
            for event in await services.store.events(task.id, after_seq=shown):
                shown = event.seq
                if event.type != "state":
                    say(f"{at()}    {event.type:<11} {event.summary}")
            if task.state.is_final:
                await _show_comment(sim, number, task, say)
                _next_steps(task, say)
                return task
        await asyncio.sleep(0.05)
    say(f"no result within {FINISHED_WITHIN:g}s: something is wrong (run with --log-level info)")
    return None


async def _show_comment(sim: ForgejoSim, number: int, task: Task, say: Say) -> None:
    for _ in range(100):  # the final edit trails the stored result by a moment
        bodies = [c.body for c in sim.comments(REPO, number) if find_marker(c.body) == task.id]
        if bodies and ("$" in bodies[0] or "❌" in bodies[0]):
            break
        await asyncio.sleep(0.05)
    say(f"\nThe tracking comment @{AGENT} left on {REPO}#{number}:\n")
    for line in (bodies[0] if bodies else "(none)").splitlines():
        say(f"    {line}")


def _next_steps(task: Task, say: Say) -> None:
    outcome = "finished" if task.state is TaskState.SUCCEEDED else str(task.state)
    say(f"\nThe task {outcome}. To go further:")
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
            try:
                volume = await docker.volumes.get(f"claude-hooks-{AGENT}-state")
                await volume.delete()
            except aiodocker.DockerError:
                pass
    except (aiodocker.DockerError, OSError, ValueError):
        pass  # nothing was created without an engine
