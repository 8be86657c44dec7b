"""Engine pools (issue 18): `[[engines]]` + `agents.engines`, placement, up/down — without
Docker. The acceptance tests with two real engines are tests/test_engine_pools_docker.py."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiodocker.exceptions import DockerError

from claude_hooks.config import (
    AgentConfig,
    Config,
    ConfigError,
    DockerEngine,
    EngineTls,
    load_config,
)
from claude_hooks.forgejo.models import Comment, Issue, Repository, User
from claude_hooks.metrics import Metrics, QueueSnapshot
from claude_hooks.runner.containers import ContainerStopped
from claude_hooks.runner.engines import EngineHealth, EngineState, Seen, engine_up, engines_of
from claude_hooks.runner.execution import ClaudeExec, ExecResult
from claude_hooks.runner.placement import (
    Decision,
    EngineLoad,
    EnginePlacer,
    EnginesDown,
    Verdict,
    choose_engine,
)
from claude_hooks.runner.stream import StreamEvent
from claude_hooks.store import Store
from claude_hooks.tasks import Outcome, Task, TaskState
from claude_hooks.work.outages import DOCKER_DOWN, EngineLost, outage_of
from claude_hooks.work.scheduler import Scheduler
from claude_hooks.work.worker import TaskWorker
from tests.fakes.configs import ConfigFactory, toml_table
from tests.fakes.runtime import AnsweringRuntime
from tests.test_engines import tls_keys
from tests.test_store import make_spec
from tests.waiting import wait_until

# --- config ----------------------------------------------------------------------------------


def pool_config(
    factory: ConfigFactory,
    engines: list[dict[str, Any]],
    agent: dict[str, Any] | None = None,
) -> Path:
    text = factory.text(agents=[agent if agent is not None else factory.agent()])
    for engine in engines:
        text += toml_table("[[engines]]", engine)
    return factory.write(text)


LOCAL = {"name": "build-1", "host": "unix:///var/run/docker.sock"}
OTHER = {"name": "build-2", "host": "unix:///run/other-docker.sock", "max_concurrency": 2}


def load(factory: ConfigFactory, tables: list[dict[str, Any]], **agent: Any) -> Config:
    """A config with these [[engines]] tables and one agent with these keys."""
    return load_config(pool_config(factory, tables, factory.agent(**agent)))


def test_an_agent_with_engines_has_a_container_on_each(config_factory: ConfigFactory) -> None:
    config = load(config_factory, [LOCAL, OTHER], engines=["build-2", "build-1"])
    agent = config.agents[0]
    assert [e.name for e in agent.on_engines] == ["build-2", "build-1"]
    assert agent.on_engines[0] == DockerEngine("unix:///run/other-docker.sock", None, "build-2")
    assert config.engine_named("build-2").max_concurrency == 2
    assert config.engine_named("build-1").max_concurrency == 4  # the default
    assert engines_of(config.agents) == agent.on_engines
    with pytest.raises(ValueError, match="place it on one first"):
        _ = agent.engine  # unplaced: no one engine to name
    placed = agent.placed_on(agent.on_engines[1])
    assert placed.engine.name == "build-1" and placed.on_engines == (placed.engine,)


def test_an_agent_without_engines_keeps_its_own_engine(config_factory: ConfigFactory) -> None:
    config = load(config_factory, [LOCAL])
    agent = config.agents[0]
    assert agent.pool == () and agent.engine == DockerEngine()
    assert agent.on_engines == (DockerEngine(),)
    assert agent.placed_on(DockerEngine()) is agent


def test_a_tls_engine_takes_the_agent_keys_rules(
    config_factory: ConfigFactory, tmp_path: Path
) -> None:
    keys = tls_keys(tmp_path / "certs")
    remote = {"name": "remote", "host": "tcp://127.0.0.1:2376", **keys}
    engine = load(config_factory, [remote], engines=["remote"]).agents[0].on_engines[0]
    assert engine.tls == EngineTls(
        Path(keys["docker_tls_ca_file"]),
        Path(keys["docker_tls_cert_file"]),
        Path(keys["docker_tls_key_file"]),
    )
    plain = {"name": "remote", "host": "tcp://127.0.0.1:2375"}
    with pytest.raises(ConfigError, match=r"engines\[0\]\.docker_tls_ca_file: host .*mutual TLS"):
        load(config_factory, [plain], engines=["remote"])
    warned = load(config_factory, [{**plain, "docker_tls": False}], engines=["remote"])
    assert any("engines[0].docker_tls: false" in w for w in warned.warnings)


@pytest.mark.parametrize(
    ("engines", "agent", "key", "problem"),
    [
        ([LOCAL], {"engines": ["build-9"]}, r"agents\[0\]\.engines\[0\]", "'build-9' is not an"),
        ([LOCAL], {"engines": []}, r"agents\[0\]\.engines", "is empty"),
        (
            [LOCAL],
            {"engines": ["build-1", "build-1"]},
            r"agents\[0\]\.engines\[1\]",
            "named twice",
        ),
        (
            [LOCAL],
            {"engines": ["build-1"], "docker_host": "unix:///run/x.sock"},
            r"agents\[0\]\.docker_host",
            "an agent with engines",
        ),
        ([], {"engines": ["build-1"]}, r"agents\[0\]\.engines\[0\]", "no \\[\\[engines\\]\\]"),
        ([{"host": LOCAL["host"]}], {}, r"engines\[0\]\.name", "missing required key"),
        ([{**LOCAL, "name": "Build 1"}], {}, r"engines\[0\]\.name", "not a short slug"),
        ([{**LOCAL, "name": "local"}], {}, r"engines\[0\]\.name", "default engine"),
        ([LOCAL, {**OTHER, "name": "build-1"}], {}, r"engines\[1\]\.name", "engines\\[0\\]'s"),
        ([LOCAL, {**OTHER, "host": LOCAL["host"]}], {}, r"engines\[1\]\.host", "name an engine"),
        ([{**LOCAL, "host": "http://x:1"}], {}, r"engines\[0\]\.host", "must be unix"),
        ([{**LOCAL, "max_concurrency": 0}], {}, r"engines\[0\]\.max_concurrency", "at least 1"),
        ([{**LOCAL, "colour": "red"}], {}, r"engines\[0\]\.colour", "unknown key"),
    ],
)
def test_a_wrong_pool_is_refused_naming_the_file_and_key(
    config_factory: ConfigFactory,
    engines: list[dict[str, Any]],
    agent: dict[str, Any],
    key: str,
    problem: str,
) -> None:
    with pytest.raises(ConfigError) as err:
        load(config_factory, engines, **agent)
    assert str(err.value).startswith(str(config_factory.root / "config.toml"))
    assert re.search(rf"{key}: .*{problem}", str(err.value)), str(err.value)


def test_engines_must_be_tables(config_factory: ConfigFactory) -> None:
    text = 'engines = "build-1"\n' + config_factory.text()
    with pytest.raises(ConfigError, match=r"engines: must be an array of tables"):
        load_config(config_factory.write(text))


# --- placement -------------------------------------------------------------------------------


def loads(*specs: tuple[str, int, int, bool]) -> list[EngineLoad]:
    return [EngineLoad(*spec) for spec in specs]


def test_the_least_loaded_engine_with_room_is_chosen() -> None:
    both = loads(("a", 1, 4, True), ("b", 0, 4, True))
    assert choose_engine(both, None) == Decision(Verdict.PLACED, "b")
    # By share of its max_concurrency: 2 of 8 is less loaded than 1 of 2.
    shares = loads(("small", 1, 2, True), ("big", 2, 8, True))
    assert choose_engine(shares, None).engine == "big"
    # A tie goes to the engine the agent names first.
    tie = loads(("b", 0, 2, True), ("a", 0, 2, True))
    assert choose_engine(tie, None).engine == "b"


def test_the_engine_holding_the_threads_workspace_wins_while_it_has_room() -> None:
    busier = loads(("a", 0, 4, True), ("b", 3, 4, True))
    assert choose_engine(busier, "b") == Decision(Verdict.PLACED, "b")
    full = loads(("a", 0, 4, True), ("b", 4, 4, True))
    assert choose_engine(full, "b") == Decision(Verdict.PLACED, "a")
    down = loads(("a", 1, 4, True), ("b", 0, 4, False))
    assert choose_engine(down, "b") == Decision(Verdict.PLACED, "a")
    gone = loads(("a", 1, 4, True), ("b", 0, 4, True))
    assert choose_engine(gone, "c") == Decision(Verdict.PLACED, "b")  # a removed engine


def test_no_room_waits_and_no_engine_up_is_down() -> None:
    assert choose_engine(loads(("a", 2, 2, True), ("b", 0, 2, False)), None) == Decision(
        Verdict.WAIT
    )
    assert choose_engine(loads(("a", 0, 2, False), ("b", 0, 2, False)), "a") == Decision(
        Verdict.DOWN
    )


def test_an_engine_is_down_from_a_failed_ping_or_a_lost_exec_until_a_ping_answers() -> None:
    up = EngineState(True, 0.0)
    down = engine_up(up, Seen.PING_FAILED, 5.0)
    assert down == EngineState(False, 5.0, "ping_failed")
    assert engine_up(down, Seen.EXEC_LOST, 6.0) is down  # no change: the first fall counts
    assert engine_up(up, Seen.EXEC_LOST, 7.0).up is False
    assert engine_up(down, Seen.PING_OK, 9.0) == EngineState(True, 9.0, "")
    assert engine_up(up, Seen.PING_OK, 9.0) is up


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "tasks.sqlite3")
    yield store
    await store.close()


def two_engine_config(factory: ConfigFactory, limit: int = 1) -> Config:
    return load(
        factory,
        [{**LOCAL, "max_concurrency": limit}, {**OTHER, "max_concurrency": limit}],
        engines=["build-1", "build-2"],
        max_concurrency=4,
    )


async def queued_task(store: Store, n: int, number: int = 7) -> Task:
    task, _ = await store.enqueue(make_spec(n, number=number))
    return task


async def test_a_lease_holds_a_slot_records_the_engine_and_frees_it_however_it_ends(
    config_factory: ConfigFactory, store: Store
) -> None:
    config = two_engine_config(config_factory)
    health = EngineHealth(e.name for e in config.agents[0].on_engines)
    placer = EnginePlacer(config, store, health)
    agent = config.agents[0]
    first, second = await queued_task(store, 1, number=7), await queued_task(store, 2, number=8)
    async with placer.lease(first, agent) as one:
        assert one.engine == "build-1" and one.agent.engine.name == "build-1"
        assert one.keeps_workspace is False  # nothing of thread 7 anywhere yet
        with pytest.raises(RuntimeError):
            async with placer.lease(second, agent) as two:
                assert two.engine == "build-2"
                assert placer.running() == {"build-1": 1, "build-2": 1}
                raise RuntimeError("the task failed")
        assert placer.running() == {"build-1": 1, "build-2": 0}  # freed by the failure
    assert placer.running() == {"build-1": 0, "build-2": 0}
    assert await store.thread_engine("dev", "acme/app", 8) == "build-2"
    # Cancelled (a stop, the timeout, the drain) while it holds the slot: freed too.
    held = asyncio.Event()

    async def hold() -> None:
        async with placer.lease(await queued_task(store, 4, number=9), agent):
            held.set()
            await asyncio.Event().wait()

    holder = asyncio.create_task(hold())
    await asyncio.wait_for(held.wait(), 5)
    assert sum(placer.running().values()) == 1
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert placer.running() == {"build-1": 0, "build-2": 0}
    # The follow-up on thread 8 goes back to build-2 though both are idle, after a restart too.
    follow_up = await queued_task(store, 3, number=8)
    restarted = EnginePlacer(config, store, EngineHealth(["build-1", "build-2"]))
    async with restarted.lease(follow_up, agent) as again:
        assert again.engine == "build-2" and again.keeps_workspace is True


async def one_engine_down(
    factory: ConfigFactory, store: Store
) -> tuple[AgentConfig, EngineHealth, EnginePlacer, Task, Task]:
    """A pool of build-1 and build-2, one slot each, build-2 down; two queued tasks on
    two threads: the first to hold build-1, the second to wait for room."""
    config = two_engine_config(factory)
    health = EngineHealth(["build-1", "build-2"])
    placer = EnginePlacer(config, store, health)
    health.seen("build-2", Seen.PING_FAILED)
    holding = await queued_task(store, 1, number=1)
    waiting = await queued_task(store, 2, number=2)
    return config.agents[0], health, placer, holding, waiting


async def test_a_full_pool_waits_for_a_slot_and_a_dead_one_defers_like_docker_down(
    config_factory: ConfigFactory, store: Store
) -> None:
    agent, health, placer, holding, waiting = await one_engine_down(config_factory, store)
    got: list[str | None] = []

    async def second() -> None:
        async with placer.lease(waiting, agent) as lease:
            got.append(lease.engine)

    async with placer.lease(holding, agent):
        later = asyncio.create_task(second())
        await wait_until(lambda: placer.waiting == 1, what="the second to find all full")
        assert not later.done() and got == []
    await asyncio.wait_for(later, 5)
    assert placer.waiting == 0
    assert got == ["build-1"]  # the slot freed, never the engine that is down
    health.seen("build-1", Seen.EXEC_LOST)
    with pytest.raises(EnginesDown) as down:
        async with placer.lease(await queued_task(store, 3, number=3), agent):
            pass
    assert outage_of(down.value) == DOCKER_DOWN  # the scheduler's outage backoff takes it
    assert placer.running() == {"build-1": 0, "build-2": 0}


async def test_a_waiting_task_takes_an_engine_that_comes_back(
    config_factory: ConfigFactory, store: Store
) -> None:
    agent, health, placer, holding, waiting = await one_engine_down(config_factory, store)
    async with placer.lease(holding, agent):
        entered = asyncio.Event()

        async def second() -> str | None:
            async with placer.lease(waiting, agent) as lease:
                entered.set()
                return lease.engine

        later = asyncio.create_task(second())
        await wait_until(lambda: placer.waiting == 1, what="the second to find all full")
        assert not entered.is_set()
        health.seen("build-2", Seen.PING_OK)
        assert await asyncio.wait_for(later, 5) == "build-2"


# --- a lost engine in the scheduler ----------------------------------------------------------


async def test_a_run_that_lost_its_engine_is_interrupted_and_re_run_once(store: Store) -> None:
    """As a restart treats a task it finds interrupted: queued again at once, and failed
    when it is interrupted a second time."""
    runs: Counter[int] = Counter()
    lose = {1: 1, 2: 2}  # spec n → how many of its runs lose their engine

    async def execute(task: Task) -> Outcome:
        n = task.spec.comment_id - 1000 if task.spec.comment_id else 0
        runs[n] += 1
        if runs[n] <= lose[n]:
            raise EngineLost("build-2") from ConnectionResetError("engine gone")
        return Outcome(TaskState.SUCCEEDED, result="done")

    scheduler = Scheduler(store, max_concurrency=1, agent_limits={}, execute=execute)
    seen: list[tuple[int, TaskState]] = []
    scheduler.subscribe(lambda task: seen.append((task.id, task.state)))
    await scheduler.start()
    try:
        once, _ = await scheduler.submit(make_spec(1))
        twice, _ = await scheduler.submit(make_spec(2))
        ended = await wait_until(lambda: _ended(store, once.id, twice.id), what="both tasks to end")
    finally:
        await scheduler.drain(0)
    rerun, given_up = ended
    assert (rerun.state, rerun.attempts, runs[1]) == (TaskState.SUCCEEDED, 2, 2)
    assert (given_up.state, runs[2]) == (TaskState.FAILED, 2)
    assert given_up.error is not None and given_up.error.startswith("interrupted twice")
    assert "build-2 stopped answering" in given_up.error
    states = [e.summary for e in await store.events(once.id) if e.type == "state"]
    assert any(s.startswith("interrupted: interrupted: Docker engine build-2") for s in states)
    assert "re-queued after an interruption" in states
    # The listeners see it queued again, as after a restart, not the moment between.
    assert (once.id, TaskState.INTERRUPTED) not in seen
    assert seen.count((once.id, TaskState.QUEUED)) == 2


async def _ended(store: Store, *ids: int) -> tuple[Task, ...] | None:
    tasks = [await store.get(task_id) for task_id in ids]
    if all(t is not None and t.state.is_final for t in tasks):
        return tuple(t for t in tasks if t is not None)
    return None


def test_engine_up_is_a_gauge_per_engine() -> None:
    metrics = Metrics()
    metrics.observe_queue(QueueSnapshot(engines={"build-1": True, "build-2": False}))
    body, _ = metrics.render()
    text = body.decode()
    assert 'claude_hooks_engine_up{engine="build-1"} 1.0' in text
    assert 'claude_hooks_engine_up{engine="build-2"} 0.0' in text


# --- the worker holds a lease --------------------------------------------------------------


class ThreadClient:
    """Forgejo as the worker reads one open issue with one comment."""

    async def get_repo(self, repo: str) -> Repository:
        return Repository(1, repo, "main", "http://127.0.0.1:3000/acme/app.git", "")

    async def get_issue(self, repo: str, number: int) -> Issue:
        return Issue(number, "Crash", "", "open", User(1, "alice"), False, "")

    async def list_comments(self, repo: str, number: int) -> list[Comment]:
        return [Comment(id=3, body="@dev please", user=User(1, "alice"), html_url="")]


class Everyone:
    async def trusted(self, agent: str, repo: str, logins: set[str]) -> frozenset[str]:
        return frozenset(logins)


class NoReports:
    def checklist(self, task: Task) -> Callable[[str], None]:
        return lambda line: None


class ArgvRuntime(AnsweringRuntime):
    """Records each run's argv and the engine its agent was placed on."""

    def __init__(self) -> None:
        super().__init__("done")
        self.runs: list[tuple[str, tuple[str, ...]]] = []

    async def run(
        self,
        agent: AgentConfig,
        claude: ClaudeExec,
        on_event: Callable[[StreamEvent], None],
        room: object = None,
    ) -> ExecResult:
        self.runs.append((agent.engine.name, claude.argv))
        return await super().run(agent, claude, on_event)


@pytest.mark.parametrize(
    ("two_up", "engine", "resumes"), [(True, "build-2", True), (False, "build-1", False)]
)
async def test_a_follow_up_resumes_only_on_the_engine_holding_its_session(
    config_factory: ConfigFactory, store: Store, two_up: bool, engine: str, resumes: bool
) -> None:
    config = load(config_factory, [LOCAL, OTHER], engines=["build-1", "build-2"], checkout=False)
    earlier = await queued_task(store, 1, number=12)
    await store.mark_running(earlier.id)
    await store.set_engine(earlier.id, "build-2")
    await store.finish(earlier.id, Outcome(TaskState.SUCCEEDED, session_id="s-old"))
    health = EngineHealth(["build-1", "build-2"])
    if not two_up:
        health.seen("build-2", Seen.PING_FAILED)
    runtime = ArgvRuntime()
    worker = TaskWorker(
        config, store, runtime, lambda _: ThreadClient(), NoReports(), None,  # type: ignore[arg-type]
        daemon_id="test", permissions=Everyone(),  # type: ignore[arg-type]
        placer=EnginePlacer(config, store, health),
    )  # fmt: skip
    follow_up = await store.mark_running((await queued_task(store, 2, number=12)).id)
    outcome = await worker.execute(follow_up)
    assert outcome.state is TaskState.SUCCEEDED
    [(placed_on, argv)] = runtime.runs
    assert placed_on == engine
    assert ("--resume" in argv and "s-old" in argv) is resumes
    assert await store.thread_engine("dev", "acme/app", 12) == engine


class FailingRuntime(ArgvRuntime):
    """Its container step (`ready`) or its Claude exec (`run`) fails with `failure`."""

    def __init__(self, failure: Exception, *, at: str) -> None:
        super().__init__()
        self.failure, self.at = failure, at

    async def ready(self, agent: AgentConfig) -> None:
        if self.at == "ready":
            raise self.failure

    async def run(
        self,
        agent: AgentConfig,
        claude: ClaudeExec,
        on_event: Callable[[StreamEvent], None],
        room: object = None,
    ) -> ExecResult:
        if self.at == "run":
            raise self.failure
        return await super().run(agent, claude, on_event)


# What a dockerd stopping on SIGTERM gives a task on it (issue 18's CI, Docker 20.10): it
# stops its containers first, so the claude exec ends "killed" in a stopped container, and
# it still answers, 500, on the connections it holds ("failed to update store for object
# type *libnetwork.endpoint" as the next task's container started). Both failed the tasks.
ENGINE_GOING_DOWN = [
    pytest.param(ContainerStopped("2ff57c0278c3"), "run", id="container-stopped-under-claude"),
    pytest.param(
        DockerError(500, "failed to update store for object type *libnetwork.endpoint"),
        "ready",
        id="500-starting-the-container",
    ),
    pytest.param(DockerError(900, "Cannot connect to the Docker daemon"), "run", id="unreachable"),
]


@pytest.mark.parametrize(("failure", "at"), ENGINE_GOING_DOWN)
async def test_an_engine_failing_a_pool_run_loses_it_and_is_down(
    config_factory: ConfigFactory, store: Store, failure: Exception, at: str
) -> None:
    config = load(config_factory, [LOCAL, OTHER], engines=["build-1", "build-2"], checkout=False)
    health = EngineHealth(["build-1", "build-2"])
    worker = TaskWorker(
        config, store, FailingRuntime(failure, at=at), lambda _: ThreadClient(), NoReports(),
        None, daemon_id="test", permissions=Everyone(),  # type: ignore[arg-type]
        placer=EnginePlacer(config, store, health),
    )  # fmt: skip
    task = await store.mark_running((await queued_task(store, 1, number=12)).id)
    with pytest.raises(EngineLost) as lost:
        await worker.execute(task)
    assert lost.value.__cause__ is failure
    assert not health.is_up(lost.value.engine)  # no other task is placed there meanwhile
    other = {"build-1": "build-2", "build-2": "build-1"}[lost.value.engine]
    assert health.is_up(other)  # where the re-run goes


@pytest.mark.parametrize(
    "failure",
    [DockerError(404, "No such image: agent:gone"), DockerError(400, "invalid mount config")],
)
async def test_a_refused_request_is_the_runs_failure_not_the_engines(
    config_factory: ConfigFactory, store: Store, failure: Exception
) -> None:
    """A 4xx is the same on every engine: no other engine is tried, none is marked down."""
    config = load(config_factory, [LOCAL, OTHER], engines=["build-1", "build-2"], checkout=False)
    health = EngineHealth(["build-1", "build-2"])
    worker = TaskWorker(
        config, store, FailingRuntime(failure, at="ready"), lambda _: ThreadClient(),
        NoReports(), None, daemon_id="test", permissions=Everyone(),  # type: ignore[arg-type]
        placer=EnginePlacer(config, store, health),
    )  # fmt: skip
    task = await store.mark_running((await queued_task(store, 1, number=12)).id)
    with pytest.raises(DockerError) as refused:
        await worker.execute(task)
    assert refused.value is failure
    assert all(state.up for state in health.states().values())
