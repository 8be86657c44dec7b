"""What an operator installs and runs: the justfile, the agent image, the base-image
script, the unit's commands and the operators' manual (docs/OPERATIONS.md)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import aiodocker
import pytest

from claude_hooks.cli.main import build_parser
from claude_hooks.config import AgentConfig
from claude_hooks.runner.claude import (
    CLAUDE_CONFIG_DIR,
    CREDENTIALS_PATH,
    HOME_DIR,
    STATE_DIR,
    claude_argv,
)
from claude_hooks.runner.containers import ContainerManager, run_exec
from tests.conftest import REPO_ROOT
from tests.fakes.docker import AGENT_UID, MakeAgent
from tests.fakes.messages_api import ScriptedMessagesApi, bash_turn, final_turn, tool_results
from tests.test_unit_file import unit

JUSTFILE = REPO_ROOT / "justfile"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
BASE_SCRIPT = REPO_ROOT / "deploy" / "build-base-image.sh"
OPERATIONS = REPO_ROOT / "docs" / "OPERATIONS.md"
README = REPO_ROOT / "README.md"
AGENT_IMAGE = "claude-hooks-agent:ci"  # built by .ci/run: deploy/build-agent-image.sh TAG
CLAUDE_CODE_VERSION = "2.1.332"
RECIPES = {
    "install", "containers-up", "containers-down", "containers-rebuild", "containers-logs",
    "containers-shell", "image", "base-image", "test", "bench", "logs", "check", "demo",
}  # fmt: skip


def missing_tool(what: str) -> None:
    """Skip with the reason — except under CI=true, which must have every tool."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must have {what}")
    pytest.skip(f"{what} is not installed")


def just() -> str:
    path = shutil.which("just")
    if path is None:
        missing_tool("just (PyPI rust-just)")
    return path


def fake_command(bindir: Path, name: str, body: str) -> Path:
    """An executable shell script on a test PATH, standing in for a real command."""
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / name
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def subcommands() -> dict[str, set[str]]:
    """The CLI's subcommands, and the actions of `containers`."""
    top = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    containers = top["containers"]._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    return {"": set(top), "containers": set(containers)}


def justfile_recipes() -> set[str]:
    text = JUSTFILE.read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*)(?:\s[^:=\n]*)?:(?!=)", text, re.M))


def readme_test_command() -> str:
    first_block = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)[0]
    second_line = [line for line in first_block.splitlines() if line.strip()][1]
    return second_line.split("#")[0].split("&&")[-1].strip()


# --- justfile -----------------------------------------------------------------------------------


def test_just_lists_every_recipe() -> None:
    done = subprocess.run([just(), "--summary"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) >= RECIPES
    assert justfile_recipes() >= RECIPES  # the regex the manual's test relies on agrees


def test_just_test_runs_the_readme_test_command() -> None:
    done = subprocess.run(
        [just(), "--dry-run", "test"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().startswith(readme_test_command())
    assert readme_test_command() == "python3 -m pytest -q -ra"


@pytest.mark.parametrize("action", ["up", "down", "rebuild", "logs", "shell"])
def test_container_recipes_are_the_cli_commands(action: str) -> None:
    done = subprocess.run(
        [just(), "--dry-run", f"containers-{action}", "dev"],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f'claude-hooks containers {action} "$@"'
    assert action in subcommands()["containers"]


def test_recipe_arguments_reach_the_cli_as_separate_words(tmp_path: Path) -> None:
    fake_command(tmp_path / "bin", "claude-hooks", f'printf "%s\\n" "$@" > {tmp_path}/argv')
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [just(), "containers-rebuild", "--force", "dev", "two words"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv == ["containers", "rebuild", "--force", "dev", "two words"]


def test_justfile_calls_only_real_cli_commands_and_writes_no_secret_files() -> None:
    text = JUSTFILE.read_text()
    used = set(re.findall(r"claude-hooks ([a-z][a-z-]*)", text)) - {"containers"}
    assert used and used <= subcommands()[""], used - subcommands()[""]
    actions = set(re.findall(r"claude-hooks containers ([a-z]+)", text))
    assert actions == subcommands()["containers"]
    # The seed's recipes wrote the token to a temp env file (and into Config.Env).
    assert "mktemp" not in text and "--env-file" not in text and "ACCESS_TOKEN" not in text


def test_install_puts_unit_and_config_in_place_and_keeps_an_existing_config(
    tmp_path: Path,
) -> None:
    home, bindir, calls = tmp_path / "home", tmp_path / "bin", tmp_path / "calls"
    # pipx installs the script where the unit runs it; systemctl only records.
    fake_command(
        bindir,
        "pipx",
        f'echo "pipx $*" >> {calls}\nmkdir -p "$PIPX_BIN_DIR"\n'
        'printf "#!/bin/sh\\necho claude-hooks 0\\n" > "$PIPX_BIN_DIR/claude-hooks"\n'
        'chmod +x "$PIPX_BIN_DIR/claude-hooks"',
    )
    fake_command(bindir, "systemctl", f'echo "systemctl $*" >> {calls}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env.update(HOME=str(home), PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")

    def install() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [just(), "install"], capture_output=True, text=True, cwd=REPO_ROOT, env=env
        )

    first = install()
    assert first.returncode == 0, first.stderr
    unit_copy = home / ".config" / "systemd" / "user" / "claude-hooks.service"
    assert unit_copy.read_text() == (REPO_ROOT / "deploy" / "claude-hooks.service").read_text()
    config = home / ".config" / "claude-hooks" / "config.toml"
    assert config.read_text() == (REPO_ROOT / "deploy" / "config.example.toml").read_text()
    assert config.stat().st_mode & 0o777 == 0o600
    assert calls.read_text().splitlines() == [
        "pipx install --force .",
        "pipx inject claude-hooks cysystemd>=2.0",  # the `journal` extra: native journal entries
        "systemctl --user daemon-reload",
        "systemctl --user enable claude-hooks",
    ]
    config.write_text("# mine\n")
    second = install()
    assert second.returncode == 0, second.stderr
    assert config.read_text() == "# mine\n" and "kept the existing" in second.stdout


# --- the unit's commands --------------------------------------------------------------------------


def test_unit_commands_are_real_cli_commands() -> None:
    service = unit()["Service"]
    parser = build_parser()
    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(service[key])
        assert argv[0] == "%h/.local/bin/claude-hooks"
        args = parser.parse_args(argv[1:])  # raises SystemExit for an unknown command
        assert callable(args.handler)
    assert parser.parse_args(shlex.split(service["ExecStartPre"])[1:]).action == "up"


# --- the agent image: Dockerfile and base image ---------------------------------------------------


def dockerfile_lines() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_dockerfile_pulls_nothing_but_the_locally_made_base() -> None:
    froms = [line.split()[1] for line in dockerfile_lines() if line.startswith("FROM ")]
    assert froms == ["debian:bookworm-slim", "debian:bookworm-slim"]
    copies = [line for line in dockerfile_lines() if line.startswith("COPY ")]
    assert copies == ["COPY --from=claude-code /out/claude /usr/local/bin/claude"]


def test_dockerfile_matches_the_runner_layout_and_the_default_user() -> None:
    text = " ".join(dockerfile_lines())
    assert f"ARG CLAUDE_CODE_VERSION={CLAUDE_CODE_VERSION}" in text
    assert f"HOME={HOME_DIR}" in text and f"CLAUDE_CONFIG_DIR={CLAUDE_CONFIG_DIR}" in text
    default_user = next(f.default for f in dataclasses.fields(AgentConfig) if f.name == "user")
    uid, gid = str(default_user).split(":")
    assert uid == gid and f"ARG AGENT_UID={uid}" in text and dockerfile_lines()[-3] == "USER agent"
    assert '--uid "$AGENT_UID" --gid "$AGENT_UID"' in text
    assert dockerfile_lines()[-1] == 'CMD ["sleep", "infinity"]'


def test_base_image_script_keeps_an_existing_image(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    fake_command(bindir, "docker", 'test "$1 $2" = "image inspect"')  # the image exists
    fake_command(bindir, "debootstrap", f"touch {tmp_path}/debootstrap-ran")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(BASE_SCRIPT)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "already present" in done.stdout
    assert not (tmp_path / "debootstrap-ran").exists()


def test_base_image_script_removes_its_temporary_root_when_debootstrap_fails(
    tmp_path: Path,
) -> None:
    bindir, scratch = tmp_path / "bin", tmp_path / "tmp"
    scratch.mkdir()
    fake_command(bindir, "docker", "exit 1")  # no such image yet
    fake_command(bindir, "debootstrap", 'mkdir -p "$3/etc" && touch "$3/etc/half-done"; exit 1')
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "TMPDIR": str(scratch),
    }
    done = subprocess.run(["bash", str(BASE_SCRIPT)], capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert list(scratch.iterdir()) == []


@pytest.fixture
async def agent_image(docker: aiodocker.Docker) -> str:
    try:
        await docker.images.inspect(AGENT_IMAGE)
    except aiodocker.DockerError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must build {AGENT_IMAGE}: deploy/build-agent-image.sh {AGENT_IMAGE}")
        pytest.skip(f"no {AGENT_IMAGE}: build it with deploy/build-agent-image.sh {AGENT_IMAGE}")
    return AGENT_IMAGE


@pytest.mark.docker
@pytest.mark.agent_image
async def test_agent_image_runs_pinned_claude_and_git_as_the_agent_uid(
    agent_image: str, docker: aiodocker.Docker, manager: ContainerManager, make_agent: MakeAgent
) -> None:
    agent = make_agent(image=agent_image)
    container = await manager.ensure(agent)
    code, version = await run_exec(container, ["claude", "--version"], user=agent.user)
    assert code == 0 and version.startswith(CLAUDE_CODE_VERSION), version
    code, git = await run_exec(container, ["git", "--version"], user=agent.user)
    assert code == 0 and git.startswith("git version")
    assert (await docker.images.inspect(agent_image))["Config"]["User"] == "agent"
    assert await run_exec(container, ["id", "-u", "agent"]) == (0, f"{AGENT_UID}\n")
    owner = ["stat", "-c", "%u", STATE_DIR, HOME_DIR, CLAUDE_CONFIG_DIR]
    assert await run_exec(container, owner, user=agent.user) == (0, f"{AGENT_UID}\n" * 3)
    assert await manager.sync_credentials(container, agent)  # what each task does first
    assert (await run_exec(container, ["test", "-r", CREDENTIALS_PATH], user=agent.user))[0] == 0
    assert (await run_exec(container, ["sh", "-c", "command -v node"]))[0] != 0  # build only


# The Bash tool writes where a task would: a working tree under /state, and /tmp.
HARDENED_RUN = (
    "mkdir -p /state/work/t && cd /state/work/t && echo ok > f && echo scratch > /tmp/t && "
    "git init -q && git add f && git -c user.email=a@b -c user.name=a commit -qm x && echo DONE"
)


@pytest.mark.docker
@pytest.mark.agent_image
async def test_the_real_claude_works_under_the_read_only_root_without_capabilities(
    agent_image: str, manager: ContainerManager, make_agent: MakeAgent
) -> None:
    agent = make_agent(image=agent_image, network="host")  # the scripted API is on loopback
    container = await manager.ensure(agent)
    assert (await container.show())["HostConfig"]["ReadonlyRootfs"] is True
    async with ScriptedMessagesApi([bash_turn(HARDENED_RUN), final_turn("Done.")]) as api:
        env = [
            f"ANTHROPIC_BASE_URL={api.base_url}", "ANTHROPIC_API_KEY=test-key",
            "CLAUDE_CODE_MAX_RETRIES=0", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
            "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY=127.0.0.1,localhost",
        ]  # fmt: skip
        argv = [*claude_argv(agent, session_id=None, system_prompt=""), "Commit a file."]
        code, output = await run_exec(container, argv, user=agent.user, environment=env)
        results = tool_results(api.requests[-1])
    assert code == 0, output
    result = json.loads(output.splitlines()[-1])
    assert (result["type"], result["subtype"]) == ("result", "success"), result
    assert [(r["content"], r["is_error"]) for r in results] == [("DONE", False)]
    # Claude Code's own writes: all in CLAUDE_CONFIG_DIR (on the volume) and /tmp.
    transcript = f"{CLAUDE_CONFIG_DIR}/projects/-state/{result['session_id']}.jsonl"
    assert (await run_exec(container, ["test", "-s", transcript], user=agent.user))[0] == 0


# --- docs/OPERATIONS.md ---------------------------------------------------------------------------


def manual_commands() -> list[str]:
    """Every command in the manual's sh blocks, split at &&, ; and pipes, comments dropped."""
    blocks = re.findall(r"```sh\n(.*?)```", OPERATIONS.read_text(), re.S)
    commands = []
    for line in "\n".join(blocks).splitlines():
        code = line.split(" #")[0].strip()
        commands += [part.strip() for part in re.split(r"&&|;|\|", code) if part.strip()]
    return commands


def test_manual_claude_hooks_commands_parse_with_the_real_cli() -> None:
    parser = build_parser()
    used = [c for c in manual_commands() if c.startswith("claude-hooks ")]
    assert len(used) >= 10
    for command in used:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"docs/OPERATIONS.md shows a command the CLI refuses: {command}")


def test_manual_just_recipes_exist() -> None:
    used = {c.split()[1] for c in manual_commands() if c.startswith("just ")}
    assert {"install", "image", "containers-rebuild"} <= used
    assert used <= justfile_recipes(), used - justfile_recipes()
