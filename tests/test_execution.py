"""The claude exec: its argv and environment, streaming its output, stopping it cleanly."""

from __future__ import annotations

import asyncio
import json
import time
import types
from collections.abc import Awaitable
from pathlib import Path

import aiodocker
import pytest
from aiodocker.containers import DockerContainer
from structlog.testing import capture_logs

from claude_hooks.config import AgentConfig
from claude_hooks.runner.claude import (
    CLAUDE_CONFIG_DIR,
    HOME_DIR,
    claude_argv,
    exec_env,
    with_forge_auth,
)
from claude_hooks.runner.containers import (
    ANY_TASK,
    ContainerManager,
    ContainerStopped,
    run_exec,
    signal_processes,
    task_processes,
)
from claude_hooks.runner.execution import (
    ClaudeExec,
    ExecResult,
    LineSplitter,
    TailBuffer,
    _run_to_end,
    run_claude,
)
from claude_hooks.runner.stream import Result, StreamEvent, parse_line
from tests.fakes.docker import (  # noqa: F401  (fixtures)
    AGENT_UID,
    MakeAgent,
    agent_factory,
    built_test_image,
    container_manager,
    docker_client,
    labels_removed_after_test,
)
from tests.waiting import wait_until

SAMPLES = Path(__file__).parent / "data" / "claude-samples"
TOKEN = "forgejo-secret-token-0123456789abcdef"


def agent(**overrides: object) -> AgentConfig:
    values: dict = {
        "name": "dev",
        "token_file": Path("/secrets/token"),
        "credentials_file": Path("/secrets/creds.json"),
    }
    return AgentConfig(**{**values, **overrides})


def env_dict(env: list[str]) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in env]
    assert len({k for k, _ in pairs}) == len(pairs), "a variable is set twice"
    return dict(pairs)


# --- argv and environment (pure) -------------------------------------------------------


def test_argv_is_headless_stream_json_with_the_agent_settings() -> None:
    argv = claude_argv(
        agent(model="claude-opus-5-5", max_turns=30, claude_command="/opt/claude"),
        session_id="5625f66b-7328-4ea2-862c-2a7754499e4e",
        system_prompt="You are dev.",
    )
    assert argv[:5] == ["/opt/claude", "-p", "--output-format", "stream-json", "--verbose"]
    assert "--strict-mcp-config" in argv
    options = [a for a in argv[5:] if a != "--strict-mcp-config"]
    pairs = dict(zip(options[::2], options[1::2], strict=True))
    assert pairs == {
        "--permission-mode": "bypassPermissions",
        "--setting-sources": "user",
        "--model": "claude-opus-5-5",
        "--max-turns": "30",
        "--append-system-prompt": "You are dev.",
        "--resume": "5625f66b-7328-4ea2-862c-2a7754499e4e",
    }


def test_argv_leaves_out_what_is_not_set() -> None:
    argv = claude_argv(agent(), session_id=None, system_prompt="")
    assert argv == [
        "claude", "-p", "--output-format", "stream-json", "--verbose",
        "--permission-mode", "bypassPermissions",
        "--setting-sources", "user", "--strict-mcp-config",
    ]  # fmt: skip


def test_claude_env_has_state_layout_and_markers_and_no_forgejo_credential() -> None:
    env = env_dict(exec_env(agent(), task_id=42, daemon_id="d-1"))
    assert env["HOME"] == HOME_DIR
    assert env["CLAUDE_CONFIG_DIR"] == CLAUDE_CONFIG_DIR
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["CLAUDE_HOOKS_TASK"] == "42"
    assert env["CLAUDE_HOOKS_DAEMON"] == "d-1"
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert not any(key.startswith("GIT_CONFIG") for key in env)


def test_git_env_adds_the_auth_header_for_the_forgejo_server_only() -> None:
    base = exec_env(agent(), task_id=1, daemon_id="d")
    env = env_dict(with_forge_auth(base, TOKEN, "http://127.0.0.1:3000/"))
    assert env["GIT_CONFIG_COUNT"] == "1"
    assert env["GIT_CONFIG_KEY_0"] == "http.http://127.0.0.1:3000/.extraHeader"
    assert env["GIT_CONFIG_VALUE_0"] == f"Authorization: token {TOKEN}"
    assert env["CLAUDE_HOOKS_TASK"] == "1"  # the clone and push execs are the task's too


def test_token_is_never_in_argv() -> None:
    argv = claude_argv(agent(), session_id="s", system_prompt="p")
    assert not any(TOKEN in arg for arg in argv)


def test_agent_env_and_extra_override_defaults_but_not_markers_or_auth() -> None:
    a = agent(env=types.MappingProxyType({
        "CLAUDE_CODE_MAX_RETRIES": "0", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "0",
        "CLAUDE_HOOKS_TASK": "999", "HOME": "/root",
    }))  # fmt: skip
    base = exec_env(
        a,
        task_id=7,
        daemon_id="d",
        extra={"CLAUDE_CODE_MAX_RETRIES": "2", "GIT_CONFIG_VALUE_0": "x"},
    )
    env = env_dict(with_forge_auth(base, TOKEN, None))
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "2"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "0"
    assert env["CLAUDE_HOOKS_TASK"] == "7"
    assert env["HOME"] == HOME_DIR
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    assert env["GIT_CONFIG_VALUE_0"] == f"Authorization: token {TOKEN}"


# --- splitting the output into lines (pure) ----------------------------------------------


def test_lines_spanning_frames_are_joined() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":') == []
    assert splitter.feed(b'1}\n{"b"') == [b'{"a":1}']
    assert splitter.feed(b":2}\n\n{") == [b'{"b":2}', b""]
    assert splitter.flush() == [b"{"]


def test_multibyte_characters_split_across_frames_survive() -> None:
    splitter = LineSplitter()
    data = '{"text":"é✓"}\n'.encode()
    lines = [line for i in range(len(data)) for line in splitter.feed(data[i : i + 1])]
    assert lines == [data[:-1]]
    assert parse_line(lines[0]).raw == '{"text":"é✓"}'


def test_final_line_without_newline_is_flushed_once() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"abc") == []
    assert splitter.flush() == [b"abc"]
    assert splitter.flush() == []


def test_an_overlong_line_is_cut_and_the_rest_of_it_dropped() -> None:
    splitter = LineSplitter(max_line=10)
    assert splitter.feed(b"x" * 25) == [b"x" * 10]
    assert splitter.feed(b"yyyy\nnext\n") == [b"next"]
    assert splitter.flush() == []


def test_tail_buffer_keeps_only_the_last_bytes() -> None:
    tail = TailBuffer(limit=8)
    tail.write(b"0123456789")
    tail.write(b"ab")
    assert tail.text() == "456789ab"


async def test_run_to_end_finishes_the_work_despite_a_second_cancel() -> None:
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_cleanup() -> None:
        started.set()
        await release.wait()  # still cleaning up when the cancel arrives
        finished.set()

    task = asyncio.create_task(_run_to_end(slow_cleanup()))
    await started.wait()
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


# --- against the engine ----------------------------------------------------------------


@pytest.fixture
async def container(manager: ContainerManager, make_agent: MakeAgent) -> DockerContainer:
    return await manager.ensure(make_agent())


async def run(
    container: DockerContainer,
    prompt: str,
    *,
    task_id: int = 1,
    events: list[StreamEvent] | None = None,
    extra: dict[str, str] | None = None,
    stop_grace: float = 10.0,
) -> ExecResult:
    a = agent(user=f"{AGENT_UID}:{AGENT_UID}")
    claude = ClaudeExec(
        task_id=task_id,
        argv=tuple(claude_argv(a, session_id=None, system_prompt="be brief")),
        env=tuple(exec_env(a, task_id=task_id, daemon_id="d-test", extra=extra)),
        stdin=prompt.encode(),
        workdir="/state",
        stop_grace=stop_grace,
    )
    on_event = (events if events is not None else []).append
    return await run_claude(container, claude, user=a.user, on_event=on_event)


def claude_exec(a: AgentConfig, task_id: int, stdin: bytes) -> ClaudeExec:
    return ClaudeExec(
        task_id=task_id,
        argv=tuple(claude_argv(a, session_id=None, system_prompt="")),
        env=tuple(exec_env(a, task_id=task_id, daemon_id="d")),
        stdin=stdin,
        workdir="/state",
    )


async def task_pids(container: DockerContainer, task_id: int) -> list[int]:
    return await signal_processes(container, "list", task_processes(task_id), user=str(AGENT_UID))


@pytest.mark.docker
@pytest.mark.parametrize("scenario", ["tool-run-success", "max-turns-1", "error-429-max-retries-2"])
async def test_events_arrive_in_order_with_the_exit_code(
    container: DockerContainer, scenario: str
) -> None:
    events: list[StreamEvent] = []
    result = await run(container, f"Do it.\nfake-claude: scenario={scenario}\n", events=events)
    expected = [
        parse_line(line) for line in (SAMPLES / f"{scenario}.jsonl").read_text().splitlines()
    ]
    assert events == expected
    assert result.lines == len(expected)
    assert isinstance(result.result_event, Result) and result.result_event == expected[-1]
    assert result.exit_code == (1 if expected[-1].is_error else 0)
    assert f"fake-claude: scenario={scenario}" in result.stderr_tail


@pytest.mark.docker
async def test_events_are_delivered_while_claude_runs(container: DockerContainer) -> None:
    seen: list[float] = []
    start = time.monotonic()
    a = agent(user=f"{AGENT_UID}:{AGENT_UID}")
    await run_claude(
        container,
        claude_exec(a, 3, b"fake-claude: scenario=max-turns-1 delay=0.15\n"),
        user=a.user,
        on_event=lambda _: seen.append(time.monotonic() - start),
    )
    assert len(seen) == 5
    assert seen[-1] - seen[0] >= 0.45  # spread out as printed, not all at the end


@pytest.mark.docker
async def test_prompt_reaches_stdin_whole_and_stdin_is_closed(container: DockerContainer) -> None:
    prompt = "Implement issue #3.\n" + "ü" * 100_000 + "\nfake-claude: scenario=tool-run-success\n"
    start = time.monotonic()
    result = await run(container, prompt, extra={"FAKE_CLAUDE_RECORD": "/tmp/rec-prompt"})
    assert time.monotonic() - start < 3  # an open stdin would make `cat` wait forever
    assert result.exit_code == 0
    _, recorded = await run_exec(container, ["cat", "/tmp/rec-prompt/prompt"])
    assert recorded == prompt.rstrip("\n")  # $(cat) drops trailing newlines


@pytest.mark.docker
async def test_claude_runs_with_the_argv_env_workdir_and_user_given(
    container: DockerContainer,
) -> None:
    await run(container, "hi", task_id=9, extra={"FAKE_CLAUDE_RECORD": "/tmp/rec-env"})
    _, argv = await run_exec(container, ["cat", "/tmp/rec-env/argv"])
    assert argv.splitlines()[:5] == ["-p", "--output-format", "stream-json", "--verbose",
                                     "--permission-mode"]  # fmt: skip
    _, env = await run_exec(container, ["cat", "/tmp/rec-env/env"])
    assert "CLAUDE_HOOKS_TASK=9" in env.splitlines()
    assert f"HOME={HOME_DIR}" in env.splitlines()
    _, owner = await run_exec(container, ["stat", "-c", "%u", "/tmp/rec-env/env"])
    assert owner.strip() == str(AGENT_UID)


@pytest.mark.docker
async def test_exit_without_result_gives_code_and_stderr(container: DockerContainer) -> None:
    result = await run(container, "fake-claude: scenario=none exit=3")
    assert result.exit_code == 3
    assert result.result_event is None
    assert result.lines == 0
    assert "exiting without output" in result.stderr_tail


@pytest.mark.docker
async def test_cancel_stops_every_process_of_the_task(container: DockerContainer) -> None:
    events: list[StreamEvent] = []
    task = asyncio.create_task(run(container, "fake-claude: hang=1", task_id=11, events=events))
    await wait_until(lambda: len(events) == 5, timeout=5)
    assert len(await task_pids(container, 11)) == 2  # claude (sleeping) + its setsid child
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await task_pids(container, 11) == []
    assert [e.kind for e in events] == ["init", "text", "tool_use", "tool_result", "text"]


@pytest.mark.docker
async def test_timeout_stops_every_process_of_the_task(container: DockerContainer) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await run(container, "fake-claude: hang=1 scenario=none", task_id=12)
    assert await task_pids(container, 12) == []


@pytest.mark.docker
async def test_processes_ignoring_sigterm_are_killed_after_the_grace(
    container: DockerContainer,
) -> None:
    task = asyncio.create_task(
        run(container, "fake-claude: hang=1 ignore-term=1 scenario=none", task_id=13,
            stop_grace=0.3)
    )  # fmt: skip
    await wait_until(lambda: _count_is(task_pids(container, 13), 2), timeout=5)
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start >= 0.3
    assert await task_pids(container, 13) == []


@pytest.mark.docker
async def test_a_failing_event_handler_stops_the_task_and_raises(
    container: DockerContainer,
) -> None:
    def refuse(event: StreamEvent) -> None:
        raise RuntimeError(f"store is gone ({event.kind})")

    a = agent(user=f"{AGENT_UID}:{AGENT_UID}")
    with pytest.raises(RuntimeError, match=r"store is gone \(init\)"):
        await run_claude(
            container, claude_exec(a, 15, b"fake-claude: hang=1"), user=a.user, on_event=refuse
        )
    assert await task_pids(container, 15) == []


@pytest.mark.docker
async def test_stopping_one_task_leaves_other_tasks_running(container: DockerContainer) -> None:
    other = asyncio.create_task(run(container, "fake-claude: hang=1 scenario=none", task_id=21))
    victim = asyncio.create_task(run(container, "fake-claude: hang=1 scenario=none", task_id=2))
    await wait_until(lambda: _count_is(task_pids(container, 2), 2), timeout=5)
    await wait_until(lambda: _count_is(task_pids(container, 21), 2), timeout=5)
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    assert len(await task_pids(container, 21)) == 2
    other.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other
    assert await signal_processes(container, "list", ANY_TASK, user=str(AGENT_UID)) == []


@pytest.mark.docker
async def test_token_is_not_in_docker_inspect_of_the_container_or_the_exec(
    docker: aiodocker.Docker, container: DockerContainer
) -> None:
    task = asyncio.create_task(run(container, "fake-claude: hang=1 scenario=none", task_id=14))
    await wait_until(lambda: _count_is(task_pids(container, 14), 2), timeout=5)
    info = await container.show()
    exec_infos = [await docker.containers.exec(i).inspect() for i in info["ExecIDs"] or []]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert exec_infos, "the running exec should be listed"
    assert any("claude" in json.dumps(e["ProcessConfig"]) for e in exec_infos)
    for document in [info, *exec_infos, await container.show()]:
        assert TOKEN not in json.dumps(document)


@pytest.mark.docker
async def test_a_container_stopped_under_the_run_raises_container_stopped_not_a_result(
    container: DockerContainer,
) -> None:
    """What a dockerd stopping on SIGTERM does first (issue 18's CI): it stops the
    containers, and the exec ends "killed" while the engine still answers. That is the
    container's end, not Claude's failure: no exit code to report, nothing to sweep."""
    task = asyncio.create_task(run(container, "fake-claude: hang=1 scenario=none", task_id=16))
    await wait_until(lambda: _count_is(task_pids(container, 16), 2), timeout=5)
    with capture_logs() as logs:
        await container.stop(t=1)
        with pytest.raises(ContainerStopped, match="stopped during the run"):
            await task
    assert [entry for entry in logs if entry["log_level"] in ("error", "critical")] == []


async def _count_is(pids: Awaitable[list[int]], count: int) -> bool:
    return len(await pids) == count
