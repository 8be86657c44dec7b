"""TOML config → frozen dataclasses. The one typed source of truth for every setting.

Each section is a dataclass; its fields (type, default, `doc` metadata) are the
schema. The loader walks the fields, so adding a key is adding a field, and
`deploy/config.example.toml` documents every one of them (a test holds the two
together). Every error names the file, the key and what is wrong.
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import math
import os
import re
import ssl
import stat
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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


class AuthMode(StrEnum):
    """The config key an agent's Claude login comes from."""

    CREDENTIALS = "credentials_file"  # .credentials.json in CLAUDE_CONFIG_DIR
    OAUTH_TOKEN = "oauth_token_file"  # CLAUDE_CODE_OAUTH_TOKEN
    API_KEY = "api_key_file"  # ANTHROPIC_API_KEY


# The environment variable each token-like auth mode sets in the Claude exec.
AUTH_ENV = {AuthMode.OAUTH_TOKEN: "CLAUDE_CODE_OAUTH_TOKEN", AuthMode.API_KEY: "ANTHROPIC_API_KEY"}
# Variables that carry a Claude login: a secret, never in plain `env`.
SECRET_AUTH_VARIABLES = frozenset({*AUTH_ENV.values(), "ANTHROPIC_AUTH_TOKEN"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": text, **extra}


DURATION = {"duration": True}


@dataclass(frozen=True)
class Bounds:
    """The numbers a key accepts; each end optional, inclusive unless marked open.

    `why` says what breaks outside them (Docker reading 0 as "no limit", systemd's
    SIGKILL), so the refusal tells the operator more than a range.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: `low` itself is refused ("more than 0")
    high_open: bool = False
    why: str = ""

    def problem(self, number: float) -> str | None:
        """What is wrong with `number` here, or None when it is in range."""
        too_low = self.low is not None and (
            number <= self.low if self.low_open else number < self.low
        )
        too_high = self.high is not None and (
            number >= self.high if self.high_open else number > self.high
        )
        if not (too_low or too_high):
            return None
        return f"must be {self.describe()}" + (f" ({self.why})" if self.why else "")

    def describe(self) -> str:
        ends = []
        if self.low is not None:
            ends.append(f"{'more than' if self.low_open else 'at least'} {plain_number(self.low)}")
        if self.high is not None:
            ends.append(f"{'below' if self.high_open else 'at most'} {plain_number(self.high)}")
        return " and ".join(ends)


def plain_number(number: float) -> str:
    """1073741824 as written, not 1.07374e+09; 0.01 as 0.01."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def within(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    why: str = "",
) -> dict[str, Any]:
    """Field metadata: the key's number must lie in these bounds (see `checked_number`)."""
    return {"bounds": Bounds(low, high, low_open, high_open, why)}


def checked_number(
    number: float, path: Path | str, key: str, bounds: Bounds | None = None, shown: Any = None
) -> Any:
    """Every number a config key holds goes through here: finite, and within its bounds.

    TOML has `nan` and `inf`, and every comparison with nan is false, so a check such
    as `drain_timeout < 300` lets it through and the daemon waits on it forever. The
    loader calls this for each int, float and duration field (bounds from the field's
    `within(...)` metadata); code reading a number some other way calls it too.
    """
    shown = number if shown is None else shown
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(path, key, f"must be a finite number, got {shown!r}")
    if bounds is not None and (problem := bounds.problem(number)):
        raise ConfigError(path, key, f"{problem}, got {shown!r}")
    return number


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
        default=30.0,
        metadata=_doc(
            "Seconds before one Forgejo request gives up",
            **DURATION,
            **within(0, 600, low_open=True, why="0 would fail every request"),
        ),
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

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?\s*$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
# Docker refuses a limit below 6 MiB and reads 0 as none; Claude Code (Node) and git
# need far more than that floor, so the loader asks for 128 MiB at least.
MIN_MEMORY_TEXT = "128m"


def memory_bytes(text: str) -> int:
    """Bytes from a Docker size such as "4g", "512m", "1.5GiB" (binary units, like Docker)."""
    match = _MEMORY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a Docker memory size (e.g. 4g, 512m)")
    return int(float(match[1]) * _MEMORY_UNITS[match[2].lower()])


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = field(
        default=Path("~/.local/state/claude-hooks"),
        metadata=_doc("SQLite store and per-task files"),
    )
    poll_interval: float = field(
        default=15.0,
        metadata=_doc(
            "Seconds between notification polls", **DURATION, **within(0, 86400, low_open=True)
        ),
    )
    max_concurrency: int = field(
        default=4, metadata=_doc("Tasks running at once, all agents", **within(1, 1024))
    )
    drain_timeout: float = field(
        default=240.0,
        metadata=_doc(
            "Seconds running tasks may finish after SIGTERM (the stop fits TimeoutStopSec)",
            **DURATION,
            **within(
                0,
                SYSTEMD_STOP_TIMEOUT,
                high_open=True,
                why=f"the unit's TimeoutStopSec={SYSTEMD_STOP_TIMEOUT:g}: systemd would SIGKILL"
                " the drain",
            ),
        ),
    )
    hop_limit: int = field(
        default=3,
        metadata=_doc("How many agent-to-agent mentions one thread may chain", **within(0, 100)),
    )
    max_review_rounds: int = field(
        default=3,
        metadata=_doc(
            "Change-request rounds the team's review loop takes on one PR before it stops"
            " and hands the PR back to the person who asked",
            **within(0, 100),
        ),
    )
    outage_retries: int = field(
        default=8,
        metadata=_doc(
            "Times a task waits out an outage (Forgejo, Docker, the store busy) before it fails",
            **within(0, 1000),
        ),
    )
    outage_retry_for: float = field(
        default=3600.0,
        metadata=_doc(
            "Seconds a task may wait out outages before it fails",
            **DURATION,
            **within(0, 7 * 86400, low_open=True),
        ),
    )
    outage_backoff: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds before a task's first retry after an outage; doubles each time (max 10 min)",
            **DURATION,
            **within(0, 3600, low_open=True),
        ),
    )
    allowed_users: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Logins allowed to trigger agents even without write access to the repo"),
    )
    peer_agents: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Agents of other daemons on this Forgejo: counted for hops and review rounds,"
            " never acted for"
        ),
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
        default=1_048_576,
        metadata=_doc(
            "Largest request body accepted (API and webhooks)",
            **within(1024, 1 << 30, why="aiohttp reads 0 as no limit at all"),
        ),
    )
    allowed_hosts: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Host names the API answers besides the listen host, localhost and loopback"
            " addresses (a reverse proxy's, the one Forgejo's webhook uses); others get 421"
        ),
    )
    header_timeout: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds a client may take to send a request's line and headers; then 408",
            **DURATION,
        ),
    )
    body_timeout: float = field(
        default=30.0,
        metadata=_doc("Seconds a client may take to send a request's body; then 408", **DURATION),
    )
    idle_timeout: float = field(
        default=60.0,
        metadata=_doc("Seconds a keep-alive connection may stay open between requests", **DURATION),
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
class EngineTls:
    """Mutual TLS to a tcp Docker engine, as Docker documents it (--tlsverify)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


LOCAL_ENGINE = "local"


@dataclass(frozen=True)
class DockerEngine:
    """Where a container runs: `host` None is aiodocker's default (DOCKER_HOST, else the
    local socket). Agents with equal engines share one client and one ContainerManager.
    `named`: the name of an [[engines]] table (an engine pool's member), else None."""

    host: str | None = None
    tls: EngineTls | None = None
    named: str | None = None

    @property
    def name(self) -> str:
        """What labels, logs and the CLI call it: an [[engines]] name, "local", else the
        host as written."""
        if self.named is not None:
            return self.named
        return LOCAL_ENGINE if self.host is None else self.host


_ENGINE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")


@dataclass(frozen=True)
class EngineConfig:
    """One [[engines]] table: a Docker engine named once, for agents' `engines` lists."""

    name: str = field(
        metadata=_doc("A short slug agents.engines names it by (lower case, digits, dashes)")
    )
    host: str = field(metadata=_doc("The engine's API: unix:///path or tcp://host:port"))
    max_concurrency: int = field(
        default=4,
        metadata=_doc("Tasks at once on this engine, all its agents together", **within(1, 1024)),
    )
    docker_tls: bool | None = field(
        default=None,
        metadata=_doc("tcp host: mutual TLS unless this is written false (as agents.docker_tls)"),
    )
    docker_tls_ca_file: Path | None = field(
        default=None, metadata=_doc("tcp host: the CA that signed the engine's certificate")
    )
    docker_tls_cert_file: Path | None = field(
        default=None, metadata=_doc("tcp host: the daemon's client certificate")
    )
    docker_tls_key_file: Path | None = field(
        default=None, metadata=_doc("tcp host: the client certificate's key (a secret)")
    )

    @property
    def engine(self) -> DockerEngine:
        return DockerEngine(self.host, _tls_of(self), self.name)


def _tls_of(keys: AgentConfig | EngineConfig) -> EngineTls | None:
    """The three TLS files of an agent's or an [[engines]] table's keys, when all are set."""
    if keys.docker_tls_ca_file and keys.docker_tls_cert_file and keys.docker_tls_key_file:
        return EngineTls(
            keys.docker_tls_ca_file, keys.docker_tls_cert_file, keys.docker_tls_key_file
        )
    return None


@dataclass(frozen=True)
class AgentConfig:
    name: str = field(metadata=_doc("The Forgejo username of this agent"))
    token_file: Path = field(metadata=_doc("File holding the agent's Forgejo token"))
    # How Claude Code logs in: exactly one of the three (AgentConfig.auth says which).
    credentials_file: Path | None = field(
        default=None,
        metadata=_doc(
            "Claude Code .credentials.json (subscription login); copied into the agent's"
            " state volume when newer, so Claude Code can refresh it (the host copy stays)"
        ),
    )
    oauth_token_file: Path | None = field(
        default=None,
        metadata=_doc(
            "File holding a long-lived token from `claude setup-token`"
            " (Claude's CLAUDE_CODE_OAUTH_TOKEN)"
        ),
    )
    api_key_file: Path | None = field(
        default=None,
        metadata=_doc("File holding an Anthropic API key (Claude's ANTHROPIC_API_KEY)"),
    )
    role: Role = field(default=Role.DEV, metadata=_doc("dev | reviewer | lead"))
    image: str = field(default="claude-hooks-agent:latest", metadata=_doc("Docker image"))
    network: str = field(default="bridge", metadata=_doc("Docker network mode of the container"))
    max_concurrency: int = field(
        default=1, metadata=_doc("Tasks of this agent at once", **within(1, 1024))
    )
    model: str | None = field(default=None, metadata=_doc("claude --model"))
    max_turns: int | None = field(
        default=None, metadata=_doc("claude --max-turns", **within(1, 10_000))
    )
    timeout: float = field(
        default=3600.0,
        metadata=_doc(
            "Seconds one task may run", **DURATION, **within(0, 7 * 86400, low_open=True)
        ),
    )
    env: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({}),
        metadata=_doc(
            "Extra environment for the claude process, not secrets (provider settings:"
            " CLAUDE_CODE_USE_BEDROCK, ANTHROPIC_MODEL, …)"
        ),
    )
    secret_env: Mapping[str, Path] = field(
        default_factory=lambda: types.MappingProxyType({}),
        metadata=_doc(
            'Secret environment for the claude process only: { NAME = "file" }, each'
            " read from its file at every task, like the token files"
        ),
    )
    time_zone: str | None = field(
        default=None,
        metadata=_doc(
            'IANA zone ("Europe/Berlin") of a usage limit\'s "resets 5am" when Claude'
            " names none; UTC if unset"
        ),
    )
    usage_limit_backoff: float = field(
        default=1800.0,
        metadata=_doc("How long to wait after a usage limit of unknown reset time", **DURATION),
    )
    max_budget_usd: float | None = field(
        default=None, metadata=_doc("claude --max-budget-usd: dollars one task may spend")
    )
    daily_budget_usd: float | None = field(
        default=None,
        metadata=_doc("Dollars the agent's tasks may spend in 24 hours, then it pauses"),
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
    memory: str = field(
        default="4g",
        metadata=_doc(f"Container memory limit (Docker units, at least {MIN_MEMORY_TEXT})"),
    )
    cpus: float = field(
        default=2.0,
        metadata=_doc(
            "Container CPU limit",
            **within(0.01, 1024, why="Docker's smallest share is 0.01 CPU; 0 means no limit"),
        ),
    )
    pids_limit: int = field(
        default=512,
        metadata=_doc(
            "Container pids limit",
            **within(
                32,
                4_194_304,
                why="Docker reads 0 or less as no limit; every thread counts, and Claude"
                " Code alone starts a dozen",
            ),
        ),
    )
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
    docker_host: str | None = field(
        default=None,
        metadata=_doc(
            "Docker engine of the agent's container: unix:///path or tcp://host:port"
            " (unset: DOCKER_HOST, else the local socket)"
        ),
    )
    docker_tls: bool | None = field(
        default=None,
        metadata=_doc(
            "tcp docker_host: mutual TLS unless this is written false (a plain, warned-about"
            " connection anyone reaching the port may use)"
        ),
    )
    docker_tls_ca_file: Path | None = field(
        default=None, metadata=_doc("tcp docker_host: the CA that signed the engine's certificate")
    )
    docker_tls_cert_file: Path | None = field(
        default=None, metadata=_doc("tcp docker_host: the daemon's client certificate")
    )
    docker_tls_key_file: Path | None = field(
        default=None, metadata=_doc("tcp docker_host: the client certificate's key (a secret)")
    )
    engines: tuple[str, ...] | None = field(
        default=None,
        metadata=_doc(
            "Names of [[engines]] the agent's tasks are spread over (instead of docker_host):"
            " one container of the agent on each"
        ),
    )
    # Not a key: the loader fills it with the engines `engines` names. One engine left
    # (Placement.agent) is the agent placed on that engine for one task.
    pool: tuple[DockerEngine, ...] = field(default=(), metadata={"derived": True})

    @property
    def auth(self) -> AuthMode:
        """How Claude logs in (the loader made sure exactly one file is set)."""
        if self.oauth_token_file is not None:
            return AuthMode.OAUTH_TOKEN
        if self.api_key_file is not None:
            return AuthMode.API_KEY
        return AuthMode.CREDENTIALS

    @property
    def auth_file(self) -> Path | None:
        return {
            AuthMode.OAUTH_TOKEN: self.oauth_token_file,
            AuthMode.API_KEY: self.api_key_file,
            AuthMode.CREDENTIALS: self.credentials_file,
        }[self.auth]

    @property
    def engine(self) -> DockerEngine:
        """The Docker engine this agent's container is on (the loader checked its keys).
        An agent with an engine pool has one only once placed on a member for a task."""
        if len(self.pool) == 1:
            return self.pool[0]
        if self.pool:
            names = ", ".join(e.name for e in self.pool)
            raise ValueError(f"agent {self.name} runs on engines {names}: place it on one first")
        return DockerEngine(self.docker_host, _tls_of(self))

    @property
    def on_engines(self) -> tuple[DockerEngine, ...]:
        """Every engine this agent has a container on: its pool, else its one engine."""
        return self.pool or (self.engine,)

    def placed_on(self, engine: DockerEngine) -> AgentConfig:
        """This agent narrowed to one engine of its pool (or itself, on its own engine)."""
        if engine not in self.on_engines:
            raise ValueError(f"agent {self.name} has no container on engine {engine.name}")
        return replace(self, pool=(engine,)) if self.pool else self

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
    engines: tuple[EngineConfig, ...] = ()  # [[engines]]: the pool members agents name

    def engine_named(self, name: str) -> EngineConfig:
        for engine in self.engines:
            if engine.name == name:
                return engine
        raise KeyError(name)

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
    _reject_unknown(raw, [*SECTIONS, "agents", "engines"], path, "")
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
    engines_raw = raw.get("engines", [])
    if not isinstance(engines_raw, list):
        raise ConfigError(path, "engines", "must be an array of tables: [[engines]]")
    engines = tuple(
        _build(EngineConfig, _table(e, path, f"engines[{i}]"), path, f"engines[{i}]")
        for i, e in enumerate(engines_raw)
    )
    config = Config(
        path=path,
        forgejo=section("forgejo"),
        daemon=section("daemon"),
        api=section("api"),
        agents=agents,
        engines=engines,
    )
    _validate(config, warnings)
    return replace(config, agents=_with_pools(config), warnings=tuple(warnings))


def _with_pools(config: Config) -> tuple[AgentConfig, ...]:
    """Each agent with the engines its `engines` names (checked by `_validate`)."""
    return tuple(
        replace(agent, pool=tuple(config.engine_named(n).engine for n in agent.engines))
        if agent.engines
        else agent
        for agent in config.agents
    )


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
    keys = config_keys(cls)
    _reject_unknown(table, [f.name for f in keys], path, where)
    values: dict[str, Any] = {}
    for f in keys:
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


def config_keys(cls: type) -> list[Any]:
    """The fields of a config dataclass that are keys of the file (not the loader's own)."""
    return [f for f in fields(cls) if not f.metadata.get("derived")]


def _coerce(value: Any, hint: Any, meta: Mapping[str, Any], path: Path, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):  # X | None
        inner = next(a for a in args if a is not type(None))
        return _coerce(value, inner, meta, path, key)
    bounds = meta.get("bounds")
    if meta.get("duration"):
        return checked_number(parse_duration(value, path, key), path, key, bounds, shown=value)
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
        if args[1] is Path:  # secret_env: files, spelt like every other path
            return types.MappingProxyType({k: expand_path(v) for k, v in env.items()})
        return types.MappingProxyType(env)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, key, f"must be a number, got {value!r}")
        return checked_number(float(value), path, key, bounds, shown=value)
    if hint is int:
        return checked_number(_expect(value, int, path, key), path, key, bounds)
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
    checked_number(seconds, path, key, shown=value)
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
    if problem := listen_warning(config.api.host):
        warnings.append(f"{path}: api.listen: {config.api.listen!r} {problem}")
    for i, host in enumerate(config.api.allowed_hosts):
        if not is_host(host):
            raise ConfigError(
                path,
                f"api.allowed_hosts[{i}]",
                f"{host!r} is not a host name or IP address (write it without scheme or port)",
            )
    _validate_api_timeouts(config.api, path)
    if not config.agents:
        raise ConfigError(path, "agents", "no [[agents]] configured: add at least one")
    _validate_engines(config, warnings)
    seen: set[str] = set()
    for i, agent in enumerate(config.agents):
        _validate_agent(config, i, agent, seen, warnings)
    for i, peer in enumerate(config.daemon.peer_agents):
        if peer.lower() in seen:  # an agent in both lists would be acted for by two daemons
            raise ConfigError(
                path, f"daemon.peer_agents[{i}]", f"{peer!r} is an agent of this config"
            )
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


def _validate_api_timeouts(api: ApiConfig, path: Path) -> None:
    """A NaN or infinite timeout never fires, and 0 would close every connection at once."""
    for key in ("header_timeout", "body_timeout", "idle_timeout"):
        seconds = getattr(api, key)
        if not math.isfinite(seconds) or seconds <= 0:
            raise ConfigError(
                path, f"api.{key}", f"must be a finite number of seconds above 0, got {seconds}"
            )


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
    _validate_memory(agent.memory, path, f"{where}.memory")
    names = {a.name.lower() for a in config.agents}
    if agent.review_by is not None and agent.review_by.lower() not in names:
        raise ConfigError(
            path, f"{where}.review_by", f"{agent.review_by!r} is not a configured agent"
        )
    if agent.review_by is not None and agent.review_by.lower() == agent.name.lower():
        raise ConfigError(
            path,
            f"{where}.review_by",
            f"{agent.review_by!r} is this agent itself: it would review its own pull requests",
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
    _validate_claude_auth(config, where, agent, warnings)
    _validate_budgets(path, where, agent)
    _validate_agent_engines(config, where, agent)
    _validate_docker_host(path, where, agent, warnings)
    warnings.extend(agent_warnings(agent, path, where))


def listen_warning(host: str) -> str | None:
    """Why listening on `host` exposes the API beyond this machine, or None (loopback)."""
    if host == "localhost":
        return None
    try:
        address = ipaddress.ip_address(host) if host else None
    except ValueError:
        return (
            "names a host, not a loopback address: the API and the webhook"
            " endpoint answer wherever it resolves; keep 127.0.0.1 behind a reverse proxy"
        )
    if address is None or address.is_unspecified:
        return (
            "binds every address of the host: anyone who reaches the host reaches the API"
            " and the webhook endpoint; listen on 127.0.0.1 behind a reverse proxy"
        )
    if not address.is_loopback:
        return (
            "is not a loopback address: the API and the webhook endpoint answer on"
            " that network; listen on 127.0.0.1 behind a reverse proxy"
        )
    return None


# Where a Docker engine's socket usually is; DOCKER_HOST and the rootless one are added.
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


def docker_socket_paths(env: Mapping[str, str]) -> tuple[str, ...]:
    found = list(DOCKER_SOCKETS)
    if (host := env.get("DOCKER_HOST", "")).startswith("unix://"):
        found.append(host.removeprefix("unix://"))
    if runtime_dir := env.get("XDG_RUNTIME_DIR"):
        found.append(f"{runtime_dir}/docker.sock")
    return tuple(found)


def mount_warning(spec: str, sockets: tuple[str, ...]) -> str | None:
    """Why a bind mount hands the agent the host, or None. Read-only does not help: a
    socket on a read-only mount still connects, and `/` read-only still shows every file."""
    source = os.path.realpath(spec.split(":", 1)[0])
    if source == "/":
        return (
            "mounts the whole host filesystem (/) into the agent's container: Claude can read"
            " every file of the host its uid can, other agents' credentials included"
        )
    for socket in sockets:
        real = os.path.realpath(socket)
        if real == source or real.startswith(source.rstrip("/") + "/"):
            what = "is" if real == source else "holds"
            return (
                f"{what} the Docker socket ({socket}): read-only or not, whoever steers"
                " the agent's Claude then controls Docker, which is root on the host"
            )
    return None


def user_is_root(user: str) -> bool:
    """Whether a Docker `user` ("uid[:gid]" or a name) runs as uid 0."""
    return user.partition(":")[0].strip() in ("0", "root")


def agent_warnings(
    agent: AgentConfig, path: Path, where: str, env: Mapping[str, str] = os.environ
) -> list[str]:
    """Settings that work but weaken the agent's isolation, each naming its key."""
    warnings = []
    if user_is_root(agent.user):
        warnings.append(
            f"{path}: {where}.user: {agent.user!r} runs claude and git as root in the"
            " container: without a user namespace that is the host's root for all it can"
            f" reach (bind mounts, the credentials); use a uid no account holds, e.g."
            f" {DEFAULT_AGENT_UID}:{DEFAULT_AGENT_UID}"
        )
    if agent.network == "host":
        warnings.append(
            f'{path}: {where}.network: "host" shares the host\'s network: the agent reaches'
            " every service on the host's loopback (this daemon's API included) and the host's"
            ' networks without Docker\'s isolation; use "bridge" (or "none")'
        )
    sockets = docker_socket_paths(env)
    for n, spec in enumerate(agent.mounts):
        if problem := mount_warning(spec, sockets):
            warnings.append(f"{path}: {where}.mounts[{n}]: {spec!r} {problem}")
    return warnings


def _validate_claude_auth(
    config: Config, where: str, agent: AgentConfig, warnings: list[str]
) -> None:
    path, who = config.path, f"agent {agent.name!r}"
    given = [mode for mode in AuthMode if getattr(agent, mode.value) is not None]
    if len(given) != 1:
        choices = ", ".join(m.value for m in AuthMode)
        found = f"it has {' and '.join(m.value for m in given)}" if given else "it has none"
        raise ConfigError(
            path, where, f"{who}: set exactly one of {choices} (how Claude logs in); {found}"
        )
    mode = given[0]
    file = agent.auth_file
    assert file is not None  # given[0] is set
    if mode is AuthMode.CREDENTIALS:  # a JSON document, Claude Code's own login file
        check_secret_file(
            file,
            path,
            f"{where}.{mode.value}",
            f"the Claude credentials of {who}",
            warnings,
            read=read_secret_document,
        )
    else:
        check_secret_file(
            file, path, f"{where}.{mode.value}", f"the Claude login of {who}", warnings
        )
    reserved = {"HOME", "CLAUDE_CONFIG_DIR", *SECRET_AUTH_VARIABLES}
    for name, secret in agent.secret_env.items():
        key = f"{where}.secret_env.{name}"
        if not _ENV_NAME.match(name):
            raise ConfigError(path, key, f"{name!r} is not an environment variable name")
        if name in reserved or name in agent.env:
            also = "agents.env also sets it" if name in agent.env else "the daemon sets it"
            raise ConfigError(path, key, f"{name} cannot be a secret_env variable: {also}")
        check_secret_file(secret, path, key, f"the secret {name} of {who}", warnings)
    for name in sorted(SECRET_AUTH_VARIABLES & set(agent.env)):
        warnings.append(
            f"{path}: {where}.env.{name}: a Claude login in plain config text; put it in a "
            "file named by oauth_token_file, api_key_file or secret_env instead"
        )
    if agent.time_zone is not None:
        try:
            ZoneInfo(agent.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                path, f"{where}.time_zone", f"{agent.time_zone!r} is not an IANA time zone"
            ) from None


def _validate_budgets(path: Path, where: str, agent: AgentConfig) -> None:
    for key in ("max_budget_usd", "daily_budget_usd"):
        value = getattr(agent, key)
        if value is not None and value <= 0:
            raise ConfigError(path, f"{where}.{key}", f"must be more than 0 dollars, got {value}")


TLS_KEYS = ("docker_tls_ca_file", "docker_tls_cert_file", "docker_tls_key_file")
PORT_BOUNDS = Bounds(1, 65535)


def _validate_docker_host(path: Path, where: str, agent: AgentConfig, warnings: list[str]) -> None:
    """An agent's own engine: its docker_host and TLS keys (none with an engine pool)."""
    if agent.engines is not None:
        given = [
            k for k in ("docker_host", "docker_tls", *TLS_KEYS) if getattr(agent, k) is not None
        ]
        if given:
            raise ConfigError(
                path,
                f"{where}.{given[0]}",
                "an agent with engines runs on those [[engines]]: set the engine's host and"
                " TLS files there, not here",
            )
        return
    _validate_engine_keys(
        path, where, "docker_host", agent.docker_host, agent, f"agent {agent.name!r}", warnings
    )


def _validate_engine_keys(
    path: Path,
    where: str,
    host_key: str,
    host: str | None,
    keys: AgentConfig | EngineConfig,
    who: str,
    warnings: list[str],
) -> None:
    """unix:// or tcp://host:port; tcp with mutual TLS unless `docker_tls = false` is written.

    The same rules for an agent's docker_host and an [[engines]] table's host. Whoever
    reaches an engine's API is root on its host: a plain tcp engine is refused by default
    and only warned about when the operator writes that they mean it.
    """
    key = f"{where}.{host_key}"
    tls_given = [k for k in TLS_KEYS if getattr(keys, k) is not None]
    scheme, _, rest = (host or "").partition("://")
    if host is None or scheme == "unix":
        if host is not None and not rest.startswith("/"):
            raise ConfigError(path, key, f"{host!r}: a unix socket needs an absolute path")
        stray = tls_given + (["docker_tls"] if keys.docker_tls is not None else [])
        if stray:
            raise ConfigError(path, f"{where}.{stray[0]}", f"only for a tcp://host:port {host_key}")
        return
    if scheme != "tcp":
        raise ConfigError(path, key, f"{host!r}: must be unix:///path or tcp://host:port")
    _check_tcp_address(path, key, host)
    if keys.docker_tls is False:
        if tls_given:
            raise ConfigError(
                path, f"{where}.{tls_given[0]}", "docker_tls = false: no TLS file is used"
            )
        warnings.append(
            f"{path}: {where}.docker_tls: false: the Docker API at {host} is plain tcp, without"
            " authentication or encryption: anyone who reaches that port is root on its host"
            " and sees every exec (the agent's token included); use mutual TLS"
        )
        return
    missing = [k for k in TLS_KEYS if k not in tls_given]
    if missing:
        raise ConfigError(
            path,
            f"{where}.{missing[0]}",
            f"{host_key} {host!r} is tcp: mutual TLS needs {', '.join(TLS_KEYS)}"
            " (or write docker_tls = false to allow plain tcp, which is warned about)",
        )
    engine_tls = _tls_of(keys)
    assert engine_tls is not None  # all three are set
    _check_tls_files(path, where, engine_tls, who, warnings)


def _check_tcp_address(path: Path, key: str, host: str) -> None:
    try:
        address = urllib.parse.urlsplit(host)
        port = address.port
    except ValueError as exc:
        raise ConfigError(path, key, f"{host!r}: {exc}") from None
    if not address.hostname or address.path not in ("", "/") or port is None:
        raise ConfigError(path, key, f"{host!r}: must be tcp://host:port (Docker's TLS port: 2376)")
    checked_number(port, path, f"{key} port", PORT_BOUNDS, shown=host)


def _check_tls_files(
    path: Path, where: str, engine_tls: EngineTls, who: str, warnings: list[str]
) -> None:
    """The files exist, the key is a private secret file, and they make a TLS client."""
    for tls_key, file in (
        ("docker_tls_ca_file", engine_tls.ca_file),
        ("docker_tls_cert_file", engine_tls.cert_file),
    ):
        if not file.is_file():
            raise ConfigError(path, f"{where}.{tls_key}", f"{file} is not a readable file")
    check_secret_file(
        engine_tls.key_file,
        path,
        f"{where}.docker_tls_key_file",
        f"the Docker client key of {who}",
        warnings,
        read=read_secret_document,
    )
    try:
        engine_tls_context(engine_tls)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            path,
            f"{where}.docker_tls_cert_file",
            f"the CA, certificate and key do not make a TLS client: {exc}",
        ) from None


def _validate_engines(config: Config, warnings: list[str]) -> None:
    """[[engines]]: unique slugs, distinct hosts, each host's keys as an agent's docker_host."""
    path = config.path
    names: dict[str, int] = {}
    hosts: dict[str, int] = {}
    for i, engine in enumerate(config.engines):
        where = f"engines[{i}]"
        if not _ENGINE_NAME.match(engine.name):
            raise ConfigError(
                path,
                f"{where}.name",
                f"{engine.name!r} is not a short slug (lower case letters, digits and dashes,"
                " at most 32)",
            )
        if engine.name == LOCAL_ENGINE:
            raise ConfigError(
                path,
                f"{where}.name",
                f"{LOCAL_ENGINE!r} names the default engine of agents without docker_host:"
                " choose another name",
            )
        if engine.name in names:
            raise ConfigError(
                path, f"{where}.name", f"{engine.name!r} is engines[{names[engine.name]}]'s too"
            )
        names[engine.name] = i
        if engine.host in hosts:  # one agent's two containers would share one name there
            raise ConfigError(
                path,
                f"{where}.host",
                f"{engine.host!r} is engines[{hosts[engine.host]}]'s host too: name an engine once",
            )
        hosts[engine.host] = i
        who = f"engine {engine.name!r}"
        _validate_engine_keys(path, where, "host", engine.host, engine, who, warnings)


def _validate_agent_engines(config: Config, where: str, agent: AgentConfig) -> None:
    """agents.engines: a non-empty list of distinct [[engines]] names."""
    if agent.engines is None:
        return
    path, key = config.path, f"{where}.engines"
    known = [engine.name for engine in config.engines]
    if not agent.engines:
        raise ConfigError(path, key, "is empty: name at least one [[engines]] table, or drop it")
    for n, name in enumerate(agent.engines):
        if name not in known:
            have = ", ".join(known) if known else "there are no [[engines]] tables"
            raise ConfigError(path, f"{key}[{n}]", f"{name!r} is not an [[engines]] name ({have})")
        if name in agent.engines[:n]:
            raise ConfigError(path, f"{key}[{n}]", f"{name!r} is named twice")


def engine_tls_context(files: EngineTls) -> ssl.SSLContext:
    """A client context that verifies the engine against the CA and presents our certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca_file))
    context.load_cert_chain(str(files.cert_file), str(files.key_file))
    return context


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


def _validate_memory(text: str, path: Path, key: str) -> None:
    try:
        size = memory_bytes(text)
    except ValueError as exc:
        raise ConfigError(path, key, str(exc)) from None
    if size < memory_bytes(MIN_MEMORY_TEXT) or size >= 1 << 63:
        raise ConfigError(
            path,
            key,
            f"{text!r}: must be at least {MIN_MEMORY_TEXT} (Docker reads 0 as no limit and"
            " refuses less than 6m; Claude Code needs far more) and below 8 EiB",
        )


def check_secret_file(
    file: Path,
    path: Path,
    key: str,
    what: str,
    warnings: list[str],
    read: SecretReader | None = None,
    denied_warns: bool = False,
) -> None:
    """Read the secret as the daemon will (`read`, by default `read_secret`): one that
    cannot be used is an error naming the key and the file; one others can read is a
    warning. `denied_warns`: a file the daemon's user may not read is only a warning
    (Claude's credentials: the container reads them, the daemon only to redact them)."""
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
    try:
        (read or read_secret)(file)
    except SecretFileError as exc:
        if denied_warns and exc.errno == errno.EACCES:
            warnings.append(
                f"{path}: {key}: {what}: {exc.strerror}: the daemon cannot redact what it"
                " cannot read; let its user read the file too"
            )
            return
        raise ConfigError(path, key, f"{what}: {exc.strerror}") from None


class SecretFileError(OSError):
    """A secret file the daemon cannot use: unreadable, empty, not UTF-8, several lines.

    An OSError, so every caller that refuses on an unreadable file (the API's token,
    the webhook secret, a Forgejo token mid-rotation) refuses on these too. `strerror`
    names the file and the problem, never the content.
    """

    def __init__(self, file: Path, problem: str, code: int = errno.EINVAL) -> None:
        super().__init__(code, f"{file}: {problem}", str(file))


SecretReader = typing.Callable[[Path], str]


def read_secret(file: Path) -> str:
    """The one-line secret in a file (a token, the webhook secret), spaces trimmed.

    Read at use so rotation needs no restart, and by the config check with this same
    function, so what `check` accepts is what the daemon can use. A token goes into an
    HTTP header or an HMAC key: a second line would be sent as part of it, so only one
    trailing newline is allowed. Every value read is taught to the shared redactor
    first, so a rotated secret is hidden from its first use on (the old one stays).
    """
    text = _read_secret_text(file)
    body = text.removesuffix("\n").removesuffix("\r")
    if "\n" in body or "\r" in body:
        raise SecretFileError(
            file, "holds more than one line (only one trailing newline is allowed)"
        )
    return body.strip()


def read_secret_document(file: Path) -> str:
    """A secret file that is a document (Claude's .credentials.json): several lines are
    fine, but it must be readable, UTF-8 and not empty, as Claude Code needs it."""
    return _read_secret_text(file)


def _read_secret_text(file: Path) -> str:
    try:
        data = file.read_bytes()
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise SecretFileError(file, f"cannot read: {exc.strerror or exc}", code) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretFileError(file, f"is not UTF-8 text (byte {exc.start})") from None
    redactor.learn(text)
    if not text.strip():
        raise SecretFileError(file, "is empty")
    return text


def learn_secret_file(file: Path) -> bool:
    """Teach the redactor what `file` holds now (a rewritten credentials file); usable?"""
    try:
        read_secret_document(file)
    except OSError:
        return False
    return True
