"""End to end with the REAL Claude Code CLI: a mention on an issue → the daemon runs
`claude -p` (Claude Code 2.1.332, npm's native binary) as uid 1000 in the agent's
container → the CLI's Bash tool commits → the daemon pushes the branch and opens a
pull request on the Forgejo simulator → the tracking comment reports what the CLI's
own `result` line said.

Only the model is scripted (tests/fakes/messages_api.py on 127.0.0.1): turn 1 asks
for a Bash command that writes GREETING.md and commits it, turn 2 ends the run. A
follow-up mention resumes the session (`--resume`): the model then sees the whole
first conversation, commits a second time, and the open pull request follows.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from claude_hooks.config import Config
from claude_hooks.daemon.services import Services
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.demo.sim.git import git_available
from claude_hooks.tasks import Task, TaskState
from claude_hooks.text import find_marker, format_cost
from tests.e2e.claude_cli import (  # noqa: F401  (installed_claude: a fixture)
    CLAUDE_CODE_VERSION,
    cli_agent,
    installed_claude,
    one_agent_config,
)
from tests.e2e.host_image import built_host_image, unavailable  # noqa: F401
from tests.fakes.configs import ConfigFactory
from tests.fakes.docker import AGENT_UID
from tests.fakes.messages_api import (
    ScriptedMessagesApi,
    bash_turn,
    final_turn,
    tool_results,
    turn_index,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

REPO = "acme/app"
ALICE, DEV = "alice", "dev"
DEV_TOKEN = "forgejo-token-of-dev-0123456789"
COMMIT_MESSAGE = "Add greeting"
GREETING = "Hello from the real Claude Code CLI"
SUMMARY = "Added GREETING.md with a greeting and committed it."
FAREWELL_MESSAGE = "Add farewell"
SCRIPT = [  # the turn answered is the number of assistant messages so far
    bash_turn(
        f"echo '{GREETING}' > GREETING.md && git add -A && git commit -q -m '{COMMIT_MESSAGE}'",
        description="Write and commit the greeting",
        text="I'll add the greeting.",
    ),
    final_turn(SUMMARY),
    bash_turn(f"echo Goodbye >> GREETING.md && git commit -q -am '{FAREWELL_MESSAGE}'"),
    final_turn("Added a farewell line."),
]


def e2e_config(
    factory: ConfigFactory, sim: ForgejoSim, image: str, claude: Path, api_url: str
) -> Config:
    sim.add_user(ALICE, token="forgejo-token-of-alice-0123456789")
    sim.add_user(DEV, token=DEV_TOKEN)
    sim.add_repo(REPO, collaborators={ALICE: "write", DEV: "admin"})
    token = factory.secret("dev-token", DEV_TOKEN)
    # No OAuth credentials: the CLI must use the API key, so it only talks to api_url.
    creds = factory.secret("dev-creds.json", "{}")
    os.chown(creds, AGENT_UID, AGENT_UID)
    agent = cli_agent(
        factory, DEV, claude=claude, api_url=api_url, image=image,
        token_file=str(token), credentials_file=str(creds),
    )  # fmt: skip
    return one_agent_config(factory, sim, agent)


@pytest.fixture
async def messages_api() -> AsyncIterator[ScriptedMessagesApi]:
    async with ScriptedMessagesApi(SCRIPT) as api:
        yield api


@pytest.fixture
async def services(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    host_image: str,
    claude_binary: Path,
    messages_api: ScriptedMessagesApi,
    test_labels: dict[str, str],
) -> AsyncIterator[Services]:
    if not git_available():
        unavailable("git with git-http-backend is not installed")
    config = e2e_config(
        config_factory, forgejo_sim, host_image, claude_binary, messages_api.base_url
    )
    async with Services.running(
        config, daemon_id="test-e2e", extra_labels=test_labels, listen=False
    ) as started:
        yield started


async def finished(services: Services, count: int, limit: float = 60) -> Task:
    """The `count`-th task, once it has ended."""

    async def ended() -> Task | None:
        tasks = sorted(await services.store.list_tasks(limit=10), key=lambda t: t.id)
        done = len(tasks) >= count and tasks[count - 1].state.is_final
        return tasks[count - 1] if done else None

    return await wait_until(ended, timeout=limit, interval=0.1, what=f"task {count} to end")


def bare_git(sim: ForgejoSim, *args: str) -> str:
    done = subprocess.run(
        ["git", "--git-dir", str(sim.git_dir(REPO)), *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


async def tracking_comment_with(sim: ForgejoSim, number: int, task: Task, *parts: str) -> str:
    """The task's tracking comment, once it shows every one of `parts`."""

    def body() -> str:
        bodies = [c.body for c in sim.comments(REPO, number) if find_marker(c.body) == task.id]
        return bodies[0] if bodies else ""

    await wait_until(
        lambda: all(part in body() for part in parts),
        what=f"the tracking comment to show {parts}",
        details=lambda: repr(body()),
    )
    return body()


async def test_the_real_cli_commits_and_the_daemon_opens_the_pull_request(
    forgejo_sim: ForgejoSim, services: Services, messages_api: ScriptedMessagesApi
) -> None:
    number = forgejo_sim.create_issue(REPO, ALICE, "Add a greeting", "Please say hello.")
    forgejo_sim.add_comment(REPO, number, ALICE, "@dev please implement this")
    task = await finished(services, 1)
    events = await services.store.events(task.id)
    assert task.state is TaskState.SUCCEEDED, (task.error, [e.summary for e in events])

    # The CLI itself: the pinned version, two streamed model calls, the tool succeeded.
    lines = {e.type: json.loads(e.data) for e in events if e.data}
    assert lines["init"]["claude_code_version"] == CLAUDE_CODE_VERSION
    assert lines["init"]["permissionMode"] == "bypassPermissions"
    assert len(messages_api.requests) == 2 and messages_api.unscripted == []
    assert all(request["stream"] is True for request in messages_api.requests)
    [tool_result] = tool_results(messages_api.requests[1])
    assert not tool_result.get("is_error"), tool_result

    # What it committed reached the simulator's repository and a pull request.
    branch = f"dev/{number}"
    head = bare_git(forgejo_sim, "rev-parse", f"refs/heads/{branch}")
    assert bare_git(forgejo_sim, "log", "-1", "--format=%s|%an", head) == f"{COMMIT_MESSAGE}|{DEV}"
    assert bare_git(forgejo_sim, "show", f"{head}:GREETING.md") == GREETING
    [pull] = [i for i in forgejo_sim.state.issues.values() if i.pull is not None]
    assert pull.pull is not None and pull.pull.head_ref == branch and pull.pull.head_sha == head
    assert f"Closes #{number}" in pull.body and SUMMARY in pull.body

    # The tracking comment shows the CLI's own figures, as the store recorded them.
    result = lines["result"]
    assert (task.cost_usd, task.num_turns) == (result["total_cost_usd"], result["num_turns"])
    assert task.cost_usd and task.num_turns
    await tracking_comment_with(
        forgejo_sim, number, task, format_cost(task.cost_usd), f"{task.num_turns} turns",
        f"{forgejo_sim.base_url}/{REPO}/pulls/{pull.number}", SUMMARY,
    )  # fmt: skip

    # A follow-up mention: the same branch, the session resumed, the pull request follows.
    forgejo_sim.advance(1)  # see tests/test_dev_flow.py: same-second mentions are missed
    forgejo_sim.add_comment(REPO, number, ALICE, "@dev please add a farewell too")
    second = await finished(services, 2)
    assert second.state is TaskState.SUCCEEDED, second.error
    assert second.session_id == task.session_id
    # Resumed, the conversation sent to the model holds the first run's two answers.
    assert turn_index(messages_api.requests[2]) == 2
    new_head = bare_git(forgejo_sim, "rev-parse", f"refs/heads/{branch}")
    assert bare_git(forgejo_sim, "log", "--format=%s", f"{head}..{new_head}") == FAREWELL_MESSAGE
    assert pull.pull.head_sha == new_head
