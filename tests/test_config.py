from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path

import pytest

from claude_hooks.config import (
    SECTIONS,
    AgentConfig,
    ConfigError,
    Role,
    expand_path,
    load_config,
    parse_duration,
    repository_served,
)
from tests.conftest import REPO_ROOT
from tests.fakes.configs import ConfigFactory, toml_value

EXAMPLE = REPO_ROOT / "deploy" / "config.example.toml"


def test_minimal_config_loads_with_documented_defaults(config_factory: ConfigFactory) -> None:
    config = config_factory.load()
    assert config.daemon.poll_interval == 15
    assert config.daemon.max_concurrency == 4
    assert config.daemon.drain_timeout == 240
    assert config.api.listen == "127.0.0.1:8765"
    assert config.agents[0].name == "dev"
    assert config.agents[0].role is Role.DEV
    assert config.agents[0].timeout == 3600
    assert config.forgejo.api_url == "http://127.0.0.1:3000/api/v1"


def test_durations_accept_seconds_and_unit_strings(config_factory: ConfigFactory) -> None:
    config = config_factory.load(
        daemon={"poll_interval": "90s", "drain_timeout": "2m"},
        agents=[config_factory.agent(timeout="1h")],
    )
    assert config.daemon.poll_interval == 90
    assert config.daemon.drain_timeout == 120
    assert config.agents[0].timeout == 3600
    assert parse_duration("500ms") == 0.5
    assert parse_duration(1.5) == 1.5


def test_bad_duration_names_file_and_key(config_factory: ConfigFactory) -> None:
    with pytest.raises(ConfigError) as err:
        config_factory.load(daemon={"drain_timeout": "four minutes"})
    assert err.value.key == "daemon.drain_timeout"
    assert str(config_factory.root / "config.toml") in str(err.value)
    assert "four minutes" in str(err.value)


def test_the_outage_budget_has_defaults_and_takes_durations(config_factory: ConfigFactory) -> None:
    daemon = config_factory.load().daemon
    assert (daemon.outage_retries, daemon.outage_retry_for, daemon.outage_backoff) == (8, 3600, 30)
    daemon = config_factory.load(daemon={"outage_retry_for": "2h", "outage_backoff": "5s"}).daemon
    assert (daemon.outage_retry_for, daemon.outage_backoff) == (7200, 5)


@pytest.mark.parametrize(
    ("key", "value"),
    [("outage_retries", -1), ("outage_retry_for", 0), ("outage_backoff", "0s")],
)
def test_an_outage_budget_that_cannot_work_is_refused_naming_the_key(
    config_factory: ConfigFactory, key: str, value: object
) -> None:
    with pytest.raises(ConfigError) as err:
        config_factory.load(daemon={key: value})
    assert err.value.key == f"daemon.{key}"


def test_misspelt_key_suggests_the_nearest_valid_key(config_factory: ConfigFactory) -> None:
    with pytest.raises(ConfigError) as err:
        config_factory.load(daemon={"pol_interval": 5})
    assert err.value.key == "daemon.pol_interval"
    assert "did you mean 'poll_interval'" in str(err.value)


def test_misspelt_agent_key_is_named_with_its_agent_index(config_factory: ConfigFactory) -> None:
    agent = config_factory.agent()
    agent["max_turn"] = 3
    with pytest.raises(ConfigError) as err:
        config_factory.load(agents=[agent])
    assert err.value.key == "agents[0].max_turn"
    assert "max_turns" in str(err.value)


def test_missing_token_file_is_an_error_naming_the_agent(config_factory: ConfigFactory) -> None:
    agent = config_factory.agent("reviewer", token_file=str(config_factory.root / "nope"))
    with pytest.raises(ConfigError) as err:
        config_factory.load(agents=[agent])
    assert err.value.key == "agents[0].token_file"
    assert "'reviewer'" in str(err.value)
    assert "does not exist" in str(err.value)


def test_group_readable_secret_file_gives_a_warning(config_factory: ConfigFactory) -> None:
    token = config_factory.secret("loose-token", "forgejo-token-loose-123456", mode=0o644)
    config = config_factory.load(agents=[config_factory.agent(token_file=str(token))])
    assert any("chmod 600" in w and str(token) in w for w in config.warnings)


def test_drain_timeout_at_or_above_systemd_stop_timeout_is_refused(
    config_factory: ConfigFactory,
) -> None:
    with pytest.raises(ConfigError) as err:
        config_factory.load(daemon={"drain_timeout": 300})
    assert err.value.key == "daemon.drain_timeout"
    assert "TimeoutStopSec" in str(err.value)


def test_wrong_type_and_bad_enum_are_explained(config_factory: ConfigFactory) -> None:
    with pytest.raises(ConfigError, match=r"daemon.max_concurrency: must be an integer"):
        config_factory.load(daemon={"max_concurrency": "four"})
    with pytest.raises(ConfigError, match=r"agents\[0\].role: 'coder' is not one of dev"):
        config_factory.load(agents=[config_factory.agent(role="coder")])


def test_api_allowed_hosts_are_host_names_without_scheme_or_port(
    config_factory: ConfigFactory,
) -> None:
    assert config_factory.load().api.allowed_hosts == ()
    hosts = ["hooks.example.org", "192.0.2.7", "2001:db8::5"]
    assert config_factory.load(api={"allowed_hosts": hosts}).api.allowed_hosts == tuple(hosts)
    for bad in ("https://hooks.example.org", "hooks.example.org:443", "", "a b", "x/y"):
        with pytest.raises(ConfigError, match=r"api.allowed_hosts\[1\]: .*host name"):
            config_factory.load(api={"allowed_hosts": ["ok.example", bad]})


def test_duplicate_agent_and_unknown_review_by_are_refused(config_factory: ConfigFactory) -> None:
    with pytest.raises(ConfigError, match="configured twice"):
        config_factory.load(agents=[config_factory.agent("dev"), config_factory.agent("DEV")])
    with pytest.raises(ConfigError, match=r"review_by: 'nobody' is not a configured agent"):
        config_factory.load(agents=[config_factory.agent(review_by="nobody")])


def test_invalid_toml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[forgejo\nurl=")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"absent.toml: no such file"):
        load_config(tmp_path / "absent.toml")


def test_paths_expand_home_and_variables(
    config_factory: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOKS_STATE", str(config_factory.root / "from-var"))
    config = config_factory.load(daemon={"state_dir": "$HOOKS_STATE/x"})
    assert config.daemon.state_dir == config_factory.root / "from-var" / "x"


def test_a_left_out_state_dir_is_the_home_directory_s_wherever_the_daemon_starts(
    config_factory: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's small config has no state_dir: the store must not land in `./~/…`."""
    home, elsewhere = config_factory.root / "home", config_factory.root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    explicit = f"state_dir = {toml_value(str(config_factory.root / 'state'))}\n"
    text = config_factory.text()
    assert explicit in text
    config = load_config(config_factory.write(text.replace(explicit, "")))
    assert config.daemon.state_dir == home / ".local" / "state" / "claude-hooks"
    assert config.daemon.db_path.is_absolute()


def test_every_path_default_is_expanded_as_an_explicit_value_would_be(
    config_factory: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(config_factory.root / "home"))
    text = config_factory.text()
    config = load_config(config_factory.write(re.sub(r"(?m)^state_dir = .*\n", "", text)))
    sections = {**{name: getattr(config, name) for name in SECTIONS}, "agents": config.agents[0]}
    checked = []
    for name, section in sections.items():
        for f in dataclasses.fields(section):
            if isinstance(f.default, Path):
                value = getattr(section, f.name)
                assert value == expand_path(str(f.default)), f"{name}.{f.name} = {value}"
                assert value.is_absolute() and "~" not in str(value), f"{name}.{f.name}"
                checked.append(f"{name}.{f.name}")
    assert checked, "no section has a path default: this test checks nothing"


def test_agent_env_is_read_only(config_factory: ConfigFactory) -> None:
    config = config_factory.load(agents=[config_factory.agent(env={"FOO": "bar"})])
    assert config.agents[0].env["FOO"] == "bar"
    with pytest.raises(TypeError):
        config.agents[0].env["FOO"] = "changed"  # type: ignore[index]


def _example_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the example's ~/.config/claude-hooks/… secret files a home to exist in."""
    monkeypatch.setenv("HOME", str(tmp_path))
    text = EXAMPLE.read_text()
    for rel in re.findall(r'"~/(\.config/claude-hooks/[^"]+)"', text):
        file = tmp_path / rel
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("example-secret-value\n")
        os.chmod(file, 0o600)


def test_example_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _example_home(tmp_path, monkeypatch)
    config = load_config(EXAMPLE)
    assert config.agent_names == ("dev", "reviewer", "code-lead")
    assert config.agents[0].review_by == "reviewer"
    assert config.agents[0].merge_by == "code-lead"
    assert config.warnings == ()


def test_example_config_documents_every_key() -> None:
    """The commented example is the documentation: it must name every key there is."""
    raw = tomllib.loads(EXAMPLE.read_text())
    text = EXAMPLE.read_text()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name in raw[section], f"[{section}] {f.name} is not in {EXAMPLE.name}"
    for f in dataclasses.fields(AgentConfig):
        assert re.search(rf"^#? ?{f.name} = ", text, re.M), f"agents.{f.name} undocumented"


# --- forgejo.repositories (issue 12) ------------------------------------------------------


def test_repositories_are_required_and_named_when_missing(config_factory: ConfigFactory) -> None:
    text = config_factory.text().replace('repositories = ["acme/*"]\n', "")
    with pytest.raises(ConfigError, match=r"forgejo\.repositories: missing required key"):
        load_config(config_factory.write(text))


@pytest.mark.parametrize(
    ("patterns", "key", "problem"),
    [
        ([], "forgejo.repositories", "is empty"),
        (["acme"], "forgejo.repositories[0]", "'acme' is not"),
        (["acme/app", "*/*"], "forgejo.repositories[1]", "'\\*/\\*' is not"),
        (["acme/../x"], "forgejo.repositories[0]", "'acme/\\.\\./x' is not"),
        (["-acme/app"], "forgejo.repositories[0]", "'-acme/app' is not"),
    ],
)
def test_bad_repository_patterns_name_their_key(
    config_factory: ConfigFactory, patterns: list[str], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: {problem}"):
        config_factory.load(forgejo={"repositories": patterns})


@pytest.mark.parametrize(
    ("repo", "served"),
    [
        ("acme/app", True),
        ("ACME/App", True),  # Forgejo compares names without case
        ("acme-tools/anything", True),
        ("acme/other", False),
        ("mallory/evil", False),
        ("acme", False),
        ("acme/app/x", False),
    ],
)
def test_a_repository_is_served_by_an_exact_or_owner_pattern(repo: str, served: bool) -> None:
    assert repository_served(("acme/app", "Acme-Tools/*"), repo) is served


@pytest.mark.parametrize(
    ("merge_by", "problem"),
    [("nobody", "'nobody' is not a configured agent"), ("reviewer", "only a lead agent merges")],
)
def test_merge_by_must_name_a_configured_lead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, merge_by: str, problem: str
) -> None:
    _example_home(tmp_path, monkeypatch)
    text = EXAMPLE.read_text().replace('merge_by = "code-lead"', f'merge_by = "{merge_by}"')
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"agents\[0\]\.merge_by") as raised:
        load_config(tmp_path / "config.toml")
    assert problem in str(raised.value)
