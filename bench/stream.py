"""Figure 5: stream-json throughput, parse alone and end to end, and the loop's worst stall.

Parse alone: parse_line over BENCH_STREAM_LINES (200,000) lines shaped like the
fake claude's `lines=N` output, in-process (and LineSplitter + parse_line over the
same bytes in 64 KiB frames, as the exec stream delivers them).

End to end: the daemon's Services in this process (so a ticker task can run in
the daemon's own event loop), real Docker, logging as the daemon logs (JSON, info,
to a file); one API task whose fake claude prints the lines as fast as it can.
Lines/s counts from Docker's exec_start to the task stored as finished. The
ticker wakes every 5 ms and records how late it woke.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing

from bench.harness import Lab, read_floor
from bench.stats import Row, value_row
from claude_hooks.config import Config
from claude_hooks.daemon.interpreter import tune_for_serving
from claude_hooks.daemon.log import setup_logging
from claude_hooks.daemon.services import Services
from claude_hooks.runner.execution import LineSplitter
from claude_hooks.runner.stream import parse_line
from claude_hooks.tasks import Task, TaskKind, TaskSpec, TriggerSource

LINES = int(os.environ.get("BENCH_STREAM_LINES", "200000"))
TICK = 0.005
FRAME = 65536


def fake_lines(n: int) -> list[bytes]:
    """What fake-claude's `lines=N` prints (without the final result line)."""
    return [
        b'{"type":"assistant","message":{"id":"msg_fake","type":"message","role":"assistant",'
        b'"content":[{"type":"text","text":"line %d"}]},"session_id":"fake-session"}' % i
        for i in range(1, n + 1)
    ]


def parse_alone() -> list[Row]:
    lines = fake_lines(LINES)
    began = time.perf_counter()
    for line in lines:
        parse_line(line)
    parse = LINES / (time.perf_counter() - began)
    data = b"\n".join(lines) + b"\n"
    splitter = LineSplitter()
    began = time.perf_counter()
    for start in range(0, len(data), FRAME):
        for line in splitter.feed(data[start : start + FRAME]):
            parse_line(line)
    split = LINES / (time.perf_counter() - began)
    return [
        value_row("5 stream", "parse_line alone (in-process)", parse, "lines/s",
                  target="≥ 100k/s", met=parse >= 100_000),
        value_row("5 stream", "LineSplitter + parse_line, 64 KiB frames", split, "lines/s"),
    ]  # fmt: skip


class Ticker:
    """Wakes every `period` seconds; the worst lateness of a wake-up is the loop's stall."""

    def __init__(self, period: float = TICK) -> None:
        self.period = period
        self.worst = 0.0
        self.late: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            late = loop.time() - due
            self.late.append(late)
            self.worst = max(self.worst, late)

    def reset(self) -> None:
        self.worst, self.late = 0.0, []

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class CallbackClock:
    """The longest single callback of the event loop, in this thread's CPU time.

    The ticker's lateness is wall time: on a busy machine it includes the time the OS
    gave the CPU to other processes (and the GIL to other threads). The CPU time of one
    callback is the part of a stall the daemon's own code causes, whatever the load.
    """

    def __init__(self) -> None:
        self.longest = 0.0
        self.where = ""
        self._run = asyncio.events.Handle._run

    def __enter__(self) -> CallbackClock:
        original, clock = self._run, self

        def timed(handle: asyncio.events.Handle) -> None:
            began = time.thread_time()
            original(handle)
            spent = time.thread_time() - began
            if spent > clock.longest:
                clock.longest, clock.where = spent, _callback_name(handle)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.events.Handle._run = self._run  # type: ignore[method-assign]

    def reset(self) -> None:
        self.longest, self.where = 0.0, ""


def _callback_name(handle: asyncio.events.Handle) -> str:
    callback = handle._callback  # type: ignore[attr-defined]
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        return str(getattr(task.get_coro(), "__qualname__", task.get_name()))
    return str(getattr(callback, "__qualname__", type(callback).__name__))


async def idle_lateness(seconds: float = 3.0) -> tuple[float, float]:
    """(p99, worst) lateness in s of the ticker in an otherwise idle loop: the machine's floor."""
    ticker = Ticker()
    ticker.start()
    await asyncio.sleep(seconds)
    await ticker.stop()
    ordered = sorted(ticker.late)
    return ordered[int(len(ordered) * 0.99)], ticker.worst


def api_spec(config: Config, key: str, prompt: str) -> TaskSpec:
    return TaskSpec(
        agent=config.agents[0].name, kind=TaskKind.API, repo="bench/app", number=None,
        idempotency_key=key, requested_by="api", request=prompt, source=TriggerSource.API,
    )  # fmt: skip


async def _finished(services: Services, task_id: int, limit: float) -> Task:
    async with asyncio.timeout(limit):
        while True:
            task = await services.store.get(task_id)
            if task is not None and task.state.is_final:
                return task
            await asyncio.sleep(0.05)


def _stored_events(config: Config, task_id: int) -> int:
    with closing(sqlite3.connect(config.daemon.db_path)) as db:
        query = "SELECT count(*) FROM task_events WHERE task_id = ?"
        return int(db.execute(query, (task_id,)).fetchone()[0])


async def end_to_end() -> list[Row]:
    async with Lab() as lab:
        config = lab.deployment(1, poll_interval=600)
        log_path = config.path.parent / "daemon.log"
        restore = _log_to(log_path)
        services = await Services.start(config, daemon_id=f"bench-{os.getpid()}", listen=False)
        tune_for_serving()  # as the daemon does once it has started
        watcher, ticker = lab.watcher(), Ticker()
        await watcher.start()
        ticker.start()
        try:
            warm, _ = await services.submit(api_spec(config, "warm", "fake-claude: lines=10"))
            await _finished(services, warm.id, 60)
            asked = time.time()
            ticker.reset()
            task, _ = await services.submit(api_spec(config, "big", f"fake-claude: lines={LINES}"))
            task = await _finished(services, task.id, 600)
            stall, ticks = ticker.worst, sorted(ticker.late)
        finally:
            await ticker.stop()
            await watcher.close()
            await services.scheduler.drain(5)
            await services.close()
            restore()
        started = watcher.starts(asked)[0].at
        seconds = (task.finished_at or 0) - started
        stored = _stored_events(config, task.id)
        logged = sum(1 for line in log_path.open() if '"claude_event"' in line)
        bare_lines, bare_seconds = await read_floor(lab.docker, f"fake-claude: lines={LINES}")
    rate = (LINES + 1) / seconds
    bare = bare_lines / bare_seconds
    p99 = ticks[int(len(ticks) * 0.99)] if ticks else 0.0
    return [
        value_row("5 stream", f"end to end, {LINES:,} lines: exec → stored", rate, "lines/s",
                  floor=f"{seconds:.1f} s, task {task.state}", target="≥ 100k/s",
                  met=rate >= 100_000),
        value_row("5 stream", "  floor: the same output read by aiodocker, unparsed", bare,
                  "lines/s", floor=f"{bare_lines:,} lines in {bare_seconds:.1f} s; no daemon"),
        value_row("5 stream", "  …end to end ÷ that floor", rate / bare, "×",
                  floor="what parsing, storing and logging leave of Docker's own rate"),
        value_row("5 stream", "  …events stored / lines logged", stored, "events",
                  floor=f"{logged:,} claude_event log lines (store caps a task's log)"),
        value_row("5 stream", "event loop worst stall during the stream", stall * 1000, "ms",
                  floor=f"5 ms ticker, p99 lateness {p99 * 1000:.1f} ms"),
    ]  # fmt: skip


def _log_to(path: os.PathLike[str]) -> Callable[[], None]:
    """Log as the daemon does (JSON, info) into `path`; the returned function undoes it."""
    stream = open(path, "w")  # noqa: SIM115 - closed by the returned function
    setup_logging("json", "info", stream=stream)

    def restore() -> None:
        setup_logging("console", "warning")
        stream.close()

    return restore


async def stream_throughput() -> list[Row]:
    load = os.getloadavg()[0]
    parse = parse_alone()
    end = await end_to_end()
    ratio = (end[0].p50 or 0) / (parse[0].p50 or 1)
    return [
        *parse,
        *end,
        value_row("5 stream", "end to end ÷ parse_line alone", ratio, "×",
                  floor=f"same run; load {load:.2f} → {os.getloadavg()[0]:.2f}",
                  target="≥ 0.33", met=ratio >= 1 / 3),
    ]  # fmt: skip
