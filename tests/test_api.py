"""The HTTP API against a real Store and Scheduler; only the Claude run is a stand-in.

`ApiHarness` (also used by the CLI client and browser tests) serves build_app on a
real loopback port. Its scheduler runs `FakeRuns.execute`, which holds each task
until the test finishes it, so a test decides exactly when a task is queued,
running or done, and writes the task's event log the way the runner does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from claude_hooks.api.app import (
    OPENAPI_FILE,
    UNAUTHORIZED,
    ApiDeps,
    ApiError,
    ApiTuning,
    DeliveryLog,
    TaskFeed,
    bearer_matches,
    build_app,
    ends_run,
    host_allowed,
    idempotency_key,
    parse_submission,
    sse_message,
)
from claude_hooks.config import Config
from claude_hooks.forgejo.models import ForgejoDataError
from claude_hooks.metrics import Metrics
from claude_hooks.store import Store
from claude_hooks.tasks import (
    Outcome,
    Task,
    TaskEvent,
    TaskKind,
    TaskSpec,
    TaskState,
    TriggerSource,
)
from claude_hooks.work.scheduler import Scheduler
from tests.fakes.configs import ConfigFactory
from tests.waiting import wait_until

TOKEN = "api-token-0123456789abcdef"
WEBHOOK_SECRET = b"webhook-secret-0123456789"
MAX_BODY = 4096
DONE = Outcome(
    TaskState.SUCCEEDED,
    result="All done: opened the PR.",
    session_id="session-1",
    cost_usd=0.0421,
    num_turns=7,
    duration_ms=61_000,
    links=("http://forgejo.test/o/r/pulls/2",),
)


class FakeRuns:
    """The scheduler's execute(): each run waits until the test finishes it."""

    def __init__(self) -> None:
        self.started: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.outcomes: dict[int, asyncio.Future[Outcome]] = {}
        self.cancelled: list[int] = []

    def _outcome(self, task_id: int) -> asyncio.Future[Outcome]:
        if task_id not in self.outcomes:
            self.outcomes[task_id] = asyncio.get_running_loop().create_future()
        return self.outcomes[task_id]

    async def execute(self, task: Task) -> Outcome:
        self.started[task.id].set()
        try:
            return await self._outcome(task.id)
        except asyncio.CancelledError:
            self.cancelled.append(task.id)
            raise

    def finish(self, task_id: int, outcome: Outcome = DONE) -> None:
        self._outcome(task_id).set_result(outcome)


@dataclass
class ApiHarness:
    """A served app with a real store and scheduler, and knobs for every injected callable."""

    config: Config
    store: Store
    scheduler: Scheduler
    runs: FakeRuns
    feed: TaskFeed
    metrics: Metrics
    client: TestClient = field(init=False)
    token: str | None = TOKEN
    secret: bytes | None = WEBHOOK_SECRET
    accepting: bool = True
    ready: dict[str, bool] = field(
        default_factory=lambda: {"store": True, "docker": True, "forgejo": True}
    )
    engines: dict[str, bool] = field(default_factory=dict)  # each engine up (empty: unknown)
    webhooks: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)
    webhook_result: int | Exception = 1
    changes: list[Task] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    def auth(self, token: str = TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def on_change(self, task: Task) -> None:
        self.changes.append(task)
        self.feed.publish(task)

    async def on_webhook(self, event: str, payload: dict[str, Any], delivery: str | None) -> int:
        self.webhooks.append((event, payload, delivery))
        if isinstance(self.webhook_result, Exception):
            raise self.webhook_result
        return self.webhook_result

    async def readiness(self) -> Mapping[str, bool]:
        return self.ready

    def api_token(self) -> str | None:
        return self.token

    def deps(self) -> ApiDeps:
        return ApiDeps(
            config=self.config,
            store=self.store,
            scheduler=self.scheduler,
            submit=self.scheduler.submit,
            on_webhook=self.on_webhook,
            webhook_secret=lambda: self.secret,
            api_token=lambda: self.api_token(),
            readiness=lambda: self.readiness(),
            metrics=self.metrics,
            accepting=lambda: self.accepting,
            feed=self.feed,
            engines=lambda: self.engines,
        )

    async def submit(self, prompt: str = "do it", **fields: Any) -> dict[str, Any]:
        body = {"agent": "dev", "repo": "owner/repo", "number": 1, "prompt": prompt, **fields}
        response = await self.client.post("/tasks", json=body, headers=self.auth())
        assert response.status == 201, await response.text()
        return await response.json()

    async def get(self, path: str) -> Any:
        response = await self.client.get(path, headers=self.auth())
        assert response.status == 200, await response.text()
        return await response.json()

    async def emit(self, task_id: int, *events: tuple[str, str]) -> None:
        """Write events to a task's log the way the runner does (a batched sink)."""
        sink = self.store.event_sink(task_id, interval=0.001)
        for kind, summary in events:
            sink.add(kind, summary, json.dumps({"type": kind}))
        await sink.close()

    async def wait_state(self, task_id: int, state: TaskState) -> Task:
        async def in_state() -> Task | None:
            task = await self.store.get(task_id)
            assert task is not None
            return task if task.state is state else None

        return await wait_until(in_state, timeout=5, what=f"task {task_id} {state}")


def harness_config(factory: ConfigFactory, api: Mapping[str, Any] | None = None) -> Config:
    token = str(factory.secret("api-token", TOKEN))
    return factory.load(
        api={"token_file": token, "max_body_bytes": MAX_BODY, **(api or {})},
        forgejo={
            "webhook_secret_file": str(factory.secret("hook", WEBHOOK_SECRET.decode())),
            "repositories": ["owner/*", "acme/*"],
        },
        agents=[factory.agent("dev"), factory.agent("reviewer", role="reviewer")],
    )


@asynccontextmanager
async def open_harness(
    factory: ConfigFactory,
    tmp_path: Path,
    *,
    tuning: ApiTuning | None = None,
    api: Mapping[str, Any] | None = None,
) -> AsyncIterator[ApiHarness]:
    config = harness_config(factory, api)
    store = await Store.open(tmp_path / "tasks.sqlite3")
    runs = FakeRuns()
    scheduler = Scheduler(
        store, max_concurrency=2, agent_limits={"dev": 1, "reviewer": 1}, execute=runs.execute
    )
    harness = ApiHarness(config, store, scheduler, runs, TaskFeed(), Metrics())
    scheduler.subscribe(harness.on_change)
    await scheduler.start()
    tuning = tuning or ApiTuning(keepalive=0.2, cancel_wait=2.0)
    harness.client = TestClient(TestServer(build_app(harness.deps(), tuning=tuning)))
    await harness.client.start_server()
    try:
        yield harness
    finally:
        await harness.client.close()
        await scheduler.drain(0.0)
        await store.close()


@pytest.fixture
async def api(config_factory: ConfigFactory, tmp_path: Path) -> AsyncIterator[ApiHarness]:
    async with open_harness(config_factory, tmp_path) as harness:
        yield harness


# --- reading Server-Sent Events off the wire ------------------------------------------------------


@dataclass(frozen=True)
class Sse:
    id: str | None
    event: str
    data: Any


async def read_sse(response: aiohttp.ClientResponse, count: int | None = None) -> list[Sse]:
    """Messages until `count` of them, or until an `end` event, or until the stream closes."""
    messages: list[Sse] = []
    block: list[str] = []
    async with asyncio.timeout(5):
        while count is None or len(messages) < count:
            raw = await response.content.readline()
            if not raw:
                break
            line = raw.decode().rstrip("\n")
            if line:
                block.append(line)
                continue
            fields: dict[str, list[str]] = defaultdict(list)
            for entry in block:
                if not entry.startswith(":"):
                    name, _, value = entry.partition(": ")
                    fields[name].append(value)
            block = []
            if "data" not in fields:
                continue
            event = fields.get("event", ["message"])[0]
            message = Sse(fields.get("id", [None])[0], event, json.loads("\n".join(fields["data"])))
            messages.append(message)
            if event == "end":
                break
    return messages


def stream_headers(harness: ApiHarness, last_id: int | None = None) -> dict[str, str]:
    headers = {**harness.auth(), "Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    return headers


def signed(body: bytes, *, delivery: str | None = "d-1", event: str = "issue_comment") -> dict:
    headers = {
        "X-Forgejo-Signature": hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest(),
        "X-Forgejo-Event": event,
        "Content-Type": "application/json",
    }
    if delivery is not None:
        headers["X-Forgejo-Delivery"] = delivery
    return headers


# --- authentication ---------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/tasks"),
    ("POST", "/tasks"),
    ("POST", "/task"),
    ("GET", "/tasks/1"),
    ("GET", "/tasks/1/events"),
    ("POST", "/tasks/1/cancel"),
    ("GET", "/events"),
    ("GET", "/agents"),
    ("POST", "/agents/dev/resume"),
    ("GET", "/openapi.json"),
    ("GET", "/no/such/path"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer ", TOKEN]
)
async def test_protected_routes_refuse_a_missing_or_wrong_token(
    api: ApiHarness, method: str, path: str, authorization: str | None
) -> None:
    await api.submit()
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = await api.client.request(method, path, headers=headers, json={})
    assert response.status == 401
    assert await response.json() == {"error": UNAUTHORIZED}
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_a_wrong_token_says_nothing_about_whether_a_task_exists(api: ApiHarness) -> None:
    await api.submit()
    answers = []
    for path in ("/tasks/1", "/tasks/999", "/tasks/1/events", "/tasks/999/events"):
        response = await api.client.get(path, headers=api.auth("wrong"))
        headers = {k: v for k, v in response.headers.items() if k not in ("Date",)}
        answers.append((response.status, await response.read(), headers))
    assert all(answer == answers[0] for answer in answers)
    assert answers[0][0] == 401


async def test_a_rotated_token_is_honoured_without_a_restart(api: ApiHarness) -> None:
    assert (await api.client.get("/tasks", headers=api.auth())).status == 200
    api.token = "the-new-token-0123456789"
    assert (await api.client.get("/tasks", headers=api.auth())).status == 401
    assert (
        await api.client.get("/tasks", headers=api.auth("the-new-token-0123456789"))
    ).status == 200


async def test_no_configured_token_refuses_everything_protected(api: ApiHarness) -> None:
    api.token = None
    assert (await api.client.get("/tasks", headers=api.auth())).status == 401
    assert (await api.client.get("/tasks", headers={"Authorization": "Bearer "})).status == 401


async def test_an_unreadable_token_file_refuses_rather_than_failing_open(api: ApiHarness) -> None:
    def unreadable() -> str:
        raise PermissionError(13, "Permission denied")

    api.api_token = unreadable  # type: ignore[method-assign]
    response = await api.client.get("/tasks", headers=api.auth())
    assert response.status == 401


@pytest.mark.parametrize(
    "path", ["/", "/static/app.js", "/static/style.css", "/healthz", "/readyz", "/metrics"]
)
async def test_public_routes_answer_without_a_token(api: ApiHarness, path: str) -> None:
    response = await api.client.get(path)
    assert response.status == 200


def test_bearer_matching_needs_the_scheme_and_the_exact_token() -> None:
    assert bearer_matches(f"Bearer {TOKEN}", TOKEN)
    assert bearer_matches(f"bearer  {TOKEN} ", TOKEN)
    assert not bearer_matches(f"Bearer {TOKEN}x", TOKEN)
    assert not bearer_matches(f"Token {TOKEN}", TOKEN)
    assert not bearer_matches(None, TOKEN)
    assert not bearer_matches("Bearer ", "")


# --- submitting -------------------------------------------------------------------------------


async def test_submit_stores_an_api_task_and_answers_201(api: ApiHarness) -> None:
    created = await api.submit("implement it", number=7)
    assert created["state"] == "queued" and created["task_id"] == 1
    task = await api.store.get(created["task_id"])
    assert task is not None
    spec = task.spec
    assert (spec.agent, spec.repo, spec.number, spec.request) == (
        "dev",
        "owner/repo",
        7,
        "implement it",
    )
    assert (spec.kind, spec.source, spec.requested_by) == (TaskKind.API, TriggerSource.API, "api")
    assert spec.idempotency_key.startswith("api/") and len(spec.idempotency_key) > 10


async def test_the_same_idempotency_key_returns_the_same_task_with_200(api: ApiHarness) -> None:
    body = {"agent": "dev", "repo": "owner/repo", "prompt": "once"}
    headers = {**api.auth(), "Idempotency-Key": "deploy-42"}
    first = await api.client.post("/tasks", json=body, headers=headers)
    again = await api.client.post("/tasks", json=body, headers=headers)
    other = await api.client.post("/tasks", json=body, headers=api.auth())
    assert (first.status, again.status, other.status) == (201, 200, 201)
    first_id = (await first.json())["task_id"]
    assert (await again.json())["task_id"] == first_id
    assert (await other.json())["task_id"] != first_id
    task = await api.store.get(first_id)
    assert task is not None and task.spec.idempotency_key == "api/deploy-42"


async def test_post_task_is_an_alias_of_post_tasks(api: ApiHarness) -> None:
    body = {"agent": "reviewer", "repo": "owner/repo", "prompt": "look", "kind": "review"}
    response = await api.client.post("/task", json=body, headers=api.auth())
    assert response.status == 201
    task = await api.store.get((await response.json())["task_id"])
    assert task is not None and task.spec.kind is TaskKind.REVIEW and task.spec.agent == "reviewer"


async def test_agent_names_are_matched_without_case(api: ApiHarness) -> None:
    created = await api.submit(agent="DEV")
    task = await api.store.get(created["task_id"])
    assert task is not None and task.spec.agent == "dev"


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"agent": "nobody", "repo": "o/r", "prompt": "x"}', "agent"),
        (b'{"repo": "o/r", "prompt": "x"}', "agent"),
        (b'{"agent": "dev", "prompt": "x"}', "repo"),
        (b'{"agent": "dev", "repo": "no-slash", "prompt": "x"}', "repo"),
        (b'{"agent": "dev", "repo": "o/r", "prompt": "  "}', "prompt"),
        (b'{"agent": "dev", "repo": "o/r", "prompt": "x", "number": "7"}', "number"),
        (b'{"agent": "dev", "repo": "o/r", "prompt": "x", "number": true}', "number"),
        (b'{"agent": "dev", "repo": "o/r", "prompt": "x", "number": 0}', "number"),
        (b'{"agent": "dev", "repo": "o/r", "prompt": "x", "kind": "deploy"}', "kind"),
        (b'{"agent": "dev", "repo": "o/r", "prompt": "x", "kind": ["api"]}', "kind"),
        (b'{"agent": "dev", "repo": "o/r", "prompt": "x", "agnet": "dev"}', "agnet"),
    ],
)
async def test_a_bad_submission_is_400_naming_the_field(
    api: ApiHarness, body: bytes, field_name: str
) -> None:
    response = await api.client.post(
        "/tasks", data=body, headers={**api.auth(), "Content-Type": "application/json"}
    )
    assert response.status == 400
    answer = await response.json()
    assert answer["field"] == field_name and answer["error"].startswith(f"{field_name}:")
    assert await api.store.list_tasks() == []


def test_an_unknown_agent_is_refused_listing_the_configured_ones() -> None:
    with pytest.raises(ApiError) as caught:
        parse_submission(b'{"agent": "bob", "repo": "o/r", "prompt": "x"}', ("dev", "reviewer"))
    assert "configured: dev, reviewer" in caught.value.message


def test_an_idempotency_key_is_namespaced_or_generated() -> None:
    assert idempotency_key("abc") == "api/abc"
    assert idempotency_key(None) != idempotency_key(None)
    with pytest.raises(ApiError):
        idempotency_key("x" * 201)


async def test_an_oversized_submission_is_413(api: ApiHarness) -> None:
    body = {"agent": "dev", "repo": "owner/repo", "prompt": "x" * (MAX_BODY + 10)}
    response = await api.client.post("/tasks", json=body, headers=api.auth())
    assert response.status == 413
    assert "limit" in (await response.json())["error"]
    assert await api.store.list_tasks() == []


async def test_submitting_while_draining_is_503(api: ApiHarness) -> None:
    api.accepting = False
    body = {"agent": "dev", "repo": "owner/repo", "prompt": "x"}
    response = await api.client.post("/tasks", json=body, headers=api.auth())
    assert response.status == 503
    assert "shutting down" in (await response.json())["error"]
    assert await api.store.list_tasks() == []


# --- listing and showing ----------------------------------------------------------------------


async def test_tasks_are_listed_newest_first_in_cursor_pages(api: ApiHarness) -> None:
    for n in range(5):
        await api.submit(f"task {n}", agent="reviewer")
    seen: list[int] = []
    pages = 0
    path = "/tasks?limit=2"
    while True:
        page = await api.get(path)
        pages += 1
        seen += [task["id"] for task in page["tasks"]]
        if page["next_cursor"] is None:
            break
        path = f"/tasks?limit=2&cursor={page['next_cursor']}"
    assert seen == [5, 4, 3, 2, 1]
    assert pages == 3


async def test_tasks_are_filtered_by_state_and_agent(api: ApiHarness) -> None:
    first = await api.submit("runs", agent="dev")
    await api.submit("waits", agent="dev")
    await api.submit("other", agent="reviewer")
    await api.runs.started[first["task_id"]].wait()
    running = await api.get("/tasks?state=running&agent=dev")
    assert [t["id"] for t in running["tasks"]] == [first["task_id"]]
    queued = await api.get("/tasks?state=queued")
    assert [t["request"] for t in queued["tasks"]] == ["waits"]


@pytest.mark.parametrize(
    ("query", "field_name"),
    [
        ("state=sleeping", "state"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("cursor=-1", "cursor"),
    ],
)
async def test_bad_list_parameters_are_400_naming_them(
    api: ApiHarness, query: str, field_name: str
) -> None:
    response = await api.client.get(f"/tasks?{query}", headers=api.auth())
    assert response.status == 400
    assert (await response.json())["field"] == field_name


async def test_a_queued_task_shows_its_place_in_the_queue(api: ApiHarness) -> None:
    first = await api.submit("first")
    second = await api.submit("second")
    third = await api.submit("third")
    await api.runs.started[first["task_id"]].wait()
    assert (second["position"], third["position"]) == (1, 2)
    shown = await api.get(f"/tasks/{third['task_id']}")
    assert shown["state"] == "queued" and shown["position"] == 2
    running = await api.get(f"/tasks/{first['task_id']}")
    assert running["state"] == "running" and running["position"] is None
    assert running["started_at"] is not None


async def test_a_finished_task_shows_timings_cost_turns_session_result_links(
    api: ApiHarness,
) -> None:
    created = await api.submit()
    task_id = created["task_id"]
    await api.runs.started[task_id].wait()
    api.runs.finish(task_id)
    await api.wait_state(task_id, TaskState.SUCCEEDED)
    shown = await api.get(f"/tasks/{task_id}")
    assert shown["state"] == "succeeded"
    assert shown["finished_at"] >= shown["started_at"] >= shown["created_at"]
    assert (shown["cost_usd"], shown["num_turns"], shown["duration_ms"]) == (0.0421, 7, 61_000)
    assert shown["session_id"] == "session-1" and shown["result"] == DONE.result
    assert shown["links"] == list(DONE.links) and shown["error"] is None


async def test_a_missing_task_is_404(api: ApiHarness) -> None:
    for path in ("/tasks/42", "/tasks/42/events"):
        response = await api.client.get(path, headers=api.auth())
        assert response.status == 404
        assert (await response.json())["error"] == "no task 42"
    response = await api.client.post("/tasks/42/cancel", headers=api.auth())
    assert response.status == 404


async def test_agents_lists_configured_agents_with_their_load(api: ApiHarness) -> None:
    first = await api.submit()
    await api.submit()
    await api.runs.started[first["task_id"]].wait()
    agents = await api.get("/agents")
    assert agents == [
        {
            "name": "dev",
            "role": "dev",
            "max_concurrency": 1,
            "running": 1,
            "queued": 1,
            "paused": None,
            "engines": [{"name": "local", "up": True}],
        },
        {
            "name": "reviewer",
            "role": "reviewer",
            "max_concurrency": 1,
            "running": 0,
            "queued": 0,
            "paused": None,
            "engines": [{"name": "local", "up": True}],
        },
    ]


async def test_agents_shows_a_pause_and_resume_lifts_it(api: ApiHarness) -> None:
    until = time.time() + 3600
    reason = "paused until 05:00 UTC (Claude usage limit)"
    await api.scheduler.pause("reviewer", until, reason, "usage_limit")
    [dev, reviewer] = await api.get("/agents")
    assert dev["paused"] is None
    assert reviewer["paused"] == {"until": until, "reason": reason, "cause": "usage_limit"}
    answer = await api.client.post("/agents/Reviewer/resume", headers=api.auth())
    assert answer.status == 200
    assert await answer.json() == {"name": "reviewer", "resumed": True}
    assert [agent["paused"] for agent in await api.get("/agents")] == [None, None]
    again = await api.client.post("/agents/reviewer/resume", headers=api.auth())
    assert await again.json() == {"name": "reviewer", "resumed": False}  # not paused now
    unknown = await api.client.post("/agents/nobody/resume", headers=api.auth())
    assert unknown.status == 404 and (await unknown.json())["error"] == "no agent 'nobody'"


# --- event logs -------------------------------------------------------------------------------


async def test_events_as_json_list_the_log_after_a_seq(api: ApiHarness) -> None:
    task_id = (await api.submit())["task_id"]
    await api.runs.started[task_id].wait()
    await api.emit(task_id, ("tool_use", "Bash: ls"), ("text", "Looking around"))
    events = await api.get(f"/tasks/{task_id}/events")
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [e["type"] for e in events] == ["state", "state", "tool_use", "text"]
    later = await api.get(f"/tasks/{task_id}/events?after=2")
    assert [(e["seq"], e["summary"]) for e in later] == [(3, "Bash: ls"), (4, "Looking around")]
    assert later[0]["data"] == '{"type": "tool_use"}'


async def test_the_event_stream_follows_a_task_to_its_end(api: ApiHarness) -> None:
    task_id = (await api.submit())["task_id"]
    await api.runs.started[task_id].wait()
    response = await api.client.get(f"/tasks/{task_id}/events", headers=stream_headers(api))
    assert response.headers["Content-Type"] == "text/event-stream"
    backlog = await read_sse(response, count=2)
    assert [m.data["summary"] for m in backlog] == ["queued", "running (attempt 1)"]
    await api.emit(task_id, ("tool_use", "Bash: make test"))
    live = await read_sse(response, count=1)
    assert live[0].id == "3" and live[0].data["summary"] == "Bash: make test"
    api.runs.finish(task_id)
    rest = await read_sse(response)
    assert rest[-1].event == "end" and rest[-1].data == {"task_id": task_id, "state": "succeeded"}
    ids = [int(m.id) for m in backlog + live + rest[:-1] if m.id is not None]
    assert ids == list(range(1, len(ids) + 1))
    assert rest[-2].data["type"] == "state" and ends_run(_event(rest[-2].data))
    assert await response.content.read() == b""  # the server closed the stream


def _event(data: Mapping[str, Any]) -> TaskEvent:
    return TaskEvent(
        data["task_id"], data["seq"], data["ts"], data["type"], data["summary"], data["data"]
    )


async def test_a_reconnect_with_last_event_id_resumes_without_gaps_or_duplicates(
    api: ApiHarness,
) -> None:
    task_id = (await api.submit())["task_id"]
    await api.runs.started[task_id].wait()
    await api.emit(task_id, *[("text", f"line {n}") for n in range(5)])
    first = await api.client.get(f"/tasks/{task_id}/events", headers=stream_headers(api))
    received = await read_sse(first, count=4)
    first.close()  # the connection drops mid-log
    await api.emit(task_id, *[("text", f"more {n}") for n in range(5)])
    last_id = int(received[-1].id or 0)
    again = await api.client.get(
        f"/tasks/{task_id}/events", headers=stream_headers(api, last_id=last_id)
    )
    await api.emit(task_id, ("result", "done (success): 7 turns"))
    api.runs.finish(task_id)
    received += await read_sse(again)
    assert received[-1].event == "end"
    seqs = [int(m.id) for m in received if m.id is not None]
    stored = await api.store.events(task_id)
    assert seqs == [event.seq for event in stored] == list(range(1, len(stored) + 1))


async def test_a_finished_tasks_stream_sends_its_log_then_ends_at_once(api: ApiHarness) -> None:
    task_id = (await api.submit())["task_id"]
    await api.runs.started[task_id].wait()
    api.runs.finish(task_id)
    await api.wait_state(task_id, TaskState.SUCCEEDED)
    started = time.monotonic()
    response = await api.client.get(f"/tasks/{task_id}/events?after=1", headers=stream_headers(api))
    messages = await read_sse(response)
    assert [m.id for m in messages] == ["2", "3", None] and messages[-1].event == "end"
    resumed = await api.client.get(
        f"/tasks/{task_id}/events", headers=stream_headers(api, last_id=3)
    )
    assert [m.event for m in await read_sse(resumed)] == ["end"]
    assert time.monotonic() - started < 0.2  # not after a keepalive period


async def test_a_bad_last_event_id_is_400(api: ApiHarness) -> None:
    task_id = (await api.submit())["task_id"]
    headers = {**stream_headers(api), "Last-Event-ID": "seven"}
    response = await api.client.get(f"/tasks/{task_id}/events", headers=headers)
    assert response.status == 400
    assert (await response.json())["field"] == "Last-Event-ID"


async def test_a_quiet_stream_sends_keepalive_comments(api: ApiHarness) -> None:
    task_id = (await api.submit())["task_id"]
    response = await api.client.get(
        f"/tasks/{task_id}/events?after=99", headers=stream_headers(api)
    )
    async with asyncio.timeout(2):
        lines = [await response.content.readline() for _ in range(5)]
    assert b": keepalive\n" in lines


async def test_open_streams_end_promptly_when_the_app_shuts_down(
    config_factory: ConfigFactory, tmp_path: Path
) -> None:
    async with open_harness(config_factory, tmp_path, tuning=ApiTuning(keepalive=30.0)) as harness:
        task_id = (await harness.submit())["task_id"]
        url = f"{harness.url}/tasks/{task_id}/events"
        async with aiohttp.ClientSession() as session:
            log_stream = await session.get(url, headers=stream_headers(harness))
            feed_stream = await session.get(
                f"{harness.url}/events", headers=stream_headers(harness)
            )
            await read_sse(log_stream, count=1)
            started = time.monotonic()
            async with asyncio.timeout(5):
                await harness.client.close()
                assert await log_stream.content.read() is not None
                assert await feed_stream.content.read() is not None
            assert time.monotonic() - started < 2.0


# --- cancelling -------------------------------------------------------------------------------


async def test_cancelling_a_queued_task_is_202_and_cancelled(api: ApiHarness) -> None:
    await api.submit("runs")
    waiting = await api.submit("waits")
    response = await api.client.post(f"/tasks/{waiting['task_id']}/cancel", headers=api.auth())
    assert response.status == 202
    answer = await response.json()
    assert answer["state"] == "cancelled" and answer["error"] == "cancelled by api"


async def test_cancelling_a_running_task_stops_its_run(api: ApiHarness) -> None:
    task_id = (await api.submit())["task_id"]
    await api.runs.started[task_id].wait()
    response = await api.client.post(f"/tasks/{task_id}/cancel", headers=api.auth())
    assert response.status == 202
    assert (await response.json())["state"] == "cancelled"
    assert api.runs.cancelled == [task_id]


async def test_cancelling_a_finished_task_is_409_with_its_state(api: ApiHarness) -> None:
    task_id = (await api.submit())["task_id"]
    await api.runs.started[task_id].wait()
    api.runs.finish(task_id)
    await api.wait_state(task_id, TaskState.SUCCEEDED)
    response = await api.client.post(f"/tasks/{task_id}/cancel", headers=api.auth())
    assert response.status == 409
    assert (await response.json())["state"] == "succeeded"


# --- the feed of task changes -----------------------------------------------------------------


async def test_the_feed_sends_active_tasks_then_each_change(api: ApiHarness) -> None:
    first = await api.submit("already there")
    await api.runs.started[first["task_id"]].wait()
    response = await api.client.get("/events", headers=stream_headers(api))
    snapshot = await read_sse(response, count=1)
    assert snapshot[0].event == "task" and snapshot[0].data["state"] == "running"
    second = await api.submit("new one")
    change = await read_sse(response, count=1)
    assert change[0].data["id"] == second["task_id"] and change[0].data["state"] == "queued"
    assert change[0].data["position"] == 1
    api.runs.finish(first["task_id"])
    wanted = {(first["task_id"], "succeeded"), (second["task_id"], "running")}
    seen: set[tuple[int, str]] = set()
    while not wanted <= seen:  # changes of one task may be coalesced: only the latest counts
        seen |= {(m.data["id"], m.data["state"]) for m in await read_sse(response, count=1)}


async def test_a_slow_feed_listener_keeps_only_each_tasks_latest_state() -> None:
    feed = TaskFeed()
    with feed.subscribe() as subscription:
        spec = TaskSpec("dev", TaskKind.API, "o/r", None, "api/k", "api", "x", TriggerSource.API)
        task = Task(id=1, spec=spec, state=TaskState.QUEUED)
        feed.publish(task)
        feed.publish(task.with_(id=2))
        feed.publish(task.with_(state=TaskState.RUNNING))
        batch = await subscription.next_batch()
        assert [(t.id, t.state) for t in batch] == [(2, TaskState.QUEUED), (1, TaskState.RUNNING)]
        assert feed.listeners == 1
    assert feed.listeners == 0


def test_a_multi_line_payload_becomes_several_data_lines() -> None:
    assert sse_message("a\nb", id=3, event="x") == b"id: 3\nevent: x\ndata: a\ndata: b\n\n"


# --- health, readiness, metrics ---------------------------------------------------------------


async def test_healthz_answers_ok(api: ApiHarness) -> None:
    response = await api.client.get("/healthz")
    assert (response.status, await response.json()) == (200, {"status": "ok"})


async def test_readyz_is_200_when_every_check_passes(api: ApiHarness) -> None:
    response = await api.client.get("/readyz")
    assert response.status == 200
    assert (await response.json())["checks"] == {
        "store": True,
        "docker": True,
        "forgejo": True,
        "accepting": True,
    }


async def test_readyz_is_503_naming_the_failing_checks(api: ApiHarness) -> None:
    api.ready = {"store": True, "docker": False, "forgejo": True}
    response = await api.client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["failing"] == ["docker"]
    api.ready = {"store": True, "docker": True, "forgejo": True}
    api.accepting = False
    assert (await (await api.client.get("/readyz")).json())["failing"] == ["accepting"]


async def test_readyz_is_503_when_the_probe_itself_fails(api: ApiHarness) -> None:
    async def broken() -> Mapping[str, bool]:
        raise ConnectionRefusedError("docker.sock")

    api.readiness = broken  # type: ignore[method-assign]
    response = await api.client.get("/readyz")
    body = await response.json()
    assert response.status == 503 and body["failing"] == ["readiness_probe"]
    assert "ConnectionRefusedError" in body["error"]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_report_tasks_by_state_and_agent_queue_and_running(api: ApiHarness) -> None:
    first = await api.submit()
    await api.submit()
    await api.submit(agent="reviewer")
    await api.runs.started[first["task_id"]].wait()
    api.runs.finish(first["task_id"])
    await api.wait_state(first["task_id"], TaskState.SUCCEEDED)
    for change in api.changes:
        if change.state.is_final:
            api.metrics.task_finished(change)
    response = await api.client.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = _samples(await response.text())
    tasks = "claude_hooks_tasks"
    assert samples[(tasks, (("agent", "dev"), ("state", "succeeded")))] == 1
    assert samples[(tasks, (("agent", "dev"), ("state", "failed")))] == 0
    running = samples[(tasks, (("agent", "dev"), ("state", "running")))]
    queued = samples[(tasks, (("agent", "dev"), ("state", "queued")))]
    assert running + queued == 1  # the second dev task, starting now or about to
    assert samples[("claude_hooks_running_tasks", ())] == len(api.scheduler.running_ids())
    assert samples[("claude_hooks_queue_depth", ())] == api.scheduler.queue_depth()
    assert samples[("claude_hooks_task_cost_usd_total", (("agent", "dev"),))] == pytest.approx(
        0.0421
    )
    assert (
        samples[
            ("claude_hooks_task_duration_seconds_count", (("agent", "dev"), ("state", "succeeded")))
        ]
        == 1
    )


# --- the OpenAPI document ---------------------------------------------------------------------


def _served_routes(app: Any) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def _documented_routes() -> set[tuple[str, str]]:
    document = json.loads(OPENAPI_FILE.read_text())
    return {(method, path) for path, item in document["paths"].items() for method in item}


def test_the_openapi_document_describes_exactly_the_served_routes(
    config_factory: ConfigFactory,
) -> None:
    app = build_app(
        ApiDeps(
            config=harness_config(config_factory),
            store=None,  # type: ignore[arg-type]  # routes only: no request is served
            scheduler=None,  # type: ignore[arg-type]
            submit=None,  # type: ignore[arg-type]
            on_webhook=None,  # type: ignore[arg-type]
            webhook_secret=lambda: None,
            api_token=lambda: None,
            readiness=None,  # type: ignore[arg-type]
            metrics=Metrics(),
            accepting=lambda: True,
        )
    )
    served, documented = _served_routes(app), _documented_routes()
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


async def test_the_openapi_document_is_served_and_valid(api: ApiHarness) -> None:
    document = await api.get("/openapi.json")
    OpenAPI.from_dict(document)  # raises on an invalid document
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_real_answers_match_the_openapi_document(api: ApiHarness) -> None:
    openapi = OpenAPI.from_dict(json.loads(OPENAPI_FILE.read_text()))
    first = await api.submit()
    await api.runs.started[first["task_id"]].wait()
    await api.emit(first["task_id"], ("tool_use", "Bash: ls"))
    exchanges: list[tuple[str, str, dict[str, str], bytes | None]] = [
        ("POST", "/tasks", {}, b'{"agent": "dev", "repo": "o/r", "prompt": "x"}'),
        ("POST", "/tasks", {}, b'{"agent": "x"}'),
        ("GET", "/tasks?limit=1", {}, None),
        ("GET", f"/tasks/{first['task_id']}", {}, None),
        ("GET", f"/tasks/{first['task_id']}/events?after=1", {}, None),
        ("GET", "/tasks/99", {}, None),
        ("GET", "/agents", {}, None),
        ("POST", "/agents/dev/resume", {}, None),
        ("POST", "/agents/nobody/resume", {}, None),
        ("GET", "/readyz", {}, None),
        ("GET", "/healthz", {}, None),
        ("POST", "/tasks/2/cancel", {}, None),
        ("POST", "/tasks/2/cancel", {}, None),
        ("GET", "/tasks", {"Authorization": "Bearer nope"}, None),
        ("POST", "/tasks", {"Content-Type": "text/plain"}, b"{}"),
        ("GET", f"/tasks/{HUGE}", {}, None),
        ("GET", f"/tasks/{HUGE}/events", {}, None),
        ("POST", f"/tasks/{HUGE}/cancel", {}, None),
        ("GET", "/healthz", {"Host": "evil.example"}, None),
        ("GET", "/tasks", {"Host": "evil.example"}, None),
    ]
    problems = []
    for method, target, extra, body in exchanges:
        headers = {**api.auth(), "Content-Type": "application/json", **extra}
        response = await api.client.request(method, target, data=body, headers=headers)
        path, _, query = target.partition("?")
        request = MockRequest(
            api.url, method.lower(), path, args=dict(p.split("=") for p in query.split("&") if p)
        )
        mock = MockResponse(
            await response.read(), status_code=response.status, content_type="application/json"
        )
        result = openapi.unmarshal_response(request, mock)
        problems += [f"{method} {target} → {response.status}: {e}" for e in result.errors]
    assert problems == []


# --- webhooks ---------------------------------------------------------------------------------

PAYLOAD = json.dumps({"action": "created", "comment": {"id": 1}}).encode()


async def test_a_signed_webhook_is_handed_on_and_answered_202(api: ApiHarness) -> None:
    response = await api.client.post("/hooks/forgejo", data=PAYLOAD, headers=signed(PAYLOAD))
    assert response.status == 202
    assert await response.json() == {"accepted": 1}
    assert api.webhooks == [("issue_comment", json.loads(PAYLOAD), "d-1")]


@pytest.mark.parametrize("signature", [None, "", "0" * 64, "sha256=deadbeef"])
async def test_a_webhook_without_a_valid_signature_is_401(
    api: ApiHarness, signature: str | None
) -> None:
    headers = signed(PAYLOAD)
    del headers["X-Forgejo-Signature"]
    if signature is not None:
        headers["X-Forgejo-Signature"] = signature
    response = await api.client.post("/hooks/forgejo", data=PAYLOAD, headers=headers)
    assert response.status == 401
    assert api.webhooks == []


async def test_a_replayed_delivery_is_answered_without_processing(api: ApiHarness) -> None:
    for _ in range(2):
        response = await api.client.post("/hooks/forgejo", data=PAYLOAD, headers=signed(PAYLOAD))
    assert response.status == 200 and await response.json() == {"duplicate": True}
    assert len(api.webhooks) == 1
    samples = _samples(await (await api.client.get("/metrics")).text())
    assert samples[("claude_hooks_webhook_deliveries_total", (("result", "accepted"),))] == 1
    assert samples[("claude_hooks_webhook_deliveries_total", (("result", "duplicate"),))] == 1


async def test_a_delivery_the_intake_rejected_may_be_redelivered(api: ApiHarness) -> None:
    api.webhook_result = ForgejoDataError("webhook payload: field 'issue' is missing")
    response = await api.client.post("/hooks/forgejo", data=PAYLOAD, headers=signed(PAYLOAD))
    assert response.status == 400 and "issue" in (await response.json())["error"]
    api.webhook_result = 2
    response = await api.client.post("/hooks/forgejo", data=PAYLOAD, headers=signed(PAYLOAD))
    assert (response.status, await response.json()) == (202, {"accepted": 2})


async def test_a_signed_webhook_that_is_not_json_is_400(api: ApiHarness) -> None:
    body = b"not json at all"
    response = await api.client.post("/hooks/forgejo", data=body, headers=signed(body))
    assert response.status == 400
    assert api.webhooks == []


async def test_an_oversized_webhook_is_413(api: ApiHarness) -> None:
    body = b"{" + b" " * MAX_BODY + b"}"
    response = await api.client.post("/hooks/forgejo", data=body, headers=signed(body))
    assert response.status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the read itself is capped
        for _ in range(8):
            yield b" " * 1024

    response = await api.client.post("/hooks/forgejo", data=chunks(), headers=signed(b""))
    assert response.status == 413
    assert api.webhooks == []


async def test_an_oversized_webhook_is_refused_before_its_body_is_read(api: ApiHarness) -> None:
    host, port = api.client.host, api.client.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /hooks/forgejo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n"
        b"X-Forgejo-Signature: 00\r\nX-Forgejo-Event: issues\r\n\r\n"
    )
    await writer.drain()
    async with asyncio.timeout(2):  # the body never comes: only a check before reading answers
        status_line = await reader.readline()
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 413")


async def test_webhooks_are_404_when_no_secret_is_configured(api: ApiHarness) -> None:
    api.secret = None
    response = await api.client.post("/hooks/forgejo", data=PAYLOAD, headers=signed(PAYLOAD))
    assert response.status == 404
    assert "not configured" in (await response.json())["error"]


async def test_webhooks_are_503_while_draining(api: ApiHarness) -> None:
    api.accepting = False
    response = await api.client.post("/hooks/forgejo", data=PAYLOAD, headers=signed(PAYLOAD))
    assert response.status == 503
    assert api.webhooks == []


def test_the_delivery_log_forgets_the_oldest_ids_first() -> None:
    log = DeliveryLog(capacity=2)
    for delivery in ("a", "b", "a", "c"):
        log.add(delivery)
    assert "a" in log and "c" in log and "b" not in log


# --- the status page --------------------------------------------------------------------------


async def test_the_status_page_is_served_with_a_strict_content_security_policy(
    api: ApiHarness,
) -> None:
    response = await api.client.get("/")
    html = await response.text()
    assert response.content_type == "text/html"
    assert '<script src="/static/app.js"' in html and "http" not in html.replace("http-", "")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert (await api.client.get("/static/config.toml")).status == 404
    assert (await api.client.get("/static/..%2Fapi.py")).status == 404


async def test_an_unknown_path_is_a_json_404_once_authenticated(api: ApiHarness) -> None:
    response = await api.client.get("/tasks/abc", headers=api.auth())
    assert response.status == 404
    assert await response.json() == {"error": "not found: GET /tasks/abc"}


# --- hostile requests: bytes, bounds, nesting, names, content types, hosts ---------------------

HUGE = "99999999999999999999999"  # more than SQLite's INTEGER (int64) holds
SQLITE_MAX = 2**63 - 1


async def raw_request(api: ApiHarness, head: bytes) -> tuple[int, bytes]:
    """Status and body of a request written byte for byte (headers aiohttp would not send)."""
    reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
    writer.write(head + b"Connection: close\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()  # the server closes after its answer
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_a_non_utf8_authorization_header_is_401_and_logs_no_error(api: ApiHarness) -> None:
    head = b"GET /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe-x\r\n"
    with capture_logs() as logs:
        status, body = await raw_request(api, head)
    assert (status, json.loads(body)) == (401, {"error": UNAUTHORIZED})
    assert [entry for entry in logs if entry["log_level"] in ("error", "critical")] == []


@pytest.mark.parametrize(
    ("method", "target", "field_name"),
    [
        ("GET", f"/tasks/{HUGE}", "id"),
        ("GET", f"/tasks/{SQLITE_MAX + 1}", "id"),
        pytest.param("GET", "/tasks/" + "9" * 5000, "id", id="5000_digits"),  # past int()'s limit
        ("GET", f"/tasks/{HUGE}/events", "id"),
        ("POST", f"/tasks/{HUGE}/cancel", "id"),
        ("GET", f"/tasks?cursor={HUGE}", "cursor"),
        ("GET", f"/tasks?limit={HUGE}", "limit"),
        ("GET", f"/tasks/1/events?after={HUGE}", "after"),
    ],
)
async def test_integers_sqlite_cannot_hold_are_400_naming_them(
    api: ApiHarness, method: str, target: str, field_name: str
) -> None:
    await api.submit()
    response = await api.client.request(method, target, headers=api.auth())
    assert response.status == 400, await response.text()
    answer = await response.json()
    assert answer["field"] == field_name and "between" in answer["error"]


@pytest.mark.parametrize(
    "last_id",
    [HUGE, str(SQLITE_MAX + 1), "9" * 5000, "١٢", "1_0"],
    ids=["huge", "int64_max_plus_1", "5000_digits", "arabic_digits", "underscore"],
)
async def test_a_last_event_id_sqlite_cannot_hold_is_400(api: ApiHarness, last_id: str) -> None:
    task_id = (await api.submit())["task_id"]
    headers = {**stream_headers(api), "Last-Event-ID": last_id}
    response = await api.client.get(f"/tasks/{task_id}/events", headers=headers)
    assert response.status == 400  # not a stream opened (its body would never end)
    assert (await response.json())["field"] == "Last-Event-ID"


@pytest.mark.parametrize("number", [SQLITE_MAX + 1, 2**64, 10**30])
async def test_an_issue_number_sqlite_cannot_hold_is_400(api: ApiHarness, number: int) -> None:
    body = {"agent": "dev", "repo": "acme/app", "number": number, "prompt": "x"}
    response = await api.client.post("/tasks", json=body, headers=api.auth())
    assert response.status == 400, await response.text()
    answer = await response.json()
    assert answer["field"] == "number" and str(SQLITE_MAX) in answer["error"]
    assert await api.store.list_tasks() == []


# Beyond the JSON parser's recursion limit, and within it but past the API's depth bound.
NESTINGS = {"past_recursion_limit": 1500, "past_depth_bound": 100}


@pytest.mark.parametrize("depth", NESTINGS.values(), ids=NESTINGS.keys())
async def test_deeply_nested_json_is_400_in_submissions_and_signed_webhooks(
    api: ApiHarness, depth: int
) -> None:
    nested = b"[" * depth + b"]" * depth
    body = b'{"agent": "dev", "repo": "acme/app", "prompt": "x", "number": ' + nested + b"}"
    headers = {**api.auth(), "Content-Type": "application/json"}
    response = await api.client.post("/tasks", data=body, headers=headers)
    assert response.status == 400, await response.text()
    answer = await response.json()
    assert answer["field"] == "body" and "nested" in answer["error"]
    hook = b'{"action": "created", "comment": ' + nested + b"}"
    response = await api.client.post("/hooks/forgejo", data=hook, headers=signed(hook))
    assert response.status == 400, await response.text()
    assert "nested" in (await response.json())["error"]
    assert api.webhooks == [] and await api.store.list_tasks() == []


BAD_REPOS = [
    "acme/..",
    "../app",
    "acme/.",
    "./app",
    "-acme/app",
    "acme/-app",
    ".acme/app",
    "acme/.app",
    "acme/app/issues",
    "acme/app%2F..",
    "acme/ap p",
    "acme/äpp",
    "a" * 41 + "/app",
    "acme/" + "a" * 101,
]


@pytest.mark.parametrize("repo", BAD_REPOS)
async def test_a_repo_forgejo_would_not_name_is_400(api: ApiHarness, repo: str) -> None:
    body = {"agent": "dev", "repo": repo, "prompt": "x"}
    response = await api.client.post("/tasks", json=body, headers=api.auth())
    assert response.status == 400, await response.text()
    assert (await response.json())["field"] == "repo"
    assert await api.store.list_tasks() == []


@pytest.mark.parametrize("repo", ["acme/app", "Acme/My.App_2-x", "a_b/c..d", "a" * 40 + "/b"])
def test_forgejo_valid_repo_names_are_accepted(repo: str) -> None:
    body = json.dumps({"agent": "dev", "repo": repo, "prompt": "x"}).encode()
    assert parse_submission(body, ("dev",)).repo == repo


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_a_submission_not_sent_as_json_is_415(
    api: ApiHarness, content_type: str | None
) -> None:
    body = json.dumps({"agent": "dev", "repo": "acme/app", "prompt": "x"}).encode()
    headers = {**api.auth(), **({"Content-Type": content_type} if content_type else {})}
    response = await api.client.post(
        "/tasks", data=body, headers=headers, skip_auto_headers=["Content-Type"]
    )
    assert response.status == 415, await response.text()
    assert "application/json" in (await response.json())["error"]
    assert await api.store.list_tasks() == []


async def test_a_submission_with_a_charset_parameter_is_json_still(api: ApiHarness) -> None:
    body = json.dumps({"agent": "dev", "repo": "acme/app", "prompt": "x"}).encode()
    headers = {**api.auth(), "Content-Type": "Application/JSON; charset=utf-8"}
    response = await api.client.post("/tasks", data=body, headers=headers)
    assert response.status == 201, await response.text()


# A DNS-rebinding page reaches the daemon under its own host name.
FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:8765",
    "127.0.0.1.evil.example",
    "localhost.evil.example",
    "[::2]:8765",
    "10.0.0.1",
    "",
]
EVERY_KIND_OF_ROUTE = [
    ("GET", "/"),
    ("GET", "/static/app.js"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/tasks"),
    ("GET", "/tasks/1"),
    ("POST", "/tasks"),
    ("POST", "/hooks/forgejo"),
    ("GET", "/no/such/path"),
]


@pytest.mark.parametrize(("method", "path"), EVERY_KIND_OF_ROUTE)
async def test_a_request_for_another_host_is_421_on_every_route(
    api: ApiHarness, method: str, path: str
) -> None:
    for host in FOREIGN_HOSTS:
        headers = {**api.auth(), **signed(PAYLOAD, delivery=f"d-{host}"), "Host": host}
        response = await api.client.request(method, path, data=PAYLOAD, headers=headers)
        assert response.status == 421, (host, await response.text())
        answer = await response.json()
        assert answer["field"] == "Host" and "api.allowed_hosts" in answer["error"]
    assert api.webhooks == [] and await api.store.list_tasks() == []


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:8765",
        "127.3.4.5:80",
        "localhost",
        "LocalHost:8765",
        "localhost.",
        "[::1]",
        "[::1]:8765",
    ],
)
async def test_loopback_and_localhost_are_served_with_or_without_a_port(
    api: ApiHarness, host: str
) -> None:
    response = await api.client.get("/metrics", headers={"Host": host})
    assert response.status == 200, await response.text()


async def test_a_request_without_a_host_header_is_served(api: ApiHarness) -> None:
    status, _ = await raw_request(api, b"GET /healthz HTTP/1.0\r\n")  # no browser sends this
    assert status == 200


async def test_api_allowed_hosts_adds_the_names_a_proxy_or_forgejo_uses(
    config_factory: ConfigFactory, tmp_path: Path
) -> None:
    extra = {"allowed_hosts": ["hooks.example.org", "192.0.2.7"]}
    async with open_harness(config_factory, tmp_path, api=extra) as harness:
        answers = {}
        for n, host in enumerate(
            ["hooks.example.org", "Hooks.Example.Org:443", "192.0.2.7:8765", "localhost", "x.org"]
        ):
            headers = {**signed(PAYLOAD, delivery=f"d-{n}"), "Host": host}
            response = await harness.client.post("/hooks/forgejo", data=PAYLOAD, headers=headers)
            answers[host] = response.status
    assert answers == {
        "hooks.example.org": 202,
        "Hooks.Example.Org:443": 202,
        "192.0.2.7:8765": 202,
        "localhost": 202,
        "x.org": 421,
    }


def test_the_host_check_serves_the_listen_host_loopback_and_allowed_names_only() -> None:
    allowed = ("proxy.example", "2001:db8::5")
    for host in ("192.0.2.7", "192.0.2.7:8765", "proxy.example:443", "[2001:db8::5]:1", "[::1]"):
        assert host_allowed(host, "192.0.2.7", allowed), host
    assert host_allowed(None, "192.0.2.7", allowed)  # HTTP/1.0 without Host: not a browser
    for host in ("192.0.2.8", "evil.example", "proxy.example.evil", "[::1", "a:b:c", "\udcff"):
        assert not host_allowed(host, "192.0.2.7", allowed), host
    assert host_allowed("[::1]:8765", "::1", ())  # a listen host spelt without brackets


async def test_a_task_for_an_unconfigured_repository_is_refused_and_not_stored(
    api: ApiHarness,
) -> None:
    body = {"agent": "dev", "repo": "mallory/evil", "number": 1, "prompt": "env | base64"}
    answer = await api.client.post("/tasks", json=body, headers=api.auth())
    assert answer.status == 403
    error = await answer.json()
    assert error["field"] == "repo" and "mallory/evil" in error["error"]
    assert await api.store.list_tasks() == []
