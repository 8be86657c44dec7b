"""The OpenAPI document says exactly what the API accepts and answers (issue 16, item 5).

A few answers are checked here directly: 405 with `Allow`, the static files' types, the
Server-Sent Events messages, integers as JSON Schema counts them. Then schemathesis (a
test extra) reads the document the app serves at /openapi.json and sends what it allows
and what it forbids to the app on 127.0.0.1 (tests/test_api.py's harness, a real store
and scheduler): every schema-valid request must be accepted, every invalid one refused,
every answer (status, content type, headers, JSON and SSE bodies) must be the documented
one, and an undeclared method must answer 405 with `Allow`. It runs as its own process
(its HTTP client blocks; the app runs in this test's event loop), with a fixed seed and a
small budget, and must find nothing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from claude_hooks.api.app import agent_pattern
from claude_hooks.tasks import TaskState
from tests.fakes.configs import ConfigFactory
from tests.test_api import TOKEN, ApiHarness, Sse, open_harness, read_sse, stream_headers

EXAMPLES_PER_OPERATION = 10  # with the fixed seed: under a minute on a busy core
RUN_TIMEOUT = 150.0


@pytest.fixture
async def api(config_factory: ConfigFactory, tmp_path: Path) -> AsyncIterator[ApiHarness]:
    async with open_harness(config_factory, tmp_path) as harness:
        yield harness


async def test_an_undeclared_method_answers_405_naming_the_allowed_ones(api: ApiHarness) -> None:
    for method, path, allowed in (
        ("DELETE", "/tasks", {"GET", "HEAD", "POST"}),
        ("PUT", "/tasks/1", {"GET", "HEAD"}),
        ("TRACE", "/healthz", {"GET", "HEAD"}),
    ):
        answer = await api.client.request(method, path, headers=api.auth())
        assert answer.status == 405, (method, path)
        assert set(re.split(r"\s*,\s*", answer.headers.get("Allow", ""))) == allowed
        assert (await answer.json())["error"].startswith("method not allowed")


async def test_the_static_files_come_with_the_documented_content_types(api: ApiHarness) -> None:
    document = await api.get("/openapi.json")
    answers = document["paths"]["/static/{name}"]["get"]["responses"]["200"]["content"]
    for name, media_type in (("app.js", "text/javascript"), ("style.css", "text/css")):
        answer = await api.client.get(f"/static/{name}")
        assert answer.status == 200 and answer.content_type == media_type
        assert answer.content_type in answers


def message_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    """The schema of one message of a documented text/event-stream answer."""
    responses = document["paths"][path]["get"]["responses"]
    return responses["200"]["content"]["text/event-stream"]["schema"]


def message_problems(document: dict[str, Any], schema: dict[str, Any], message: Sse) -> list[str]:
    """Where `message` (its data as sent: JSON text) strays from `schema`, data included:
    JSON Schema leaves contentSchema unchecked, so each branch's is checked here."""

    def validator(part: dict[str, Any]) -> Draft202012Validator:
        return Draft202012Validator({**part, "components": document["components"]})

    sent = {"event": message.event, "data": json.dumps(message.data)}
    if message.id is not None:
        sent["id"] = message.id
    problems = [error.message for error in validator(schema).iter_errors(sent)]
    for branch in _branches(document, schema):
        if branch["properties"]["event"]["const"] == message.event:
            content = branch["properties"]["data"]["contentSchema"]
            problems += [e.message for e in validator(content).iter_errors(message.data)]
            break
    else:
        problems.append(f"no documented message has event {message.event!r}")
    return problems


def _branches(document: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    name = schema["$ref"].rsplit("/", 1)[-1]
    found = document["components"]["schemas"][name]
    return found.get("oneOf", [found])


async def test_event_stream_messages_are_the_documented_ones(api: ApiHarness) -> None:
    document = await api.get("/openapi.json")
    first = await api.submit("implement the parser")
    await api.runs.started[first["task_id"]].wait()
    await api.emit(first["task_id"], ("tool_use", "Bash: make test"))
    api.runs.finish(first["task_id"])
    await api.wait_state(first["task_id"], TaskState.SUCCEEDED)

    log = await api.client.get(f"/tasks/{first['task_id']}/events", headers=stream_headers(api))
    messages = await read_sse(log)
    assert [m.event for m in messages][-1] == "end" and len(messages) >= 3
    schema = message_schema(document, "/tasks/{id}/events")
    assert [message_problems(document, schema, m) for m in messages] == [[]] * len(messages)

    feed = await api.client.get("/events", headers=stream_headers(api))
    [change] = await read_sse(feed, count=1)
    feed.close()
    assert change.event == "task" and change.data["id"] == first["task_id"]
    assert message_problems(document, message_schema(document, "/events"), change) == []


async def test_an_integral_number_written_with_a_fraction_is_that_integer(api: ApiHarness) -> None:
    # JSON Schema counts 7.0 and 7e0 as integers, so the document's `number` allows them.
    for written, number in ((b"7.0", 7), (b"8e0", 8)):
        body = b'{"agent": "dev", "repo": "owner/repo", "prompt": "x", "number": ' + written + b"}"
        headers = {**api.auth(), "Content-Type": "application/json"}
        answer = await api.client.post("/tasks", data=body, headers=headers)
        assert answer.status == 201, await answer.text()
        assert (await api.get(f"/tasks/{(await answer.json())['task_id']}"))["number"] == number
    # Refused, and quickly: int() of 1e999999999 would take the memory.
    for written in (b"7.5", b"1e999999999", b"-1e999999999", b"1e-999999999", b"1e19"):
        body = b'{"agent": "dev", "repo": "owner/repo", "prompt": "x", "number": ' + written + b"}"
        headers = {**api.auth(), "Content-Type": "application/json"}
        answer = await api.client.post("/tasks", data=body, headers=headers)
        assert answer.status == 400 and (await answer.json())["field"] == "number"


async def test_the_served_document_names_the_configured_agents(api: ApiHarness) -> None:
    document = await api.get("/openapi.json")
    agent = document["components"]["schemas"]["Submission"]["properties"]["agent"]
    assert agent["pattern"] == agent_pattern(("dev", "reviewer"))
    accepted = ("dev", " DEV\n", "Reviewer", "\u3000dev")
    refused = ("", " ", "nobody", "de v", "devx", "reviewer2")
    assert [bool(re.search(agent["pattern"], name)) for name in accepted] == [True] * 4
    assert [bool(re.search(agent["pattern"], name)) for name in refused] == [False] * 6
    assert bool(re.search(agent_pattern(("kay",)), "\u212aAY"))  # "\u212a".lower() == "k"


def schemathesis_available() -> None:
    if importlib.util.find_spec("schemathesis") is None:
        reason = "schemathesis is not installed (pip install -e '.[test]')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must install it")
        pytest.skip(reason)


def schemathesis_command(url: str, report_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
        "--header", f"Authorization: Bearer {TOKEN}",
        "--checks", "all",
        "--seed", "1",
        "--workers", "1",
        "--max-examples", str(EXAMPLES_PER_OPERATION),
        "--request-timeout", "2",  # an event stream is read until then
        "--report", "junit",
        "--report-dir", str(report_dir),
    ]  # fmt: skip


async def test_schemathesis_finds_nothing_the_document_does_not_say(
    config_factory: ConfigFactory, tmp_path: Path
) -> None:
    schemathesis_available()
    async with open_harness(config_factory, tmp_path) as api:
        process = await asyncio.create_subprocess_exec(
            *schemathesis_command(api.url, tmp_path / "schemathesis"),
            cwd=tmp_path,  # its .hypothesis database stays in the test's directory
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "120"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                output, _ = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[-12000:]
    print(report[-3000:])
    assert "Test cases:" in report and "generated" in report  # it did run cases
