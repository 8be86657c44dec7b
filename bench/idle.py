"""Figure 3: what 10 idle agents cost, polling every 5 s with nothing to do.

After one warm-up poll cycle, the simulator's request record is cleared and the
daemon's CPU time read from /proc/<pid>/stat; after BENCH_IDLE_SECONDS (60 by
default, the issue's figure) both are read again. Bytes are the HTTP bodies the
simulator answered (headers not counted).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter

from bench.harness import Lab
from bench.stats import Row, value_row

AGENTS = 10
POLL_INTERVAL = 5.0
SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))


async def idle_cost() -> list[Row]:
    async with Lab() as lab:
        config = lab.deployment(AGENTS, poll_interval=POLL_INTERVAL)
        daemon = await lab.start_daemon(config)
        await asyncio.sleep(POLL_INTERVAL + 0.5)
        lab.sim.requests.clear()
        cpu_before = daemon.cpu_seconds()
        await asyncio.sleep(SECONDS)
        cpu = daemon.cpu_seconds() - cpu_before
        requests = list(lab.sim.requests)
        rss = daemon.rss_mb()
        await daemon.stop()
    polls = AGENTS * SECONDS / POLL_INTERVAL
    paths = Counter(f"{r.method} {r.path}" for r in requests)
    per_poll = len(requests) / polls
    body_bytes = sum(len(r.response_body) for r in requests)
    top = ", ".join(f"{path} ×{n}" for path, n in paths.most_common(3))
    return [
        value_row("3 idle", "requests per agent per poll", per_poll, "req",
                  floor=top, target="≤ 1", met=per_poll <= 1),
        value_row("3 idle", f"response bytes per agent per {SECONDS:g} s",
                  body_bytes / AGENTS, "B", floor=f"{len(requests)} requests in all"),
        value_row("3 idle", f"daemon CPU over {SECONDS:g} s, {AGENTS} agents", cpu, "s",
                  floor=f"{100 * cpu / SECONDS:.2f}% of one core"),
        value_row("3 idle", "daemon RSS at the end", rss, "MB"),
    ]  # fmt: skip
