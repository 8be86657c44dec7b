"""Figure 7: SIGTERM with 8 running tasks, until the daemon process has exited.

4 agents × 2 slots, 8 global slots, tasks POSTed to /tasks; SIGTERM goes to the
daemon as soon as Docker reports the 8th claude exec started.

- Finishing: the fake claude prints its six lines 0.33 s apart (≈ 2 s a run). The
  floor is when the last of them exited (Docker's exec_die) after the SIGTERM:
  the daemon cannot exit cleanly before that.
- Hanging: the fake claude never ends (`hang=1`), drain_timeout = 10 s; every task
  must be recorded `interrupted`. A fresh deployment each run, so that recovery
  does not re-run the previous run's interrupted tasks.
"""

from __future__ import annotations

import os
import time

import aiohttp

from bench.harness import Daemon, ExecWatcher, Lab, submit, task_rows, wait_until
from bench.stats import Row, sample_row
from claude_hooks.config import Config

AGENTS, PER_AGENT, SLOTS = 4, 2, 8
RUNS = int(os.environ.get("BENCH_DRAIN_RUNS", "5"))
HANG_RUNS = int(os.environ.get("BENCH_DRAIN_HANG_RUNS", "2"))
HANG_DRAIN_TIMEOUT = 10.0


async def _start_tasks(
    lab: Lab, config: Config, watcher: ExecWatcher, directive: str
) -> tuple[Daemon, float]:
    """A daemon with SLOTS claude execs running: (the daemon, when the tasks were asked)."""
    daemon = await lab.start_daemon(config)
    repo, names = lab.repo_of(config), [a.name for a in config.agents]
    asked = time.time()
    async with aiohttp.ClientSession() as session:
        for n in range(SLOTS):
            await submit(session, config, names[n % AGENTS], repo, f"fake-claude: {directive}")
    await wait_until(lambda: len(watcher.starts(asked)) >= SLOTS, 60, "8 claude execs", 0.005)
    return daemon, asked


async def _sigterm(daemon: Daemon) -> tuple[float, int]:
    """Seconds from SIGTERM to the process's exit, and its exit code."""
    sent = time.time()
    code = await daemon.stop(limit=60)
    return time.time() - sent, code


async def finishing_drain(lab: Lab, watcher: ExecWatcher) -> list[Row]:
    config = lab.deployment(
        AGENTS, agent={"max_concurrency": PER_AGENT}, max_concurrency=SLOTS,
        poll_interval=600, drain_timeout=30,
    )  # fmt: skip
    warm, _ = await _start_tasks(lab, config, watcher, "delay=0")  # containers exist from here
    await warm.stop()
    exits, floors, codes = [], [], []
    for _ in range(RUNS):
        daemon, asked = await _start_tasks(lab, config, watcher, "delay=0.33")
        sent = time.time()
        seconds, code = await _sigterm(daemon)
        exits.append(seconds)
        codes.append(code)
        dies = [e.at for e in watcher.dies(asked)]
        floors.append(max(dies) - sent if len(dies) >= SLOTS else float("nan"))
    states = {row.state for row in task_rows(config)}
    floor = sorted(floors)[len(floors) // 2]
    return [
        sample_row("7 drain", "SIGTERM → exit, 8 tasks ending in ≈2 s", exits, "s",
                   floor=f"last claude exit p50 {floor:.2f} s after SIGTERM; "
                   f"exit codes {sorted(set(codes))}; states {sorted(states)}",
                   target="≤ 2.5 s", limit=2.5, at="p95"),
    ]  # fmt: skip


async def hanging_drain(lab: Lab, watcher: ExecWatcher) -> list[Row]:
    exits, codes, states = [], [], set()
    for _ in range(HANG_RUNS):
        config = lab.deployment(
            AGENTS, agent={"max_concurrency": PER_AGENT}, max_concurrency=SLOTS,
            poll_interval=600, drain_timeout=HANG_DRAIN_TIMEOUT,
        )  # fmt: skip
        daemon, _ = await _start_tasks(lab, config, watcher, "hang=1")
        seconds, code = await _sigterm(daemon)
        exits.append(seconds)
        codes.append(code)
        states |= {row.state for row in task_rows(config)}
    limit = HANG_DRAIN_TIMEOUT + 2
    return [
        sample_row("7 drain", "SIGTERM → exit, 8 hanging tasks, drain_timeout 10 s", exits, "s",
                   floor=f"drain_timeout {HANG_DRAIN_TIMEOUT:g} s; exit codes {sorted(set(codes))};"
                   f" states {sorted(states)}",
                   target=f"≤ {limit:g} s, all interrupted", at="p95",
                   limit=limit if states == {"interrupted"} else -1),
    ]  # fmt: skip


async def drain() -> list[Row]:
    async with Lab() as lab:
        watcher = lab.watcher()
        await watcher.start()
        try:
            return await finishing_drain(lab, watcher) + await hanging_drain(lab, watcher)
        finally:
            await watcher.close()
