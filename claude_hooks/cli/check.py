"""`claude-hooks check`: is this config usable, and is everything it names reachable?

Each check is one line an operator can act on: what was checked, OK or FAIL,
and why. The config itself is validated before this runs (load_config).
"""

from __future__ import annotations

import asyncio
import pwd
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from claude_hooks.cli.check_auth import login_reports
from claude_hooks.config import Config, ConfigError, DockerEngine, SecretFileError, read_secret
from claude_hooks.work.prompts import PromptTemplateError, load_template

if TYPE_CHECKING:
    import aiodocker


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"

    @property
    def level(self) -> str:
        """Its priority in the journal, when `check` runs under systemd."""
        if not self.ok:
            return "error"
        return "warning" if self.detail.startswith("warning:") else "info"


async def run_checks(config: Config, *, offline: bool = False) -> list[CheckResult]:
    results = [CheckResult("config", True, f"{config.path} is valid")]
    results += [CheckResult("config", True, f"warning: {w}") for w in config.warnings]
    results += [
        CheckResult("container user", True, f"warning: {w}")
        for w in container_user_warnings(config, host_account, subuid_owner)
    ]
    results += [CheckResult(name, ok, detail) for name, ok, detail in login_reports(config)]
    if offline:
        return results
    results += await check_forgejo(config)
    results += await check_docker(config)
    return results


def host_account(uid: int) -> str | None:
    """The name of the host's account with this uid, or None."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


SUBUID_FILE = Path("/etc/subuid")


def subuid_owner(uid: int, subuid_file: Path = SUBUID_FILE) -> str | None:
    """The account whose subordinate uids (user namespaces: rootless containers)
    include this uid, or None. Lines are "name:first:count"."""
    try:
        text = subuid_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        first, _, count = rest.partition(":")
        if first.isdigit() and count.isdigit() and int(first) <= uid < int(first) + int(count):
            return name
    return None


def numeric_uid(user: str) -> int | None:
    """The uid of a Docker `user` such as "100000:100000"; None for a name."""
    uid = user.partition(":")[0]
    return int(uid) if uid.isdigit() else None


UidOwner = Callable[[int], str | None]


def container_user_warnings(
    config: Config, account_of: UidOwner, delegated_to: UidOwner
) -> list[str]:
    """Agents whose container uid a host account holds: without a user namespace that
    account shares the uid with every task (reads /proc/<pid>/environ, the credentials),
    directly or as the root of its own rootless containers (/etc/subuid)."""
    warnings = []
    for i, agent in enumerate(config.agents):
        uid = numeric_uid(agent.user)
        if uid is None or uid == 0:  # root: the config itself warns (config.agent_warnings)
            continue
        if (account := account_of(uid)) is not None:
            holder = f"is the host account {account!r}"
        elif (account := delegated_to(uid)) is not None:
            holder = f"is among the subordinate uids of host account {account!r} (/etc/subuid)"
        else:
            continue
        warnings.append(
            f"{config.path}: agents[{i}].user: uid {uid} {holder}, which can then read the "
            f"environment of agent {agent.name}'s tasks and its credentials file; use a "
            f"uid no account holds, in the image too (deploy/Dockerfile AGENT_UID)"
        )
    return warnings


def check_prompt_files(config: Config) -> None:
    """Read each agent's prompt_file as the worker will (load_template), so a file that
    is missing, unreadable or names unknown placeholders stops `check` and `run` with its
    key, not the agent's first task."""
    for i, agent in enumerate(config.agents):
        if agent.prompt_file is None:
            continue
        try:
            load_template(agent.role, agent.prompt_file)
        except PromptTemplateError as exc:
            raise ConfigError(config.path, f"agents[{i}].prompt_file", str(exc)) from None


async def _guard(name: str, probe: Callable[[], Awaitable[str]], limit: float) -> CheckResult:
    try:
        async with asyncio.timeout(limit):
            return CheckResult(name, True, await probe())
    except TimeoutError:
        return CheckResult(name, False, f"no answer within {limit:g}s")
    except Exception as exc:  # every failure is a FAIL line, never a traceback
        return CheckResult(name, False, str(exc) or type(exc).__name__)


async def check_forgejo(config: Config) -> list[CheckResult]:
    from claude_hooks.forgejo.client import ForgejoClient

    results = []
    for i, agent in enumerate(config.agents):

        async def whoami(agent=agent, key=f"agents[{i}].token_file") -> str:
            try:
                token = read_secret(agent.token_file)
            except SecretFileError as exc:  # changed since the config was loaded
                raise ValueError(f"{config.path}: {key}: {exc.strerror}") from None
            async with ForgejoClient(
                config.forgejo.url, token, timeout=config.forgejo.request_timeout, max_attempts=1
            ) as client:
                user = await client.current_user()
            if user.login.lower() != agent.name.lower():
                raise ValueError(
                    f"token in {agent.token_file} belongs to {user.login!r}, not {agent.name!r}"
                )
            return f"{config.forgejo.url} answers; token is {user.login}'s"

        name = f"forgejo token of agent {agent.name}"
        results.append(await _guard(name, whoami, config.forgejo.request_timeout + 5))
    return results


async def check_docker(config: Config) -> list[CheckResult]:
    """Each engine the agents name answers and holds the images of its agents."""
    from claude_hooks.runner.engines import engines_of

    results: list[CheckResult] = []
    for engine in engines_of(config.agents):
        images = {a.image for a in config.agents if engine in a.on_engines}
        results += await check_engine(engine, images, config)
    return results


async def check_engine(engine: DockerEngine, images: set[str], config: Config) -> list[CheckResult]:
    from claude_hooks.runner.containers import ContainerManager
    from claude_hooks.runner.engines import open_docker

    what = "docker engine" if engine.host is None else f"docker engine {engine.name}"
    try:
        docker = open_docker(engine)
    except Exception as exc:
        return [CheckResult(what, False, f"cannot connect: {exc}")]
    try:
        manager = ContainerManager(docker)

        async def answers() -> str:
            version = await docker.version()
            return f"engine {version.get('Version')} (API {version.get('ApiVersion')}) answers"

        results = [await _guard(what, answers, 10)]
        if not results[0].ok:
            return results
        for image in sorted(images):

            async def present(image: str = image) -> str:
                if not await manager.image_present(image):
                    raise ValueError(f"image {image} is not present (build it: just image)")
                return "present"

            name = f"docker image {image}" + ("" if engine.host is None else f" on {engine.name}")
            results.append(await _guard(name, present, 10))
        here = tuple(a.placed_on(engine) for a in config.agents if engine in a.on_engines)
        on_engine = replace(config, agents=here)
        labels = await agent_container_labels(docker, on_engine)
        results += [
            CheckResult("agent shared", True, f"warning: {w}")
            for w in shared_agent_warnings(config, labels)
        ]
        return results
    finally:
        await docker.close()


async def agent_container_labels(
    docker: aiodocker.Docker, config: Config
) -> dict[str, Mapping[str, str]]:
    """The labels of each configured agent's container that exists on the engine."""
    import aiodocker

    found: dict[str, Mapping[str, str]] = {}
    for agent in config.agents:
        try:
            container = await docker.containers.get(agent.container_name)
        except aiodocker.DockerError:
            continue  # none yet (or the engine refused): nothing to compare
        found[agent.name] = container["Config"].get("Labels") or {}
    return found


def shared_agent_warnings(config: Config, labels: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Agents another daemon on this host already runs: its container (named after the
    agent) carries another `claude-hooks.instance` label than this config's state dir.

    The container, not a list of config files, is the evidence: every daemon that
    ever ran an agent made and labelled its container, however it was started
    (systemd unit of any user, a foreground `run`, a container of its own), while
    unit files name only the configs one user's systemd starts. Both daemons would
    take the agent's mentions (two tasks each) and the second is refused its container.
    """
    from claude_hooks.runner.containers import INSTANCE_LABEL, instance_labels

    ours = instance_labels(config.daemon.state_dir)[INSTANCE_LABEL]
    warnings = []
    for agent in config.agents:
        theirs = labels.get(agent.name, {}).get(INSTANCE_LABEL)
        if agent.name in labels and theirs != ours:
            owner = f"instance {theirs}" if theirs else "no claude-hooks instance"
            warnings.append(
                f"agent {agent.name}: container {agent.container_name} belongs to {owner} "
                f"({INSTANCE_LABEL}, ours is {ours}: daemon.state_dir {config.daemon.state_dir})."
                " Another config on this host names the same agent; both daemons would take"
                " its mentions. Give one config other agents (docs/SCALING.md, Several"
                " daemons), or if that daemon is gone for good:"
                f" docker rm -f {agent.container_name}"
            )
    return warnings
