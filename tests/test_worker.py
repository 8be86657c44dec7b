"""The worker's pure decision: which working tree a task's run gets."""

from __future__ import annotations

import pytest

from claude_hooks.config import Config
from claude_hooks.forgejo.models import Issue, PullRequest, User
from claude_hooks.runner.workspace import Checkout, WorkspacePlan
from claude_hooks.tasks import Task, TaskKind, TaskSpec, TaskState, TriggerSource
from claude_hooks.work.worker import ThreadFacts, workspace_plan
from tests.fakes.configs import ConfigFactory

ALICE = User(id=1, login="alice")
CLONE_URL = "http://127.0.0.1:3000/acme/app.git"
PATH = "/state/work/acme/app/12"


@pytest.fixture
def config(config_factory: ConfigFactory) -> Config:
    return config_factory.load(
        agents=[
            config_factory.agent("dev"),
            config_factory.agent("reviewer", role="reviewer"),
            config_factory.agent("code-lead", role="lead"),
            config_factory.agent("helper", checkout=False),
        ]
    )


def task(agent: str, *, head_sha: str = "") -> Task:
    spec = TaskSpec(
        agent=agent,
        kind=TaskKind.MENTION,
        repo="acme/app",
        number=12,
        idempotency_key="k",
        requested_by="alice",
        request="please",
        source=TriggerSource.POLL,
        head_sha=head_sha,
    )
    return Task(id=7, spec=spec, state=TaskState.RUNNING)


def facts(*, pull_head: str | None = None) -> ThreadFacts:
    issue = Issue(
        number=12,
        title="Crash",
        body="",
        state="open",
        user=ALICE,
        is_pull=pull_head is not None,
        html_url="",
    )
    pull = None
    if pull_head is not None:
        pull = PullRequest(
            number=12,
            title="Fix",
            body="",
            state="open",
            merged=False,
            user=ALICE,
            head_sha=pull_head,
            head_ref="feature",
            base_ref="trunk",
            html_url="",
        )
    return ThreadFacts(issue, pull, (), frozenset(), None, "trunk", CLONE_URL)


def test_a_dev_task_on_an_issue_works_on_its_own_branch_from_the_default_branch(
    config: Config,
) -> None:
    plan = workspace_plan(task("dev"), config.agent("dev"), facts())
    assert plan == WorkspacePlan(
        path=PATH, checkout=Checkout.BRANCH, clone_url=CLONE_URL, base="trunk", branch="dev/12"
    )


def test_a_review_checks_out_the_head_it_was_queued_for_else_the_pulls_head(
    config: Config,
) -> None:
    reviewer = config.agent("reviewer")
    queued = workspace_plan(
        task("reviewer", head_sha="a" * 40), reviewer, facts(pull_head="b" * 40)
    )
    assert queued == WorkspacePlan(
        path=PATH,
        checkout=Checkout.PULL_HEAD,
        clone_url=CLONE_URL,
        base="trunk",
        pull_number=12,
        head_sha="a" * 40,
    )
    seen = workspace_plan(task("reviewer"), reviewer, facts(pull_head="b" * 40))
    assert (seen.checkout, seen.head_sha) == (Checkout.PULL_HEAD, "b" * 40)


def test_a_lead_on_an_issue_gets_the_default_branch(config: Config) -> None:
    plan = workspace_plan(task("code-lead"), config.agent("code-lead"), facts())
    assert plan == WorkspacePlan(
        path=PATH, checkout=Checkout.DEFAULT, clone_url=CLONE_URL, base="trunk"
    )


def test_no_checkout_without_a_thread_a_clone_url_or_the_agents_consent(config: Config) -> None:
    assert workspace_plan(task("dev"), config.agent("dev"), None).checkout is Checkout.NONE
    no_url = ThreadFacts(facts().issue, None, (), frozenset(), None, "trunk", "")
    assert workspace_plan(task("dev"), config.agent("dev"), no_url).checkout is Checkout.NONE
    helper = workspace_plan(task("helper"), config.agent("helper"), facts())
    assert helper == WorkspacePlan(path=PATH, checkout=Checkout.NONE)
