"""The host-userland agent image (claude_hooks/demo/host_image.py) as a test fixture."""

from __future__ import annotations

import os
from pathlib import Path

import aiodocker
import pytest

from claude_hooks.demo.host_image import (  # noqa: F401  (re-exported for the tests)
    HOST_IMAGE,
    HOST_USR_MOUNT,
    HostImageError,
    ensure_host_image,
    host_problem,
)


def unavailable(reason: str) -> None:
    """Skip — or fail under CI, where everything these tests need is installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(name="host_image")
async def built_host_image(docker: aiodocker.Docker) -> str:
    """The host-userland image (skips, or fails under CI=true, where it cannot work)."""
    problem = host_problem()
    if problem:
        unavailable(f"no host userland to borrow: {problem}")
    try:
        return await ensure_host_image(docker)
    except (HostImageError, aiodocker.DockerError) as exc:
        unavailable(f"cannot build {HOST_IMAGE}: {exc}")
        raise


def samples_dir() -> Path:
    """The recorded stream-json runs the fake claudes replay."""
    return Path(__file__).resolve().parents[2] / "claude_hooks" / "demo" / "agent_image" / "samples"
