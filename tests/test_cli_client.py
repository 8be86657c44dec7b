"""`claude-hooks submit | tasks | show | logs | cancel` against a real API server.

The commands run as real `python -m claude_hooks` processes (their own event loop,
exit code and output streams) against build_app served by the test, whose
scheduler holds each task until the test finishes it. The formatting and the SSE
parsing are plain functions, tested directly.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from claude_hooks.cli import client as cli_client
from claude_hooks.cli.client import (
    ApiClient,
    Progress,
    SseParser,
    format_elapsed,
    format_table,
    progress_line,
    render_event,
)
from claude_hooks.tasks import Outcome, TaskState
from tests.fakes.configs import ConfigFactory
from tests.test_api import TOKEN, ApiHarness, open_harness
from tests.waiting import wait_until


@pytest.fixture
async def api(config_factory: ConfigFactory, tmp_path: Path) -> AsyncIterator[ApiHarness]:
    async with open_harness(config_factory, tmp_path) as harness:
        yield harness


@dataclass(frozen=True)
class Run:
    code: int | None
    out: str
    err: str


def client_config(factory: ConfigFactory, port: int, token: str | None = TOKEN) -> Path:
    """The config file an operator's CLI reads: the daemon's address and token file."""
    api: dict[str, Any] = {"listen": f"127.0.0.1:{port}"}
    if token is not None:
        api["token_file"] = str(factory.secret("cli-token", token))
    path = factory.root / "cli.toml"
    path.write_text(factory.text(api=api))
    return path


async def start_cli(config: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "claude_hooks", *args, "--config", str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip


async def finish_cli(process: asyncio.subprocess.Process) -> Run:
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    return Run(process.returncode, out.decode(), err.decode())


async def read_until(process: asyncio.subprocess.Process, marker: str) -> str:
    """What a running command printed, up to and including the line holding `marker`."""
    assert process.stdout is not None
    stdout, lines = process.stdout, []

    async def marker_printed() -> bool:
        lines.append((await stdout.readline()).decode())
        return marker in lines[-1] or not lines[-1]  # not lines[-1]: it exited

    await wait_until(marker_printed, interval=0, what=f"{marker!r} in the output")
    return "".join(lines)


async def cli(config: Path, *args: str) -> Run:
    return await finish_cli(await start_cli(config, *args))


@pytest.fixture
def config(api: ApiHarness, config_factory: ConfigFactory) -> Path:
    return client_config(config_factory, api.client.port or 0)


# --- the commands, end to end ----------------------------------------------------------------


async def test_submit_prints_the_new_task_id(api: ApiHarness, config: Path) -> None:
    run = await cli(
        config, "submit", "--agent", "dev", "--repo", "owner/r", "--issue", "4", "fix it"
    )
    assert (run.code, run.out, run.err) == (0, "1\n", "")
    task = await api.store.get(1)
    assert task is not None
    assert (task.spec.request, task.spec.number, task.spec.requested_by) == ("fix it", 4, "api")


async def test_submit_wait_follows_the_task_and_exits_0_on_success(
    api: ApiHarness, config: Path
) -> None:
    process = await start_cli(
        config, "submit", "--agent", "dev", "--repo", "owner/r", "--wait", "go"
    )
    async with asyncio.timeout(10):
        await api.runs.started[1].wait()
    await api.emit(1, ("tool_use", "Bash: make test"), ("text", "Tests pass."))
    api.runs.finish(1, Outcome(TaskState.SUCCEEDED, result="Opened PR #2.", cost_usd=0.5))
    run = await finish_cli(process)
    assert run.code == 0, run.err
    assert run.out == "1\nOpened PR #2.\n"
    progress = run.err.splitlines()
    assert any(line.endswith("task 1 tool_use: Bash: make test") for line in progress)
    assert any(line.endswith("task 1 text: Tests pass.") for line in progress)
    assert progress[-1].startswith("task 1 succeeded in 0:0") and "$0.5000" in progress[-1]


async def test_submit_wait_exits_1_when_the_task_fails(api: ApiHarness, config: Path) -> None:
    process = await start_cli(
        config, "submit", "--agent", "dev", "--repo", "owner/r", "--wait", "go"
    )
    async with asyncio.timeout(10):
        await api.runs.started[1].wait()
    api.runs.finish(1, Outcome(TaskState.FAILED, reason="max turns reached"))
    run = await finish_cli(process)
    assert run.code == 1
    assert run.err.splitlines()[-1].endswith("task 1 failed in 0:00 — max turns reached")


async def test_logs_follow_renders_the_stream_until_the_task_ends(
    api: ApiHarness, config: Path
) -> None:
    await api.submit()
    await api.runs.started[1].wait()
    await api.emit(1, ("tool_use", "Read: README.md"), ("tool_result", "ok: 40 lines"))
    process = await start_cli(config, "logs", "1", "-f")
    backlog = await read_until(process, "tool_result")  # it follows live from here
    await api.emit(1, ("result", "done (success): 3 turns, $0.0421, 61.0s"))
    api.runs.finish(1)
    run = await finish_cli(process)
    assert run.code == 0, run.err
    lines = [line.split(" ", 1)[1] for line in (backlog + run.out).splitlines()[:-1]]  # no clock
    assert lines == [
        "● state: queued",
        "● state: running (attempt 1)",
        "→ tool_use: Read: README.md",
        "  ← tool_result: ok: 40 lines",
        "■ result: done (success): 3 turns, $0.0421, 61.0s",
        "● state: succeeded",
    ]
    assert run.out.splitlines()[-1].startswith("task 1 succeeded in")


async def test_logs_without_follow_prints_the_stored_log(api: ApiHarness, config: Path) -> None:
    await api.submit()
    await api.runs.started[1].wait()
    await api.emit(1, ("text", "thinking out loud"))
    run = await cli(config, "logs", "1")
    assert run.code == 0
    assert [line.split(" ", 1)[1] for line in run.out.splitlines()[:3]] == [
        "● state: queued",
        "● state: running (attempt 1)",
        "» text: thinking out loud",
    ]
    assert run.out.splitlines()[-1].startswith("task 1 running")


async def test_tasks_prints_a_table_filtered_by_state(api: ApiHarness, config: Path) -> None:
    await api.submit("first one")
    await api.submit("second one")
    await api.runs.started[1].wait()
    run = await cli(config, "tasks")
    header, *rows = run.out.splitlines()
    assert header.split() == [
        "ID",
        "STATE",
        "AGENT",
        "THREAD",
        "CREATED",
        "TIME",
        "COST",
        "REQUEST",
    ]
    assert [row.split()[:4] for row in rows] == [
        ["2", "queued", "#1", "dev"],
        ["1", "running", "dev", "owner/repo#1"],
    ]
    assert rows[0].endswith("second one")
    queued = await cli(config, "tasks", "--state", "queued")
    assert [row.split()[0] for row in queued.out.splitlines()[1:]] == ["2"]


def test_a_cost_reads_as_the_tracking_comment_on_forgejo_says_it() -> None:
    # The table said "$2.5000" where the comment on Forgejo said "$2.50" (issue 13, item 6).
    assert cli_client.format_cost(2.5) == "$2.50"
    assert cli_client.format_cost(0.0421) == "$0.0421"
    assert cli_client.format_cost(None) == ""


async def test_show_prints_the_whole_record(api: ApiHarness, config: Path) -> None:
    await api.submit("do the thing")
    await api.runs.started[1].wait()
    api.runs.finish(1)
    await api.wait_state(1, TaskState.SUCCEEDED)
    run = await cli(config, "show", "1")
    assert run.code == 0
    assert "task:     1 (succeeded)" in run.out
    assert "cost:     $0.0421" in run.out and "session:  session-1" in run.out
    assert "link:     http://forgejo.test/o/r/pulls/2" in run.out
    assert run.out.rstrip().endswith("result:\n  All done: opened the PR.")


async def test_cancel_reports_the_new_state_or_that_it_already_ended(
    api: ApiHarness, config: Path
) -> None:
    await api.submit()
    await api.submit()
    cancelled = await cli(config, "cancel", "2")
    assert (cancelled.code, cancelled.out) == (0, "task 2 cancelled\n")
    again = await cli(config, "cancel", "2")
    assert again.code == 1 and again.err == "task 2 already cancelled: nothing to cancel\n"
    missing = await cli(config, "show", "9")
    assert missing.code == 1 and "HTTP 404: no task 9" in missing.err


async def test_a_daemon_that_is_not_running_is_one_clear_line(
    config_factory: ConfigFactory,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the CLI connects
    run = await cli(client_config(config_factory, port), "tasks")
    assert run.code == 1 and run.out == ""
    assert len(run.err.splitlines()) == 1
    assert f"cannot reach the claude-hooks API at http://127.0.0.1:{port}" in run.err


async def test_a_refused_token_says_to_check_the_token_file(
    api: ApiHarness, config_factory: ConfigFactory
) -> None:
    config = client_config(config_factory, api.client.port or 0, token="not-the-token")
    run = await cli(config, "tasks")
    assert run.code == 1
    assert "HTTP 401" in run.err and "check api.token_file" in run.err
    assert "not-the-token" not in run.err


async def test_a_config_without_a_token_file_is_refused_before_connecting(
    config_factory: ConfigFactory,
) -> None:
    run = await cli(client_config(config_factory, 9, token=None), "tasks")
    assert run.code == 1 and "api.token_file is not set" in run.err


# --- following across a dropped connection --------------------------------------------------


async def test_follow_resumes_after_a_dropped_stream_from_the_last_event_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli_client, "RECONNECT_DELAY", 0.01)
    asked: list[str | None] = []

    async def events(request: web.Request) -> web.StreamResponse:
        last = request.headers.get("Last-Event-ID")
        asked.append(last)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if last is None:  # the first connection drops after two events, without `end`
            for seq in (1, 2):
                await response.write(f'id: {seq}\ndata: {{"seq": {seq}}}\n\n'.encode())
        else:
            await response.write(b'id: 3\ndata: {"seq": 3}\n\nevent: end\ndata: {}\n\n')
        return response

    app = web.Application()
    app.router.add_get("/tasks/{id}/events", events)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        client = ApiClient(str(server.make_url("")), TOKEN, session)
        received = [event["seq"] async for event in client.follow(7)]
    assert received == [1, 2, 3]
    assert asked == [None, "2"]


# --- plain functions ------------------------------------------------------------------------


def test_the_sse_parser_handles_split_chunks_comments_and_multi_line_data() -> None:
    parser = SseParser()
    wire = ": keepalive\r\n\r\nid: 4\nevent: x\ndata: a\ndata: b\n\nretry: 2000\n\ndata: {}\n\n"
    messages = [m for i in range(0, len(wire), 3) for m in parser.feed(wire[i : i + 3])]
    assert [(m.id, m.event, m.data) for m in messages] == [
        ("4", "x", "a\nb"),
        (None, "message", "{}"),
    ]


def test_the_table_cuts_the_request_to_the_terminal_width() -> None:
    task = {
        "id": 12,
        "state": "succeeded",
        "position": None,
        "agent": "dev",
        "thread": "o/r#3",
        "created_at": 1000.0,
        "started_at": 1000.0,
        "finished_at": 1075.0,
        "cost_usd": 0.1,
        "request": "word " * 100,
    }
    table = format_table([task], now=1000.0 + 7200, width=80)
    row = table.splitlines()[1]
    assert row.split()[:7] == ["12", "succeeded", "dev", "o/r#3", "2h", "ago", "1:15"]
    assert len(row) <= 80 and row.endswith("…")
    assert format_table([], now=0) == "no tasks"


def test_events_render_with_a_mark_for_their_kind() -> None:
    event = {"ts": 0.0, "type": "tool_use", "summary": "Bash: ls"}
    assert render_event(event).endswith(" → tool_use: Bash: ls")
    assert render_event({**event, "type": "new_kind"}).endswith(" · new_kind: Bash: ls")


def test_elapsed_times_read_as_clock_durations() -> None:
    assert [format_elapsed(s) for s in (0, 65, 3725)] == ["0:00", "1:05", "1:02:05"]
    assert format_elapsed(None) == ""


def test_the_progress_line_fits_the_terminal() -> None:
    line = progress_line(3, "running", 65, "tool_use: " + "x" * 200, width=60)
    assert line.startswith("task 3 running 1:05 · tool_use: x") and len(line) == 59


def test_on_a_terminal_progress_redraws_one_line() -> None:
    out = io.StringIO()
    progress = Progress(5, out, tty=True, clock=lambda: 0.0)
    progress.event({"type": "state", "summary": "running", "data": '{"state": "running"}'})
    progress.event({"type": "tool_result", "summary": "ok: quiet", "data": None})
    progress.event({"type": "tool_use", "summary": "Bash: ls", "data": None})
    progress.done()
    drawn = out.getvalue()
    assert "\n" not in drawn
    assert drawn.count("\r\x1b[K") == 3  # two steps drawn, then the line cleared
    assert "task 5 running 0:00 · tool_use: Bash: ls" in drawn
    assert "quiet" not in drawn


async def test_tasks_names_a_paused_agent_above_the_table_and_resume_lifts_it(
    api: ApiHarness, config: Path
) -> None:
    await api.submit()
    reason = "paused until 05:00 UTC (Claude usage limit)"
    await api.scheduler.pause("reviewer", time.time() + 3600, reason, "usage_limit")
    listing = await cli(config, "tasks")
    assert listing.code == 0
    first, second = listing.out.splitlines()[:2]
    assert first == f"reviewer: {reason} (`claude-hooks resume reviewer` lifts it now)"
    assert second.split()[0] == "ID"  # then the table, as before
    resumed = await cli(config, "resume", "reviewer")
    assert (resumed.code, resumed.out) == (0, "agent reviewer resumed\n")
    assert api.scheduler.paused() == {}
    assert not (await cli(config, "tasks")).out.startswith("reviewer:")
    again = await cli(config, "resume", "reviewer")
    assert again.code == 1 and again.err == "agent reviewer is not paused: nothing to resume\n"
    unknown = await cli(config, "resume", "nobody")
    assert unknown.code == 1 and "HTTP 404: no agent 'nobody'" in unknown.err
