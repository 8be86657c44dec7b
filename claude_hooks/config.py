"""TOML config → frozen dataclasses. The one typed source of truth for every setting.

Each section is a dataclass; its fields (type, default, `doc` metadata) are the
schema. The loader walks the fields, so adding a key is adding a field, and
`deploy/config.example.toml` documents every one of them (a test holds the two
together). Every error names the file, the key and what is wrong.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from claude_hooks.redact import redactor

# systemd's TimeoutStopSec=300 in deploy/claude-hooks.service: at 300 s systemd sends
# SIGKILL, so a stop that long would lose its bookkeeping. The loader refuses a drain of
# 300 s or more; daemon/budget.py checks that the whole stop (drain, stop, close) fits.
SYSTEMD_STOP_TIMEOUT = 300.0
# The agent image's `agent` user (deploy/Dockerfile): far above a host's own accounts,
# so no person on the host shares the container's processes or the credentials file.
DEFAULT_AGENT_UID = 100000


class ConfigError(Exception):
    """A config problem, worded for the operator: file, key, what is wrong."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")


class Role(StrEnum):
    DEV = "dev"  # implements: branch, commits, pull request
    REVIEWER = "reviewer"  # reviews pull requests with inline comments
    LEAD = "lead"  # triages, and may merge approved pull requests


class MergeStyle(StrEnum):
    MERGE = "merge"
    REBASE = "rebase"
    REBASE_MERGE = "rebase-merge"
    SQUASH = "squash"
    FAST_FORWARD_ONLY = "fast-forward-only"


class LogFormat(StrEnum):
    AUTO = "auto"  # journal under systemd (JOURNAL_STREAM set), console otherwise
    JOURNAL = "journal"
    CONSOLE = "console"
    JSON = "json"


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": text, **extra}


DURATION = {"duration": True}


@dataclass(frozen=True)
class ForgejoConfig:
    url: str = field(metadata=_doc("Base URL of the Forgejo instance; the API is under /api/v1"))
    repositories: tuple[str, ...] = field(
        metadata=_doc(
            'The repositories the agents serve: "owner/name" or "owner/*" (any case);'
            " nothing outside them is read, run or written"
        )
    )
    webhook_secret_file: Path | None = field(
        default=None, metadata=_doc("File holding the webhook HMAC secret; no webhooks without it")
    )
    request_timeout: float = field(
        default=30.0, metadata=_doc("Seconds before one Forgejo request gives up", **DURATION)
    )

    @property
    def api_url(self) -> str:
        return self.url.rstrip("/") + "/api/v1"

    def serves(self, repo: str) -> bool:
        """Whether `repo` ("owner/name") is one the operator configured."""
        return repository_served(self.repositories, repo)


def repository_served(patterns: tuple[str, ...], repo: str) -> bool:
    """`repo` matches "owner/name" or "owner/*" in `patterns`, case-insensitively as
    Forgejo compares owner and repository names."""
    owner, sep, name = repo.lower().partition("/")
    if not sep or not owner or not name or "/" in name:
        return False
    for pattern in patterns:
        want_owner, _, want_name = pattern.lower().partition("/")
        if want_owner == owner and want_name in ("*", name):
            return True
    return False


_REPO_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_REPO_PATTERN = re.compile(rf"^{_REPO_SEGMENT}/(?:\*|{_REPO_SEGMENT})$")


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = field(
        default=Path("~/.local/state/claude-hooks"),
        metadata=_doc("SQLite store and per-task files"),
    )
    poll_interval: float = field(
        default=15.0, metadata=_doc("Seconds between notification polls", **DURATION)
    )
    max_concurrency: int = field(default=4, metadata=_doc("Tasks running at once, all agents"))
    drain_timeout: float = field(
        default=240.0,
        metadata=_doc(
            "Seconds running tasks may finish after SIGTERM (the stop fits TimeoutStopSec)",
            **DURATION,
        ),
    )
    hop_limit: int = field(
        default=3, metadata=_doc("How many agent-to-agent mentions one thread may chain")
    )
    max_review_rounds: int = field(
        default=3,
        metadata=_doc(
            "Change-request rounds the team's review loop takes on one PR before it stops"
            " and hands the PR back to the person who asked"
        ),
    )
    outage_retries: int = field(
        default=8,
        metadata=_doc(
            "Times a task waits out an outage (Forgejo, Docker, the store busy) before it fails"
        ),
    )
    outage_retry_for: float = field(
        default=3600.0,
        metadata=_doc("Seconds a task may wait out outages before it fails", **DURATION),
    )
    outage_backoff: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds before a task's first retry after an outage; doubles each time (max 10 min)",
            **DURATION,
        ),
    )
    allowed_users: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Logins allowed to trigger agents even without write access to the repo"),
    )
    log_format: LogFormat = field(
        default=LogFormat.AUTO, metadata=_doc("auto | journal | console | json")
    )
    log_level: str = field(default="info", metadata=_doc("debug | info | warning | error"))

    @property
    def db_path(self) -> Path:
        return self.state_dir / "claude-hooks.sqlite3"


@dataclass(frozen=True)
class ApiConfig:
    listen: str = field(default="127.0.0.1:8765", metadata=_doc("host:port of the HTTP API"))
    token_file: Path | None = field(
        default=None, metadata=_doc("File holding the bearer token the API requires")
    )
    max_body_bytes: int = field(
        default=1_048_576, metadata=_doc("Largest request body accepted (API and webhooks)")
    )
    allowed_hosts: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Host names the API answers besides the listen host, localhost and loopback"
            " addresses (a reverse proxy's, the one Forgejo's webhook uses); others get 421"
        ),
    )

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class AgentConfig:
    name: str = field(metadata=_doc("The Forgejo username of this agent"))
    token_file: Path = field(metadata=_doc("File holding the agent's Forgejo token"))
    credentials_file: Path = field(
        metadata=_doc("Claude Code .credentials.json, bind-mounted read-only")
    )
    role: Role = field(default=Role.DEV, metadata=_doc("dev | reviewer | lead"))
    image: str = field(default="claude-hooks-agent:latest", metadata=_doc("Docker image"))
    network: str = field(default="bridge", metadata=_doc("Docker network mode of the container"))
    max_concurrency: int = field(default=1, metadata=_doc("Tasks of this agent at once"))
    model: str | None = field(default=None, metadata=_doc("claude --model"))
    max_turns: int | None = field(default=None, metadata=_doc("claude --max-turns"))
    timeout: float = field(default=3600.0, metadata=_doc("Seconds one task may run", **DURATION))
    env: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({}),
        metadata=_doc("Extra environment for the claude process (not secrets)"),
    )
    review_by: str | None = field(
        default=None, metadata=_doc("dev role: agent asked to review the PRs it opens")
    )
    merge_style: MergeStyle = field(
        default=MergeStyle.MERGE, metadata=_doc("lead role: how approved PRs are merged")
    )
    merge_by: str | None = field(
        default=None,
        metadata=_doc(
            "dev role: lead agent that merges the PRs it opens once approved (unset: a person"
            " merges)"
        ),
    )
    fix_ci: bool = field(
        default=False,
        metadata=_doc("dev role: a failing commit status on its PR's head makes a task to fix it"),
    )
    checkout: bool = field(
        default=True,
        metadata=_doc("Clone the repository for each task (false: an empty directory)"),
    )
    prompt_file: Path | None = field(
        default=None, metadata=_doc("A prompt template replacing the built-in one for the role")
    )
    memory: str = field(default="4g", metadata=_doc("Container memory limit (Docker units)"))
    cpus: float = field(default=2.0, metadata=_doc("Container CPU limit"))
    pids_limit: int = field(default=512, metadata=_doc("Container pids limit"))
    user: str = field(
        default=f"{DEFAULT_AGENT_UID}:{DEFAULT_AGENT_UID}",
        metadata=_doc("uid:gid that runs claude and git (no account of the host's)"),
    )
    claude_command: str = field(
        default="claude", metadata=_doc("The Claude Code executable inside the container")
    )
    mounts: tuple[str, ...] = field(
        default=(),
        metadata=_doc('Extra bind mounts of the container, Docker "host:container[:ro]" specs'),
    )

    @property
    def container_name(self) -> str:
        return f"claude-hooks-{self.name}"

    @property
    def volume_name(self) -> str:
        return f"claude-hooks-{self.name}-state"


@dataclass(frozen=True)
class Config:
    path: Path
    forgejo: ForgejoConfig
    daemon: DaemonConfig
    api: ApiConfig
    agents: tuple[AgentConfig, ...]
    warnings: tuple[str, ...] = ()

    def agent(self, name: str) -> AgentConfig:
        for agent in self.agents:
            if agent.name.lower() == name.lower():
                return agent
        raise KeyError(name)

    @property
    def agent_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.agents)


SECTIONS: dict[str, type] = {
    "forgejo": ForgejoConfig,
    "daemon": DaemonConfig,
    "api": ApiConfig,
}


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "claude-hooks" / "config.toml"


def load_config(path: Path | str | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError naming file and key."""
    path = Path(path) if path is not None else default_config_path()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file (pass --config PATH)") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    return parse_config(raw, path)


def parse_config(raw: Mapping[str, Any], path: Path) -> Config:
    warnings: list[str] = []
    _reject_unknown(raw, [*SECTIONS, "agents"], path, "")
    if "forgejo" not in raw:
        raise ConfigError(path, "forgejo", "missing section [forgejo] (it needs at least url)")

    def section(name: str) -> Any:
        return _build(SECTIONS[name], _table(raw.get(name, {}), path, name), path, name)

    agents_raw = raw.get("agents", [])
    if not isinstance(agents_raw, list):
        raise ConfigError(path, "agents", "must be an array of tables: [[agents]]")
    agents = tuple(
        _build(AgentConfig, _table(a, path, f"agents[{i}]"), path, f"agents[{i}]")
        for i, a in enumerate(agents_raw)
    )
    config = Config(
        path=path,
        forgejo=section("forgejo"),
        daemon=section("daemon"),
        api=section("api"),
        agents=agents,
    )
    _validate(config, warnings)
    return replace(config, warnings=tuple(warnings))


def _table(value: Any, path: Path, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, key, f"must be a table, got {type(value).__name__}")
    return value


def _reject_unknown(table: Mapping[str, Any], known: list[str], path: Path, where: str) -> None:
    for key in table:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(known)})"
            raise ConfigError(path, _join(where, key), f"unknown key{hint}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _build(cls: type, table: Mapping[str, Any], path: Path, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    _reject_unknown(table, known, path, where)
    values: dict[str, Any] = {}
    for f in fields(cls):
        key = _join(where, f.name)
        if f.name in table:
            values[f.name] = _coerce(table[f.name], hints[f.name], f.metadata, path, key)
        elif isinstance(f.default, Path):
            # Defaults are spelt as an operator would ("~/…"): expand them alike, or a
            # relative `~` directory appears wherever the daemon was started.
            values[f.name] = expand_path(str(f.default))
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(path, key, f"missing required key ({f.metadata.get('doc', '')})")
    return cls(**values)


def _coerce(value: Any, hint: Any, meta: Mapping[str, Any], path: Path, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):  # X | None
        inner = next(a for a in args if a is not type(None))
        return _coerce(value, inner, meta, path, key)
    if meta.get("duration"):
        return parse_duration(value, path, key)
    if hint is Path:
        return expand_path(_expect(value, str, path, key))
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        text = _expect(value, str, path, key)
        try:
            return hint(text)
        except ValueError:
            choices = " | ".join(m.value for m in hint)
            raise ConfigError(path, key, f"{text!r} is not one of {choices}") from None
    if origin is tuple:
        items = _expect(value, list, path, key)
        return tuple(_expect(v, str, path, f"{key}[{i}]") for i, v in enumerate(items))
    if origin is Mapping:
        table = _expect(value, dict, path, key)
        env = {k: _expect(v, str, path, f"{key}.{k}") for k, v in table.items()}
        return types.MappingProxyType(env)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, key, f"must be a number, got {value!r}")
        return float(value)
    return _expect(value, hint, path, key)


def _expect(value: Any, kind: type, path: Path, key: str) -> Any:
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ConfigError(path, key, f"must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", list: "an array", dict: "a table"}.get(
        kind, kind.__name__
    )


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any, path: Path | str = "", key: str = "") -> float:
    """Seconds from 90, 1.5, "90s", "15m", "2h" or "500ms"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        raise ConfigError(path, key, f'bad duration {value!r}: use seconds or "90s", "15m", "2h"')
    if seconds < 0:
        raise ConfigError(path, key, f"duration must not be negative, got {value!r}")
    return seconds


def expand_path(text: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(text)))


_AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")


def is_host(text: str) -> bool:
    """A DNS name or an IP address (IPv6 with or without brackets), as a Host header has it."""
    try:
        ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return bool(_HOST_NAME.fullmatch(text))
    return True


def _validate(config: Config, warnings: list[str]) -> None:
    path = config.path
    _validate_daemon(config, path)
    _validate_repositories(config.forgejo.repositories, path)
    if not re.match(r"^https?://", config.forgejo.url):
        raise ConfigError(
            path, "forgejo.url", f"must start with http:// or https://, got {config.forgejo.url!r}"
        )
    try:
        port = config.api.port
    except (ValueError, IndexError):
        raise ConfigError(
            path, "api.listen", f"must be host:port, got {config.api.listen!r}"
        ) from None
    if not 0 <= port <= 65535:
        raise ConfigError(path, "api.listen", f"port {port} is out of range")
    for i, host in enumerate(config.api.allowed_hosts):
        if not is_host(host):
            raise ConfigError(
                path,
                f"api.allowed_hosts[{i}]",
                f"{host!r} is not a host name or IP address (write it without scheme or port)",
            )
    if not config.agents:
        raise ConfigError(path, "agents", "no [[agents]] configured: add at least one")
    seen: set[str] = set()
    for i, agent in enumerate(config.agents):
        _validate_agent(config, i, agent, seen, warnings)
    if config.forgejo.webhook_secret_file is not None:
        check_secret_file(
            config.forgejo.webhook_secret_file,
            path,
            "forgejo.webhook_secret_file",
            "the webhook secret",
            warnings,
        )
    if config.api.token_file is not None:
        check_secret_file(config.api.token_file, path, "api.token_file", "the API token", warnings)


def _validate_repositories(patterns: tuple[str, ...], path: Path) -> None:
    if not patterns:
        raise ConfigError(
            path,
            "forgejo.repositories",
            'is empty: list the repositories the agents serve, e.g. ["acme/app", "acme/*"]',
        )
    for i, pattern in enumerate(patterns):
        if not _REPO_PATTERN.match(pattern) or ".." in pattern:
            raise ConfigError(
                path,
                f"forgejo.repositories[{i}]",
                f'{pattern!r} is not "owner/name" or "owner/*"',
            )


def _validate_daemon(config: Config, path: Path) -> None:
    daemon = config.daemon
    if daemon.drain_timeout >= SYSTEMD_STOP_TIMEOUT:
        raise ConfigError(
            path,
            "daemon.drain_timeout",
            f"{daemon.drain_timeout:g}s must stay below the unit's TimeoutStopSec="
            f"{SYSTEMD_STOP_TIMEOUT:g} (systemd would SIGKILL the drain)",
        )
    if daemon.poll_interval <= 0:
        raise ConfigError(path, "daemon.poll_interval", "must be more than 0 seconds")
    if daemon.max_concurrency < 1:
        raise ConfigError(path, "daemon.max_concurrency", "must be at least 1")
    if daemon.hop_limit < 0:
        raise ConfigError(path, "daemon.hop_limit", "must not be negative")
    if daemon.max_review_rounds < 0:
        raise ConfigError(path, "daemon.max_review_rounds", "must not be negative")
    if daemon.outage_retries < 0:
        raise ConfigError(path, "daemon.outage_retries", "must not be negative")
    for key in ("outage_retry_for", "outage_backoff"):
        value = getattr(daemon, key)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(path, f"daemon.{key}", f"{value!r} must be more than 0 seconds")
    if daemon.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(
            path,
            "daemon.log_level",
            f"{daemon.log_level!r} is not one of debug | info | warning | error",
        )


def _validate_agent(
    config: Config, i: int, agent: AgentConfig, seen: set[str], warnings: list[str]
) -> None:
    path, where = config.path, f"agents[{i}]"
    if not _AGENT_NAME.match(agent.name):
        raise ConfigError(path, f"{where}.name", f"{agent.name!r} is not a Forgejo username")
    if agent.name.lower() in seen:
        raise ConfigError(path, f"{where}.name", f"agent {agent.name!r} is configured twice")
    seen.add(agent.name.lower())
    if agent.max_concurrency < 1:
        raise ConfigError(path, f"{where}.max_concurrency", "must be at least 1")
    if agent.max_turns is not None and agent.max_turns < 1:
        raise ConfigError(path, f"{where}.max_turns", "must be at least 1")
    if agent.timeout <= 0:
        raise ConfigError(path, f"{where}.timeout", "must be more than 0 seconds")
    names = {a.name.lower() for a in config.agents}
    if agent.review_by is not None and agent.review_by.lower() not in names:
        raise ConfigError(
            path, f"{where}.review_by", f"{agent.review_by!r} is not a configured agent"
        )
    if agent.merge_by is not None:
        lead = next((a for a in config.agents if a.name.lower() == agent.merge_by.lower()), None)
        if lead is None:
            raise ConfigError(
                path, f"{where}.merge_by", f"{agent.merge_by!r} is not a configured agent"
            )
        if lead.role is not Role.LEAD:
            raise ConfigError(
                path,
                f"{where}.merge_by",
                f"{agent.merge_by!r} has role {lead.role}; only a lead agent merges",
            )
    for n, spec in enumerate(agent.mounts):
        problem = bind_spec_problem(spec)
        if problem:
            raise ConfigError(path, f"{where}.mounts[{n}]", f"{spec!r}: {problem}")
    who = f"agent {agent.name!r}"
    check_secret_file(
        agent.token_file, path, f"{where}.token_file", f"the Forgejo token of {who}", warnings
    )
    check_secret_file(
        agent.credentials_file,
        path,
        f"{where}.credentials_file",
        f"the Claude credentials of {who}",
        warnings,
    )


def bind_spec_problem(spec: str) -> str | None:
    """What is wrong with a Docker bind spec "host:container[:ro|rw]", or None."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        return 'must be "host:container" or "host:container:ro"'
    if not (parts[0].startswith("/") and parts[1].startswith("/")):
        return "both paths must be absolute"
    if len(parts) == 3 and parts[2] not in ("ro", "rw"):
        return f"mode must be ro or rw, got {parts[2]!r}"
    return None


def check_secret_file(file: Path, path: Path, key: str, what: str, warnings: list[str]) -> None:
    """A missing secret is an error; one others can read is a warning."""
    try:
        mode = file.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(path, key, f"{what}: file {file} does not exist") from None
    except OSError as exc:
        raise ConfigError(path, key, f"{what}: cannot read {file}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(path, key, f"{what}: {file} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"{path}: {key}: {file} is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {file}"
        )


def read_secret(file: Path) -> str:
    """The secret in a file, whitespace-trimmed. Read at use so rotation needs no restart.

    Every value read is taught to the shared redactor first, so a rotated secret is
    hidden from its first use on (and the old one stays hidden).
    """
    text = file.read_text(encoding="utf-8")
    redactor.learn(text)
    return text.strip()


def learn_secret_file(file: Path) -> bool:
    """Teach the redactor what `file` holds now (a rewritten credentials file); readable?"""
    try:
        read_secret(file)
    except (OSError, UnicodeDecodeError):
        return False
    return True
