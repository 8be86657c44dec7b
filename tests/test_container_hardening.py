"""The agent container, seen from inside: what a hostile prompt could reach there.

tests/test_containers.py pins the create settings (user, limits, network, read-only
credentials as root); these tests check that they hold from inside the running container:
no Docker socket, no privilege, the limits enforced by the kernel, the credentials
read-only for the agent user too, its processes non-root.
"""

from __future__ import annotations

import aiodocker
import pytest

from claude_hooks.runner.claude import CREDENTIALS_PATH
from claude_hooks.runner.containers import ContainerError, ContainerManager, run_exec
from tests.fakes.docker import MakeAgent
from tests.test_deploy import agent_image  # noqa: F401  (fixture)

pytestmark = pytest.mark.docker

CGROUP_FILES = {  # cgroup v2 name, cgroup v1 name
    "pids": ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"),
    "memory": ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
}


async def cgroup_value(container: object, kind: str) -> str:
    v2, v1 = CGROUP_FILES[kind]
    code, text = await run_exec(container, ["sh", "-c", f"cat {v2} 2>/dev/null || cat {v1}"])
    assert code == 0, text
    return text.strip()


async def test_the_docker_socket_is_neither_mounted_nor_reachable_inside(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    agent = make_agent()
    container = await manager.ensure(agent)
    info = await container.show()
    sources = [m.get("Source", "") for m in info["Mounts"]]
    assert not any("docker.sock" in s or s.endswith("/docker") for s in sources), sources
    probe = "ls /var/run/docker.sock /run/docker.sock 2>&1; echo $DOCKER_HOST"
    _, text = await run_exec(container, ["sh", "-c", probe], user=agent.user)
    assert "No such file" in text and "docker.sock\n" not in text.replace("No such", "")


async def test_the_container_is_unprivileged_with_no_added_capabilities(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    host = (await (await manager.ensure(make_agent())).show())["HostConfig"]
    assert host["Privileged"] is False
    assert not host.get("CapAdd")
    assert not host.get("Devices")
    assert host["NetworkMode"] in ("none", "host")


async def test_limits_are_enforced_by_the_kernel_not_only_recorded(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    container = await manager.ensure(make_agent(memory="256m", pids_limit=128))
    assert await cgroup_value(container, "pids") == "128"
    assert await cgroup_value(container, "memory") == str(256 << 20)
    nano_cpus = (await container.show())["HostConfig"]["NanoCpus"]
    assert nano_cpus == 500_000_000


async def test_the_container_processes_run_as_the_agent_not_root(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    container = await manager.ensure(make_agent())
    top = await container.top()  # ps -ef on the host: UID is a name or a number
    uids = {process[top["Titles"].index("UID")] for process in top["Processes"]}
    assert uids and "root" not in uids and "0" not in uids, uids


async def test_what_the_agent_writes_to_its_credentials_never_reaches_the_host_file(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    # Claude Code must be able to write its refreshed tokens back (the read-only mount
    # it had refused that); the host file is a copy's source only, never a target.
    agent = make_agent()
    assert agent.credentials_file is not None
    container = await manager.ensure(agent)
    await manager.sync_credentials(container, agent)
    before = agent.credentials_file.read_text()
    write = f"echo stolen > {CREDENTIALS_PATH}"
    assert await run_exec(container, ["sh", "-c", write], user=agent.user) == (0, "")
    link = f"rm {CREDENTIALS_PATH} && ln -s /state/home/x {CREDENTIALS_PATH}"
    assert await run_exec(container, ["sh", "-c", link], user=agent.user) == (0, "")
    await manager.sync_credentials(container, agent)
    assert agent.credentials_file.read_text() == before
    mounts = [m["Destination"] for m in (await container.show())["Mounts"]]
    assert mounts == ["/state"]


@pytest.fixture(params=["scripted", pytest.param("agent", marks=pytest.mark.agent_image)])
def image(request: pytest.FixtureRequest, test_image: str) -> str:
    """The busybox test image, and the real agent image (deploy/Dockerfile, with su & co)."""
    return request.getfixturevalue("agent_image") if request.param == "agent" else test_image


ETC_FACTS = "stat -c '%n %u:%g %a' /etc /etc/passwd && cat /etc/passwd"


async def test_a_symlink_planted_in_state_gives_no_root_after_a_daemon_restart(
    docker: aiodocker.Docker,
    manager: ContainerManager,
    make_agent: MakeAgent,
    test_labels: dict[str, str],
    image: str,
) -> None:
    agent = make_agent(image=image)
    container = await manager.ensure(agent)
    etc_before = await run_exec(container, ["sh", "-c", ETC_FACTS], user=agent.user)
    # What a prompt-injected task can do: /state belongs to the agent user.
    plant = "mv /state/home /state/home.moved && ln -s /etc /state/home"
    assert await run_exec(container, ["sh", "-c", plant], user=agent.user) == (0, "")
    restarted = ContainerManager(docker, extra_labels=test_labels)  # a new daemon process
    try:
        await restarted.ensure(agent)
        refusal = ""
    except ContainerError as exc:
        refusal = str(exc)
    assert await run_exec(container, ["sh", "-c", ETC_FACTS], user=agent.user) == etc_before
    rewrite = "echo 'root2::0:0:root:/root:/bin/sh' >> /etc/passwd"
    code, _ = await run_exec(container, ["sh", "-c", rewrite], user=agent.user)
    assert code != 0
    assert await run_exec(container, ["sh", "-c", ETC_FACTS], user=agent.user) == etc_before
    assert "/state/home" in refusal and "symbolic link" in refusal, refusal


def status_fields(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, value in pairs}


async def test_the_container_has_no_capabilities_no_new_privileges_and_a_read_only_root(
    manager: ContainerManager, make_agent: MakeAgent, image: str
) -> None:
    agent = make_agent(image=image)
    container = await manager.ensure(agent)
    host = (await container.show())["HostConfig"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert host["ReadonlyRootfs"] is True and "/tmp" in host["Tmpfs"]
    # As the kernel sees it: no capability even for a root exec, setuid bits are inert.
    for user in (agent.user, "0"):
        code, text = await run_exec(container, ["cat", "/proc/self/status"], user=user)
        status = status_fields(text)
        assert code == 0 and status["NoNewPrivs"] == "1", (user, text)
        for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[capabilities], 16) == 0, (user, capabilities, text)
    code, text = await run_exec(container, ["touch", "/etc/planted"], user="0")
    assert code != 0 and "Read-only file system" in text, text
    assert await run_exec(container, ["touch", "/tmp/scratch"], user=agent.user) == (0, "")
