from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import typing
from pathlib import Path

import pytest

from claude_hooks.config import (
    SECTIONS,
    AgentConfig,
    Bounds,
    ConfigError,
    EngineConfig,
    Role,
    SecretFileError,
    checked_number,
    config_keys,
    docker_socket_paths,
    expand_path,
    learn_secret_file,
    load_config,
    mount_warning,
    parse_duration,
    plain_number,
    read_secret,
    repository_served,
)
from tests.conftest import REPO_ROOT
from tests.fakes.configs import ConfigFactory, toml_table, toml_value

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
    for f in config_keys(AgentConfig):
        assert re.search(rf"^#? ?{f.name} = ", text, re.M), f"agents.{f.name} undocumented"
    engines = text[text.index("# [[engines]]") :]
    for f in config_keys(EngineConfig):
        assert re.search(rf"^#? ?{f.name} = ", engines, re.M), f"engines.{f.name} undocumented"


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


# --- numbers, secrets and risky settings (issue 16 §4) -------------------------------------


def _number_keys() -> list[tuple[str, str]]:
    """(section, key) of every int, float and duration field the loader reads."""
    found = []
    for section, cls in [*SECTIONS.items(), ("agents", AgentConfig)]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = {hints[f.name]} | set(typing.get_args(hints[f.name]))
            if kinds & {int, float}:
                found.append((section, f.name))
    return found


def _with(factory: ConfigFactory, section: str, key: str, value: object) -> Path:
    if section == "agents":
        return factory.write(agents=[factory.agent(**{key: value})])
    if section in ("forgejo", "daemon", "api"):
        return factory.write(**{section: {key: value}})
    return factory.write(factory.text() + toml_table(f"[{section}]", {key: value}))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(("section", "key"), _number_keys())
def test_every_number_key_refuses_what_is_not_a_finite_number(
    config_factory: ConfigFactory, section: str, key: str, value: float
) -> None:
    """nan passes every `<` check, inf waits forever: no number key may take either."""
    assert len(_number_keys()) >= 10, "the walk over the fields found too few numbers"
    named = f"agents[0].{key}" if section == "agents" else f"{section}.{key}"
    with pytest.raises(ConfigError) as err:
        load_config(_with(config_factory, section, key, value))
    assert err.value.key == named
    assert repr(value) in str(err.value)
    wanted = "an integer" if int in typing.get_args(_hint(section, key)) else "a finite number"
    assert f"must be {wanted}" in str(err.value)


def _hint(section: str, key: str) -> object:
    cls = AgentConfig if section == "agents" else SECTIONS[section]
    hint = typing.get_type_hints(cls)[key]
    return typing.Union[hint, None]  # noqa: UP007  (so get_args lists a bare int too)


@pytest.mark.parametrize(
    ("bounds", "inside", "outside"),
    [
        (Bounds(0, low_open=True), [0.001, 10**9], [0, -1]),
        (Bounds(0, 300, high_open=True), [0, 299.9], [300, -0.1]),
        (Bounds(32, 64), [32, 64], [31, 65]),
    ],
)
def test_bounds_say_what_is_outside_them(
    bounds: Bounds, inside: list[float], outside: list[float]
) -> None:
    assert all(bounds.problem(n) is None for n in inside)
    for n in outside:
        with pytest.raises(ConfigError, match=rf"x\.y: must be .*, got {n!r}"):
            checked_number(n, "c.toml", "x.y", bounds)


@pytest.mark.parametrize(
    ("key", "value"),
    [("memory", "0"), ("memory", "5m"), ("memory", "lots"), ("memory", "9999999p")],
)
def test_memory_is_a_docker_size_docker_and_claude_can_run_in(
    config_factory: ConfigFactory, key: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=rf"agents\[0\]\.memory: .*{value!r}"):
        config_factory.load(agents=[config_factory.agent(**{key: value})])
    assert config_factory.load(agents=[config_factory.agent(memory="128m")]).agents[0]


@pytest.mark.parametrize(
    ("content", "secret"),
    [
        (b"tok-123456\n", "tok-123456"),
        (b"tok-123456\r\n", "tok-123456"),
        (b" tok-123456 ", "tok-123456"),
    ],
)
def test_read_secret_takes_one_line_with_one_trailing_newline(
    tmp_path: Path, content: bytes, secret: str
) -> None:
    file = tmp_path / "token"
    file.write_bytes(content)
    assert read_secret(file) == secret


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "is empty"), (b" \n", "is empty"), (b"\xff\xfe", "not UTF-8"), (b"a\nb", "one line")],
)
def test_read_secret_refuses_what_the_daemon_cannot_send(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    """The same function the daemon reads with: an OSError its callers already refuse on."""
    file = tmp_path / "token"
    file.write_bytes(content)
    with pytest.raises(SecretFileError, match=problem) as err:
        read_secret(file)
    assert isinstance(err.value, OSError) and str(file) in str(err.value.strerror)


def test_credentials_may_span_lines_but_not_be_empty(config_factory: ConfigFactory) -> None:
    pretty = config_factory.secret("creds.json", '{\n  "claudeAiOauth": {"accessToken": "x"}\n}')
    config = config_factory.load(agents=[config_factory.agent(credentials_file=str(pretty))])
    assert config.warnings == ()
    assert learn_secret_file(pretty)


@pytest.mark.parametrize("listen", ["127.0.0.1:8765", "[::1]:8765", "localhost:8765"])
def test_a_loopback_listen_address_gives_no_warning(
    config_factory: ConfigFactory, listen: str
) -> None:
    assert config_factory.load(api={"listen": listen}).warnings == ()


def test_a_mount_warns_when_it_holds_the_docker_socket_as_docker_resolves_it(
    tmp_path: Path,
) -> None:
    """Docker resolves the source's symlinks; what lies under it is the host's as it is."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run-other").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "run")
    sockets = (str(tmp_path / "run" / "docker.sock"),)
    assert mount_warning(f"{tmp_path}/run-other:/x", sockets) is None  # beside, not holding it
    assert mount_warning(f"{tmp_path}/ru:/x", sockets) is None  # a prefix is not a parent
    for source in ("run/docker.sock", "run", "link", ""):
        assert "Docker socket" in (mount_warning(f"{tmp_path}/{source}:/x:ro", sockets) or "")
    assert "whole host" in (mount_warning("/:/host:ro", sockets) or "")
    assert docker_socket_paths({"DOCKER_HOST": "unix:///tmp/d.sock"})[-1] == "/tmp/d.sock"
    assert docker_socket_paths({"XDG_RUNTIME_DIR": "/run/user/7"})[-1] == "/run/user/7/docker.sock"


def _example_line(block: str, key: str) -> str:
    """The line of `key` in the example's first `block` table ("[daemon]", "[[agents]]")."""
    text = EXAMPLE.read_text()
    body = text.split(f"\n{block}\n", 1)[1].split("\n[", 1)[0]
    return next(line for line in body.splitlines() if re.match(rf"^#? ?{key} = ", line))


def test_example_config_states_the_bounds_of_every_number_key() -> None:
    documented = []
    for section, cls in [*SECTIONS.items(), ("agents", AgentConfig)]:
        block = "[[agents]]" if section == "agents" else f"[{section}]"
        for f in dataclasses.fields(cls):
            if (bounds := f.metadata.get("bounds")) is None:
                continue
            line = _example_line(block, f.name)
            for end in (bounds.low, bounds.high):
                if end is not None:
                    assert plain_number(end) in line, (
                        f"{section}.{f.name}: {plain_number(end)} not in {line}"
                    )
            documented.append(f.name)
    assert len(documented) >= 10
