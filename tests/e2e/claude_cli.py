"""The real Claude Code CLI for end-to-end tests: installed once with npm, then cached.

`npm install --ignore-scripts @anthropic-ai/claude-code@VERSION` into a cache
directory (CLAUDE_HOOKS_E2E_CACHE, default tests/e2e/.cache, git-ignored) yields the
native, self-contained binary of the platform package; node is not needed to run it.
The version is pinned: from 2.1.198 on the package declares node >= 22, and npm on
an older node would otherwise silently pick an older release (docs/CLAUDE-CLI.md).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from claude_hooks.config import Config
from claude_hooks.demo.sim.forgejo import ForgejoSim
from tests.e2e.host_image import HOST_USR_MOUNT, unavailable
from tests.fakes.configs import ConfigFactory

CLAUDE_CODE_VERSION = "2.1.332"
PACKAGE = "@anthropic-ai/claude-code"
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"
INSTALL_TIMEOUT = 600  # seconds; about 7 s with a warm npm cache, the binary is ~400 MB
CLAUDE_IN_CONTAINER = "/opt/claude/claude"  # where the agent container sees the binary


def platform_package() -> str:
    machine = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine())
    if machine is None:
        raise OSError(f"no Claude Code binary for {platform.machine()}")
    return f"{PACKAGE}-linux-{machine}"


def cache_dir() -> Path:
    return Path(os.environ.get("CLAUDE_HOOKS_E2E_CACHE") or DEFAULT_CACHE) / CLAUDE_CODE_VERSION


def binary_path(cache: Path) -> Path:
    return cache / "node_modules" / platform_package() / "claude"


def installed_version(binary: Path) -> str:
    """What `claude --version` says ("" when it does not run)."""
    if not os.access(binary, os.X_OK):
        return ""
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def install(cache: Path) -> Path:
    """The pinned CLI's binary, installed into `cache` unless already there."""
    binary = binary_path(cache)
    if CLAUDE_CODE_VERSION in installed_version(binary):
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is not installed (apt-get install npm)")
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--prefix", str(cache), "--ignore-scripts", "--no-audit", "--no-fund",
         "--loglevel=error", f"{PACKAGE}@{CLAUDE_CODE_VERSION}"],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise OSError(f"npm install {PACKAGE}@{CLAUDE_CODE_VERSION} failed: {done.stderr.strip()}")
    version = installed_version(binary)
    if CLAUDE_CODE_VERSION not in version:
        raise OSError(f"{binary} says {version!r}, expected {CLAUDE_CODE_VERSION}")
    return binary


@pytest.fixture(name="claude_binary", scope="session")
def installed_claude() -> Path:
    """The real CLI's binary on the host (skips, or fails under CI=true, without npm)."""
    try:
        return install(cache_dir())
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"cannot install Claude Code {CLAUDE_CODE_VERSION}: {exc}")
        raise


def cli_agent(
    factory: ConfigFactory,
    name: str,
    *,
    claude: Path,
    api_url: str,
    mounts: tuple[str, ...] = (),
    api_key_in_env: bool = True,
    **values: object,
) -> dict[str, object]:
    """An agent running the real CLI from `claude`, against the scripted API only.

    `api_key_in_env=False` for an agent whose login comes from its own key file."""
    env = {
        "ANTHROPIC_BASE_URL": api_url,
        **({"ANTHROPIC_API_KEY": "test-key"} if api_key_in_env else {}),
        "CLAUDE_CODE_MAX_RETRIES": "0",
        # A safety belt for the host network: any other HTTPS request fails locally.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    return factory.agent(
        name,
        network="host",
        checkout=True,
        timeout=90,
        max_turns=5,
        env=env,
        claude_command=CLAUDE_IN_CONTAINER,
        mounts=[HOST_USR_MOUNT, f"{claude}:{CLAUDE_IN_CONTAINER}:ro", *mounts],
        **values,
    )


def one_agent_config(factory: ConfigFactory, sim: ForgejoSim, agent: dict[str, object]) -> Config:
    """The daemon's config for `agent` alone, polling the simulator quickly."""
    return factory.load(
        forgejo={"url": sim.base_url},
        daemon={"poll_interval": 0.2, "drain_timeout": 5},
        agents=[agent],
    )
