"""`claude-hooks submit | tasks | show | logs | cancel | resume`: the HTTP API from a terminal.

The client reads the API address (api.listen) and the bearer token (api.token_file)
from the same config file as the daemon. Formatting is plain functions over the
API's JSON; the I/O is one ApiClient over aiohttp. Following a task reads its
Server-Sent Events and reconnects with Last-Event-ID when the connection drops
(a daemon restart), so nothing is shown twice or missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp

from claude_hooks.cli.main import EXIT_FAIL, EXIT_OK, AddCommand
from claude_hooks.config import Config, load_config, read_secret
from claude_hooks.daemon.journal import cli_line
from claude_hooks.tasks import TaskKind, TaskState
from claude_hooks.text import format_cost as format_usd

REQUEST_TIMEOUT = 30.0
STREAM_READ_TIMEOUT = (
    60.0  # the server sends a keepalive every 15 s: silence this long is a dead link
)
RECONNECT_DELAY = 1.0
MAX_RECONNECTS = 30  # consecutive failed attempts before giving up (a restart takes seconds)
EVENT_PAGE = 1000
# Events that say what the agent is doing now: the --wait progress line shows the latest.
STEP_TYPES = frozenset(
    {"state", "tool_use", "text", "api_retry", "api_error", "permission_denied", "result", "stderr"}
)
EVENT_MARKS = {
    "init": "▶",
    "text": "»",
    "thinking": "…",
    "tool_use": "→",
    "tool_result": "←",
    "result": "■",
    "state": "●",
    "api_retry": "!",
    "api_error": "!",
    "rate_limit": "!",
    "permission_denied": "!",
    "stderr": "!",
}


class ClientError(Exception):
    """Something the user sees as one line: what failed and where."""


class HttpError(ClientError):
    """The API answered, with a status the command did not expect."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- Server-Sent Events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SseMessage:
    id: str | None
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseParser:
    """Turns text/event-stream chunks into messages (comments and retry lines skipped)."""

    _buffer: str = ""
    _lines: list[str] = field(default_factory=list)

    def feed(self, chunk: str) -> list[SseMessage]:
        self._buffer += chunk.replace("\r\n", "\n").replace("\r", "\n")
        *complete, self._buffer = self._buffer.split("\n")
        messages = []
        for line in complete:
            if line:
                self._lines.append(line)
            elif (message := self._message()) is not None:
                messages.append(message)
        return messages

    def _message(self) -> SseMessage | None:
        lines, self._lines = self._lines, []
        id_, event, data = None, "message", []
        for line in lines:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                id_ = value
            elif name == "event":
                event = value
            elif name == "data":
                data.append(value)
        return SseMessage(id_, event, "\n".join(data)) if data else None


# --- formatting -------------------------------------------------------------------------------


def format_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_age(seconds: float) -> str:
    whole = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit} ago"
    return f"{whole}s ago"


def format_cost(cost: float | None) -> str:
    return "" if cost is None else format_usd(cost)  # as the tracking comment says it


def run_seconds(task: Mapping[str, Any], now: float) -> float | None:
    started = task.get("started_at")
    if started is None:
        return None
    finished = task.get("finished_at")
    return (finished if finished is not None else now) - started


def clip(text: str, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


def format_table(tasks: Sequence[Mapping[str, Any]], now: float, width: int = 120) -> str:
    """The `tasks` listing: one row per task, the request cut to fit the terminal."""
    if not tasks:
        return "no tasks"
    header = ("ID", "STATE", "AGENT", "THREAD", "CREATED", "TIME", "COST", "REQUEST")
    rows = [
        (
            str(task["id"]),
            str(task["state"]) + (f" #{task['position']}" if task.get("position") else ""),
            str(task["agent"]),
            str(task["thread"]),
            format_age(now - task["created_at"]),
            format_elapsed(run_seconds(task, now)),
            format_cost(task.get("cost_usd")),
            str(task.get("request") or ""),
        )
        for task in tasks
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    request_width = max(20, width - sum(widths) - 2 * len(widths))
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, clip(row[-1], request_width)]).rstrip())
    return "\n".join(lines)


def format_pauses(agents: Sequence[Mapping[str, Any]]) -> str:
    """A line per paused agent (its queue waits), shown above the `tasks` table."""
    return "".join(
        f"{agent['name']}: {agent['paused']['reason']} (`claude-hooks resume {agent['name']}`"
        " lifts it now)\n"
        for agent in agents
        if agent.get("paused")
    )


def format_task(task: Mapping[str, Any], now: float) -> str:
    """`show`: every fact about one task, the result text last."""
    fields_ = [
        ("task", f"{task['id']} ({task['state']})"),
        ("agent", task["agent"]),
        ("thread", task["thread"]),
        ("kind", f"{task['kind']} from {task['source']}, requested by {task['requested_by']}"),
        ("position", task.get("position") and f"#{task['position']} in the queue"),
        ("attempts", task.get("attempts")),
        ("created", _timestamp(task.get("created_at"))),
        ("started", _timestamp(task.get("started_at"))),
        ("finished", _timestamp(task.get("finished_at"))),
        ("time", format_elapsed(run_seconds(task, now))),
        ("cost", format_cost(task.get("cost_usd"))),
        ("turns", task.get("num_turns")),
        ("session", task.get("session_id")),
        ("error", task.get("error")),
        *(("link", link) for link in task.get("links") or ()),
    ]
    lines = [f"{name + ':':<10}{value}" for name, value in fields_ if value not in (None, "")]
    lines += ["", "request:", _indent(task.get("request") or "")]
    if task.get("result"):
        lines += ["", "result:", _indent(task["result"])]
    return "\n".join(lines)


def _timestamp(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines()) or "  "


def render_event(event: Mapping[str, Any]) -> str:
    """One readable log line: time, a mark for the kind of step, its summary."""
    clock = datetime.fromtimestamp(event["ts"]).strftime("%H:%M:%S")
    kind = str(event["type"])
    mark = EVENT_MARKS.get(kind, "·")
    indent = "  " if kind == "tool_result" else ""
    return f"{clock} {indent}{mark} {kind}: {event['summary']}"


def final_line(task: Mapping[str, Any], now: float) -> str:
    head = f"task {task['id']} {task['state']}"
    if (seconds := run_seconds(task, now)) is not None:
        head += f" in {format_elapsed(seconds)}"
    parts = [head]
    if task.get("num_turns") is not None:
        parts.append(f"{task['num_turns']} turns")
    if task.get("cost_usd") is not None:
        parts.append(format_cost(task["cost_usd"]))
    line = " · ".join(parts)
    return f"{line} — {task['error']}" if task.get("error") else line


def progress_line(task_id: int, state: str, elapsed: float, step: str, width: int) -> str:
    return clip(f"task {task_id} {state} {format_elapsed(elapsed)} · {step}", width - 1)


# --- the API client ---------------------------------------------------------------------------


class ApiClient:
    def __init__(self, base_url: str, token: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._session = session

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, config: Config) -> AsyncIterator[ApiClient]:
        token = api_token(config)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            yield cls(config.api.base_url, token, session)

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}", **(extra or {})}

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: Sequence[int] = (200,),
    ) -> tuple[int, Any]:
        """(status, JSON body); ClientError for an unreachable daemon or an unexpected status."""
        url = self.base_url + path
        try:
            async with self._session.request(
                method, url, json=body, params=params, headers=self._headers(headers)
            ) as response:
                text = await response.text()
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            raise self._unreachable(exc) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ClientError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        data = _json_or_text(text)
        if status not in ok:
            raise HttpError(status, _http_problem(method, url, status, data))
        return status, data

    def _unreachable(self, exc: Exception) -> ClientError:
        reason = getattr(exc, "os_error", None) or exc
        return ClientError(
            f"cannot reach the claude-hooks API at {self.base_url} ({reason}): "
            "is the daemon running? (`claude-hooks run`, or systemctl --user status claude-hooks)"
        )

    async def events(self, task_id: int, after: int) -> list[dict[str, Any]]:
        params = {"after": str(after), "limit": str(EVENT_PAGE)}
        return (await self.call("GET", f"/tasks/{task_id}/events", params=params))[1]

    async def stream(self, path: str, last_id: str | None) -> AsyncIterator[SseMessage]:
        """One connection's messages; raises ClientError or aiohttp errors when it breaks."""
        url = self.base_url + path
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        timeout = aiohttp.ClientTimeout(total=None, sock_read=STREAM_READ_TIMEOUT)
        try:
            response = await self._session.get(url, headers=self._headers(headers), timeout=timeout)
        except aiohttp.ClientConnectorError as exc:
            raise self._unreachable(exc) from None
        async with response:
            if response.status != 200:
                data = _json_or_text(await response.text())
                raise HttpError(response.status, _http_problem("GET", url, response.status, data))
            parser = SseParser()
            async for chunk in response.content.iter_any():
                for message in parser.feed(chunk.decode("utf-8", errors="replace")):
                    yield message

    async def follow(self, task_id: int, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """A task's events from `after` to its end, across reconnects; then its final record."""
        last_id = str(after) if after else None
        failures = 0
        while True:
            try:
                async for message in self.stream(f"/tasks/{task_id}/events", last_id):
                    failures = 0
                    if message.event == "end":
                        return
                    last_id = message.id or last_id
                    yield message.json()
                problem: ClientError = ClientError(
                    f"the event stream of task {task_id} ended early"
                )
            except HttpError:
                raise  # refused or gone: retrying cannot help
            except ClientError as exc:
                problem = exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = ClientError(f"the event stream of task {task_id} broke: {exc!r}")
            failures += 1
            if failures > MAX_RECONNECTS:
                raise problem
            await asyncio.sleep(RECONNECT_DELAY)  # a daemon restart: resume after last_id


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _http_problem(method: str, url: str, status: int, data: Any) -> str:
    message = data.get("error") if isinstance(data, dict) else str(data).strip()
    hint = " (check api.token_file: it must hold the daemon's token)" if status == 401 else ""
    return f"{method} {url}: HTTP {status}: {message}{hint}"


def api_token(config: Config) -> str:
    file = config.api.token_file
    if file is None:
        raise ClientError(f"{config.path}: api.token_file is not set: the API needs a token")
    try:
        return read_secret(file)
    except OSError as exc:
        raise ClientError(
            f"cannot read the API token {file} (api.token_file): {exc.strerror}"
        ) from None


# --- progress while waiting -------------------------------------------------------------------


class Progress:
    """--wait: one updating line on a terminal, a plain line per step otherwise."""

    def __init__(
        self,
        task_id: int,
        out: TextIO,
        *,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.task_id = task_id
        self.state = "queued"
        self.step = "waiting for a slot"
        self._out = out
        self._tty = tty
        self._clock = clock
        self._started = clock()

    def event(self, event: Mapping[str, Any]) -> None:
        if event["type"] == "state" and event.get("data"):
            self.state = json.loads(event["data"]).get("state") or self.state
        if event["type"] not in STEP_TYPES:
            return
        self.step = f"{event['type']}: {event['summary']}"
        if self._tty:
            self.redraw()
        else:
            elapsed = format_elapsed(self._clock() - self._started)
            print(f"[{elapsed}] task {self.task_id} {self.step}", file=self._out, flush=True)

    def redraw(self) -> None:
        if not self._tty:
            return
        width = shutil.get_terminal_size().columns
        line = progress_line(
            self.task_id, self.state, self._clock() - self._started, self.step, width
        )
        self._out.write("\r\x1b[K" + line)
        self._out.flush()

    def done(self) -> None:
        if self._tty:
            self._out.write("\r\x1b[K")
            self._out.flush()

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(1)
            self.redraw()


# --- commands ---------------------------------------------------------------------------------


Command = Callable[[ApiClient, argparse.Namespace], Awaitable[int]]


def _run(args: argparse.Namespace, command: Command) -> int:
    config = load_config(args.config)

    async def main() -> int:
        async with ApiClient.connect(config) as client:
            return await command(client, args)

    try:
        return asyncio.run(main())
    except ClientError as exc:
        cli_line(f"claude-hooks: {exc}")
        return EXIT_FAIL


async def submit(client: ApiClient, args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    body: dict[str, Any] = {"agent": args.agent, "repo": args.repo, "prompt": prompt}
    if args.issue is not None:
        body["number"] = args.issue
    if args.kind is not None:
        body["kind"] = args.kind
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    _, created = await client.call("POST", "/tasks", body=body, headers=headers, ok=(200, 201))
    task_id = int(created["task_id"])
    print(task_id, flush=True)
    if not args.wait:
        return EXIT_OK
    task = await wait_for(client, task_id, sys.stderr)
    if task.get("result"):
        print(task["result"])
    return EXIT_OK if task["state"] == TaskState.SUCCEEDED else EXIT_FAIL


async def wait_for(client: ApiClient, task_id: int, out: TextIO) -> dict[str, Any]:
    """Follow a task to its end, showing progress on `out`; its final record."""
    progress = Progress(task_id, out, tty=out.isatty())
    ticker = asyncio.create_task(progress.tick())
    try:
        async for event in client.follow(task_id):
            progress.event(event)
    finally:
        ticker.cancel()
        progress.done()
    _, task = await client.call("GET", f"/tasks/{task_id}")
    print(final_line(task, time.time()), file=out, flush=True)
    return task


async def list_tasks(client: ApiClient, args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    if args.state:
        params["state"] = args.state
    if args.agent:
        params["agent"] = args.agent
    _, page = await client.call("GET", "/tasks", params=params)
    _, agents = await client.call("GET", "/agents")
    print(format_pauses(agents), end="")
    print(format_table(page["tasks"], time.time(), shutil.get_terminal_size().columns))
    return EXIT_OK


async def show(client: ApiClient, args: argparse.Namespace) -> int:
    _, task = await client.call("GET", f"/tasks/{args.id}")
    print(format_task(task, time.time()))
    return EXIT_OK


async def logs(client: ApiClient, args: argparse.Namespace) -> int:
    _, task = await client.call("GET", f"/tasks/{args.id}")  # a missing task fails here
    if args.follow:
        async for event in client.follow(args.id):
            print(render_event(event), flush=True)
    else:
        after = 0
        while events := await client.events(args.id, after):
            for event in events:
                print(render_event(event))
            after = events[-1]["seq"]
            if len(events) < EVENT_PAGE:
                break
    _, task = await client.call("GET", f"/tasks/{args.id}")
    print(final_line(task, time.time()))
    return EXIT_OK


async def cancel(client: ApiClient, args: argparse.Namespace) -> int:
    status, task = await client.call("POST", f"/tasks/{args.id}/cancel", ok=(202, 409))
    if status == 409:
        cli_line(f"task {args.id} already {task.get('state')}: nothing to cancel", "warning")
        return EXIT_FAIL
    still = " (still stopping)" if task["state"] == TaskState.RUNNING else ""
    print(f"task {task['id']} {task['state']}{still}")
    return EXIT_OK


async def resume(client: ApiClient, args: argparse.Namespace) -> int:
    _, answer = await client.call("POST", f"/agents/{quote(args.agent, safe='')}/resume")
    if not answer["resumed"]:
        cli_line(f"agent {answer['name']} is not paused: nothing to resume", "warning")
        return EXIT_FAIL
    print(f"agent {answer['name']} resumed")
    return EXIT_OK


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the `claude-hooks` parser."""
    p = add("submit", lambda a: _run(a, submit), "submit a task to an agent through the API")
    p.add_argument("--agent", required=True, help="a configured agent")
    p.add_argument("--repo", required=True, help="owner/name")
    p.add_argument("--issue", type=int, default=None, help="issue or pull request number")
    p.add_argument("--kind", choices=[k.value for k in TaskKind], default=None)
    p.add_argument("--idempotency-key", default=None, help="the same key again: the same task")
    p.add_argument("--wait", action="store_true", help="follow the task; exit 0 if it succeeds")
    p.add_argument("prompt", help="what to do ('-': read it from stdin)")

    p = add("tasks", lambda a: _run(a, list_tasks), "list tasks, newest first")
    p.add_argument("--state", choices=[s.value for s in TaskState], default=None)
    p.add_argument("--agent", default=None)
    p.add_argument("--limit", type=int, default=20)

    p = add("show", lambda a: _run(a, show), "show one task: state, timings, cost, result")
    p.add_argument("id", type=int)

    p = add("logs", lambda a: _run(a, logs), "print a task's event log")
    p.add_argument("id", type=int)
    p.add_argument("-f", "--follow", action="store_true", help="follow until the task ends")

    p = add("cancel", lambda a: _run(a, cancel), "cancel a queued or running task")
    p.add_argument("id", type=int)

    p = add("resume", lambda a: _run(a, resume), "lift an agent's pause (usage limit, budget)")
    p.add_argument("agent", help="a configured agent")
