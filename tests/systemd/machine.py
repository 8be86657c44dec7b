"""A Debian bookworm machine, systemd 252 booted as PID 1 in a Docker container, where the
package is installed for a lingering user `op` as docs/OPERATIONS.md says (`just install`).

The image is built locally FROM the debootstrapped base (deploy/build-base-image.sh makes
debian:bookworm-slim: nothing is pulled) with apt-get from Debian's mirror, and tagged by
a hash of its inputs (the Dockerfile and the base image's id), so it is built once.

What systemd as PID 1 needs of Docker on a cgroup-v1 host, without --privileged: the
capabilities the host has (Docker refuses to add more), seccomp unconfined (systemd's
mounts and namespaces), the host's cgroup namespace with /sys/fs/cgroup writable
(systemd builds its hierarchy below the container's own cgroup), tmpfs on /run and
/run/lock, and container=docker so it knows where it runs.

The network is the host's: the daemon reaches the test's Forgejo simulator on 127.0.0.1.
The machine has no Docker engine of its own; the host's socket is mounted at
/run/docker.sock and `op` is given the group that owns it, so `containers up` (the unit's
ExecStartPre) and the daemon's tasks drive the host engine with the scripted test image,
as the daemon does on any host. A directory of secret files is mounted at the same path
inside and out: the engine bind-mounts the credentials file from the path the daemon names.

Python packages come from a wheelhouse filled on the host (`pip download` from PyPI, cached
by its requirements) and mounted read-only; the machine's pip never reaches an index.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

BASE_IMAGE = "debian:bookworm-slim"
IMAGE_REPOSITORY = "claude-hooks-systemd"
INPUTS_LABEL = "claude-hooks.systemd-image-inputs"
OP, OP_UID = "op", 1000
OP_HOME = f"/home/{OP}"
UNIT = "claude-hooks"
MACHINE_PYTHON = "3.11"  # bookworm's python3: the wheelhouse is for it, whatever runs pytest
MACHINE_GLIBC_MINOR = 36  # bookworm's glibc 2.36: manylinux wheels up to 2_36 run there

DOCKERFILE = f"""FROM {BASE_IMAGE}
RUN apt-get update -q \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \\
      systemd systemd-sysv dbus libpam-systemd python3 python3-venv procps \\
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid {OP_UID} --shell /bin/bash {OP}
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
"""

# Capabilities 0-37 (CHOWN … AUDIT_READ): every Docker engine knows these names, while
# some refuse newer ones (PERFMON, BPF, CHECKPOINT_RESTORE) that systemd does not need.
_CAPABILITY_NAMES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
    "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
    "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
    "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
    "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ"
)
CAPABILITIES = tuple(_CAPABILITY_NAMES.split())  # a name's position is its bit number
# What `just install` and the package need, besides the package itself (pyproject.toml).
INSTALL_TOOLS = ("wheel", "rust-just")
SOURCE_PARTS = ("pyproject.toml", "README.md", "justfile", "claude_hooks", "deploy", "docs")
# The test's: quick restarts and watchdog, and no core file of a daemon the watchdog aborts.
DROP_IN = """[Service]
RestartSec=1
WatchdogSec=5
LimitCORE=0
"""


def unavailable(reason: str) -> None:
    """Skip where Docker cannot run such a machine; under CI=true that is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


# --- decisions --------------------------------------------------------------------------------


def host_capabilities(proc_status: str) -> list[str]:
    """The CAPABILITIES in a bounding set, as /proc/<pid>/status shows it (CapBnd)."""
    found = re.search(r"^CapBnd:\s*([0-9a-fA-F]+)$", proc_status, re.M)
    mask = int(found[1], 16) if found else 0
    return [name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1]


def image_tag(dockerfile: str, base_image_id: str) -> str:
    digest = hashlib.sha256(f"{dockerfile}\n{base_image_id}".encode()).hexdigest()[:12]
    return f"{IMAGE_REPOSITORY}:{digest}"


def run_argv(
    name: str, image: str, capabilities: Sequence[str], mounts: Mapping[str, str]
) -> list[str]:
    """`docker run` of the machine; `mounts` maps host paths to "container[:ro]"."""
    argv = ["docker", "run", "-d", "--name", name, "--label", "claude-hooks.test=1"]
    argv += ["--network", "host", "--cap-drop", "ALL"]
    argv += [f"--cap-add={cap}" for cap in capabilities]
    argv += ["--security-opt", "seccomp=unconfined", "--cgroupns", "host"]
    argv += ["-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock"]
    argv += ["-e", "container=docker"]
    for host, inside in mounts.items():
        argv += ["-v", f"{host}:{inside}"]
    return [*argv, image]


def install_requirements(pyproject: Mapping[str, Any]) -> list[str]:
    """Everything `pip install '.[journal]'` (build backend included) and `just` need."""
    project = pyproject["project"]
    return [
        *project["dependencies"],
        *project["optional-dependencies"]["journal"],
        *pyproject["build-system"]["requires"],
        *INSTALL_TOOLS,
    ]


def machine_platforms(arch: str) -> list[str]:
    """pip's --platform tags for the machine: manylinux from bookworm's glibc down."""
    minors = range(MACHINE_GLIBC_MINOR, 16, -1)
    return [f"manylinux_2_{minor}_{arch}" for minor in minors] + [f"manylinux1_{arch}"]


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show -p A -p B` output, "A=x" per line."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# --- host side I/O ------------------------------------------------------------------------------


def docker_socket() -> Path:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        unavailable(f"DOCKER_HOST={host} is not a unix socket the machine could mount")
    return Path(host.removeprefix("unix://"))


def ensure_image() -> str:
    """The machine's image, built unless one from the same inputs exists."""
    base = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", BASE_IMAGE], capture_output=True, text=True
    )
    if base.returncode != 0:
        made = subprocess.run(
            ["bash", str(REPO_ROOT / "deploy" / "build-base-image.sh"), BASE_IMAGE],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if made.returncode != 0:
            unavailable(f"no {BASE_IMAGE} and build-base-image.sh failed: {made.stderr[-800:]}")
        return ensure_image()
    tag = image_tag(DOCKERFILE, base.stdout.strip())
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    built = subprocess.run(
        ["docker", "build", "--network", "host", "-t", tag, "-"],
        input=DOCKERFILE, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if built.returncode != 0:
        unavailable(f"building {tag} failed (apt-get needs Debian's mirror): {built.stderr[-800:]}")
    return tag


def wheelhouse() -> Path:
    """Wheels for the machine's Python of everything installing the package needs,
    downloaded once per set of requirements (PyPI, or the host's pip cache)."""
    requirements = install_requirements(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text()))
    arch = platform.machine()
    key = hashlib.sha256("\n".join([MACHINE_PYTHON, arch, *sorted(requirements)]).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    directory = cache / "claude-hooks" / "systemd-test-wheels" / key.hexdigest()[:16]
    if (directory / ".complete").exists():
        return directory
    platforms = [arg for tag in machine_platforms(arch) for arg in ("--platform", tag)]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--only-binary=:all:", "--python-version", MACHINE_PYTHON, *platforms,
         "-d", str(directory), *requirements],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        unavailable(f"pip could not fetch the machine's wheels: {done.stderr[-800:]}")
    (directory / ".complete").write_text("\n".join(requirements) + "\n")
    return directory


def source_tar() -> bytes:
    """The repository's installable files, as `just install` reads them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for part in SOURCE_PARTS:
            path = REPO_ROOT / part
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                if "__pycache__" in file.parts or file.suffix == ".pyc":
                    continue
                info = tar.gettarinfo(str(file), f"claude-hooks/{file.relative_to(REPO_ROOT)}")
                with file.open("rb") as data:
                    tar.addfile(info, data)
    return buffer.getvalue()


# --- the machine --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    name: str

    def run(
        self,
        *argv: str,
        user: str | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """A command in the machine (as `user`, with that user's systemd environment)."""
        command = ["docker", "exec", "-i"]
        if user is not None:
            command += ["-u", user, "-w", OP_HOME, "-e", f"XDG_RUNTIME_DIR=/run/user/{OP_UID}"]
        for key, value in (env or {}).items():
            command += ["-e", f"{key}={value}"]
        done = subprocess.run(
            [*command, self.name, *argv], input=stdin or "", capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done

    def op(self, *argv: str, **options: Any) -> subprocess.CompletedProcess[str]:
        return self.run(*argv, user=OP, **options)

    async def arun(self, *argv: str, **options: Any) -> subprocess.CompletedProcess[str]:
        """`run`, off the event loop (the Forgejo simulator serves on it meanwhile)."""
        return await asyncio.to_thread(lambda: self.run(*argv, **options))

    async def aop(self, *argv: str, **options: Any) -> subprocess.CompletedProcess[str]:
        return await self.arun(*argv, user=OP, **options)

    async def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return await self.aop("systemctl", "--user", *args, check=check)

    async def show(self, *properties: str) -> dict[str, str]:
        args = [arg for prop in properties for arg in ("-p", prop)]
        return parse_show((await self.systemctl("show", UNIT, *args)).stdout)

    async def journal(self, *args: str, after: int | None = None) -> list[dict[str, Any]]:
        """The unit's journal entries (`journalctl --user -u claude-hooks -o json ARGS`),
        those after the moment `mark()` returned if given. (Not --after-cursor: with
        filters, journalctl 252 also drops the first matching entry after the cursor.)"""
        command = ["journalctl", "--user", "-u", UNIT, "-o", "json", "--no-pager", "-q", *args]
        lines = (await self.aop(*command)).stdout.splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in entries if after is None or int(e["__REALTIME_TIMESTAMP"]) > after]

    async def mark(self) -> int:
        """Where the journal ends now (its last entry's time, µs): read what comes after."""
        done = await self.aop("journalctl", "--user", "-n", "1", "-o", "json", "-q", check=False)
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        return int(lines[-1]["__REALTIME_TIMESTAMP"]) if lines else 0

    def write_file(self, path: str, text: str, mode: str = "600") -> None:
        """A file of op's (its directories made as needed)."""
        script = f'mkdir -p "$(dirname {path})" && cat > {path} && chmod {mode} {path}'
        self.op("sh", "-c", script, stdin=text)

    async def awrite_file(self, path: str, text: str, mode: str = "600") -> None:
        await asyncio.to_thread(self.write_file, path, text, mode)


def boot(image: str, mounts: Mapping[str, str]) -> Machine:
    """Start the machine and wait until systemd says it has booted."""
    status = Path("/proc/self/status").read_text()
    name = f"claude-hooks-systemd-{uuid.uuid4().hex[:8]}"
    started = subprocess.run(
        run_argv(name, image, host_capabilities(status), mounts), capture_output=True, text=True
    )
    if started.returncode != 0:
        unavailable(f"Docker cannot run systemd as PID 1 here: {started.stderr.strip()}")
    machine = Machine(name)
    # PID 1's bus first (systemctl fails at once without it), then --wait for the boot.
    bus = "until [ -S /run/systemd/private ]; do sleep 0.1; done"
    machine.run("timeout", "90", "sh", "-c", bus, check=False, timeout=95)
    booted = machine.run("systemctl", "is-system-running", "--wait", check=False, timeout=90)
    if booted.stdout.strip() not in ("running", "degraded"):
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        unavailable(
            f"systemd did not boot in a container here ({booted.stdout.strip()!r}): "
            f"{(logs.stdout + logs.stderr)[-1500:]}"
        )
    return machine


def make_op_a_lingering_docker_user(machine: Machine, socket_gid: int) -> None:
    """op may use the host engine's socket, and has a user manager from boot on (linger)."""
    script = (
        f"group=$(getent group {socket_gid} | cut -d: -f1); "
        f'[ -n "$group" ] || {{ groupadd -g {socket_gid} docker-host; group=docker-host; }}; '
        f'usermod -aG "$group" {OP}'
    )
    machine.run("sh", "-c", script)
    machine.run("loginctl", "enable-linger", OP)  # as the manual says; starts user@1000
    machine.run("systemctl", "start", f"user@{OP_UID}.service", timeout=60)


def install_for_op(machine: Machine) -> subprocess.CompletedProcess[str]:
    """The manual's install: `just install` in a copy of the repository, as op."""
    subprocess.run(
        ["docker", "cp", "-", f"{machine.name}:{OP_HOME}"], input=source_tar(), check=True,
        capture_output=True,
    )  # fmt: skip
    machine.run("chown", "-R", f"{OP}:{OP}", f"{OP_HOME}/claude-hooks")  # its directories too
    offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"}
    machine.run("sh", "-c", "python3 -m venv /opt/just && /opt/just/bin/pip install -q rust-just",
                env=offline)  # fmt: skip
    machine.run("ln", "-s", "/opt/just/bin/just", "/usr/local/bin/just")
    installed = machine.op(
        "sh", "-c", "cd ~/claude-hooks && just install", env=offline, timeout=300
    )
    machine.write_file(f"{OP_HOME}/.config/systemd/user/{UNIT}.service.d/test.conf", DROP_IN, "644")
    machine.op("systemctl", "--user", "daemon-reload")
    return installed


def remove(machine: Machine) -> None:
    subprocess.run(["docker", "rm", "-f", machine.name], capture_output=True)


if __name__ == "__main__":  # .ci/run: build the image and fill the wheelhouse before pytest
    print(f"systemd machine image {ensure_image()}, wheels in {wheelhouse()}")
