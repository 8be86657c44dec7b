"""Fixtures for tests against the real Docker engine and the test image.

Without an engine the tests skip with the reason — except under CI=true, where a
missing engine is a failure, not a silent skip. Everything a test creates carries
the labels of `test_labels` (claude-hooks.test=1 and a run id unique to the test),
and is removed when the test ends, failed or not; the unique id keeps parallel runs
and the orphan-removal tests from touching each other's containers.

Use: `from tests.fakes.docker import docker_client, make_agent, ...` in the test
module (the fixtures register under the names docker, test_image, test_labels,
make_agent, manager), and mark the tests `@pytest.mark.docker`.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from aiodocker.exceptions import DockerError

from claude_hooks.config import AgentConfig
from claude_hooks.runner.containers import ContainerManager

# CLAUDE_HOOKS_TEST_IMAGE: a tag of its own, for sessions that change the image side by side
TEST_IMAGE = os.environ.get("CLAUDE_HOOKS_TEST_IMAGE", "claude-hooks-test:latest")
TEST_LABEL = "claude-hooks.test"
RUN_LABEL = "claude-hooks.test-run"
BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "docker" / "build-test-image.sh"
AGENT_UID = 100000  # the `agent` user of the test image (claude_hooks/demo/agent_image/passwd)

MakeAgent = Callable[..., AgentConfig]


def docker_unavailable(reason: str) -> None:
    """Skip — or fail under CI, where the engine is part of the test environment."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Docker is required under CI=true: {reason}")
    pytest.skip(f"no Docker engine: {reason}")


@pytest.fixture(name="docker")
async def docker_client() -> AsyncIterator[aiodocker.Docker]:
    try:
        client = aiodocker.Docker()
    except Exception as exc:  # aiodocker raises ValueError when it finds no socket
        docker_unavailable(f"cannot connect: {exc}")
    try:
        await client.version()
    except Exception as exc:
        await client.close()
        docker_unavailable(f"the engine does not answer: {exc!r}")
    yield client
    await client.close()


@pytest.fixture(name="test_image", scope="session")
def built_test_image() -> str:
    """The test image (busybox + fake claude), built once per session if needed."""
    try:
        done = subprocess.run(
            [str(BUILD_SCRIPT), TEST_IMAGE], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        docker_unavailable(f"{BUILD_SCRIPT.name} did not run: {exc}")
    if done.returncode != 0:
        docker_unavailable(f"{BUILD_SCRIPT.name} failed: {done.stderr.strip()}")
    return TEST_IMAGE


@pytest.fixture(name="test_labels")
async def labels_removed_after_test(docker: aiodocker.Docker) -> AsyncIterator[dict[str, str]]:
    labels = {TEST_LABEL: "1", RUN_LABEL: uuid.uuid4().hex[:12]}
    yield labels
    await remove_labelled(docker, f"{RUN_LABEL}={labels[RUN_LABEL]}")


async def remove_labelled(docker: aiodocker.Docker, label: str) -> None:
    """Remove the containers, then the volumes, carrying `label` ("key=value")."""
    filters = json.dumps({"label": [label]})
    for container in await docker.containers.list(all=True, filters=filters):
        await container.delete(force=True)
    volumes = await docker.volumes.list(filters={"label": [label]})
    for volume in volumes.get("Volumes") or []:
        try:
            await aiodocker.volumes.DockerVolume(docker, volume["Name"]).delete()
        except DockerError as exc:
            if exc.status != 404:
                raise


@pytest.fixture(name="make_agent")
def agent_factory(tmp_path: Path, test_image: str) -> MakeAgent:
    """AgentConfig(s) for the test image with a unique name, network "none", small limits
    and a credentials file the container's agent user can read."""

    def make(name: str | None = None, **overrides: Any) -> AgentConfig:
        name = name or f"t-{uuid.uuid4().hex[:8]}"
        secrets = tmp_path / name
        secrets.mkdir(exist_ok=True)
        token = secrets / "token"
        token.write_text(f"forgejo-token-{uuid.uuid4().hex}\n")
        credentials = secrets / "credentials.json"
        credentials.write_text('{"claudeAiOauth": {"accessToken": "test-oauth-token"}}\n')
        # The bind mount keeps the host owner and mode: the agent's uid must read it.
        if os.geteuid() == 0:
            credentials.chmod(0o600)
            os.chown(credentials, AGENT_UID, AGENT_UID)
        else:
            credentials.chmod(0o644)
        values: dict[str, Any] = {
            "name": name,
            "token_file": token,
            "credentials_file": credentials,
            "image": test_image,
            "network": "none",
            "memory": "256m",
            "cpus": 0.5,
            "pids_limit": 128,
            "user": f"{AGENT_UID}:{AGENT_UID}",
        }
        return AgentConfig(**{**values, **overrides})

    return make


@pytest.fixture(name="manager")
def container_manager(docker: aiodocker.Docker, test_labels: dict[str, str]) -> ContainerManager:
    return ContainerManager(docker, extra_labels=test_labels)
