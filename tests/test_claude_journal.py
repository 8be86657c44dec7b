"""The logging contract of a Claude run: what reaches the daemon's journal, and how much.

An operator follows a run in the journal: what Claude does (tool calls), what went
wrong (tool errors, API retries, permission denials, usage limits, unreadable lines),
how it ends, and every state change of the task. Assistant text, thinking and
successful tool output are at debug: a run prints thousands of them, they are all in
the task's event log, and logging each at info halved the stream's throughput.

The end-to-end tests run the daemon's own Services (store, scheduler, worker) with
logging set up as the daemon sets it up (JSON, info), and a runtime that feeds the
stream through the real output pipeline (LineSplitter, parse_line, on_event) in
32 KiB frames, as the Docker exec stream delivers them. No Docker engine.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import aiodocker
import pytest
import structlog
from aiodocker.stream import Message

from claude_hooks.config import AgentConfig, Config, LogFormat
from claude_hooks.daemon.log import setup_logging
from claude_hooks.daemon.services import Services
from claude_hooks.runner import workspace
from claude_hooks.runner.execution import ClaudeExec, ExecResult, _OutputReader
from claude_hooks.runner.stream import StreamEvent, journal_level, parse_line
from claude_hooks.store import Store
from claude_hooks.store.events import EventCap
from claude_hooks.tasks import Task, TaskState
from tests.fakes.configs import ConfigFactory
from tests.test_services import FakeDocker, api_spec, lifecycle_config
from tests.test_store import make_spec
from tests.waiting import wait_until

FRAME = 32 * 1024  # what one Docker exec output frame carries at most
BIG_RUN_LINES = 200_000
# What a 200,000-line run may leave in the journal: its state changes and the result
# line, not one line per event (before this contract: ≈ 60 MB).
BIG_RUN_JOURNAL_BYTES = 20_000


def _assistant(block: dict[str, object], **extra: object) -> str:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [block]}
    return json.dumps({"type": "assistant", "message": message, **extra})


def _user_result(is_error: bool, text: str) -> str:
    block = {"type": "tool_result", "tool_use_id": "tu_1", "is_error": is_error, "content": text}
    return json.dumps({"type": "user", "message": {"role": "user", "content": [block]}})


WARNED = {"rate_limit allowed_warning"}  # at warning, not info: close to a usage limit


def _rate_limit(status: str) -> str:
    info = {"status": status, "resetsAt": 1_900_000_000, "rateLimitType": "five_hour"}
    return json.dumps({"type": "rate_limit_event", "rate_limit_info": info})


RESULT_LINE = json.dumps({
    "type": "result", "subtype": "success", "is_error": False, "result": "done",
    "num_turns": 3, "session_id": "sess-1", "terminal_reason": "completed",
})  # fmt: skip

# One line of each kind the CLI prints, and whether its claude_event is at info.
LINES: list[tuple[str, str, bool]] = [
    ("init", json.dumps({"type": "system", "subtype": "init", "session_id": "sess-1",
                         "model": "m", "cwd": "/w", "tools": ["Bash"]}), True),
    ("text", _assistant({"type": "text", "text": "Let me look."}), False),
    ("thinking", _assistant({"type": "thinking", "thinking": "hmm"}), False),
    ("tool_use", _assistant({"type": "tool_use", "id": "tu_1", "name": "Bash",
                             "input": {"command": "git status"}}), True),
    ("tool_result ok", _user_result(False, "nothing to commit"), False),
    ("tool_result error", _user_result(True, "command not found"), True),
    ("api_retry", json.dumps({"type": "system", "subtype": "api_retry", "attempt": 1,
                              "max_retries": 10, "error_status": 529}), True),
    ("permission_denied", json.dumps({"type": "system", "subtype": "permission_denied",
                                      "tool_name": "WebFetch", "message": "no"}), True),
    ("rate_limit allowed", _rate_limit("allowed"), False),
    ("rate_limit allowed_warning", _rate_limit("allowed_warning"), True),
    ("rate_limit rejected", _rate_limit("rejected"), True),
    ("api_error", _assistant({"type": "text", "text": "API Error: 500"}, error="server_error"),
     True),
    ("unknown", json.dumps({"type": "stream_event", "event": {}}), False),
    ("malformed", "{oops", True),
    ("result", RESULT_LINE, True),
]  # fmt: skip


@pytest.mark.parametrize(("name", "line", "at_info"), LINES, ids=[n for n, _, _ in LINES])
def test_the_level_of_each_event_kind(name: str, line: str, at_info: bool) -> None:
    shown = logging.WARNING if name in WARNED else logging.INFO  # near a limit: -p warning
    assert journal_level(parse_line(line)) == (shown if at_info else logging.DEBUG)


# --- end to end: Services, the real output pipeline, the daemon's logging ---------------------


def frames(lines: Iterator[str]) -> Iterator[Message]:
    buffer = bytearray()
    for line in lines:
        buffer += line.encode() + b"\n"
        while len(buffer) >= FRAME:
            yield Message(1, bytes(buffer[:FRAME]))
            del buffer[:FRAME]
    if buffer:
        yield Message(1, bytes(buffer))


class FramedStream:
    """Stands in for aiodocker's exec Stream: stdout frames, then the end."""

    def __init__(self, messages: Iterator[Message]) -> None:
        self._messages = messages

    async def read_out(self) -> Message | None:
        return next(self._messages, None)


class StreamingRuntime:
    """Claude prints `lines()`; the run's output goes through the real `_OutputReader`."""

    def __init__(self, lines: Callable[[], Iterator[str]]) -> None:
        self.lines = lines
        self.parsed = 0

    async def ready(self, agent: AgentConfig) -> None:
        return None

    async def prepare(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> str:
        return ""

    async def run(
        self,
        agent: AgentConfig,
        claude: ClaudeExec,
        on_event: Callable[[StreamEvent], None],
        room: object = None,
    ) -> ExecResult:
        reader = _OutputReader(on_event)
        await reader.pump(FramedStream(frames(self.lines())))  # type: ignore[arg-type]
        self.parsed = reader.count
        return ExecResult(0, reader.result, "", reader.count, reader.signals)

    async def publish(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> workspace.Published:
        raise AssertionError("an API task without a thread publishes nothing")


@pytest.fixture(autouse=True)
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiodocker, "Docker", FakeDocker)


@pytest.fixture
def journal() -> Iterator[io.StringIO]:
    """The daemon's log output, as it would reach journald (JSON, level info)."""
    stream = io.StringIO()
    structlog_config, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging(LogFormat.JSON, "info", stream)
    yield stream
    # As it was: a filter left at warning hid the next tests' info records from
    # capture_logs (test_scheduler's task_finished at info, run right after this file).
    structlog.configure(**structlog_config)
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def config(config_factory: ConfigFactory) -> Config:
    return lifecycle_config(config_factory)


async def run_task(config: Config, runtime: StreamingRuntime) -> Task:
    services = await Services.start(config, daemon_id="test-journal", runtime=runtime, listen=False)
    try:
        task, _ = await services.submit(api_spec())

        async def final() -> Task | None:
            now = await services.store.get(task.id)
            return now if now is not None and now.state.is_final else None

        ended: Task = await wait_until(final, timeout=120, what=f"task {task.id} to end")
    finally:
        await services.close()
    return ended


def journal_lines(journal: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in journal.getvalue().splitlines() if line.strip()]


async def test_the_journal_shows_tool_calls_errors_and_the_end_not_text(
    config: Config, journal: io.StringIO
) -> None:
    runtime = StreamingRuntime(lambda: iter([line for _, line, _ in LINES]))
    task = await run_task(config, runtime)
    assert task.state is TaskState.SUCCEEDED
    logged = [e for e in journal_lines(journal) if e["event"] == "claude_event"]
    assert {str(e["text"]) for e in logged} == {
        parse_line(line).summary for _, line, at_info in LINES if at_info
    }
    warned = {e["text"] for e in logged if e["level"] == "warning"}
    assert warned == {parse_line(_rate_limit("allowed_warning")).summary}  # close to a limit
    assert all(e["level"] in ("info", "warning") for e in logged)
    changes = [e["event"] for e in journal_lines(journal) if e.get("task_id") == task.id]
    assert {"task_queued", "task_started", "task_finished"} <= set(changes)


def big_run() -> Iterator[str]:
    yield LINES[0][1]  # init
    for i in range(BIG_RUN_LINES - 2):
        yield _assistant({"type": "text", "text": f"line {i}"})
    yield RESULT_LINE


async def test_a_200000_line_run_leaves_a_small_journal_and_parses_every_line(
    config: Config, journal: io.StringIO
) -> None:
    runtime = StreamingRuntime(big_run)
    task = await run_task(config, runtime)
    assert task.state is TaskState.SUCCEEDED
    assert runtime.parsed == BIG_RUN_LINES
    size = len(journal.getvalue().encode())
    assert size <= BIG_RUN_JOURNAL_BYTES, f"{size} bytes of journal for one run"
    store = await Store.open(config.daemon.db_path)
    try:
        events = await store.events(task.id, limit=10_000)
    finally:
        await store.close()
    kinds = [e.type for e in events]
    # Every line was parsed, and the store kept what its cap allows: a cap's worth of
    # events, the truncation marker, then only what is always kept (the result).
    cut = kinds.index("truncated")
    assert cut == EventCap().max_events
    assert "text" not in kinds[cut:] and "result" in kinds[cut:]


async def test_a_run_past_the_event_cap_does_not_queue_its_lines_on_the_writer(
    tmp_path: Path,
) -> None:
    """Past the cap the sink drops detail events itself; before, all 200,000 went to the
    store's one writer thread in 400 batches, ahead of webhook intake and other tasks."""
    store = await Store.open(tmp_path / "t.sqlite3", event_cap=EventCap(max_events=10))
    try:
        task, _ = await store.enqueue(make_spec(1))
        await store.mark_running(task.id)
        began = store.transactions
        sink = store.event_sink(task.id, max_batch=500)
        for i in range(BIG_RUN_LINES):
            sink.add("text", f"line {i}")
        sink.add("result", "all done")
        await sink.close()
        batches = store.transactions - began
        events = await store.events(task.id)
    finally:
        await store.close()
    assert batches <= 2, f"{batches} batches for a cap of 10 events"
    types = [e.type for e in events]
    assert types == ["state", "state"] + ["text"] * 8 + ["truncated", "result"]
