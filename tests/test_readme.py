"""The README is the newcomer's contract: its commands run, its config loads."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from claude_hooks.config import parse_config
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
CI_RUN = (REPO_ROOT / ".ci" / "run").read_text()


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def quick_start() -> list[str]:
    first = code_blocks("sh")[0]
    return [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]


def test_readme_opens_with_install_and_run_then_the_tests() -> None:
    assert README.index("```sh") < README.index("claude-hooks lets a team")
    install_and_run, tests = quick_start()
    assert install_and_run == "pip install . && claude-hooks demo"
    assert tests.endswith("python3 -m pytest -q -ra")


def test_ci_runs_the_readme_test_command() -> None:
    test_command = quick_start()[1].split("&&")[-1].strip()
    assert re.search(rf"^{re.escape(test_command)}$", CI_RUN, re.M), test_command
    install = quick_start()[1].split("&&")[0].strip()
    assert "-e '.[test]'" in install and "-e '.[test]'" in CI_RUN


def test_readme_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = code_blocks("toml")[0]
    monkeypatch.setenv("HOME", str(tmp_path))
    for rel in re.findall(r'"~/([^"]+)"', text):
        file = tmp_path / rel
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("secret-for-the-readme-test\n")
        os.chmod(file, 0o600)
    config = parse_config(tomllib.loads(text), REPO_ROOT / "README.md")
    assert config.agent_names == ("dev", "reviewer")
    assert config.daemon.drain_timeout == 240 and config.api.listen == "127.0.0.1:8765"


def test_readme_commands_are_real_subcommands() -> None:
    from claude_hooks.cli.main import build_parser

    known = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    used = set(re.findall(r"^\s*claude-hooks ([a-z-]+)", "\n".join(code_blocks("sh")), re.M))
    assert used and used <= known, used - known
