"""Short outages in each phase of a task, against the real daemon's parts (issue 16 §1).

The simulator plays Forgejo and injects the faults (5xx, a dropped connection, a
request that outlasts the client's timeout) on exactly the requests of one phase:
the precheck, reading the thread, the final report. Docker and SQLite are real: the
Docker socket disappears and comes back, another process locks the store past its
busy timeout. In every case the task ends succeeded once the outage is over (or
failed only after its retry budget, in words), no thread is left "Working", and no
comment carries a host path or an exception's text.

The daemon's backoffs are shortened (the outage policy from the config, the Forgejo
client's own retries, the final report's attempts) so the tests wait seconds, not
minutes; they wait on conditions, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from claude_hooks.config import Config
from claude_hooks.daemon import services as services_module
from claude_hooks.daemon.services import Services
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.forgejo.client import ForgejoClient
from claude_hooks.report.tracker import Reporter
from claude_hooks.store import db as db_module
from claude_hooks.tasks import Task, TaskState
from tests.fakes.configs import ConfigFactory
from tests.fakes.docker import AGENT_UID
from tests.waiting import wait_until

pytestmark = pytest.mark.docker

REPO = "acme/app"
ALICE, DEV = "alice", "dev"
DEV_TOKEN = "forgejo-token-of-dev-0123456789"
FAR = 10**10  # a pause "for ever": the test resumes the agent itself

# What a comment must never show: an exception class, a traceback, a path of the host.
LEAKS = re.compile(r"\b\w+(Error|Exception)\b|Traceback|unix://|/tmp/|/var/run|/srv/|/root/")


def outage_config(
    factory: ConfigFactory, sim: ForgejoSim, image: str, *, agent_image: str | None = None,
    **daemon: Any,
) -> Config:  # fmt: skip
    sim.add_user(ALICE, token="forgejo-token-of-alice-0123456789")
    sim.add_user(DEV, token=DEV_TOKEN)
    sim.add_repo(REPO, collaborators={ALICE: "write", DEV: "admin"})
    token = factory.secret("dev-token", DEV_TOKEN)
    creds = factory.secret("dev-creds.json", '{"claudeAiOauth": {"accessToken": "oauth-x-123"}}')
    os.chown(creds, AGENT_UID, AGENT_UID)
    agent = factory.agent(
        DEV, token_file=str(token), credentials_file=str(creds), image=agent_image or image,
        network="none",
        checkout=False, timeout=60,
    )  # fmt: skip
    return factory.load(
        forgejo={"url": sim.base_url, "request_timeout": 1},
        daemon={
            "poll_interval": 0.2,
            "drain_timeout": 5,
            "outage_backoff": 0.2,
            "outage_retries": 6,
            **daemon,
        },
        agents=[agent],
    )


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Forgejo client's own retries and the final report's attempts, in milliseconds."""
    quick = functools.partial(ForgejoClient, max_attempts=2, initial_backoff=0.01, max_backoff=0.02)
    monkeypatch.setattr(services_module, "ForgejoClient", quick)
    monkeypatch.setattr(services_module, "Reporter", functools.partial(Reporter, final_attempts=1))


@pytest.fixture
async def start(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    test_image: str,
    test_labels: dict[str, str],
    quick_retries: None,
) -> AsyncIterator[Callable[..., Awaitable[Services]]]:
    async with contextlib.AsyncExitStack() as started:

        async def start(**daemon: Any) -> Services:
            config = outage_config(config_factory, forgejo_sim, test_image, **daemon)
            return await started.enter_async_context(
                Services.running(
                    config, daemon_id="test-outage", extra_labels=test_labels, listen=False
                )
            )

        yield start


def agent_comments(sim: ForgejoSim, number: int) -> list[str]:
    return [c.body for c in sim.comments(REPO, number) if c.user == DEV]


def assert_clean_and_final(sim: ForgejoSim, number: int, headline: str) -> None:
    """One tracking comment, showing the final state; no host path, no exception text."""
    [body] = agent_comments(sim, number)
    assert headline in body and "Working" not in body, body
    every = [c.body for c in sim.comments(REPO, number)]
    assert not [b for b in every if LEAKS.search(b)], every


async def the_task(services: Services, state: TaskState, limit: float = 60) -> Task:
    async def in_state() -> Task | None:
        tasks = await services.store.list_tasks(limit=5)
        return next((t for t in tasks if t.state is state), None)

    return await wait_until(in_state, timeout=limit, interval=0.05, what=f"a task {state}")


async def until_deferred(services: Services, reason: str) -> Task:
    async def deferred() -> Task | None:
        tasks = await services.store.list_tasks(limit=5)
        return next((t for t in tasks if t.deferred and reason in (t.error or "")), None)

    return await wait_until(deferred, timeout=30, interval=0.05, what=f"deferred: {reason}")


async def mention_while_paused(services: Services, sim: ForgejoSim, text: str = "") -> int:
    """A mention that becomes a queued task which has not started (its agent paused)."""
    await services.scheduler.pause(DEV, FAR, "held by the test", "operator")
    number = sim.create_issue(REPO, ALICE, "Fix it", "Please.")
    sim.add_comment(REPO, number, ALICE, f"@{DEV} please fix this{text}")
    await the_task(services, TaskState.QUEUED)
    await wait_until(lambda: len(agent_comments(sim, number)) == 1, what="the queued comment")
    return number


FAULTS = {
    "500": {"status": 500},
    "dropped": {"status": None},
    "timeout": {"status": 500, "hang": 1.5},  # past forgejo.request_timeout
}


def issue_path(number: int) -> str:
    return f"/api/v1/repos/{REPO}/issues/{number}"


@pytest.mark.parametrize("fault", FAULTS)
async def test_forgejo_failing_the_precheck_defers_the_task_until_it_answers(
    forgejo_sim: ForgejoSim, start: Callable[..., Awaitable[Services]], fault: str
) -> None:
    services = await start()
    number = await mention_while_paused(services, forgejo_sim)
    outage = forgejo_sim.outage(
        lambda method, path: method == "GET" and path == issue_path(number), **FAULTS[fault]
    )
    await services.scheduler.resume(DEV)
    waiting = await until_deferred(services, "Forgejo is unreachable, will retry")
    assert waiting.attempts == 0  # put off before it started: the precheck found the outage
    await wait_until(lambda: "Waiting" in agent_comments(forgejo_sim, number)[0])
    forgejo_sim.end_outage(outage)
    await the_task(services, TaskState.SUCCEEDED)
    await wait_until(lambda: "Done" in agent_comments(forgejo_sim, number)[0])
    assert_clean_and_final(forgejo_sim, number, "✅ **Done**")


@pytest.mark.parametrize("fault", FAULTS)
async def test_forgejo_failing_while_the_thread_is_read_defers_the_started_task(
    forgejo_sim: ForgejoSim, start: Callable[..., Awaitable[Services]], fault: str
) -> None:
    # Issue 16: "ForgejoError: Forgejo GET /repos/acme/app: HTTP 500", the task failed.
    services = await start()
    number = await mention_while_paused(services, forgejo_sim)
    repo_path = f"/api/v1/repos/{REPO}"  # only the worker asks for the repository itself
    outage = forgejo_sim.outage(
        lambda method, path: method == "GET" and path == repo_path, **FAULTS[fault]
    )
    await services.scheduler.resume(DEV)
    waiting = await until_deferred(services, "Forgejo is unreachable, will retry")
    assert waiting.attempts == 1  # it had started: the run found the outage
    forgejo_sim.end_outage(outage)
    done = await the_task(services, TaskState.SUCCEEDED)
    assert done.attempts >= 2
    await wait_until(lambda: "Done" in agent_comments(forgejo_sim, number)[0])
    assert_clean_and_final(forgejo_sim, number, "✅ **Done**")


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_final_report_forgejo_swallowed_is_delivered_once_it_answers(
    forgejo_sim: ForgejoSim, start: Callable[..., Awaitable[Services]], fault: str
) -> None:
    # Issue 16: the task succeeded, the final edit gave up, the thread said "Working" for good.
    services = await start()
    number = await mention_while_paused(services, forgejo_sim, "\n\nfake-claude: delay=0.2")
    [comment_id] = [c.id for c in forgejo_sim.comments(REPO, number) if c.user == DEV]
    writes = (
        f"/api/v1/repos/{REPO}/issues/comments/{comment_id}",
        f"{issue_path(number)}/comments",
    )
    await services.scheduler.resume(DEV)
    await the_task(services, TaskState.RUNNING)
    await wait_until(lambda: "Working" in agent_comments(forgejo_sim, number)[0])
    outage = forgejo_sim.outage(
        lambda method, path: method in ("PATCH", "POST") and path in writes, **FAULTS[fault]
    )
    with capture_logs() as logs:
        done = await the_task(services, TaskState.SUCCEEDED)
        await wait_until(
            lambda: any(e.get("phase") == "final" for e in logs), what="the final edit failing"
        )
    assert "Working" in agent_comments(forgejo_sim, number)[0]
    stored = await services.store.get(done.id)
    assert stored is not None and not stored.final_reported  # still in the outbox
    forgejo_sim.end_outage(outage)
    # What the outbox does every 30 s (and at start-up): once the failed chain is over.
    await wait_until(services.reports.redeliver, what="the final report queued again")
    await wait_until(lambda: "Done" in agent_comments(forgejo_sim, number)[0])
    await wait_until(lambda: _reported(services, done.id), what="the task marked reported")
    assert await services.reports.redeliver() == 0  # delivered once, not again
    assert_clean_and_final(forgejo_sim, number, "✅ **Done**")


@pytest.mark.usefixtures("quick_retries")
async def test_a_final_report_left_undelivered_at_shutdown_is_delivered_at_the_next_start(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    test_image: str,
    test_labels: dict[str, str],
) -> None:
    config = outage_config(config_factory, forgejo_sim, test_image)
    run = functools.partial(Services.running, config, extra_labels=test_labels, listen=False)
    async with run(daemon_id="test-outage-1") as services:
        number = await mention_while_paused(services, forgejo_sim)
        forgejo_sim.outage(lambda method, path: method in ("PATCH", "POST") and "/comments" in path)
        with capture_logs() as logs:
            await services.scheduler.resume(DEV)
            done = await the_task(services, TaskState.SUCCEEDED)
            await wait_until(lambda: any(e.get("phase") == "final" for e in logs))
    assert "Queued" in agent_comments(forgejo_sim, number)[0]  # the thread never saw it run
    forgejo_sim.end_outage()
    async with run(daemon_id="test-outage-2") as services:
        await wait_until(lambda: "Done" in agent_comments(forgejo_sim, number)[0])
        await wait_until(lambda: _reported(services, done.id), what="the task marked reported")
    assert_clean_and_final(forgejo_sim, number, "✅ **Done**")


async def _reported(services: Services, task_id: int) -> Task | None:
    task = await services.store.get(task_id)
    return task if task is not None and task.final_reported else None


async def test_an_outage_past_the_retry_budget_fails_the_task_in_words(
    forgejo_sim: ForgejoSim, start: Callable[..., Awaitable[Services]]
) -> None:
    services = await start(outage_retries=2)
    number = await mention_while_paused(services, forgejo_sim)
    repo_path = f"/api/v1/repos/{REPO}"
    forgejo_sim.outage(lambda method, path: method == "GET" and path == repo_path)
    await services.scheduler.resume(DEV)
    failed = await the_task(services, TaskState.FAILED)
    assert failed.error is not None
    assert re.fullmatch(r"gave up after 2 retries over \d+ s: Forgejo is unreachable", failed.error)
    await wait_until(lambda: "Failed" in agent_comments(forgejo_sim, number)[0])
    assert_clean_and_final(forgejo_sim, number, "❌ **Failed: Gave up after 2 retries")


async def test_docker_gone_and_back_defers_the_task_and_it_succeeds_after(
    forgejo_sim: ForgejoSim,
    start: Callable[..., Awaitable[Services]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 16: "❌ Failed: DockerError: [900] Cannot connect to Docker Engine via unix://…".
    engine = _docker_socket()
    socket = tmp_path / "docker.sock"  # missing now; a link to the engine's socket later
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket}")
    services = await start()
    assert (await services.readiness())["docker"] is False
    number = forgejo_sim.create_issue(REPO, ALICE, "Fix it", "Please.")
    forgejo_sim.add_comment(REPO, number, ALICE, f"@{DEV} please fix this")
    await until_deferred(services, "Docker is unreachable, will retry")
    await wait_until(lambda: "Docker is unreachable" in agent_comments(forgejo_sim, number)[0])
    socket.symlink_to(engine)  # the engine is back
    await the_task(services, TaskState.SUCCEEDED)
    await wait_until(lambda: "Done" in agent_comments(forgejo_sim, number)[0])
    assert_clean_and_final(forgejo_sim, number, "✅ **Done**")


def _docker_socket() -> Path:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        pytest.skip(f"the engine is not on a unix socket ({host})")
    return Path(host.removeprefix("unix://"))


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


async def test_a_store_locked_by_another_process_defers_the_task_and_fails_readiness(
    forgejo_sim: ForgejoSim,
    start: Callable[..., Awaitable[Services]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 16: "StoreError: <host path>/claude-hooks.sqlite3: start task 64 failed: database
    # is locked", the task failed, and /readyz said `store: true` throughout.
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 200)  # the daemon's connection's
    services = await start()
    number = await mention_while_paused(services, forgejo_sim)
    assert (await services.readiness())["store"] is True
    with capture_logs() as logs:
        forgejo_sim.delay(0.5)  # the precheck takes its time: the lock comes meanwhile
        await services.scheduler.resume(DEV)
        locker = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LOCKER, str(services.store.path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert locker.stdout is not None and locker.stdin is not None
        try:
            assert await locker.stdout.readline() == b"locked\n"
            assert (await services.readiness())["store"] is False
            await wait_until(
                lambda: any(e["event"] == "task_record_busy" for e in logs),
                what="the deferral waiting for the lock",
            )
        finally:
            forgejo_sim.delay(0)
            locker.stdin.write(b"\n")
            await locker.wait()
    assert (await services.readiness())["store"] is True
    done = await the_task(services, TaskState.SUCCEEDED)
    summaries = [e.summary for e in await services.store.events(done.id) if e.type == "state"]
    assert "deferred: the task store is busy, will retry (try 1 of 6)" in summaries, summaries
    await wait_until(lambda: "Done" in agent_comments(forgejo_sim, number)[0])
    assert_clean_and_final(forgejo_sim, number, "✅ **Done**")


async def test_a_failure_that_is_no_outage_fails_at_once_in_words_without_its_text(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    test_image: str,
    test_labels: dict[str, str],
    quick_retries: None,
) -> None:
    # Docker's own message names the image and can name host paths: it stays in the journal.
    missing = "claude-hooks-missing-image:never-built"
    config = outage_config(config_factory, forgejo_sim, test_image, agent_image=missing)
    run = Services.running(config, daemon_id="test-outage", extra_labels=test_labels, listen=False)
    async with run as services:
        number = forgejo_sim.create_issue(REPO, ALICE, "Fix it", "Please.")
        forgejo_sim.add_comment(REPO, number, ALICE, f"@{DEV} please fix this")
        failed = await the_task(services, TaskState.FAILED)
        assert failed.attempts == 1 and failed.deferrals == 0  # not waited out: no outage
        assert failed.error == (
            "the agent's container could not be used (the daemon's journal has the details)"
        )
        await wait_until(lambda: "Failed" in agent_comments(forgejo_sim, number)[0])
    assert_clean_and_final(forgejo_sim, number, "❌ **Failed: The agent's container")
    assert missing not in agent_comments(forgejo_sim, number)[0]
