"""How each agent's Claude logs in (#15): exactly one of credentials_file,
oauth_token_file, api_key_file; file-backed secret_env; the secrets reach the
`claude -p` exec's environment only, never the clone/push execs, argv or config."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from claude_hooks.config import AgentConfig, AuthMode, ConfigError
from claude_hooks.daemon.log import config_secret_files
from claude_hooks.redact import redactor
from claude_hooks.runner import workspace
from claude_hooks.runner.claude import (
    claude_argv,
    claude_secrets,
    exec_env,
    with_claude_secrets,
    with_forge_auth,
)
from claude_hooks.runner.execution import ClaudeExec, ExecResult
from claude_hooks.runner.stream import StreamEvent
from claude_hooks.tasks import Task, TaskKind, TaskSpec, TaskState, TriggerSource
from claude_hooks.work.worker import TaskWorker
from tests.fakes.configs import ConfigFactory

OAUTH = "sk-ant-oat01-oauth-token-of-dev-4f2a"
API_KEY = "sk-ant-api03-key-of-dev-81bd"
AWS = "aws-secret-of-dev-0c9e"


def env_dict(env: Sequence[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in env)


def load_agent(factory: ConfigFactory, **values: object) -> AgentConfig:
    return factory.load(agents=[factory.agent("dev", **values)]).agents[0]


# --- config -------------------------------------------------------------------------------


def test_each_auth_mode_is_one_file(config_factory: ConfigFactory) -> None:
    oauth = config_factory.secret("oauth", OAUTH)
    key = config_factory.secret("key", API_KEY)
    assert load_agent(config_factory).auth is AuthMode.CREDENTIALS
    by_token = load_agent(config_factory, credentials_file=None, oauth_token_file=str(oauth))
    assert (by_token.auth, by_token.auth_file) == (AuthMode.OAUTH_TOKEN, oauth)
    by_key = load_agent(config_factory, credentials_file=None, api_key_file=str(key))
    assert (by_key.auth, by_key.auth_file) == (AuthMode.API_KEY, key)


def test_two_auth_files_are_refused_naming_both(config_factory: ConfigFactory) -> None:
    oauth = config_factory.secret("oauth", OAUTH)
    with pytest.raises(ConfigError) as error:
        load_agent(config_factory, oauth_token_file=str(oauth))
    assert error.value.key == "agents[0]"
    assert "set exactly one of credentials_file, oauth_token_file, api_key_file" in str(error.value)
    assert "it has credentials_file and oauth_token_file" in str(error.value)


def test_no_auth_file_is_refused(config_factory: ConfigFactory) -> None:
    with pytest.raises(ConfigError, match=r"agents\[0\]: agent 'dev': set exactly one of .* none"):
        load_agent(config_factory, credentials_file=None)


def test_a_missing_auth_file_names_its_key(config_factory: ConfigFactory, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as error:
        load_agent(config_factory, credentials_file=None, api_key_file=str(missing))
    assert error.value.key == "agents[0].api_key_file"
    assert f"file {missing} does not exist" in str(error.value)


def test_an_auth_file_others_can_read_is_a_warning(config_factory: ConfigFactory) -> None:
    oauth = config_factory.secret("oauth", OAUTH, mode=0o644)
    path = config_factory.write(
        agents=[config_factory.agent("dev", credentials_file=None, oauth_token_file=str(oauth))]
    )
    from claude_hooks.config import load_config

    (warning,) = load_config(path).warnings
    assert "agents[0].oauth_token_file" in warning and "chmod 600" in warning


def test_secret_env_is_files_checked_like_the_others(
    config_factory: ConfigFactory, tmp_path: Path
) -> None:
    aws = config_factory.secret("aws", AWS)
    agent = load_agent(config_factory, secret_env={"AWS_SECRET_ACCESS_KEY": str(aws)})
    assert dict(agent.secret_env) == {"AWS_SECRET_ACCESS_KEY": aws}
    with pytest.raises(ConfigError) as error:
        load_agent(config_factory, secret_env={"AWS_SECRET_ACCESS_KEY": str(tmp_path / "x")})
    assert error.value.key == "agents[0].secret_env.AWS_SECRET_ACCESS_KEY"
    for name, why in (
        ("HOME", "the daemon sets it"),
        ("ANTHROPIC_API_KEY", "the daemon sets it"),
        ("BAD-NAME", "not an environment variable name"),
    ):
        with pytest.raises(ConfigError, match=why):
            load_agent(config_factory, secret_env={name: str(aws)})
    with pytest.raises(ConfigError, match=r"agents\.env also sets it"):
        load_agent(config_factory, env={"X": "1"}, secret_env={"X": str(aws)})


def test_a_login_in_plain_env_is_a_warning(config_factory: ConfigFactory) -> None:
    path = config_factory.write(agents=[config_factory.agent(env={"ANTHROPIC_API_KEY": "k"})])
    from claude_hooks.config import load_config

    (warning,) = load_config(path).warnings
    assert "agents[0].env.ANTHROPIC_API_KEY" in warning and "api_key_file" in warning


def test_time_zone_and_budgets_are_checked(config_factory: ConfigFactory) -> None:
    agent = load_agent(
        config_factory, time_zone="Europe/Berlin", max_budget_usd=5, daily_budget_usd=50.5
    )
    assert (agent.time_zone, agent.max_budget_usd, agent.daily_budget_usd) == (
        "Europe/Berlin",
        5.0,
        50.5,
    )
    assert agent.usage_limit_backoff == 1800.0
    with pytest.raises(ConfigError, match=r"agents\[0\]\.time_zone: 'Mars/Olympus'"):
        load_agent(config_factory, time_zone="Mars/Olympus")
    with pytest.raises(ConfigError, match=r"agents\[0\]\.max_budget_usd: must be more than 0"):
        load_agent(config_factory, max_budget_usd=0)
    with pytest.raises(ConfigError, match=r"agents\[0\]\.daily_budget_usd: must be a number"):
        load_agent(config_factory, daily_budget_usd="lots")


def test_the_log_redacts_every_claude_secret_file(config_factory: ConfigFactory) -> None:
    oauth = config_factory.secret("oauth", OAUTH)
    aws = config_factory.secret("aws", AWS)
    config = config_factory.load(
        agents=[
            config_factory.agent(
                credentials_file=None, oauth_token_file=str(oauth), secret_env={"AWS": str(aws)}
            )
        ]
    )
    assert {oauth, aws} <= set(config_secret_files(config))


# --- the exec's environment and argv -----------------------------------------------------


def test_the_login_and_secret_env_go_to_claude_s_exec_only(config_factory: ConfigFactory) -> None:
    oauth = config_factory.secret("oauth", OAUTH)
    aws = config_factory.secret("aws", AWS)
    agent = load_agent(
        config_factory,
        credentials_file=None,
        oauth_token_file=str(oauth),
        secret_env={"AWS_SECRET_ACCESS_KEY": str(aws)},
        env={"CLAUDE_CODE_USE_BEDROCK": "1"},
    )
    base = exec_env(agent, task_id=3, daemon_id="d")
    git = with_forge_auth(base, "forgejo-token", None)
    claude = with_claude_secrets(base, claude_secrets(agent))
    for env in (base, git):  # the clone and push execs: no Claude secret
        assert OAUTH not in "\n".join(env) and AWS not in "\n".join(env)
    values = env_dict(claude)
    assert values["CLAUDE_CODE_OAUTH_TOKEN"] == OAUTH
    assert values["AWS_SECRET_ACCESS_KEY"] == AWS
    assert values["CLAUDE_CODE_USE_BEDROCK"] == "1"  # provider settings pass through
    assert "ANTHROPIC_API_KEY" not in values and "forgejo-token" not in "\n".join(claude)
    argv = claude_argv(agent, session_id=None, system_prompt="")
    assert OAUTH not in " ".join(argv) and AWS not in " ".join(argv)
    assert redactor.value(f"x {OAUTH} y {AWS}") == "x *** y ***"  # read_secret taught them


def test_an_api_key_overrides_a_plain_env_value(config_factory: ConfigFactory) -> None:
    key = config_factory.secret("key", API_KEY)
    agent = load_agent(
        config_factory,
        credentials_file=None,
        api_key_file=str(key),
        env={"ANTHROPIC_API_KEY": "stale"},
    )
    env = env_dict(
        with_claude_secrets(exec_env(agent, task_id=1, daemon_id="d"), claude_secrets(agent))
    )
    assert env["ANTHROPIC_API_KEY"] == API_KEY


def test_a_credentials_login_sets_no_token_variable(config_factory: ConfigFactory) -> None:
    agent = load_agent(config_factory)
    assert claude_secrets(agent) == {}


def test_max_budget_becomes_the_cli_flag(config_factory: ConfigFactory) -> None:
    argv = claude_argv(
        load_agent(config_factory, max_budget_usd=2.5), session_id=None, system_prompt=""
    )
    assert argv[argv.index("--max-budget-usd") + 1] == "2.5"
    plain = claude_argv(load_agent(config_factory), session_id=None, system_prompt="")
    assert "--max-budget-usd" not in plain


# --- the worker: which exec gets what ----------------------------------------------------


class RecordingRuntime:
    """Records the environment of each exec the worker asks for."""

    def __init__(self) -> None:
        self.prepare_env: list[str] = []
        self.claude_env: list[str] = []

    async def ready(self, agent: AgentConfig) -> None:
        return None

    async def prepare(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> str:
        self.prepare_env = list(env)
        return ""

    async def run(
        self,
        agent: AgentConfig,
        claude: ClaudeExec,
        on_event: Callable[[StreamEvent], None],
        room: object = None,
    ) -> ExecResult:
        self.claude_env = list(claude.env)
        return ExecResult(exit_code=1, result_event=None, stderr_tail="", lines=0)

    async def publish(self, *args: object) -> workspace.Published:
        raise AssertionError("a failed run publishes nothing")


class _Sink:
    def add(self, *args: object) -> None: ...

    async def room(self) -> None: ...

    async def close(self) -> None: ...


class _Store:
    async def last_session(self, *args: object) -> None:
        return None

    def event_sink(self, task_id: int) -> _Sink:
        return _Sink()


class _Reports:
    def checklist(self, task: Task) -> Callable[[str], None]:
        return lambda line: None


def test_the_worker_gives_claude_s_secrets_to_the_claude_exec_only(
    config_factory: ConfigFactory,
) -> None:
    key = config_factory.secret("key", API_KEY)
    aws = config_factory.secret("aws", AWS)
    config = config_factory.load(
        agents=[
            config_factory.agent(
                "dev", credentials_file=None, api_key_file=str(key), secret_env={"AWS": str(aws)}
            )
        ]
    )
    runtime = RecordingRuntime()
    worker = TaskWorker(
        config, _Store(), runtime, lambda name: None, _Reports(), None,  # type: ignore[arg-type]
        daemon_id="d", permissions=None,  # type: ignore[arg-type]
    )  # fmt: skip
    spec = TaskSpec(
        agent="dev", kind=TaskKind.API, repo="acme/app", number=None, idempotency_key="k",
        requested_by="api", request="hi", source=TriggerSource.API,
    )  # fmt: skip
    outcome = asyncio.run(worker.execute(Task(id=9, spec=spec, state=TaskState.RUNNING)))
    assert outcome.state is TaskState.FAILED
    assert env_dict(runtime.claude_env)["ANTHROPIC_API_KEY"] == API_KEY
    assert env_dict(runtime.claude_env)["AWS"] == AWS
    prepared = "\n".join(runtime.prepare_env)  # the clone's environment, with the token
    assert "GIT_CONFIG_VALUE_0" in prepared
    assert API_KEY not in prepared and AWS not in prepared
