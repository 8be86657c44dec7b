"""Figure 8: the event loop while 20 tasks stream at once, and webhook → 👀 meanwhile.

Real Docker, the daemon's Services in this process (so a 5 ms ticker runs in the
daemon's own event loop), logging as the daemon logs (JSON, info, to a file). 10
agents × 2 slots; every container is created first by a small warm-up task, then
BENCH_LOOP_TASKS (20) API tasks whose scripted claude prints BENCH_LOOP_LINES
(50,000) lines as fast as it can are submitted at once. The ticker's lateness is
counted from the first of their claude execs starting (Docker's exec_start) to the
last of them stored as finished; "streaming at once" is how many claude execs were
running together at most (exec_start/exec_die).

Meanwhile a person mentions an 11th agent every 100 ms through the webhook (on a new
issue, whose own webhook is delivered first); each comment → 👀 visible on the simulator
(checked every 2 ms) is one sample. The
simulator runs in this process too, so its work is on the same loop: the figure
is, if anything, pessimistic.

Real Docker rather than the execution path fed from memory, because the stall
depends on how frames arrive (aiodocker's parser, its flow control) and on the
other work of the same loop (the store's writer thread, the HTTP handlers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time

from bench.harness import Lab, mention, wait_until
from bench.stats import Row, percentile, sample_row, value_row
from bench.stream import CallbackClock, Ticker, _finished, _log_to, idle_lateness
from claude_hooks.config import Config
from claude_hooks.daemon.interpreter import tune_for_serving
from claude_hooks.daemon.services import Services
from claude_hooks.tasks import Task, TaskKind, TaskSpec, TriggerSource

TASKS = int(os.environ.get("BENCH_LOOP_TASKS", "20"))
LINES = int(os.environ.get("BENCH_LOOP_LINES", "50000"))
SLOTS = 2  # per agent
MENTION_EVERY = 0.1  # seconds between two webhook mentions during the load
ACK_LIMIT = 30.0  # seconds a 👀 may take before the sample is recorded as that long


def _spec(agent: str, key: str, prompt: str) -> TaskSpec:
    return TaskSpec(
        agent=agent, kind=TaskKind.API, repo="bench/app", number=None,
        idempotency_key=key, requested_by="api", request=prompt, source=TriggerSource.API,
    )  # fmt: skip


async def _run_all(services: Services, specs: list[TaskSpec], limit: float) -> list[Task]:
    tasks = [(await services.submit(spec))[0] for spec in specs]
    return list(await asyncio.gather(*(_finished(services, t.id, limit) for t in tasks)))


async def _mentions(lab: Lab, config: Config, until: asyncio.Event) -> list[float]:
    """ms from each comment to its 👀, one comment every MENTION_EVERY s until `until`."""
    repo, agent = lab.repo_of(config), config.agents[-1].name
    times: list[float] = []
    while not until.is_set():
        _, comment, asked = await mention(lab.sim, repo, agent, "delay=0")

        def eyes(comment: int = comment) -> bool:
            return any(r.content == "eyes" for r in lab.sim.reactions(repo, comment_id=comment))

        # A miss counts as the limit: it must not hide the other figures.
        with contextlib.suppress(AssertionError):
            await wait_until(eyes, ACK_LIMIT, "the 👀 reaction", every=0.002)
        times.append((time.time() - asked) * 1000)
        await asyncio.sleep(MENTION_EVERY)
    return times


class BareTicker:
    """bench/bare_ticker.py in its own process, beside the load: the machine's floor."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(cls) -> BareTicker:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.bare_ticker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(process)

    async def stop(self) -> tuple[float, float]:
        """(p99, worst) lateness in seconds while it ran."""
        out, _ = await self._process.communicate(b"")
        figures = json.loads(out)
        return figures["p99"], figures["worst"]


def _most_at_once(starts: list[float], dies: list[float]) -> int:
    edges = sorted([(t, 1) for t in starts] + [(t, -1) for t in dies])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


async def loaded_loop() -> list[Row]:
    load_start = os.getloadavg()[0]
    agents = TASKS // SLOTS
    async with Lab() as lab:
        config = lab.deployment(
            agents + 1, webhook=True, poll_interval=600, max_concurrency=TASKS + SLOTS,
            agent={"max_concurrency": SLOTS},
        )  # fmt: skip
        restore = _log_to(config.path.parent / "daemon.log")
        services = await Services.start(config, daemon_id=f"bench-loop-{os.getpid()}")
        tune_for_serving()  # as the daemon does once it has started
        watcher, ticker, done = lab.watcher(), Ticker(), asyncio.Event()
        await watcher.start()
        idle_p99, idle_worst = await idle_lateness()
        ticker.start()
        clock = CallbackClock().__enter__()
        try:
            names = [a.name for a in config.agents]
            await _run_all(
                services, [_spec(n, f"w{n}", "fake-claude: lines=10") for n in names], 120
            )
            asked = time.time()
            specs = [
                _spec(names[i % agents], f"big{i}", f"fake-claude: lines={LINES}")
                for i in range(TASKS)
            ]
            big = asyncio.create_task(_run_all(services, specs, 900))
            await wait_until(
                lambda: bool(watcher.starts(asked)) or big.done(), 120, "the first claude exec",
                every=0.005,
            )  # fmt: skip
            ticker.reset()
            clock.reset()
            bare = await BareTicker.start()
            cpu = time.process_time()
            acks = asyncio.create_task(_mentions(lab, config, done))
            tasks = await big
            stall, late = ticker.worst, list(ticker.late)
            bare_p99, bare_worst = await bare.stop()
            longest, where, cpu = clock.longest, clock.where, time.process_time() - cpu
            done.set()
            eyes = await acks
        finally:
            clock.__exit__()
            done.set()
            await ticker.stop()
            await watcher.close()
            await services.scheduler.drain(10)
            await services.close()
            restore()
        acked = f"claude-hooks-{names[-1]}"  # the webhook agent's runs are not the load
        starts = [e.at for e in watcher.starts(asked) if e.container != acked]
        dies = [e.at for e in watcher.dies(asked) if e.container != acked]
    states = sorted({t.state.value for t in tasks})
    seconds = max(t.finished_at or 0 for t in tasks) - min(starts)
    rate = TASKS * (LINES + 1) / seconds
    p99 = percentile(late, 99) * 1000 if late else 0.0
    load = f"load {load_start:.2f} → {os.getloadavg()[0]:.2f}"
    floor = (
        f"same load, bare ticker process: worst {bare_worst * 1000:.1f}, p99 {bare_p99 * 1000:.1f}"
        f" ms; idle loop: worst {idle_worst * 1000:.1f}, p99 {idle_p99 * 1000:.1f} ms"
    )
    heading = f"8 loop ({TASKS}×{LINES // 1000}k)"
    return [
        value_row(heading, "event loop worst stall (5 ms ticker)", stall * 1000, "ms",
                  floor=f"{floor}; {len(late)} ticks; {load}", target="≤ 10 ms",
                  met=stall <= 0.010),
        value_row(heading, "event loop p99 lateness", p99, "ms",
                  floor=f"{floor}; p50 {percentile(late, 50) * 1000:.2f} ms" if late else floor,
                  target="≤ 3 ms", met=p99 <= 3.0),
        sample_row(heading, "webhook → 👀 during the load", eyes, "ms",
                   floor="idle: figure 1", target="p95 ≤ 50 ms", limit=50, at="p95"),
        value_row(heading, "  …longest callback, main-thread CPU", longest * 1000, "ms",
                  floor=f"in {where}; the part of a stall the daemon's code causes"),
        value_row(heading, "  …daemon CPU per line (all threads)", cpu / (TASKS * LINES) * 1e6,
                  "µs", floor=f"{cpu:.1f} s CPU over {seconds:.1f} s"),
        value_row(heading, "  …lines/s, all tasks, first exec → last stored", rate, "lines/s",
                  floor=f"{seconds:.1f} s; {_most_at_once(starts, dies)} claude execs at once"
                  f"; states {states}"),
    ]  # fmt: skip
