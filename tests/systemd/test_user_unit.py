"""The user unit under real systemd 252 and journald, as an operator runs it (issue #17).

A Debian bookworm container boots systemd as PID 1 (tests/systemd/machine.py says what
that needs of Docker); `op` is a lingering user who installed the package with
`just install`, and starts the unit with `systemctl --user`. The daemon there polls the
Forgejo simulator of this test process over the shared loopback.

Agent runtime: the machine has no Docker engine. The host engine's socket is mounted into
it and `op` is given the socket's group, so `containers up` (the unit's ExecStartPre) and
every task drive the host's engine with the scripted stand-in for Claude
(`claude-hooks-test:latest`, claude_hooks/demo/agent_image): real containers, real
`docker exec`s, only the model is scripted. That is what the daemon does on any host with
Docker; only the engine is outside the machine. A drop-in gives the unit RestartSec=1 and
WatchdogSec=5, so restarts take seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from claude_hooks.demo.sim.forgejo import ForgejoSim
from tests.chaos.driver import free_port
from tests.fakes.configs import toml_table
from tests.fakes.docker import AGENT_UID, TEST_IMAGE
from tests.systemd.machine import (
    OP_HOME,
    OP_UID,
    UNIT,
    Machine,
    boot,
    docker_socket,
    ensure_image,
    install_for_op,
    make_op_a_lingering_docker_user,
    remove,
    unavailable,
    wheelhouse,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.systemd]

AGENT = f"sd{uuid.uuid4().hex[:6]}"
AGENT_TOKEN = f"forgejo-token-of-{AGENT}-0123456789"
API_TOKEN = "systemd-test-api-token-0123456789"
STATUS = re.compile(r"^\d+ running, \d+ queued$")


@dataclass(frozen=True)
class Rig:
    """The booted machine and the secret files it shares with the host (same paths)."""

    machine: Machine
    secrets: Path

    def config(self, sim: ForgejoSim, port: int, **agent: Any) -> str:
        """op's config, README-small: no state_dir, so the default is what is used."""
        values = {
            "name": AGENT, "token_file": str(self.secrets / "agent-token"),
            "credentials_file": str(self.secrets / "credentials.json"), "image": TEST_IMAGE,
            "network": "none", "checkout": False, "timeout": 120, "memory": "256m",
            "cpus": 0.5, "pids_limit": 128, "user": f"{AGENT_UID}:{AGENT_UID}", **agent,
        }  # fmt: skip
        return (
            toml_table("[forgejo]", {"url": sim.base_url, "repositories": ["acme/*"]})
            + toml_table("[daemon]", {"poll_interval": 0.3, "drain_timeout": 2})
            + toml_table(
                "[api]",
                {"listen": f"127.0.0.1:{port}", "token_file": str(self.secrets / "api-token")},
            )
            + toml_table("[[agents]]", values)
        )


def secret(directory: Path, name: str, value: str, owner: int) -> None:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    os.chown(path, owner, owner)


@pytest.fixture(scope="module")
def rig(test_image: str) -> Iterator[Rig]:
    if shutil.which("docker") is None:
        unavailable("no docker command")
    if os.geteuid() != 0:
        pytest.skip("needs root: the secret files belong to the machine's op and agent uids")
    socket = docker_socket()
    image, wheels = ensure_image(), wheelhouse()
    shared = Path(tempfile.mkdtemp(prefix="claude-hooks-systemd-"))
    shared.chmod(0o755)  # op traverses it, inside the machine
    secret(shared, "agent-token", AGENT_TOKEN, OP_UID)
    secret(shared, "api-token", API_TOKEN, OP_UID)
    # The daemon (op) reads the login and copies it into the agent's state volume.
    secret(shared, "credentials.json", '{"claudeAiOauth": {"accessToken": "oauth-sd-1"}}',
           OP_UID)  # fmt: skip
    mounts = {
        str(socket): "/run/docker.sock",
        str(shared): f"{shared}:ro",
        str(wheels): "/wheels:ro",
    }
    machine = boot(image, mounts)
    try:
        make_op_a_lingering_docker_user(machine, socket.stat().st_gid)
        install_for_op(machine)
        yield Rig(machine, shared)
    finally:
        remove(machine)
        subprocess.run(["docker", "rm", "-f", f"claude-hooks-{AGENT}"], capture_output=True)
        subprocess.run(["docker", "volume", "rm", f"claude-hooks-{AGENT}-state"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(shared, ignore_errors=True)


@dataclass(frozen=True)
class Deployment:
    rig: Rig
    sim: ForgejoSim
    api: str
    repo: str  # one per test: the store outlives each test's simulator and its issue numbers

    @property
    def machine(self) -> Machine:
        return self.rig.machine

    def mention(self, directive: str) -> int:
        number = self.sim.create_issue(self.repo, "alice", "Work", "Please work.")
        self.sim.add_comment(self.repo, number, "alice", f"@{AGENT} go\n\nfake-claude: {directive}")
        return number

    async def get(self, path: str, **params: str) -> Any:
        """An answer of the daemon's API; None while it does not answer."""
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            try:
                async with session.get(f"{self.api}{path}", params=params) as answer:
                    return await answer.json() if answer.status == 200 else None
            except aiohttp.ClientError:
                return None

    async def task_on(self, number: int) -> dict[str, Any] | None:
        """The task for an issue of this test's repository (None while there is none)."""
        page = await self.get("/tasks", agent=AGENT) or {"tasks": []}
        mine = (t for t in page["tasks"] if (t["repo"], t["number"]) == (self.repo, number))
        return next(mine, None)


@pytest.fixture
async def deployment(rig: Rig, forgejo_sim: ForgejoSim) -> AsyncIterator[Deployment]:
    forgejo_sim.add_user("alice", token="forgejo-token-of-alice-0123456789")
    forgejo_sim.add_user(AGENT, token=AGENT_TOKEN)
    repo = f"acme/app-{uuid.uuid4().hex[:6]}"
    forgejo_sim.add_repo(repo, collaborators={"alice": "write", AGENT: "admin"})
    port = free_port()
    await rig.machine.awrite_file(
        f"{OP_HOME}/.config/claude-hooks/config.toml", rig.config(forgejo_sim, port)
    )
    yield Deployment(rig, forgejo_sim, f"http://127.0.0.1:{port}", repo)
    await rig.machine.systemctl("stop", UNIT, check=False)
    await rig.machine.systemctl("reset-failed", UNIT, check=False)


def messages(entries: list[dict[str, Any]]) -> list[str]:
    return [str(entry.get("MESSAGE", "")) for entry in entries]


# --- the tests ----------------------------------------------------------------------------------


async def test_an_exec_start_pre_failure_shows_at_warning_priority(
    deployment: Deployment, rig: Rig
) -> None:
    machine = deployment.machine
    missing = "claude-hooks-absent:systemd-test"
    await machine.awrite_file(
        f"{OP_HOME}/.config/claude-hooks/config.toml",
        rig.config(deployment.sim, free_port(), image=missing),
    )
    since = await machine.mark()
    started = await machine.systemctl("start", UNIT, check=False)
    assert started.returncode != 0, "the start succeeded without the agent's image"

    reason = f"image {missing} is not present"

    async def said(*args: str) -> list[dict[str, Any]]:
        entries = await machine.journal(*args, after=since)
        return [entry for entry in entries if reason in str(entry.get("MESSAGE"))]

    await wait_until(
        said,
        what="ExecStartPre's line in the journal (journald reads streams as they come)",
        timeout=60,
        interval=0.3,
    )
    warnings = await machine.journal("-p", "warning", after=since)
    why = await said("-p", "warning")
    assert why, f"`journalctl -p warning` does not say why: {messages(warnings)}"
    assert {entry["PRIORITY"] for entry in why} == {"3"}
    assert any("Failed with result 'exit-code'" in m for m in messages(warnings))


async def test_start_waits_for_ready_and_a_task_s_lines_carry_its_fields(
    deployment: Deployment,
) -> None:
    machine = deployment.machine
    await machine.systemctl("start", UNIT)  # Type=notify: returns once READY=1 arrived
    shown = await machine.show("ActiveState", "SubState", "StatusText")
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running"), shown
    assert STATUS.match(shown["StatusText"]), shown
    ordering = await machine.show("After", "Wants", "Requires")
    named = {unit for value in ordering.values() for unit in value.split()}
    for unit in named:  # a system unit would be LoadState=not-found in the user manager
        loaded = await machine.systemctl("show", "-p", "LoadState", "--value", unit)
        assert loaded.stdout.strip() == "loaded", f"{UNIT} names {unit}: {loaded.stdout}"
    # README's small config has no state_dir: the store is op's, not ./~/… of the unit's cwd.
    await machine.aop("test", "-f", f"{OP_HOME}/.local/state/claude-hooks/claude-hooks.sqlite3")
    assert (await machine.aop("test", "-e", f"{OP_HOME}/~", check=False)).returncode != 0

    # Claude's run fails (max turns: a 429 would pause the agent instead)
    number = deployment.mention("scenario=max-turns-1")
    task = await wait_until(
        lambda: _finished(deployment, number),
        what="the failing task to end",
        timeout=90,
        interval=0.3,
    )
    assert task["state"] == "failed", task

    async def task_lines() -> list[dict[str, Any]]:
        entries = await machine.journal(f"TASK_ID={task['id']}")
        return entries if any(e.get("EVENT") == "task_finished" for e in entries) else []

    entries = await wait_until(
        task_lines, what="the task's lines in the journal", timeout=60, interval=0.3
    )
    assert {entry["AGENT"] for entry in entries} == {AGENT}
    events = {entry["EVENT"]: entry for entry in entries}
    assert {"task_started", "claude_started", "task_finished"} <= set(events), list(events)
    assert events["task_finished"]["PRIORITY"] == "4"  # a failed task is a warning
    assert events["task_started"]["PRIORITY"] == "6"
    assert events["task_finished"]["STATE"] == "failed"
    assert events["task_finished"]["MESSAGE"].startswith("task_finished ")
    assert events["task_finished"]["SYSLOG_IDENTIFIER"] == "claude-hooks"
    by_agent = await machine.journal(f"AGENT={AGENT}", "-p", "warning")
    assert any(entry.get("TASK_ID") == str(task["id"]) for entry in by_agent)


async def _finished(deployment: Deployment, number: int) -> dict[str, Any] | None:
    task = await deployment.task_on(number)
    return task if task and task["state"] in ("succeeded", "failed", "cancelled") else None


async def test_a_stop_that_outlives_the_drain_is_inactive_and_the_next_start_resumes(
    deployment: Deployment,
) -> None:
    machine = deployment.machine
    await machine.systemctl("start", UNIT)
    number = deployment.mention("hang-once=1")  # hangs on its first run only
    task = await wait_until(
        lambda: deployment.task_on(number), what="the task to be queued", timeout=60, interval=0.3
    )

    async def mid_run() -> bool:  # Claude used a tool, and hangs
        events = await deployment.get(f"/tasks/{task['id']}/events") or []
        return any(event["type"] == "tool_use" for event in events)

    await wait_until(mid_run, what="Claude to be mid-run", timeout=60, interval=0.3)
    since = await machine.mark()
    await machine.systemctl("stop", UNIT)  # drain_timeout = 2 s: the task is cut short
    shown = await machine.show("ActiveState", "Result", "ExecMainStatus")
    assert shown == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    stopped = await machine.journal("EVENT=daemon_stopped", after=since)
    assert [entry["RESUME"] for entry in stopped] == [f"[{task['id']}]"]

    await machine.systemctl("start", UNIT)
    done = await wait_until(
        lambda: _finished(deployment, number), what="the resumed task", timeout=90, interval=0.3
    )
    assert (done["id"], done["state"], done["attempts"]) == (task["id"], "succeeded", 2)


async def test_the_watchdog_restarts_a_stopped_daemon_and_kill_9_is_restarted(
    deployment: Deployment,
) -> None:
    machine = deployment.machine
    await machine.systemctl("start", UNIT)
    before = await machine.show("MainPID", "NRestarts")
    since = await machine.mark()

    await machine.arun("kill", "-STOP", before["MainPID"])
    after_watchdog = await wait_until(
        lambda: _restarted(machine, before),
        what="a restart after SIGSTOP",
        timeout=60,
        interval=0.3,
    )
    logged = messages(await machine.journal(after=since))
    assert any("Watchdog timeout" in m for m in logged), logged

    since = await machine.mark()
    await machine.arun("kill", "-9", after_watchdog["MainPID"])
    await wait_until(
        lambda: _restarted(machine, after_watchdog),
        what="a restart after kill -9",
        timeout=60,
        interval=0.3,
    )
    logged = messages(await machine.journal(after=since))
    assert any("status=9/KILL" in m for m in logged), logged


async def _restarted(machine: Machine, before: dict[str, str]) -> dict[str, str] | None:
    """The unit's state once it runs again under a new main process, restarted by systemd."""
    now = await machine.show("MainPID", "NRestarts", "ActiveState", "SubState")
    restarted = int(now["NRestarts"]) > int(before["NRestarts"])
    new_process = now["MainPID"] not in ("0", before["MainPID"])
    running = (now["ActiveState"], now["SubState"]) == ("active", "running")
    return now if restarted and new_process and running else None
