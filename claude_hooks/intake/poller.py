"""One notification poll loop per agent: the safety net under the webhooks.

Each poll costs one request when nothing is unread (GET /notifications/new). When
something is, the poller lists the threads updated since its cursor, has the
Intake read each one since that thread's watermark, decide and store the triggers,
and only then marks the thread read: a crash in between re-reads the thread
after the restart, and the idempotency keys make the second reading harmless.

Cursors (the `since` of the listing and one watermark per thread) live in the
store, so a restart neither loses nor replays a window. When Forgejo is down, all
pollers wait on one shared backoff and one log line says so, another when it is back.
An agent whose token file cannot be read is not an outage (Forgejo was never asked):
that poller alone backs off and logs `token_unreadable`, naming the file.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from claude_hooks.config import AgentConfig
from claude_hooks.forgejo.client import ForgejoClient, ForgejoError, TokenUnreadable, rfc3339
from claude_hooks.forgejo.models import ForgejoDataError, NotificationThread, parse_time
from claude_hooks.intake.intake import Intake
from claude_hooks.intake.thread import Watermark
from claude_hooks.metrics import Metrics
from claude_hooks.tasks import TriggerSource

log = structlog.get_logger(__name__)

# A thread seen for the first time is read from a little before the listing cursor:
# Forgejo writes notifications from a queue, so an event can be older than the thread's
# position in the listing. Re-reading a minute is harmless: keys deduplicate.
FIRST_SEEN_SLACK = timedelta(seconds=60)
# On the very first start there is no cursor: unread threads are read this far back.
FIRST_RUN_LOOKBACK = timedelta(days=1)
GONE = (404, 410)  # the issue or repository no longer exists: the thread is noise


class CursorStore(Protocol):
    """Where cursors persist (claude_hooks.store.Store satisfies this)."""

    async def get_cursor(self, name: str) -> str | None: ...
    async def set_cursor(self, name: str, value: str) -> None: ...


def is_outage(error: BaseException) -> bool:
    """Forgejo itself is unreachable or failing (after the client's own retries)."""
    return (
        isinstance(error, ForgejoError)
        and error.retryable
        and not isinstance(error, TokenUnreadable)  # this account's file, not Forgejo
    )


def ends_poll(error: BaseException) -> bool:
    """A failure no thread is to blame for: the whole poll stops and is tried again."""
    return is_outage(error) or isinstance(error, TokenUnreadable)


class SharedBackoff:
    """One backoff for every poller: when Forgejo is down, nobody hammers it.

    The first failure logs `forgejo_unreachable`; each further one doubles the wait
    (capped, with jitter); the first success after that logs `forgejo_recovered`.
    """

    def __init__(
        self,
        *,
        initial: float = 2.0,
        maximum: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._initial = initial
        self._maximum = maximum
        self._clock = clock
        self._jitter = jitter
        self._failures = 0
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def remaining(self) -> float:
        """Seconds every poller should still wait before asking Forgejo again."""
        return max(0.0, self._retry_at - self._clock()) if self.down else 0.0

    def failure(self, error: BaseException) -> float:
        now = self._clock()
        self._failures += 1
        if self._down_since is None:
            self._down_since = now
            log.error("forgejo_unreachable", error=str(error))
        base = min(self._maximum, self._initial * 2 ** min(self._failures - 1, 30))
        wait = base * (0.5 + self._jitter() / 2)  # "equal jitter": never less than half
        self._retry_at = max(self._retry_at, now + wait)
        return self.remaining()

    def success(self) -> None:
        if self._down_since is None:
            return
        after = self._clock() - self._down_since
        log.warning("forgejo_recovered", after=f"{after:.1f}s", failures=self._failures)
        self._down_since, self._failures, self._retry_at = None, 0, 0.0


class Poller:
    """Polls the notifications of one agent account; the Intake takes what they ask for."""

    def __init__(
        self,
        agent: AgentConfig,
        client: ForgejoClient,
        intake: Intake,
        cursors: CursorStore,
        *,
        interval: float,
        metrics: Metrics,
        outage: SharedBackoff | None = None,
        jitter: float = 0.1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.agent = agent.name
        self._token_file = agent.token_file
        self._client = client
        self._intake = intake
        self._cursors = cursors
        self._interval = interval
        self._metrics = metrics
        self._jitter = jitter
        self._clock = clock
        self._outage = outage or SharedBackoff()
        # Threads stored but not yet marked read (mark-read failed): thread id → updated_at.
        self._done: dict[int, datetime | None] = {}
        self._log = log.bind(agent=self.agent)

    # --- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set; never sleeps past it."""
        failures = 0
        self._log.info("poller_started", interval=self._interval)
        while not stop.is_set():
            if await _sleep_or_stop(stop, self._outage.remaining()):
                break
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._metrics.poll_error(self.agent)
                wait = self._after_failure(error, failures)
                failures += 1
            else:
                self._outage.success()
                failures, wait = 0, self._next_interval()
            if await _sleep_or_stop(stop, wait):
                break
        self._log.info("poller_stopped")

    def _after_failure(self, error: Exception, failures: int) -> float:
        if is_outage(error):
            return self._outage.failure(error)
        if isinstance(error, TokenUnreadable):  # this poller's own backoff, not the shared one
            file = error.file or str(self._token_file)
            self._log.error("token_unreadable", file=file, error=error.message)
        elif isinstance(error, ForgejoError | ForgejoDataError):
            self._log.error("poll_failed", error=str(error))
        else:
            self._log.exception("poll_crashed")
        return min(self._interval * 2.0**failures, self._interval * 20)

    def _next_interval(self) -> float:
        return self._interval * (1 + self._jitter * (2 * random.random() - 1))

    # --- one poll --------------------------------------------------------------------------

    async def poll_once(self) -> int:
        """One poll; returns how many triggers the Intake stored."""
        if await self._client.unread_count() == 0:
            return 0
        since = await self._get_time(self._since_name)
        threads = [t for t in await self._client.notifications(since=since) if t.unread]
        if not threads and since is not None:
            # Unread threads older than the cursor (marked unread by hand, say).
            threads = [t for t in await self._client.notifications() if t.unread]
        baseline = since - FIRST_SEEN_SLACK if since else self._clock() - FIRST_RUN_LOOKBACK
        count, blocked = 0, None
        for thread in sorted(threads, key=_updated):
            handled = await self._handle(thread, baseline)
            if handled is None:
                blocked = blocked or thread.updated_at
            else:
                count += handled
        await self._advance(since, threads, blocked)
        return count

    async def _handle(self, thread: NotificationThread, baseline: datetime) -> int | None:
        """Triggers stored for one thread, or None when it must be read again next poll."""
        if thread.id in self._done and self._done[thread.id] == thread.updated_at:
            return 0 if await self._mark_read(thread) else None  # stored; mark-read failed
        number = thread.subject.number
        if number is None:  # a repository or commit notification: nothing to ask
            return 0 if await self._mark_read(thread) else None
        if not self._intake.serves(thread.repo, number, agent=self.agent, source="poll"):
            return 0 if await self._mark_read(thread) else None  # never read, never run
        watermark_name = self._thread_name(thread.id)
        stored = Watermark.decode(await self._cursors.get_cursor(watermark_name))
        watermark = stored or Watermark(baseline)
        try:
            ctx = await self._intake.read(self.agent, thread.repo, number, since=watermark)
        except ForgejoError as error:
            if ends_poll(error):
                raise
            report = self._log.info if error.status in GONE else self._log.error
            report("thread_unreadable", repo=thread.repo, number=number, error=str(error))
            return 0 if await self._mark_read(thread) else None
        # Stored before the thread is marked read: a crash in between reads it again.
        decision = await self._intake.take(ctx, (self.agent,), TriggerSource.POLL)
        if not await self._mark_read(thread):
            self._done[thread.id] = thread.updated_at
            return None
        reached = Watermark.after((*ctx.history, *ctx.new), floor=thread.updated_at)
        await self._cursors.set_cursor(watermark_name, reached.encode())
        # Read and marked read: when it shows up unread again, even with the same
        # updated_at (one-second resolution), it has something new; the watermark
        # knows which events of that second are already handled.
        self._done.pop(thread.id, None)
        return len(decision.triggers)

    async def _mark_read(self, thread: NotificationThread) -> bool:
        try:
            await self._client.mark_thread_read(thread.id)
        except ForgejoError as error:
            if ends_poll(error):
                raise
            self._log.error("mark_read_failed", thread=thread.id, error=str(error))
            return False
        return True

    async def _advance(
        self, since: datetime | None, threads: list[NotificationThread], blocked: datetime | None
    ) -> None:
        """Move the listing cursor past what is done, never past a thread still pending."""
        times = [t.updated_at for t in threads if t.updated_at is not None]
        target = blocked if blocked is not None else max(times, default=None)
        if target is not None and (since is None or target > since):
            await self._set_time(self._since_name, target)

    # --- cursors ---------------------------------------------------------------------------

    @property
    def _since_name(self) -> str:
        return f"poll:{self.agent}:since"

    def _thread_name(self, thread_id: int) -> str:
        return f"poll:{self.agent}:thread:{thread_id}"

    async def _get_time(self, name: str) -> datetime | None:
        return parse_time(await self._cursors.get_cursor(name))

    async def _set_time(self, name: str, moment: datetime) -> None:
        await self._cursors.set_cursor(name, rfc3339(moment))


def _updated(thread: NotificationThread) -> datetime:
    return thread.updated_at or datetime.min.replace(tzinfo=UTC)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` unless `stop` is set first; True when stopping."""
    if seconds <= 0:
        return stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


__all__ = ["CursorStore", "Poller", "SharedBackoff", "ends_poll", "is_outage"]
