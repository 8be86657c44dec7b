"""The HTTP API: tasks, their live event streams, health, metrics, webhooks, status page.

`build_app(deps)` returns an aiohttp Application; services.py runs it. Everything but
the health and metrics endpoints, the status page and the (HMAC-checked) webhook
needs `Authorization: Bearer <token>`, checked before any lookup so that a refused
request says nothing about what exists. The routes are described by
web/openapi.json (a test holds the two together).

Every number from outside is bounded to what SQLite's INTEGER holds and every JSON
body to MAX_JSON_DEPTH levels, so hostile input is a 400 naming the field, never a 500.

Every route, public ones and the webhook included, first checks the Host header
(`host_allowed`): a DNS-rebinding page reaches the daemon under the attacker's own
host name, so only the listen host, localhost, loopback addresses and
api.allowed_hosts are served.

Streams are Server-Sent Events: `GET /tasks/{id}/events` with `Accept:
text/event-stream` sends a task's stored log (`id:` is the event's seq, so a
reconnect with Last-Event-ID resumes exactly) and follows it until the task ends;
`GET /events` sends task state changes, fed by `TaskFeed.publish`. Both send
keepalive comments and end as soon as the app shuts down.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import re
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiohttp import web

from claude_hooks.config import Config
from claude_hooks.forgejo.client import RepositoryNotServed
from claude_hooks.forgejo.models import ForgejoDataError
from claude_hooks.forgejo.webhook import delivery_id, event_name, verify_signature
from claude_hooks.metrics import Metrics, QueueSnapshot
from claude_hooks.precedence import PRECEDENCE
from claude_hooks.store import Store, StoreError
from claude_hooks.tasks import (
    AgentPause,
    Task,
    TaskEvent,
    TaskKind,
    TaskSpec,
    TaskState,
    TriggerSource,
)
from claude_hooks.work.scheduler import Scheduler, SchedulerError

log = structlog.get_logger(__name__)

T = TypeVar("T")

WEB_DIR = Path(__file__).parent / "web"
# The status page's files and the Content-Type each is served with (the one the OpenAPI
# document names; mimetypes would guess application/javascript on some systems).
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
OPENAPI_FILE = WEB_DIR / "openapi.json"
# Routes anyone may call; everything else (unknown paths too) needs the bearer token.
PUBLIC_PATHS = frozenset(
    {"/", "/static/{name}", "/healthz", "/readyz", "/metrics", "/hooks/forgejo"}
)
UNAUTHORIZED = "unauthorized: send Authorization: Bearer <token> (the file api.token_file)"
SHUTTING_DOWN = "shutting down: not accepting new tasks"
MISDIRECTED = (
    "misdirected request: the Host header names no host this daemon serves "
    "(its api.listen host, localhost, loopback addresses, api.allowed_hosts)"
)
SQLITE_INTEGER_MAX = 2**63 - 1  # SQLite's INTEGER is a signed 64-bit number
# Forgejo's payloads nest a handful of levels (pull_request.head.repo.parent.owner), a
# submission one: 64 is ample, and far below the recursion limit of code that walks them.
MAX_JSON_DEPTH = 64
MAX_PAGE = 200
MAX_EVENTS_PAGE = 1000
IDEMPOTENCY_KEY_MAX = 200
# Forgejo's owner (up to 40) and repository (up to 100) names: letters, digits, -, _ and .,
# never starting with - or . (so never "." or "..", which would change the API path called).
REPO_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,39}/[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
# ASCII digits only: int() also takes "1_0" and other scripts' digits ("١٢"); 25
# digits are past SQLite's range yet short of int()'s 4300-digit limit.
_INTEGER = re.compile(r"-?[0-9]{1,25}")
_PORT = re.compile(r":[0-9]{1,5}")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Submit = Callable[[TaskSpec], Awaitable[tuple[Task, bool]]]
OnWebhook = Callable[[str, dict[str, Any], str | None], Awaitable[int]]


# --- the live feed of task changes ------------------------------------------------------------


class FeedSubscription:
    """One listener's pending changes, coalesced per task: only the latest state waits."""

    def __init__(self) -> None:
        self._pending: dict[int, Task] = {}
        self._ready = asyncio.Event()

    def put(self, task: Task) -> None:
        self._pending.pop(task.id, None)  # re-insert: the order is the order of last change
        self._pending[task.id] = task
        self._ready.set()

    async def next_batch(self) -> list[Task]:
        await self._ready.wait()
        self._ready.clear()
        batch = list(self._pending.values())
        self._pending.clear()
        return batch


class TaskFeed:
    """Broadcasts task changes to every open `GET /events` stream.

    A slow listener cannot grow memory without bound: it holds one pending entry per
    task, the task's newest state.
    """

    def __init__(self) -> None:
        self._subscribers: set[FeedSubscription] = set()

    def publish(self, task: Task) -> None:
        for subscription in self._subscribers:
            subscription.put(task)

    @contextmanager
    def subscribe(self) -> Iterator[FeedSubscription]:
        subscription = FeedSubscription()
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    @property
    def listeners(self) -> int:
        return len(self._subscribers)


# --- wiring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiDeps:
    config: Config
    store: Store
    scheduler: Scheduler
    submit: Submit  # the daemon's API submission: queues and acknowledges on Forgejo
    on_webhook: OnWebhook  # (event, payload, delivery id) → 1 kept to decide, 0 asks nothing
    webhook_secret: Callable[[], bytes | None]  # None: webhooks are not configured
    api_token: Callable[[], str | None]  # re-read on every request so rotation works
    readiness: Callable[[], Awaitable[Mapping[str, bool]]]
    metrics: Metrics
    accepting: Callable[[], bool]  # False while the daemon drains
    feed: TaskFeed = field(default_factory=TaskFeed)
    engines: Callable[[], Mapping[str, bool]] = lambda: {}  # each engine up, by name


@dataclass(frozen=True)
class ApiTuning:
    keepalive: float = 15.0  # seconds between SSE keepalive comments
    cancel_wait: float = 5.0  # how long POST /cancel waits for a running task to stop
    remembered_deliveries: int = 2048  # webhook delivery ids kept to spot replays
    recent_tasks: int = 50  # tasks in the first batch of GET /events besides the active ones


class ApiError(Exception):
    """An answer other than success, with the JSON body to send."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra

    def response(self) -> web.Response:
        return web.json_response({"error": self.message, **self.extra}, status=self.status)


class RequestTimeout(ApiError):
    """408: the connection closes after it (RFC 9110 §15.5.9), the rest of the body unread."""

    def __init__(self, problem: str) -> None:
        super().__init__(408, f"request timeout: {problem}")

    def response(self) -> web.Response:
        response = super().response()
        response.force_close()
        return response


def bad_request(name: str, problem: str) -> ApiError:
    return ApiError(400, f"{name}: {problem}", field=name)


class DeliveryLog:
    """Webhook delivery ids seen lately (bounded, least recently seen forgotten first)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, delivery: str) -> bool:
        return delivery in self._seen

    def add(self, delivery: str) -> None:
        self._seen[delivery] = None
        self._seen.move_to_end(delivery)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)


# --- plain functions: parsing requests, shaping answers ---------------------------------------


@dataclass(frozen=True)
class Submission:
    agent: str
    repo: str
    number: int | None
    prompt: str
    kind: TaskKind


def load_json(body: bytes, *, exact: bool = False) -> Any:
    """A body's JSON value; ApiError(400) when it is not JSON or nests too deep. `exact`:
    fractions and exponents as Decimal (JSON Schema counts 5.0 and 5e0 as integers)."""
    value: Any = None
    try:
        value = json.loads(body, parse_float=Decimal) if exact else json.loads(body)
        too_deep = nesting_depth(value) > MAX_JSON_DEPTH  # parsed, it may still break code later
    except RecursionError:  # the parser recurses per level: deep enough, it gives up
        too_deep = True
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body: not valid JSON ({exc})", field="body") from None
    if too_deep:
        raise bad_request("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def nesting_depth(value: Any) -> int:
    """How deep arrays and objects nest in a parsed JSON value (a loop: no recursion)."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in item)
    return deepest


def parse_submission(body: bytes, agents: Sequence[str]) -> Submission:
    """The task a POST /tasks body asks for; ApiError(400) naming the field otherwise."""
    data = load_json(body, exact=True)
    if not isinstance(data, dict):
        raise bad_request("body", f"must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"agent", "repo", "number", "prompt", "kind"})
    if unknown:
        raise bad_request(unknown[0], "unknown field (known: agent, repo, number, prompt, kind)")
    agent = _text(data, "agent")
    canonical = {name.lower(): name for name in agents}
    if agent.lower() not in canonical:
        known = ", ".join(agents)
        raise bad_request("agent", f"unknown agent {agent!r} (configured: {known})")
    repo = _text(data, "repo")
    if not REPO_NAME.fullmatch(repo):
        raise bad_request("repo", f"must be owner/name as Forgejo names them, got {repo!r:.160}")
    number = data.get("number")
    if isinstance(number, Decimal):
        number = integral(number)
    if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
        raise bad_request("number", f"must be an issue or pull request number, got {number!r:.80}")
    if number is not None and not 1 <= number <= SQLITE_INTEGER_MAX:
        raise bad_request("number", f"must be between 1 and {SQLITE_INTEGER_MAX}")
    kind = data.get("kind", str(TaskKind.API))
    if not isinstance(kind, str) or kind not in {k.value for k in TaskKind}:
        kinds = " | ".join(k.value for k in TaskKind)
        raise bad_request("kind", f"{kind!r:.80} is not one of {kinds}")
    prompt = _text(data, "prompt")
    return Submission(canonical[agent.lower()], repo, number, prompt, TaskKind(kind))


def integral(number: Decimal) -> int | Decimal:
    """7.0 and 7e0 as the integer 7 (JSON Schema's integers: the document's `number`);
    anything else unchanged. Bounded first: int() of 1e999999999 would take the memory."""
    # adjusted() (the leading digit's exponent) first: abs() of 1e999999999 overflows too.
    in_range = number.is_finite() and number.adjusted() < 19 and abs(number) <= SQLITE_INTEGER_MAX
    return int(number) if in_range and number == number.to_integral_value() else number


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise bad_request(name, "required, a non-empty string")
    return value.strip()


def idempotency_key(header: str | None) -> str:
    """The store key of an API submission: the client's Idempotency-Key, or a fresh one."""
    if header is None:
        return f"api/{uuid.uuid4()}"
    key = header.strip()
    if not key or len(key) > IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise bad_request(
            "Idempotency-Key", f"must be 1 to {IDEMPOTENCY_KEY_MAX} printable characters"
        )
    return f"api/{key}"


def submission_spec(submission: Submission, key: str) -> TaskSpec:
    return TaskSpec(
        agent=submission.agent,
        kind=submission.kind,
        repo=submission.repo,
        number=submission.number,
        idempotency_key=key,
        requested_by="api",
        request=submission.prompt,
        source=TriggerSource.API,
    )


def bounded_int(raw: str, name: str, low: int, high: int) -> int:
    """An integer sent as text, between low and high; ApiError(400) naming it otherwise."""
    text = raw.strip()
    if not _INTEGER.fullmatch(text) or not low <= int(text) <= high:
        raise bad_request(name, f"must be an integer between {low} and {high}, got {raw!r:.40}")
    return int(text)


def int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    return bounded_int(raw, name, low, high)


def state_param(query: Mapping[str, str]) -> TaskState | None:
    raw = query.get("state")
    if not raw:
        return None
    try:
        return TaskState(raw)
    except ValueError:
        choices = " | ".join(s.value for s in TaskState)
        raise bad_request("state", f"{raw!r} is not one of {choices}") from None


def last_event_id(header: str | None, after: int) -> int:
    """Where a stream resumes: Last-Event-ID (a reconnect) wins over ?after=."""
    if header is None or not header.strip():
        return after
    return bounded_int(header, "Last-Event-ID", 0, SQLITE_INTEGER_MAX)


def task_json(task: Task, position: int | None = None) -> dict[str, Any]:
    spec = task.spec
    return {
        "id": task.id,
        "agent": spec.agent,
        "kind": str(spec.kind),
        "source": str(spec.source),
        "repo": spec.repo,
        "number": spec.number,
        "thread": spec.thread,
        "is_pull": spec.is_pull,
        "requested_by": spec.requested_by,
        "request": spec.request,
        "hop": spec.hop,
        "state": str(task.state),
        "position": position if task.state is TaskState.QUEUED else None,
        "attempts": task.attempts,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "duration_ms": task.duration_ms,
        "cost_usd": task.cost_usd,
        "num_turns": task.num_turns,
        "session_id": task.session_id,
        "result": task.result,
        "error": task.error,
        "links": list(task.links),
        "tracking_comment_id": task.tracking_comment_id,
    }


def event_json(event: TaskEvent) -> dict[str, Any]:
    return {
        "task_id": event.task_id,
        "seq": event.seq,
        "ts": event.ts,
        "type": event.type,
        "summary": event.summary,
        "data": event.data,
    }


def sse_message(data: str, *, id: int | None = None, event: str | None = None) -> bytes:
    """One Server-Sent Event; a multi-line payload becomes several data: lines."""
    lines = [f"id: {id}"] if id is not None else []
    if event is not None:
        lines.append(f"event: {event}")
    lines += [f"data: {line}" for line in data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


def ends_run(event: TaskEvent) -> bool:
    """A `state` event recording a final state: the stream may end once the task agrees."""
    if event.type != "state" or not event.data:
        return False
    try:
        state = json.loads(event.data).get("state")
    except (ValueError, AttributeError):
        return False
    return state in {s.value for s in TaskState if s.is_final}


def bearer_matches(header: str | None, token: str | None) -> bool:
    if not token or not header:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:  # aiohttp keeps bytes that are not UTF-8 as surrogates: give those back as sent
        given_bytes = given.strip().encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given_bytes, token.encode())


def host_allowed(header: str | None, listen_host: str, allowed_hosts: Sequence[str]) -> bool:
    """Whether a Host header names this daemon: its listen host, localhost, a loopback
    address or one of allowed_hosts, with or without a port.

    A DNS-rebinding page reaches a loopback daemon under the attacker's own name, so
    a name we were not told about is refused even though the connection is local.
    """
    if header is None:
        return True  # HTTP/1.0 without Host: no browser sends that, so no rebinding page
    name = host_name(header)
    if name is None:
        return False
    served = {"localhost", host_name_of(listen_host)} | {host_name_of(h) for h in allowed_hosts}
    if name in served:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback  # 127.0.0.0/8 and ::1
    except ValueError:
        return False


def host_name(header: str) -> str | None:
    """The host of a Host header, without port, brackets or a final dot, lower case;
    None when it is malformed."""
    value = header.strip().lower()
    if value.startswith("["):  # [v6]:port
        name, bracket, port = value[1:].partition("]")
        return name if bracket and name and (not port or _PORT.fullmatch(port)) else None
    name, colon, port = value.partition(":")
    if colon and not _PORT.fullmatch(colon + port):
        return None
    return name.rstrip(".") or None


def host_name_of(configured: str) -> str:
    """A configured host (api.listen's host, an api.allowed_hosts entry) as host_name
    gives it for a Host header."""
    return configured.strip().lower().strip("[]").rstrip(".")


# What str.strip() removes (str.isspace), as a class JSON Schema's regexes and Python's read
# alike: the document's patterns then accept exactly the padded values the API strips.
SPACE_CLASS = r"[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def agent_pattern(names: Sequence[str]) -> str:
    """A JSON Schema pattern for the configured agents as parse_submission takes them:
    any case (str.lower, which also maps the Kelvin sign to k), padded with white space."""

    def letter(char: str) -> str:
        if char in "-_":
            return char  # plain outside a class: no escape some regex dialects refuse
        if not char.isascii() or not char.isalnum():
            return re.escape(char)
        if not char.isalpha():
            return char
        kelvin = r"\u212a" if char.lower() == "k" else ""
        return f"[{char.lower()}{char.upper()}{kelvin}]"

    choices = "|".join("".join(letter(c) for c in name) for name in names)
    return f"^{SPACE_CLASS}*(?:{choices}){SPACE_CLASS}*$"


def pause_json(pause: AgentPause | None) -> dict[str, Any] | None:
    if pause is None:
        return None
    return {"until": pause.until, "reason": pause.reason, "cause": pause.cause}


def served_document(document: dict[str, Any], agents: Sequence[str]) -> dict[str, Any]:
    """web/openapi.json with what only the config knows: the agents a task may be for."""
    served: dict[str, Any] = json.loads(json.dumps(document))  # the file's copy stays as read
    agent = served["components"]["schemas"]["Submission"]["properties"]["agent"]
    agent["pattern"] = agent_pattern(agents)
    agent["description"] = f"A configured agent: {', '.join(agents)} (any case)"
    [name] = served["paths"]["/agents/{name}/resume"]["post"]["parameters"]
    name["schema"]["pattern"] = agent_pattern(agents)
    return served


# --- the application --------------------------------------------------------------------------

API_KEY: web.AppKey[Api] = web.AppKey("api")


def build_app(deps: ApiDeps, *, tuning: ApiTuning | None = None) -> web.Application:
    api = Api(deps, tuning or ApiTuning())
    app = web.Application(
        middlewares=[_errors, _check_host, _authenticate],
        client_max_size=deps.config.api.max_body_bytes,
    )
    app[API_KEY] = api
    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(api.on_shutdown)
    app.on_cleanup.append(api.on_cleanup)
    app.router.add_get("/", api.index)
    app.router.add_get("/static/{name}", api.static)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/openapi.json", api.openapi)
    app.router.add_get("/agents", api.agents)
    app.router.add_post("/agents/{name}/resume", api.resume_agent)
    app.router.add_post("/tasks", api.submit_task)
    app.router.add_post("/task", api.submit_task)  # the older spelling, kept for scripts
    app.router.add_get("/tasks", api.list_tasks)
    app.router.add_get(r"/tasks/{id:\d+}", api.show_task)
    app.router.add_get(r"/tasks/{id:\d+}/events", api.task_events)
    app.router.add_post(r"/tasks/{id:\d+}/cancel", api.cancel_task)
    app.router.add_get("/events", api.feed_events)
    app.router.add_post("/hooks/forgejo", api.forgejo_webhook)
    return app


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure answers JSON `{"error": ...}`; an unexpected one is logged, not leaked."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"{exc.reason.lower()}: {request.method} {request.path}"
        response = ApiError(exc.status, message).response()
        if "Allow" in exc.headers:  # a 405 names the methods the resource has (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("api_request_failed", method=request.method, path=request.path)
        return ApiError(500, "internal error: see the daemon log").response()


@web.middleware
async def _check_host(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    settings = request.app[API_KEY].deps.config.api
    host = request.headers.get("Host")
    if not host_allowed(host, settings.host, settings.allowed_hosts):
        # Worth a warning: a proxy or Forgejo using a name not in api.allowed_hosts shows here.
        log.warning("api_host_refused", host=ascii(host)[:120], path=request.path)
        raise ApiError(421, MISDIRECTED, field="Host")
    return await handler(request)


@web.middleware
async def _authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    resource = request.match_info.route.resource
    if resource is not None and resource.canonical in PUBLIC_PATHS:
        return await handler(request)
    api = request.app[API_KEY]
    if not bearer_matches(request.headers.get("Authorization"), api.token()):
        # The same answer for every path, before any lookup: it says nothing about what exists.
        return web.json_response(
            {"error": UNAUTHORIZED}, status=401, headers={"WWW-Authenticate": "Bearer"}
        )
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


async def _unless_closing(awaitable: Awaitable[T], closing: asyncio.Event) -> T | None:
    """The awaitable's result, or None as soon as the app starts shutting down."""
    job = asyncio.ensure_future(awaitable)
    stop = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait({job, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not job.done():
            job.cancel()
    return job.result() if job.done() and not job.cancelled() else None


@contextmanager
def _stream_failure(event: str) -> Iterator[None]:
    """A store failure mid-stream ends the stream (the client reconnects and resumes);
    the headers are sent, so there is no error response left to give."""
    try:
        yield
    except StoreError as exc:
        log.warning(event, error=str(exc))


class EventStream:
    """A text/event-stream response; writes fail with ConnectionError once the client left."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: pass events through unbuffered
            }
        )

    async def open(self) -> None:
        await self.response.prepare(self._request)
        await self.response.write(b"retry: 2000\n: stream open\n\n")

    async def send(self, data: Any, *, id: int | None = None, event: str | None = None) -> None:
        await self.response.write(sse_message(json.dumps(data), id=id, event=event))

    async def keepalive(self) -> None:
        await self.response.write(b": keepalive\n\n")


class Api:
    """The request handlers and what they share: deps, tuning, replay memory, shutdown."""

    def __init__(self, deps: ApiDeps, tuning: ApiTuning) -> None:
        self.deps = deps
        self.tuning = tuning
        self.deliveries = DeliveryLog(tuning.remembered_deliveries)
        self.closing = asyncio.Event()
        self.openapi_document = served_document(
            json.loads(OPENAPI_FILE.read_text(encoding="utf-8")), deps.config.agent_names
        )
        self._cancels: set[asyncio.Task[Task]] = set()

    def token(self) -> str | None:
        try:
            return self.deps.api_token()
        except OSError as exc:  # a token file mid-rotation: refuse rather than fail open
            log.error("api_token_unreadable", error=exc.strerror)
            return None

    async def on_shutdown(self, app: web.Application) -> None:
        self.closing.set()  # open event streams end now instead of holding up the shutdown

    async def on_cleanup(self, app: web.Application) -> None:
        if self._cancels:
            await asyncio.wait(self._cancels, timeout=self.tuning.cancel_wait)

    def _position(self, task: Task) -> int | None:
        return self.deps.scheduler.position(task.id) if task.state is TaskState.QUEUED else None

    def _task_json(self, task: Task) -> dict[str, Any]:
        return task_json(task, self._position(task))

    async def _task(self, request: web.Request) -> Task:
        task_id = bounded_int(request.match_info["id"], "id", 1, SQLITE_INTEGER_MAX)
        task = await self.deps.store.get(task_id)
        if task is None:
            raise ApiError(404, f"no task {task_id}")
        return task

    async def _body(self, request: web.Request) -> bytes:
        limit = self.deps.config.api.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"body of {request.content_length} bytes is over the {limit} limit")
        timeout = self.deps.config.api.body_timeout
        try:
            async with asyncio.timeout(timeout):  # aiohttp itself would wait for ever
                return await request.read()  # aiohttp stops reading past client_max_size
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"body is over the {limit} bytes limit") from None
        except TimeoutError:
            log.info("api_request_timeout", part="body", timeout=timeout, path=request.path)
            raise RequestTimeout(f"the body did not arrive within {timeout:g}s") from None

    # --- the status page ---

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise ApiError(404, f"no static file {name!r}")
        headers = {"Cache-Control": "no-cache", "Content-Type": STATIC_FILES[name]}
        return web.FileResponse(WEB_DIR / name, headers=headers)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi_document)

    # --- health and metrics ---

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {}
        try:
            checks = {name: bool(ok) for name, ok in (await self.deps.readiness()).items()}
        except Exception as exc:
            log.warning("readiness_probe_failed", error=f"{type(exc).__name__}: {exc}")
            checks = {"readiness_probe": False}
            body["error"] = f"{type(exc).__name__}: {exc}"
        checks["accepting"] = self.deps.accepting()
        failing = sorted(name for name, ok in checks.items() if not ok)
        # Each engine up or down, as the readiness ping just found: one engine of a pool
        # down is shown here without failing `docker` while the agents have another.
        engines = dict(self.deps.engines())
        body |= {"ready": not failing, "checks": checks, "failing": failing, "engines": engines}
        return web.json_response(body, status=503 if failing else 200)

    async def metrics(self, request: web.Request) -> web.Response:
        scheduler = self.deps.scheduler
        try:
            counts = await self.deps.store.counts()
        except StoreError as exc:  # still answer: the event counters matter most then
            log.warning("metrics_counts_failed", error=str(exc))
            counts = dict(self.deps.metrics.snapshot.counts)
        self.deps.metrics.observe_queue(
            QueueSnapshot(
                counts=counts,
                agents=self.deps.config.agent_names,
                queue_depth=scheduler.queue_depth(),
                running=len(scheduler.running_ids()),
                paused=frozenset(scheduler.paused()),
                engines=dict(self.deps.engines()),
            )
        )
        body, content_type = self.deps.metrics.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    # --- tasks ---

    async def agents(self, request: web.Request) -> web.Response:
        counts = await self.deps.store.counts()
        running = self.deps.scheduler.running_by_agent()
        paused = self.deps.scheduler.paused()
        up = self.deps.engines()
        return web.json_response(
            [
                {
                    "name": agent.name,
                    "role": str(agent.role),
                    "max_concurrency": agent.max_concurrency,
                    "running": running.get(agent.name, 0),
                    "queued": counts.get((agent.name, TaskState.QUEUED), 0),
                    "paused": pause_json(paused.get(agent.name)),
                    "engines": [
                        {"name": engine.name, "up": up.get(engine.name, True)}
                        for engine in agent.on_engines
                    ],
                }
                for agent in self.deps.config.agents
            ]
        )

    async def resume_agent(self, request: web.Request) -> web.Response:
        """Lift an agent's pause (a usage limit, a daily budget) before it ends."""
        canonical = {name.lower(): name for name in self.deps.config.agent_names}
        name = canonical.get(request.match_info["name"].strip().lower())
        if name is None:
            raise ApiError(404, f"no agent {request.match_info['name']!r:.80}", field="name")
        resumed = await self.deps.scheduler.resume(name, by="api")
        log.info("api_agent_resume", agent=name, resumed=resumed)
        return web.json_response({"name": name, "resumed": resumed})

    async def submit_task(self, request: web.Request) -> web.Response:
        if not self.deps.accepting():
            raise ApiError(503, SHUTTING_DOWN)
        if request.content_type != "application/json":  # aiohttp: lower case, no parameters
            sent = request.headers.get("Content-Type", "none")
            raise ApiError(415, f"Content-Type must be application/json, got {sent!r:.80}")
        key = idempotency_key(request.headers.get("Idempotency-Key"))
        submission = parse_submission(await self._body(request), self.deps.config.agent_names)
        if not self.deps.config.forgejo.serves(submission.repo):
            log.warning("trigger_refused", reason="repository_not_configured", repo=submission.repo)
            raise ApiError(403, str(RepositoryNotServed(submission.repo)), field="repo")
        try:
            task, created = await self.deps.submit(submission_spec(submission, key))
        except SchedulerError as exc:
            raise ApiError(503, str(exc)) from None
        log.info("api_task_submitted", task_id=task.id, agent=task.spec.agent, created=created)
        return web.json_response(
            {"task_id": task.id, "state": str(task.state), "position": self._position(task)},
            status=201 if created else 200,
            headers={"Location": f"/tasks/{task.id}"},
        )

    async def list_tasks(self, request: web.Request) -> web.Response:
        query = request.query
        state = state_param(query)
        limit = int_param(query, "limit", 50, 1, MAX_PAGE)
        before = int_param(query, "cursor", 0, 1, 2**63 - 1) or None
        agent = query.get("agent") or None
        tasks = await self.deps.store.list_tasks(
            state=state, agent=agent, limit=limit + 1, before_id=before
        )
        page, more = tasks[:limit], len(tasks) > limit
        return web.json_response(
            {
                "tasks": [self._task_json(task) for task in page],
                "next_cursor": str(page[-1].id) if more else None,
            }
        )

    async def show_task(self, request: web.Request) -> web.Response:
        return web.json_response(self._task_json(await self._task(request)))

    async def cancel_task(self, request: web.Request) -> web.Response:
        task = await self._task(request)
        if task.state not in (TaskState.QUEUED, TaskState.RUNNING):
            raise ApiError(
                409, f"task {task.id} is {task.state}: nothing to cancel", state=str(task.state)
            )
        # A running task takes up to the runner's stop grace to end: answer 202 by then.
        job = asyncio.create_task(self.deps.scheduler.cancel(task.id, by="api"))
        self._cancels.add(job)
        job.add_done_callback(self._cancels.discard)
        done, _ = await asyncio.wait({job}, timeout=self.tuning.cancel_wait)
        task = job.result() if done else (await self.deps.store.get(task.id) or task)
        log.info("api_task_cancel", task_id=task.id, state=str(task.state))
        return web.json_response(self._task_json(task), status=202)

    async def task_events(self, request: web.Request) -> web.StreamResponse:
        task = await self._task(request)
        after = int_param(request.query, "after", 0, 0, 2**63 - 1)
        if "text/event-stream" not in request.headers.get("Accept", ""):
            limit = int_param(request.query, "limit", MAX_EVENTS_PAGE, 1, MAX_EVENTS_PAGE)
            events = await self.deps.store.events(task.id, after, limit)
            return web.json_response([event_json(event) for event in events])
        after = last_event_id(request.headers.get("Last-Event-ID"), after)
        stream = EventStream(request)
        with suppress(ConnectionError), _stream_failure("task_event_stream_failed"):
            await stream.open()
            await self._follow(stream, task.id, after)
        return stream.response

    async def _follow(self, stream: EventStream, task_id: int, after: int) -> None:
        """Send the log after `after`, then new events as stored, until the task ends."""
        store = self.deps.store
        check_end = True  # the task may have ended before this client (re)connected
        while not self.closing.is_set():
            if check_end:
                task = await store.get(task_id)
                if task is not None and task.state.is_final:
                    while rest := await store.events(task_id, after, MAX_EVENTS_PAGE):
                        after = await self._send_events(stream, rest)
                    await stream.send({"task_id": task_id, "state": str(task.state)}, event="end")
                    return
            waiting = store.wait_for_events(task_id, after, max_wait=self.tuning.keepalive)
            events = await _unless_closing(waiting, self.closing)
            if events is None:
                return
            if events:
                after = await self._send_events(stream, events)
            else:
                await stream.keepalive()
            check_end = not events or any(ends_run(event) for event in events)

    @staticmethod
    async def _send_events(stream: EventStream, events: Sequence[TaskEvent]) -> int:
        """Send events in order; the seq of the last one sent."""
        for event in events:
            await stream.send(event_json(event), id=event.seq)
        return events[-1].seq

    async def feed_events(self, request: web.Request) -> web.StreamResponse:
        """Task changes as they happen, after a first batch: active and recent tasks."""
        stream = EventStream(request)
        with (
            self.deps.feed.subscribe() as subscription,
            suppress(ConnectionError),
            _stream_failure("feed_stream_failed"),
        ):
            await stream.open()
            for task in await self._feed_snapshot():
                await stream.send(self._task_json(task), event="task")
            while not self.closing.is_set():
                waiting = asyncio.wait_for(subscription.next_batch(), self.tuning.keepalive)
                try:
                    batch = await _unless_closing(waiting, self.closing)
                except TimeoutError:
                    await stream.keepalive()
                    continue
                for task in batch or ():
                    await stream.send(self._task_json(task), event="task")
        return stream.response

    async def _feed_snapshot(self) -> list[Task]:
        store = self.deps.store
        found: dict[int, Task] = {}
        for state in (TaskState.RUNNING, TaskState.QUEUED):
            for task in await store.list_tasks(state=state, limit=MAX_PAGE):
                found[task.id] = task
        for task in await store.list_tasks(limit=self.tuning.recent_tasks):
            found.setdefault(task.id, task)
        return sorted(found.values(), key=lambda task: task.id)

    # --- webhooks ---

    async def forgejo_webhook(self, request: web.Request) -> web.Response:
        try:
            with PRECEDENCE.first():  # a person waits for its 👀: the streams wait
                accepted = await self._webhook(request)
        except ApiError as exc:
            self.deps.metrics.webhook(_WEBHOOK_RESULTS.get(exc.status, "error"))
            log.info("webhook_refused", status=exc.status, reason=exc.message)
            raise
        if accepted is None:
            self.deps.metrics.webhook("duplicate")
            return web.json_response({"duplicate": True})
        self.deps.metrics.webhook("accepted")
        return web.json_response({"accepted": accepted}, status=202)

    async def _webhook(self, request: web.Request) -> int | None:
        """Tasks created by a delivery; None for a replay. ApiError when refused."""
        if not self.deps.accepting():
            raise ApiError(503, "shutting down: not accepting webhooks")
        try:
            secret = self.deps.webhook_secret()
        except OSError as exc:
            log.error("webhook_secret_unreadable", error=exc.strerror)
            raise ApiError(503, "webhook secret unreadable: see the daemon log") from None
        if not secret:
            raise ApiError(404, "webhooks not configured (forgejo.webhook_secret_file)")
        body = await self._body(request)
        if not verify_signature(secret, body, request.headers):
            raise ApiError(401, "missing or invalid webhook signature")
        delivery = delivery_id(request.headers)
        if delivery is not None and delivery in self.deliveries:
            log.info("webhook_duplicate", delivery=delivery)
            return None
        event = event_name(request.headers)
        if event is None:
            raise bad_request("X-Forgejo-Event", "header missing")
        payload = load_json(body)
        if not isinstance(payload, dict):
            raise bad_request("body", f"must be a JSON object, got {type(payload).__name__}")
        try:
            accepted = await self.deps.on_webhook(event, payload, delivery)
        except ForgejoDataError as exc:
            raise ApiError(400, str(exc), field="body") from None
        if delivery is not None:  # only now: a delivery that failed may be redelivered
            self.deliveries.add(delivery)
        log.info("webhook_accepted", webhook_event=event, delivery=delivery, tasks=accepted)
        return accepted


_WEBHOOK_RESULTS = {
    400: "malformed",
    401: "bad_signature",
    404: "not_configured",
    413: "too_large",
    503: "refused",
}
