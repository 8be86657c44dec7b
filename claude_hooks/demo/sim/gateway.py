"""The door of the simulator's REST API: fault injection, authentication, recording.

Only /api/v1 requests pass through it; other routes (git over HTTP, say) are
left alone. Every API request is recorded with the answer it got, so tests can
assert on what the client sent and tests/contract.py can check both sides
against Forgejo's OpenAPI description.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from claude_hooks.demo.sim.state import SimError, SimState

API_PREFIX = "/api/v1"
LOGIN = web.RequestKey("login", str)  # the authenticated caller's lower-cased login
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RecordedRequest:
    """One API request and the simulator's answer, for asserts and the contract check."""

    method: str
    path: str
    query: MultiDictProxy[str]
    body: Any  # the parsed JSON body, None when there was none
    headers: Mapping[str, str]  # without Authorization
    authenticated: bool  # an Authorization header was sent
    status: int | None  # None: the connection was dropped on purpose
    response_body: bytes
    response_content_type: str
    injected: bool  # answered by fault injection, not by Forgejo semantics

    def response_json(self) -> Any:
        return json.loads(self.response_body) if self.response_body else None


@dataclass(frozen=True)
class Outage:
    """Requests `match(method, path)` selects fail until the outage ends: an error status,
    a dropped connection (status None), after `hang` seconds (past the client's timeout:
    a timeout)."""

    match: Callable[[str, str], bool]
    status: int | None = 500
    hang: float = 0.0


@dataclass
class Faults:
    """What fault injection still has to do to the next API requests."""

    fail: list[tuple[int, float | None]] = field(default_factory=list)  # status, Retry-After
    drop: int = 0
    delay: float = 0.0
    outages: list[Outage] = field(default_factory=list)


def error_response(status: int, message: str, base_url: str) -> web.Response:
    """Forgejo's APIError body."""
    body = {"message": message, "url": f"{base_url}/api/swagger"}
    return web.json_response(body, status=status)


class ApiGateway:
    def __init__(self, state: SimState, base_url: Callable[[], str]) -> None:
        self.state = state
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []  # tests may clear it
        self.all_requests: list[RecordedRequest] = []  # what the contract check reads
        self._base_url = base_url

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/"):
            return await handler(request)
        raw = await request.read() if request.can_read_body else b""
        if self.faults.delay:
            await asyncio.sleep(self.faults.delay)
        outage = next(
            (o for o in self.faults.outages if o.match(request.method, request.path)), None
        )
        if outage is not None and outage.hang:
            await asyncio.sleep(outage.hang)
        if self.faults.drop or (outage is not None and outage.status is None):
            self.faults.drop = max(0, self.faults.drop - (outage is None))
            self._record(request, raw, None, injected=True)
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # aiohttp's way to end a handler without answering
        if outage is not None and outage.status is not None:
            response = error_response(outage.status, "injected failure", self._base_url())
            self._record(request, raw, response, injected=True)
            return response
        if self.faults.fail:
            status, retry_after = self.faults.fail.pop(0)
            response = error_response(status, "injected failure", self._base_url())
            if retry_after is not None:
                response.headers["Retry-After"] = f"{retry_after:g}"
            self._record(request, raw, response, injected=True)
            return response
        response = await self._answer(request, handler)
        self._record(request, raw, response, injected=False)
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.Response:
        try:
            request[LOGIN] = self._authenticate(request)
            response = await handler(request)
        except SimError as exc:
            return error_response(exc.status, exc.message, self._base_url())
        except web.HTTPException as exc:  # no such route or method
            return error_response(exc.status, exc.reason, self._base_url())
        if not isinstance(response, web.Response):
            raise TypeError(f"API handlers answer with web.Response, got {type(response)}")
        return response

    def _authenticate(self, request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token.strip():
            raise SimError(401, "token is required")
        login = self.state.tokens.get(token.strip())
        if login is None:
            raise SimError(401, "user does not exist or the token is invalid")
        return login

    def _record(
        self, request: web.Request, raw: bytes, response: web.Response | None, injected: bool
    ) -> None:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        response_body = response.body if response is not None else b""
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=MultiDictProxy(MultiDict(request.query)),
            body=body,
            headers={k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            authenticated="Authorization" in request.headers,
            status=None if response is None else response.status,
            response_body=response_body if isinstance(response_body, bytes) else b"",
            response_content_type="" if response is None else response.content_type,
            injected=injected,
        )
        self.requests.append(record)
        self.all_requests.append(record)
