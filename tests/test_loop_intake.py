"""The team's loop reaches the intake by both paths (#14): a review submitted on an agent's
PR becomes the author agent's review_feedback task (and an approval the lead's
merge_request) by webhook — the real deliveries of tests/data/real-payloads, which carry
no review id — and by the author's own notification poll, as one task.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from claude_hooks.config import AgentConfig
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.forgejo.client import ForgejoClient
from claude_hooks.forgejo.webhook import delivery_id, event_name
from claude_hooks.intake.decide import Policy
from claude_hooks.intake.intake import Intake
from claude_hooks.intake.poller import Poller
from claude_hooks.intake.reader import Permissions
from claude_hooks.intake.webhooks import WebhookHandler
from claude_hooks.metrics import Metrics
from claude_hooks.store import Store
from claude_hooks.tasks import TaskKind, TaskSpec, Trigger

PAYLOADS = Path(__file__).parent / "data" / "real-payloads"
# The jgc-gitea captures: repository TEST/test-repository, PR #2 opened by "admin",
# reviewed by "reviewer" (see PROVENANCE.md there). Here admin is a dev agent.
REPO, AUTHOR, REVIEWER, LEAD, HUMAN = "TEST/test-repository", "admin", "reviewer", "lead", "alice"
AGENTS = (AUTHOR, REVIEWER, LEAD)
TOKENS = {name: f"token-of-{name}-0123456789" for name in AGENTS}


@pytest.fixture
async def sim() -> AsyncIterator[ForgejoSim]:
    sim = ForgejoSim()
    await sim.start()
    sim.add_user(HUMAN)
    for agent in AGENTS:
        sim.add_user(agent, token=TOKENS[agent])
    sim.add_repo(REPO, collaborators={HUMAN: "write"} | dict.fromkeys(AGENTS, "admin"))
    yield sim
    await sim.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "tasks.sqlite3")
    yield store
    await store.close()


@pytest.fixture
async def clients(sim: ForgejoSim) -> AsyncIterator[dict[str, ForgejoClient]]:
    made = {a: ForgejoClient(sim.base_url, TOKENS[a], max_attempts=1) for a in AGENTS}
    yield made
    for client in made.values():
        await client.close()


@pytest.fixture
def intake(clients: dict[str, ForgejoClient], store: Store) -> Intake:
    policy = Policy(AGENTS, repositories=(REPO,), merge_by={AUTHOR: LEAD})
    permissions = Permissions(policy, {a: c.repo_permission for a, c in clients.items()})

    async def submit(triggers: Sequence[Trigger]) -> None:
        for trigger in triggers:
            assert isinstance(trigger, TaskSpec)
            await store.enqueue(trigger)

    return Intake(policy, clients, permissions, submit)


def agents_pull(sim: ForgejoSim) -> int:
    issue = sim.create_issue(REPO, HUMAN, "Hello", "Say hello.")
    number = sim.create_pull(REPO, AUTHOR, "Say hello", f"Closes #{issue}", reviewers=[REVIEWER])
    assert number == 2  # the number the captured deliveries name
    return number


async def deliver(intake: Intake, name: str, headers: dict[str, str]) -> int:
    payload = json.loads((PAYLOADS / name).read_bytes())
    return await WebhookHandler(intake).receive(event_name(headers), payload, delivery_id(headers))


REJECTED = (
    "webhook-pull_request_review_rejected-reviewed.jgc-gitea.json",
    {
        "X-Gitea-Event": "pull_request_rejected",
        "X-Gitea-Event-Type": "pull_request_review_rejected",
    },
)
COMMENTED = (
    "webhook-pull_request_review_comment-reviewed.jgc-gitea.json",
    {"X-Gitea-Event": "pull_request_comment", "X-Gitea-Event-Type": "pull_request_review_comment"},
)
APPROVED = (
    "webhook-pull_request_review_approved-reviewed.jgc-gitea.json",
    {
        "X-Gitea-Event": "pull_request_approved",
        "X-Gitea-Event-Type": "pull_request_review_approved",
    },
)


async def test_a_real_rejected_review_delivery_is_feedback_for_the_author_agent(
    sim: ForgejoSim, intake: Intake, store: Store
) -> None:
    number = agents_pull(sim)
    review = sim.submit_review(REPO, number, REVIEWER, "REQUEST_CHANGES", "a")
    assert await deliver(intake, *REJECTED) == 1
    [task] = await store.list_tasks()
    assert (task.spec.agent, task.spec.kind, task.spec.review_id) == (
        AUTHOR,
        TaskKind.REVIEW_FEEDBACK,
        review,
    )
    assert await deliver(intake, *REJECTED) == 1  # delivered twice: still one task
    assert len(await store.list_tasks()) == 1


async def test_a_real_comment_review_delivery_with_a_line_comment_is_feedback(
    sim: ForgejoSim, intake: Intake, store: Store
) -> None:
    number = agents_pull(sim)
    path = sim.pull_diff(REPO, number).split("+++ b/", 1)[1].split("\n", 1)[0]
    sim.submit_review(
        REPO, number, REVIEWER, "COMMENT", "Review comment",
        comments=[{"path": path, "new_position": 1, "body": "rename this"}],
    )  # fmt: skip
    await deliver(intake, *COMMENTED)
    [task] = await store.list_tasks()
    assert task.spec.kind is TaskKind.REVIEW_FEEDBACK and "rename this" in task.spec.request


async def test_a_real_approval_delivery_is_a_merge_request_for_the_lead(
    sim: ForgejoSim, intake: Intake, store: Store
) -> None:
    number = agents_pull(sim)
    sim.submit_review(REPO, number, REVIEWER, "APPROVED", "")
    await deliver(intake, *APPROVED)
    [task] = await store.list_tasks()
    captured_head = "c8ef951c4e57f9d4a5b8526ba974b59db1500192"  # the delivery's pull_request.head
    assert (task.spec.agent, task.spec.kind, task.spec.head_sha) == (
        LEAD,
        TaskKind.MERGE_REQUEST,
        captured_head,
    )


async def test_the_authors_poll_finds_the_same_review_and_the_leads_step_is_one_task(
    sim: ForgejoSim, intake: Intake, store: Store, clients: dict[str, ForgejoClient]
) -> None:
    number = agents_pull(sim)
    sim.submit_review(REPO, number, REVIEWER, "REQUEST_CHANGES", "a")
    await deliver(intake, *REJECTED)
    agent = AgentConfig(AUTHOR, Path("/nonexistent/t"), Path("/nonexistent/c"))
    poller = Poller(agent, clients[AUTHOR], intake, store, interval=0.05, metrics=Metrics())
    await poller.poll_once()  # the review notified the PR's author
    assert [t.spec.kind for t in await store.list_tasks()] == [TaskKind.REVIEW_FEEDBACK]
    sim.submit_review(REPO, number, REVIEWER, "APPROVED", "")
    await poller.poll_once()  # the author's poll moves its lead's step too
    kinds = sorted((t.spec.agent, t.spec.kind) for t in await store.list_tasks())
    assert kinds == [(AUTHOR, TaskKind.REVIEW_FEEDBACK), (LEAD, TaskKind.MERGE_REQUEST)]
