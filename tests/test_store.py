from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from claude_hooks.precedence import Precedence
from claude_hooks.store import (
    SCHEMA_VERSION,
    EventCap,
    InvalidTransition,
    Store,
    StoreError,
    TaskNotFound,
)
from claude_hooks.store.db import ROWS_PER_INSERT, insert_sizes
from claude_hooks.store.schema import migrate
from claude_hooks.tasks import Outcome, Task, TaskKind, TaskSpec, TaskState, TriggerSource
from tests.conftest import REPO_ROOT
from tests.fakes.clock import FakeClock
from tests.fakes.leaks import leaks
from tests.waiting import wait_until


def make_spec(n: int = 1, *, agent: str = "dev", number: int | None = 7, **changes) -> TaskSpec:
    fields = {
        "agent": agent,
        "kind": TaskKind.MENTION,
        "repo": "acme/app",
        "number": number,
        "idempotency_key": f"comment-{agent}-{n}",
        "requested_by": "alice",
        "request": f"@{agent} please do thing {n}",
        "source": TriggerSource.POLL,
        "comment_id": 1000 + n,
    }
    return TaskSpec(**(fields | changes))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "state" / "tasks.sqlite3")
    yield store
    await store.close()


async def test_enqueue_is_idempotent_on_the_key(store: Store) -> None:
    first, created = await store.enqueue(make_spec(1))
    again, created_again = await store.enqueue(make_spec(1, request="the same event, seen again"))
    assert created and not created_again
    assert again.id == first.id
    assert again.spec.request == "@dev please do thing 1"
    assert first.state is TaskState.QUEUED
    assert [t.id for t in await store.list_tasks()] == [first.id]


async def test_tasks_cursors_and_events_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    store = await Store.open(path)
    task, _ = await store.enqueue(make_spec(1, head_sha="abc123", is_pull=True))
    await store.mark_running(task.id)
    outcome = Outcome(
        TaskState.SUCCEEDED,
        result="Opened PR #8",
        session_id="sess-1",
        cost_usd=0.42,
        num_turns=9,
        duration_ms=61_000,
        links=("http://forgejo/acme/app/pulls/8",),
    )
    finished = await store.finish(task.id, outcome)
    await store.set_tracking_comment(task.id, 555)
    await store.set_cursor("poll:dev", "2024-05-01T10:00:00Z")
    await store.close()

    reopened = await Store.open(path)
    try:
        stored = await reopened.get(task.id)
        assert stored == finished.with_(tracking_comment_id=555)
        assert stored.spec.head_sha == "abc123" and stored.spec.is_pull
        assert stored.links == ("http://forgejo/acme/app/pulls/8",)
        assert await reopened.get_cursor("poll:dev") == "2024-05-01T10:00:00Z"
        states = [e.summary for e in await reopened.events(task.id)]
        assert states == ["queued", "running (attempt 1)", "succeeded"]
        assert await reopened.integrity_check()
    finally:
        await reopened.close()


async def test_migrations_bring_an_older_schema_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=1) == 1
    conn.execute(
        "INSERT INTO tasks (idempotency_key, agent, kind, source, repo, number, requested_by,"
        " request, state, created_at) VALUES ('k1', 'dev', 'mention', 'poll', 'acme/app', 3,"
        " 'alice', 'hi', 'queued', 1.0)"
    )
    conn.close()

    store = await Store.open(path)
    try:
        task = await store.get(1)
        assert task is not None
        assert task.spec.idempotency_key == "k1"
        assert task.links == () and task.tracking_comment_id is None
        await store.set_cursor("c", "v")  # the cursors table came with migration 2
        assert await store.get_cursor("c") == "v"
    finally:
        await store.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_newer_schema_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this claude-hooks") as err:
        await Store.open(path)
    assert str(path) in str(err.value)


async def test_event_sink_writes_a_chatty_run_in_few_transactions(store: Store) -> None:
    task, _ = await store.enqueue(make_spec(1))
    before = store.transactions
    sink = store.event_sink(task.id)
    for i in range(2000):
        sink.add("text", f"line {i}", f'{{"n": {i}}}')
    await sink.close()
    assert store.transactions - before <= 5  # 2000 events / 500 per batch
    events = await store.events(task.id, limit=5000)
    assert [e.seq for e in events] == list(range(1, 2002))  # after the "queued" state event
    assert events[-1].summary == "line 1999" and events[-1].data == '{"n": 1999}'


async def test_waiting_reader_gets_events_after_the_interval_flush(store: Store) -> None:
    task, _ = await store.enqueue(make_spec(1))
    sink = store.event_sink(task.id, interval=0.02)
    reader = asyncio.create_task(store.wait_for_events(task.id, after_seq=1, max_wait=5))
    # Jobs on the store's one thread run in order, and so do the wake-ups they cause: once a
    # read submitted after the reader's has returned, the reader found nothing and waits.
    await store.events(task.id)  # lets the reader start and submit its read
    await store.events(task.id)  # submitted after it
    assert not reader.done()
    sink.add("text", "hello")
    sink.add("tool_use", "Bash: ls")
    events = await asyncio.wait_for(reader, 2)
    assert [(e.seq, e.summary) for e in events] == [(2, "hello"), (3, "Bash: ls")]
    await sink.close()


async def test_waiting_reader_times_out_with_nothing(store: Store) -> None:
    task, _ = await store.enqueue(make_spec(1))
    assert await store.wait_for_events(task.id, after_seq=1, max_wait=0.05) == []


async def test_event_log_is_capped_but_keeps_state_and_result(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "t.sqlite3", event_cap=EventCap(max_events=10))
    try:
        task, _ = await store.enqueue(make_spec(1))  # the "queued" event is the first of 10
        await store.mark_running(task.id)
        sink = store.event_sink(task.id)
        for i in range(30):
            sink.add("text", f"line {i}")
        sink.add("result", "all done")
        await sink.close()
        await store.finish(task.id, Outcome(TaskState.SUCCEEDED, result="all done"))
        events = await store.events(task.id)
    finally:
        await store.close()
    types = [e.type for e in events]
    assert types == ["state", "state"] + ["text"] * 8 + ["truncated", "result", "state"]
    assert [e.seq for e in events] == list(range(1, 14))
    assert events[-1].summary == "succeeded"


async def test_an_oversized_raw_line_keeps_only_its_summary(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "t.sqlite3", event_cap=EventCap(max_data_chars=100))
    try:
        task, _ = await store.enqueue(make_spec(1))
        sink = store.event_sink(task.id)
        sink.add("tool_result", "big output", "x" * 500)
        await sink.close()
        (event,) = await store.events(task.id, after_seq=1)
    finally:
        await store.close()
    assert event.data is None
    assert event.summary == "big output [raw line of 500 chars not stored]"


async def test_recover_requeues_a_crashed_task_once_then_fails_it(store: Store) -> None:
    task, _ = await store.enqueue(make_spec(1))
    await store.mark_running(task.id)  # ... and the daemon dies

    first = await store.recover()
    assert [t.id for t in first.requeued] == [task.id] and first.failed == ()
    assert first.queued == 1
    assert (await store.get(task.id)).state is TaskState.QUEUED

    await store.mark_running(task.id)  # dies again
    second = await store.recover()
    assert second.requeued == () and [t.id for t in second.failed] == [task.id]
    failed = await store.get(task.id)
    assert failed.state is TaskState.FAILED
    assert failed.error.startswith("interrupted twice (last: interrupted: the daemon stopped")
    assert failed.attempts == 2


async def test_recover_counts_drain_interruptions_too(store: Store) -> None:
    task, _ = await store.enqueue(make_spec(1))
    for _ in range(2):
        await store.mark_running(task.id)
        interrupted = Outcome(TaskState.INTERRUPTED, reason="interrupted by shutdown — will resume")
        await store.finish(task.id, interrupted)
        report = await store.recover()
    assert [t.id for t in report.failed] == [task.id]
    assert "(last: interrupted by shutdown — will resume)" in (await store.get(task.id)).error


async def test_retry_after_giving_up_gets_a_fresh_chance(store: Store) -> None:
    task, _ = await store.enqueue(make_spec(1))
    for _ in range(2):
        await store.mark_running(task.id)
        await store.recover()
    retried = await store.requeue(task.id, "retry requested by @alice")
    assert retried.state is TaskState.QUEUED and retried.error is None
    await store.mark_running(task.id)
    report = await store.recover()
    assert [t.id for t in report.requeued] == [task.id]


async def test_list_tasks_pages_newest_first_by_id_cursor(store: Store) -> None:
    ids = [
        (await store.enqueue(make_spec(i, agent="dev" if i % 2 else "rev")))[0].id for i in range(7)
    ]
    first = await store.list_tasks(limit=3)
    second = await store.list_tasks(limit=3, before_id=first[-1].id)
    third = await store.list_tasks(limit=3, before_id=second[-1].id)
    assert [t.id for t in first + second + third] == ids[::-1]
    assert await store.list_tasks(limit=3, before_id=third[-1].id) == []
    devs = await store.list_tasks(agent="dev", state=TaskState.QUEUED)
    assert [t.id for t in devs] == [ids[5], ids[3], ids[1]]
    assert [t.id for t in await store.queued()] == ids


async def test_last_session_is_the_newest_of_that_agent_on_that_thread(store: Store) -> None:
    sessions = {1: ("dev", 7, "s-old"), 2: ("dev", 7, "s-new"), 3: ("rev", 7, "s-rev")}
    for n, (agent, number, session) in sessions.items():
        task, _ = await store.enqueue(make_spec(n, agent=agent, number=number))
        await store.mark_running(task.id)
        await store.finish(task.id, Outcome(TaskState.SUCCEEDED, session_id=session))
    await store.enqueue(make_spec(4, agent="dev", number=7))  # newest, but no session yet
    assert await store.last_session("dev", "acme/app", 7) == "s-new"
    assert await store.last_session("dev", "acme/app", 8) is None
    assert await store.last_session("dev", "acme/app", None) is None
    latest = await store.latest_on_thread("dev", "acme/app", 7)
    assert latest.spec.idempotency_key == "comment-dev-4"


async def test_each_state_change_returns_the_task_as_stored(store: Store) -> None:
    # A state change builds the task it returns from the row it read and the columns it
    # set, not from a second read: what it returns is what a read finds.
    task, _ = await store.enqueue(make_spec(1))
    ended = Outcome(
        TaskState.SUCCEEDED, result="done", session_id="s-1", cost_usd=0.25, num_turns=3,
        duration_ms=1500, links=("https://forgejo.example/acme/app/pulls/8",),
    )  # fmt: skip
    changes: list[Callable[[], Awaitable[Task]]] = [
        lambda: store.mark_running(task.id),
        lambda: store.defer(task.id, Outcome(TaskState.QUEUED, reason="CI", retry_at=9e9)),
        lambda: store.mark_running(task.id),
        lambda: store.finish(task.id, ended),
        lambda: store.requeue(task.id, "retry requested by @alice"),
        lambda: store.mark_running(task.id),
        lambda: store.finish(task.id, Outcome(TaskState.INTERRUPTED, reason="drain")),
        lambda: store.rerun_interrupted(task.id),
    ]
    returned = []
    for change in changes:
        returned.append(await change())
        assert returned[-1] == await store.get(task.id)
    assert [t.state for t in returned] == [
        TaskState.RUNNING, TaskState.QUEUED, TaskState.RUNNING, TaskState.SUCCEEDED,
        TaskState.QUEUED, TaskState.RUNNING, TaskState.INTERRUPTED, TaskState.QUEUED,
    ]  # fmt: skip
    assert returned[3].links == ended.links and returned[3].cost_usd == 0.25


async def test_finishing_twice_or_starting_a_finished_task_is_refused(store: Store) -> None:
    task, _ = await store.enqueue(make_spec(1))
    await store.finish(task.id, Outcome(TaskState.CANCELLED, reason="cancelled by @alice"))
    with pytest.raises(InvalidTransition, match="is cancelled"):
        await store.finish(task.id, Outcome(TaskState.SUCCEEDED))
    with pytest.raises(InvalidTransition):
        await store.mark_running(task.id)
    with pytest.raises(TaskNotFound):
        await store.mark_running(999)


async def test_update_spec_changes_a_queued_task_and_logs_what_changed(store: Store) -> None:
    task, _ = await store.enqueue(make_spec(1, head_sha="aaa"))
    updated = await store.update_spec(task.id, make_spec(1, head_sha="bbb"))
    assert updated.spec.head_sha == "bbb"
    (event,) = await store.events(task.id, after_seq=1)
    assert event.summary == "updated before start: head_sha aaa → bbb"


async def test_counts_group_by_agent_and_state(store: Store) -> None:
    for n in range(3):
        await store.enqueue(make_spec(n))
    rev, _ = await store.enqueue(make_spec(9, agent="rev"))
    await store.mark_running(rev.id)
    assert await store.counts() == {("dev", TaskState.QUEUED): 3, ("rev", TaskState.RUNNING): 1}


async def test_a_full_disk_leaves_nothing_half_written(store: Store) -> None:
    await store.enqueue(make_spec(1))

    def cap_file_size() -> None:
        pages = store._db.conn.execute("PRAGMA page_count").fetchone()[0]
        store._db.conn.execute(f"PRAGMA max_page_count = {pages}")

    await store._call("test setup", cap_file_size)
    with pytest.raises(StoreError, match="full") as err:
        await store.enqueue(make_spec(2, request="x" * 200_000))
    assert str(store.path) in str(err.value)
    assert [t.spec.idempotency_key for t in await store.list_tasks()] == ["comment-dev-1"]
    assert await store.integrity_check()


def test_a_state_directory_under_a_file_gives_store_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    path = tmp_path / "not-a-dir" / "state" / "tasks.sqlite3"
    with pytest.raises(StoreError, match="cannot create the state directory") as err:
        asyncio.run(Store.open(path))
    assert str(path) in str(err.value)


READ_ONLY_PROBE = """
import asyncio, sys
from pathlib import Path
from claude_hooks.store import Store, StoreError

async def main():
    for name in sys.argv[1:]:
        try:
            store = await Store.open(Path(name))
            await store.close()
            print("opened", name)
        except StoreError as exc:
            print("StoreError", exc)

asyncio.run(main())
"""


async def open_and_close(path: Path) -> None:
    await (await Store.open(path)).close()


def test_a_read_only_state_directory_gives_store_error(tmp_path: Path) -> None:
    existing = tmp_path / "existing.sqlite3"
    asyncio.run(open_and_close(existing))
    fresh = tmp_path / "fresh.sqlite3"
    tmp_path.chmod(0o555)
    # root ignores file modes: drop the capabilities that let it, for the child only
    as_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    prefix = as_user if os.geteuid() == 0 else []
    try:
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", READ_ONLY_PROBE, str(fresh), str(existing)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    finally:
        tmp_path.chmod(0o755)
    # (structlog's default prints to stdout too: the directory's modes were tightened)
    lines = [line for line in probe.stdout.splitlines() if line.startswith(("opened", "Store"))]
    assert len(lines) == 2, probe.stderr
    for line, path in zip(lines, (fresh, existing), strict=True):
        assert line.startswith(f"StoreError {path}: cannot open the task store"), line
        assert f"{tmp_path} is not writable by this user" in line


LEAKED = "forgejo-token-of-store-test-4e1a9c"  # as the agent's token file would hold it


async def test_what_claude_and_git_print_is_stored_redacted(tmp_path: Path) -> None:
    """Fails before this change: raw lines, results and errors went into the WAL verbatim."""
    from claude_hooks.daemon.log import redactor

    redactor.add(LEAKED)
    encoded = base64.b64encode(f"Authorization: token {LEAKED}\n".encode()).decode()
    path = tmp_path / "state" / "tasks.sqlite3"
    store = await Store.open(path)
    task, _ = await store.enqueue(make_spec(1, request=f"@dev use {LEAKED}"))
    await store.mark_running(task.id)
    sink = store.event_sink(task.id)
    sink.add("tool_result", f"env printed {LEAKED}", json.dumps({"content": encoded}))
    await sink.close()
    outcome = Outcome(TaskState.FAILED, reason=f"git said {LEAKED}", result=f"done {encoded}")
    await store.finish(task.id, outcome)
    stored = await store.get(task.id)
    events = await store.events(task.id)
    files = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    await store.close()

    assert set(files) >= {path.name, path.name + "-wal"}  # the WAL holds the rows by now
    found = [leak for name, data in files.items() for leak in leaks({"token": LEAKED}, name, data)]
    assert found == []
    assert stored is not None and stored.error == "git said ***"
    assert stored.spec.request == "@dev use ***" and "***" in (stored.result or "")
    views = [e.summary + (e.data or "") for e in events] + [stored.result or ""]
    assert leaks({"token": LEAKED}, "store answers", "\n".join(views)) == []


async def test_the_state_directory_and_the_database_files_are_private(tmp_path: Path) -> None:
    """Fails before this change: an existing state dir stayed 0755 and the database 0644."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)  # as Services used to create it, whatever the umask
    path = state / "tasks.sqlite3"
    with capture_logs() as logs:
        store = await Store.open(path)
    await store.enqueue(make_spec(1))
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [state, *state.iterdir()]}
    await store.close()
    assert modes == {
        "state": 0o700, "tasks.sqlite3": 0o600, "tasks.sqlite3-wal": 0o600,
        "tasks.sqlite3-shm": 0o600,
    }  # fmt: skip
    fixed = [e for e in logs if e["event"] == "state_permissions_fixed"]
    assert [(e["path"], e["was"], e["now"]) for e in fixed] == [(str(state), "0755", "0700")]

    path.chmod(0o644)  # a database an older version left behind
    await (await Store.open(path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


READ_AND_CLOSE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("SELECT COUNT(*) FROM tasks").fetchone()
conn.close()
"""


async def test_a_reader_elsewhere_leaves_the_open_stores_wal_alone(tmp_path: Path) -> None:
    """Opening must keep SQLite's locks: closing any descriptor of the database drops them,
    and a reader that then thinks itself the last one deletes the WAL under the store."""
    path = tmp_path / "state" / "tasks.sqlite3"
    await open_and_close(path)  # an existing store: opening it reads, and locks, at once
    store = await Store.open(path)
    await store.enqueue(make_spec(1))
    reader = [sys.executable, "-c", READ_AND_CLOSE, str(path)]
    await asyncio.to_thread(subprocess.run, reader, check=True, timeout=30)
    assert path.with_name(path.name + "-wal").exists()
    await store.enqueue(make_spec(2))
    await store.close()
    reopened = await Store.open(path)
    assert len(await reopened.list_tasks()) == 2
    await reopened.close()


def _store_modules() -> dict[str, str]:
    package = REPO_ROOT / "claude_hooks"
    return {
        str(path.relative_to(package)): path.read_text() for path in sorted(package.rglob("*.py"))
    }


def test_the_store_is_the_only_place_with_sql() -> None:
    sql = ("import sqlite3", "SELECT ", "INSERT INTO", "UPDATE tasks", "CREATE TABLE")
    outside = [
        f"{name}: {word.strip()}"
        for name, text in _store_modules().items()
        if not name.startswith("store/")
        for word in sql
        if word in text
    ]
    assert outside == []


def test_the_schema_is_in_schema_py_and_queries_in_db_py() -> None:
    modules = _store_modules()
    ddl = [
        name for name, text in modules.items() if "CREATE TABLE" in text or "ALTER TABLE" in text
    ]
    assert ddl == ["store/schema.py"]
    queries = [name for name, text in modules.items() if "SELECT " in text or "INSERT INTO" in text]
    assert queries == ["store/db.py"]
    from claude_hooks.store.facade import Store as FacadeStore

    assert Store is FacadeStore  # `from claude_hooks.store import Store` is the facade


async def test_writes_made_together_reach_the_writer_thread_as_one_batch(store: Store) -> None:
    # Eight runs ending at once (the scheduler's lock-step rounds): one hop to the
    # thread and one back, not eight of each, and one commit, not nine (a commit was a
    # third of each write's cost, bench figure 4); one write's error is its caller's alone.
    tasks = [(await store.enqueue(make_spec(n)))[0] for n in range(1, 9)]
    hops: list[object] = []
    executor = store._writer._executor
    real_submit = executor.submit

    def counted(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        hops.append(fn)
        return real_submit(fn, *args, **kwargs)

    executor.submit = counted  # type: ignore[method-assign]
    began = store.transactions
    started = await asyncio.gather(
        *(store.mark_running(t.id) for t in tasks), store.mark_running(999),
        return_exceptions=True,
    )  # fmt: skip
    assert [t.state for t in started[:8] if isinstance(t, Task)] == [TaskState.RUNNING] * 8
    assert isinstance(started[8], TaskNotFound)
    assert len(hops) == 1
    assert store.transactions - began == 1
    assert [t.state for t in await store.list_tasks()] == [TaskState.RUNNING] * 8


async def test_a_write_that_fails_in_a_shared_transaction_undoes_only_its_own_rows(
    store: Store,
) -> None:
    # One transaction for the turn's jobs, a savepoint for each: a job that wrote and then
    # failed leaves nothing, and the jobs beside it are stored.
    def write_then_fail(db: Any) -> None:
        with db.transaction() as conn:
            conn.execute("INSERT INTO cursors (name, value, updated_at) VALUES ('half', 'x', 0)")
            raise sqlite3.IntegrityError("constraint failed halfway")

    began = store.transactions
    results = await asyncio.gather(
        store.set_cursor("before", "1"),
        store._call("write then fail", write_then_fail, store._db),
        store.set_cursor("after", "2"),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StoreError) and "constraint failed halfway" in str(results[1])
    assert store.transactions - began == 1
    assert [await store.get_cursor(n) for n in ("before", "half", "after")] == ["1", None, "2"]


async def test_a_batch_sqlite_rolls_back_is_an_error_for_every_write_it_took(
    store: Store,
) -> None:
    # A full disk or an I/O error makes SQLite roll the whole transaction back: the jobs
    # before it in the batch must hear that their write is gone, not that it is stored.
    def fail_the_transaction(db: Any) -> None:
        db.conn.execute("ROLLBACK")  # what SQLite does itself on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    results = await asyncio.gather(
        store.set_cursor("before", "1"),
        store._call("fill the disk", fail_the_transaction, store._db),
        store.set_cursor("after", "2"),
        return_exceptions=True,
    )
    assert isinstance(results[0], StoreError)
    assert "write cursor before failed" in str(results[0]) and "disk is full" in str(results[0])
    assert isinstance(results[1], StoreError) and results[2] is None
    assert [await store.get_cursor(n) for n in ("before", "after")] == [None, "2"]


async def test_reads_made_together_do_not_wait_for_a_lock_another_process_holds(
    store: Store,
) -> None:
    # A turn's jobs share one transaction, begun by the first that writes: reads alone
    # take no lock, as before (an SSE feed must not wait out another writer's lock).
    task, _ = await store.enqueue(make_spec(1))
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        async with asyncio.timeout(2):  # the busy timeout is 5 s
            read, cursor = await asyncio.gather(store.get(task.id), store.get_cursor("none"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert read == task and cursor is None


async def test_many_streams_event_batches_share_one_transaction(store: Store) -> None:
    """Twenty runs each handing over batches: whatever waits for the writer thread is
    written in one transaction, not one per batch (figure 8 queued hundreds of commits,
    and webhook intake waited behind them). Fails with one transaction per batch."""
    tasks = [(await store.enqueue(make_spec(n)))[0] for n in range(20)]
    sinks = [store.event_sink(t.id, max_batch=10) for t in tasks]
    began = store.transactions
    for i in range(50):  # 5 batches per task, all handed over before the thread runs
        for sink in sinks:
            sink.add("text", f"line {i}", f'{{"n": {i}}}')
    await asyncio.gather(*(sink.close() for sink in sinks))
    assert store.transactions - began <= 2  # one write, and one more if the thread was quick
    for task in tasks:
        events = await store.events(task.id, limit=100)
        assert [e.summary for e in events[1:]] == [f"line {i}" for i in range(50)]
        assert [e.seq for e in events] == list(range(1, 52))


async def test_a_missing_tasks_batch_fails_alone_in_the_shared_write(store: Store) -> None:
    task, _ = await store.enqueue(make_spec(1))
    kept = store.event_sink(task.id, max_batch=1)
    lost = store.event_sink(999, max_batch=1)
    with capture_logs() as logs:
        kept.add("text", "kept")
        lost.add("text", "lost")
        await asyncio.gather(kept.close(), lost.close())
    assert [e.summary for e in await store.events(task.id)][-1] == "kept"
    assert [entry["task_id"] for entry in logs if entry["event"] == "task_events_lost"] == [999]


async def test_job_lane_runs_ahead_of_waiting_event_writes(store: Store) -> None:
    """A write of the job lane (webhook intake, a state change) submitted in the same
    turn as event batches runs before them."""
    task, _ = await store.enqueue(make_spec(1))
    sink = store.event_sink(task.id, max_batch=1)
    order: list[str] = []
    written: list[asyncio.Future[None]] = []

    def add_event() -> None:  # in the turn the enqueue is submitted in, after it
        sink.add("text", "first")
        written.append(asyncio.ensure_future(sink.flush()))
        written[0].add_done_callback(lambda _: order.append("events"))

    queued = asyncio.ensure_future(store.enqueue(make_spec(2)))
    queued.add_done_callback(lambda _: order.append("job"))
    asyncio.get_running_loop().call_soon(add_event)
    await queued
    await asyncio.gather(*written)
    await sink.close()
    assert order[0] == "job"


async def test_a_job_waits_for_one_event_piece_not_the_whole_write(tmp_path: Path) -> None:
    """A webhook's write that comes in while the writer is storing twenty runs' events
    goes next, after the piece being written: a write of 2,000 events took up to half
    a second on a loaded machine, and each store write of webhook intake waited for it
    (bench figure 8: p95 0.4 s a write, 👀 p95 2-5 s). Fails with one unbroken write."""
    writing, go_on = threading.Event(), threading.Event()

    def redact(text: str) -> str:  # on the writer thread, for each event it stores
        writing.set()
        go_on.wait(10)
        return text

    store = await Store.open(tmp_path / "tasks.sqlite3", redact=redact)
    go_on.set()  # enqueue redacts the request too
    tasks = [(await store.enqueue(make_spec(n)))[0] for n in range(8)]
    go_on.clear()
    writing.clear()
    sinks = [store.event_sink(t.id, max_batch=ROWS_PER_INSERT) for t in tasks]
    for sink in sinks:  # eight pieces, one write's worth: the first one blocks in redact
        for i in range(ROWS_PER_INSERT):
            sink.add("text", f"line {i}")
    order: list[str] = []
    stored = [asyncio.ensure_future(sink.close()) for sink in sinks]
    for closed in stored:
        closed.add_done_callback(lambda _: order.append("events"))
    await wait_until(writing.is_set, timeout=10, what="the event write to begin")
    job = asyncio.ensure_future(store.enqueue(make_spec(99)))
    job.add_done_callback(lambda _: order.append("job"))
    await wait_until(store.jobs_waiting, timeout=10, what="the job to reach the writer thread")
    go_on.set()
    await asyncio.gather(job, *stored)
    assert order.index("job") <= 1  # after the piece being written, before the other seven
    for task in tasks:
        assert len(await store.events(task.id, limit=1000)) == ROWS_PER_INSERT + 1
    await store.close()


def test_event_inserts_come_in_few_distinct_sizes() -> None:
    """sqlite3 keeps each distinct statement it prepares (128 of them): one INSERT per
    batch of any length made a big statement per row count, ~20 MB of the daemon's
    memory with 20 streams (bench figure 6: 106-129 MB before this change, 81-85 after)."""
    sizes = {n: insert_sizes(n) for n in range(1, 3 * ROWS_PER_INSERT)}
    assert all(sum(parts) == n for n, parts in sizes.items())
    assert len({size for parts in sizes.values() for size in parts}) <= 9
    assert insert_sizes(200) == [128, 64, 8]
    assert insert_sizes(2 * ROWS_PER_INSERT + 1) == [ROWS_PER_INSERT, ROWS_PER_INSERT, 1]


async def test_the_event_lane_waits_while_a_persons_work_holds_precedence(tmp_path: Path) -> None:
    """A webhook's store writes, and the main thread's GIL, are not shared with the
    runs' event writes while its way to the 👀 holds precedence (precedence.py)."""
    clock = FakeClock()
    precedence = Precedence(hold_for=60.0, clock=clock)
    store = await Store.open(tmp_path / "tasks.sqlite3", precedence=precedence)
    task, _ = await store.enqueue(make_spec(1))
    sink = store.event_sink(task.id, max_batch=1)
    release = precedence.take()
    sink.add("text", "held back")
    flushed = asyncio.ensure_future(sink.flush())
    other, _ = await store.enqueue(make_spec(2))  # the job lane goes on meanwhile
    # A read queued after the event write: it would see the event, had it been written.
    assert "held back" not in [e.summary for e in await store.events(task.id)]
    assert not flushed.done() and other.state is TaskState.QUEUED
    release()
    await asyncio.wait_for(flushed, 10)
    assert [e.summary for e in await store.events(task.id)][-1] == "held back"
    precedence.take()  # never let go (a Forgejo that does not answer): it lapses
    sink.add("text", "after the lapse")
    flushed = asyncio.ensure_future(sink.flush())
    assert "after the lapse" not in [e.summary for e in await store.events(task.id)]
    clock.now += 61
    await asyncio.wait_for(flushed, 10)
    assert [e.summary for e in await store.events(task.id)][-1] == "after the lapse"
    await sink.close()
    await store.close()
