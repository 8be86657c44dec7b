"""Figure 6: the daemon's resident memory, idle with 10 agents and with 20 tasks streaming.

10 agents, 2 slots each, 20 global slots; 20 API tasks whose fake claude prints
BENCH_MEMORY_LINES (50,000) lines as fast as it can (`lines=N`), so the daemon
parses, logs and stores all 20 streams at once. RSS is VmRSS from
/proc/<pid>/status, sampled every 0.25 s while all 20 claude execs stream (Docker
reports them started and not yet dead); VmHWM is the peak over the whole run,
idle included. The daemon is then killed and its containers removed.
"""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp

from bench.harness import Daemon, ExecWatcher, Lab, submit, task_rows, wait_until
from bench.stats import Row, sample_row, value_row
from claude_hooks.config import Config

AGENTS, PER_AGENT, TASKS = 10, 2, 20
LIMIT_MB = 80.0
LINES = int(os.environ.get("BENCH_MEMORY_LINES", "50000"))


def streaming(watcher: ExecWatcher) -> int:
    """How many claude execs Docker reports started and not yet dead."""
    return len(watcher.starts()) - len(watcher.dies())


async def sample_while_streaming(
    daemon: Daemon, watcher: ExecWatcher, config: Config
) -> tuple[list[float], int]:
    """VmRSS every 0.25 s while all TASKS stream, until every task has ended; and the most
    streams seen at once."""
    samples: list[float] = []
    most = 0
    while not ended(config):
        now = streaming(watcher)
        most = max(most, now)
        if now >= TASKS:
            samples.append(daemon.rss_mb())
        await asyncio.sleep(0.25)
    return samples, most


def ended(config: Config, count: int = AGENTS + TASKS) -> bool:
    rows = task_rows(config)
    return len(rows) >= count and all(r.state not in ("queued", "running") for r in rows)


async def memory() -> list[Row]:
    async with Lab() as lab:
        config = lab.deployment(
            AGENTS, agent={"max_concurrency": PER_AGENT}, max_concurrency=TASKS, poll_interval=5
        )
        daemon = await lab.start_daemon(config)
        await asyncio.sleep(6)  # one poll cycle of every agent
        idle = daemon.rss_mb()
        watcher = lab.watcher()
        await watcher.start()
        try:
            repo, names = lab.repo_of(config), [a.name for a in config.agents]
            async with aiohttp.ClientSession() as session:
                # Warm-up: every agent's container exists, so the 20 streams start together.
                for name in names:
                    await submit(session, config, name, repo, "fake-claude: delay=0")
                await wait_until(lambda: ended(config, AGENTS), 120, "the warm-up tasks")
                warm = len(watcher.starts())
                for n in range(TASKS):
                    prompt = f"fake-claude: lines={LINES}"
                    await submit(session, config, names[n % AGENTS], repo, prompt)
            await wait_until(lambda: len(watcher.starts()) > warm, 120, "the first claude exec")
            async with asyncio.timeout(TASKS * LINES / 2000 + 120):
                busy, most = await sample_while_streaming(daemon, watcher, config)
            peak = daemon.rss_mb("VmHWM")
            states = sorted({r.state for r in task_rows(config)})
        finally:
            await watcher.close()
            await daemon.stop(signal.SIGKILL)
    return [
        value_row("6 memory", f"daemon RSS idle, {AGENTS} agents", idle, "MB",
                  target=f"≤ {LIMIT_MB:g} MB", met=idle <= LIMIT_MB),
        sample_row("6 memory", f"daemon RSS, {TASKS} tasks streaming {LINES:,} lines each", busy,
                   "MB", floor=f"VmHWM {peak:.1f} MB; {most} streams at once at most; {states}",
                   target=f"p95 ≤ {LIMIT_MB:g} MB", limit=LIMIT_MB, at="p95"),
    ]  # fmt: skip
