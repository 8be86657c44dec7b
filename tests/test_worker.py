"""The worker's pure decision: which working tree a task's run gets; how it reads a thread."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from claude_hooks.config import Config
from claude_hooks.forgejo.models import Comment, Issue, PullRequest, Repository, User
from claude_hooks.runner.workspace import Checkout, WorkspacePlan
from claude_hooks.tasks import Task, TaskKind, TaskSpec, TaskState, TriggerSource
from claude_hooks.work.worker import TaskWorker, ThreadFacts, workspace_plan
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


class OverlapClient:
    """Forgejo reads that each wait until all three independent ones have begun: read one
    after another, the first never returns."""

    def __init__(self) -> None:
        self.begun: set[str] = set()
        self._all = asyncio.Event()

    async def _read(self, what: str) -> None:
        self.begun.add(what)
        if self.begun >= {"repo", "issue", "comments"}:
            self._all.set()
        async with asyncio.timeout(5):
            await self._all.wait()

    async def get_repo(self, repo: str) -> Repository:
        await self._read("repo")
        return Repository(1, repo, "trunk", CLONE_URL, "")

    async def get_issue(self, repo: str, number: int) -> Issue:
        await self._read("issue")
        return facts().issue

    async def list_comments(self, repo: str, number: int) -> list[Comment]:
        await self._read("comments")
        return [Comment(id=3, body="@dev please", user=ALICE, html_url="")]


class AllTrusted:
    async def trusted(self, agent: str, repo: str, logins: set[str]) -> frozenset[str]:
        return frozenset(logins)


async def test_the_threads_independent_reads_run_side_by_side(config: Config) -> None:
    # Repository, issue and comments do not depend on each other: the run waits for
    # the slowest of them, not for their sum (a share of the webhook → claude time).
    client = OverlapClient()
    worker = TaskWorker(
        config, None, None, lambda _: client, None, None,  # type: ignore[arg-type]
        daemon_id="test", permissions=AllTrusted(),  # type: ignore[arg-type]
    )  # fmt: skip
    read = await worker._thread_facts(task("dev"))
    assert client.begun == {"repo", "issue", "comments"}
    assert (read.default_branch, read.clone_url, read.pull) == ("trunk", CLONE_URL, None)
    assert [c.id for c in read.comments] == [3]
    assert read.writers == frozenset({"alice"})


class PrecheckClient(OverlapClient):
    """The issue read waits until the comment read has begun too."""

    def __init__(self, *, state: str = "open", comment_error: Exception | None = None) -> None:
        super().__init__()
        self.begun = {"repo"}
        self.state, self.comment_error = state, comment_error

    async def get_issue(self, repo: str, number: int) -> Issue:
        await self._read("issue")
        return dataclasses.replace(facts().issue, state=self.state)

    async def get_comment(self, repo: str, comment_id: int) -> Comment | None:
        self.begun.add("comments")
        if self.begun >= {"repo", "issue", "comments"}:
            self._all.set()
        if self.comment_error is not None:
            raise self.comment_error
        return Comment(id=comment_id, body="@dev please", user=ALICE, html_url="")


async def test_the_precheck_reads_the_issue_and_the_comment_side_by_side(config: Config) -> None:
    def worker_of(client: PrecheckClient) -> TaskWorker:
        return TaskWorker(
            config, None, None, lambda _: client, None, None,  # type: ignore[arg-type]
            daemon_id="test", permissions=AllTrusted(),  # type: ignore[arg-type]
        )  # fmt: skip

    asked = dataclasses.replace(
        task("dev"), spec=dataclasses.replace(task("dev").spec, comment_id=3)
    )
    assert (await worker_of(PrecheckClient()).precheck(asked)).skip_reason is None
    # A closed thread is skipped whatever the comment read said, as before.
    closed = PrecheckClient(state="closed", comment_error=RuntimeError("comment read broke"))
    assert (await worker_of(closed).precheck(asked)).skip_reason == "acme/app#12 is closed"
    with pytest.raises(RuntimeError, match="comment read broke"):
        await worker_of(PrecheckClient(comment_error=RuntimeError("comment read broke"))).precheck(
            asked
        )


class ReadAheadClient(OverlapClient):
    """The precheck's issue read waits until the run's repository and comments reads have
    begun too: with those only read after the precheck, the precheck never returns. Counts
    every read."""

    def __init__(self, *, state: str = "open", comments_error: Exception | None = None) -> None:
        super().__init__()
        self.state, self.comments_error = state, comments_error
        self.reads: list[str] = []

    async def _read(self, what: str) -> None:
        self.reads.append(what)
        await super()._read(what)

    async def get_issue(self, repo: str, number: int) -> Issue:
        await self._read("issue")
        return dataclasses.replace(facts().issue, state=self.state)

    async def get_comment(self, repo: str, comment_id: int) -> Comment | None:
        self.reads.append("comment")
        return Comment(id=comment_id, body="@dev please", user=ALICE, html_url="")

    async def list_comments(self, repo: str, number: int) -> list[Comment]:
        await self._read("comments")
        if self.comments_error is not None:
            raise self.comments_error
        return [Comment(id=3, body="@dev please", user=ALICE, html_url="")]


def asked_by_comment() -> Task:
    return dataclasses.replace(
        task("dev"), spec=dataclasses.replace(task("dev").spec, comment_id=3)
    )


def worker_with(config: Config, client: object, clock: list[float] | None = None) -> TaskWorker:
    now = clock if clock is not None else [1000.0]
    return TaskWorker(
        config, None, None, lambda _: client, None, None,  # type: ignore[arg-type]
        daemon_id="test", permissions=AllTrusted(),  # type: ignore[arg-type]
        clock=lambda: now[0],
    )  # fmt: skip


async def test_the_precheck_begins_the_runs_thread_reads_and_the_issue_is_read_once(
    config: Config,
) -> None:
    # webhook → claude: the repository and comments come in with the precheck's own
    # round trip, not one after it; the run uses the issue the precheck read.
    client = ReadAheadClient()
    worker = worker_with(config, client)
    asked = asked_by_comment()
    assert (await worker.precheck(asked)).skip_reason is None
    read = await worker._thread_facts(asked)
    assert sorted(client.reads) == ["comment", "comments", "issue", "repo"]
    assert (read.issue.number, [c.id for c in read.comments]) == (12, [3])
    assert (read.default_branch, read.clone_url) == ("trunk", CLONE_URL)


async def test_a_skipped_or_stale_precheck_leaves_the_run_to_read_its_thread_anew(
    config: Config,
) -> None:
    closed = ReadAheadClient(state="closed")
    worker = worker_with(config, closed)
    assert (await worker.precheck(asked_by_comment())).skip_reason == "acme/app#12 is closed"
    await worker._thread_facts(asked_by_comment())
    assert closed.reads.count("issue") == closed.reads.count("repo") == 2
    # A run that starts long after its precheck (it waited for room on an engine) reads
    # the thread as it is then.
    clock = [1000.0]
    later = ReadAheadClient()
    worker = worker_with(config, later, clock)
    assert (await worker.precheck(asked_by_comment())).skip_reason is None
    clock[0] += 60
    await worker._thread_facts(asked_by_comment())
    assert later.reads.count("issue") == later.reads.count("comments") == 2


async def test_a_failing_comments_read_begun_by_the_precheck_fails_the_run_not_the_precheck(
    config: Config,
) -> None:
    client = ReadAheadClient(comments_error=RuntimeError("comments read broke"))
    worker = worker_with(config, client)
    assert (await worker.precheck(asked_by_comment())).skip_reason is None
    with pytest.raises(RuntimeError, match="comments read broke"):
        await worker._thread_facts(asked_by_comment())


class ReadyRuntime:
    """A container that is only ready once the thread's comments read has begun: made
    ready after the thread is read, the run never starts."""

    def __init__(self) -> None:
        self.began = asyncio.Event()
        self.comments_began = asyncio.Event()
        self.prepared: list[WorkspacePlan] = []

    async def ready(self, agent: object) -> None:
        self.began.set()
        async with asyncio.timeout(5):
            await self.comments_began.wait()

    async def prepare(self, agent: object, plan: WorkspacePlan, env: object) -> str:
        self.prepared.append(plan)
        return ""


class ThreadWaitsForReady(OverlapClient):
    """Comments that only come once the container is being made ready."""

    def __init__(self) -> None:
        super().__init__()
        self.runtime = ReadyRuntime()

    async def list_comments(self, repo: str, number: int) -> list[Comment]:
        self.runtime.comments_began.set()
        async with asyncio.timeout(5):
            await self.runtime.began.wait()
        return [Comment(id=3, body="@dev please", user=ALICE, html_url="")]

    async def _read(self, what: str) -> None:
        self.begun.add(what)


class Checklist:
    def __init__(self) -> None:
        self.steps: list[str] = []

    def checklist(self, task: Task) -> object:
        return self.steps.append


async def test_the_container_is_made_ready_while_the_thread_is_read(config: Config) -> None:
    client = ThreadWaitsForReady()
    reports = Checklist()
    worker = TaskWorker(
        config, None, client.runtime, lambda _: client, reports, None,  # type: ignore[arg-type]
        daemon_id="test", permissions=AllTrusted(),  # type: ignore[arg-type]
    )  # fmt: skip
    run = await worker._start(task("dev"), config.agent("dev"))
    assert client.runtime.prepared == [run.plan] and run.plan.branch == "dev/12"
    # What the tracking comment lists is in the order it was.
    assert reports.steps == ["starting the agent's container", f"preparing {PATH}"]
