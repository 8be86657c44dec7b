"""`claude-hooks containers up|down|rebuild|logs|shell [AGENT…]`: the agents' containers.

The same ContainerManager, labels and settings as the daemon, so a container made here
is one the daemon takes as current, with the state volume (and a `credentials_file`
login copied into it when the host file is newer, as before each task). `up` is the
unit's ExecStartPre: it creates what is missing (a fresh machine has no container)
and starts what is stopped. `down` and `rebuild` stop whatever runs in a container,
so they refuse while a task's processes (CLAUDE_HOOKS_TASK in their
environment) run there, unless --force. Every command checks the agents' secret files
first and prints one line per agent; it exits 0 when everything worked, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiodocker
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from claude_hooks.cli.main import EXIT_FAIL, EXIT_OK, AddCommand
from claude_hooks.config import (
    AgentConfig,
    AuthMode,
    Config,
    ConfigError,
    DockerEngine,
    load_config,
)
from claude_hooks.daemon.journal import cli_line
from claude_hooks.runner.containers import (
    ANY_TASK,
    CONFIG_LABEL,
    ENGINE_LABEL,
    MANAGED_LABEL,
    ROOT,
    ContainerError,
    ContainerManager,
    foreign_owner,
    instance_labels,
    signal_processes,
    wait_gone,
)
from claude_hooks.runner.engines import engines_of, open_docker

ACTION_HELP = {
    "up": "create missing agent containers and start stopped ones",
    "down": "stop agent containers (containers and state volumes stay)",
    "rebuild": "recreate agent containers from the current image and config (state kept)",
    "logs": "print an agent container's own output (task output: claude-hooks logs TASK)",
    "shell": "open an interactive shell in an agent's container, as the agent user",
}
FORCE_GRACE = 5.0  # seconds task processes get between SIGTERM and SIGKILL under --force


class UsageError(Exception):
    """The command line names something the config does not have."""


# --- pure decisions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One preflight result for one agent; a fatal one skips that agent."""

    agent: str
    message: str
    fatal: bool = True

    def line(self) -> str:
        return f"{self.agent}: {'FAILED' if self.fatal else 'warning'}: {self.message}"


@dataclass(frozen=True)
class ContainerState:
    """What `docker inspect` says about an agent's container, as far as we decide on it."""

    id: str
    running: bool
    config_hash: str | None

    @classmethod
    def of(cls, container: DockerContainer) -> ContainerState:
        labels = container["Config"]["Labels"] or {}
        return cls(container.id, bool(container["State"]["Running"]), labels.get(CONFIG_LABEL))


def select_agents(config: Config, names: Sequence[str]) -> tuple[AgentConfig, ...]:
    """The agents named on the command line (all configured ones when none is)."""
    if not names:
        return config.agents
    unknown = [name for name in names if name.lower() not in _lower(config.agent_names)]
    if unknown:
        raise UsageError(
            f"no agent {', '.join(map(repr, unknown))} in {config.path}; "
            f"configured agents: {', '.join(config.agent_names)}"
        )
    chosen = {config.agent(name).name: config.agent(name) for name in names}
    return tuple(chosen.values())  # once each, in the order given


def pool_member(agent: AgentConfig, name: str | None) -> AgentConfig:
    """The agent on the engine of its pool named `name` (its one container there)."""
    names = [engine.name for engine in agent.pool]
    for engine in agent.pool:
        if engine.name == name:
            return agent.placed_on(engine)
    asked = "name one with --engine" if name is None else f"no engine {name!r} in its pool"
    raise UsageError(f"agent {agent.name} has a container on {', '.join(names)}: {asked}")


def _lower(names: Sequence[str]) -> set[str]:
    return {name.lower() for name in names}


def describe_up(before: ContainerState | None, after: ContainerState, wanted_hash: str) -> str:
    """What `up` did to one container, judged from its state before and after."""
    if before is None:
        return "created"
    if after.id != before.id:
        return "recreated (its settings had changed)"
    if after.config_hash != wanted_hash:
        return "running; settings changed, recreate deferred until its tasks end"
    return "started" if not before.running else "already running"


def user_ids(user: str) -> tuple[int, int | None] | None:
    """(uid, gid) of a Docker `user` such as "1000:1000" or "1000"; None for names."""
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        return None
    return int(uid), int(gid) if gid else None


def readable_by(file_stat: os.stat_result, uid: int, gid: int | None) -> bool:
    """Whether uid:gid may read a file with this owner and mode (ACLs aside)."""
    mode = file_stat.st_mode
    if uid == 0:
        return True
    if file_stat.st_uid == uid:
        return bool(mode & stat.S_IRUSR)
    if gid is not None and file_stat.st_gid == gid:
        return bool(mode & stat.S_IRGRP)
    return bool(mode & stat.S_IROTH)


def preflight(agent: AgentConfig) -> list[Finding]:
    """The agent's token and credentials files: present, readable, usable in the container."""
    findings: list[Finding] = []
    try:
        if not agent.token_file.read_text(encoding="utf-8").strip():
            findings.append(Finding(agent.name, f"token file {agent.token_file} is empty"))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        findings.append(Finding(agent.name, f"token file {agent.token_file}: {reason}"))
    # Claude's login: only the daemon reads it (a credentials file is copied into the
    # volume as the agent user), so it need not be readable by the container's uid.
    for label, file in _claude_secret_files(agent):
        try:
            if not stat.S_ISREG(file.stat().st_mode):
                findings.append(Finding(agent.name, f"{label} {file} is not a regular file"))
            elif not file.read_text(encoding="utf-8").strip():
                findings.append(Finding(agent.name, f"{label} {file} is empty"))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            findings.append(Finding(agent.name, f"{label} {file}: {reason}"))
    return findings


def _claude_secret_files(agent: AgentConfig) -> list[tuple[str, Path]]:
    labels = {
        AuthMode.CREDENTIALS: "credentials file",
        AuthMode.OAUTH_TOKEN: "OAuth token file",
        AuthMode.API_KEY: "API key file",
    }
    files = [(labels[agent.auth], agent.auth_file)] if agent.auth_file is not None else []
    return files + [(f"secret_env {name} file", f) for name, f in agent.secret_env.items()]


def shell_argv(agent: AgentConfig, *, tty: bool) -> list[str]:
    """`docker exec` of an interactive shell as the agent user: bash where the image has it."""
    flags = ["-it"] if tty else ["-i"]
    shell = "if command -v bash >/dev/null 2>&1; then exec bash; fi; exec sh"
    return [
        "docker",
        *engine_flags(agent.engine),
        "exec",
        *flags,
        "--user",
        agent.user,
        agent.container_name,
        "sh",
        "-c",
        shell,
    ]


def engine_flags(engine: DockerEngine) -> list[str]:
    """The docker CLI's flags that reach `engine` as the daemon does (none: its default)."""
    if engine.host is None:
        return []
    flags = ["--host", engine.host]
    if engine.tls is not None:
        flags += ["--tlsverify", "--tlscacert", str(engine.tls.ca_file)]
        flags += ["--tlscert", str(engine.tls.cert_file), "--tlskey", str(engine.tls.key_file)]
    return flags


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 'es' if word.endswith('s') else 's'}"


# --- Docker I/O -------------------------------------------------------------------------------


class DockerUnavailable(Exception):
    """No Docker engine answers."""


@dataclass(frozen=True)
class Engine:
    docker: aiodocker.Docker
    manager: ContainerManager


@asynccontextmanager
async def connect(config: Config, engine: DockerEngine | None = None) -> AsyncIterator[Engine]:
    """The engine, and a ContainerManager labelled exactly as the daemon's (services.py)."""
    engine = engine or DockerEngine()
    try:
        docker = open_docker(engine)
    except Exception as exc:  # aiodocker raises ValueError when it finds no socket
        raise DockerUnavailable(
            f"cannot connect to the Docker engine {engine.name}: {exc}"
        ) from None
    try:
        labels = {**instance_labels(config.daemon.state_dir), ENGINE_LABEL: engine.name}
        manager = ContainerManager(docker, extra_labels=labels)
        if not await manager.ping():
            raise DockerUnavailable(
                f"the Docker engine {engine.name} at {docker.docker_host} does not answer"
                " (is dockerd running?)"
            )
        yield Engine(docker, manager)
    finally:
        await docker.close()


async def inspect(engine: Engine, agent: AgentConfig) -> DockerContainer | None:
    """The agent's container as Docker shows it, None when there is none."""
    try:
        container = await engine.docker.containers.get(agent.container_name)
    except DockerError as exc:
        if exc.status == 404:
            return None
        raise
    if (container["Config"]["Labels"] or {}).get(MANAGED_LABEL) != "1":
        raise ContainerError(
            f"container {agent.container_name} exists but is not managed by claude-hooks "
            f"(no label {MANAGED_LABEL}=1; made by an older `docker run`?): "
            f"remove it (docker rm -f {agent.container_name}), then run this again"
        )
    labels = container["Config"]["Labels"] or {}
    problem = foreign_owner(agent.container_name, labels, engine.manager.instance)
    if problem is not None:
        raise ContainerError(problem)  # its tasks are not ours to stop (--force) either
    return container


async def task_pids(container: DockerContainer) -> list[int]:
    """Processes of daemon tasks running in the container (none when it is stopped)."""
    if not container["State"]["Running"]:
        return []
    user = container["Config"]["User"] or ROOT
    return await signal_processes(container, "list", ANY_TASK, user=user)


async def stop_tasks(container: DockerContainer) -> list[int]:
    """SIGTERM the container's task processes (Claude stops its tools), SIGKILL stragglers."""
    user = container["Config"]["User"] or ROOT
    pids = await signal_processes(container, "TERM", ANY_TASK, user=user)
    if pids and not await wait_gone(container, ANY_TASK, user=user, grace=FORCE_GRACE):
        await signal_processes(container, "KILL", ANY_TASK, user=user)
    return pids


# --- one action on one agent: a line saying what happened ------------------------------------


@dataclass(frozen=True)
class Options:
    """The command line, as the actions need it."""

    action: str
    force: bool = False  # down, rebuild: stop running task processes first
    follow: bool = False  # logs
    tail: str = "all"  # logs
    prefix: bool = False  # logs of several agents: each line says whose it is

    @classmethod
    def of(cls, args: argparse.Namespace, agents: int) -> Options:
        several = args.action == "logs" and agents > 1
        return cls(args.action, args.force, args.follow, args.tail, prefix=several)


AgentAction = Callable[[Engine, AgentConfig, Options], Awaitable[str]]


class Refused(Exception):
    """The action would break something; the message says what and how to go ahead."""


async def act_up(engine: Engine, agent: AgentConfig, options: Options) -> str:
    before = await inspect(engine, agent)
    after = await engine.manager.ensure(agent)
    await engine.manager.sync_credentials(after, agent)
    previous = ContainerState.of(before) if before is not None else None
    what = describe_up(previous, ContainerState.of(after), engine.manager.config_hash(agent))
    return f"{what}: {agent.container_name} (image {agent.image})"


async def _guard_tasks(
    container: DockerContainer, agent: AgentConfig, force: bool, verb: str
) -> str:
    """Refuses while tasks run (unless force, which stops them); a note for the output line."""
    pids = await task_pids(container)
    if not pids:
        return ""
    if not force:
        raise Refused(
            f"{plural(len(pids), 'task process')} running in {agent.container_name} "
            f"(pids {', '.join(map(str, pids))}); not {verb} it under them: wait until "
            f"`claude-hooks tasks --state running` shows none for {agent.name}, or pass --force"
        )
    stopped = await stop_tasks(container)
    return f"; stopped {plural(len(stopped), 'task process')} (--force)"


async def act_down(engine: Engine, agent: AgentConfig, options: Options) -> str:
    container = await inspect(engine, agent)
    if container is None:
        return f"no container {agent.container_name}: nothing to stop"
    if not container["State"]["Running"]:
        return f"already stopped: {agent.container_name}"
    note = await _guard_tasks(container, agent, options.force, "stopping")
    await engine.manager.down([agent])
    return f"stopped: {agent.container_name} (volume {agent.volume_name} kept){note}"


async def act_rebuild(engine: Engine, agent: AgentConfig, options: Options) -> str:
    container = await inspect(engine, agent)
    if container is None:
        await engine.manager.rebuild(agent)
        return f"created: {agent.container_name} from {agent.image} (there was none)"
    note = await _guard_tasks(container, agent, options.force, "rebuilding")
    await engine.manager.rebuild(agent)
    return (
        f"rebuilt: {agent.container_name} from {agent.image} "
        f"(volume {agent.volume_name} kept, Claude's login in it){note}"
    )


async def act_logs(engine: Engine, agent: AgentConfig, options: Options) -> str:
    container = await inspect(engine, agent)
    if container is None:
        raise Refused(
            f"no container {agent.container_name} (create it: claude-hooks containers up)"
        )
    prefix = f"{agent.name} | " if options.prefix else ""
    if options.follow:
        async for chunk in container.log(stdout=True, stderr=True, follow=True, tail=options.tail):
            _write_lines(prefix, chunk)
    else:
        for chunk in await container.log(stdout=True, stderr=True, tail=options.tail):
            _write_lines(prefix, chunk)
    return ""


def _write_lines(prefix: str, chunk: str) -> None:
    for line in chunk.splitlines():
        print(f"{prefix}{line}", flush=True)


async def act_shell_check(engine: Engine, agent: AgentConfig, options: Options) -> str:
    container = await inspect(engine, agent)
    if container is None or not container["State"]["Running"]:
        raise Refused(
            f"{agent.container_name} is not running (start it: claude-hooks containers up "
            f"{agent.name})"
        )
    return ""


ACTIONS: dict[str, AgentAction] = {
    "up": act_up,
    "down": act_down,
    "rebuild": act_rebuild,
    "logs": act_logs,
    "shell": act_shell_check,
}


async def run_action(config: Config, agents: Sequence[AgentConfig], options: Options) -> int:
    """Preflight, then the action on each agent in turn; one line per agent."""
    failed = False
    ready: list[AgentConfig] = []
    for agent in agents:
        findings = preflight(agent)
        for finding in findings:
            if finding.fatal:
                cli_line(finding.line(), "error")
            else:
                cli_line(finding.line(), "warning", sys.stdout)
        if any(finding.fatal for finding in findings):
            failed = True
        else:
            ready.append(agent)
    if not ready:
        return EXIT_FAIL
    results = [await _act_on_engine(config, engine, ready, options) for engine in engines_of(ready)]
    return EXIT_FAIL if failed or EXIT_FAIL in results else EXIT_OK


async def _act_on_engine(
    config: Config, docker_engine: DockerEngine, agents: Sequence[AgentConfig], options: Options
) -> int:
    """The action on the agents whose containers are on `docker_engine`."""
    failed = False
    action = ACTIONS[options.action]
    try:
        async with connect(config, docker_engine) as engine:
            for agent in (
                a.placed_on(docker_engine) for a in agents if docker_engine in a.on_engines
            ):
                # An agent of an engine pool has a container on each: say which one.
                who = f"{agent.name} on {docker_engine.name}" if agent.pool else agent.name
                try:
                    line = await action(engine, agent, options)
                except (Refused, ContainerError) as exc:
                    cli_line(f"{who}: FAILED: {exc}")
                    failed = True
                    continue
                except DockerError as exc:
                    cli_line(f"{who}: FAILED: Docker answered {exc.status}: {exc.message}")
                    failed = True
                    continue
                if line:
                    print(f"{who}: {line}", flush=True)
    except DockerUnavailable as exc:
        cli_line(f"claude-hooks containers: {exc}")
        return EXIT_FAIL
    return EXIT_FAIL if failed else EXIT_OK


# --- the command line -----------------------------------------------------------------------


def cmd_containers(args: argparse.Namespace) -> int:
    from claude_hooks.daemon.log import config_secret_files, redactor, setup_logging

    try:
        config = load_config(args.config)
        agents = select_agents(config, args.agents)
    except ConfigError as exc:
        cli_line(f"claude-hooks containers: config error: {exc}")
        return EXIT_FAIL
    except UsageError as exc:
        cli_line(f"claude-hooks containers: {exc}")
        return EXIT_FAIL
    if args.action == "shell" and len(agents) != 1:
        names = ", ".join(a.name for a in agents)
        cli_line(f"claude-hooks containers shell: name one agent (one of {names})")
        return EXIT_FAIL
    if args.action == "shell" and agents[0].pool:
        try:
            agents = (pool_member(agents[0], getattr(args, "engine", None)),)
        except UsageError as exc:
            cli_line(f"claude-hooks containers shell: {exc}")
            return EXIT_FAIL
    # The manager's own log lines: warnings only, unless --log-level asks for more.
    redactor.add_files(config_secret_files(config))
    setup_logging(config.daemon.log_format, args.log_level or "warning")
    code = asyncio.run(_run(config, agents, Options.of(args, len(agents))))
    if code == EXIT_OK and args.action == "shell":
        return exec_shell(agents[0])
    return code


async def _run(config: Config, agents: Sequence[AgentConfig], options: Options) -> int:
    if options.action == "logs" and options.follow and len(agents) > 1:
        # Follow every container at once, not one after another.
        codes = await asyncio.gather(*(run_action(config, [agent], options) for agent in agents))
        return max(codes)
    return await run_action(config, agents, options)


def exec_shell(agent: AgentConfig) -> int:
    argv = shell_argv(agent, tty=sys.stdin.isatty() and sys.stdout.isatty())
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        cli_line(f"claude-hooks containers shell: cannot run {argv[0]}: {exc}")
    return EXIT_FAIL


def register(add: AddCommand) -> None:
    """Add `containers ACTION [AGENT…]` to the `claude-hooks` parser."""
    parser = add("containers", cmd_containers, "manage the agents' Docker containers")
    # Accepted after the action too; SUPPRESS keeps a --config given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="config file")
    common.add_argument(
        "agents", nargs="*", metavar="AGENT", help="agent names (default: every configured agent)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in ACTION_HELP.items():
        action = actions.add_parser(name, parents=[common], help=help_text, description=help_text)
        action.set_defaults(force=False, follow=False, tail="all")
        if name in ("down", "rebuild"):
            action.add_argument(
                "--force",
                action="store_true",
                help="stop running task processes first (SIGTERM, then SIGKILL)",
            )
        if name == "shell":
            action.add_argument(
                "--engine", help="an agent with an engine pool: the engine whose container"
            )
        if name == "logs":
            action.add_argument("-f", "--follow", action="store_true", help="keep following")
            action.add_argument("--tail", default="all", help="only the last N lines")
