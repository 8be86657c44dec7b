"""One long-lived container per agent, through the Docker Engine API (aiodocker).

The container only sleeps; every task is a `docker exec` into it (execution.py).
It is named `claude-hooks-<agent>`, labelled as ours with a hash of its settings,
and recreated when those settings change — but never under a running task.

Layout (see claude.py): the named volume `claude-hooks-<agent>-state` is /state and
holds HOME and CLAUDE_CONFIG_DIR, so Claude's session transcripts and the working
trees survive a rebuild. The image creates /state/home/.claude owned by its
agent user, and a fresh named volume starts as a copy of the image's /state,
owner included, so nothing here runs as root.

A `credentials_file` login is not mounted: Claude Code refreshes its access token
and writes the file back, which a read-only mount refused. Before each task the
daemon copies the host file to $CLAUDE_CONFIG_DIR/.credentials.json when the host
file is newer than the copy there (`sync_credentials`), as the agent user, so the
copy is the agent's to rewrite; the host file is only ever read. A refresh makes
the copy newer, so it stays; an operator who replaces the host file (a new login)
makes the host file newer, so it is copied again.

Nothing in the container may act as root with power: no capabilities (CapDrop
ALL, for root execs too), no-new-privileges (setuid binaries gain nothing), a
read-only root filesystem with a tmpfs /tmp. The agent owns /state, so whatever
it plants there (a symlink /state/home -> /etc) is only ever looked at, as the
agent user, never chowned or followed by a privileged process.

The Forgejo token never reaches the container config, a label, a command line or
the image: it is only in each exec's environment (claude.exec_env).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import structlog
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError
from aiodocker.stream import Stream

from claude_hooks.config import AgentConfig, memory_bytes
from claude_hooks.redact import redactor
from claude_hooks.runner.claude import (
    CLAUDE_CONFIG_DIR,
    CREDENTIALS_PATH,
    DAEMON_MARKER,
    HOME_DIR,
    STATE_DIR,
    TASK_MARKER,
)

log = structlog.get_logger(__name__)

MANAGED_LABEL = "claude-hooks.managed"
AGENT_LABEL = "claude-hooks.agent"
CONFIG_LABEL = "claude-hooks.config"
INSTANCE_LABEL = "claude-hooks.instance"
ENGINE_LABEL = "claude-hooks.engine"  # the engine's name (config.DockerEngine.name)

ROOT = "0"  # only a fallback for a container without a User; it has no capabilities
# /tmp is the only writable path outside /state. exec: Claude Code's Bash tool and
# git may run scripts from there, as they may from /state; nosuid is moot anyway.
TMPFS_OPTIONS = "rw,nosuid,nodev,exec,mode=1777"
STOP_TIMEOUT = 10  # seconds `docker stop` gives the container before SIGKILL
STRAY_GRACE = 5.0  # seconds stray processes get between SIGTERM and SIGKILL

# Prints (and signals) the pids whose environment has $2 set to $3 ("eq") or to
# anything but $3 ("ne"). busybox-compatible; $1 is a signal name or "list".
# A process that vanishes meanwhile is skipped.
SIGNAL_SCRIPT = r"""
for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [ "$pid" = "$$" ] && continue
    entry=$(tr '\0' '\n' 2>/dev/null <"$dir/environ" | grep -m1 "^$2=") || continue
    value=${entry#*=}
    if [ "$4" = eq ] && [ "$value" != "$3" ]; then continue; fi
    if [ "$4" = ne ] && [ "$value" = "$3" ]; then continue; fi
    if [ "$1" = list ] || kill -s "$1" "$pid" 2>/dev/null; then echo "$pid"; fi
done
"""

# What the agent user sees of each state directory, one line each: kind (dir, link,
# missing, other), owner uid (of a link itself: stat does not follow it without -L),
# whether it may write there, the path; the first line is its own uid. Only looks.
STATE_FACTS_SCRIPT = r"""
id -u
for dir in "$@"; do
    if [ -L "$dir" ]; then kind=link
    elif [ -d "$dir" ]; then kind=dir
    elif [ -e "$dir" ]; then kind=other
    else kind=missing; fi
    owner=$(stat -c %u "$dir" 2>/dev/null) || owner=-
    if [ -w "$dir" ]; then writable=yes; else writable=no; fi
    echo "$kind $owner $writable $dir"
done
"""
STATE_DIRS = (STATE_DIR, HOME_DIR, CLAUDE_CONFIG_DIR)

# Writes the $3 bytes on stdin to $1 (the credentials copy) with mode 600 and mtime $2,
# atomically: Claude Code never reads half a file. A planted link at $1 is replaced, not
# followed. It reads a byte count, not to end of input: over TLS (a tcp engine) stdin
# cannot be half-closed, so no end of input ever comes.
INSTALL_SCRIPT = r"""
set -e
umask 077
tmp="$1.claude-hooks.$$"
rm -f "$tmp"
head -c "$3" > "$tmp"
touch -d "@$2" "$tmp"
mv -f "$tmp" "$1"
"""


# Prints the credentials copy's "mtime size" (or "none") on one line, then its first MiB.
READ_COPY_SCRIPT = r"""
stat -c '%Y %s' "$1" 2>/dev/null || echo none
exec head -c 1048576 "$1" 2>/dev/null
"""


def credentials_copy_needed(host_mtime: int, copy: tuple[int, int] | None) -> bool:
    """Copy the host's credentials file unless the volume's copy (mtime, size) is as
    new or newer (Claude Code refreshed it after the last copy: it holds the live
    tokens). An empty copy is none: the mountpoint an older release's read-only bind
    mount left in the volume."""
    return copy is None or copy[1] == 0 or host_mtime > copy[0]


def instance_labels(state_dir: Path) -> dict[str, str]:
    """The label naming which daemon owns a container: its state directory.

    Every change a manager with this label makes (orphan removal, stray processes,
    recreate, rebuild, stop) is to containers carrying it, so two daemons (or a daemon
    and `claude-hooks demo`) on one Docker engine never touch each other's containers;
    a same-named container of another instance is refused (`foreign_owner`).
    """
    where = str(state_dir.expanduser().resolve())
    return {INSTANCE_LABEL: hashlib.sha256(where.encode()).hexdigest()[:12]}


class ContainerError(Exception):
    """A container problem, worded for the operator."""


class ForeignContainer(ContainerError):
    """The agent's container name is taken by another claude-hooks instance (or none)."""

    def __init__(self, container: str, problem: str) -> None:
        super().__init__(problem)
        self.container = container


class ContainerStopped(ContainerError):
    """The agent's container stopped while a task ran in it: stopped from outside, or by
    its engine shutting down (a dockerd stopping on SIGTERM stops its containers first, and
    still answers on the connections it holds)."""

    def __init__(self, container: str) -> None:
        super().__init__(f"container {container} stopped during the run")
        self.container = container


async def is_running(container: DockerContainer) -> bool:
    """Whether the container is running now (False when it is gone)."""
    try:
        info = await container.show()
    except DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return bool(info.get("State", {}).get("Running"))


def foreign_owner(name: str, labels: Mapping[str, str], instance: str | None) -> str | None:
    """Why the container `name` (with these labels) is not ours to touch, or None.

    `instance` is our INSTANCE_LABEL value; None (a manager without one: `check`, tests)
    makes no claim and refuses nothing.
    """
    if instance is None:
        return None
    theirs = labels.get(INSTANCE_LABEL)
    if theirs == instance:
        return None
    owner = (
        f"another claude-hooks instance ({INSTANCE_LABEL}={theirs}, ours is {instance})"
        if theirs
        else f"no claude-hooks instance (it has no {INSTANCE_LABEL} label)"
    )
    return (
        f"container {name} belongs to {owner}: another daemon.state_dir with the same agent "
        f"names on this Docker engine; it is left alone (not recreated, no process in it "
        f"stopped). Give one of the two configs other agent names, or, if that instance "
        f"is gone for good, remove its container (its state volume stays): docker rm -f {name}"
    )


@dataclass(frozen=True)
class StateDir:
    """One state directory as the agent user sees it (STATE_FACTS_SCRIPT)."""

    path: str
    kind: str  # dir | link | missing | other
    owner: int | None
    writable: bool


@dataclass(frozen=True)
class StateFacts:
    uid: int  # the agent user's, as the container resolves agent.user
    dirs: tuple[StateDir, ...]


def parse_state_facts(output: str) -> StateFacts:
    first, *lines = output.splitlines()
    dirs = []
    for line in lines:
        kind, owner, writable, path = line.split(" ", 3)
        dirs.append(
            StateDir(path, kind, int(owner) if owner.isdigit() else None, writable == "yes")
        )
    return StateFacts(int(first), tuple(dirs))


def state_problem(facts: StateFacts, agent: AgentConfig) -> str | None:
    """Why the agent user cannot work in its state directories, or None."""
    for found in facts.dirs:
        if found.kind == "link":
            return (
                f"{found.path} is a symbolic link, not a directory (a task replaced it; "
                f"nothing follows it): put the directory back, as the agent user: "
                f"claude-hooks containers shell {agent.name}"
            )
        if found.kind != "dir":
            return f"{found.path} is {'missing' if found.kind == 'missing' else 'not a directory'}"
        if not found.writable:
            return (
                f"{found.path} belongs to uid {found.owner}, and uid {facts.uid} of "
                f"agents.user cannot write there (a volume made for another uid?): hand "
                f"it over once: {handover_command(agent)}"
            )
    return None


def handover_command(agent: AgentConfig) -> str:
    """The one-off command that gives the state volume to agents.user, for the operator.

    Root, but in a throwaway container that has only the volume (no network, no
    credentials, not the agent's container), and chown -h changes links themselves:
    nothing the agent planted is followed.
    """
    return (
        f"docker run --rm --network none --user 0 -v {agent.volume_name}:{STATE_DIR} "
        f"{agent.image} chown -R -h {agent.user} {STATE_DIR}"
    )


class ContainerManager:
    def __init__(
        self,
        docker: aiodocker.Docker,
        *,
        extra_labels: Mapping[str, str] = types.MappingProxyType({}),
    ) -> None:
        self._docker = docker
        self._extra_labels = dict(extra_labels)
        self.instance = self._extra_labels.get(INSTANCE_LABEL)  # None: claims no instance
        self.engine = self._extra_labels.get(ENGINE_LABEL, "local")  # for the logs
        self._locks: dict[str, asyncio.Lock] = {}
        self._checked: set[str] = set()  # container ids whose /state this process checked
        # container id → the credentials copy's (mtime, size) when the last run ended,
        # read then (nothing of a task runs between runs to change it)
        self._copies: dict[str, tuple[int, int]] = {}

    # --- pure: what the container should be -------------------------------------------

    def container_config(self, agent: AgentConfig) -> dict[str, Any]:
        """The body of POST /containers/create for this agent."""
        body = self._settings(agent)
        body["Labels"][CONFIG_LABEL] = self.config_hash(agent)
        return body

    def config_hash(self, agent: AgentConfig) -> str:
        """Changes whenever anything the container is created with changes."""
        canonical = json.dumps(self._settings(agent), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def _settings(self, agent: AgentConfig) -> dict[str, Any]:
        try:
            memory = memory_bytes(agent.memory)
        except ValueError as exc:
            raise ContainerError(f"agent {agent.name}: memory: {exc}") from None
        labels = {**self._extra_labels, MANAGED_LABEL: "1", AGENT_LABEL: agent.name}
        volume_labels = dict(labels)  # the volume outlives configs: no config hash on it
        settings: dict[str, Any] = {
            "Image": agent.image,
            # The container only hosts execs. docker-init (Init) is PID 1: it reaps the
            # orphans of killed tasks and passes `docker stop`'s SIGTERM on.
            "Entrypoint": ["sleep"],
            "Cmd": ["infinity"],
            "User": agent.user,
            "WorkingDir": STATE_DIR,
            "Env": [f"HOME={HOME_DIR}", f"CLAUDE_CONFIG_DIR={CLAUDE_CONFIG_DIR}"],
            "Labels": labels,
            "HostConfig": {
                "NetworkMode": agent.network,
                "Memory": memory,
                "NanoCpus": round(agent.cpus * 1e9),
                "PidsLimit": agent.pids_limit,
                "Init": True,
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges"],
                "ReadonlyRootfs": True,
                "Tmpfs": {"/tmp": TMPFS_OPTIONS},
                "RestartPolicy": {"Name": "unless-stopped"},
                "Mounts": [
                    {
                        "Type": "volume",
                        "Source": agent.volume_name,
                        "Target": STATE_DIR,
                        "VolumeOptions": {"Labels": volume_labels},
                    },
                ],
            },
        }
        if agent.mounts:  # only then: the hash of a container without any stays the same
            settings["HostConfig"]["Binds"] = list(agent.mounts)
        return settings

    # --- the container's life -------------------------------------------------------------

    async def ensure(self, agent: AgentConfig) -> DockerContainer:
        """The agent's container, running and current: created, started or recreated."""
        async with self._lock(agent.name):
            container = await self._find(agent)
            if container is None:
                return await self._create(agent)
            running = container["State"]["Running"]
            if container["Config"]["Labels"].get(CONFIG_LABEL) != self.config_hash(agent):
                busy = await self._task_pids(container) if running else []
                if not busy:
                    log.info("container_recreate", agent=agent.name, reason="config changed")
                    await container.delete(force=True)
                    return await self._create(agent)
                log.warning("container_recreate_deferred", agent=agent.name, tasks=len(busy))
            if not running:
                await container.start()
                log.info("container_started", agent=agent.name)
            if container.id not in self._checked:
                # Once per daemon process, and until it passes: a task may have
                # replaced /state/home since the last check.
                await self._check_state(container, agent)
            return container

    async def rebuild(self, agent: AgentConfig) -> DockerContainer:
        """A fresh container from the current image and settings; the state volume stays."""
        async with self._lock(agent.name):
            container = await self._find(agent)
            if container is not None:
                await container.delete(force=True)
            return await self._create(agent)

    async def down(self, agents: Iterable[AgentConfig]) -> None:
        """Stop the agents' containers; the containers and their volumes stay."""
        for agent in agents:
            container = await self._find(agent)
            if container is not None and container["State"]["Running"]:
                await container.stop(t=STOP_TIMEOUT)
                log.info("container_stopped", agent=agent.name)

    async def remove_orphans(self, configured: set[str]) -> list[str]:
        """Remove our containers of agents no longer configured (volumes stay); their names."""
        removed = []
        for container in await self._list_managed():
            agent = container["Labels"].get(AGENT_LABEL)
            if agent in configured:
                continue
            await container.delete(force=True)
            name = container["Names"][0].lstrip("/") if container["Names"] else container.id
            removed.append(name)
            log.info("container_orphan_removed", container=name, agent=agent)
        return removed

    async def kill_strays(
        self, agent: AgentConfig, daemon_id: str, *, grace: float = STRAY_GRACE
    ) -> list[int]:
        """Stop processes an earlier daemon instance left running; their pids.

        A process counts as stray when its CLAUDE_HOOKS_DAEMON differs from ours:
        SIGTERM first, so Claude Code can stop its tools, then SIGKILL after `grace`.
        """
        container = await self._find(agent)
        if container is None or not container["State"]["Running"]:
            return []
        match, user = strays_of(daemon_id), agent.user
        pids = await signal_processes(container, "TERM", match, user=user)
        if pids:
            log.warning("stray_processes_terminated", agent=agent.name, pids=pids)
            if not await wait_gone(container, match, user=user, grace=grace):
                killed = await signal_processes(container, "KILL", match, user=user)
                log.warning("stray_processes_killed", agent=agent.name, pids=killed)
        return pids

    async def image_present(self, image: str) -> bool:
        try:
            await self._docker.images.inspect(image)
        except DockerError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def ping(self) -> bool:
        """Whether a Docker engine answers."""
        try:
            await self._docker.version()
        except (TimeoutError, DockerError, aiohttp.ClientError, OSError):
            return False
        return True

    # --- helpers ---------------------------------------------------------------------------

    def _lock(self, agent: str) -> asyncio.Lock:
        return self._locks.setdefault(agent, asyncio.Lock())

    async def _find(self, agent: AgentConfig) -> DockerContainer | None:
        """The agent's container if it is ours: ContainerError for anyone else's."""
        try:
            container = await self._docker.containers.get(agent.container_name)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise
        labels = container["Config"]["Labels"] or {}
        if labels.get(MANAGED_LABEL) != "1":
            raise ContainerError(
                f"container {agent.container_name} exists but is not managed by claude-hooks "
                f"(no label {MANAGED_LABEL}=1): remove or rename it"
            )
        if (problem := foreign_owner(agent.container_name, labels, self.instance)) is not None:
            raise ForeignContainer(agent.container_name, problem)
        return container

    async def _create(self, agent: AgentConfig) -> DockerContainer:
        config = self.container_config(agent)
        try:
            created = await self._docker.containers.create(config, name=agent.container_name)
        except DockerError as exc:
            if exc.status == 404:
                raise ContainerError(
                    f"agent {agent.name}: image {agent.image} is not present; build it first "
                    f"(nothing is pulled): {exc.message}"
                ) from None
            raise ContainerError(
                f"agent {agent.name}: cannot create container {agent.container_name}: {exc.message}"
            ) from None
        try:
            await created.start()
        except DockerError as exc:
            raise ContainerError(
                f"agent {agent.name}: container {agent.container_name} does not start: "
                f"{exc.message}"
            ) from None
        await self._check_state(created, agent)
        log.info(
            "container_created",
            agent=agent.name,
            image=agent.image,
            config=config["Labels"][CONFIG_LABEL],
        )
        return await self._docker.containers.get(created.id)

    async def _check_state(self, container: DockerContainer, agent: AgentConfig) -> None:
        """Refuse a /state the agent user cannot use; warn if it cannot read the credentials.

        Runs as the agent user and only looks: never chowns, never follows a link.
        """
        code, output = await run_exec(
            container, ["sh", "-c", STATE_FACTS_SCRIPT, "state-facts", *STATE_DIRS], user=agent.user
        )
        if code != 0:
            raise ContainerError(
                f"agent {agent.name}: cannot look at {STATE_DIR} in {agent.container_name}: "
                f"{output.strip()}"
            )
        problem = state_problem(parse_state_facts(output), agent)
        if problem is not None:
            raise ContainerError(f"agent {agent.name}: in {agent.container_name}: {problem}")
        self._checked.add(container.id)

    async def sync_credentials(self, container: DockerContainer, agent: AgentConfig) -> bool:
        """Copy a `credentials_file` login into the state volume when the host file is
        newer than the copy there; whether it copied. Teaches the redactor what the
        copy holds (Claude Code may have refreshed it since the last task).

        Every task calls this on its way to Claude. When the last run in this container
        ended with a copy as new as the host file (`read_back_credentials`), that copy
        is still there and learnt: no exec. Otherwise one exec looks at the copy.

        Everything runs as the agent user, who owns the copy: the daemon never writes
        where the agent could steer it, and the host file is only read.
        """
        if agent.credentials_file is None:
            return False
        data, host_mtime = _host_credentials(agent)
        redactor.learn(data.decode("utf-8", errors="replace"))
        seen = self._copies.get(container.id)
        if seen is not None and not credentials_copy_needed(host_mtime, seen):
            return False
        code, facts, held = await self._look_at_copy(container, agent)
        copied = credentials_copy_needed(host_mtime, facts)
        if copied:  # the copy now holds `data`, learnt above, with the host file's mtime
            await self._install_credentials(container, agent, data, host_mtime)
            self._copies[container.id] = (host_mtime, len(data))
        elif code == 0 and facts is not None:
            redactor.learn(held)
            self._copies[container.id] = facts
        return copied

    async def read_back_credentials(self, container: DockerContainer, agent: AgentConfig) -> None:
        """After a run: learn what Claude Code left in the copy (a token it refreshed)
        and keep the copy's (mtime, size) for the next task's `sync_credentials`. A copy
        that cannot be read is forgotten: the next task looks at it again."""
        self.forget_credentials(container)
        if agent.credentials_file is None:
            return
        try:
            code, facts, held = await self._look_at_copy(container, agent)
        except (DockerError, aiohttp.ClientError, OSError) as exc:
            # The run's result stands (its engine may have just gone): the next task looks.
            log.warning("credentials_read_back_failed", agent=agent.name, error=repr(exc))
            return
        if code == 0 and facts is not None:
            redactor.learn(held)
            self._copies[container.id] = facts

    def forget_credentials(self, container: DockerContainer) -> None:
        """What the copy holds is unknown now (a run was stopped): the next task looks."""
        self._copies.pop(container.id, None)

    async def _look_at_copy(
        self, container: DockerContainer, agent: AgentConfig
    ) -> tuple[int | None, tuple[int, int] | None, str]:
        """The read's exit code, the copy's (mtime, size) and what it holds, in one exec
        (bounded: the agent owns the path and could make it a link to something huge)."""
        code, output = await run_exec(
            container,
            ["sh", "-c", READ_COPY_SCRIPT, "read-credentials", CREDENTIALS_PATH],
            user=agent.user,
        )
        facts_line, _, held = output.partition("\n")
        words = facts_line.split()
        facts = (int(words[0]), int(words[1])) if _digits(words, 2) else None
        return code, facts, held

    async def _install_credentials(
        self, container: DockerContainer, agent: AgentConfig, data: bytes, host_mtime: int
    ) -> None:
        code, output = await _exec_with_input(
            container,
            [
                "sh",
                "-c",
                INSTALL_SCRIPT,
                "install-credentials",
                CREDENTIALS_PATH,
                str(host_mtime),
                str(len(data)),
            ],
            data,
            user=agent.user,
        )
        if code != 0:
            raise ContainerError(
                f"agent {agent.name}: cannot copy {agent.credentials_file} to "
                f"{CREDENTIALS_PATH} in {agent.container_name}: {output.strip()}"
            )
        log.info("credentials_copied", agent=agent.name, file=str(agent.credentials_file))

    async def _task_pids(self, container: DockerContainer) -> list[int]:
        # As the user the container was created with: the tasks run as that uid,
        # even when the new config names another.
        user = container["Config"]["User"] or ROOT
        return await signal_processes(container, "list", ANY_TASK, user=user)

    async def _list_managed(self) -> list[DockerContainer]:
        labels = {**self._extra_labels, MANAGED_LABEL: "1"}
        selector = [f"{key}={value}" for key, value in labels.items()]
        return await self._docker.containers.list(all=True, filters=json.dumps({"label": selector}))


async def run_exec(
    container: DockerContainer,
    cmd: Sequence[str],
    *,
    user: str = ROOT,
    environment: Sequence[str] | None = None,
) -> tuple[int | None, str]:
    """Run a short command in the container: its exit code and stdout+stderr."""
    execution = await container.exec(
        list(cmd), user=user, environment=environment, stdout=True, stderr=True
    )
    output = bytearray()
    async with execution.start(detach=False) as stream:
        while (message := await stream.read_out()) is not None:
            output += message.data
    info = await execution.inspect()
    return info["ExitCode"], output.decode("utf-8", errors="replace")


def _host_credentials(agent: AgentConfig) -> tuple[bytes, int]:
    """The host's credentials file: what it holds and its mtime."""
    assert agent.credentials_file is not None
    try:
        data = agent.credentials_file.read_bytes()
        host_mtime = int(agent.credentials_file.stat().st_mtime)
    except OSError as exc:
        raise ContainerError(
            f"agent {agent.name}: cannot read credentials_file "
            f"{agent.credentials_file}: {exc.strerror or exc}"
        ) from None
    return data, host_mtime


def _digits(words: list[str], count: int) -> bool:
    return len(words) == count and all(word.isdigit() for word in words)


async def _exec_with_input(
    container: DockerContainer, cmd: Sequence[str], data: bytes, *, user: str
) -> tuple[int | None, str]:
    """`run_exec` with `data` on stdin (a secret stays out of argv and the environment)."""
    execution = await container.exec(list(cmd), user=user, stdin=True, stdout=True, stderr=True)
    output = bytearray()
    async with execution.start(detach=False) as stream:
        await stream.write_in(data)
        close_stdin(stream)
        while (message := await stream.read_out()) is not None:
            output += message.data
    info = await execution.inspect()
    return info["ExitCode"], output.decode("utf-8", errors="replace")


def close_stdin(stream: Stream) -> None:
    """End the exec's stdin, keeping its output: aiodocker's Stream.close() drops the
    whole connection; a half-close of the hijacked connection makes the engine close
    the process's stdin. A TLS connection (a tcp engine) cannot be half-closed from
    asyncio: there the command reads a byte count instead (`read_exactly`)."""
    connection = stream._resp.connection if stream._resp is not None else None
    transport = connection.transport if connection is not None else None
    if transport is not None and transport.can_write_eof():
        transport.write_eof()


def read_exactly(argv: Sequence[str], length: int) -> list[str]:
    """`argv` fed exactly `length` bytes of stdin, then end of input, by `head -c`: for an
    engine whose exec stdin cannot be half-closed (TLS). The exit code stays argv's."""
    return ["sh", "-c", 'head -c "$0" | "$@"', str(length), *argv]


async def signal_processes(
    container: DockerContainer,
    signal: str,
    match: ProcessMatch,
    *,
    user: str,
) -> list[int]:
    """Send `signal` ("TERM", "KILL", or "list" for none) to the processes `match`
    selects; their pids. Runs as `user`, the uid of the processes it may see: root in
    a container lacks CAP_SYS_PTRACE and cannot read another uid's environ."""
    code, output = await run_exec(
        container,
        ["sh", "-c", SIGNAL_SCRIPT, "signal-processes", signal, *match.script_args()],
        user=user,
    )
    if code != 0:
        raise ContainerError(f"cannot scan processes in container {container.id[:12]}: {output}")
    return [int(word) for word in output.split() if word.isdigit()]


@dataclass(frozen=True)
class ProcessMatch:
    """Processes whose environment has `variable` equal to `value` (or, with
    `equal=False`, set to anything else)."""

    variable: str
    value: str
    equal: bool = True

    def script_args(self) -> list[str]:
        return [self.variable, self.value, "eq" if self.equal else "ne"]


def task_processes(task_id: int) -> ProcessMatch:
    return ProcessMatch(TASK_MARKER, str(task_id))


ANY_TASK = ProcessMatch(TASK_MARKER, "", equal=False)


def strays_of(daemon_id: str) -> ProcessMatch:
    """Processes started by any daemon instance but this one."""
    return ProcessMatch(DAEMON_MARKER, daemon_id, equal=False)


async def wait_gone(
    container: DockerContainer,
    match: ProcessMatch,
    *,
    user: str,
    grace: float,
    poll: float = 0.1,
) -> bool:
    """Whether the matching processes ended within `grace` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while True:
        if not await signal_processes(container, "list", match, user=user):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(poll)
