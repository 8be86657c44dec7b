"""agents.docker_host (issue 18): which Docker engine an agent's container is on, and the
config refusing an engine API anyone on the network could use."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from claude_hooks.cli.check import CheckResult, run_checks
from claude_hooks.cli.containers import shell_argv
from claude_hooks.config import LOCAL_ENGINE, Config, ConfigError, DockerEngine, EngineTls
from claude_hooks.runner.containers import read_exactly
from claude_hooks.runner.engines import docker_url, engines_of
from tests.fakes.configs import ConfigFactory
from tests.tls import make_engine_certs


def tls_keys(directory: Path) -> dict[str, str]:
    certs = make_engine_certs(directory)
    return {
        "docker_tls_ca_file": str(certs.ca),
        "docker_tls_cert_file": str(certs.client_cert),
        "docker_tls_key_file": str(certs.client_key),
    }


def test_an_agent_without_docker_host_is_on_the_local_engine(
    config_factory: ConfigFactory,
) -> None:
    agent = config_factory.load().agents[0]
    assert agent.engine == DockerEngine(None, None)
    assert agent.engine.name == LOCAL_ENGINE


def test_a_unix_socket_engine_needs_no_tls(config_factory: ConfigFactory) -> None:
    config = config_factory.load(
        agents=[config_factory.agent(docker_host="unix:///run/other-docker.sock")]
    )
    assert config.agents[0].engine == DockerEngine("unix:///run/other-docker.sock")
    assert config.warnings == ()


def test_a_tls_engine_takes_the_three_files(config_factory: ConfigFactory, tmp_path: Path) -> None:
    keys = tls_keys(tmp_path / "certs")
    agent = config_factory.agent(docker_host="tcp://127.0.0.1:2376", **keys)
    engine = config_factory.load(agents=[agent]).agents[0].engine
    assert engine.name == "tcp://127.0.0.1:2376"
    assert engine.tls == EngineTls(
        Path(keys["docker_tls_ca_file"]),
        Path(keys["docker_tls_cert_file"]),
        Path(keys["docker_tls_key_file"]),
    )


def test_plain_tcp_is_refused_unless_docker_tls_false_is_written(
    config_factory: ConfigFactory,
) -> None:
    with pytest.raises(ConfigError, match=r"agents\[0\]\.docker_tls_ca_file: .*mutual TLS"):
        config_factory.load(agents=[config_factory.agent(docker_host="tcp://127.0.0.1:2375")])


def test_plain_tcp_written_on_purpose_loads_and_check_warns(
    config_factory: ConfigFactory,
) -> None:
    agent = config_factory.agent(docker_host="tcp://127.0.0.1:2375", docker_tls=False)
    config = config_factory.load(agents=[agent])
    assert config.agents[0].engine == DockerEngine("tcp://127.0.0.1:2375", None)
    lines = [r.line() for r in _offline_checks(config)]
    assert any(
        "agents[0].docker_tls: false" in line and "root on its host" in line for line in lines
    )


def _offline_checks(config: Config) -> list[CheckResult]:
    return asyncio.run(run_checks(config, offline=True))


@pytest.mark.parametrize(
    ("overrides", "key", "problem"),
    [
        ({"docker_host": "ssh://me@build-1"}, "docker_host", "must be unix:///path or tcp://"),
        ({"docker_host": "unix://run/docker.sock"}, "docker_host", "absolute path"),
        ({"docker_host": "tcp://build-1"}, "docker_host", "must be tcp://host:port"),
        (
            {"docker_host": "tcp://build-1:0", "docker_tls": False},
            r"docker_host port",
            "at least 1",
        ),
        ({"docker_tls": False}, "docker_tls", "only for a tcp"),
        ({"docker_tls_key_file": "/nonexistent"}, "docker_tls_key_file", "only for a tcp"),
    ],
)
def test_bad_engine_settings_name_their_key(
    config_factory: ConfigFactory, overrides: dict[str, object], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=rf"agents\[0\]\.{key}: .*{problem}"):
        config_factory.load(agents=[config_factory.agent(**overrides)])


def test_tls_files_that_do_not_fit_together_are_refused(
    config_factory: ConfigFactory, tmp_path: Path
) -> None:
    keys = tls_keys(tmp_path / "one")
    keys["docker_tls_key_file"] = tls_keys(tmp_path / "two")["docker_tls_key_file"]
    agent = config_factory.agent(docker_host="tcp://127.0.0.1:2376", **keys)
    with pytest.raises(ConfigError, match=r"docker_tls_cert_file: .*do not make a TLS client"):
        config_factory.load(agents=[agent])


def test_a_readable_client_key_is_warned_about(
    config_factory: ConfigFactory, tmp_path: Path
) -> None:
    keys = tls_keys(tmp_path / "certs")
    Path(keys["docker_tls_key_file"]).chmod(0o644)
    agent = config_factory.agent(docker_host="tcp://127.0.0.1:2376", **keys)
    warnings = config_factory.load(agents=[agent]).warnings
    assert any("docker_tls_key_file" in w and "chmod 600" in w for w in warnings)


def test_plain_tcp_with_tls_files_is_a_contradiction(
    config_factory: ConfigFactory, tmp_path: Path
) -> None:
    agent = config_factory.agent(
        docker_host="tcp://127.0.0.1:2376", docker_tls=False, **tls_keys(tmp_path / "c")
    )
    with pytest.raises(ConfigError, match=r"docker_tls = false: no TLS file is used"):
        config_factory.load(agents=[agent])


# --- the engines of a config, pure -------------------------------------------------------------


def test_agents_naming_one_engine_share_it_in_first_named_order(
    config_factory: ConfigFactory, tmp_path: Path
) -> None:
    keys = tls_keys(tmp_path / "certs")
    tcp = {"docker_host": "tcp://127.0.0.1:2376", **keys}
    config = config_factory.load(
        agents=[
            config_factory.agent("dev", **tcp),
            config_factory.agent("reviewer"),
            config_factory.agent("lead", **tcp),
        ]
    )
    engines = engines_of(config.agents)
    assert [e.name for e in engines] == ["tcp://127.0.0.1:2376", LOCAL_ENGINE]
    assert config.agents[0].engine == config.agents[2].engine  # one client for both


def test_a_tls_engine_is_reached_over_https_and_a_plain_one_as_written() -> None:
    files = EngineTls(Path("/c/ca.pem"), Path("/c/cert.pem"), Path("/c/key.pem"))
    assert docker_url(DockerEngine("tcp://build-1:2376", files)) == "https://build-1:2376"
    assert docker_url(DockerEngine("tcp://build-1:2375")) == "tcp://build-1:2375"
    assert docker_url(DockerEngine("unix:///run/d.sock")) == "unix:///run/d.sock"
    assert docker_url(DockerEngine()) is None  # aiodocker's default: DOCKER_HOST, the socket


def test_containers_shell_reaches_the_agents_engine_as_the_daemon_does(
    config_factory: ConfigFactory, tmp_path: Path
) -> None:
    keys = tls_keys(tmp_path / "certs")
    agent = config_factory.load(
        agents=[config_factory.agent("dev", docker_host="tcp://127.0.0.1:2376", **keys)]
    ).agents[0]
    argv = shell_argv(agent, tty=False)
    assert argv[:10] == [
        "docker", "--host", "tcp://127.0.0.1:2376", "--tlsverify",
        "--tlscacert", keys["docker_tls_ca_file"], "--tlscert", keys["docker_tls_cert_file"],
        "--tlskey", keys["docker_tls_key_file"],
    ]  # fmt: skip
    assert argv[10:12] == ["exec", "-i"]
    local = config_factory.load().agents[0]
    assert shell_argv(local, tty=False)[:2] == ["docker", "exec"]


def test_a_prompt_over_tls_ends_by_its_length(tmp_path: Path) -> None:
    """No half-close over TLS: `head -c` gives claude its end of input."""
    argv = read_exactly(["cat"], 5)
    done = subprocess.run(argv, input=b"hello and more", capture_output=True, timeout=10)
    assert (done.returncode, done.stdout) == (0, b"hello")
    failing = subprocess.run(read_exactly(["sh", "-c", "exit 3"], 0), capture_output=True)
    assert failing.returncode == 3  # the command's exit code, not head's
