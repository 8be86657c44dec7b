"""`claude-hooks demo`, the README's first command, as a newcomer runs it: the whole team
loop (mention → PR → changes asked on a line → fixed and re-requested → approved →
merged, issue closed), printed step by step, in well under 30 s."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

DEMO = [sys.executable, "-m", "claude_hooks", "demo"]
CHAIN = [  # what a newcomer must see, each caused by the one before (so in this order)
    "alice on demo/hello#1",
    "PR #2 opened by demo-dev",
    "demo-reviewer reviewed: REQUEST_CHANGES; on GREETING.md:1",
    "demo-reviewer reviewed: APPROVED",
    "PR #2 merged by demo-lead, branch deleted",
    "Issue #1 was closed by the team; alice wrote 1 comment(s).",
]
ALSO = [  # printed too, as their tasks end (a poll may show two steps at once)
    "(demo-dev, mention): succeeded",
    "review requested from demo-reviewer",
    "(demo-reviewer, review): succeeded",
    "(demo-dev, review_feedback): succeeded",
    "(demo-lead, merge_request): succeeded",
]


def run_demo(env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        DEMO, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )
    return done, time.monotonic() - started


def assert_the_whole_loop(out: str) -> None:
    missing = [step for step in CHAIN + ALSO if step not in out]
    assert not missing, f"missing {missing} in:\n{out}"
    at = [out.index(step) for step in CHAIN]
    assert at == sorted(at), out
    flow = re.findall(r"^\s*(\d+\.\d+)s ", out, re.MULTILINE)
    assert float(flow[-1]) < 30, out  # from the mention to the merge


@pytest.mark.docker
def test_the_demo_plays_the_team_loop_in_docker(test_image: str) -> None:
    done, _ = run_demo()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Docker engine reachable" in done.stdout
    assert_the_whole_loop(done.stdout)


def test_the_demo_without_docker_says_so_and_still_plays_the_loop() -> None:
    done, _ = run_demo({"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No Docker here" in done.stdout and "local processes" in done.stdout
    assert_the_whole_loop(done.stdout)


async def test_demo_stay_keeps_the_daemon_up_with_its_status_page_until_ctrl_c() -> None:
    process = await asyncio.create_subprocess_exec(
        *DEMO, "--stay",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(90):
            while not any("Status page:" in line for line in lines):
                line = (await process.stdout.readline()).decode()
                assert line, "".join(lines)
                lines.append(line)
        found = re.search(r"Status page: (\S+)\s+token: (\S+)", "".join(lines))
        assert found, "".join(lines)
        url, token = found.groups()
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as page:
                assert page.status == 200 and "claude-hooks" in await page.text()
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{url}tasks", headers=headers) as listing:
                tasks = (await listing.json())["tasks"]
        assert {t["kind"] for t in tasks} >= {"mention", "review_feedback", "merge_request"}
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
