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
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import aiohttp
import pytest

from claude_hooks.demo.sim.forgejo import ForgejoSim
from tests.chaos.driver import REPO, ChaosDriver, TaskRow, chaos_config
from tests.fakes.configs import ConfigFactory
from tests.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
async def driver(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    test_image: str,
    docker: aiodocker.Docker,
) -> AsyncIterator[ChaosDriver]:
    agent = f"out{uuid.uuid4().hex[:6]}"
    config = chaos_config(config_factory, forgejo_sim, test_image, agent)
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


async def readyz(driver: ChaosDriver) -> tuple[int, dict[str, object]]:
    timeout = aiohttp.ClientTimeout(total=3)
    url = f"{driver.config.api.base_url}/readyz"
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        return response.status, await response.json()


async def test_an_unreachable_docker_engine_fails_readiness_and_the_task_but_not_the_daemon(
    driver: ChaosDriver, tmp_path: Path
) -> None:
    dead = f"unix://{tmp_path}/no-docker-here.sock"
    log = await driver.start(env={"DOCKER_HOST": dead})
    await wait_until(lambda: logged(log, "daemon_ready"), timeout=30)
    status, body = await readyz(driver)
    assert status == 503 and body["checks"]["docker"] is False  # type: ignore[index]

    driver.mention()
    await wait_until(lambda: len(finished_rows(driver)) == 1, timeout=30)
    [row] = driver.rows()
    assert row.state == "failed" and row.error and "docker" in row.error.lower(), row
    assert row.number is not None
    # The failure is reported (its reason names Docker), so the task is fully handled.
    await wait_until(lambda: "docker" in final_comment(driver, row.number).lower(), timeout=30)
    assert (await readyz(driver))[0] == 503  # and the daemon still serves
    assert driver.process is not None and driver.process.returncode is None
    assert await driver.stop() in (0, 1)


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
