"""Work a person waits for goes before the agents' output: one process-wide precedence.

The daemon runs one event loop. While twenty runs stream, each turn of it parses their
lines (runner/execution.py gives each run a slice of the turn), and every await of a
webhook's way to its 👀 waits out such a turn: a dozen awaits, a dozen turns. A hold
(an API request from its accept to its answer, api/connections.py; `with
PRECEDENCE.first():` around deciding a webhook and acknowledging a task) makes the
streams step aside at their next slice, and the store's event lane between two pieces,
until no hold is left: the turns meanwhile are the person's work and the I/O under it.
Claude's output waits in Docker's pipe; nothing of it is lost or reordered.

A hold lapses after HOLD_FOR seconds: one that waits on a slow Forgejo, or an idle
connection, must not stop the streams for as long as that takes. Taking a hold needs no
await; the streams that step aside wait on one future, resolved when the last hold that
has not lapsed is released.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

HOLD_FOR = 0.1  # seconds one hold may keep the streams waiting


class Precedence:
    """Holds taken by work a person waits for; the streams' `step_aside` waits them out."""

    def __init__(
        self, *, hold_for: float = HOLD_FOR, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._hold_for = hold_for
        self._clock = clock
        self._holds: dict[int, float] = {}  # open holds: their number → when each lapses
        self._taken = 0  # holds taken so far: the next one's number
        self._until = 0.0  # the latest lapse of an open hold: the streams wait until then
        # Resolved when the last hold that has not lapsed ends; made in the loop that
        # waits on it (a module's asyncio.Event would be bound to the first such loop).
        self._calm: asyncio.Future[None] | None = None

    @contextmanager
    def first(self) -> Iterator[None]:
        """Hold the streams for the block (at most `hold_for` seconds of it)."""
        release = self.take()
        try:
            yield
        finally:
            release()

    def take(self) -> Callable[[], None]:
        """A hold that lasts until the returned function is called (again does nothing),
        or `hold_for` seconds: for work that spans callbacks, such as a request."""
        number, self._taken = self._taken, self._taken + 1
        lapses = self._clock() + self._hold_for
        self._holds[number] = lapses
        self._until = max(self._until, lapses)
        return functools.partial(self._release, number)

    def _release(self, number: int) -> None:
        if self._holds.pop(number, None) is None:
            return  # released before
        self._until = max(self._holds.values(), default=0.0)
        if self.held() or self._calm is None:
            return
        calm, self._calm = self._calm, None
        if not calm.done() and not calm.get_loop().is_closed():
            calm.set_result(None)

    def held(self) -> bool:
        """Whether a stream should step aside now."""
        return self._clock() < self._until

    @property
    def open_holds(self) -> int:
        """Holds taken and not released (lapsed ones included)."""
        return len(self._holds)

    async def step_aside(self) -> None:
        """Until no hold is left, or the holds' time is up."""
        while self.held():
            loop = asyncio.get_running_loop()
            if self._calm is None or self._calm.get_loop() is not loop:
                self._calm = loop.create_future()
            with suppress(TimeoutError):  # (shielded: the other streams wait on it too)
                await asyncio.wait_for(asyncio.shield(self._calm), self._until - self._clock())


PRECEDENCE = Precedence()  # one per process: the daemon runs one event loop
