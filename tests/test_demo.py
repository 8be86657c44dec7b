"""`claude-hooks demo`, the README's first command, as a newcomer runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_demo(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "claude_hooks", "demo"], capture_output=True, text=True,
        timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.docker
def test_demo_shows_a_mention_become_a_finished_task_in_docker(test_image: str) -> None:
    done = run_demo()
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Docker engine reachable" in out
    assert "👀 @demo-dev reacted to the comment" in out
    assert out.index("task 1: running") < out.index("task 1: succeeded")
    assert "<!-- claude-hooks:task=1 -->" in out and "2 turns" in out
    assert "The task finished." in out


def test_demo_without_docker_says_so_and_still_finishes() -> None:
    done = run_demo({"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No Docker here" in done.stdout and "local process" in done.stdout
    assert "task 1: succeeded" in done.stdout
