"""The agent team closes its own loop (#14), end to end, with no person after the mention.

alice mentions dev on an issue: dev opens a PR and asks reviewer; reviewer asks for a
change on a line; dev fixes it on the same branch by itself and asks again; reviewer
approves at the new head; code-lead (dev's merge_by) merges, deletes the branch, and
the closing keyword closes the issue. Real containers (the host's userland for git),
real git over the simulator's smart HTTP, the daemon's own polling and webhooks; only
Claude is the demo team's script (claude_hooks/demo/team.py), and the test plays CI.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from claude_hooks.config import Config
from claude_hooks.daemon.services import Services
from claude_hooks.demo.host_image import HOST_USR_MOUNT
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.demo.sim.git import git_available
from claude_hooks.demo.team import (
    AGENTS,
    CI_CONTEXT,
    DEV,
    HUMAN,
    LEAD,
    REVIEWER,
    team_agents,
    write_team_claude,
)
from claude_hooks.tasks import Task, TaskKind, TaskState
from tests.e2e.host_image import built_host_image  # noqa: F401
from tests.fakes.configs import ConfigFactory
from tests.fakes.docker import AGENT_UID
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not git_available(), reason="git with git-http-backend is not installed"),
]

REPO = "acme/app"
CLAUDE = "/opt/team/claude"


def team_config(
    factory: ConfigFactory,
    sim: ForgejoSim,
    image: str,
    tmp: Path,
    *,
    reviewer_env: dict[str, str] | None = None,
    dev_extra: dict[str, object] | None = None,
    daemon: dict[str, object] | None = None,
) -> Config:
    sim.add_user(HUMAN, token="forgejo-token-of-alice-0123456789")
    tokens = {}
    for agent in AGENTS:
        token = f"forgejo-token-of-{agent}-0123456789"
        sim.add_user(agent, token=token)
        tokens[agent] = factory.secret(f"token-{agent}", token)
    sim.add_repo(REPO, collaborators={HUMAN: "write"} | dict.fromkeys(AGENTS, "admin"))
    sim.commit_file(REPO, "main", "README.md", "# app\n", "Initial commit", HUMAN)
    creds = factory.secret("creds.json", '{"claudeAiOauth": {"accessToken": "oauth-team-1"}}')
    os.chown(creds, AGENT_UID, AGENT_UID)
    script = write_team_claude(tmp / "team")
    record = tmp / "record"
    record.mkdir()
    record.chmod(0o777)
    mounts = [HOST_USR_MOUNT, f"{script}:{CLAUDE}:ro", f"{record}:/record"]
    agents = team_agents(
        image=image,
        mounts=mounts,
        claude=CLAUDE,
        tokens=tokens,
        credentials=creds,
        env={REVIEWER: reviewer_env or {}},
        timeout=60,
    )
    agents[0].update(dev_extra or {})
    return factory.load(
        forgejo={"url": sim.base_url, "repositories": [REPO]},
        daemon={"poll_interval": 0.2, "drain_timeout": 5, **(daemon or {})},
        agents=agents,
    )


@pytest.fixture
def config_options() -> dict[str, object]:
    return {}


@pytest.fixture
async def services(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    host_image: str,
    test_labels: dict[str, str],
    tmp_path: Path,
    config_options: dict[str, object],
) -> AsyncIterator[Services]:
    config = team_config(config_factory, forgejo_sim, host_image, tmp_path, **config_options)  # type: ignore[arg-type]
    async with Services.running(
        config, daemon_id="test-team-flow", extra_labels=test_labels, listen=False
    ) as started:
        yield started


class CI:
    """Plays CI: a status on every new head of every PR, as soon as it appears."""

    def __init__(self, sim: ForgejoSim, state: str = "success") -> None:
        self.sim, self.state, self.seen = sim, state, set[str]()

    def tick(self) -> None:
        for issue in self.sim.state.issues.values():
            pull = issue.pull
            if pull is not None and not pull.merged and pull.head_sha not in self.seen:
                self.seen.add(pull.head_sha)
                self.sim.set_status(REPO, pull.head_sha, self.state, CI_CONTEXT, creator=HUMAN)


def bare_git(sim: ForgejoSim, *args: str) -> str:
    done = subprocess.run(
        ["git", "--git-dir", str(sim.git_dir(REPO)), *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def the_pull(sim: ForgejoSim) -> int | None:
    pulls = [i.number for i in sim.state.issues.values() if i.pull is not None]
    assert len(pulls) <= 1, pulls
    return pulls[0] if pulls else None


async def tasks(services: Services) -> list[Task]:
    return sorted(await services.store.list_tasks(limit=100), key=lambda t: t.id)


def runs(tmp: Path) -> dict[int, int]:
    """Claude runs per task id, as the scripted Claude recorded them."""
    counted: dict[int, int] = {}
    for path in (tmp / "record").glob("run-*"):
        task_id = int(path.name.split("-")[1])
        counted[task_id] = counted.get(task_id, 0) + 1
    return counted


async def test_mention_to_merge_with_one_human_comment(
    forgejo_sim: ForgejoSim, services: Services, tmp_path: Path
) -> None:
    sim, ci = forgejo_sim, CI(forgejo_sim)
    issue = sim.create_issue(REPO, HUMAN, "Greet our visitors", "Say hello.")
    sim.add_comment(REPO, issue, HUMAN, f"@{DEV} please add a greeting file")

    async def closed() -> bool:
        ci.tick()
        return sim.issue(REPO, issue).state == "closed"

    await wait_until(closed, timeout=90, interval=0.1, what="the issue to be closed by the team")
    number = the_pull(sim)
    assert number is not None
    pull = sim.issue(REPO, number).pull
    assert pull is not None and pull.merged and pull.merged_by == LEAD
    assert pull.head_ref not in sim.state.repos[sim.issue(REPO, number).repo].branches

    reviews = [r for r in sim.reviews(REPO, number) if r.state != "PENDING"]
    assert [(r.user, r.state) for r in reviews] == [
        (REVIEWER, "REQUEST_CHANGES"),
        (REVIEWER, "APPROVED"),
    ]
    inline = sim.review_comments(reviews[0].id)
    assert [(c.path, c.new_position) for c in inline] == [("GREETING.md", 1)]
    first_head, approved_head = reviews[0].commit_id, reviews[1].commit_id
    assert first_head != approved_head  # the approval is at dev's new commit
    fix = bare_git(sim, "log", "-1", "--format=%an %s", approved_head)
    assert fix == f"{DEV} Name the project in the greeting"
    assert bare_git(sim, "rev-parse", f"{approved_head}~1") == first_head  # same branch, on top
    main_greeting = bare_git(sim, "show", "refs/heads/main:GREETING.md")
    assert "Welcome to demo/hello." in main_greeting  # the base has the fix

    # The re-request: dev asked reviewer again after its fix.
    requests = [c for c in sim.timeline(REPO, number) if c.type == "review_request"]
    assert len(requests) >= 2 and all(c.user == DEV for c in requests)

    ended = await wait_until(lambda: _all_final(services), timeout=30, what="every task to end")
    kinds = [(t.spec.agent, t.spec.kind, t.state) for t in ended]
    assert kinds == [
        (DEV, TaskKind.MENTION, TaskState.SUCCEEDED),
        (REVIEWER, TaskKind.REVIEW, TaskState.SUCCEEDED),
        (DEV, TaskKind.REVIEW_FEEDBACK, TaskState.SUCCEEDED),
        (REVIEWER, TaskKind.REVIEW, TaskState.SUCCEEDED),
        (LEAD, TaskKind.MERGE_REQUEST, TaskState.SUCCEEDED),
    ]
    assert all(n == 1 for n in runs(tmp_path).values()), runs(tmp_path)  # one run per event
    human = [c for n in (issue, number) for c in sim.comments(REPO, n) if c.user == HUMAN]
    assert len(human) == 1  # the mention: no person said anything after it


async def _all_final(services: Services) -> list[Task] | None:
    found = await tasks(services)
    return found if found and all(t.state.is_final for t in found) else None


@pytest.mark.parametrize(
    "config_options",
    [{"reviewer_env": {"DEMO_REVIEW": "always-changes"}, "daemon": {"max_review_rounds": 2}}],
)
async def test_a_reviewer_who_always_asks_for_changes_stops_after_the_rounds_with_one_comment(
    forgejo_sim: ForgejoSim, services: Services, tmp_path: Path, config_options: object
) -> None:
    sim, ci = forgejo_sim, CI(forgejo_sim)
    issue = sim.create_issue(REPO, HUMAN, "Greet our visitors", "Say hello.")
    sim.add_comment(REPO, issue, HUMAN, f"@{DEV} please add a greeting file")

    async def handed_back() -> list[Task] | None:
        ci.tick()
        found = await tasks(services)
        spent = [t for t in found if t.spec.kind is TaskKind.ROUNDS_SPENT]
        return found if spent and spent[0].state.is_final else None

    found = await wait_until(handed_back, timeout=120, interval=0.1, what="the loop to stop")
    feedback = [t for t in found if t.spec.kind is TaskKind.REVIEW_FEEDBACK]
    assert len(feedback) == 2  # max_review_rounds
    number = the_pull(sim)
    assert number is not None
    changes = [r for r in sim.reviews(REPO, number) if r.state == "REQUEST_CHANGES"]
    assert len(changes) == 3  # the third one is handed back instead of fixed
    spent = next(t for t in found if t.spec.kind is TaskKind.ROUNDS_SPENT)
    notes = [
        c.body for c in sim.comments(REPO, number) if c.user == DEV and f"task {spent.id}" in c.body
    ]
    assert len(notes) == 1 and f"@{HUMAN}" in notes[0]
    assert sim.issue(REPO, number).state == "open"  # nothing merged


@pytest.mark.parametrize("config_options", [{"dev_extra": {"fix_ci": True}}])
async def test_failing_ci_blocks_the_merge_and_fix_ci_runs_once_for_that_head(
    forgejo_sim: ForgejoSim, services: Services, tmp_path: Path, config_options: object
) -> None:
    sim, ci = forgejo_sim, CI(forgejo_sim, state="failure")
    issue = sim.create_issue(REPO, HUMAN, "Greet our visitors", "Say hello.")
    sim.add_comment(REPO, issue, HUMAN, f"@{DEV} please add a greeting file")

    async def fixing() -> list[Task] | None:
        ci.tick()
        found = await tasks(services)
        fixes = [t for t in found if t.spec.kind is TaskKind.CI_FIX]
        return found if fixes and fixes[0].state.is_final else None

    found = await wait_until(fixing, timeout=120, interval=0.1, what="a CI fix task to end")
    number = the_pull(sim)
    assert number is not None
    pull = sim.issue(REPO, number).pull
    assert pull is not None and not pull.merged
    fixes = [t for t in found if t.spec.kind is TaskKind.CI_FIX]
    assert len({t.spec.head_sha for t in fixes}) == len(fixes)  # once per head sha
    assert fixes[0].spec.agent == DEV
