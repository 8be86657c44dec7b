"""The agent container, seen from inside: what a hostile prompt could reach there.

tests/test_containers.py pins the create settings (user, limits, network, read-only
credentials as root); these tests check that they hold from inside the running container:
no Docker socket, no privilege, the limits enforced by the kernel, the credentials
read-only for the agent user too, its processes non-root.
"""

from __future__ import annotations

import pytest

from claude_hooks.runner.claude import CREDENTIALS_PATH
from claude_hooks.runner.containers import ContainerManager, run_exec
from tests.fakes.docker import MakeAgent

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


async def test_the_agent_user_cannot_write_or_replace_the_credentials(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    agent = make_agent()
    container = await manager.ensure(agent)
    before = agent.credentials_file.read_text()
    write = f"echo stolen > {CREDENTIALS_PATH}"
    code, text = await run_exec(container, ["sh", "-c", write], user=agent.user)
    assert code != 0 and ("Read-only" in text or "Permission denied" in text), text
    move = f"mv {CREDENTIALS_PATH} /tmp/c"
    code, text = await run_exec(container, ["sh", "-c", move], user=agent.user)
    assert code != 0, text
    assert agent.credentials_file.read_text() == before
