"""Outages around a real `claude-hooks run`: Forgejo failing, Docker gone, a read-only disk.

The daemon must stay up, say what is wrong in its log (and /readyz), and lose nothing:
work that arrives during a Forgejo outage is done after it, and results are posted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import aiohttp
import pytest
from aiodocker.containers import DockerContainer

from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.runner.containers import ANY_TASK, signal_processes
from tests.chaos.driver import REPO, ChaosDriver, TaskRow, chaos_config
from tests.fakes.configs import ConfigFactory
from tests.fakes.docker import AGENT_UID
from tests.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]

OUTAGE_BACKOFF = {"outage_backoff": 0.5}
# What a comment must never show: an exception class, a traceback, a path of the host.
LEAKS = re.compile(r"\b\w+(Error|Exception)\b|Traceback|unix://|/tmp/|/var/run|/srv/|/root/")


@pytest.fixture
async def driver(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    test_image: str,
    docker: aiodocker.Docker,
) -> AsyncIterator[ChaosDriver]:
    agent = f"out{uuid.uuid4().hex[:6]}"
    # Outages are waited out with a backoff: a short one here, so the tests take seconds.
    config = chaos_config(config_factory, forgejo_sim, test_image, agent, daemon=OUTAGE_BACKOFF)
    daemon = ChaosDriver(forgejo_sim, config, agent, random.Random(0))
    yield daemon
    await daemon.kill()
    for agent_config in config.agents:
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.containers.get(agent_config.container_name)).delete(force=True)
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.volumes.get(agent_config.volume_name)).delete()


def events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


def logged(log: Path, event: str) -> bool:
    return any(record.get("event") == event for record in events(log))


def turned_away(driver: ChaosDriver) -> int:
    """How many requests the simulated outage has answered with an injected failure."""
    return sum(request.injected for request in driver.sim.all_requests)


def finished_rows(driver: ChaosDriver) -> list[TaskRow]:
    with contextlib.suppress(Exception):
        return [row for row in driver.rows() if row.state in ("succeeded", "failed")]
    return []


def final_comment(driver: ChaosDriver, number: int) -> str:
    bodies = [c.body for c in driver.sim.comments(REPO, number) if c.user == driver.agent]
    return bodies[0] if bodies else ""


async def test_mentions_during_a_forgejo_outage_are_all_done_after_it(
    driver: ChaosDriver,
) -> None:
    log = await driver.start()
    await wait_until(lambda: logged(log, "daemon_ready"), timeout=30)
    # One poll's request and the client's 4 retries (~17 s of its backoff), then the first
    # two after the shared backoff: a stretch of 502s the daemon must wait out.
    driver.sim.fail_next(7)
    for _ in range(3):
        before = turned_away(driver)
        driver.mention()
        # Each mention lands while the daemon is being turned away, between two refusals.
        await wait_until(lambda before=before: turned_away(driver) > before, timeout=40)

    await wait_until(lambda: logged(log, "forgejo_unreachable"), timeout=40)
    await wait_until(lambda: logged(log, "forgejo_recovered"), timeout=40)
    await wait_until(lambda: len(finished_rows(driver)) == 3, timeout=60)

    assert driver.process is not None and driver.process.returncode is None
    rows = driver.rows()
    assert sorted(row.comment_id for row in rows) == sorted(driver.mentions)
    assert [row.state for row in rows] == ["succeeded"] * 3
    for row in rows:
        assert row.number is not None
        await wait_until(lambda n=row.number: "$" in final_comment(driver, n), timeout=30)
    assert await driver.stop() == 0


async def test_a_result_posted_while_forgejo_fails_is_retried_until_it_lands(
    driver: ChaosDriver,
) -> None:
    log = await driver.start()
    await wait_until(lambda: logged(log, "daemon_ready"), timeout=30)
    number = driver.sim.create_issue(REPO, "alice", "Slow", "Take your time.")
    driver.sim.add_comment(REPO, number, "alice", f"@{driver.agent} go\n\nfake-claude: delay=0.3")
    await wait_until(lambda: any(row.state == "running" for row in driver.rows()), timeout=30)
    driver.sim.fail_next(3)  # the failures land on the reports of the running task

    await wait_until(lambda: len(finished_rows(driver)) == 1, timeout=30)
    await wait_until(lambda: "$" in final_comment(driver, number), timeout=30)
    bodies = [c.body for c in driver.sim.comments(REPO, number) if c.user == driver.agent]
    assert len(bodies) == 1, bodies
    assert driver.rows()[0].state == "succeeded"
    assert await driver.stop() == 0


async def readyz(driver: ChaosDriver, limit: float = 3) -> tuple[int, dict[str, object]]:
    timeout = aiohttp.ClientTimeout(total=limit)
    url = f"{driver.config.api.base_url}/readyz"
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        return response.status, await response.json()


def agent_comments(driver: ChaosDriver, number: int) -> list[str]:
    return [c.body for c in driver.sim.comments(REPO, number) if c.user == driver.agent]


def leaked(driver: ChaosDriver) -> list[str]:
    """Comments anywhere on the simulator that show an exception's text or a host path."""
    numbers = {row.number for row in driver.rows() if row.number is not None}
    bodies = [c.body for n in numbers for c in driver.sim.comments(REPO, n)]
    return [body for body in bodies if LEAKS.search(body)]


async def test_an_unreachable_docker_engine_fails_readiness_and_the_task_waits_for_it(
    driver: ChaosDriver, tmp_path: Path
) -> None:
    # Issue 16: the task failed at once, its comment "❌ Failed: DockerError: [900] Cannot
    # connect to Docker Engine via unix://<host path> …".
    socket = tmp_path / "docker.sock"  # missing now; a link to the engine's socket later
    engine = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not engine.startswith("unix://"):
        pytest.skip(f"the engine is not on a unix socket ({engine})")
    log = await driver.start(env={"DOCKER_HOST": f"unix://{socket}"})
    await wait_until(lambda: logged(log, "daemon_ready"), timeout=30)
    status, body = await readyz(driver)
    assert status == 503 and body["checks"]["docker"] is False  # type: ignore[index]

    driver.mention()
    await wait_until(lambda: logged(log, "task_outage"), timeout=30)
    [row] = driver.rows()
    assert row.state == "queued" and row.error and "Docker is unreachable" in row.error, row
    assert row.number is not None
    await wait_until(lambda: "Docker is unreachable" in agent_comments(driver, row.number)[0])
    socket.symlink_to(engine.removeprefix("unix://"))  # the engine is back

    await wait_until(lambda: len(finished_rows(driver)) == 1, timeout=60)
    assert [r.state for r in driver.rows()] == ["succeeded"]
    await wait_until(lambda: "Done" in agent_comments(driver, row.number)[0], timeout=30)
    assert (await readyz(driver))[0] == 200
    assert leaked(driver) == []
    assert await driver.stop() == 0


async def test_a_container_stopped_under_a_run_is_waited_out_and_the_task_done(
    driver: ChaosDriver, docker: aiodocker.Docker
) -> None:
    # Issue 18's CI: a dockerd stopping on SIGTERM stops the agent's container under the
    # run first (as `docker stop` or `systemctl restart docker` do); the task failed,
    # "claude exited 137 without a result (killed)".
    log = await driver.start()
    await wait_until(lambda: logged(log, "daemon_ready"), timeout=30)
    number = driver.sim.create_issue(REPO, "alice", "Stopped", "Please work.")
    driver.sim.add_comment(REPO, number, "alice", f"@{driver.agent} go\n\nfake-claude: delay=0.5")
    name = driver.config.agents[0].container_name

    async def claude_runs() -> DockerContainer | None:
        with contextlib.suppress(aiodocker.DockerError):  # not created, or not started yet
            container = await docker.containers.get(name)
            if await signal_processes(container, "list", ANY_TASK, user=str(AGENT_UID)):
                return container
        return None

    container = await wait_until(claude_runs, timeout=30, what="claude to run in its container")
    await container.stop(t=1)

    await wait_until(lambda: len(finished_rows(driver)) == 1, timeout=60)
    assert [r.state for r in driver.rows()] == ["succeeded"]
    deferrals = [e["reason"] for e in events(log) if e.get("event") == "task_deferred"]
    assert deferrals == ["the agent's container stopped during the run, will retry (try 1 of 8)"]
    assert not logged(log, "task_leftovers_sweep_failed")
    await wait_until(lambda: "Done" in agent_comments(driver, number)[0], timeout=30)
    assert leaked(driver) == []
    assert await driver.stop() == 0


async def test_a_store_locked_past_its_busy_timeout_is_not_ready_and_the_task_waits(
    driver: ChaosDriver,
) -> None:
    # Issue 16: "StoreError: <host path>/claude-hooks.sqlite3: start task 64 failed: database
    # is locked", the task failed; /readyz said `store: true` throughout.
    log = await driver.start()
    await wait_until(lambda: logged(log, "daemon_ready"), timeout=30)
    assert (await readyz(driver))[0] == 200
    driver.sim.delay(0.7)  # the precheck takes its time: the lock comes meanwhile
    number = driver.sim.create_issue(REPO, "alice", "Locked", "Please work.")
    driver.sim.add_comment(REPO, number, "alice", f"@{driver.agent} go")
    await wait_until(
        lambda: [r.state for r in driver.rows()] == ["queued"], timeout=30, interval=0.02
    )
    locker = sqlite3.connect(driver.config.daemon.db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process's lock, past the 5 s busy timeout
    try:
        status, body = await readyz(driver, limit=15)
        assert status == 503 and body["checks"]["store"] is False  # type: ignore[index]
        await wait_until(lambda: logged(log, "task_record_busy"), timeout=30)
    finally:
        driver.sim.delay(0)
        locker.execute("ROLLBACK")
        locker.close()
    await wait_until(lambda: len(finished_rows(driver)) == 1, timeout=60)
    assert [r.state for r in driver.rows()] == ["succeeded"]
    deferrals = [e for e in events(log) if e.get("event") == "task_deferred"]
    assert [e["reason"] for e in deferrals] == ["the task store is busy, will retry (try 1 of 8)"]
    await wait_until(lambda: "Done" in agent_comments(driver, number)[0], timeout=30)
    assert (await readyz(driver))[0] == 200
    assert leaked(driver) == []
    assert await driver.stop() == 0


# root ignores file modes: drop the capabilities that let it, for the daemon only
AS_USER = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")


async def test_a_read_only_state_directory_is_refused_naming_the_path_and_keeps_the_store(
    driver: ChaosDriver,
) -> None:
    log = await driver.start()
    driver.mention()
    await wait_until(lambda: len(finished_rows(driver)) == 1, timeout=30)
    assert await driver.stop() == 0
    state = driver.config.daemon.state_dir
    before = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
    modes = {p: p.stat().st_mode for p in [state, *state.iterdir()]}
    for path in modes:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        log = await driver.start(prefix=AS_USER if os.geteuid() == 0 else ())
        assert driver.process is not None
        async with asyncio.timeout(30):
            code = await driver.process.wait()
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    output = log.read_text(errors="replace")
    assert code != 0
    assert str(state) in output and "not writable" in output, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    after = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
    assert after.get(driver.config.daemon.db_path.name) == before[driver.config.daemon.db_path.name]
    assert [row.state for row in driver.rows()] == ["succeeded"]
