"""Figure 6: the daemon's resident memory, idle with 10 agents and with 20 tasks running.

10 agents, 2 slots each, 20 global slots; 20 API tasks whose fake claude replays
its sample and then hangs (`hang=1`), so all 20 execs stay attached. RSS is
VmRSS from /proc/<pid>/status, sampled while all 20 run; VmHWM is the peak. The
daemon is then killed and its containers removed.
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from bench.harness import Lab, submit, task_rows, wait_until
from bench.stats import Row, sample_row, value_row

AGENTS, PER_AGENT, TASKS = 10, 2, 20
LIMIT_MB = 80.0


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
                for n in range(TASKS):
                    await submit(session, config, names[n % AGENTS], repo, "fake-claude: hang=1")
            await wait_until(lambda: len(watcher.starts()) >= TASKS, 120, "20 claude execs")
            await wait_until(
                lambda: sum(r.state == "running" for r in task_rows(config)) >= TASKS, 30, "running"
            )
            busy = []
            for _ in range(10):
                busy.append(daemon.rss_mb())
                await asyncio.sleep(0.3)
            peak = daemon.rss_mb("VmHWM")
        finally:
            await watcher.close()
            await daemon.stop(signal.SIGKILL)
    return [
        value_row("6 memory", f"daemon RSS idle, {AGENTS} agents", idle, "MB",
                  target=f"≤ {LIMIT_MB:g} MB", met=idle <= LIMIT_MB),
        sample_row("6 memory", f"daemon RSS, {TASKS} tasks running", busy, "MB",
                   floor=f"peak (VmHWM) {peak:.1f} MB", target=f"≤ {LIMIT_MB:g} MB",
                   limit=LIMIT_MB, at="p95"),
    ]  # fmt: skip
