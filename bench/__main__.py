"""`python3 -m bench [NAME ...]`: run the benchmarks (all by default), print one table.

Needs a running Docker engine; builds the scripted agent image and starts the
Forgejo simulator and daemon subprocesses itself. Shorter runs for a quick look:
BENCH_IDLE_SECONDS, BENCH_WEBHOOK_RUNS, BENCH_POLL_RUNS, BENCH_SCHED_TASKS,
BENCH_SCHED_RUN_SECONDS, BENCH_SCHED_DOCKER_TASKS, BENCH_STREAM_LINES, BENCH_LOOP_TASKS,
BENCH_LOOP_LINES, BENCH_DRAIN_RUNS, BENCH_DRAIN_HANG_RUNS, BENCH_SCALE_SECONDS,
BENCH_ENGINES_RUNS, BENCH_ENGINES_TASKS. `engines` starts a second dockerd (needs root).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import drain, engines, idle, loop, memory, reaction, scale, scheduling, stream
from bench.stats import Row, render_table
from claude_hooks.daemon.log import setup_logging

Benchmark = Callable[[], Awaitable[list[Row]]]


async def _scheduling() -> list[Row]:
    return await scheduling.fake_scheduling() + await scheduling.docker_scheduling()


BENCHMARKS: dict[str, Benchmark] = {
    "webhook": reaction.webhook_reaction,
    "polling": reaction.polling_reaction,
    "idle": idle.idle_cost,
    "scheduling": _scheduling,
    "stream": stream.stream_throughput,
    "loop": loop.loaded_loop,
    "memory": memory.memory,
    "drain": drain.drain,
    "scale": scale.scale,
    "engines": engines.engines,
}


def machine() -> str:
    """Where and when: date, CPUs, CPU model, Docker and Python versions, load."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    try:
        docker = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        docker = "unknown"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {os.cpu_count()} CPUs, {model}"
        f" · Docker {docker} · Python {platform.python_version()} · load average {load}"
    )


async def run(names: list[str]) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        began = time.monotonic()
        print(f"running {name} …", file=sys.stderr, flush=True)
        try:
            rows += await BENCHMARKS[name]()
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            print(f"{name} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            rows.append(Row(name, f"FAILED: {type(exc).__name__}", None, None, "", met=False))
        print(f"  {name}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"any of: {', '.join(BENCHMARKS)} (default: all)"
    )
    args = parser.parse_args(argv)
    if unknown := [name for name in args.names if name not in BENCHMARKS]:
        parser.error(f"no benchmark named {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    setup_logging("console", "warning")
    names = args.names or list(BENCHMARKS)
    at_start = machine()
    print(at_start, file=sys.stderr)
    began = time.monotonic()
    rows = asyncio.run(run(names))
    # The load at both ends: other work on the machine shows in every figure.
    print(f"\nstart: {at_start}\nend:   {machine()} · {time.monotonic() - began:.0f} s in all\n")
    print(render_table(rows))
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
