"""Services' life cycle: start is a stack, close unwinds it, run has two scopes.

No Docker engine and no agent process: a stand-in engine client is opened and closed,
and a stand-in runtime holds each run until the test releases it (or a stop cancels
it). Everything else is the daemon's own: the store, the scheduler, the worker, the
Forgejo clients, the HTTP listener on a real port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from claude_hooks.config import AgentConfig, Config
from claude_hooks.daemon.lock import LOCK_NAME, StateDirInUse
from claude_hooks.daemon.services import ListenError, Services
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.forgejo.client import ForgejoClient
from claude_hooks.report.render import INTERRUPTED_REASON
from claude_hooks.report.tracker import TaskReports
from claude_hooks.runner import workspace
from claude_hooks.runner.execution import ClaudeExec, ExecResult
from claude_hooks.runner.runtime import DockerRuntime
from claude_hooks.runner.stream import Result, StreamEvent, parse_line
from claude_hooks.store import Store, StoreError
from claude_hooks.tasks import Task, TaskKind, TaskSpec, TaskState, TriggerSource
from claude_hooks.work.scheduler import Scheduler, SchedulerError
from tests.fakes.configs import ConfigFactory
from tests.test_store import make_spec

WITHIN = 10.0  # seconds any awaited condition may take before the test fails
RESULT_LINE = (
    '{"type": "result", "subtype": "success", "is_error": false, "result": "done",'
    ' "num_turns": 1, "session_id": "sess-1"}'
)


class FakeDocker:
    """Stands in for aiodocker.Docker: Services opens one and must close it."""

    fail_close = False
    closed: list[str] | None = None  # the test's record of closes, when it keeps one

    async def close(self) -> None:
        if FakeDocker.closed is not None:
            FakeDocker.closed.append("docker")
        if FakeDocker.fail_close:
            raise aiodocker.DockerError(500, {"message": "engine went away"})


class HeldRuntime:
    """Runs nothing: each run waits until `release` (or until a stop cancels it)."""

    def __init__(self, on_prepare: Callable[[], None] | None = None) -> None:
        self.on_prepare = on_prepare
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled: list[int] = []

    async def ready(self, agent: AgentConfig) -> None:
        return None

    async def prepare(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> str:
        if self.on_prepare is not None:
            self.on_prepare()
        return ""

    async def run(
        self,
        agent: AgentConfig,
        claude: ClaudeExec,
        on_event: Callable[[StreamEvent], None],
        room: object = None,
    ) -> ExecResult:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(claude.task_id)
            raise
        result = parse_line(RESULT_LINE)
        assert isinstance(result, Result)
        return ExecResult(exit_code=0, result_event=result, stderr_tail="", lines=1)

    async def publish(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> workspace.Published:
        raise AssertionError("an API task without a thread publishes nothing")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port right now."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def api_spec(n: int = 1) -> TaskSpec:
    return make_spec(n, kind=TaskKind.API, number=None, comment_id=None, source=TriggerSource.API)


def lifecycle_config(
    factory: ConfigFactory, *, port: int = 0, forgejo_url: str | None = None, **daemon: object
) -> Config:
    return factory.load(
        forgejo={"url": forgejo_url or "http://127.0.0.1:9"},
        daemon={"poll_interval": 0.2, "drain_timeout": 60, **daemon},
        api={"listen": f"127.0.0.1:{port or free_port()}"},
        agents=[factory.agent("dev"), factory.agent("reviewer", role="reviewer")],
    )


@pytest.fixture(autouse=True)
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiodocker, "Docker", FakeDocker)
    monkeypatch.setattr(FakeDocker, "fail_close", False)
    monkeypatch.setattr(FakeDocker, "closed", None)


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The parts Services closes, in the order it closes them."""
    order: list[str] = []

    def record(cls: type, method: str, part: str) -> None:
        original: Callable[..., Awaitable[None]] = getattr(cls, method)

        async def closing(self: object, *args: Any, **kwargs: Any) -> None:
            order.append(part)
            await original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, closing)

    record(Store, "close", "store")
    record(ForgejoClient, "close", "forgejo client")
    record(TaskReports, "close", "reports")
    record(web.AppRunner, "cleanup", "http listener")
    record(Scheduler, "close", "scheduler")
    monkeypatch.setattr(FakeDocker, "closed", order)
    return order


@pytest.fixture
async def opened() -> AsyncIterator[list[Services]]:
    started: list[Services] = []
    yield started
    for services in started:
        await services.close()


async def start(config: Config, opened: list[Services], runtime: HeldRuntime) -> Services:
    services = await Services.start(config, daemon_id="test-lifecycle", runtime=runtime)
    opened.append(services)
    return services


# --- start: a stack ----------------------------------------------------------------------------


# Each makes one start-up step fail the way it can fail in production, and returns the error.
Failure = Callable[[pytest.MonkeyPatch, Config, contextlib.ExitStack], type[BaseException]]


def fail_store_open(
    monkeypatch: pytest.MonkeyPatch, config: Config, held: contextlib.ExitStack
) -> type[BaseException]:
    config.daemon.db_path.mkdir(parents=True)  # a directory where the database file goes
    return StoreError


def fail_docker(
    monkeypatch: pytest.MonkeyPatch, config: Config, held: contextlib.ExitStack
) -> type[BaseException]:
    def refuse(self: FakeDocker) -> None:
        raise ValueError("no Docker engine address")

    monkeypatch.setattr(FakeDocker, "__init__", refuse)
    return ValueError


def fail_second_client(
    monkeypatch: pytest.MonkeyPatch, config: Config, held: contextlib.ExitStack
) -> type[BaseException]:
    made: list[object] = []
    original = ForgejoClient.__init__

    def second_fails(self: ForgejoClient, *args: Any, **kwargs: Any) -> None:
        if made:
            raise ValueError("bad Forgejo URL")
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ForgejoClient, "__init__", second_fails)
    return ValueError


def fail_listen(
    monkeypatch: pytest.MonkeyPatch, config: Config, held: contextlib.ExitStack
) -> type[BaseException]:
    taken = held.enter_context(socket.socket())  # another process holds the port
    taken.bind((config.api.host, config.api.port))
    taken.listen()
    return ListenError


def fail_recovery(
    monkeypatch: pytest.MonkeyPatch, config: Config, held: contextlib.ExitStack
) -> type[BaseException]:
    async def broken(self: Store) -> None:
        raise StoreError(config.daemon.db_path, "recover interrupted tasks: disk I/O error")

    monkeypatch.setattr(Store, "recover", broken)
    return StoreError


# Every part, in the order a full close goes through them: the last opened first.
CLOSE_ORDER = [
    "scheduler",
    "http listener",
    "reports",
    "forgejo client",
    "forgejo client",
    "docker",
    "store",
]


@pytest.mark.parametrize(
    ("fail", "opened_before"),
    [
        (fail_store_open, 0),
        (fail_docker, 1),  # the store
        (fail_second_client, 3),  # the store, Docker, the first client
        (fail_listen, 6),  # everything but the scheduler
        (fail_recovery, 7),  # the scheduler too: its close is registered as it starts
    ],
    ids=["store", "docker", "forgejo-client", "listener", "scheduler"],
)
async def test_a_failing_start_step_closes_what_the_steps_before_it_opened(
    fail: Failure,
    opened_before: int,
    config_factory: ConfigFactory,
    closed: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = lifecycle_config(config_factory)
    with contextlib.ExitStack() as held:
        error = fail(monkeypatch, config, held)
        with pytest.raises(error):
            await Services.start(config, daemon_id="test-lifecycle", runtime=HeldRuntime())
    assert closed == CLOSE_ORDER[len(CLOSE_ORDER) - opened_before :]


async def test_the_port_answers_before_a_recovered_task_is_taken_up(
    config_factory: ConfigFactory, opened: list[Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = lifecycle_config(config_factory)
    port = config.api.port
    config.daemon.state_dir.mkdir(mode=0o700, parents=True)
    store = await Store.open(config.daemon.db_path)
    left, _ = await store.enqueue(api_spec())
    await store.mark_running(left.id)  # the previous process died with it running
    await store.close()
    seen: list[tuple[str, bool]] = []
    recover = Store.recover

    async def recovering(self: Store) -> object:
        seen.append(("recovery", answers(port)))
        return await recover(self)

    monkeypatch.setattr(Store, "recover", recovering)
    runtime = HeldRuntime(on_prepare=lambda: seen.append(("run", answers(port))))
    await start(config, opened, runtime)
    async with asyncio.timeout(WITHIN):
        await runtime.started.wait()
    assert seen == [("recovery", True), ("run", True)]


async def test_a_second_start_on_the_same_state_dir_is_refused_before_it_opens_anything(
    config_factory: ConfigFactory, opened: list[Services], closed: list[str]
) -> None:
    """One daemon per state dir (#16 §2): the second opens neither the store nor Docker."""
    config = lifecycle_config(config_factory)
    first = await start(config, opened, HeldRuntime())
    second = lifecycle_config(config_factory)  # the same state dir, another port
    with pytest.raises(StateDirInUse) as refused:
        await Services.start(second, daemon_id="test-second", runtime=HeldRuntime())
    assert closed == []  # nothing was opened, so nothing closed
    said = str(refused.value)
    assert f"pid {os.getpid()}" in said and str(config.daemon.state_dir) in said, said
    assert (config.daemon.state_dir / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    await first.close()  # the lock goes with the process's Services: the next start works
    again = await start(second, opened, HeldRuntime())
    assert again.accepting


async def test_a_port_in_use_is_named_with_its_key_and_nothing_after_the_listener_starts(
    config_factory: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = lifecycle_config(config_factory)
    housekept: list[str] = []

    async def housekeeping(self: Services) -> None:
        housekept.append("housekeeping")

    monkeypatch.setattr(Services, "_housekeeping", housekeeping)
    with socket.socket() as taken:  # another process holds the port
        taken.bind((config.api.host, config.api.port))
        taken.listen()
        with pytest.raises(ListenError) as refused:
            await Services.start(config, daemon_id="test-port", runtime=DockerRuntime(None))  # type: ignore[arg-type]
    said = str(refused.value)
    assert said.startswith(f"api.listen = '{config.api.listen}': cannot listen: "), said
    assert "address already in use" in said and "set api.listen" in said, said
    assert housekept == []  # stray processes and orphans untouched: the start failed first


# --- close: the stack unwound ------------------------------------------------------------------


async def test_close_goes_last_opened_first_and_a_failing_close_does_not_stop_the_rest(
    config_factory: ConfigFactory, closed: list[str]
) -> None:
    FakeDocker.fail_close = True
    services = await Services.start(
        lifecycle_config(config_factory), daemon_id="test-lifecycle", runtime=HeldRuntime()
    )
    with capture_logs() as logs:
        await services.close()
    assert closed == CLOSE_ORDER
    [failure] = [e for e in logs if e["event"] == "close_failed"]
    assert failure["part"] == "docker" and "engine went away" in failure["error"]
    await services.close()  # a second close has nothing left to do
    assert closed.count("store") == 1


async def test_close_stops_a_running_task_and_records_it_before_the_store_closes(
    config_factory: ConfigFactory,
) -> None:
    config = lifecycle_config(config_factory)
    runtime = HeldRuntime()
    services = await Services.start(config, daemon_id="test-lifecycle", runtime=runtime)
    task, _ = await services.submit(api_spec())
    async with asyncio.timeout(WITHIN):
        await runtime.started.wait()
    await services.close()
    assert runtime.cancelled == [task.id]
    store = await Store.open(config.daemon.db_path)
    try:
        recorded = await store.get(task.id)
    finally:
        await store.close()
    assert recorded is not None and recorded.state is TaskState.INTERRUPTED
    assert recorded.error == INTERRUPTED_REASON


class HangingReporter:
    """A Forgejo that never answers: the acknowledgement waits until cancelled."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.cancelled = False

    async def acknowledge(self, task: Task, position: int | None = None) -> int | None:
        self.waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return None

    async def close(self) -> None:
        return None


async def test_closing_the_reports_cancels_a_chain_still_running_after_the_wait(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "tasks.sqlite3")
    try:
        task, _ = await store.enqueue(make_spec(1))
        reporter = HangingReporter()
        reports = TaskReports(reporter, store, lambda task_id: None)  # type: ignore[arg-type]
        await reports.on_change(task)
        async with asyncio.timeout(WITHIN):
            await reporter.waiting.wait()
        await reports.close(limit=0)
        assert reporter.cancelled  # nothing of it runs on once the store and clients close
    finally:
        await store.close()


# --- run: two scopes ---------------------------------------------------------------------------


@pytest.fixture
def sim_config(forgejo_sim: ForgejoSim, config_factory: ConfigFactory) -> Config:
    for agent in ("dev", "reviewer"):
        forgejo_sim.add_user(agent, token=f"forgejo-token-of-{agent}-0123456789")
    return lifecycle_config(config_factory, forgejo_url=forgejo_sim.base_url)


async def test_run_stops_intake_at_stop_and_lets_the_running_task_finish(
    sim_config: Config, opened: list[Services]
) -> None:
    runtime = HeldRuntime()
    services = await start(sim_config, opened, runtime)
    stop, draining = asyncio.Event(), asyncio.Event()
    running_at_drain: list[int] = []

    def on_drain(running: int) -> None:
        running_at_drain.append(running)
        draining.set()

    run = asyncio.create_task(services.run(stop, on_drain=on_drain))
    task, _ = await services.submit(api_spec(1))
    async with asyncio.timeout(WITHIN):
        await runtime.started.wait()
        stop.set()
        await draining.wait()
    assert running_at_drain == [1]
    with pytest.raises(SchedulerError, match="not accepting"):
        await services.submit(api_spec(2))
    assert not run.done()  # the drain waits for the running task
    runtime.release.set()
    async with asyncio.timeout(WITHIN):
        assert await run == ()  # nothing had to be interrupted
    finished = await services.store.get(task.id)
    assert finished is not None and finished.state is TaskState.SUCCEEDED


async def test_run_interrupts_the_running_task_when_the_drain_is_cut_short(
    sim_config: Config, opened: list[Services]
) -> None:
    runtime = HeldRuntime()
    services = await start(sim_config, opened, runtime)
    stop, skip = asyncio.Event(), asyncio.Event()
    run = asyncio.create_task(services.run(stop, skip_drain=skip, on_drain=lambda _: skip.set()))
    task, _ = await services.submit(api_spec(1))
    async with asyncio.timeout(WITHIN):
        await runtime.started.wait()
        stop.set()
        assert await run == (task.id,)
    assert runtime.cancelled == [task.id]
    interrupted = await services.store.get(task.id)
    assert interrupted is not None and interrupted.state is TaskState.INTERRUPTED
