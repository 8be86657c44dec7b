"""Per-agent containers: what they are created with, and their life against a real engine."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shlex
import uuid
from collections.abc import Awaitable
from pathlib import Path

import aiodocker
import pytest
from aiodocker.containers import DockerContainer

from claude_hooks.config import AgentConfig
from claude_hooks.redact import redactor
from claude_hooks.runner.claude import (
    CREDENTIALS_PATH,
    DAEMON_MARKER,
    TASK_MARKER,
    claude_argv,
    exec_env,
)
from claude_hooks.runner.containers import (
    AGENT_LABEL,
    CONFIG_LABEL,
    MANAGED_LABEL,
    ContainerError,
    ContainerManager,
    StateDir,
    StateFacts,
    credentials_copy_needed,
    memory_bytes,
    parse_state_facts,
    run_exec,
    signal_processes,
    state_problem,
    task_processes,
)
from claude_hooks.runner.execution import ClaudeExec
from claude_hooks.runner.runtime import REUSE_FOR, DockerRuntime
from claude_hooks.runner.workspace import Checkout, WorkspacePlan, task_directory
from tests.fakes.docker import (  # noqa: F401  (fixtures)
    AGENT_UID,
    RUN_LABEL,
    TEST_LABEL,
    MakeAgent,
    agent_factory,
    built_test_image,
    container_manager,
    docker_client,
    docker_unavailable,
    labels_removed_after_test,
)
from tests.waiting import wait_until


class _NoDocker:
    """Stands in for aiodocker.Docker where only the pure methods are called."""


def pure_manager(**labels: str) -> ContainerManager:
    return ContainerManager(_NoDocker(), extra_labels=labels)  # type: ignore[arg-type]


def agent(**overrides: object) -> AgentConfig:
    values: dict = {
        "name": "dev",
        "token_file": Path("/secrets/dev-token"),
        "credentials_file": Path("/secrets/dev-creds.json"),
        "image": "claude-hooks-agent:1",
        "network": "host",
        "memory": "2g",
        "cpus": 1.5,
        "pids_limit": 256,
        "user": "1000:1000",
    }
    return AgentConfig(**{**values, **overrides})


# --- the create body (pure) ------------------------------------------------------------


def test_config_names_image_user_limits_and_network() -> None:
    config = pure_manager().container_config(agent())
    assert config["Image"] == "claude-hooks-agent:1"
    assert config["User"] == "1000:1000"
    host = config["HostConfig"]
    assert host["NetworkMode"] == "host"
    assert host["Memory"] == 2 * 1024**3
    assert host["NanoCpus"] == 1_500_000_000
    assert host["PidsLimit"] == 256
    assert host["Init"] is True


def test_config_labels_mark_the_container_as_ours() -> None:
    manager = pure_manager(**{"claude-hooks.test": "1"})
    labels = manager.container_config(agent())["Labels"]
    assert labels == {
        MANAGED_LABEL: "1",
        AGENT_LABEL: "dev",
        CONFIG_LABEL: manager.config_hash(agent()),
        "claude-hooks.test": "1",
    }


def test_config_mounts_the_state_volume_and_no_credentials() -> None:
    # The credentials file used to be a read-only bind mount, which made Claude Code's
    # token refresh fail to write it back: now it is copied into the volume.
    (volume,) = pure_manager().container_config(agent())["HostConfig"]["Mounts"]
    assert (volume["Type"], volume["Source"], volume["Target"]) == (
        "volume", "claude-hooks-dev-state", "/state",
    )  # fmt: skip
    assert CONFIG_LABEL not in volume["VolumeOptions"]["Labels"]
    assert CREDENTIALS_PATH.startswith("/state/")  # Claude's config dir persists in the volume


@pytest.mark.parametrize(
    ("host", "copy", "needed"),
    [
        (100, None, True),
        (200, (100, 50), True),
        (100, (100, 50), False),
        (100, (200, 50), False),  # Claude Code refreshed it
        (100, (200, 0), True),  # the empty mountpoint of the old read-only bind mount
    ],
)
def test_the_host_credentials_are_copied_only_when_newer(
    host: int, copy: tuple[int, int] | None, needed: bool
) -> None:
    assert credentials_copy_needed(host, copy) is needed


def test_config_drops_every_capability_and_privilege_gain_and_makes_the_root_read_only() -> None:
    host = pure_manager().container_config(agent())["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and "CapAdd" not in host
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,exec,mode=1777"}
    assert "Privileged" not in host


def state_facts(*lines: str, uid: int = 100000) -> StateFacts:
    return parse_state_facts("\n".join([str(uid), *lines]) + "\n")


def test_state_directories_of_the_agent_user_pass() -> None:
    facts = state_facts(
        "dir 100000 yes /state", "dir 100000 yes /state/home", "dir 100000 yes /state/home/.claude"
    )
    assert facts.dirs[1] == StateDir("/state/home", "dir", 100000, True)
    assert state_problem(facts, agent()) is None


def test_a_state_directory_replaced_by_a_link_is_refused_not_followed() -> None:
    facts = state_facts("dir 100000 yes /state", "link 100000 yes /state/home")
    problem = state_problem(facts, agent())
    assert problem is not None
    assert problem.startswith("/state/home is a symbolic link, not a directory")
    assert "claude-hooks containers shell dev" in problem


def test_a_volume_of_another_uid_is_refused_with_the_command_that_hands_it_over() -> None:
    facts = state_facts("dir 1000 no /state", "dir 1000 no /state/home", uid=100000)
    problem = state_problem(facts, agent(user="100000:100000"))
    assert problem is not None
    assert problem.startswith("/state belongs to uid 1000, and uid 100000 of agents.user")
    assert problem.endswith(
        "docker run --rm --network none --user 0 -v claude-hooks-dev-state:/state "
        "claude-hooks-agent:1 chown -R -h 100000:100000 /state"
    )
    assert state_problem(state_facts("missing - no /state/home"), agent()) == (
        "/state/home is missing"
    )


def test_config_holds_no_secret_file_and_no_token_variable() -> None:
    text = json.dumps(pure_manager().container_config(agent()))
    assert "dev-token" not in text
    assert "GIT_CONFIG" not in text and "Authorization" not in text


def test_config_hash_is_stable_and_follows_every_setting() -> None:
    manager = pure_manager()
    base = manager.config_hash(agent())
    assert manager.config_hash(agent()) == base
    for change in (
        {"image": "claude-hooks-agent:2"},
        {"memory": "3g"},
        {"cpus": 2.0},
        {"pids_limit": 100},
        {"network": "none"},
        {"user": "1001:1001"},
    ):
        assert manager.config_hash(agent(**change)) != base, change


def test_config_hash_ignores_what_each_exec_gets() -> None:
    manager = pure_manager()
    base = manager.config_hash(agent())
    for change in (
        {"token_file": Path("/elsewhere")},
        {"model": "x"},
        {"max_turns": 3},
        # Claude's login is copied into the volume or set per exec, never mounted: a new
        # file (or auth mode) needs no new container.
        {"credentials_file": Path("/secrets/other.json")},
        {"credentials_file": None, "oauth_token_file": Path("/secrets/oauth")},
    ):
        assert manager.config_hash(agent(**change)) == base, change


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4g", 4 << 30), ("512m", 512 << 20), ("1.5GiB", 3 << 29), ("100", 100), ("64K", 64 << 10)],
)
def test_memory_sizes_use_docker_units(text: str, expected: int) -> None:
    assert memory_bytes(text) == expected


def test_a_bad_memory_size_names_the_agent() -> None:
    with pytest.raises(ContainerError, match=r"agent dev: memory: '4x' is not a Docker memory"):
        pure_manager().container_config(agent(memory="4x"))


def test_missing_docker_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Docker engine: gone"):
        docker_unavailable("gone")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Docker is required under CI=true: gone"):
        docker_unavailable("gone")


# --- against the engine ----------------------------------------------------------------


@pytest.mark.docker
async def test_ensure_creates_the_container_as_configured(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent()
    info = await (await manager.ensure(a)).show()
    assert info["Name"] == f"/claude-hooks-{a.name}"
    assert info["State"]["Running"]
    labels = info["Config"]["Labels"]
    assert labels[MANAGED_LABEL] == "1" and labels[AGENT_LABEL] == a.name
    assert labels[CONFIG_LABEL] == manager.config_hash(a)
    host = info["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (256 << 20, 500_000_000, 128)
    assert host["NetworkMode"] == "none"
    assert host["Init"] is True
    assert info["Config"]["User"] == f"{AGENT_UID}:{AGENT_UID}"
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/state"]["Name"] == f"claude-hooks-{a.name}-state"
    assert CREDENTIALS_PATH not in mounts


@pytest.mark.docker
async def test_container_runs_as_non_root_with_writable_state_and_a_copy_of_the_credentials(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent()
    assert a.credentials_file is not None
    container = await manager.ensure(a)
    assert await run_exec(container, ["id", "-u"], user=a.user) == (0, f"{AGENT_UID}\n")
    assert await manager.sync_credentials(container, a)
    code, text = await run_exec(container, ["cat", CREDENTIALS_PATH], user=a.user)
    assert (code, text) == (0, a.credentials_file.read_text())
    owner = await run_exec(container, ["stat", "-c", "%u %a", CREDENTIALS_PATH], user=a.user)
    assert owner == (0, f"{AGENT_UID} 600\n")
    # Claude Code refreshes the token and writes the file back: it may, and the host
    # copy stays as it was.
    refreshed = '{"claudeAiOauth": {"accessToken": "refreshed"}}'
    code, text = await run_exec(
        container, ["sh", "-c", f"echo '{refreshed}' > {CREDENTIALS_PATH}"], user=a.user
    )
    assert (code, text) == (0, "")
    assert a.credentials_file.read_text().startswith('{"claudeAiOauth"')
    assert "refreshed" not in a.credentials_file.read_text()
    projects = "/state/home/.claude/projects/-state-work-task-1"
    code, text = await run_exec(container, ["mkdir", "-p", projects], user=a.user)
    assert (code, text) == (0, "")


def _exec_commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every exec's command from now on, in every container."""
    commands: list[list[str]] = []
    real_exec = DockerContainer.exec

    async def counted(self: DockerContainer, cmd: list[str], **kwargs: object) -> object:
        commands.append(list(cmd))
        return await real_exec(self, cmd, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(DockerContainer, "exec", counted)
    return commands


def _looks_at_the_copy(commands: list[list[str]]) -> int:
    """How many of the execs `_exec_commands` saw looked at the credentials copy."""
    return sum("read-credentials" in command for command in commands)


@pytest.mark.docker
async def test_a_refresh_is_learnt_when_the_run_ends_and_the_next_task_makes_no_exec_for_it(
    manager: ContainerManager, make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every task syncs the credentials on its way to Claude, whose exec waits for it.
    # Only a run changes the copy, so it is looked at once when the run ends (a token
    # Claude refreshed is learnt then), and the next task needs no exec for it.
    a = make_agent()
    assert a.credentials_file is not None
    runtime = DockerRuntime(manager)
    container = await manager.ensure(a)
    commands = _exec_commands(monkeypatch)
    plan, claude = succeeding_run(a)
    await runtime.prepare(a, plan, [])  # the first task: the copy is made
    assert _looks_at_the_copy(commands) == 1
    token = f"refreshed-token-{uuid.uuid4().hex}"
    refreshed = json.dumps({"claudeAiOauth": {"accessToken": token}})
    write = f"echo '{refreshed}' > {CREDENTIALS_PATH} && touch -d @{2**31 - 10} {CREDENTIALS_PATH}"
    refreshing = dataclasses.replace(claude, argv=("sh", "-c", write))  # what Claude Code does
    assert (await runtime.run(a, refreshing, lambda _: None)).exit_code == 0
    await runtime.prepare(a, plan, [])  # the next task: waits for the look the run's end began
    assert _looks_at_the_copy(commands) == 2  # that look, and none of its own
    assert token not in redactor(f"claude printed {token}")  # what Claude may print next
    code, text = await run_exec(container, ["cat", CREDENTIALS_PATH], user=a.user)
    assert (code, token in text) == (0, True)  # the refreshed copy is kept


@pytest.mark.docker
async def test_the_look_at_the_copy_waits_for_no_task_but_the_next_one_in_that_container(
    manager: ContainerManager, make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run's end (its report, a drain) does not wait for the look; the next task's
    # prepare does, so what the run left is learnt before the next claude starts.
    a = make_agent()
    runtime = DockerRuntime(manager)
    plan, claude = succeeding_run(a)
    await runtime.prepare(a, plan, [])
    looked, release = asyncio.Event(), asyncio.Event()
    real_read_back = manager.read_back_credentials

    async def slow(container: DockerContainer, agent: AgentConfig) -> None:
        looked.set()
        await release.wait()
        await real_read_back(container, agent)

    monkeypatch.setattr(manager, "read_back_credentials", slow)
    assert (await runtime.run(a, claude, lambda _: None)).exit_code == 0  # while it waits
    await wait_until(looked.is_set, what="the look at the copy to begin")
    preparing = asyncio.create_task(runtime.prepare(a, plan, []))
    await asyncio.sleep(0.05)  # not a wait: time for prepare to run ahead, if it would
    assert not preparing.done()
    release.set()
    await preparing
    # At shutdown a look under way is dropped.
    looked.clear()
    release.clear()
    assert (await runtime.run(a, claude, lambda _: None)).exit_code == 0
    await wait_until(looked.is_set, what="the second look to begin")
    async with asyncio.timeout(10):  # (were it not dropped, both would wait for ever)
        await runtime.close()
        await runtime.prepare(a, plan, [])  # nothing left to wait for


@pytest.mark.docker
async def test_once_the_daemon_stops_accepting_work_the_runs_that_end_leave_the_copy_alone(
    manager: ContainerManager, make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a drain no task follows: a look would only load the engine the drain waits on.
    a = make_agent()
    runtime = DockerRuntime(manager)
    commands = _exec_commands(monkeypatch)
    plan, claude = succeeding_run(a)
    await runtime.prepare(a, plan, [])
    assert _looks_at_the_copy(commands) == 1
    looks: list[str] = []
    real_read_back = manager.read_back_credentials

    def recorded(container: DockerContainer, agent: AgentConfig) -> Awaitable[None]:
        looks.append(container.id)
        return real_read_back(container, agent)

    monkeypatch.setattr(manager, "read_back_credentials", recorded)
    runtime.stop_reading_back()
    assert (await runtime.run(a, claude, lambda _: None)).exit_code == 0
    assert looks == []
    await runtime.prepare(a, plan, [])  # were a task to follow: it looks itself
    assert _looks_at_the_copy(commands) == 2


@pytest.mark.docker
async def test_after_a_stopped_run_or_a_new_host_login_the_next_task_looks_at_the_copy(
    manager: ContainerManager, make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_agent()
    assert a.credentials_file is not None
    runtime = DockerRuntime(manager)
    container = await manager.ensure(a)
    commands = _exec_commands(monkeypatch)
    plan, claude = succeeding_run(a)
    await runtime.prepare(a, plan, [])
    assert (await runtime.run(a, claude, lambda _: None)).exit_code == 0
    await runtime.prepare(a, plan, [])
    assert _looks_at_the_copy(commands) == 2  # the look when the run ended
    # A run stopped (cancelled here) may have left anything: not relied on.
    hanging = dataclasses.replace(claude, argv=("sleep", "60"), stop_grace=1.0)
    running = asyncio.create_task(runtime.run(a, hanging, lambda _: None))
    await wait_until(
        lambda: signal_processes(container, "list", task_processes(1), user=a.user),
        what="the hanging run to start",
    )
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await runtime.prepare(a, plan, [])
    assert _looks_at_the_copy(commands) == 3
    assert (await runtime.run(a, claude, lambda _: None)).exit_code == 0
    # The operator logs in again on the host: the newer file is copied.
    a.credentials_file.write_text('{"claudeAiOauth": {"accessToken": "new-login"}}\n')
    os.utime(a.credentials_file, (2**31 - 1, 2**31 - 1))
    assert await manager.sync_credentials(container, a)
    code, text = await run_exec(container, ["cat", CREDENTIALS_PATH], user=a.user)
    assert (code, "new-login" in text) == (0, True)


@pytest.mark.docker
async def test_a_refreshed_copy_stays_until_the_host_file_is_replaced(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent()
    assert a.credentials_file is not None
    container = await manager.ensure(a)
    assert await manager.sync_credentials(container, a)
    # Claude Code refreshed the token in the volume (the copy is now newer).
    refreshed = '{"claudeAiOauth": {"accessToken": "refreshed-in-volume"}}'
    write = f"echo '{refreshed}' > {CREDENTIALS_PATH} && touch -d @{2**31 - 10} {CREDENTIALS_PATH}"
    assert await run_exec(container, ["sh", "-c", write], user=a.user) == (0, "")
    assert not await manager.sync_credentials(container, a)  # the next task keeps it
    code, text = await run_exec(container, ["cat", CREDENTIALS_PATH], user=a.user)
    assert (code, text.strip()) == (0, refreshed)
    # The operator logs in again on the host: the newer host file replaces the copy,
    # even where the agent planted a link instead of the file.
    link = f"rm -f {CREDENTIALS_PATH} && ln -s /state/elsewhere {CREDENTIALS_PATH}"
    assert await run_exec(container, ["sh", "-c", link], user=a.user) == (0, "")
    a.credentials_file.write_text('{"claudeAiOauth": {"accessToken": "new-login"}}\n')
    os.utime(a.credentials_file, (2**31 - 1, 2**31 - 1))
    assert await manager.sync_credentials(container, a)
    code, text = await run_exec(container, ["cat", CREDENTIALS_PATH], user=a.user)
    assert (code, "new-login" in text) == (0, True)
    kind = await run_exec(container, ["sh", "-c", f"test -L {CREDENTIALS_PATH} || echo file"])
    assert kind == (0, "file\n")


@pytest.mark.docker
async def test_an_empty_file_left_by_the_old_mount_is_replaced(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    # The read-only bind mount of older releases left an empty mountpoint file in the
    # volume, newer than the host file: it must not pass for a refreshed login.
    a = make_agent()
    assert a.credentials_file is not None
    os.utime(a.credentials_file, (1_000_000_000, 1_000_000_000))
    container = await manager.ensure(a)
    assert await run_exec(container, ["touch", CREDENTIALS_PATH], user=a.user) == (0, "")
    assert await manager.sync_credentials(container, a)
    code, text = await run_exec(container, ["cat", CREDENTIALS_PATH], user=a.user)
    assert (code, text) == (0, a.credentials_file.read_text())


@pytest.mark.docker
async def test_ensure_returns_the_running_container_unchanged(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent()
    first = await manager.ensure(a)
    assert (await manager.ensure(a)).id == first.id


@pytest.mark.docker
async def test_ensure_starts_a_stopped_container(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent()
    first = await manager.ensure(a)
    await manager.down([a])
    assert not (await first.show())["State"]["Running"]
    again = await manager.ensure(a)
    assert again.id == first.id
    assert (await again.show())["State"]["Running"]


@pytest.mark.docker
async def test_changed_config_recreates_the_container_and_keeps_the_volume(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent()
    first = await manager.ensure(a)
    await run_exec(
        first, ["sh", "-c", "echo kept > /state/home/.claude/session.jsonl"], user=a.user
    )
    changed = dataclasses.replace(a, memory="300m")
    second = await manager.ensure(changed)
    assert second.id != first.id
    info = await second.show()
    assert info["HostConfig"]["Memory"] == 300 << 20
    assert info["Config"]["Labels"][CONFIG_LABEL] == manager.config_hash(changed)
    assert await run_exec(second, ["cat", "/state/home/.claude/session.jsonl"]) == (0, "kept\n")


@pytest.mark.docker
async def test_changed_config_waits_while_a_task_runs(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent()
    first = await manager.ensure(a)
    await _start_detached(first, a.user, {TASK_MARKER: "5", DAEMON_MARKER: "d"})
    # Even when the new config names another user than the one the task runs as.
    changed = dataclasses.replace(a, memory="300m", user="1001:1001")
    assert (await manager.ensure(changed)).id == first.id


@pytest.mark.docker
async def test_a_container_of_an_earlier_release_is_recreated_hardened(
    docker: aiodocker.Docker, manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent()
    earlier = manager.container_config(a)  # as created before the hardening
    for key in ("CapDrop", "SecurityOpt", "ReadonlyRootfs", "Tmpfs"):
        del earlier["HostConfig"][key]
    earlier["Labels"][CONFIG_LABEL] = "0123456789abcdef"
    old = await docker.containers.create(earlier, name=a.container_name)
    await old.start()
    new = await manager.ensure(a)
    assert new.id != old.id
    host = (await new.show())["HostConfig"]
    assert (host["CapDrop"], host["SecurityOpt"], host["ReadonlyRootfs"]) == (
        ["ALL"], ["no-new-privileges"], True,
    )  # fmt: skip


@pytest.mark.docker
async def test_a_state_volume_of_another_uid_is_refused_until_handed_over(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent()
    await manager.ensure(a)  # the volume now belongs to the image's agent uid
    other = dataclasses.replace(a, user="4242:4242")
    with pytest.raises(ContainerError, match=r"/state belongs to uid \d+, and uid 4242") as err:
        await manager.ensure(other)
    command = str(err.value).rsplit("hand it over once: ", 1)[1]
    assert command.startswith("docker run --rm --network none --user 0 ")
    await manager.down([other])  # the volume's owner changes while nothing runs
    handover = await asyncio.create_subprocess_exec(
        *shlex.split(command), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await handover.communicate()
    assert handover.returncode == 0, output
    container = await manager.ensure(other)
    assert await run_exec(container, ["stat", "-c", "%u", "/state/home"], user=other.user) == (
        0, "4242\n",
    )  # fmt: skip


@pytest.mark.docker
async def test_rebuild_makes_a_new_container_on_the_same_volume_and_credentials(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent()
    first = await manager.ensure(a)
    await manager.sync_credentials(first, a)
    await run_exec(first, ["sh", "-c", "echo kept > /state/marker"], user=a.user)
    second = await manager.rebuild(a)
    assert second.id != first.id
    assert await run_exec(second, ["cat", "/state/marker"], user=a.user) == (0, "kept\n")
    code, _ = await run_exec(second, ["test", "-r", CREDENTIALS_PATH], user=a.user)
    assert code == 0


@pytest.mark.docker
async def test_ensure_and_down(
    docker: aiodocker.Docker, manager: ContainerManager, make_agent: MakeAgent
) -> None:
    agents = [make_agent(), make_agent()]
    started = [await manager.ensure(a) for a in agents]
    assert [(await c.show())["State"]["Running"] for c in started] == [True, True]
    await manager.down(agents)
    for a in agents:
        info = await (await docker.containers.get(a.container_name)).show()
        assert not info["State"]["Running"]
    names = {v["Name"] for v in (await docker.volumes.list())["Volumes"]}
    assert {a.volume_name for a in agents} <= names


@pytest.mark.docker
async def test_orphans_are_removed_and_their_volumes_kept(
    docker: aiodocker.Docker, manager: ContainerManager, make_agent: MakeAgent
) -> None:
    kept, gone = make_agent(), make_agent()
    for a in (kept, gone):
        await manager.ensure(a)
    removed = await manager.remove_orphans({kept.name})
    assert removed == [gone.container_name]
    assert (await docker.containers.get(kept.container_name))["State"]["Running"]
    with pytest.raises(aiodocker.DockerError):
        await docker.containers.get(gone.container_name)
    assert (await docker.volumes.get(gone.volume_name)).name == gone.volume_name


@pytest.mark.docker
async def test_kill_strays_stops_only_processes_of_other_daemon_instances(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent()
    container = await manager.ensure(a)
    await _start_detached(container, a.user, {TASK_MARKER: "1", DAEMON_MARKER: "old"})
    await _start_detached(container, a.user, {TASK_MARKER: "2", DAEMON_MARKER: "current"})
    killed = await manager.kill_strays(a, "current", grace=2.0)
    assert len(killed) == 1
    code, ps = await run_exec(container, ["ps", "-o", "pid,args"])
    assert code == 0
    running = {line.split()[0] for line in ps.splitlines()[1:] if "sleep 777" in line}
    assert str(killed[0]) not in running
    assert len(running) == 1  # the current daemon's task runs on


@pytest.mark.docker
async def test_ensure_refuses_a_container_that_is_not_ours(
    docker: aiodocker.Docker,
    manager: ContainerManager,
    make_agent: MakeAgent,
    test_labels: dict[str, str],
) -> None:
    a = make_agent()
    await docker.containers.create(
        {"Image": a.image, "Cmd": ["true"], "Labels": test_labels}, name=a.container_name
    )
    with pytest.raises(ContainerError, match="not managed by claude-hooks"):
        await manager.ensure(a)


@pytest.mark.docker
async def test_a_missing_image_is_reported_not_pulled(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent(image=f"claude-hooks-absent-{uuid.uuid4().hex[:8]}:latest")
    with pytest.raises(ContainerError, match="is not present; build it first"):
        await manager.ensure(a)


@pytest.mark.docker
async def test_image_present_and_ping(manager: ContainerManager, test_image: str) -> None:
    assert await manager.image_present(test_image)
    assert not await manager.image_present("claude-hooks-absent:never")
    assert await manager.ping()


@pytest.mark.docker
async def test_test_resources_carry_the_cleanup_labels(
    docker: aiodocker.Docker,
    manager: ContainerManager,
    make_agent: MakeAgent,
    test_labels: dict[str, str],
) -> None:
    a = make_agent()
    await manager.ensure(a)
    volume = await (await docker.volumes.get(a.volume_name)).show()
    assert volume["Labels"][TEST_LABEL] == "1"
    assert volume["Labels"][RUN_LABEL] == test_labels[RUN_LABEL]


async def _start_detached(container: DockerContainer, user: str, env: dict[str, str]) -> None:
    execution = await container.exec(["sleep", "777"], user=user, environment=env)
    await execution.start(detach=True)


def test_instance_label_differs_per_state_directory(tmp_path: Path) -> None:
    from claude_hooks.runner.containers import INSTANCE_LABEL, instance_labels

    one = instance_labels(tmp_path / "a")[INSTANCE_LABEL]
    assert one == instance_labels(tmp_path / "a")[INSTANCE_LABEL]
    assert one != instance_labels(tmp_path / "b")[INSTANCE_LABEL]


async def test_orphan_removal_spares_containers_of_another_daemon_instance(
    docker: aiodocker.Docker, make_agent: MakeAgent, test_labels: dict[str, str], tmp_path: Path
) -> None:
    from claude_hooks.runner.containers import instance_labels

    ours = ContainerManager(docker, extra_labels={**test_labels, **instance_labels(tmp_path / "a")})
    theirs = ContainerManager(
        docker, extra_labels={**test_labels, **instance_labels(tmp_path / "b")}
    )
    their_agent = make_agent()
    await theirs.ensure(their_agent)
    assert await ours.remove_orphans(set()) == []
    container = await docker.containers.get(their_agent.container_name)
    assert container["State"]["Running"]


def test_a_container_of_another_instance_is_foreign_naming_it_and_both_instances() -> None:
    from claude_hooks.runner.containers import INSTANCE_LABEL, foreign_owner

    ours = {MANAGED_LABEL: "1", INSTANCE_LABEL: "aaa"}
    assert foreign_owner("claude-hooks-dev", ours, "aaa") is None
    theirs = foreign_owner("claude-hooks-dev", {**ours, INSTANCE_LABEL: "bbb"}, "aaa")
    assert theirs is not None
    assert "container claude-hooks-dev belongs to another claude-hooks instance" in theirs
    assert (
        f"{INSTANCE_LABEL}=bbb, ours is aaa" in theirs and "docker rm -f claude-hooks-dev" in theirs
    )
    unlabelled = foreign_owner("claude-hooks-dev", {MANAGED_LABEL: "1"}, "aaa")
    assert unlabelled is not None and f"no {INSTANCE_LABEL} label" in unlabelled
    assert foreign_owner("claude-hooks-dev", {**ours, INSTANCE_LABEL: "bbb"}, None) is None


@pytest.mark.docker
async def test_another_instance_never_recreates_rebuilds_stops_or_kills_into_a_container(
    docker: aiodocker.Docker, make_agent: MakeAgent, test_labels: dict[str, str], tmp_path: Path
) -> None:
    """The same agent name under another state dir (#16 §2): refused, never replaced."""
    from claude_hooks.runner.containers import instance_labels, signal_processes, strays_of

    theirs = ContainerManager(
        docker, extra_labels={**test_labels, **instance_labels(tmp_path / "a")}
    )
    ours = ContainerManager(docker, extra_labels={**test_labels, **instance_labels(tmp_path / "b")})
    agent = make_agent()
    container = await theirs.ensure(agent)
    await _start_detached(container, agent.user, {TASK_MARKER: "1", DAEMON_MARKER: "theirs"})
    their_task = strays_of("ours")  # what our kill_strays would take for a dead daemon's
    for step in (
        ours.kill_strays(agent, "ours", grace=0.5),
        ours.ensure(agent),  # its labels differ from ours: "config changed"
        ours.rebuild(agent),
        ours.down([agent]),
    ):
        with pytest.raises(ContainerError, match="belongs to another claude-hooks instance"):
            await step
    after = await docker.containers.get(agent.container_name)
    assert after.id == container.id and after["State"]["Running"]
    assert len(await signal_processes(after, "list", their_task, user=agent.user)) == 1


def succeeding_run(agent: AgentConfig) -> tuple[WorkspacePlan, ClaudeExec]:
    """A task's tree (no checkout) and a scripted claude run in it that succeeds."""
    plan = WorkspacePlan(path=task_directory("acme/app", 1, 1), checkout=Checkout.NONE)
    claude = ClaudeExec(
        task_id=1,
        argv=tuple(claude_argv(agent, session_id=None, system_prompt="")),
        env=tuple(exec_env(agent, task_id=1, daemon_id="d")),
        stdin=b"fake-claude: scenario=tool-run-success",
        workdir=plan.path,
        makes_workdir=True,  # as the worker says for a tree with nothing checked out
    )
    return plan, claude


@pytest.mark.docker
async def test_with_nothing_to_check_out_the_claude_exec_makes_its_directory_itself(
    manager: ContainerManager, make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workspace exec would only `mkdir -p`: one engine round trip on the way to Claude
    # that the claude exec does without. Claude runs in the directory, made as the agent
    # user, with the exec's own pid (found by its marker) and exit code.
    a = make_agent()
    runtime = DockerRuntime(manager)
    await runtime.prepare(a, *succeeding_run(a)[:1], [])  # the copy of the login is made
    await runtime.run(a, succeeding_run(a)[1], lambda _: None)
    commands = _exec_commands(monkeypatch)
    plan, claude = succeeding_run(a)
    plan = dataclasses.replace(plan, path=task_directory("acme/app", 2, 2))
    script = 'stat -c "%u $$ %n" "$PWD"; grep -c CLAUDE_HOOKS_TASK=1 /proc/$$/environ; exit 3'
    here = dataclasses.replace(claude, argv=("sh", "-c", script), workdir=plan.path)
    lines: list[str] = []
    await runtime.prepare(a, plan, [])
    result = await runtime.run(a, here, lambda event: lines.append(event.raw))
    assert result.exit_code == 3
    uid, _, cwd = lines[0].split()
    assert (uid, cwd, lines[1]) == (str(AGENT_UID), plan.path, "1")
    # Besides the sweep for leftovers and the look at the login's copy after the run,
    # the task made one exec: claude's.
    bookkeeping = ("signal-processes", "read-credentials")
    task_execs = [c for c in commands if not any(name in c for name in bookkeeping)]
    assert len(task_execs) == 1 and task_execs[0][-3:] == list(here.argv)


@pytest.mark.docker
async def test_a_directory_the_claude_exec_cannot_make_fails_the_run_saying_why(
    manager: ContainerManager, make_agent: MakeAgent
) -> None:
    a = make_agent()
    runtime = DockerRuntime(manager)
    _, claude = succeeding_run(a)
    blocked = dataclasses.replace(claude, workdir="/proc/no-such-place/work")
    result = await runtime.run(a, blocked, lambda _: None)
    assert result.result_event is None and result.exit_code not in (0, None)
    assert "mkdir" in result.stderr_tail and "/proc/no-such-place" in result.stderr_tail


@pytest.mark.docker
async def test_the_claude_exec_reuses_the_container_its_prepare_exec_just_ran_in(
    manager: ContainerManager, make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One engine round trip (an inspect) less between the workspace exec and Claude;
    # a container prepared longer ago than REUSE_FOR is looked at again.
    a = make_agent()
    now = [1000.0]
    runtime = DockerRuntime(manager, clock=lambda: now[0])
    ensured: list[str] = []
    real_ensure = manager.ensure

    async def counted(agent: AgentConfig) -> DockerContainer:
        ensured.append(agent.name)
        return await real_ensure(agent)

    monkeypatch.setattr(manager, "ensure", counted)
    plan, claude = succeeding_run(a)
    await runtime.prepare(a, plan, [])
    assert (await runtime.run(a, claude, lambda _: None)).exit_code == 0
    assert len(ensured) == 1
    now[0] += REUSE_FOR + 1
    assert (await runtime.run(a, claude, lambda _: None)).exit_code == 0
    assert len(ensured) == 2


@pytest.mark.docker
async def test_a_prepare_right_after_ready_does_not_inspect_the_container_again(
    manager: ContainerManager, make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker makes the container ready (its inspect) while it reads the thread: the
    # prepare that follows (the login's copy beside the workspace exec) and the claude exec
    # do not look again; a ready longer ago than REUSE_FOR is not relied on.
    a = make_agent()
    now = [1000.0]
    runtime = DockerRuntime(manager, clock=lambda: now[0])
    calls: list[str] = []
    real_ensure, real_sync = manager.ensure, manager.sync_credentials

    async def ensure(agent: AgentConfig) -> DockerContainer:
        calls.append("ensure")
        return await real_ensure(agent)

    async def sync(container: DockerContainer, agent: AgentConfig) -> bool:
        calls.append("sync")
        return await real_sync(container, agent)

    monkeypatch.setattr(manager, "ensure", ensure)
    monkeypatch.setattr(manager, "sync_credentials", sync)
    plan, claude = succeeding_run(a)
    await runtime.ready(a)
    await runtime.prepare(a, plan, [])
    assert (await runtime.run(a, claude, lambda _: None)).exit_code == 0
    assert calls == ["ensure", "sync"]
    await runtime.ready(a)
    now[0] += REUSE_FOR + 1
    await runtime.prepare(a, plan, [])
    assert sorted(calls) == ["ensure"] * 3 + ["sync"] * 2  # prepare looks again itself
