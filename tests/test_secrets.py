"""No secret leaks: a whole daemon run with recognisable canary secrets, then a search.

Every secret the daemon holds (the agent's Forgejo token, the API token, the webhook
secret, the Claude credentials) carries a canary; none may appear in the daemon's log,
the store file and its WAL, the task events, API answers, `docker inspect` of the agent
container and its execs, the image history, host command lines, or Forgejo comments.
The credentials file is bind-mounted, so inside the container it is visible by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import aiohttp
import pytest

from claude_hooks.sim.forgejo import ForgejoSim
from tests.chaos.driver import REPO, ChaosDriver, free_port
from tests.fakes.configs import ConfigFactory
from tests.fakes.docker import AGENT_UID

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CANARIES = {
    "agent_token": "CANARY-agent-token-7f3a91c2",
    "api_token": "CANARY-api-token-5b8e04d6",
    "webhook_secret": "CANARY-webhook-secret-2c6d19ef",
    "credentials": "CANARY-oauth-credential-9a47be30",
}


@pytest.fixture
async def daemon(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    test_image: str,
    docker: aiodocker.Docker,
) -> AsyncIterator[ChaosDriver]:
    agent = f"sec{uuid.uuid4().hex[:6]}"
    forgejo_sim.add_user("alice", token="forgejo-token-of-alice-0123456789")
    forgejo_sim.add_user(agent, token=CANARIES["agent_token"])
    forgejo_sim.add_repo(REPO, collaborators={"alice": "write", agent: "admin"})
    creds = config_factory.secret(
        "creds.json", json.dumps({"claudeAiOauth": {"accessToken": CANARIES["credentials"]}})
    )
    os.chown(creds, AGENT_UID, AGENT_UID)
    values = config_factory.agent(
        agent, token_file=str(config_factory.secret("agent-token", CANARIES["agent_token"])),
        credentials_file=str(creds), image=test_image, network="none", checkout=False,
        timeout=60,
    )  # fmt: skip
    hook_secret = config_factory.secret("webhook-secret", CANARIES["webhook_secret"])
    config = config_factory.load(
        forgejo={"url": forgejo_sim.base_url, "webhook_secret_file": str(hook_secret)},
        daemon={"poll_interval": 0.2, "drain_timeout": 5, "log_format": "json"},
        api={
            "listen": f"127.0.0.1:{free_port()}",
            "token_file": str(config_factory.secret("api-token", CANARIES["api_token"])),
        },
        agents=[values],
    )
    driver = ChaosDriver(forgejo_sim, config, agent, random.Random(0))
    yield driver
    await driver.kill()
    with contextlib.suppress(aiodocker.DockerError):
        await (await docker.containers.get(config.agents[0].container_name)).delete(force=True)
    with contextlib.suppress(aiodocker.DockerError):
        await (await docker.volumes.get(config.agents[0].volume_name)).delete()


def leaks(where: str, text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [f"{name} in {where}" for name, value in CANARIES.items() if value.encode() in data]


async def api_answers(driver: ChaosDriver, number: int) -> list[str]:
    """Submit a task, send a signed webhook, and read back every answer the API gives."""
    base = driver.config.api.base_url
    auth = {"Authorization": f"Bearer {CANARIES['api_token']}"}
    body = {"agent": driver.agent, "repo": REPO, "number": number, "prompt": "fake-claude: x=1"}
    hook = json.dumps({"action": "closed", "repository": {"full_name": REPO}}).encode()
    signature = hmac.new(CANARIES["webhook_secret"].encode(), hook, hashlib.sha256).hexdigest()
    hook_headers = {"X-Forgejo-Event": "issues", "X-Forgejo-Signature": signature}
    answers = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.post(f"{base}/tasks", json=body, headers=auth) as response:
            answers.append(await response.text())
            task_id = (await response.json())["task_id"]
        async with session.post(f"{base}/hooks/forgejo", data=hook, headers=hook_headers) as r:
            answers.append(await r.text())
        for path in ("/tasks", f"/tasks/{task_id}", "/agents", "/readyz", "/metrics", "/"):
            async with session.get(base + path, headers=auth) as response:
                answers.append(await response.text())
        async with session.get(f"{base}/tasks", headers={"Authorization": "Bearer wrong"}) as r:
            answers.append(await r.text())
    return answers


def all_events(driver: ChaosDriver) -> str:
    with contextlib.closing(sqlite3.connect(driver.config.daemon.db_path)) as db:
        rows = db.execute("SELECT type, summary, data FROM task_events").fetchall()
    return json.dumps(rows)


def host_command_lines() -> bytes:
    out = b""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            out += (proc / "cmdline").read_bytes() + b"\n"
    return out


async def watch_execs(docker: aiodocker.Docker, name: str, seen: dict[str, str]) -> None:
    """Inspect every exec of the container while it exists: Docker forgets finished ones."""
    while True:
        with contextlib.suppress(aiodocker.DockerError):
            container = await docker.containers.get(name)
            seen.setdefault("docker inspect", json.dumps(container._container))
            for exec_id in container["ExecIDs"] or []:
                with contextlib.suppress(aiodocker.DockerError):
                    info = await docker._query_json(f"exec/{exec_id}/json")
                    seen[f"exec {exec_id[:12]}"] = json.dumps(info)
        await asyncio.sleep(0.05)


async def docker_views(
    docker: aiodocker.Docker, driver: ChaosDriver, seen: dict[str, str]
) -> dict[str, str]:
    container = await docker.containers.get(driver.config.agents[0].container_name)
    history = await docker.images.history(driver.config.agents[0].image)
    return {
        **seen,
        "docker inspect": json.dumps(container._container),
        "image history": json.dumps(history),
    }


async def test_no_canary_secret_appears_anywhere_outside_the_container(
    daemon: ChaosDriver, forgejo_sim: ForgejoSim, docker: aiodocker.Docker
) -> None:
    seen: dict[str, str] = {}
    watcher = asyncio.create_task(watch_execs(docker, daemon.config.agents[0].container_name, seen))
    log = await daemon.start()
    number = forgejo_sim.create_issue(REPO, "alice", "Slow", "Take your time.")
    forgejo_sim.add_comment(REPO, number, "alice", f"@{daemon.agent} go\n\nfake-claude: delay=0.2")
    number = forgejo_sim.create_issue(REPO, "alice", "API", "Via the API.")
    async with asyncio.timeout(30):
        while not log.exists() or "daemon_ready" not in log.read_text(errors="replace"):
            await asyncio.sleep(0.1)
    answers = await api_answers(daemon, number)
    async with asyncio.timeout(60):
        while [row.state for row in daemon.rows()] != ["succeeded", "succeeded"]:
            await asyncio.sleep(0.2)
    watcher.cancel()
    views = await docker_views(docker, daemon, seen)
    found = leaks("host command lines", host_command_lines())
    for where, text in views.items():
        found += leaks(where, text)
    assert await daemon.stop() == 0

    found += leaks("daemon log", log.read_bytes())
    state = daemon.config.daemon.state_dir
    for path in state.iterdir():
        if path.is_file():
            found += leaks(f"store file {path.name}", path.read_bytes())
    found += leaks("task events", all_events(daemon))
    for answer in answers:
        found += leaks("API answer", answer)
    for issue in {row.number for row in daemon.rows()}:
        for comment in forgejo_sim.comments(REPO, issue):
            found += leaks("Forgejo comment", comment.body)
    print(f"secrets: canaries={len(CANARIES)} places_checked={len(views) + 6} found={len(found)}")
    assert found == []
    assert len(answers) == 9 and any(
        where.startswith("exec ") for where in views
    )  # the places searched were really there
