"""The store's one writer thread: every SQL statement runs on it, in two lanes.

The job lane runs the calls of Database in the order submitted, those of one turn
of the event loop in one transaction, each call under its own savepoint. The
event lane carries the runs' event batches: whatever batches are waiting when the
thread gets to them are written in one transaction, and at most one such write
waits in the thread's queue. Twenty streams hand over a batch each
every 100 ms; one transaction per batch made hundreds of commits a second, each
giving up the GIL and waiting to get it back while the event loop parsed, and the
queue they built held webhook intake back for seconds (bench figure 8).

The job lane goes first. An event write is made of pieces of at most ROWS_PER_INSERT
events and stops after the piece during which a job came in; the rest waits behind
that job. With twenty streams a write of 2,000 events took up to half a second on a
loaded machine, and every webhook's store write waited for it (p95 0.4 s a write,
bench figure 8). (A time slice as well only split a loaded machine's writes into
more commits, when there was no job to let in.) While work a person waits for holds
precedence (claude_hooks/precedence.py) the lane writes no piece: the webhook's own
writes find the thread free, and the main thread the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from claude_hooks.precedence import PRECEDENCE, Precedence
from claude_hooks.store.db import ROWS_PER_INSERT, Database, StoreError, is_busy, store_error
from claude_hooks.store.events import EventCap, NewEvent

T = TypeVar("T")


class WriterThread:
    """The one thread that owns the connection.

    Jobs submitted in one turn of the event loop go to the thread as one batch, and
    their results come back in one wake-up of the loop: with 8 runs ending together,
    8 `finish` writes cost one hop to the thread and one back, not 8 of each (a hop
    is a thread switch and a loop wake-up; on a busy machine it cost more than the
    write). A batch is one transaction with a savepoint per job: a commit cost about
    a third of a `finish` (bench figure 4), and the writer's time is what the runs
    ending together wait for. Each job's error still undoes its own writes only and
    is its caller's alone; the results come back after the commit, so each job is
    durable before its caller goes on (a failed commit is every job's error). Event
    batches (`submit_events`) go after the turn's jobs, all waiting ones in one write.
    """

    def __init__(
        self,
        path: Path,
        executor: ThreadPoolExecutor,
        db: Database,
        precedence: Precedence = PRECEDENCE,
    ) -> None:
        self.path = path
        self.db = db
        self._executor = executor
        self._precedence = precedence
        self._resuming = False  # (the loop's thread only) a look at the holds is due
        self.closed = False
        self._batch: list[_Job[Any]] = []
        self._sending = False  # a _send is due in this turn of the loop
        self._event_lock = threading.Lock()  # the event lane is taken on the thread
        self._event_batches: deque[_EventPiece] = deque()
        self._events_queued = False  # an event write waits in the executor's queue or runs
        # Job batches handed to the thread, and begun there: each count is written by one
        # thread only, so their difference (jobs waiting) needs no lock.
        self._jobs_sent = 0
        self._jobs_begun = 0

    @classmethod
    async def open(
        cls,
        path: Path,
        cap: EventCap,
        clock: Callable[[], float],
        redact: Callable[[str], str],
        precedence: Precedence = PRECEDENCE,
    ) -> WriterThread:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="claude-hooks-store")
        loop = asyncio.get_running_loop()
        try:
            db = await loop.run_in_executor(executor, Database.open, path, cap, clock, redact)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(path, executor, db, precedence)

    def submit(self, what: str, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue `fn` on the writer thread; sqlite errors come back as StoreError."""
        if self.closed:
            raise StoreError(self.path, f"{what}: the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = functools.partial(Database.run, self.path, what, fn, *args)
        self._batch.append(_Job(what, job, future))
        self._send_soon(loop)
        return future

    def submit_events(self, task_id: int, events: list[NewEvent]) -> asyncio.Future[None]:
        """Queue one task's event batch on the event lane; ends when it is stored."""
        if self.closed:
            raise StoreError(self.path, f"write events of task {task_id}: the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        pieces = event_pieces(len(events))
        batch = _EventBatch(task_id, future, left=len(pieces))
        with self._event_lock:
            self._event_batches.extend(_EventPiece(batch, events[a:b]) for a, b in pieces)
        self._send_soon(loop)
        return future

    def _send_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._sending:  # the first of this turn: send them all after it
            self._sending = True
            loop.call_soon(self._send, loop)

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sending = False
        batch, self._batch = self._batch, []
        if batch:
            for part in range(0, len(batch), JOBS_PER_TRANSACTION):
                self._jobs_sent += 1
                jobs = batch[part : part + JOBS_PER_TRANSACTION]
                self._executor.submit(self._run_jobs, loop, jobs)
        with self._event_lock:
            if not self._event_batches or self._events_queued:
                return
            self._events_queued = True
        self._executor.submit(self._write_events, loop)

    def _run_jobs(self, loop: asyncio.AbstractEventLoop, batch: list[_Job[Any]]) -> None:
        self._jobs_begun += 1
        _run_batch(loop, self.db, self.path, batch)

    def jobs_waiting(self) -> bool:
        """Whether job batches were handed to the thread that it has not begun."""
        return self._jobs_sent != self._jobs_begun

    def _write_events(self, loop: asyncio.AbstractEventLoop, *, again: bool = True) -> None:
        """On the writer thread: the event pieces waiting now, in one transaction, until
        a job waits or EVENTS_PER_WRITE are written; then the next
        write queues behind the jobs that came in meanwhile (a webhook's write waits for
        one piece, not a backlog)."""
        taken: list[_EventPiece] = []
        errors: dict[int, BaseException] = {}
        if not (again and self._precedence.held()):  # (held: not even a transaction)
            try:
                errors = self._write_pieces(taken)
            except BaseException as exc:  # each waiting caller gets it
                errors = {piece.batch.task_id: exc for piece in taken}
        held = again and self._precedence.held()
        with self._event_lock:
            left = bool(self._event_batches) and again
            self._events_queued = left and not held
        if self._events_queued:
            self._executor.submit(self._write_events, loop)
        elif left:  # the rest once the holds are let go: asked of the loop's thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._resume_later, loop)
        if taken:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle_events, taken, errors)

    def _resume_later(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop's thread: the event lane again once no hold is left."""
        if not self._resuming:
            self._resuming = True
            loop.call_later(RESUME_EVERY, self._resume, loop)

    def _resume(self, loop: asyncio.AbstractEventLoop) -> None:
        self._resuming = False
        if self._precedence.held():
            self._resume_later(loop)
        elif not self.closed:
            self._send(loop)  # (closing writes what is left itself)

    def _write_pieces(self, taken: list[_EventPiece]) -> dict[int, BaseException]:
        pairs = self._next_pieces(taken)
        try:
            return dict(self.db.write_event_batches(pairs))
        except sqlite3.Error as exc:  # say whose events, now that the pieces taken are known
            ids = sorted({piece.batch.task_id for piece in taken})
            what = f"write events of task{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"
            raise store_error(self.path, what, exc) from exc

    def _next_pieces(self, taken: list[_EventPiece]) -> Iterator[tuple[int, list[NewEvent]]]:
        """The lane's pieces one at a time, each kept in `taken`, until a job waits, a
        person's work holds precedence (its GIL and its store are the person's meanwhile),
        or EVENTS_PER_WRITE events are out."""
        count = 0
        while count < EVENTS_PER_WRITE:
            with self._event_lock:
                if not self._event_batches:
                    return
                piece = self._event_batches.popleft()
            taken.append(piece)
            count += len(piece.events)
            yield piece.batch.task_id, piece.events
            if self.jobs_waiting() or self._precedence.held():
                return

    async def close(self) -> None:
        self.closed = True
        loop = asyncio.get_running_loop()
        self._send(loop)  # what was submitted before closing still runs, in order
        await loop.run_in_executor(self._executor, self._close_db, loop)
        self._executor.shutdown(wait=False)

    def _close_db(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer thread: the event batches still waiting, then the connection."""
        while self._event_batches:
            self._write_events(loop, again=False)
        self.db.close()


# About 30 ms of writing on a quiet machine (redacted, ~15 µs an event); a write
# stops sooner when a job comes in.
EVENTS_PER_WRITE = 2000
# Seconds between two looks at the holds while the event lane waits them out (they
# lapse within claude_hooks/precedence.py's HOLD_FOR).
RESUME_EVERY = 0.005
# At most this many jobs share a transaction (~0.25 ms each): the write lock is let go
# within a few milliseconds, and a job waits for the commit of few others.
JOBS_PER_TRANSACTION = 32


def event_pieces(events: int, size: int = ROWS_PER_INSERT) -> list[tuple[int, int]]:
    """A batch of `events` as [start, end) pieces of at most `size`: the lane's unit,
    one INSERT each (an empty batch is one empty piece, so that its caller hears back)."""
    return [(start, min(start + size, events)) for start in range(0, events, size)] or [(0, 0)]


@dataclass
class _EventBatch:
    """One task's batch as its caller sees it: done when its last piece is stored."""

    task_id: int
    future: asyncio.Future[None]
    left: int  # pieces not yet written


@dataclass
class _EventPiece:
    batch: _EventBatch
    events: list[NewEvent]


def _settle_events(pieces: list[_EventPiece], errors: dict[int, BaseException]) -> None:
    for piece in pieces:
        batch = piece.batch
        batch.left -= 1
        if batch.future.done():  # cancelled, or an earlier piece failed
            continue
        if (error := errors.get(batch.task_id)) is not None:
            batch.future.set_exception(error)
        elif batch.left == 0:
            batch.future.set_result(None)


@dataclass
class _Job(Generic[T]):
    what: str
    call: Callable[[], T]
    future: asyncio.Future[T]
    result: T | None = None
    error: BaseException | None = None


def _run_batch(
    loop: asyncio.AbstractEventLoop, db: Database, path: Path, batch: list[_Job[Any]]
) -> None:
    """On the writer thread: each job in order, several in one transaction, then
    every result to the loop at once."""
    batched = len(batch) > 1
    if batched:
        db.begin_batch()
    inside: list[_Job[Any]] = []  # done within the open transaction: lost if it is
    for job in batch:
        try:
            job.result = job.call()
        except BaseException as exc:  # the caller's, raised where it awaits
            job.error = exc
        if batched and db.batch_lost():  # its error rolled back the jobs before it too
            _undone(inside, path, job.error)
            inside = []
        elif batched and job.error is None and db.conn.in_transaction:
            inside.append(job)
    if batched:
        try:
            db.end_batch()
        except sqlite3.Error as exc:
            _undone(inside, path, exc)
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_settle, batch)


def _undone(jobs: list[_Job[Any]], path: Path, cause: BaseException | None) -> None:
    """The jobs whose writes a failed batch took with it: each caller gets the error."""
    if isinstance(cause, StoreError):  # a job's error: its sqlite error says what happened
        busy, cause = cause.busy, cause.__cause__ or cause
    else:
        busy = isinstance(cause, sqlite3.Error) and is_busy(cause)
    for job in jobs:
        message = f"{job.what} failed: undone with its batch's transaction ({cause})"
        job.error = StoreError(path, message, busy=busy)
        job.result = None


def _settle(batch: list[_Job[Any]]) -> None:
    for job in batch:
        if job.future.cancelled():  # its caller gave up; the write itself happened
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)
