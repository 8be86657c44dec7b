"""Figure 8: what 100 idle agents cost one daemon and Forgejo, polling vs webhooks-first.

The same measurement as figure 3, at the size where one daemon serves a large team:
100 agents, nothing to do. First at the default poll interval (`daemon.poll_interval`,
15 s): the requests per agent per interval Forgejo sees, the request rate on
Forgejo, the daemon's CPU and RSS. Then webhooks-first: the same 100 agents with a
webhook secret and a poll interval of 300 s (polling only the safety net); one
mention by webhook checks that the shape still reacts. Each window is
BENCH_SCALE_SECONDS (60 by default) after one warm-up poll cycle; CPU is the
daemon's /proc/<pid>/stat time over the window; RSS is VmRSS at its end.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.harness import HUMAN, Lab, wait_until
from bench.stats import Row, value_row
from claude_hooks.config import DaemonConfig

AGENTS = 100
DEFAULT_INTERVAL = DaemonConfig().poll_interval  # what an operator gets without the key
LONG_INTERVAL = 300.0
SECONDS = float(os.environ.get("BENCH_SCALE_SECONDS", "60"))
RSS_LIMIT_MB = 120.0


@dataclass(frozen=True)
class Window:
    requests: int
    top: str  # the most frequent request paths
    cpu_seconds: float
    rss_mb: float
    ready_seconds: float  # from exec to /healthz answering 200


async def idle_window(lab: Lab, *, webhook: bool, interval: float) -> Window:
    config = lab.deployment(AGENTS, webhook=webhook, poll_interval=interval)
    began = time.monotonic()
    daemon = await lab.start_daemon(config, ready_within=300)
    ready = time.monotonic() - began
    await asyncio.sleep(min(interval, DEFAULT_INTERVAL) * 1.2)  # every agent's first poll
    lab.sim.requests.clear()
    cpu_before = daemon.cpu_seconds()
    await asyncio.sleep(SECONDS)
    cpu = daemon.cpu_seconds() - cpu_before
    requests = list(lab.sim.requests)
    rss = daemon.rss_mb()
    if webhook:  # the long interval is only safe while webhooks still make tasks
        repo, agent = lab.repo_of(config), config.agents[0].name
        number = lab.sim.create_issue(repo, HUMAN, "Scale", "Ping.")
        lab.sim.add_comment(repo, number, HUMAN, f"@{agent} hello\n\nfake-claude: delay=0")
        await wait_until(lambda: _has_task(config.daemon.db_path), 60, "a webhook task")
    await daemon.stop()
    paths = Counter(f"{r.method} {r.path}" for r in requests)
    top = ", ".join(f"{path} ×{n}" for path, n in paths.most_common(2))
    return Window(len(requests), top, cpu, rss, ready)


def _has_task(db_path: Path) -> bool:
    try:
        with sqlite3.connect(db_path) as db:
            return bool(db.execute("SELECT count(*) FROM tasks").fetchone()[0])
    except sqlite3.OperationalError:
        return False


async def scale() -> list[Row]:
    async with Lab() as lab:
        polling = await idle_window(lab, webhook=False, interval=DEFAULT_INTERVAL)
        webhooks = await idle_window(lab, webhook=True, interval=LONG_INTERVAL)
    polls = AGENTS * SECONDS / DEFAULT_INTERVAL
    per_poll = polling.requests / polls
    fig = "9 scale"
    return [
        value_row(fig, f"daemon start to /healthz 200, {AGENTS} agents", polling.ready_seconds,
                  "s", floor=f"webhooks-first start: {webhooks.ready_seconds:.1f} s"),
        value_row(fig, f"requests per agent per {DEFAULT_INTERVAL:g} s poll, {AGENTS} agents",
                  per_poll, "req", floor=polling.top, target="≤ 1", met=per_poll <= 1),
        value_row(fig, f"requests/min on Forgejo, {AGENTS} agents, {DEFAULT_INTERVAL:g} s polls",
                  polling.requests * 60 / SECONDS, "req/min",
                  floor=f"{AGENTS * 60 / DEFAULT_INTERVAL:g} = one per agent per interval"),
        value_row(fig, f"daemon CPU over {SECONDS:g} s, {AGENTS} agents polling",
                  polling.cpu_seconds, "s",
                  floor=f"{100 * polling.cpu_seconds / SECONDS:.2f}% of one core"),
        value_row(fig, f"daemon RSS, {AGENTS} agents polling", polling.rss_mb, "MB",
                  target=f"≤ {RSS_LIMIT_MB:g} MB", met=polling.rss_mb <= RSS_LIMIT_MB),
        value_row(fig, f"requests/min on Forgejo, webhooks-first, {LONG_INTERVAL:g} s polls",
                  webhooks.requests * 60 / SECONDS, "req/min",
                  floor=f"{AGENTS * 60 / LONG_INTERVAL:g} = one per agent per interval"),
        value_row(fig, f"daemon CPU over {SECONDS:g} s, webhooks-first", webhooks.cpu_seconds,
                  "s", floor=f"{100 * webhooks.cpu_seconds / SECONDS:.2f}% of one core"),
        value_row(fig, f"daemon RSS, {AGENTS} agents webhooks-first", webhooks.rss_mb, "MB",
                  target=f"≤ {RSS_LIMIT_MB:g} MB", met=webhooks.rss_mb <= RSS_LIMIT_MB),
    ]  # fmt: skip
