"""The task store's SQL: one SQLite (WAL) connection, owned by one writer thread.

Every call is a job on the one writer thread (writer.py), so writes are
serialised without locks and the event loop never blocks on disk. Each public
call of Database is one transaction (a savepoint, when the writer runs several
calls in one transaction), so a failure (read-only directory, full disk) leaves
nothing half-written and surfaces as a StoreError naming the database file.
The schema is in schema.py, the event cap and batching in
events.py, the async API the rest of the daemon uses in facade.py (Store).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import structlog

from claude_hooks.store.events import EventCap, EventUsage, NewEvent, admit_events
from claude_hooks.store.schema import migrate
from claude_hooks.tasks import (
    FINAL_STATES,
    AgentPause,
    Outcome,
    Task,
    TaskEvent,
    TaskKind,
    TaskSpec,
    TaskState,
    TriggerSource,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000

# A task interrupted this many times is failed instead of re-queued again.
MAX_INTERRUPTIONS = 2
CRASH_INTERRUPTION = "interrupted: the daemon stopped while it ran (crash or kill)"


class StoreError(Exception):
    """The database file cannot be opened, read or written; says which file and why."""

    def __init__(self, path: Path | str, message: str, *, busy: bool = False) -> None:
        self.path = str(path)
        self.busy = busy  # another connection held the lock past the busy timeout
        super().__init__(f"{path}: {message}")


def is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another process holds the database; it will pass."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "database is locked" in str(exc) or "database is busy" in str(exc)


class TaskNotFound(LookupError):
    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        super().__init__(f"no task {task_id}")


class InvalidTransition(Exception):
    """A state change the task's current state does not allow (e.g. finishing it twice)."""

    def __init__(self, task_id: int, state: TaskState, wanted: str) -> None:
        self.task_id = task_id
        self.state = state
        super().__init__(f"task {task_id} is {state}; cannot {wanted}")


@dataclass(frozen=True)
class StoredWebhook:
    """A webhook delivery the API took and the intake has not decided yet."""

    id: int
    event: str  # X-Forgejo-Event
    payload: str  # the JSON body as received
    delivery: str | None  # X-Forgejo-Delivery
    attempts: int  # decisions tried and failed so far (Forgejo unreachable, …)


@dataclass(frozen=True)
class RecoveryReport:
    """What start-up recovery did with tasks a previous process left behind."""

    requeued: tuple[Task, ...] = ()  # interrupted once: queued again
    failed: tuple[Task, ...] = ()  # interrupted twice: given up
    queued: int = 0  # tasks waiting to run after recovery, re-queued ones included


def make_private(db_path: Path) -> None:
    """State directory owner-only, the database and its -wal/-shm files 0600.

    Stored events hold what Claude and git printed; redacted, but still nobody
    else's business. Only permissions are taken away, never given: a directory
    made read-only on purpose stays read-only. A missing database file is created
    here, 0600, so SQLite never makes it with its default 0644; SQLite gives the
    -wal and -shm it creates the database's mode. Runs before the connection opens,
    and never opens an existing database: closing any descriptor of a file drops
    every POSIX lock this process holds on it, SQLite's included.
    """
    _take_away(db_path.parent, 0o077)
    with contextlib.suppress(OSError):  # it exists; or an unwritable dir, SQLite says so next
        os.close(os.open(db_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    for file in (db_path, *(db_path.with_name(db_path.name + s) for s in ("-wal", "-shm"))):
        _take_away(file, 0o177)


def _take_away(path: Path, bits: int) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if not mode & bits:
        return
    try:
        path.chmod(mode & ~bits)
    except OSError as exc:
        log.warning("state_permissions_not_fixed", path=str(path), error=exc.strerror)
    else:
        log.warning(
            "state_permissions_fixed", path=str(path), was=f"{mode:04o}", now=f"{mode & ~bits:04o}"
        )


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, foreign keys on."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        log.warning("store_not_wal", path=str(path), journal_mode=mode)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _spec_columns(spec: TaskSpec) -> dict[str, Any]:
    return {
        "idempotency_key": spec.idempotency_key,
        "agent": spec.agent,
        "kind": str(spec.kind),
        "source": str(spec.source),
        "repo": spec.repo,
        "number": spec.number,
        "is_pull": int(spec.is_pull),
        "requested_by": spec.requested_by,
        "request": spec.request,
        "comment_id": spec.comment_id,
        "review_id": spec.review_id,
        "head_sha": spec.head_sha,
        "hop": spec.hop,
    }


def _task_from_row(row: sqlite3.Row | Mapping[str, Any]) -> Task:
    spec = TaskSpec(
        agent=row["agent"],
        kind=TaskKind(row["kind"]),
        repo=row["repo"],
        number=row["number"],
        idempotency_key=row["idempotency_key"],
        requested_by=row["requested_by"],
        request=row["request"],
        source=TriggerSource(row["source"]),
        is_pull=bool(row["is_pull"]),
        comment_id=row["comment_id"],
        review_id=row["review_id"],
        head_sha=row["head_sha"],
        hop=row["hop"],
    )
    return Task(
        id=row["id"],
        spec=spec,
        state=TaskState(row["state"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        session_id=row["session_id"],
        result=row["result"],
        error=row["error"],
        cost_usd=row["cost_usd"],
        num_turns=row["num_turns"],
        duration_ms=row["duration_ms"],
        tracking_comment_id=row["tracking_comment_id"],
        links=tuple(json.loads(row["links"])),
        not_before=row["not_before"],
        deferrals=row["deferrals"],
        deferred_since=row["deferred_since"],
        final_reported=row["final_reported_at"] is not None,
    )


def _event_from_row(row: sqlite3.Row) -> TaskEvent:
    return TaskEvent(
        task_id=row["task_id"],
        seq=row["seq"],
        ts=row["ts"],
        type=row["type"],
        summary=row["summary"],
        data=row["data"],
    )


def _state_event(ts: float, state: TaskState, summary: str, reason: str | None = None) -> NewEvent:
    data = json.dumps({"state": str(state), "reason": reason})
    return NewEvent(ts=ts, type="state", summary=summary, data=data)


DAY = 24 * 3600.0


@dataclass(frozen=True)
class Spend:
    """An agent's task costs within a sliding window (agents.daily_budget_usd)."""

    window: float  # seconds
    costs: tuple[tuple[float, float], ...]  # (finished_at, cost_usd), oldest first

    @property
    def total_usd(self) -> float:
        return sum(cost for _, cost in self.costs)

    @property
    def oldest_ages_out_at(self) -> float | None:
        """When the oldest cost leaves the window; None when there is none."""
        return self.costs[0][0] + self.window if self.costs else None

    def under_budget_at(self, budget_usd: float) -> float | None:
        """The first moment the window's total is below `budget_usd` again as costs age
        out (nothing new assumed); None when it is below already."""
        total = self.total_usd
        if total < budget_usd:
            return None
        for finished_at, cost in self.costs:
            total -= cost
            if total < budget_usd:
                return finished_at + self.window
        return None  # a budget of 0 or less: never (the config refuses one)


class Database:
    """The synchronous side: every method runs in the store's one worker thread."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        cap: EventCap,
        clock: Callable[[], float],
        redact: Callable[[str], str],
    ):
        self.conn = conn
        self.cap = cap
        self.clock = clock
        self.redact = redact  # every text stored passes through it, here in the worker thread
        self.transactions = 0
        self.batching = False  # from begin_batch: the jobs' transactions are savepoints
        self.batch_began = False  # ... of the batch's one transaction, begun at its first write
        self._usage: dict[int, EventUsage] = {}

    @classmethod
    def open(
        cls, path: Path, cap: EventCap, clock: Callable[[], float], redact: Callable[[str], str]
    ) -> Database:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(path, f"cannot create the state directory: {exc.strerror}") from exc
        make_private(path)
        try:
            conn = connect(path)
        except sqlite3.Error as exc:
            raise StoreError(path, f"cannot open the task store: {exc}{_hint(path)}") from exc
        try:
            migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(path, f"cannot migrate the task store: {exc}{_hint(path)}") from exc
        return cls(conn, cap, clock, redact)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        if self.batching:
            if not self.conn.in_transaction:  # the batch's first write takes the lock
                self.conn.execute("BEGIN IMMEDIATE")
                self.transactions += 1
                self.batch_began = True
            with self._savepoint():
                yield self.conn
            return
        self.transactions += 1
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self._usage.clear()  # the cached counts may include rolled-back events
            raise

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        """One job inside a batch's transaction: its error undoes its own writes only."""
        self.conn.execute("SAVEPOINT job")
        try:
            yield
            self.conn.execute("RELEASE job")
        except BaseException:
            if self.conn.in_transaction:  # some errors (a full disk) end the whole batch
                self.conn.execute("ROLLBACK TO job")
                self.conn.execute("RELEASE job")
            self._usage.clear()
            raise

    def begin_batch(self) -> None:
        """The jobs that follow, until end_batch, share one transaction, begun by the
        first that writes: reads before it take no lock, and a store locked past its
        busy timeout is that write's error, as it was with a transaction of its own."""
        self.batching = True

    def batch_lost(self) -> bool:
        """SQLite rolled the batch's transaction back on an error (a full disk, I/O)."""
        lost = self.batch_began and not self.conn.in_transaction
        if lost:
            self.batch_began = False  # the next write begins another
        return lost

    def end_batch(self) -> None:
        """Commit the batch; on an error it is rolled back and the error raised."""
        self.batching = self.batch_began = False
        try:
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self._usage.clear()
            raise

    def close(self) -> None:
        self.conn.close()

    @staticmethod
    def run(path: Path, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            raise store_error(path, what, exc) from exc

    # --- tasks ---

    def row(self, task_id: int) -> sqlite3.Row | None:
        found: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
        return found

    def get(self, task_id: int) -> Task | None:
        row = self.row(task_id)
        return _task_from_row(row) if row is not None else None

    def enqueue(self, spec: TaskSpec) -> tuple[Task, bool]:
        spec = replace(spec, request=self.redact(spec.request))
        columns = _spec_columns(spec) | {"state": str(TaskState.QUEUED), "created_at": self.clock()}
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        with self.transaction() as conn:
            cursor = conn.execute(
                f"INSERT INTO tasks ({names}) VALUES ({marks})"
                " ON CONFLICT (idempotency_key) DO NOTHING",
                tuple(columns.values()),
            )
            created = cursor.rowcount == 1
            if created:
                task_id = cursor.lastrowid
                assert task_id is not None
                event = _state_event(columns["created_at"], TaskState.QUEUED, "queued")
                self.append_events(task_id, [event])
            else:
                query = "SELECT id FROM tasks WHERE idempotency_key = ?"
                task_id = conn.execute(query, (spec.idempotency_key,)).fetchone()[0]
        task = self.get(task_id)
        assert task is not None
        return task, created

    def transition(
        self,
        task_id: int,
        allowed: frozenset[TaskState],
        state: TaskState,
        changes: dict[str, Any],
        summary: str,
        reason: str | None = None,
        row: sqlite3.Row | None = None,
    ) -> Task:
        """Move a task to `state` within the caller's transaction, with a `state` event.
        `row`: the task's row, read in this transaction already."""
        row = row if row is not None else self.row(task_id)
        if row is None:
            raise TaskNotFound(task_id)
        current = TaskState(row["state"])
        if current not in allowed:
            raise InvalidTransition(task_id, current, f"become {state}")
        changes = {"state": str(state), **changes}
        assignments = ", ".join(f"{name} = ?" for name in changes)
        self.conn.execute(
            f"UPDATE tasks SET {assignments} WHERE id = ?", (*changes.values(), task_id)
        )
        self.append_events(task_id, [_state_event(self.clock(), state, summary, reason)])
        # The row as the UPDATE left it, without reading it again: two of a finish's three
        # reads were of what this transaction had just read or written (bench figure 4).
        return _task_from_row(dict(zip(row.keys(), row, strict=True)) | changes)

    def mark_running(self, task_id: int) -> Task:
        with self.transaction():
            row = self.row(task_id)
            attempt = (row["attempts"] + 1) if row is not None else 1
            changes = {
                "attempts": attempt,
                "started_at": self.clock(),
                "finished_at": None,
                "error": None,
                "not_before": None,
            }
            return self.transition(
                task_id,
                frozenset({TaskState.QUEUED}),
                TaskState.RUNNING,
                changes,
                f"running (attempt {attempt})",
                row=row,
            )

    def finish(self, task_id: int, outcome: Outcome) -> Task:
        if outcome.state not in FINAL_STATES | {TaskState.INTERRUPTED}:
            raise ValueError(f"task {task_id}: {outcome.state} is not how a run ends")
        outcome = replace(
            outcome,
            reason=None if outcome.reason is None else self.redact(outcome.reason),
            result=None if outcome.result is None else self.redact(outcome.result),
        )
        changes: dict[str, Any] = {
            "finished_at": self.clock(),
            "error": outcome.reason,
            "result": outcome.result,
            "session_id": outcome.session_id,
            "num_turns": outcome.num_turns,
            "duration_ms": outcome.duration_ms,
            "links": json.dumps(list(outcome.links)),
            "final_reported_at": None,  # in the outbox until the thread shows it
        }
        allowed = frozenset({TaskState.RUNNING})
        if outcome.state in (TaskState.CANCELLED, TaskState.FAILED):
            allowed |= {TaskState.QUEUED}  # cancelled, skipped or failed before it started
        summary = str(outcome.state) + (f": {outcome.reason}" if outcome.reason else "")
        with self.transaction():
            row = self.row(task_id)
            if outcome.state is TaskState.INTERRUPTED:
                changes["interruptions"] = (row["interruptions"] + 1) if row is not None else 1
            # The task's cost is what its runs cost since it was last queued afresh: a
            # deferred run's is there already.
            earlier = row["cost_usd"] if row is not None else None
            changes["cost_usd"] = _plus(earlier, outcome.cost_usd)
            self._add_cost(task_id, outcome.cost_usd)
            return self.transition(
                task_id, allowed, outcome.state, changes, summary, outcome.reason, row=row
            )

    def requeue(self, task_id: int, reason: str) -> Task:
        """Queue a finished or interrupted task again, as a fresh chance (retry)."""
        reason = self.redact(reason)
        changes = {
            "finished_at": None,
            "error": None,
            "result": None,
            "cost_usd": None,
            "num_turns": None,
            "duration_ms": None,
            "links": "[]",
            "interruptions": 0,
            "not_before": None,
            "deferrals": 0,
            "deferred_since": None,
            "final_reported_at": None,
        }
        allowed = FINAL_STATES | {TaskState.INTERRUPTED}
        with self.transaction():
            return self.transition(
                task_id, allowed, TaskState.QUEUED, changes, f"re-queued: {reason}", reason
            )

    def defer(self, task_id: int, outcome: Outcome) -> Task:
        """Back to the queue until `outcome.retry_at` (a running task, or a queued one its
        precheck put off); the session is kept so the next run resumes it."""
        if not outcome.deferred:
            raise ValueError(f"task {task_id}: {outcome} is not a deferral")
        reason = self.redact(outcome.reason or "deferred")
        with self.transaction():
            row = self.row(task_id)
            if row is None:
                raise TaskNotFound(task_id)
            changes: dict[str, Any] = {
                "not_before": outcome.retry_at,
                "error": reason,
                "finished_at": None,
                "deferrals": row["deferrals"] + (1 if outcome.uses_attempt else 0),
            }
            if outcome.uses_attempt and row["deferred_since"] is None:
                changes["deferred_since"] = self.clock()
            if outcome.session_id is not None:
                changes["session_id"] = outcome.session_id
            if outcome.cost_usd is not None:  # what the cut-short run cost still counts
                changes["cost_usd"] = (row["cost_usd"] or 0.0) + outcome.cost_usd
                self._add_cost(task_id, outcome.cost_usd)
            allowed = frozenset({TaskState.RUNNING, TaskState.QUEUED})
            return self.transition(
                task_id, allowed, TaskState.QUEUED, changes, f"deferred: {reason}", reason
            )

    def _add_cost(self, task_id: int, cost_usd: float | None) -> None:
        """One run's cost in the ledger the daily budget sums (a retry never clears it)."""
        if cost_usd is None:
            return
        self.conn.execute(
            "INSERT INTO run_costs (task_id, agent, at, cost_usd)"
            " SELECT id, agent, ?, ? FROM tasks WHERE id = ?",
            (self.clock(), cost_usd, task_id),
        )

    # --- paused agents ---

    def set_pause(self, pause: AgentPause) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO agent_pauses (agent, until, reason, cause) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (agent) DO UPDATE SET"
                " until = excluded.until, reason = excluded.reason, cause = excluded.cause",
                (pause.agent, pause.until, self.redact(pause.reason), pause.cause),
            )

    def clear_pause(self, agent: str) -> bool:
        with self.transaction() as conn:
            return conn.execute("DELETE FROM agent_pauses WHERE agent = ?", (agent,)).rowcount > 0

    def release_held(self, agent: str, until: float) -> list[Task]:
        """The agent's queued tasks deferred to no later than `until` (held by a pause
        lifted early), ready now."""
        with self.transaction() as conn:
            rows = conn.execute(
                "SELECT id FROM tasks WHERE agent = ? AND state = 'queued'"
                " AND not_before IS NOT NULL AND not_before <= ?",
                (agent, until),
            ).fetchall()
            ids = [row["id"] for row in rows]
            for task_id in ids:
                conn.execute("UPDATE tasks SET not_before = NULL WHERE id = ?", (task_id,))
        return [task for task in map(self.get, ids) if task is not None]

    def pauses(self) -> list[AgentPause]:
        rows = self.conn.execute("SELECT agent, until, reason, cause FROM agent_pauses")
        return [AgentPause(r["agent"], r["until"], r["reason"], r["cause"]) for r in rows]

    def update_spec(self, task_id: int, spec: TaskSpec) -> Task:
        """Replace what a queued task will do (e.g. a moved PR head); same key, same agent."""
        spec = replace(spec, request=self.redact(spec.request))
        with self.transaction() as conn:
            old = self.get(task_id)
            if old is None:
                raise TaskNotFound(task_id)
            if old.state is not TaskState.QUEUED:
                raise InvalidTransition(task_id, old.state, "change what it will do")
            if (spec.agent, spec.idempotency_key) != (old.spec.agent, old.spec.idempotency_key):
                raise ValueError(f"task {task_id}: agent and idempotency key cannot change")
            columns = _spec_columns(spec)
            assignments = ", ".join(f"{name} = ?" for name in columns)
            conn.execute(
                f"UPDATE tasks SET {assignments} WHERE id = ?", (*columns.values(), task_id)
            )
            changed = _changed_fields(old.spec, spec)
            summary = "updated before start: " + (", ".join(changed) or "nothing changed")
            self.append_events(task_id, [NewEvent(ts=self.clock(), type="update", summary=summary)])
        task = self.get(task_id)
        assert task is not None
        return task

    def recover(self) -> RecoveryReport:
        """running → interrupted; interrupted once → queued; interrupted twice → failed."""
        with self.transaction() as conn:
            now = self.clock()
            running = "SELECT id, interruptions FROM tasks WHERE state = 'running'"
            for row in conn.execute(running).fetchall():
                interrupted = {
                    "error": CRASH_INTERRUPTION,
                    "finished_at": now,
                    "interruptions": row["interruptions"] + 1,
                }
                self.transition(
                    row["id"],
                    frozenset({TaskState.RUNNING}),
                    TaskState.INTERRUPTED,
                    interrupted,
                    f"interrupted: {CRASH_INTERRUPTION}",
                    CRASH_INTERRUPTION,
                )
            query = "SELECT id, interruptions, error FROM tasks WHERE state = 'interrupted'"
            requeued, failed = [], []
            for row in conn.execute(query).fetchall():
                if row["interruptions"] >= MAX_INTERRUPTIONS:
                    failed.append(self._give_up(row["id"], row["error"], row["interruptions"]))
                else:
                    requeued.append(self._resume(row["id"]))
            queued = conn.execute("SELECT COUNT(*) FROM tasks WHERE state = 'queued'").fetchone()
        return RecoveryReport(tuple(requeued), tuple(failed), queued[0])

    def _give_up(self, task_id: int, last_reason: str | None, times: int) -> Task:
        reason = (
            f"interrupted {'twice' if times == 2 else f'{times} times'} "
            f"(last: {last_reason or 'unknown'}); not re-queued again — retry it by hand"
        )
        changes = {"error": reason, "finished_at": self.clock()}
        interrupted = frozenset({TaskState.INTERRUPTED})
        return self.transition(
            task_id, interrupted, TaskState.FAILED, changes, f"failed: {reason}", reason
        )

    def _resume(self, task_id: int) -> Task:
        changes = {"finished_at": None}
        interrupted = frozenset({TaskState.INTERRUPTED})
        summary = "re-queued after an interruption"
        return self.transition(task_id, interrupted, TaskState.QUEUED, changes, summary)

    def set_tracking_comment(self, task_id: int, comment_id: int) -> None:
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE tasks SET tracking_comment_id = ? WHERE id = ?", (comment_id, task_id)
            )
            if cursor.rowcount == 0:
                raise TaskNotFound(task_id)

    def list_tasks(
        self, state: TaskState | None, agent: str | None, limit: int, before_id: int | None
    ) -> list[Task]:
        rows = self.conn.execute(
            "SELECT * FROM tasks WHERE (?1 IS NULL OR id < ?1) AND (?2 IS NULL OR state = ?2)"
            " AND (?3 IS NULL OR agent = ?3) ORDER BY id DESC LIMIT ?4",
            (before_id, None if state is None else str(state), agent, max(limit, 0)),
        ).fetchall()
        return [_task_from_row(row) for row in rows]

    def mark_reported(self, task_id: int) -> None:
        """The thread shows the task's final state: out of the outbox."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE tasks SET final_reported_at = ? WHERE id = ? AND state IN"
                " ('succeeded', 'failed', 'cancelled')",
                (self.clock(), task_id),
            )

    def unreported(self, limit: int) -> list[Task]:
        """Ended tasks on a thread whose final state the thread does not show yet."""
        rows = self.conn.execute(
            "SELECT * FROM tasks WHERE final_reported_at IS NULL AND number IS NOT NULL"
            " AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY id LIMIT ?",
            (limit,),
        )
        return [_task_from_row(row) for row in rows.fetchall()]

    def try_write(self, busy_timeout_ms: int) -> None:
        """Take the write lock and let go (readiness): a locked store raises."""
        if self.conn.in_transaction:
            return  # a batch's transaction holds the write lock already
        self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("ROLLBACK")
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def queued(self) -> list[Task]:
        rows = self.conn.execute("SELECT * FROM tasks WHERE state = 'queued' ORDER BY id")
        return [_task_from_row(row) for row in rows.fetchall()]

    def last_session(self, agent: str, repo: str, number: int | None) -> str | None:
        if number is None:
            return None  # an API task without a thread has nothing to follow up
        row = self.conn.execute(
            "SELECT session_id FROM tasks WHERE agent = ? AND repo = ? AND number = ?"
            " AND session_id IS NOT NULL ORDER BY id DESC LIMIT 1",
            (agent, repo, number),
        ).fetchone()
        return row["session_id"] if row is not None else None

    def set_engine(self, task_id: int, engine: str) -> None:
        """The pool engine the task runs on (its thread's working tree and session)."""
        with self.transaction() as conn:
            cursor = conn.execute("UPDATE tasks SET engine = ? WHERE id = ?", (engine, task_id))
            if cursor.rowcount == 0:
                raise TaskNotFound(task_id)

    def thread_engine(self, agent: str, repo: str, number: int | None) -> str | None:
        """The engine the agent's latest placed task on this thread ran on (None: none)."""
        if number is None:
            return None  # an API task without a thread: a fresh directory each time
        row = self.conn.execute(
            "SELECT engine FROM tasks WHERE agent = ? AND repo = ? AND number = ?"
            " AND engine IS NOT NULL ORDER BY id DESC LIMIT 1",
            (agent, repo, number),
        ).fetchone()
        return row["engine"] if row is not None else None

    def rerun_interrupted(self, task_id: int) -> Task:
        """One interrupted task as `recover` treats it: queued again, or failed once it
        was interrupted MAX_INTERRUPTIONS times (its engine lost twice, say)."""
        with self.transaction():
            row = self.row(task_id)
            if row is None:
                raise TaskNotFound(task_id)
            if row["interruptions"] >= MAX_INTERRUPTIONS:
                return self._give_up(task_id, row["error"], row["interruptions"])
            return self._resume(task_id)

    def latest_on_thread(self, agent: str, repo: str, number: int) -> Task | None:
        row = self.conn.execute(
            "SELECT * FROM tasks WHERE agent = ? AND repo = ? AND number = ?"
            " ORDER BY id DESC LIMIT 1",
            (agent, repo, number),
        ).fetchone()
        return _task_from_row(row) if row is not None else None

    def spend(self, agent: str, window: float = DAY) -> Spend:
        """What `agent`'s tasks that finished in the last `window` seconds cost."""
        since = self.clock() - window
        rows = self.conn.execute(
            "SELECT at, cost_usd FROM run_costs WHERE agent = ? AND at >= ? ORDER BY at, id",
            (agent, since),
        ).fetchall()
        return Spend(window, tuple((row["at"], row["cost_usd"]) for row in rows))

    def counts(self) -> dict[tuple[str, TaskState], int]:
        rows = self.conn.execute("SELECT agent, state, COUNT(*) FROM tasks GROUP BY agent, state")
        return {(agent, TaskState(state)): n for agent, state, n in rows.fetchall()}

    # --- cursors ---

    def get_cursor(self, name: str) -> str | None:
        row = self.conn.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
        return row["value"] if row is not None else None

    def set_cursor(self, name: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO cursors (name, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (name, value, self.clock()),
            )

    # --- webhook deliveries waiting for a decision ---

    def add_webhook(self, event: str, payload: str, delivery: str | None) -> int | None:
        """Keep a delivery until it is decided: its row id, None when the delivery id
        is already waiting (a redelivery)."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO webhook_inbox (delivery, event, payload, received_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (delivery) DO NOTHING",
                (delivery, event, payload, self.clock()),
            )
            return cursor.lastrowid if cursor.rowcount else None

    def pending_webhooks(self) -> list[StoredWebhook]:
        rows = self.conn.execute("SELECT * FROM webhook_inbox ORDER BY id").fetchall()
        return [
            StoredWebhook(
                id=row["id"],
                event=row["event"],
                payload=row["payload"],
                delivery=row["delivery"],
                attempts=row["attempts"],
            )
            for row in rows
        ]

    def webhook_attempted(self, webhook_id: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE webhook_inbox SET attempts = attempts + 1 WHERE id = ?", (webhook_id,)
            )

    def webhook_decided(self, webhook_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM webhook_inbox WHERE id = ?", (webhook_id,))

    # --- events ---

    def _usage_of(self, task_id: int) -> EventUsage:
        usage = self._usage.get(task_id)
        if usage is None:
            row = self.conn.execute(
                "SELECT COALESCE(MAX(seq), 0), COUNT(*),"
                " COALESCE(SUM(LENGTH(summary) + COALESCE(LENGTH(data), 0)), 0),"
                " COALESCE(MAX(type = 'truncated'), 0)"
                " FROM task_events WHERE task_id = ?",
                (task_id,),
            ).fetchone()
            usage = EventUsage(row[0], row[1], row[2], bool(row[3]))
            self._usage[task_id] = usage
        return usage

    def append_events(self, task_id: int, events: Sequence[NewEvent]) -> None:
        """Store events under the cap with dense seq numbers; the caller holds a transaction."""
        insert_rows(self.conn, self._event_rows(task_id, events))

    def _event_rows(self, task_id: int, events: Sequence[NewEvent]) -> list[tuple[Any, ...]]:
        usage = self._usage_of(task_id)
        rows: list[tuple[Any, ...]] = []
        for event in admit_events(usage, events, self.cap):
            usage.last_seq += 1
            summary, data = self.redact(event.summary), event.data
            data = None if data is None else self.redact(data)
            rows.append((task_id, usage.last_seq, event.ts, event.type, summary, data))
        return rows

    def write_event_batches(
        self, batches: Iterable[tuple[int, Sequence[NewEvent]]]
    ) -> dict[int, TaskNotFound]:
        """Several tasks' batches in one transaction, each inserted as it is taken from
        `batches` (the writer stops taking when a job waits): the tasks no longer stored
        come back (their events are dropped), the others' events are stored in order."""
        stored: dict[int, bool] = {}
        with self.transaction():
            for task_id, events in batches:
                if task_id not in stored:
                    found = self.conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,))
                    stored[task_id] = found.fetchone() is not None
                if stored[task_id]:
                    insert_rows(self.conn, self._event_rows(task_id, events))
        return {task_id: TaskNotFound(task_id) for task_id, kept in stored.items() if not kept}

    def events(self, task_id: int, after_seq: int, limit: int) -> list[TaskEvent]:
        rows = self.conn.execute(
            "SELECT * FROM task_events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (task_id, after_seq, max(limit, 0)),
        ).fetchall()
        return [_event_from_row(row) for row in rows]

    def integrity_check(self) -> list[str]:
        return [row[0] for row in self.conn.execute("PRAGMA integrity_check").fetchall()]


ROWS_PER_INSERT = 256  # a power of two: see insert_rows


def insert_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Event rows in a few multi-row INSERTs, not one statement per row.

    sqlite3 lets the GIL go around every statement it steps and then waits to get it
    back; while the event loop is busy parsing streams that wait is up to the switch
    interval each time, so `executemany` over 500 rows kept the writer thread behind
    the loop for seconds. Here a statement carries up to ROWS_PER_INSERT rows, and a
    remainder goes in power-of-two pieces (200 = 128 + 64 + 8): sqlite3 keeps every
    distinct statement it prepared, a big one for each row count it saw, and a free
    row count made a hundred of them (~20 MB of the daemon's memory); now there are
    at most nine.
    """
    start = 0
    for size in insert_sizes(len(rows)):
        chunk = rows[start : start + size]
        values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * size)
        conn.execute(
            f"INSERT INTO task_events (task_id, seq, ts, type, summary, data) VALUES {values}",
            [value for row in chunk for value in row],
        )
        start += size


def insert_sizes(rows: int) -> list[int]:
    """The row counts of the INSERTs for `rows` rows: ROWS_PER_INSERT while that many
    are left, then the powers of two of the rest, largest first."""
    sizes = [ROWS_PER_INSERT] * (rows // ROWS_PER_INSERT)
    rest = rows % ROWS_PER_INSERT
    return sizes + [1 << bit for bit in reversed(range(rest.bit_length())) if rest >> bit & 1]


def _plus(earlier: float | None, more: float | None) -> float | None:
    return earlier if more is None else (earlier or 0.0) + more


def _changed_fields(old: TaskSpec, new: TaskSpec) -> list[str]:
    old_columns, new_columns = _spec_columns(old), _spec_columns(new)
    return [
        f"{name} {old_columns[name]} → {new_columns[name]}"
        if name in ("head_sha", "comment_id", "review_id")
        else name
        for name in old_columns
        if old_columns[name] != new_columns[name]
    ]


def store_error(path: Path, what: str, exc: sqlite3.Error) -> StoreError:
    """What failed, in the words of the store's errors (busy: another process holds it)."""
    return StoreError(path, f"{what} failed: {exc}{_hint(path)}", busy=is_busy(exc))


def _hint(path: Path) -> str:
    directory = path.parent
    if directory.is_dir() and not os.access(directory, os.W_OK):
        return f" ({directory} is not writable by this user)"
    return ""
