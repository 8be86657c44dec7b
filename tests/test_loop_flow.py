"""The team's loop (issue #14), work side, against the Forgejo simulator's real git.

The intake (not here) submits the loop's steps; these tests submit the same TaskSpecs
by hand and watch what the daemon does on Forgejo:

- the workspace scripts on the host: a dev on a pull request works on its head branch
  by name and the push updates it; a push that raced another is refused, not forced;
  the diff since a reviewed commit;
- review feedback through the whole daemon (real container, real git, a scripted
  claude): the fix lands on the pull request's branch, every inline comment is
  answered in one summary, review is re-requested; no commits, no re-request;
- the merge request's check and run (a stand-in Claude): failing CI skips it and
  starts one CI fix for the head; pending waits without using an attempt; green
  merges; rounds spent: one new comment to the person who asked, no run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from claude_hooks.config import Config
from claude_hooks.daemon.services import Services
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.demo.sim.git import git_available
from claude_hooks.forgejo.client import ForgejoClient
from claude_hooks.intake.decide import Policy
from claude_hooks.intake.reader import Permissions
from claude_hooks.report.tracker import Reporter, TaskReports
from claude_hooks.runner import workspace
from claude_hooks.store import Store
from claude_hooks.tasks import Task, TaskKind, TaskSpec, TaskState, TriggerSource
from claude_hooks.text import find_marker, marker
from claude_hooks.work.delivery import Delivery
from claude_hooks.work.loop import CI_RECHECK_MIN
from claude_hooks.work.scheduler import SchedulerError
from claude_hooks.work.worker import TaskWorker
from tests.e2e.host_image import HOST_USR_MOUNT, built_host_image  # noqa: F401
from tests.fakes.configs import ConfigFactory
from tests.fakes.docker import AGENT_UID
from tests.fakes.runtime import AnsweringRuntime
from tests.test_dev_flow import Scripts, bare_git
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(
    not git_available(), reason="git with git-http-backend is not installed"
)

REPO = "acme/app"
ALICE, DEV, REVIEWER, LEAD = "alice", "dev", "reviewer", "code-lead"
TOKENS = {login: f"forgejo-token-of-{login}-0123456789" for login in (ALICE, DEV, REVIEWER, LEAD)}


@pytest.fixture
def scripts(forgejo_sim: ForgejoSim, tmp_path: Path) -> Scripts:
    return Scripts(forgejo_sim, tmp_path)


# ---------------------------------------------------------------- the workspace scripts


async def test_a_dev_on_a_pull_request_commits_on_its_branch_and_the_push_updates_it(
    scripts: Scripts,
) -> None:
    sim = scripts.sim
    first = sim.commit_file(REPO, "feature", "app.py", "x = 1\n", "One", ALICE)
    number = sim.create_pull(REPO, ALICE, "Fix", head="feature")
    plan = scripts.plan(
        workspace.Checkout.PULL_BRANCH, branch="feature", pull_number=number, head_sha=first
    )
    code, out = await scripts.run(workspace.prepare_args(plan))
    assert code == 0 and out.strip().splitlines()[-1] == first, out
    code, branch = await scripts.run(["git", "-C", plan.path, "symbolic-ref", "HEAD"])
    assert branch.strip() == "refs/heads/feature"  # on the branch, not detached
    await scripts.commit(plan, "app.py", "x = 2\n")

    code, out = await scripts.run(workspace.publish_args(plan))
    published = workspace.parse_publish_output(out)
    assert code == 0 and published.commits == 1, out  # only what this run added
    head = bare_git(sim, "rev-parse", "refs/heads/feature")
    assert published.head == head and bare_git(sim, "rev-parse", f"{head}~1") == first
    assert sim.issue(REPO, number).pull.head_sha == head  # type: ignore[union-attr]


async def test_a_push_that_raced_another_is_refused_not_forced(scripts: Scripts) -> None:
    sim = scripts.sim
    sim.commit_file(REPO, "feature", "app.py", "x = 1\n", "One", ALICE)
    number = sim.create_pull(REPO, ALICE, "Fix", head="feature")
    plan = scripts.plan(workspace.Checkout.PULL_BRANCH, branch="feature", pull_number=number)
    assert (await scripts.run(workspace.prepare_args(plan)))[0] == 0
    await scripts.commit(plan, "mine.txt", "mine\n")
    hers = sim.commit_file(REPO, "feature", "hers.txt", "hers\n", "Hers", ALICE)
    code, out = await scripts.run(workspace.publish_args(plan))
    assert code != 0, out
    assert bare_git(sim, "rev-parse", "refs/heads/feature") == hers  # hers is kept


async def test_a_pull_requests_branch_that_is_gone_fails_prepare_with_the_reason(
    scripts: Scripts,
) -> None:
    plan = scripts.plan(workspace.Checkout.PULL_BRANCH, branch="gone", pull_number=3)
    code, out = await scripts.run(workspace.prepare_args(plan))
    assert code != 0 and "branch gone is not in the repository any more" in out


async def test_the_diff_since_a_reviewed_commit(scripts: Scripts) -> None:
    sim = scripts.sim
    old = sim.commit_file(REPO, "feature", "app.py", "x = 1\n", "One", ALICE)
    number = sim.create_pull(REPO, ALICE, "Fix", head="feature")
    new = sim.commit_file(REPO, "feature", "app.py", "x = 2\n", "Two", ALICE)
    plan = scripts.plan(workspace.Checkout.PULL_HEAD, pull_number=number, head_sha=new)
    assert (await scripts.run(workspace.prepare_args(plan)))[0] == 0
    code, out = await scripts.run(workspace.diff_since_args(plan, old))
    diff = workspace.parse_diff_since(old, out)
    assert code == 0 and not diff.missing and "-x = 1\n+x = 2" in diff.text
    code, out = await scripts.run(workspace.diff_since_args(plan, "c" * 40))
    assert code == 0 and workspace.parse_diff_since("c" * 40, out).missing


# ---------------------------------------------------------------- review feedback, whole daemon

# The dev agent minus the model: keep the prompt, commit a fix unless the review says
# there is nothing to change, and answer each comment the prompt numbers.
FEEDBACK_CLAUDE = r"""#!/bin/sh
set -eu
prompt="/record/prompt-$CLAUDE_HOOKS_TASK"
cat >"$prompt"
ids=$(sed -n 's/^### Comment \([0-9]*\) by .*/\1/p' "$prompt")
if ! grep -q "nothing to change" "$prompt"; then
    echo "y = 2  # task $CLAUDE_HOOKS_TASK" >>app.py
    git add -A >&2
    git commit -q -m "Address the review (task $CLAUDE_HOOKS_TASK)" >&2
fi
answers="" q='\"' nl='\n' task=$CLAUDE_HOOKS_TASK
for id in $ids; do
    answers="$answers{${q}comment${q}: $id, ${q}reply${q}: ${q}fixed in task $task${q}},"
done
result="Addressed the review.$nl$nl\`\`\`json$nl{${q}addressed${q}: [${answers%,}]}$nl\`\`\`"
printf '{"type":"result","subtype":"success","is_error":false,"num_turns":1,'
printf '"result":"%s","session_id":"feedback-%s",' "$result" "$task"
printf '"terminal_reason":"completed","total_cost_usd":0.01}\n'
"""


# The reviewer minus the model: keep the prompt, approve.
REVIEW_CLAUDE = r"""#!/bin/sh
set -eu
cat >"/record/prompt-$CLAUDE_HOOKS_TASK"
result='Looks right now.\n\n```json\n{\"event\": \"APPROVED\", \"body\": \"Fixed.\"}\n```'
printf '{"type":"result","subtype":"success","is_error":false,"num_turns":1,'
printf '"result":"%s","session_id":"review-%s",' "$result" "$CLAUDE_HOOKS_TASK"
printf '"terminal_reason":"completed","total_cost_usd":0.01}\n'
"""


def agent_config(
    factory: ConfigFactory, sim: ForgejoSim, image: str, tmp: Path, name: str, script_text: str
) -> Config:
    """One agent (dev, or the reviewer) on the host's userland, its claude a script."""
    for login, token in TOKENS.items():
        sim.add_user(login, token=token)
    sim.add_repo(REPO, collaborators={ALICE: "write", DEV: "write", REVIEWER: "write"})
    token = factory.secret(f"{name}-token", TOKENS[name])
    creds = factory.secret("creds.json", '{"claudeAiOauth": {"accessToken": "oauth-x-123"}}')
    os.chown(creds, AGENT_UID, AGENT_UID)
    script = tmp / "fake-claude"
    script.write_text(script_text)
    script.chmod(0o755)
    record = tmp / "record"
    record.mkdir()
    record.chmod(0o777)
    role = "reviewer" if name == REVIEWER else "dev"
    agent = factory.agent(
        name, role=role, token_file=str(token), credentials_file=str(creds), image=image,
        network="host", timeout=60, claude_command="/opt/fake/claude",
        mounts=[HOST_USR_MOUNT, f"{script}:/opt/fake/claude:ro", f"{record}:/record"],
    )  # fmt: skip
    return factory.load(
        forgejo={"url": sim.base_url},
        daemon={"poll_interval": 30, "drain_timeout": 5},
        agents=[agent],
    )


@pytest.fixture
def agent_name() -> str:
    return DEV


@pytest.fixture
async def services(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    host_image: str,
    test_labels: dict[str, str],
    tmp_path: Path,
    agent_name: str,
) -> AsyncIterator[Services]:
    script = REVIEW_CLAUDE if agent_name == REVIEWER else FEEDBACK_CLAUDE
    config = agent_config(config_factory, forgejo_sim, host_image, tmp_path, agent_name, script)
    async with Services.running(
        config, daemon_id="test-loop-flow", extra_labels=test_labels, listen=False
    ) as started:
        yield started


@pytest.fixture
def branch() -> str:
    """The pull request's branch: a name of its own in each test, since the agent's state
    volume (and the working trees it keeps per thread) may outlive a test on a machine
    whose Docker other test runs share."""
    return f"dev/20-{uuid.uuid4().hex[:8]}"


def dev_pull(sim: ForgejoSim, branch: str) -> tuple[int, str]:
    """dev's pull request on its own branch, as a dev task would have opened it."""
    sim.commit_file(REPO, branch, "app.py", "x = 1\ny = 1\n", "Add app", DEV)
    number = sim.create_pull(REPO, DEV, "Add app", f"{marker(1)}\nAdds app.\n\nCloses #20",
                             head=branch)  # fmt: skip
    return number, sim.issue(REPO, number).pull.head_sha  # type: ignore[union-attr]


def feedback_spec(number: int, review_id: int, head: str, request: str) -> TaskSpec:
    return TaskSpec(
        agent=DEV, kind=TaskKind.REVIEW_FEEDBACK, repo=REPO, number=number,
        idempotency_key=f"{REPO}#{number}/review-feedback/{review_id}/{DEV}",
        requested_by=REVIEWER, request=request, source=TriggerSource.WEBHOOK, is_pull=True,
        review_id=review_id, head_sha=head,
    )  # fmt: skip


async def ended(services: Services, task_id: int) -> Task:
    async def final() -> Task | None:
        task = await services.store.get(task_id)
        return task if task is not None and task.state.is_final else None

    return await wait_until(final, timeout=60, interval=0.1, what=f"task {task_id} to end")


def tracking(sim: ForgejoSim, number: int, task: Task) -> str:
    return next(c.body for c in sim.comments(REPO, number) if find_marker(c.body) == task.id)


@pytest.mark.docker
async def test_review_feedback_is_fixed_on_the_branch_answered_and_re_requested(
    forgejo_sim: ForgejoSim, services: Services, tmp_path: Path, branch: str
) -> None:
    number, head = dev_pull(forgejo_sim, branch)
    comment = {"path": "app.py", "body": "y must be 2", "new_position": 2}
    review_id = forgejo_sim.submit_review(
        REPO, number, REVIEWER, "REQUEST_CHANGES", "One issue blocks merge.", comments=[comment]
    )
    [inline] = forgejo_sim.review_comments(review_id)
    task, created = await services.submit(
        feedback_spec(number, review_id, head, "One issue blocks merge.")
    )
    assert created
    task = await ended(services, task.id)
    assert task.state is TaskState.SUCCEEDED, task.error

    new_head = bare_git(forgejo_sim, "rev-parse", f"refs/heads/{branch}")
    assert bare_git(forgejo_sim, "rev-parse", f"{new_head}~1") == head  # on top, same branch
    assert bare_git(forgejo_sim, "log", "-1", "--format=%s", new_head) == (
        f"Address the review (task {task.id})"
    )
    pull = forgejo_sim.issue(REPO, number)
    assert pull.pull is not None and pull.pull.head_sha == new_head
    assert REVIEWER in forgejo_sim.state.requested_reviewers(pull)
    prompt = (tmp_path / "record" / f"prompt-{task.id}").read_text()
    assert "One issue blocks merge." in prompt and "y must be 2" in prompt
    assert f"### Comment {inline.id} by @reviewer, line 2" in prompt and "+y = 1" in prompt

    await wait_until(lambda: "Review re-requested" in tracking(forgejo_sim, number, task))
    body = tracking(forgejo_sim, number, task)
    assert f"Pushed 1 commit to `{branch}`" in body
    link = f"{forgejo_sim.base_url}/{REPO}/pulls/{number}/files#issuecomment-{inline.id}"
    assert f"- [`app.py:2`]({link}): fixed in task {task.id}" in body
    assert "Review re-requested from `reviewer`." in body
    assert '"addressed"' not in body  # the answer block is read, not shown
    # One comment of the agent's on the thread: its tracking comment, answers and all.
    assert [c.user for c in forgejo_sim.comments(REPO, number)] == [DEV]


@pytest.mark.docker
async def test_review_feedback_without_commits_says_so_and_re_requests_nobody(
    forgejo_sim: ForgejoSim, services: Services, branch: str
) -> None:
    number, head = dev_pull(forgejo_sim, branch)
    review_id = forgejo_sim.submit_review(
        REPO, number, REVIEWER, "REQUEST_CHANGES", "Hm, nothing to change after all."
    )
    task, _ = await services.submit(feedback_spec(number, review_id, head, "…"))
    task = await ended(services, task.id)
    assert task.state is TaskState.SUCCEEDED, task.error
    assert bare_git(forgejo_sim, "rev-parse", f"refs/heads/{branch}") == head
    await wait_until(lambda: "No commits" in tracking(forgejo_sim, number, task))
    assert REVIEWER not in forgejo_sim.state.requested_reviewers(forgejo_sim.issue(REPO, number))


@pytest.mark.docker
@pytest.mark.parametrize("agent_name", [REVIEWER])
async def test_a_re_review_is_told_so_with_its_earlier_comments_and_the_diff_since(
    forgejo_sim: ForgejoSim, services: Services, tmp_path: Path, branch: str
) -> None:
    number, old = dev_pull(forgejo_sim, branch)
    comment = {"path": "app.py", "body": "y must be 2", "new_position": 2}
    forgejo_sim.submit_review(
        REPO, number, REVIEWER, "REQUEST_CHANGES", "One issue blocks merge.", comments=[comment]
    )
    new = forgejo_sim.commit_file(REPO, branch, "app.py", "x = 1\ny = 2\n", "Fix y", DEV)
    spec = TaskSpec(
        agent=REVIEWER, kind=TaskKind.REVIEW, repo=REPO, number=number,
        idempotency_key=f"{REPO}#{number}/review-request/{new}/{REVIEWER}", requested_by=DEV,
        request="", source=TriggerSource.WEBHOOK, is_pull=True, head_sha=new,
    )  # fmt: skip
    task, _ = await services.submit(spec)
    task = await ended(services, task.id)
    assert task.state is TaskState.SUCCEEDED, task.error

    prompt = (tmp_path / "record" / f"prompt-{task.id}").read_text()
    assert f"This is a re-review: you reviewed commit {old[:12]} before (REQUEST_CHANGES)" in prompt
    assert "y must be 2" in prompt and "One issue blocks merge." in prompt
    since = prompt[prompt.index(f"### What changed since {old[:12]}") :]
    assert "-y = 1\n+y = 2" in since
    latest = forgejo_sim.reviews(REPO, number)[-1]
    assert (latest.user, latest.state, latest.commit_id) == (REVIEWER, "APPROVED", new)
    await wait_until(lambda: "CI: no commit status" in tracking(forgejo_sim, number, task))


# ---------------------------------------------------------------- merge request, rounds spent


class Team:
    """dev (fix_ci, merge_by code-lead) and code-lead, each with its own client, a store,
    the real worker, reporter and delivery; Claude is a stand-in."""

    def __init__(self, sim: ForgejoSim, config: Config, store: Store, answer: str) -> None:
        self.sim, self.config, self.store = sim, config, store
        self.clients = {
            name: ForgejoClient(sim.base_url, TOKENS[name], timeout=5.0, max_attempts=1)
            for name in (DEV, LEAD)
        }
        self.claude = AnsweringRuntime(answer)
        self.submitted: list[TaskSpec] = []
        self.refuse_submit = False
        self.now = 1_800_000_000.0
        client_for = self.clients.__getitem__
        self.reporter = Reporter(client_for, redact=lambda t: t, final_backoff=0.001)
        self.reports = TaskReports(self.reporter, store, lambda _: None)
        permissions = Permissions(
            Policy.from_config(config), {n: c.repo_permission for n, c in self.clients.items()}
        )
        self.worker = TaskWorker(
            config, store, self.claude, client_for, self.reports,
            Delivery(client_for, redact=lambda t: t), daemon_id="test-loop",
            permissions=permissions, submit=self.submit, clock=lambda: self.now,
        )  # fmt: skip

    async def submit(self, spec: TaskSpec) -> None:
        if self.refuse_submit:
            raise SchedulerError("shutting down: not accepting new tasks")
        self.submitted.append(spec)

    async def close(self) -> None:
        await self.reports.close()
        for client in self.clients.values():
            await client.close()

    async def queued(self, spec: TaskSpec) -> Task:
        task, _ = await self.store.enqueue(spec)
        return task

    async def run(self, task: Task) -> Task:
        """Precheck, then execute (if it may run), then the final tracking comment."""
        check = await self.worker.precheck(task)
        if check.skip_reason is not None or check.deferral is not None:
            return task.with_(error=check.skip_reason or check.deferral.reason)  # type: ignore[union-attr]
        task = await self.store.mark_running(task.id)
        outcome = await self.worker.execute(task)
        await self.reporter.finish(task, outcome)
        return await self.store.finish(task.id, outcome)


@pytest.fixture
async def team(
    forgejo_sim: ForgejoSim, config_factory: ConfigFactory, tmp_path: Path
) -> AsyncIterator[Team]:
    for login, token in TOKENS.items():
        forgejo_sim.add_user(login, token=token)
    forgejo_sim.add_repo(
        REPO, collaborators={ALICE: "write", DEV: "write", REVIEWER: "write", LEAD: "admin"}
    )
    secret = config_factory.secret
    dev = config_factory.agent(
        DEV, token_file=str(secret("dev", TOKENS[DEV])), fix_ci=True, merge_by=LEAD,
    )  # fmt: skip
    lead = config_factory.agent(
        LEAD, role="lead", token_file=str(secret("lead", TOKENS[LEAD])), checkout=False,
        merge_style="squash",
    )  # fmt: skip
    config = config_factory.load(forgejo={"url": forgejo_sim.base_url}, agents=[dev, lead])
    store = await Store.open(tmp_path / "tasks.sqlite3")
    made = Team(forgejo_sim, config, store, 'Matches #20.\n```json\n{"action": "merge"}\n```')
    try:
        yield made
    finally:
        await made.close()
        await store.close()


def approved_pull(sim: ForgejoSim) -> tuple[int, str]:
    sim.create_issue(REPO, ALICE, "Add a greeting", "Say hello, please.")  # issue #1
    number = sim.create_pull(REPO, DEV, "Add a greeting", f"{marker(1)}\nHello.\n\nCloses #1",
                             head="dev/1")  # fmt: skip
    head = sim.issue(REPO, number).pull.head_sha  # type: ignore[union-attr]
    sim.submit_review(REPO, number, REVIEWER, "APPROVED", "LGTM")
    return number, head


def merge_spec(number: int, head: str) -> TaskSpec:
    return TaskSpec(
        agent=LEAD, kind=TaskKind.MERGE_REQUEST, repo=REPO, number=number,
        idempotency_key=f"{REPO}#{number}/merge-request/{head}/{LEAD}", requested_by=REVIEWER,
        request="LGTM", source=TriggerSource.WEBHOOK, is_pull=True, head_sha=head,
    )  # fmt: skip


async def test_failing_ci_never_merges_and_starts_one_fix_for_that_head(team: Team) -> None:
    number, head = approved_pull(team.sim)
    team.sim.set_status(REPO, head, "failure", context="qa/test", creator=ALICE)
    team.sim.set_status(REPO, head, "success", context="lint", creator=ALICE)
    task = await team.queued(merge_spec(number, head))

    check = await team.worker.precheck(task)
    assert check.skip_reason == "CI failed: `qa/test` failure"
    assert not team.claude.prompts and not team.sim.issue(REPO, number).pull.merged  # type: ignore[union-attr]
    [fix] = team.submitted
    assert (fix.agent, fix.kind, fix.head_sha, fix.number) == (DEV, TaskKind.CI_FIX, head, number)
    assert fix.idempotency_key == f"{REPO}#{number}/ci-fix/{head}/{DEV}"
    # Seen again (a restart, a second approval): the same key, so the store keeps one task.
    await team.worker.precheck(task)
    assert {s.idempotency_key for s in team.submitted} == {fix.idempotency_key}
    first, created = await team.store.enqueue(fix)
    again, created_again = await team.store.enqueue(team.submitted[1])
    assert created and not created_again and again.id == first.id


async def test_a_ci_fix_that_cannot_be_queued_still_leaves_the_merge_skipped(team: Team) -> None:
    # The scheduler runs a task whose precheck raised: the lead must not run on red CI.
    number, head = approved_pull(team.sim)
    team.sim.set_status(REPO, head, "error", context="qa/test", creator=ALICE)
    team.refuse_submit = True
    check = await team.worker.precheck(await team.queued(merge_spec(number, head)))
    assert check.skip_reason == "CI failed: `qa/test` error"


async def test_pending_ci_waits_without_an_attempt_then_the_lead_merges(team: Team) -> None:
    number, head = approved_pull(team.sim)
    team.sim.set_status(REPO, head, "pending", context="qa/test", creator=ALICE)
    task = await team.queued(merge_spec(number, head))
    team.now = task.created_at
    check = await team.worker.precheck(task)
    assert check.deferral is not None and not check.deferral.uses_attempt
    assert check.deferral.retry_at == team.now + CI_RECHECK_MIN
    assert check.deferral.reason == "CI pending: `qa/test` pending"

    team.sim.set_status(REPO, head, "success", context="qa/test", creator=ALICE)
    task = await team.run(task)
    assert task.state is TaskState.SUCCEEDED, task.error
    pull = team.sim.issue(REPO, number)
    assert (
        pull.pull is not None
        and pull.pull.merged
        and pull.pull.head_ref not in (team.sim.state.repo(REPO).branches)
    )
    [prompt] = team.claude.prompts
    assert "The issue it closes: acme/app#1, opened by @alice" in prompt
    assert "Say hello, please." in prompt and "qa/test: success" in prompt
    body = tracking(team.sim, number, task)
    assert f"merged #{number} (squash) and deleted its branch" in body
    assert "CI: success (`qa/test` success)" in body
    assert not team.submitted


async def test_a_lead_that_declines_says_so_and_does_not_merge(team: Team) -> None:
    number, head = approved_pull(team.sim)
    team.claude.answer = 'It does not do what #1 asks.\n```json\n{"action": "none"}\n```'
    task = await team.run(await team.queued(merge_spec(number, head)))
    assert task.state is TaskState.SUCCEEDED, task.error
    assert not team.sim.issue(REPO, number).pull.merged  # type: ignore[union-attr]
    body = tracking(team.sim, number, task)
    assert "It does not do what #1 asks." in body and "Not merged: the lead declined" in body
    assert "CI: no commit status reported for the head." in body


async def test_a_merge_request_for_a_head_that_moved_is_skipped(team: Team) -> None:
    number, head = approved_pull(team.sim)
    task = await team.queued(merge_spec(number, head))
    team.sim.commit_file(REPO, "dev/1", "more.txt", "more\n", "More", DEV)
    check = await team.worker.precheck(task)
    assert check.skip_reason is not None and check.skip_reason.startswith("the head moved to")


async def test_rounds_spent_is_one_new_comment_to_the_person_who_asked(team: Team) -> None:
    origin = await team.queued(TaskSpec(
        agent=DEV, kind=TaskKind.MENTION, repo=REPO, number=1, idempotency_key="origin",
        requested_by=ALICE, request="@dev add a greeting", source=TriggerSource.POLL,
    ))  # fmt: skip
    team.sim.create_issue(REPO, ALICE, "Add a greeting", "Say hello.")
    body = f"{marker(origin.id)}\nHello.\n\nCloses #1"
    number = team.sim.create_pull(REPO, DEV, "Add a greeting", body, head="dev/1")
    review_id = team.sim.submit_review(
        REPO, number, REVIEWER, "REQUEST_CHANGES", "Still wrong, @dev.",
        comments=[{"path": "dev/1.txt", "body": "greet @code-lead too", "new_position": 1}],
    )  # fmt: skip
    spec = TaskSpec(
        agent=DEV, kind=TaskKind.ROUNDS_SPENT, repo=REPO, number=number,
        idempotency_key=f"{REPO}#{number}/rounds-spent/{review_id}/{DEV}",
        requested_by=REVIEWER, request="", source=TriggerSource.WEBHOOK, is_pull=True,
        review_id=review_id,
    )  # fmt: skip
    task = await team.queued(spec)
    await team.reports.on_change(task)  # queued: nothing is posted for it yet
    await team.reports.close()
    assert team.sim.comments(REPO, number) == []

    task = await team.run(task)
    assert task.state is TaskState.SUCCEEDED and not team.claude.prompts
    [comment] = team.sim.comments(REPO, number)
    assert comment.user == DEV and find_marker(comment.body) == task.id
    assert "\n\n@alice The agents stopped after 3 review rounds" in comment.body
    assert "`dev/1.txt:1`: greet `@code-lead` too" in comment.body
    assert "Still wrong, `@dev`." in comment.body
    # alice took no part in the pull request: only the mention tells her.
    assert [(t.number, t.status) for t in team.sim.threads(ALICE)] == [(number, "unread")]


async def test_a_mention_on_a_persons_pull_request_works_on_its_branch_and_a_refused_push_says_why(
    team: Team,
) -> None:
    team.sim.commit_file(REPO, "feature", "app.py", "x = 1\n", "One", ALICE)
    number = team.sim.create_pull(REPO, ALICE, "Feature", "Please.", head="feature")
    team.claude.answer = "Fixed the typo."
    team.claude.refuse_push = "! [remote rejected] HEAD -> feature (protected branch hook declined)"
    task = await team.run(await team.queued(TaskSpec(
        agent=DEV, kind=TaskKind.MENTION, repo=REPO, number=number, idempotency_key="m-1",
        requested_by=ALICE, request="@dev fix the typo", source=TriggerSource.POLL, is_pull=True,
    )))  # fmt: skip
    [plan] = team.claude.plans
    assert (plan.checkout, plan.branch, plan.pull_number) == (
        workspace.Checkout.PULL_BRANCH, "feature", number,
    )  # fmt: skip
    assert task.state is TaskState.FAILED
    assert task.error == (
        "could not push `feature`, Forgejo refused it or was not reachable: "
        "! [remote rejected] HEAD -> feature (protected branch hook declined)"
    )
    body = tracking(team.sim, number, task)
    assert "Failed: Could not push `feature`" in body and "protected branch hook declined" in body
