"""stream-json lines → typed events, and how a run ended → Outcome."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claude_hooks.report.render import failure_reason
from claude_hooks.runner.stream import (
    SUMMARY_LIMIT,
    ApiRetry,
    AssistantText,
    Init,
    Malformed,
    PermissionDenied,
    Result,
    Thinking,
    ToolResult,
    ToolUse,
    Unknown,
    failure_of,
    outcome_of,
    parse_line,
    tool_input_summary,
)
from claude_hooks.tasks import FailureKind, Outcome, RunFailure, TaskState

SAMPLES = Path(__file__).parent / "data" / "claude-samples"


def sample_lines(name: str) -> list[str]:
    return (SAMPLES / f"{name}.jsonl").read_text().splitlines()


def sample_events(name: str) -> list:
    return [parse_line(line) for line in sample_lines(name)]


def sample_result(name: str) -> Result:
    results = [e for e in sample_events(name) if isinstance(e, Result)]
    assert len(results) == 1
    return results[0]


def ended(result: Result | None, exit_code: int | None, stderr_tail: str) -> Outcome:
    """The run's outcome, a failure in the words the tracking comment uses."""
    return outcome_of(result, exit_code, stderr_tail, failure_reason)


EXPECTED_KINDS = {
    "tool-run-success": ["init", "text", "tool_use", "tool_result", "text", "result"],
    "default-permission-mode-denied": [
        "init", "text", "tool_use", "permission_denied", "tool_result", "text", "result",
    ],
    "error-429-max-retries-2": ["init", "api_retry", "api_retry", "api_error", "result"],
    "max-turns-1": ["init", "text", "tool_use", "tool_result", "result"],
    "resume-unknown-session": ["result"],
    # the pinned CLI hitting a five-hour limit: the event, its synthetic message, the result
    "usage-limit-5h-rejected": ["init", "rate_limit", "api_error", "result"],
}  # fmt: skip


def test_every_sample_file_is_covered() -> None:
    assert {p.stem for p in SAMPLES.glob("*.jsonl")} == set(EXPECTED_KINDS)


@pytest.mark.parametrize("name", sorted(EXPECTED_KINDS))
def test_sample_lines_parse_to_the_expected_event_kinds(name: str) -> None:
    events = sample_events(name)
    assert [e.kind for e in events] == EXPECTED_KINDS[name]
    assert [e.raw for e in events] == sample_lines(name)


@pytest.mark.parametrize("name", sorted(EXPECTED_KINDS))
def test_sample_summaries_are_one_short_line(name: str) -> None:
    for event in sample_events(name):
        assert event.summary
        assert "\n" not in event.summary
        assert len(event.summary) <= SUMMARY_LIMIT


def test_init_line_gives_session_model_cwd_and_tools() -> None:
    init = sample_events("tool-run-success")[0]
    assert isinstance(init, Init)
    assert init.session_id == "5625f66b-7328-4ea2-862c-2a7754499e4e"
    assert init.model == "claude-opus-5-5"
    assert init.cwd == "/state/work/task-1"
    assert "Bash" in init.tools
    assert init.permission_mode == "bypassPermissions"


def test_assistant_blocks_of_one_message_share_its_id() -> None:
    _, text, tool, _, final, _ = sample_events("tool-run-success")
    assert isinstance(text, AssistantText) and isinstance(tool, ToolUse)
    assert text.text == "I'll create the file."
    assert text.message_id == tool.message_id == "msg_476056b3fd724178bda0a828"
    assert isinstance(final, AssistantText) and final.message_id != text.message_id


def test_tool_use_summary_names_the_tool_and_what_it_does() -> None:
    tool = sample_events("tool-run-success")[2]
    assert isinstance(tool, ToolUse)
    assert tool.tool_id == "toolu_9faa508aa6d3469d81f0dd54"
    assert tool.name == "Bash"
    assert tool.summary == "Bash: echo hi > out.txt"


def test_tool_result_carries_its_call_id_and_success() -> None:
    result = sample_events("tool-run-success")[3]
    assert isinstance(result, ToolResult)
    assert result.tool_use_id == "toolu_9faa508aa6d3469d81f0dd54"
    assert not result.is_error
    assert result.summary == "ok: (Bash completed with no output)"


def test_denied_tool_gives_permission_denied_then_an_error_result() -> None:
    events = sample_events("default-permission-mode-denied")
    denied, tool_result = events[3], events[4]
    assert isinstance(denied, PermissionDenied)
    assert denied.tool_name == "Bash"
    assert denied.tool_use_id == "toolu_e0e023c5257f43f8998850b0"
    assert "needs approval" in denied.message
    assert isinstance(tool_result, ToolResult) and tool_result.is_error
    assert tool_result.summary.startswith("error: Output redirection")


def test_api_retry_line_gives_attempt_delay_and_status() -> None:
    retry = sample_events("error-429-max-retries-2")[1]
    assert retry == ApiRetry(
        attempt=1,
        max_retries=2,
        retry_delay_ms=1165,
        error_status=429,
        error="rate_limit",
        raw=retry.raw,
    )
    assert retry.summary == "Claude API retry 1/2 after 429 rate_limit, next in 1.2s"


def test_result_line_fields() -> None:
    result = sample_result("tool-run-success")
    assert result.subtype == "success"
    assert result.is_error is False
    assert result.result == "Created out.txt containing 'hi'."
    assert result.num_turns == 2
    assert result.duration_ms == 189
    assert result.total_cost_usd == pytest.approx(0.038184)
    assert result.session_id == "5625f66b-7328-4ea2-862c-2a7754499e4e"
    assert result.terminal_reason == "completed"
    assert result.api_error_status is None
    assert result.errors == ()


def test_result_errors_are_kept() -> None:
    result = sample_result("resume-unknown-session")
    assert result.errors == (
        "No conversation found with session ID: 99999999-2222-4333-8444-555555555555",
    )
    assert result.is_error and result.subtype == "error_during_execution"


def test_thinking_block() -> None:
    line = json.dumps({
        "type": "assistant",
        "message": {"id": "m1", "content": [{"type": "thinking", "thinking": "Let me\nsee"}]},
    })  # fmt: skip
    event = parse_line(line)
    assert event == Thinking(text="Let me\nsee", message_id="m1", raw=line)
    assert event.summary == "thinking: Let me see"


def test_several_text_blocks_in_one_line_are_joined() -> None:
    line = json.dumps({
        "type": "assistant",
        "message": {"id": "m1", "content": [{"type": "text", "text": "a"},
                                            {"type": "text", "text": "b"}]},
    })  # fmt: skip
    event = parse_line(line)
    assert isinstance(event, AssistantText) and event.text == "a\nb"


@pytest.mark.parametrize(
    ("line", "type_"),
    [
        ('{"type":"stream_event","event":{}}', "stream_event"),
        ('{"type":"system","subtype":"status","status":"compacting"}', "system/status"),
        ('{"type":"system","subtype":"model_fallback"}', "system/model_fallback"),
        ('{"type":"assistant","message":{"id":"m","content":[{"type":"image"}]}}',
         "assistant/image"),
        ('{"type":"user","message":{"role":"user","content":"a plain prompt"}}', "user"),
        ('{"type":"assistant","message":"not an object"}', "assistant"),
        ('{"no_type":1}', "(no type)"),
    ],
)  # fmt: skip
def test_lines_of_unknown_shape_become_unknown(line: str, type_: str) -> None:
    event = parse_line(line)
    assert isinstance(event, Unknown)
    assert event.type == type_
    assert event.raw == line


@pytest.mark.parametrize(
    "line",
    ["", "   ", '{"type":"result","is_err', "not json", "[1, 2]", '"text"', "null", "{}}"],
)
def test_unreadable_lines_become_malformed_with_the_raw_text(line: str) -> None:
    event = parse_line(line)
    assert isinstance(event, Malformed)
    assert event.raw == line
    assert event.error


def test_a_truncated_sample_line_is_malformed() -> None:
    line = sample_lines("tool-run-success")[1]
    event = parse_line(line[: len(line) // 2])
    assert isinstance(event, Malformed)
    assert event.error.startswith("not JSON")


def test_bytes_with_invalid_utf8_are_read_not_raised() -> None:
    event = parse_line(
        b'{"type":"assistant","message":{"content":[{"type":"text","text":"\xff"}]}}'
    )
    assert isinstance(event, AssistantText)
    assert event.text == "\ufffd"


def test_trailing_newline_is_not_part_of_the_raw_line() -> None:
    assert parse_line('{"type":"x"}\r\n').raw == '{"type":"x"}'


def test_fields_of_the_wrong_type_are_dropped_not_trusted() -> None:
    event = parse_line(
        '{"type":"result","is_error":"yes","num_turns":"3","total_cost_usd":true,'
        '"errors":"oops","session_id":5}'
    )
    assert isinstance(event, Result)
    assert event.is_error is False
    assert event.num_turns is None
    assert event.total_cost_usd is None
    assert event.errors == ()
    assert event.session_id is None


def test_long_multiline_text_is_summarised_on_one_bounded_line() -> None:
    text = "first line\n" + "word " * 500
    event = parse_line(json.dumps({"type": "assistant", "message": {
        "content": [{"type": "text", "text": text}]}}))  # fmt: skip
    assert isinstance(event, AssistantText) and event.text == text
    assert event.summary.startswith("first line word")
    assert len(event.summary) == SUMMARY_LIMIT and event.summary.endswith("…")


@pytest.mark.parametrize(
    ("name", "tool_input", "expected"),
    [
        ("Edit", {"file_path": "src/x.py", "old_string": "a", "new_string": "b"}, "src/x.py"),
        ("Read", {"file_path": "/a/b"}, "/a/b"),
        ("Grep", {"pattern": "TODO", "path": "src"}, "TODO"),
        ("Bash", {"command": "git status\ngit diff", "description": "look"},
         "git status git diff"),
        ("SomeNewTool", {"count": 3, "target": "main"}, "main"),
        ("Bash", "not a dict", ""),
        ("Bash", {}, ""),
    ],
)  # fmt: skip
def test_tool_input_summary(name: str, tool_input: object, expected: str) -> None:
    assert tool_input_summary(name, tool_input) == expected


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_KEYS = [
    "type",
    "subtype",
    "message",
    "content",
    "text",
    "id",
    "name",
    "input",
    "is_error",
    "tool_use_id",
    "errors",
    "num_turns",
    "total_cost_usd",
    "tools",
    "attempt",
    "result",
]
_shaped = st.dictionaries(st.sampled_from(_KEYS), _json_values, max_size=8).map(
    lambda d: {**d, "type": d.get("type")}
) | st.fixed_dictionaries(
    {"type": st.sampled_from(["assistant", "user", "system", "result"]),
     "subtype": st.sampled_from(["init", "api_retry", "permission_denied", "x"]),
     "message": st.fixed_dictionaries(
         {"id": _json_values,
          "content": st.lists(st.dictionaries(st.sampled_from(_KEYS), _json_values), max_size=3)}
     ) | _json_values},
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.text() | st.binary())
def test_parse_line_never_raises_on_arbitrary_input(line: str | bytes) -> None:
    event = parse_line(line)
    assert isinstance(event.summary, str)


@settings(max_examples=150, deadline=None)
@given(_shaped)
def test_parse_line_never_raises_on_json_of_any_shape(obj: dict) -> None:
    event = parse_line(json.dumps(obj))
    assert isinstance(event.summary, str) and "\n" not in event.summary


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=400))
def test_any_cut_of_a_sample_line_parses_without_raising(cut: int) -> None:
    line = sample_lines("default-permission-mode-denied")[3]
    assert parse_line(line[:cut]).kind in ("malformed", "permission_denied")


# --- outcome_of -----------------------------------------------------------------------


def test_outcome_of_a_successful_run() -> None:
    outcome = ended(sample_result("tool-run-success"), 0, "")
    assert outcome.state is TaskState.SUCCEEDED
    assert outcome.reason is None
    assert outcome.result == "Created out.txt containing 'hi'."
    assert outcome.session_id == "5625f66b-7328-4ea2-862c-2a7754499e4e"
    assert outcome.cost_usd == pytest.approx(0.038184)
    assert outcome.num_turns == 2
    assert outcome.duration_ms == 189
    assert outcome.exit_code == 0
    assert outcome.stderr_tail is None


def test_outcome_of_a_run_with_denied_tools_is_still_a_success() -> None:
    outcome = ended(sample_result("default-permission-mode-denied"), 0, "")
    assert outcome.state is TaskState.SUCCEEDED


def test_outcome_of_max_turns() -> None:
    outcome = ended(sample_result("max-turns-1"), 1, "")
    assert outcome.state is TaskState.FAILED
    assert outcome.reason == "max turns reached"
    assert outcome.session_id == "ed6ad1bf-cab6-4831-b250-08fc9fde5bbf"  # resumable


def test_outcome_of_api_error_is_failure_although_subtype_says_success() -> None:
    result = sample_result("error-429-max-retries-2")
    assert result.subtype == "success"
    outcome = ended(result, 1, "")
    assert outcome.state is TaskState.FAILED
    assert outcome.reason == "Claude API error 429 after retries"


def test_outcome_of_api_error_names_the_status() -> None:
    line = sample_lines("error-429-max-retries-2")[-1].replace(
        '"api_error_status":429', '"api_error_status":529'
    )
    result = parse_line(line)
    assert isinstance(result, Result)
    assert ended(result, 1, "").reason == "Claude API error 529 after retries"


def test_outcome_of_unknown_resume_session_quotes_the_error() -> None:
    outcome = ended(sample_result("resume-unknown-session"), 1, "")
    assert outcome.state is TaskState.FAILED
    assert outcome.reason == (
        "Claude Code failed (error_during_execution): "
        "No conversation found with session ID: 99999999-2222-4333-8444-555555555555"
    )


def test_the_runner_states_why_a_run_failed_as_facts_not_words() -> None:
    # The words are report/render.py's; the runner (a layer below work/) only says what
    # happened, so the two cannot drift apart as they had.
    max_turns = failure_of(sample_result("max-turns-1"), 1, "")
    assert max_turns == RunFailure(FailureKind.MAX_TURNS, exit_code=1)
    api = failure_of(sample_result("error-429-max-retries-2"), 1, "")
    assert api == RunFailure(FailureKind.API_ERROR, exit_code=1, api_status=429)
    assert failure_of(None, 137, "Killed") == RunFailure(FailureKind.KILLED, exit_code=137)
    assert failure_of(sample_result("tool-run-success"), 0, "") is None


def test_outcome_without_result_after_sigterm_says_killed() -> None:
    outcome = ended(None, 143, "")
    assert outcome.state is TaskState.FAILED
    assert outcome.reason == "claude exited 143 without a result (killed)"
    assert outcome.exit_code == 143


def test_outcome_without_result_quotes_the_last_stderr_line() -> None:
    tail = (
        "some noise\nError: When using --print, --output-format=stream-json requires --verbose\n\n"
    )
    outcome = ended(None, 1, tail)
    assert outcome.reason == (
        "claude exited 1 without a result: "
        "Error: When using --print, --output-format=stream-json requires --verbose"
    )
    assert outcome.stderr_tail == tail


def test_outcome_without_result_or_exit_code() -> None:
    assert ended(None, None, "").reason == "claude ended without a result or an exit code"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"subtype": "error_max_budget_usd"}, "budget limit reached"),
        ({"subtype": "error_max_turns"}, "max turns reached"),
        ({"subtype": "error_during_execution", "result": "tool aborted"},
         "Claude Code failed (error_during_execution): tool aborted"),
        ({"subtype": "success", "terminal_reason": "something_new"},
         "Claude Code failed (something_new)"),
    ],
)  # fmt: skip
def test_outcome_reasons_of_other_errors(fields: dict, reason: str) -> None:
    result = parse_line(json.dumps({"type": "result", "is_error": True, **fields}))
    assert isinstance(result, Result)
    outcome = ended(result, 1, "")
    assert (outcome.state, outcome.reason) == (TaskState.FAILED, reason)
