"""A Claude usage limit pauses the agent, not the task (#15), end to end: the Forgejo
simulator, the daemon's services in this process, real Docker and the scripted claude.

The fake claude's `limit-once=SECONDS` directive ends a task's first run the way Claude
Code 2.1.x does on a subscription's 5-hour limit (a real capture, its `resetsAt` moved
to SECONDS from now), and replays a successful run the next time.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiodocker
import pytest

from claude_hooks.daemon.services import Services
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.runner.containers import run_exec
from claude_hooks.tasks import Task, TaskState
from claude_hooks.text import find_marker
from tests.fakes.configs import ConfigFactory
from tests.fakes.docker import AGENT_UID
from tests.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = "acme/app"
ALICE = "alice"
# Names of their own: other sessions' Docker tests run agents called dev at the same time.
SUFFIX = uuid.uuid4().hex[:6]
DEV, REVIEWER = f"dev{SUFFIX}", f"rev{SUFFIX}"
# The session of the captured run (tests/data/real-streams/usage-limit-5h-rejected…).
LIMITED_SESSION = "4a74c250-4c25-401c-964f-ee2177780b18"
RESET_IN = 20  # seconds: long enough for the other agent's task to run meanwhile


@pytest.fixture
async def services(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    test_image: str,
    test_labels: dict[str, str],
    docker: aiodocker.Docker,
) -> AsyncIterator[Services]:
    forgejo_sim.add_user(ALICE, token="forgejo-token-of-alice-0123456789")
    agents = []
    for name, role in ((DEV, "dev"), (REVIEWER, "reviewer")):
        token = f"forgejo-token-of-{name}-0123456789"
        forgejo_sim.add_user(name, token=token)
        creds = config_factory.secret(f"{name}-creds.json", '{"claudeAiOauth": {}}')
        os.chown(creds, AGENT_UID, AGENT_UID)  # readable by the container's agent user
        agents.append(
            config_factory.agent(
                name,
                role=role,
                token_file=str(config_factory.secret(f"{name}-token", token)),
                credentials_file=str(creds),
                image=test_image,
                network="none",
                checkout=False,
                timeout=60,
                env={"FAKE_CLAUDE_RECORD": "/state/rec"},
            )
        )
    forgejo_sim.add_repo(REPO, collaborators={ALICE: "write", DEV: "admin", REVIEWER: "admin"})
    config = config_factory.load(
        forgejo={"url": forgejo_sim.base_url},
        daemon={"poll_interval": 0.2, "drain_timeout": 5},
        agents=agents,
    )
    async with Services.running(
        config, daemon_id="test-usage-limit", extra_labels=test_labels, listen=False
    ) as running:
        yield running


def ask(sim: ForgejoSim, agent: str, directive: str = "") -> int:
    number = sim.create_issue(REPO, ALICE, "Work", "Please work.")
    sim.add_comment(REPO, number, ALICE, f"@{agent} go\n\nfake-claude: {directive}")
    return number


def tracking(sim: ForgejoSim, number: int, agent: str) -> str:
    bodies = [c.body for c in sim.comments(REPO, number) if c.user == agent]
    return bodies[0] if bodies else ""


async def task_on(services: Services, agent: str, number: int) -> Task | None:
    tasks = await services.store.list_tasks(agent=agent, limit=20)
    return next((t for t in tasks if t.spec.number == number), None)


def task_matching(
    services: Services, agent: str, number: int, test: Callable[[Task], bool]
) -> Callable[[], Awaitable[Task | None]]:
    async def check() -> Task | None:
        task = await task_on(services, agent, number)
        return task if task is not None and test(task) else None

    return check


async def argv_of_last_run(docker: aiodocker.Docker, services: Services, agent: str) -> list[str]:
    container = await docker.containers.get(services.config.agent(agent).container_name)
    code, argv = await run_exec(container, ["cat", "/state/rec/argv"])
    assert code == 0, argv
    return argv.splitlines()


async def test_a_usage_limit_pauses_the_agent_and_the_task_resumes_its_session_after_the_reset(
    forgejo_sim: ForgejoSim, services: Services, docker: aiodocker.Docker
) -> None:
    number = ask(forgejo_sim, DEV, f"limit-once={RESET_IN}")
    held = await wait_until(
        task_matching(services, DEV, number, lambda t: t.deferred),
        timeout=60,
        what="the limited task back in the queue",
    )
    pause = services.scheduler.paused()[DEV]
    assert pause.cause == "usage_limit" and held.not_before == pause.until
    assert (held.attempts, held.deferrals, held.session_id) == (1, 0, LIMITED_SESSION)
    assert held.error is not None and held.error.endswith("(Claude usage limit)")
    # The thread says so, in the words of report/render.py.
    await wait_until(
        lambda: "(Claude usage limit); will resume." in tracking(forgejo_sim, number, DEV),
        what="the tracking comment showing the pause",
    )
    body = tracking(forgejo_sim, number, DEV)
    assert find_marker(body) == held.id and "paused until " in body

    # Another agent's task runs meanwhile, and ends before the pause does.
    other = ask(forgejo_sim, REVIEWER)
    done = await wait_until(
        task_matching(services, REVIEWER, other, lambda t: t.state is TaskState.SUCCEEDED),
        timeout=60,
        what="the reviewer's task done",
    )
    assert done.finished_at is not None and done.finished_at < pause.until
    still = await task_on(services, DEV, number)
    assert still is not None and still.state is TaskState.QUEUED and still.attempts == 1

    # After the reset the task runs again, resuming the session the limit cut short.
    resumed = await wait_until(
        task_matching(services, DEV, number, lambda t: t.state is TaskState.SUCCEEDED),
        timeout=RESET_IN + 60,
        what="the limited task done after the reset",
    )
    assert resumed.started_at is not None and resumed.started_at >= pause.until
    assert (resumed.attempts, resumed.deferrals) == (2, 0)
    argv = await argv_of_last_run(docker, services, DEV)
    assert argv[argv.index("--resume") + 1] == LIMITED_SESSION
    assert DEV not in services.scheduler.paused()
    await wait_until(
        lambda: "will resume" not in tracking(forgejo_sim, number, DEV),
        what="the tracking comment's final text",
    )


async def test_resume_lifts_a_pause_long_before_the_reset(
    forgejo_sim: ForgejoSim, services: Services
) -> None:
    number = ask(forgejo_sim, DEV, "limit-once=3600")
    await wait_until(
        task_matching(services, DEV, number, lambda t: t.deferred), timeout=60, what="the task held"
    )
    pause = services.scheduler.paused()[DEV]
    await wait_until(lambda: "will resume." in tracking(forgejo_sim, number, DEV))
    assert await services.scheduler.resume(DEV, by="alice")  # what the API and CLI call
    done = await wait_until(
        task_matching(services, DEV, number, lambda t: t.state is TaskState.SUCCEEDED),
        timeout=60,
        what="the task done after the resume",
    )
    assert done.attempts == 2 and services.scheduler.paused() == {}
    assert done.finished_at is not None and done.finished_at < pause.until  # an hour early
