"""A scripted Anthropic Messages API on 127.0.0.1, for running the real Claude Code CLI.

What the CLI needs (docs/CLAUDE-CLI.md): `POST /v1/messages` (it adds
`?beta=true`) with `stream: true`, answered as server-sent events where every frame
has an `event:` and a `data:` line — `message_start`, then per content block
`content_block_start` / `content_block_delta` / `content_block_stop`, then
`message_delta` with the stop reason, then `message_stop`. A request without
`stream` gets the same message as plain JSON (the CLI falls back to that).

The script is a list of turns; the turn answered is the number of assistant
messages already in the request's conversation, so a retried request gets the same
answer and a conversation longer than the script gets the last turn again.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web

MODEL_FALLBACK = "claude-sonnet-4-5"
USAGE = {"input_tokens": 1200, "output_tokens": 40}  # per message: makes the cost non-zero


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ToolUse:
    name: str
    input: Mapping[str, Any]
    id: str = ""


Block = Text | ToolUse


@dataclass(frozen=True)
class Turn:
    """One assistant message: its content blocks and why it stopped."""

    blocks: tuple[Block, ...]
    stop_reason: str  # "tool_use" | "end_turn"


def bash_turn(command: str, description: str = "Run a command", text: str = "") -> Turn:
    """The model asks to run `command` with the Bash tool."""
    lead = (Text(text),) if text else ()
    return Turn(
        (*lead, ToolUse("Bash", {"command": command, "description": description})), "tool_use"
    )


def final_turn(text: str) -> Turn:
    return Turn((Text(text),), "end_turn")


def turn_index(body: Mapping[str, Any]) -> int:
    """Which turn a request asks for: how many assistant messages its conversation has."""
    messages = body.get("messages") or []
    return sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")


def tool_results(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every tool_result block the request sends back, oldest first."""
    found = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            found += [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    return found


def message_json(
    turn: Turn, message_id: str, model: str, tool_ids: Sequence[str]
) -> dict[str, Any]:
    """The whole assistant message, as a non-streaming response carries it."""
    ids = iter(tool_ids)
    content: list[dict[str, Any]] = []
    for block in turn.blocks:
        if isinstance(block, Text):
            content.append({"type": "text", "text": block.text})
        else:
            content.append(
                {"type": "tool_use", "id": block.id or next(ids), "name": block.name,
                 "input": dict(block.input)}
            )  # fmt: skip
    return {
        "id": message_id, "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": turn.stop_reason, "stop_sequence": None,
        "usage": dict(USAGE),
    }  # fmt: skip


def sse_frames(message: Mapping[str, Any]) -> Iterator[bytes]:
    """The same message as the stream of server-sent events the CLI parses."""
    start = {key: message[key] for key in ("id", "type", "role", "model")}
    start |= {"content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {"input_tokens": USAGE["input_tokens"], "output_tokens": 1}
    yield _frame("message_start", {"type": "message_start", "message": start})
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        yield _frame(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opening},
        )
        yield _frame(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )
        yield _frame("content_block_stop", {"type": "content_block_stop", "index": index})
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    usage = {"output_tokens": USAGE["output_tokens"]}
    yield _frame("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
    yield _frame("message_stop", {"type": "message_stop"})


def _frame(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@dataclass(frozen=True)
class Refusal:
    """An HTTP error the API answers every request with instead of a turn."""

    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str]


class ScriptedMessagesApi:
    """Serves `turns` to whoever asks; records every request it got."""

    def __init__(self, turns: Sequence[Turn], refusal: Refusal | None = None) -> None:
        self.turns = tuple(turns)
        self.refusal = refusal
        self.requests: list[dict[str, Any]] = []  # bodies of POST /v1/messages
        self.headers: list[dict[str, str]] = []  # their headers, in the same order
        self.unscripted: list[str] = []  # "METHOD /path" of anything else asked
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._base_url = ""

    @property
    def base_url(self) -> str:
        return self._base_url

    async def start(self, host: str = "127.0.0.1") -> str:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._base_url = f"http://{host}:{port}"
        return self._base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_request_error", "the body is not JSON")
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.refusal is not None:
            refusal = self.refusal
            return web.json_response(
                dict(refusal.body), status=refusal.status, headers=dict(refusal.headers)
            )
        if not self.turns:
            return _error(500, "api_error", "the script has no turns")
        turn = self.turns[min(turn_index(body), len(self.turns) - 1)]
        number = next(self._ids)
        tool_ids = [f"toolu_scripted_{number}_{i}" for i in range(len(turn.blocks))]
        message = message_json(turn, f"msg_scripted_{number}", body.get("model") or MODEL_FALLBACK,
                               tool_ids)  # fmt: skip
        if not body.get("stream"):
            return web.json_response(message)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in sse_frames(message):
            await response.write(frame)
        await response.write_eof()
        return response

    async def _unknown(self, request: web.Request) -> web.Response:
        self.unscripted.append(f"{request.method} {request.path}")
        return _error(404, "not_found_error", f"{request.method} {request.path} is not scripted")


def _error(status: int, kind: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status)
