"""The daemon's life cycle, as systemd drives it: a real `claude-hooks run` process.

Forgejo is the simulator (in this test process), tasks run in real Docker with the
scripted fake claude; signals are real signals to the subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import pytest

from claude_hooks.config import Config
from claude_hooks.daemon.main import EXIT_CONFIG, EXIT_CRASHED, EXIT_STORE
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.runner.containers import INSTANCE_LABEL, instance_labels
from claude_hooks.tasks import TaskState
from tests.fakes.configs import ConfigFactory
from tests.fakes.docker import AGENT_UID
from tests.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = "acme/app"
DEV_TOKEN = "forgejo-token-of-dev-0123456789"
# Each test has its own agent (and so its own container, removed by name afterwards):
# the daemon under test labels its containers as production does, without test labels.
AGENT = f"dev{uuid.uuid4().hex[:6]}"


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    config: Config
    log: Path

    async def stop(self, sig: signal.Signals = signal.SIGTERM, limit: float = 30) -> int:
        self.process.send_signal(sig)
        async with asyncio.timeout(limit):
            return await self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(factory: ConfigFactory, sim: ForgejoSim, image: str, **daemon: object) -> Config:
    sim.add_user("alice", token="forgejo-token-of-alice-0123456789")
    sim.add_user(AGENT, token=DEV_TOKEN)
    sim.add_repo(REPO, collaborators={"alice": "write", AGENT: "admin"})
    creds = factory.secret("dev-creds.json", '{"claudeAiOauth": {"accessToken": "oauth-x-1"}}')
    os.chown(creds, AGENT_UID, AGENT_UID)
    agent = factory.agent(
        AGENT, token_file=str(factory.secret("dev-token", DEV_TOKEN)),
        credentials_file=str(creds), image=image, network="none", checkout=False,
        timeout=120,
    )  # fmt: skip
    return factory.load(
        forgejo={"url": sim.base_url},
        daemon={"poll_interval": 0.3, "drain_timeout": 5, "log_format": "json", **daemon},
        api={
            "listen": f"127.0.0.1:{free_port()}",
            "token_file": str(factory.secret("api-token", "api-token-0123456789")),
        },
        agents=[agent],
    )


@pytest.fixture
async def daemons(docker: aiodocker.Docker) -> AsyncIterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.returncode is None:
            daemon.process.kill()
            await daemon.process.wait()
    for agent in started[0].config.agents if started else ():
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.containers.get(agent.container_name)).delete(force=True)
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.volumes.get(agent.volume_name)).delete()


async def start_daemon(
    config: Config, daemons: list[Daemon], env: dict[str, str] | None = None
) -> Daemon:
    log = config.path.parent / f"daemon-{len(daemons)}.log"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "claude_hooks", "run", "--config", str(config.path),
        stdout=log.open("wb"), stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    daemon = Daemon(process, config, log)
    daemons.append(daemon)
    return daemon


def task_rows(config: Config) -> list[tuple[int, str, int, str | None]]:
    with sqlite3.connect(config.daemon.db_path) as db:
        return db.execute("SELECT id, state, attempts, error FROM tasks ORDER BY id").fetchall()


async def wait_for_state(
    config: Config, state: TaskState, limit: float = 30, daemon: Daemon | None = None
) -> None:
    await wait_until(
        lambda: any(row[1] == state for row in _rows_or_empty(config)),
        timeout=limit,
        interval=0.1,
        what=f"a task {state}",
        details=lambda: f"{_rows_or_empty(config)}\n{daemon.output()[-4000:] if daemon else ''}",
    )


async def wait_for_event(config: Config, kind: str, daemon: Daemon, limit: float = 30) -> None:
    def stored() -> bool:
        query = "SELECT count(*) FROM task_events WHERE type = ?"
        with (
            contextlib.suppress(sqlite3.OperationalError),  # no store yet
            sqlite3.connect(config.daemon.db_path) as db,
        ):
            return bool(db.execute(query, (kind,)).fetchone()[0])
        return False

    await wait_until(
        stored,
        timeout=limit,
        interval=0.1,
        what=f"a stored {kind} event",
        details=lambda: daemon.output()[-4000:],
    )


def _rows_or_empty(config: Config) -> list[tuple[int, str, int, str | None]]:
    try:
        return task_rows(config)
    except sqlite3.OperationalError:  # the daemon has not created the store yet
        return []


@pytest.fixture
def setup(forgejo_sim: ForgejoSim, config_factory: ConfigFactory, test_image: str):
    def make(**daemon: object) -> Config:
        return write_config(config_factory, forgejo_sim, test_image, **daemon)

    return make


def mention(sim: ForgejoSim, directive: str) -> int:
    number = sim.create_issue(REPO, "alice", "Work", "Please work.")
    sim.add_comment(REPO, number, "alice", f"@{AGENT} go\n\nfake-claude: {directive}")
    return number


async def test_systemd_sees_ready_status_and_stopping_in_order(
    setup,
    daemons: list[Daemon],
    tmp_path: Path,
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    daemon = await start_daemon(setup(), daemons, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    messages: list[str] = []

    async def receive_until(word: str) -> None:
        async with asyncio.timeout(20):
            while not any(word in m for m in messages):
                messages.append((await loop.sock_recv(sock, 4096)).decode())

    await receive_until("READY=1")
    code = await daemon.stop(signal.SIGTERM)
    await receive_until("STOPPING=1")
    sock.close()
    flat = "\n".join(messages)
    assert flat.index("READY=1") < flat.index("STATUS=") < flat.index("STOPPING=1")
    assert "0 running, 0 queued" in flat
    assert code == 0, daemon.output()


async def test_sighup_is_logged_and_does_not_stop_the_daemon(
    setup,
    daemons: list[Daemon],
) -> None:
    config = setup()
    daemon = await start_daemon(config, daemons)
    await wait_for_ready(config, daemon)  # the signal handlers are in place by then
    daemon.process.send_signal(signal.SIGHUP)
    await wait_until(lambda: "sighup_ignored" in daemon.output(), details=daemon.output)
    assert daemon.process.returncode is None
    assert await daemon.stop() == 0
    assert "sighup_ignored" in daemon.output()


async def test_drain_lets_a_running_task_finish_then_exits_clean(
    setup,
    daemons: list[Daemon],
    forgejo_sim: ForgejoSim,
) -> None:
    config = setup()
    daemon = await start_daemon(config, daemons)
    mention(forgejo_sim, "delay=0.5")  # six lines half a second apart: a 3 s run
    await wait_for_state(config, TaskState.RUNNING)
    assert await daemon.stop() == 0, daemon.output()
    assert [row[1] for row in task_rows(config)] == ["succeeded"]


async def test_drain_deadline_interrupts_a_task_that_does_not_finish(
    setup,
    daemons: list[Daemon],
    forgejo_sim: ForgejoSim,
) -> None:
    config = setup(drain_timeout=2)
    daemon = await start_daemon(config, daemons)
    mention(forgejo_sim, "hang=1")
    await wait_for_state(config, TaskState.RUNNING)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    # Asked to stop and drained as designed: a success for systemd, not `failed` (#17).
    assert await daemon.stop(limit=20) == 0, daemon.output()
    assert loop.time() - asked < 2 + 10 + 3  # drain_timeout + stop grace + bookkeeping
    rows = task_rows(config)
    assert [row[1] for row in rows] == ["interrupted"]
    events = [json.loads(line) for line in daemon.output().splitlines() if line[:1] == "{"]
    stopped = [e for e in events if e["event"] == "daemon_stopped"]
    assert [(e["clean"], e["resume"]) for e in stopped] == [(False, [rows[0][0]])]


async def test_a_crash_is_logged_as_an_error_with_its_traceback_and_exits_1(
    setup, daemons: list[Daemon]
) -> None:
    """Python's own traceback would reach the journal at info: `-p warning` would hide it."""
    config = setup()
    config.daemon.state_dir.parent.mkdir(parents=True, exist_ok=True)
    config.daemon.state_dir.write_text("")  # a file where the state directory belongs
    daemon = await start_daemon(config, daemons)
    async with asyncio.timeout(30):
        code = await daemon.process.wait()
    assert code == EXIT_CRASHED, daemon.output()
    events = json_events(daemon)
    crashed = [e for e in events if e["event"] == "daemon_crashed"]
    assert len(crashed) == 1 and crashed[0]["level"] == "error", daemon.output()
    assert "Traceback" in crashed[0]["exception"] and "FileExistsError" in crashed[0]["exception"]


def json_events(daemon: Daemon) -> list[dict[str, object]]:
    return [json.loads(line) for line in daemon.output().splitlines() if line[:1] == "{"]


def start_failure(daemon: Daemon) -> str:
    """The one `daemon_start_failed` line's words; no traceback anywhere in the output."""
    assert "Traceback" not in daemon.output(), daemon.output()
    failed = [e for e in json_events(daemon) if e["event"] == "daemon_start_failed"]
    assert len(failed) == 1 and failed[0]["level"] == "error", daemon.output()
    assert "\n" not in str(failed[0]["error"])
    return str(failed[0]["error"])


def other_instance(first: Config, root: Path, *, listen: str, forgejo_url: str) -> Config:
    """The same agents (names, images, files) under another state dir: a second instance."""
    table = tomllib.loads(first.path.read_text())
    factory = ConfigFactory(root)
    root.mkdir(parents=True, exist_ok=True)
    return factory.load(
        forgejo={**table["forgejo"], "url": forgejo_url},
        daemon=table["daemon"] | {"state_dir": str(root / "state")},
        api={**table["api"], "listen": listen},
        agents=table["agents"],
    )


async def test_a_second_daemon_on_the_same_state_dir_is_refused_and_the_first_ones_task_succeeds(
    setup, daemons: list[Daemon], forgejo_sim: ForgejoSim
) -> None:
    """#16 §2: it used to SIGTERM the first one's claude (`kill_strays`), then die on the
    port with a traceback, and the first one's task failed "claude exited 143"."""
    config = setup()
    first = await start_daemon(config, daemons)
    mention(forgejo_sim, "delay=2")  # a 12 s run
    await wait_for_event(config, "tool_use", daemon=first)  # claude is mid-run
    second = await start_daemon(config, daemons)  # `claude-hooks run` typed in a shell
    async with asyncio.timeout(30):
        code = await second.process.wait()
    assert code == EXIT_STORE, second.output()
    said = start_failure(second)
    assert f"pid {first.process.pid}" in said and str(config.daemon.state_dir) in said, said
    assert "stray_processes" not in second.output()
    assert [row[1] for row in task_rows(config)] == ["running"]  # nothing recovered under it
    await wait_for_state(config, TaskState.SUCCEEDED, limit=40, daemon=first)
    assert await first.stop() == 0, first.output()
    [(_, state, attempts, error)] = task_rows(config)
    assert (state, attempts, error) == ("succeeded", 1, None)


async def test_a_port_in_use_is_said_in_words_before_anything_is_touched(
    setup, daemons: list[Daemon], forgejo_sim: ForgejoSim, tmp_path: Path
) -> None:
    """Another state dir (so no lock stops it) and the first daemon's port: it used to
    kill the first one's claude in their shared-named container, then crash on the port."""
    config = setup()
    first = await start_daemon(config, daemons)
    mention(forgejo_sim, "delay=2")
    await wait_for_event(config, "tool_use", daemon=first)
    clash = other_instance(
        config, tmp_path / "other", listen=config.api.listen, forgejo_url=forgejo_sim.base_url
    )
    second = await start_daemon(clash, daemons)
    async with asyncio.timeout(30):
        code = await second.process.wait()
    assert code == EXIT_CONFIG, second.output()
    said = start_failure(second)
    assert f"api.listen = '{config.api.listen}'" in said and "in use" in said, said
    assert "stray_processes" not in second.output()
    await wait_for_state(config, TaskState.SUCCEEDED, limit=40, daemon=first)
    assert await first.stop() == 0, first.output()
    assert [row[1:] for row in task_rows(config)] == [("succeeded", 1, None)]


async def test_another_instance_with_the_same_agent_names_leaves_the_container_alone(
    setup, daemons: list[Daemon], forgejo_sim: ForgejoSim, docker: aiodocker.Docker, tmp_path: Path
) -> None:
    """Another state dir on the same engine: it used to kill the first one's claude as a
    stray and recreate its container ("config changed") for a task of its own."""
    config = setup()
    first = await start_daemon(config, daemons)
    mention(forgejo_sim, "delay=3")  # an 18 s run
    await wait_for_event(config, "tool_use", daemon=first)
    container = await docker.containers.get(config.agents[0].container_name)
    # The same Forgejo account: the first daemon has marked the mention read already.
    other = other_instance(
        config, tmp_path / "other", listen=f"127.0.0.1:{free_port()}",
        forgejo_url=forgejo_sim.base_url,
    )  # fmt: skip
    second = await start_daemon(other, daemons)
    await wait_for_ready(other, second)
    # The API answers before housekeeping ends: wait for the refusal itself.
    refused = await wait_until(
        lambda: [e for e in json_events(second) if e["event"] == "container_refused"],
        timeout=20,
        what="the other instance's container to be refused",
    )
    theirs = instance_labels(config.daemon.state_dir)[INSTANCE_LABEL]
    assert len(refused) == 1, second.output()
    assert config.agents[0].container_name in str(refused[0]["error"])
    assert theirs in str(refused[0]["error"]), refused
    code, out = await run_cli(
        other, "submit", "--agent", AGENT, "--repo", REPO, "--wait", "say hello"
    )
    assert code != 0, out
    [(_, state, _, error)] = task_rows(other)
    assert state == "failed" and error and "belongs to another claude-hooks instance" in error
    assert [row[1] for row in task_rows(config)] == ["running"]  # still, after all that
    assert await second.stop() == 0, second.output()
    assert "stray_processes" not in second.output() and "container_recreate" not in second.output()
    await wait_for_state(config, TaskState.SUCCEEDED, limit=40, daemon=first)
    assert await first.stop() == 0, first.output()
    assert [row[1:] for row in task_rows(config)] == [("succeeded", 1, None)]
    after = await docker.containers.get(config.agents[0].container_name)
    assert after.id == container.id  # neither recreated nor replaced


async def test_a_store_that_will_not_open_exits_with_its_own_code(
    setup, daemons: list[Daemon]
) -> None:
    config = setup()
    config.daemon.db_path.mkdir(parents=True)  # a directory where the database file belongs
    daemon = await start_daemon(config, daemons)
    async with asyncio.timeout(30):
        code = await daemon.process.wait()
    assert code == EXIT_STORE, daemon.output()
    assert code not in (0, 1, 2)  # not a clean stop, a crash (traceback) or a config error
    assert "daemon_start_failed" in daemon.output()


async def test_restart_after_sigkill_reruns_the_interrupted_task_exactly_once(
    setup,
    daemons: list[Daemon],
    forgejo_sim: ForgejoSim,
) -> None:
    config = setup()
    first = await start_daemon(config, daemons)
    mention(forgejo_sim, "hang-once=1")
    await wait_for_event(config, "tool_use", daemon=first)  # claude is mid-run, hanging
    await first.stop(signal.SIGKILL)

    second = await start_daemon(config, daemons)
    await wait_for_state(config, TaskState.SUCCEEDED, limit=40, daemon=second)
    assert await second.stop() == 0, second.output()
    rows = task_rows(config)
    assert len(rows) == 1
    assert rows[0][1] == "succeeded" and rows[0][2] == 2  # one crash, one re-run


async def run_cli(config: Config, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "claude_hooks", *args, "--config", str(config.path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def test_cli_submit_wait_and_logs_follow_a_task_on_a_running_daemon(
    setup,
    daemons: list[Daemon],
) -> None:
    config = setup()
    daemon = await start_daemon(config, daemons)
    await wait_for_ready(config, daemon)
    code, out = await run_cli(config, "submit", "--agent", AGENT, "--repo", REPO, "--wait",
                              "say hello")  # fmt: skip
    assert code == 0, out + daemon.output()[-3000:]
    task_id = next(int(word) for word in out.split() if word.isdigit())
    code, logs = await run_cli(config, "logs", str(task_id), "-f")
    assert code == 0, logs
    assert "Bash" in logs and "$0.0382" in logs  # the tool call and the final cost
    assert await daemon.stop() == 0


async def wait_for_ready(config: Config, daemon: Daemon) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def healthy() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{config.api.base_url}/healthz") as response:
                    return response.status == 200
            return False

        await wait_until(
            healthy,
            timeout=20,
            interval=0.1,
            what="/healthz to answer 200",
            details=lambda: daemon.output()[-4000:],
        )


async def test_the_demo_and_the_cli_still_work_beside_a_running_daemon(
    setup, daemons: list[Daemon], forgejo_sim: ForgejoSim
) -> None:
    """The lock is the daemon's alone: the demo has a state dir of its own, the CLI reads
    through the API (no command opens the store)."""
    config = setup()
    daemon = await start_daemon(config, daemons)
    mention(forgejo_sim, "delay=1")
    await wait_for_state(config, TaskState.RUNNING, daemon=daemon)
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "claude_hooks", "demo",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(120):
        out, _ = await demo.communicate()
    assert demo.returncode == 0 and "Issue #1 was closed by the team" in out.decode(), out.decode()
    code, listed = await run_cli(config, "tasks")
    assert code == 0 and REPO in listed, listed
    code, checked = await run_cli(config, "check", "--offline")
    assert code == 0, checked
    await wait_for_state(config, TaskState.SUCCEEDED, limit=40, daemon=daemon)
    assert await daemon.stop() == 0, daemon.output()
