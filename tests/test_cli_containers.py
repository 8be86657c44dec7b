"""`claude-hooks containers …`: the decisions as plain functions, then the real command
(a subprocess, as systemd's ExecStartPre runs it) against the real Docker engine."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import pytest

from claude_hooks.cli.containers import (
    ContainerState,
    UsageError,
    describe_up,
    preflight,
    readable_by,
    select_agents,
    shell_argv,
    user_ids,
)
from claude_hooks.cli.main import build_parser, main
from claude_hooks.config import AgentConfig
from claude_hooks.runner.claude import CREDENTIALS_PATH, TASK_MARKER
from claude_hooks.runner.containers import INSTANCE_LABEL, instance_labels, run_exec
from tests.fakes.configs import ConfigFactory
from tests.fakes.docker import AGENT_UID, remove_labelled

# --- pure decisions ---------------------------------------------------------------------------


def test_no_agent_named_means_every_configured_agent(config_factory: ConfigFactory) -> None:
    config = config_factory.load(agents=[config_factory.agent("dev"), config_factory.agent("rev")])
    assert [a.name for a in select_agents(config, [])] == ["dev", "rev"]
    assert [a.name for a in select_agents(config, ["REV", "rev"])] == ["rev"]


def test_unknown_agent_is_an_error_listing_the_configured_ones(
    config_factory: ConfigFactory,
) -> None:
    config = config_factory.load(agents=[config_factory.agent("dev"), config_factory.agent("rev")])
    with pytest.raises(UsageError, match=r"no agent 'nobody'.*configured agents: dev, rev"):
        select_agents(config, ["dev", "nobody"])


@pytest.mark.parametrize(
    ("before", "after", "said"),
    [
        (None, ContainerState("a", True, "h1"), "created"),
        (ContainerState("a", False, "h1"), ContainerState("a", True, "h1"), "started"),
        (ContainerState("a", True, "h1"), ContainerState("a", True, "h1"), "already running"),
        (ContainerState("a", True, "h0"), ContainerState("b", True, "h1"), "recreated"),
        (ContainerState("a", True, "h0"), ContainerState("a", True, "h0"), "recreate deferred"),
    ],
)
def test_up_says_what_it_did(
    before: ContainerState | None, after: ContainerState, said: str
) -> None:
    assert said in describe_up(before, after, wanted_hash="h1")


def test_user_ids_read_numeric_docker_users_only() -> None:
    assert user_ids("1000:1000") == (1000, 1000)
    assert user_ids("1000") == (1000, None)
    assert user_ids("agent") is None and user_ids("1000:agent") is None


def test_file_readability_follows_owner_group_other(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    owner, group = file.stat().st_uid, file.stat().st_gid
    file.chmod(0o600)
    assert readable_by(file.stat(), owner, None)
    assert not readable_by(file.stat(), owner + 4242, group)
    assert readable_by(file.stat(), 0, None)  # root reads anything
    file.chmod(0o640)
    assert readable_by(file.stat(), owner + 4242, group)
    file.chmod(0o604)
    assert readable_by(file.stat(), owner + 4242, group + 4242)


def test_preflight_names_the_agent_and_the_file_that_is_missing_or_empty(
    config_factory: ConfigFactory,
) -> None:
    agent = config_factory.load().agent("dev")
    agent.token_file.write_text("  \n")
    agent.credentials_file.unlink()
    lines = [finding.line() for finding in preflight(agent)]
    assert lines == [
        f"dev: FAILED: token file {agent.token_file} is empty",
        f"dev: FAILED: credentials file {agent.credentials_file}: No such file or directory",
    ]


def test_preflight_checks_the_file_of_the_agent_s_auth_mode_and_secret_env(
    config_factory: ConfigFactory,
) -> None:
    # The daemon reads the login and copies it as the agent user: the host file need not
    # be readable by the container's uid (it was, for the read-only mount), only present.
    oauth = config_factory.secret("oauth", "sk-ant-oat01-xyz")
    aws = config_factory.secret("aws", "aws-secret")
    values = config_factory.agent(
        "dev",
        user="4242:4242",
        credentials_file=None,
        oauth_token_file=str(oauth),
        secret_env={"AWS_SECRET_ACCESS_KEY": str(aws)},
    )
    agent = config_factory.load(agents=[values]).agents[0]
    assert preflight(agent) == []
    oauth.write_text("\n")
    aws.unlink()
    assert [f.line() for f in preflight(agent)] == [
        f"dev: FAILED: OAuth token file {oauth} is empty",
        f"dev: FAILED: secret_env AWS_SECRET_ACCESS_KEY file {aws}: No such file or directory",
    ]


def test_shell_runs_docker_exec_as_the_agent_user(config_factory: ConfigFactory) -> None:
    agent = config_factory.load().agent("dev")
    argv = shell_argv(agent, tty=True)
    assert argv[:6] == ["docker", "exec", "-it", "--user", agent.user, "claude-hooks-dev"]
    assert "-i" in shell_argv(agent, tty=False) and "-it" not in shell_argv(agent, tty=False)


def test_config_given_before_or_after_the_action_is_kept() -> None:
    parser = build_parser()
    before = parser.parse_args(["containers", "--config", "/a.toml", "up", "dev"])
    after = parser.parse_args(["containers", "rebuild", "--force", "--config", "/b.toml"])
    assert (before.config, before.action, before.agents) == (Path("/a.toml"), "up", ["dev"])
    assert (after.config, after.action, after.force) == (Path("/b.toml"), "rebuild", True)
    logs = parser.parse_args(["containers", "logs", "-f", "dev", "rev"])
    assert logs.follow and logs.agents == ["dev", "rev"]


# --- the command, in-process where it stops before Docker ------------------------------------


def test_unknown_agent_on_the_command_line_exits_1_listing_agents(
    config_factory: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_factory.write()
    assert main(["containers", "up", "nobody", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "no agent 'nobody'" in err and "configured agents: dev" in err


def test_missing_credentials_file_is_named_with_its_agent(
    config_factory: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_factory.load(agents=[config_factory.agent("dev"), config_factory.agent("rev")])
    missing = config.agent("rev").credentials_file
    missing.unlink()
    assert main(["containers", "up", "--config", str(config.path)]) == 1
    err = capsys.readouterr().err
    assert "agents[1].credentials_file" in err and "agent 'rev'" in err
    assert f"file {missing} does not exist" in err


def test_shell_needs_one_agent_when_several_are_configured(
    config_factory: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_factory.write(agents=[config_factory.agent("dev"), config_factory.agent("rev")])
    assert main(["containers", "shell", "--config", str(path)]) == 1
    assert "name one agent (one of dev, rev)" in capsys.readouterr().err


def test_no_docker_engine_exits_1_saying_so(config_factory: ConfigFactory, tmp_path: Path) -> None:
    path = config_factory.write()
    done = run_cli_sync(
        ["containers", "up", "--config", str(path)],
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
    )
    assert done.returncode == 1
    assert "does not answer" in done.stderr or "cannot connect" in done.stderr


# --- against the real engine ------------------------------------------------------------------


def run_cli_sync(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "claude_hooks", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@dataclass(frozen=True)
class Deployment:
    """A config whose agents use the test image, and the command run against it."""

    path: Path
    agent: AgentConfig
    token: str
    instance: str  # the daemon-instance label value the command puts on what it creates
    docker: aiodocker.Docker

    async def cli(
        self, *argv: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        args = [argv[0], argv[1], "--config", str(self.path), *argv[2:]]
        return await asyncio.to_thread(run_cli_sync, args, env)

    async def inspect(self) -> dict:
        return (await self.docker.containers.get(self.agent.container_name))._container


@pytest.fixture
async def deployment(
    docker: aiodocker.Docker, test_image: str, tmp_path: Path
) -> AsyncIterator[Deployment]:
    factory = ConfigFactory(tmp_path)
    name = f"t{uuid.uuid4().hex[:8]}"
    values = factory.agent(
        name, image=test_image, network="none", memory="256m", cpus=0.5, pids_limit=128,
        user=f"{AGENT_UID}:{AGENT_UID}",
    )  # fmt: skip
    credentials = values["credentials_file"]
    if os.geteuid() == 0:  # the mount keeps the host owner: the agent's uid must read it
        os.chown(credentials, AGENT_UID, AGENT_UID)
    else:
        os.chmod(credentials, 0o644)
    config = factory.load(agents=[values])
    token = config.agents[0].token_file.read_text().strip()
    instance = instance_labels(config.daemon.state_dir)[INSTANCE_LABEL]
    yield Deployment(config.path, config.agents[0], token, instance, docker)
    await remove_labelled(docker, f"{INSTANCE_LABEL}={instance}")


async def start_task_process(docker: aiodocker.Docker, agent: AgentConfig) -> None:
    """A process that looks like a running task: it carries the task marker."""
    container = await docker.containers.get(agent.container_name)
    execution = await container.exec(
        ["sleep", "300"], user=agent.user, environment=[f"{TASK_MARKER}=7"]
    )
    await execution.start(detach=True)


@pytest.mark.docker
async def test_up_on_a_fresh_machine_creates_and_starts_the_container(
    deployment: Deployment,
) -> None:
    name = deployment.agent.name
    done = await deployment.cli("containers", "up")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{name}: created: claude-hooks-{name} (image {deployment.agent.image})"
    ]
    state = await deployment.inspect()
    assert state["State"]["Running"]
    again = await deployment.cli("containers", "up", name)
    assert again.returncode == 0 and "already running" in again.stdout


@pytest.mark.docker
async def test_down_and_rebuild_on_a_fresh_machine_stop_nothing_and_create(
    deployment: Deployment,
) -> None:
    agent = deployment.agent
    down = await deployment.cli("containers", "down")
    assert down.returncode == 0 and f"no container {agent.container_name}" in down.stdout
    rebuild = await deployment.cli("containers", "rebuild")
    assert rebuild.returncode == 0, rebuild.stderr
    assert f"{agent.name}: created: {agent.container_name}" in rebuild.stdout
    assert (await deployment.inspect())["State"]["Running"]


@pytest.mark.docker
async def test_down_stops_and_keeps_the_state_volume_then_up_starts_it(
    deployment: Deployment,
) -> None:
    agent = deployment.agent
    assert (await deployment.cli("containers", "up")).returncode == 0
    down = await deployment.cli("containers", "down")
    assert down.returncode == 0, down.stderr
    assert f"stopped: {agent.container_name} (volume {agent.volume_name} kept)" in down.stdout
    assert not (await deployment.inspect())["State"]["Running"]
    assert (await deployment.docker.volumes.get(agent.volume_name)).name == agent.volume_name
    up = await deployment.cli("containers", "up")
    assert up.returncode == 0 and f"{agent.name}: started" in up.stdout


@pytest.mark.docker
async def test_rebuild_keeps_the_state_volume_and_the_credentials_copy_in_it(
    deployment: Deployment,
) -> None:
    agent = deployment.agent
    assert (await deployment.cli("containers", "up")).returncode == 0
    old = await deployment.docker.containers.get(agent.container_name)
    code, _ = await run_exec(old, ["sh", "-c", "echo kept > /state/marker"], user=agent.user)
    assert code == 0
    done = await deployment.cli("containers", "rebuild", agent.name)
    assert done.returncode == 0, done.stderr
    assert "volume" in done.stdout and "Claude's login in it" in done.stdout
    new = await deployment.docker.containers.get(agent.container_name)
    assert new.id != old.id
    assert await run_exec(new, ["cat", "/state/marker"], user=agent.user) == (0, "kept\n")
    code, text = await run_exec(new, ["cat", CREDENTIALS_PATH], user=agent.user)
    assert code == 0 and "accessToken" in text
    # The copy is the agent's: Claude Code writes refreshed tokens there, not to the host.
    code, text = await run_exec(new, ["sh", "-c", f"echo x > {CREDENTIALS_PATH}"], user=agent.user)
    assert (code, text) == (0, "")
    assert "accessToken" in agent.credentials_file.read_text()


@pytest.mark.docker
async def test_credentials_replaced_on_the_host_reach_the_container_without_rebuild(
    deployment: Deployment,
) -> None:
    agent = deployment.agent
    assert (await deployment.cli("containers", "up")).returncode == 0
    agent.credentials_file.write_text('{"claudeAiOauth": {"accessToken": "renewed"}}\n')
    later = time.time() + 5  # newer than the copy `up` made, even within the same second
    os.utime(agent.credentials_file, (later, later))
    assert (await deployment.cli("containers", "up")).returncode == 0  # as before a task
    container = await deployment.docker.containers.get(agent.container_name)
    code, text = await run_exec(container, ["cat", CREDENTIALS_PATH], user=agent.user)
    assert code == 0 and "renewed" in text


@pytest.mark.docker
async def test_docker_inspect_shows_no_token(deployment: Deployment) -> None:
    assert (await deployment.cli("containers", "up")).returncode == 0
    assert (await deployment.cli("containers", "rebuild")).returncode == 0
    inspected = json.dumps(await deployment.inspect())
    assert deployment.token not in inspected
    assert "oauth-" not in inspected  # nor the credentials' content
    assert deployment.agent.container_name in inspected  # the search did look at the container


@pytest.mark.docker
async def test_rebuild_and_down_refuse_while_a_task_runs_unless_forced(
    deployment: Deployment,
) -> None:
    agent = deployment.agent
    assert (await deployment.cli("containers", "up")).returncode == 0
    before = (await deployment.inspect())["Id"]
    await start_task_process(deployment.docker, agent)
    for action in ("rebuild", "down"):
        refused = await deployment.cli("containers", action)
        assert refused.returncode == 1
        assert "1 task process running" in refused.stderr and "--force" in refused.stderr
    state = await deployment.inspect()
    assert state["Id"] == before and state["State"]["Running"]
    forced = await deployment.cli("containers", "rebuild", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "stopped 1 task process (--force)" in forced.stdout
    assert (await deployment.inspect())["Id"] != before


@pytest.mark.docker
async def test_another_instance_refuses_the_container_even_forced_and_its_task_runs_on(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The same agent names under another state dir (#16 §2): --force stops nobody's task."""
    agent = deployment.agent
    assert (await deployment.cli("containers", "up")).returncode == 0
    before = (await deployment.inspect())["Id"]
    await start_task_process(deployment.docker, agent)
    table = tomllib.loads(deployment.path.read_text())
    table["daemon"]["state_dir"] = str(tmp_path / "other-state")
    (tmp_path / "other").mkdir()
    factory = ConfigFactory(tmp_path / "other")
    other = factory.write(daemon=table["daemon"], forgejo=table["forgejo"], agents=table["agents"])
    for argv in (["rebuild", "--force"], ["down", "--force"], ["up"]):
        done = await asyncio.to_thread(
            run_cli_sync, ["containers", argv[0], "--config", str(other), *argv[1:]]
        )
        assert done.returncode == 1, done.stdout
        assert f"container {agent.container_name} belongs to another claude-hooks instance" in (
            done.stderr
        ), done.stderr
        assert deployment.instance in done.stderr
    state = await deployment.inspect()
    assert state["Id"] == before and state["State"]["Running"]
    refused = await deployment.cli("containers", "down")  # its own config: the task is there
    assert "1 task process running" in refused.stderr, refused.stderr


@pytest.mark.docker
async def test_logs_print_the_container_output(deployment: Deployment) -> None:
    assert (await deployment.cli("containers", "up")).returncode == 0
    container = await deployment.docker.containers.get(deployment.agent.container_name)
    # What PID 1 (docker-init, as the agent user) writes is the container's log.
    say = ["sh", "-c", "echo hello-log > /proc/1/fd/1"]
    assert (await run_exec(container, say, user=deployment.agent.user))[0] == 0
    done = await deployment.cli("containers", "logs")
    assert done.returncode == 0, done.stderr
    assert "hello-log" in done.stdout.splitlines()


@pytest.mark.docker
async def test_shell_execs_docker_as_the_agent_user(deployment: Deployment, tmp_path: Path) -> None:
    assert (await deployment.cli("containers", "up")).returncode == 0
    fake = tmp_path / "bin" / "docker"  # stands in for the docker CLI: records its argv
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\n')
    fake.chmod(0o755)
    path = f"{fake.parent}{os.pathsep}{os.environ['PATH']}"
    done = await deployment.cli("containers", "shell", deployment.agent.name, env={"PATH": path})
    assert done.returncode == 0, done.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:5] == [
        "exec",
        "-i",
        "--user",
        deployment.agent.user,
        "claude-hooks-" + deployment.agent.name,
    ]


@pytest.mark.docker
async def test_unmanaged_container_of_that_name_is_refused_with_the_fix(
    deployment: Deployment,
) -> None:
    agent = deployment.agent
    labels = {INSTANCE_LABEL: deployment.instance}  # no claude-hooks.managed: not ours
    await deployment.docker.containers.create(
        {"Image": agent.image, "Cmd": ["sleep", "60"], "Labels": labels,
         "HostConfig": {"NetworkMode": "none"}},
        name=agent.container_name,
    )  # fmt: skip
    done = await deployment.cli("containers", "up")
    assert done.returncode == 1
    assert "is not managed by claude-hooks" in done.stderr
    assert f"docker rm -f {agent.container_name}" in done.stderr
