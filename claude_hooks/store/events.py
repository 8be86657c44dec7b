"""A task's event log on the way in: the per-task cap and the batched sink.

The event log is what the runner streams. An EventSink batches it (one
transaction per ~100 ms or 500 events) and the log is capped per task: past the
cap, detail events are dropped behind one `truncated` marker, while `state` and
`result` events are always kept. No SQL here: the sink hands its batches to a
writer (the Store's), and `admit_events` is the pure rule the writer applies.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

# Always stored, even past the cap: the stream's end and the answer must never be lost.
ALWAYS_KEPT = frozenset({"state", "result", "truncated"})


@dataclass(frozen=True)
class EventCap:
    """How much event log one task may keep."""

    max_events: int = 5000
    max_chars: int = 16_000_000  # summaries + raw lines, in characters
    max_data_chars: int = 256_000  # one raw line larger than this keeps only its summary


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One event on its way to the store; slots: one object per event, not two, for
    the collector to walk while twenty runs queue tens of thousands of them."""

    ts: float
    type: str
    summary: str
    data: str | None = None

    @property
    def size(self) -> int:
        return len(self.summary) + len(self.data or "")


@dataclass
class EventUsage:
    """What a task's event log already holds; cached in the store's writer thread."""

    last_seq: int
    count: int
    chars: int
    truncated: bool


def admit_events(usage: EventUsage, events: Sequence[NewEvent], cap: EventCap) -> list[NewEvent]:
    """The events to store under the cap, in order; updates `usage` as it goes."""
    kept: list[NewEvent] = []
    for event in events:
        if event.data is not None and len(event.data) > cap.max_data_chars:
            note = f" [raw line of {len(event.data)} chars not stored]"
            event = replace(event, summary=event.summary + note, data=None)
        fits = usage.count < cap.max_events and usage.chars + event.size <= cap.max_chars
        if not fits and event.type not in ALWAYS_KEPT:
            if not usage.truncated:
                usage.truncated = True
                kept.append(_truncation_marker(event.ts, cap))
            continue
        kept.append(event)
        usage.count += 1
        usage.chars += event.size
    return kept


def _truncation_marker(ts: float, cap: EventCap) -> NewEvent:
    return NewEvent(
        ts=ts,
        type="truncated",
        summary=(
            f"event log cap reached ({cap.max_events} events or {cap.max_chars} chars): "
            "later detail events are not stored"
        ),
    )


# Queues one batch on the store's writer thread; the future ends when it is stored.
WriteBatch = Callable[[list[NewEvent]], "asyncio.Future[None]"]


UNSTORED_LIMIT = 1000  # a sink's events on their way to the store before its run waits


class EventSink:
    """Buffers one task's events and writes them in batches, in order, off the event loop."""

    def __init__(
        self,
        task_id: int,
        *,
        write: WriteBatch,
        stored: Callable[[], None],
        closed: Callable[[EventSink], None],
        store_path: Path,
        interval: float,
        max_batch: int,
        detail_limit: int | None = None,
    ) -> None:
        """`stored` runs after each batch is written; `closed` once, when the sink closes.
        Past `detail_limit` detail events the sink drops them itself (see `add`)."""
        self.task_id = task_id
        self._write = write
        self._stored = stored
        self._on_closed = closed
        self._store_path = store_path
        self._interval = interval
        self._max_batch = max_batch
        self._pending: list[NewEvent] = []
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Future[None]] = set()
        self._closed = False
        self._detail_limit = detail_limit
        self._details = 0  # detail events (not ALWAYS_KEPT) handed to the writer
        self._unstored = 0  # events handed to the writer and not yet stored

    def keeps(self, type: str) -> bool:
        """Whether an event of `type` added now would be stored: past the cap, a detail
        event is dropped, and its caller need not make its summary at all."""
        if type in ALWAYS_KEPT or self._detail_limit is None:
            return True
        # One more than the cap's worth has reached the writer, so it has dropped one
        # and stored the truncation marker: it would drop the rest too. A fast run's
        # millions of lines must not queue up on the one writer thread ahead of
        # everyone else's writes (webhook intake, other tasks).
        return self._details < self._detail_limit

    def add(self, type: str, summary: str, data: str | None = None) -> None:
        """Cheap and synchronous: the event is written with the next batch."""
        if self._closed:
            raise RuntimeError(f"event sink of task {self.task_id} is closed")
        if not self.keeps(type):
            return
        if type not in ALWAYS_KEPT:
            self._details += 1
        self._pending.append(NewEvent(ts=time.time(), type=type, summary=summary, data=data))
        if len(self._pending) >= self._max_batch:
            self._write_pending()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._interval, self._write_pending)

    def _write_pending(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        future = self._write(batch)
        self._inflight.add(future)
        self._unstored += len(batch)
        future.add_done_callback(functools.partial(self._written, len(batch)))

    async def room(self) -> None:
        """Until the writer holds fewer than UNSTORED_LIMIT of this sink's events.

        A run's output reader awaits it between frames: when the writer is behind
        twenty streams, the streams wait (Docker holds their output, claude's writes
        block) rather than their events piling up in the daemon's memory, up to the
        cap's 5,000 a task (bench figure 6: 30,000 events, ~12 MB, at the peak)."""
        while self._unstored >= UNSTORED_LIMIT and self._inflight:
            # `_written` (the futures' first callback) has counted a batch back by the
            # time this wait ends.
            await asyncio.wait(list(self._inflight), return_when=asyncio.FIRST_COMPLETED)

    def _written(self, count: int, future: asyncio.Future[None]) -> None:
        self._inflight.discard(future)
        self._unstored -= count
        if future.cancelled():
            return
        if (exc := future.exception()) is not None:
            # The run goes on without its detail log rather than failing over it.
            log.error(
                "task_events_lost",
                task_id=self.task_id,
                events=count,
                path=str(self._store_path),
                error=str(exc),
            )
            return
        self._stored()

    async def flush(self) -> None:
        """Write everything added so far and wait until it is stored."""
        self._write_pending()
        if self._inflight:
            await asyncio.wait(list(self._inflight))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.flush()
        self._on_closed(self)
