"""Bounded connections for the HTTP API: read timeouts, an idle timeout, a connection cap.

aiohttp on its own waits forever for a slow request head or body and accepts every
connection until the process runs out of file descriptors; then the whole daemon
stops (polling cannot even read a token file) and asyncio logs each failed accept().
Here each connection of the listener is a `GuardedRequestHandler`:

- the request line and headers must arrive within `api.header_timeout` of their first
  byte, or the client gets 408 and the connection closes (HTTP allows 408 once a
  request has begun; an idle connection is closed silently by the idle timeout);
- between requests, aiohttp's keep-alive timer closes it after `api.idle_timeout`;
- beyond `ConnectionLimits.max_connections` (derived from RLIMIT_NOFILE) a new
  connection is closed at once, before anything is read from it;
- the body timeout lives with the request handlers (`Api._body`): aiohttp has none;
- from its accept (on a kept-alive connection: its first byte) to its answer, a
  request holds the agents' streams back (claude_hooks/precedence.py): the API is how
  people and Forgejo reach the daemon.

`AcceptErrorLog` turns asyncio's one-record-per-failed-accept() into one record per
interval with a count, should the descriptors run out anyway (another part of the
process holding them).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from claude_hooks.precedence import PRECEDENCE

log = structlog.get_logger(__name__)

# Descriptors the rest of the daemon needs besides the API's connections: the store,
# Docker's and Forgejo's connection pools, exec streams of running tasks, log files.
RESERVED_FDS = 64
MIN_CONNECTIONS = 8
# asyncio accepts up to `backlog` sockets per wake-up, and closing a refused one takes
# a few loop turns: four backlogs' worth may be open beyond the cap for a moment.
ACCEPTS_IN_FLIGHT = 4
# asyncio.selector_events: the message of a failed accept() (EMFILE, ENFILE, ENOBUFS, ENOMEM).
ACCEPT_OUT_OF_RESOURCE = "socket.accept() out of system resource"
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int  # open API connections at once; the next ones are closed at once
    backlog: int  # the listen() queue, and how many sockets one wake-up accepts


class FileLimitTooLow(Exception):
    """RLIMIT_NOFILE leaves no room for API connections beside the daemon's own files."""


def connection_limits(open_files: int) -> ConnectionLimits:
    """The cap and listen backlog for an open-file limit: half of what the daemon's own
    descriptors and a burst of accepts leave, so connections never exhaust the limit."""
    backlog = min(128, max(4, open_files // 64))
    cap = (open_files - RESERVED_FDS - ACCEPTS_IN_FLIGHT * backlog) // 2
    if cap < MIN_CONNECTIONS:
        raise FileLimitTooLow(
            f"the open-file limit (RLIMIT_NOFILE) is {open_files}: too low for the API's "
            f"connections; raise it (LimitNOFILE= in the systemd unit, `ulimit -n`) to "
            f"at least {RESERVED_FDS + ACCEPTS_IN_FLIGHT * 4 + 2 * MIN_CONNECTIONS}"
        )
    return ConnectionLimits(max_connections=cap, backlog=backlog)


def open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class ConnectionGuard:
    """Counts the listener's open connections; says when one more is one too many."""

    def __init__(self, limits: ConnectionLimits, refusals: RateLimitedLog) -> None:
        self.limits = limits
        self.open = 0
        self._refusals = refusals

    def admit(self) -> bool:
        if self.open >= self.limits.max_connections:
            self._refusals.record(open=self.open, max_connections=self.limits.max_connections)
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with the connection cap and a request-head timeout.

    The head timer reads two of aiohttp's own fields (`_waiter`: the handler waits for
    the next request; `_messages`: parsed heads not yet handled), the same state its
    keep-alive timer uses; the tests of this module pin the behaviour.
    """

    def __init__(
        self, manager: web.Server, *, guard: ConnectionGuard, header_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._admitted = False
        self._precedence: Callable[[], None] | None = None  # ends this request's hold

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit():
            # Nothing read, nothing answered: the descriptor is released now.
            cast(asyncio.Transport, transport).abort()
            return
        self._admitted = True
        self._precedence = PRECEDENCE.take()  # a request on its way (see data_received)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admitted:
            self._admitted = False
            self._guard.release()
        self._cancel_head_timer()
        self._end_precedence()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting = self._waiter is not None  # between requests: these bytes begin a head
        if waiting and self._precedence is None:
            # From its connection or first byte to its answer, a request goes before the
            # agents' output: the turns until its handler runs are ones a 👀 waited out.
            self._precedence = PRECEDENCE.take()
        super().data_received(data)
        if self._messages:
            self._cancel_head_timer()  # a whole head arrived
        elif waiting and self._head_timer is None:
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self._header_timeout, self._head_timed_out)

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: Callable[[BaseRequest], Awaitable[StreamResponse]],
    ) -> tuple[StreamResponse, bool]:
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._end_precedence()

    def _end_precedence(self) -> None:
        if self._precedence is not None:
            release, self._precedence = self._precedence, None
            release()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self._messages:
            return
        body = b'{"error": "request timeout: the request head did not arrive in time"}'
        self.transport.write(REQUEST_TIMEOUT % (len(body), body))
        log.info("api_request_timeout", part="head", timeout=self._header_timeout)
        self.force_close()  # closes once the 408 is written

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


class GuardedSite(web.BaseSite):
    """A TCP listener whose connections are `GuardedRequestHandler`s of the runner's server."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard,
        handler_args: dict[str, Any],
    ) -> None:
        super().__init__(runner, backlog=guard.limits.backlog)
        self._host, self._port = host, port
        self._guard = guard
        self._handler_args = handler_args

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None, "the runner is set up before its sites start"
        loop = asyncio.get_running_loop()

        def connection() -> GuardedRequestHandler:
            return GuardedRequestHandler(server, loop=loop, guard=self._guard, **self._handler_args)

        self._server = await loop.create_server(
            connection, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


class RateLimitedLog:
    """One log record per interval for an event that may repeat thousands of times a
    second: the first at once, then one per interval carrying how many happened."""

    def __init__(
        self,
        event: str,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        level: str = "error",
    ) -> None:
        self.event = event
        self.level = level
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._count = 0

    def record(self, **fields: Any) -> None:
        self._count += 1
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return
        log.log(
            logging.getLevelNamesMapping()[self.level.upper()],
            self.event,
            count=self._count,
            interval=self.interval,
            **fields,
        )
        self._last, self._count = now, 0


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptErrorLog:
    """An event-loop exception handler: failed accept()s go through a RateLimitedLog,
    everything else to the handler that was there before."""

    def __init__(self, previous: ExceptionHandler | None, limited: RateLimitedLog) -> None:
        self._previous = previous
        self.limited = limited

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_OUT_OF_RESOURCE:
            exc = context.get("exception")
            self.limited.record(error=str(exc) if exc is not None else ACCEPT_OUT_OF_RESOURCE)
        elif self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
