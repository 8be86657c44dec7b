"""An agent on a remote Docker engine over mutual TLS (issue 18), against a second real
dockerd the tests start on 127.0.0.1 with certificates they make (tests/second_dockerd.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import aiodocker
import pytest

from claude_hooks.daemon.services import Services
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.runner.containers import ENGINE_LABEL, instance_labels
from claude_hooks.runner.engines import EnginePool
from claude_hooks.tasks import TaskState
from tests.fakes.configs import ConfigFactory
from tests.second_dockerd import TlsEngine, remote, second_dockerd, tls_engine
from tests.test_flow import ALICE, DEV, REPO, flow_config
from tests.waiting import wait_until

pytestmark = pytest.mark.docker
__all__ = ["remote", "second_dockerd", "tls_engine"]  # fixtures, used by name


async def test_an_agent_on_the_tls_engine_runs_its_task_there(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    test_image: str,
    test_labels: dict[str, str],
    tls_engine: TlsEngine,
    remote: aiodocker.Docker,
    docker: aiodocker.Docker,
) -> None:
    config = flow_config(config_factory, forgejo_sim, test_image, **tls_engine.agent_keys())
    agent = config.agents[0]
    async with Services.running(
        config, daemon_id="test-engine", extra_labels=test_labels, listen=False
    ) as services:
        number = forgejo_sim.create_issue(REPO, ALICE, "Greeting", "Please say hello.")
        forgejo_sim.add_comment(REPO, number, ALICE, f"@{DEV} please implement this")

        async def succeeded() -> bool:
            tasks = await services.store.list_tasks(limit=5)
            return any(t.state is TaskState.SUCCEEDED for t in tasks)

        await wait_until(succeeded, timeout=60, what="the task on the TLS engine to succeed")
        assert await services.readiness() == {"store": True, "docker": True, "forgejo": True}
    container = await remote.containers.get(agent.container_name)
    assert container["Config"]["Labels"][ENGINE_LABEL] == tls_engine.host
    filters = json.dumps({"label": [f"{k}={v}" for k, v in test_labels.items()]})
    assert await docker.containers.list(all=True, filters=filters) == []  # not on the local one


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "claude_hooks", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def check(config_file: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("check", "--config", str(config_file))


def test_plain_tcp_to_the_engine_is_refused_by_check_unless_written(
    config_factory: ConfigFactory, tls_engine: TlsEngine
) -> None:
    plain = config_factory.agent(DEV, docker_host=tls_engine.host)
    refused = check(config_factory.write(agents=[plain]))
    assert refused.returncode != 0
    assert "agents[0].docker_tls_ca_file" in refused.stderr + refused.stdout
    assert "mutual TLS" in refused.stderr + refused.stdout
    written = config_factory.agent(DEV, docker_host=tls_engine.host, docker_tls=False)
    warned = check(config_factory.write(agents=[written]))
    out = warned.stdout + warned.stderr
    assert "agents[0].docker_tls: false" in out and "root on its host" in out, out
    # The engine itself wants a client certificate: the plain connection gets nothing.
    assert f"FAIL docker engine {tls_engine.host}" in out, out
    assert warned.returncode != 0


async def test_an_agent_moved_off_an_engine_leaves_no_container_there(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    test_image: str,
    test_labels: dict[str, str],
    tls_engine: TlsEngine,
    remote: aiodocker.Docker,
) -> None:
    """The orphan sweep runs per engine, for the agents configured on that engine: an
    agent now on the local engine is an orphan on the TLS one, and the one still there
    is left alone."""
    on_tls = flow_config(config_factory, forgejo_sim, test_image, **tls_engine.agent_keys())
    stay = on_tls.agents[0]
    moved = replace(stay, name="mover")
    labels = {**instance_labels(on_tls.daemon.state_dir), **test_labels}
    pool = await EnginePool.open([stay, moved], labels)
    try:
        kept = await pool.manager(stay).ensure(stay)
        await pool.manager(moved).ensure(moved)
    finally:
        await pool.close()
    config = replace(on_tls, agents=(stay, replace(moved, docker_host=None, docker_tls_ca_file=None,
        docker_tls_cert_file=None, docker_tls_key_file=None)))  # fmt: skip
    services = await Services.start(
        config, daemon_id="test-engine-move", extra_labels=test_labels, listen=False
    )
    await services.close()
    names = [c["Names"][0].lstrip("/") for c in await remote.containers.list(all=True)]
    assert moved.container_name not in names
    assert stay.container_name in names
    assert (await remote.containers.get(stay.container_name)).id == kept.id


async def test_containers_up_creates_the_container_on_the_agents_engine(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    test_image: str,
    tls_engine: TlsEngine,
    remote: aiodocker.Docker,
) -> None:
    config = flow_config(config_factory, forgejo_sim, test_image, **tls_engine.agent_keys())
    done = await asyncio.to_thread(run_cli, "containers", "up", "--config", str(config.path))
    assert done.returncode == 0, done.stderr
    assert f"{DEV}: created: claude-hooks-{DEV}" in done.stdout
    container = await remote.containers.get(config.agents[0].container_name)
    assert container["Config"]["Labels"][ENGINE_LABEL] == tls_engine.host
