"""A second real dockerd on this machine, on 127.0.0.1 over mutual TLS (issue 18), for the
tests of remote engines and engine pools.

The second engine has its own data root, exec root (and so its own containerd), pidfile
and config file, listens only on tcp with --tlsverify, and has no bridge and no iptables
rules (as .ci/start-dockerd starts the first one). The scripted test image is copied into
it with `docker save | docker load`. Where a second dockerd cannot start (no dockerd, not
root), the tests skip; under CI=true they fail.

`SecondDockerd` can be stopped and started again on the same data root (the image stays):
the engine-pool test stops it under a running task. Use: import the fixtures
(`tls_engine`, `remote`, `second_dockerd`) into the test module.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiodocker
import pytest

from claude_hooks.config import DockerEngine, EngineTls
from claude_hooks.runner.engines import open_docker
from tests.fakes.docker import TEST_IMAGE, docker_unavailable
from tests.tls import EngineCerts, make_engine_certs
from tests.waiting import wait_until

START_WITHIN = 60.0  # seconds a fresh dockerd (and its containerd) may take to answer


@dataclass(frozen=True)
class TlsEngine:
    host: str  # tcp://127.0.0.1:<port>
    certs: EngineCerts

    @property
    def engine(self) -> DockerEngine:
        certs = self.certs
        return DockerEngine(self.host, EngineTls(certs.ca, certs.client_cert, certs.client_key))

    def tls_keys(self) -> dict[str, str]:
        """The docker_tls_*_file keys (the same in an agent and in an [[engines]] table)."""
        return {
            "docker_tls_ca_file": str(self.certs.ca),
            "docker_tls_cert_file": str(self.certs.client_cert),
            "docker_tls_key_file": str(self.certs.client_key),
        }

    def agent_keys(self) -> dict[str, str]:
        return {"docker_host": self.host, **self.tls_keys()}

    def engine_table(self, name: str, max_concurrency: int) -> dict[str, object]:
        """This engine as an [[engines]] table."""
        return {
            "name": name, "host": self.host, "max_concurrency": max_concurrency,
            **self.tls_keys(),
        }  # fmt: skip

    def cli(self) -> list[str]:
        certs = self.certs
        return [
            "docker", "--host", self.host, "--tlsverify", "--tlscacert", str(certs.ca),
            "--tlscert", str(certs.client_cert), "--tlskey", str(certs.client_key),
        ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def dockerd_argv(root: Path, port: int, certs: EngineCerts) -> list[str]:
    (root / "daemon.json").write_text("{}")  # not /etc/docker/daemon.json: no host of its own
    return [
        "dockerd",
        "--config-file", str(root / "daemon.json"),
        "--data-root", str(root / "data"),
        "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "docker.pid"),
        "-H", f"tcp://127.0.0.1:{port}",
        "--tlsverify", "--tlscacert", str(certs.ca),
        "--tlscert", str(certs.server_cert), "--tlskey", str(certs.server_key),
        "--bridge=none", "--iptables=false", "--ip6tables=false",
    ]  # fmt: skip


async def engine_answers(engine: DockerEngine) -> bool:
    docker = open_docker(engine)
    try:
        await docker.version()
    except Exception:
        return False
    finally:
        await docker.close()
    return True


@dataclass
class SecondDockerd:
    """A dockerd of our own on 127.0.0.1:<port>, stopped and started as a test needs."""

    root: Path
    port: int
    certs: EngineCerts
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def tls_engine(self) -> TlsEngine:
        return TlsEngine(f"tcp://127.0.0.1:{self.port}", self.certs)

    def start(self) -> None:
        """Start it and wait until it answers over TLS; TimeoutError if it does not."""
        log = (self.root / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            dockerd_argv(self.root, self.port, self.certs),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        asyncio.run(
            wait_until(
                lambda: engine_answers(self.tls_engine.engine),
                timeout=START_WITHIN,
                interval=0.5,
                what="the second dockerd to answer over TLS",
            )
        )

    def stop(self) -> None:
        """SIGTERM, as systemd stops a dockerd; SIGKILL if it is not gone in 30 s."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def log_tail(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")[-2000:]


@pytest.fixture(scope="module")
def second_dockerd() -> Iterator[SecondDockerd]:
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        docker_unavailable("a second dockerd needs the dockerd binary and root")
    root = Path(tempfile.mkdtemp(prefix="ch-engine-"))  # short: unix socket paths are bounded
    dockerd = SecondDockerd(root, free_port(), make_engine_certs(root / "certs"))
    try:
        try:
            dockerd.start()
        except TimeoutError:
            docker_unavailable(f"a second dockerd did not start here: {dockerd.log_tail()}")
        load_test_image(dockerd.tls_engine)
        yield dockerd
    finally:
        dockerd.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_engine(second_dockerd: SecondDockerd) -> TlsEngine:
    return second_dockerd.tls_engine


def load_test_image(engine: TlsEngine) -> None:
    """The scripted test image of the first engine, copied into the second one."""
    save = subprocess.Popen(["docker", "save", TEST_IMAGE], stdout=subprocess.PIPE)
    loaded = subprocess.run(
        [*engine.cli(), "load"], stdin=save.stdout, capture_output=True, timeout=300
    )
    assert save.wait(timeout=60) == 0, f"docker save {TEST_IMAGE} failed"
    assert loaded.returncode == 0, loaded.stderr.decode(errors="replace")


@pytest.fixture
async def remote(tls_engine: TlsEngine) -> AsyncIterator[aiodocker.Docker]:
    """A client of the second engine; what a test left there goes (the engine is ours)."""
    docker = open_docker(tls_engine.engine)
    yield docker
    for container in await docker.containers.list(all=True):
        await container.delete(force=True)
    await docker.close()
