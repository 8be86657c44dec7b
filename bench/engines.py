"""Figure 10: a remote (TLS tcp) Docker engine against the local one, and two engines
against one (issue #18).

The second engine is a second real dockerd on 127.0.0.1 over mutual TLS
(harness.second_engine, the tests' tests/second_dockerd.py), with the bench image
copied into it. Both engines run on this machine and share its cores.

Reaction: one daemon, webhooks, two agents: one on the local socket, one whose
`docker_host` is the TLS engine; mentions alternate between them, BENCH_ENGINES_RUNS
(20) each after a container-creating warm-up; comment → the `claude` exec_start as
that agent's engine timestamps it (figure 1's measure). Floor: a bare `docker exec
true` round trip through aiodocker on each engine (for the TLS one with the same TLS
context the daemon builds, runner/engines.py open_docker).

Throughput: BENCH_ENGINES_TASKS (200) API tasks of the scripted claude that end at
once, 4 agents × 2 slots, 8 global slots; makespan from the first POST /tasks to the
last result stored, once with every agent on the local engine, once with half of the
agents on the TLS engine. Each layout is its own daemon and deployment, warmed up
first (every agent's container exists before the clock starts).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.harness import (
    Lab,
    SecondEngine,
    exec_floor,
    second_engine,
    submit,
    task_rows,
    wait_until,
)
from bench.reaction import one_mention
from bench.stats import Row, sample_row, value_row
from claude_hooks.config import Config
from claude_hooks.runner.engines import EngineHealth
from claude_hooks.runner.placement import EnginePlacer
from claude_hooks.store import Store
from claude_hooks.tasks import TaskKind, TaskSpec, TriggerSource

RUNS = int(os.environ.get("BENCH_ENGINES_RUNS", "20"))
TASKS = int(os.environ.get("BENCH_ENGINES_TASKS", "200"))
FLOOR_RUNS = 20
AGENTS, PER_AGENT = 4, 2
SLOTS = AGENTS * PER_AGENT
PLACEMENTS = int(os.environ.get("BENCH_ENGINES_PLACEMENTS", "500"))
PROMPT = "fake-claude: delay=0"  # the scripted claude prints its lines and ends at once
FIGURE = "10 engines"
SHARED_CORES = f"both engines share this machine's {os.cpu_count()} cores"

# One agent's keys per agent of a throughput deployment, from the second engine.
Layout = Callable[[SecondEngine], Sequence[dict[str, Any]]]


# --- reaction: remote engine vs local ---------------------------------------------------------


async def reaction_rows(lab: Lab, second: SecondEngine) -> list[Row]:
    local_floor = await exec_floor(lab.engine, FLOOR_RUNS)
    remote_floor = await exec_floor(second.docker, FLOOR_RUNS)
    config = lab.deployment(2, webhook=True, poll_interval=600, per_agent=[{}, second.agent_keys()])
    daemon = await lab.start_daemon(config)
    watchers = (lab.watcher(), lab.watcher(second.engine))  # agent 0 local, agent 1 remote
    for watcher in watchers:
        await watcher.start()
    local: list[float] = []
    remote: list[float] = []
    try:
        for run in range(RUNS + 1):  # run 0 creates the containers: not counted
            for index, sample in enumerate((local, remote)):
                _, started = await one_mention(
                    lab, watchers[index], config, reaction=False, agent_index=index
                )
                if run > 0:
                    sample.append(started)
    finally:
        for watcher in watchers:
            await watcher.close()
        await daemon.stop()
    return _reaction_rows(local, remote, local_floor, remote_floor)


def _reaction_rows(
    local: Sequence[float],
    remote: Sequence[float],
    local_floor: Sequence[float],
    remote_floor: Sequence[float],
) -> list[Row]:
    local_p50, remote_p50 = statistics.median(local), statistics.median(remote)
    local_floor_p50, remote_floor_p50 = (
        statistics.median(local_floor),
        statistics.median(remote_floor),
    )
    floor_ratio = remote_floor_p50 / local_floor_p50
    ratio = remote_p50 / local_p50
    local_text = f"docker exec true, local, p50 {local_floor_p50:.0f} ms"
    remote_text = f"docker exec true over TLS, p50 {remote_floor_p50:.0f} ms"
    none = "none set (#18)"
    return [
        sample_row(FIGURE, "local engine: comment → claude exec_start", local, "ms",
                   floor=local_text, target=none),
        sample_row(FIGURE, "TLS engine: comment → claude exec_start", remote, "ms",
                   floor=remote_text, target=none),
        value_row(FIGURE, "local: exec_start p50 ÷ its floor p50", local_p50 / local_floor_p50,
                  "×", floor=local_text, target="≤ 1.3 × (checked in figure 1)"),
        value_row(FIGURE, "TLS: exec_start p50 ÷ its floor p50", remote_p50 / remote_floor_p50,
                  "×", floor=remote_text, target="≤ 1.3 × (checked in figure 1)"),
        # No verdict: the two differ by a few ms, less than the p50s' own run-to-run noise.
        value_row(FIGURE, "TLS ÷ local, exec_start p50", ratio, "×",
                  floor=f"floors TLS ÷ local {floor_ratio:.2f} × "
                  f"({remote_floor_p50 - local_floor_p50:+.0f} ms); "
                  f"exec_start {remote_p50 - local_p50:+.0f} ms", target=none),
        sample_row(FIGURE, "floor: bare docker exec true, local", local_floor, "ms",
                   floor="aiodocker, unix socket", target=none),
        sample_row(FIGURE, "floor: bare docker exec true, TLS engine", remote_floor, "ms",
                   floor="aiodocker, tcp 127.0.0.1 + mutual TLS", target=none),
    ]  # fmt: skip


# --- throughput: two engines vs one ------------------------------------------------------------


@dataclass(frozen=True)
class Makespan:
    seconds: float
    tasks: int
    failed: int
    local_execs: int  # claude execs each engine reported
    remote_execs: int
    load: tuple[float, float]  # the machine's 1-minute load average at the start and end


def all_local(second: SecondEngine) -> Sequence[dict[str, Any]]:
    return [{}] * AGENTS


def split_over_engines(second: SecondEngine) -> Sequence[dict[str, Any]]:
    """Half of the agents on the local engine, half on the TLS one: the same slots."""
    return [{}] * (AGENTS // 2) + [second.agent_keys()] * (AGENTS - AGENTS // 2)


LOCAL_SOCKET = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def pool_tables(second: SecondEngine) -> list[dict[str, Any]]:
    """Both engines as [[engines]] tables, each with room for every slot."""
    return [
        {"name": "here", "host": LOCAL_SOCKET, "max_concurrency": SLOTS},
        second.engine_table("second", max_concurrency=SLOTS),
    ]


def pool_config(lab: Lab, second: SecondEngine) -> Config:
    """The same 4 agents × 2 slots, each with engines = ["here", "second"]: the daemon
    places every task (runner/placement.py)."""
    return lab.deployment(
        AGENTS,
        agent={"max_concurrency": PER_AGENT, "engines": ["here", "second"]},
        engines=pool_tables(second),
        max_concurrency=SLOTS,
        poll_interval=600,
    )


async def pool_over_both_engines(lab: Lab, second: SecondEngine) -> Makespan:
    return await makespan(lab, second, pool_config(lab, second))


async def placement_cost(config: Config, leases: int = PLACEMENTS) -> list[float]:
    """µs of one task's placement in the daemon's own code: EnginePlacer.lease taken
    and given back (the thread's engine read from the store, choose_engine, the engine
    written to the task), `leases` times over a real store, one task each."""
    agent = config.agents[0]
    health = EngineHealth(engine.name for engine in config.engines)
    store = await Store.open(config.daemon.state_dir / "placement-bench.sqlite3")
    try:
        placer = EnginePlacer(config, store, health)
        times = []
        for n in range(leases):
            spec = TaskSpec(
                agent=agent.name, kind=TaskKind.API, repo="bench/placement", number=n % 20,
                idempotency_key=f"place-{n}", requested_by="api", request=PROMPT,
                source=TriggerSource.API,
            )  # fmt: skip
            task, _ = await store.enqueue(spec)
            began = time.perf_counter()
            async with placer.lease(task, agent):
                pass
            times.append((time.perf_counter() - began) * 1e6)
        return times
    finally:
        await store.close()


async def layout_makespan(lab: Lab, second: SecondEngine, layout: Layout) -> Makespan:
    config = lab.deployment(
        AGENTS,
        agent={"max_concurrency": PER_AGENT},
        per_agent=layout(second),
        max_concurrency=SLOTS,
        poll_interval=600,
    )
    return await makespan(lab, second, config)


async def makespan(lab: Lab, second: SecondEngine, config: Config) -> Makespan:
    """TASKS scripted tasks POSTed round-robin over the deployment's agents, after one
    warm-up task each: from the first POST to the last result stored."""
    daemon = await lab.start_daemon(config)
    repo, names = lab.repo_of(config), [a.name for a in config.agents]
    watchers = (lab.watcher(), lab.watcher(second.engine))
    for watcher in watchers:
        await watcher.start()
    try:
        async with aiohttp.ClientSession() as session:
            for name in names:  # every container exists before the clock starts
                await submit(session, config, name, repo, PROMPT)
            await wait_until(lambda: _ended(config), 120, "the warm-up tasks")
            warm = len(task_rows(config))
            load_before = os.getloadavg()[0]
            first = time.time()
            for n in range(TASKS):
                await submit(session, config, names[n % len(names)], repo, PROMPT)
        await wait_until(lambda: _ended(config), TASKS * 2 + 120, f"{TASKS} tasks")
    finally:
        for watcher in watchers:
            await watcher.close()
        await daemon.stop()
    rows = task_rows(config)[warm:]
    last = max(row.finished_at or first for row in rows)
    local, remote = (len(watcher.starts(first)) for watcher in watchers)
    failed = sum(row.state != "succeeded" for row in rows)
    load = (load_before, os.getloadavg()[0])
    return Makespan(last - first, len(rows), failed, local, remote, load)


def _ended(config: Config) -> bool:
    rows = task_rows(config)
    return bool(rows) and all(r.state not in ("queued", "running") for r in rows)


async def throughput_rows(lab: Lab, second: SecondEngine) -> list[Row]:
    one = await layout_makespan(lab, second, all_local)
    two = await layout_makespan(lab, second, split_over_engines)
    pool = await pool_over_both_engines(lab, second)
    slots = f"{AGENTS} agents × {PER_AGENT} slots"
    spreading = f"{SHARED_CORES}: the overhead of spreading, not a second host's capacity"
    return [
        _makespan_row(f"makespan, {TASKS} tasks, one engine ({slots})", one),
        _makespan_row(f"makespan, {TASKS} tasks, two engines (half the agents each)", two),
        _makespan_row(f"makespan, {TASKS} tasks, every agent in a pool of both", pool),
        value_row(FIGURE, "makespan one engine ÷ two engines", one.seconds / two.seconds, "×",
                  floor=spreading, target="none set (#18)"),
        value_row(FIGURE, "makespan one engine ÷ pool of both", one.seconds / pool.seconds,
                  "×", floor=spreading, target="none set (#18)"),
    ]  # fmt: skip


async def placement_rows(lab: Lab, second: SecondEngine) -> list[Row]:
    times = await placement_cost(pool_config(lab, second))
    return [
        sample_row(FIGURE, "placement per task (lease taken and given back)", times, "µs",
                   floor="two store round trips (read the thread's engine, write the task's)"
                   " + choose_engine", target="none set (#18)"),
    ]  # fmt: skip


def _makespan_row(metric: str, result: Makespan) -> Row:
    return value_row(
        FIGURE,
        metric,
        result.seconds,
        "s",
        floor=f"{1000 * result.seconds / max(result.tasks, 1):.0f} ms/task; claude execs "
        f"local {result.local_execs}, TLS {result.remote_execs}; {result.failed} not succeeded;"
        f" load {result.load[0]:.1f} → {result.load[1]:.1f}",
        target="none set (#18)",
    )


# --- the figure --------------------------------------------------------------------------------

# Each part is one group of rows, measured in this order on the same two engines.
PARTS: tuple[Callable[[Lab, SecondEngine], Awaitable[list[Row]]], ...] = (
    reaction_rows,
    throughput_rows,
    placement_rows,
)


async def engines() -> list[Row]:
    async with Lab() as lab, second_engine() as second:
        rows: list[Row] = []
        for part in PARTS:
            rows += await part(lab, second)
        return rows
