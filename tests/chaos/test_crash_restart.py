"""SIGKILL the daemon at random moments while mentions and API tasks arrive; nothing is lost.

Seeded (CHAOS_SEED, default 1) and sized (CHAOS_CYCLES, default 30) from the environment.
The policy pinned down (claude_hooks/store/db.py recover): a task running when the daemon
dies is re-queued once; interrupted a second time it fails with "interrupted twice". So
every accepted trigger ends as exactly one task that succeeded, or failed for exactly
that reason, reported by exactly one tracking comment showing its final state. Some
cycles also take Forgejo or Docker down for a while (issue 16): a task meeting the
outage waits it out (the retry budget is large here) and its final report, refused
meanwhile, is delivered later by the report outbox.
"""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from collections.abc import AsyncIterator

import aiodocker
import aiohttp
import pytest

from claude_hooks.demo.sim.forgejo import ForgejoSim
from tests.chaos.driver import ChaosDriver, Figures, chaos_config, claude_processes
from tests.fakes.configs import ConfigFactory

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.chaos]

CYCLES = int(os.environ.get("CHAOS_CYCLES", "30"))
SEED = int(os.environ.get("CHAOS_SEED", "1"))


@pytest.fixture
async def driver(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    test_image: str,
    docker: aiodocker.Docker,
) -> AsyncIterator[ChaosDriver]:
    agent = f"chaos{uuid.uuid4().hex[:6]}"
    waits = {"outage_backoff": 0.3, "outage_retries": 1000, "outage_retry_for": 86400}
    config = chaos_config(config_factory, forgejo_sim, test_image, agent, daemon=waits)
    chaos = ChaosDriver(forgejo_sim, config, agent, random.Random(SEED), outages=True)
    yield chaos
    await chaos.kill()
    for agent_config in config.agents:
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.containers.get(agent_config.container_name)).delete(force=True)
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.volumes.get(agent_config.volume_name)).delete()


def tally(driver: ChaosDriver, rows: list) -> Figures:
    by_comment: dict[int, int] = {}
    for row in rows:
        if row.comment_id is not None:
            by_comment[row.comment_id] = by_comment.get(row.comment_id, 0) + 1
    ids = {row.id for row in rows}
    figures = Figures(cycles=CYCLES, tasks=len(rows))
    figures.forgejo_outages = driver.outages_taken["forgejo"]
    figures.docker_outages = driver.outages_taken["docker"]
    figures.accepted = len(driver.mentions) + len(driver.api_tasks)
    figures.lost = sum(1 for c in driver.mentions if c not in by_comment)
    figures.lost += sum(1 for t in driver.api_tasks if t not in ids)
    figures.duplicated = sum(n - 1 for n in by_comment.values() if n > 1)
    figures.finished = sum(1 for row in rows if row.state in ("succeeded", "failed"))
    figures.failed_interrupted_twice = sum(
        1 for row in rows if row.state == "failed" and (row.error or "").startswith("interrupted")
    )
    return figures


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    driver: ChaosDriver, docker: aiodocker.Docker
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        for _ in range(CYCLES):
            await driver.cycle(session, docker)
    rows = await driver.settle()
    container = driver.config.agents[0].container_name
    figures = tally(driver, rows)
    print(figures.line(), f"strays_killed={driver.strays} survivors={len(driver.survivors)}")

    assert figures.accepted > CYCLES // 2, "the driver hardly fed the daemon"
    assert figures.forgejo_outages and figures.docker_outages, "no outage was taken"
    assert figures.lost == 0 and figures.duplicated == 0
    for row in rows:
        assert row.state == "succeeded" or (
            row.state == "failed" and (row.error or "").startswith("interrupted twice")
        ), f"task {row.id}: {row.state} {row.error!r}"
    markers = driver.tracking_comments({row.number for row in rows if row.number is not None})
    reported = {row.id: markers.get(row.id, 0) for row in rows if row.number is not None}
    assert {task: n for task, n in reported.items() if n != 1} == {}
    assert driver.integrity() == "ok"
    assert await driver.stop() == 0
    assert driver.survivors == [], "processes of a dead daemon outlived its restart"
    assert await claude_processes(docker, container) == {}
