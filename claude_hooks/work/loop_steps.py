"""The I/O of the team's loop on a pull request (issue #14), for the worker.

What the steps need from Forgejo and the working tree beyond an ordinary task: the
head's commit status, the review to address and the comments still open, the
reviewer's previous review and the diff since, the issue a pull request closes; the
merge request's check before its lead runs (and the CI fix it may start); what
follows a push to a pull request's branch (the answers to the review, the
re-requested review); and the one comment that ends a loop out of rounds. The
decisions are work/loop.py's; the words report/render.py's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import structlog

from claude_hooks.config import AgentConfig, Config
from claude_hooks.forgejo.client import ForgejoClient, ForgejoError
from claude_hooks.forgejo.models import CombinedStatus, Issue, PullRequest, Review, ReviewComment
from claude_hooks.report.render import (
    FORK_REASON,
    NO_COMMITS_NOTE,
    answered_comments,
    ci_fix_request,
    ci_line,
    head_moved_reason,
    pushed_note,
    rerequest_failed_note,
    rerequested_note,
    rounds_spent_text,
    unplain_branch_reason,
)
from claude_hooks.runner import workspace
from claude_hooks.runner.runtime import AgentRuntime
from claude_hooks.store import Store
from claude_hooks.tasks import Outcome, Task, TaskKind, TaskSpec, TaskState
from claude_hooks.text import find_marker
from claude_hooks.work.delivery import Delivery
from claude_hooks.work.loop import (
    CiVerdict,
    ci_fix_key,
    ci_verdict,
    closing_issue_numbers,
    merge_check,
    person_to_tell,
    previous_review,
    reviewers_to_rerequest,
    unresolved,
    where,
)
from claude_hooks.work.prompts import ReReview, ReviewFeedback, plain_ref
from claude_hooks.work.scheduler import Precheck
from claude_hooks.work.verdict import parse_feedback_answer

log: structlog.typing.FilteringBoundLogger = structlog.get_logger(__name__)

Submit = Callable[[TaskSpec], Awaitable[object]]
EARLIER_REVIEWS_READ = 10  # earlier reviews whose open comments a feedback prompt lists


@dataclass(frozen=True)
class PullFacts:
    """What the loop reads of a pull request besides the thread."""

    status: CombinedStatus | None = None  # the head's; None when Forgejo would not say
    reviews: tuple[Review, ...] = ()
    feedback: ReviewFeedback | None = None  # REVIEW_FEEDBACK: the review to address
    closes: Issue | None = None  # MERGE_REQUEST: the issue the pull request closes


def pull_push_refusal(pull: PullRequest) -> str | None:
    """Why a dev task on this pull request cannot push its branch, or None when it can."""
    if pull.from_fork:
        return FORK_REASON
    if not plain_ref(pull.head_ref):
        return unplain_branch_reason(pull.head_ref)
    return None


def status_line(facts: PullFacts) -> str:
    verdict = ci_verdict(facts.status)
    return ci_line(verdict.combined, verdict.contexts)


class LoopSteps:
    def __init__(
        self,
        config: Config,
        store: Store,
        runtime: AgentRuntime,
        client_for: Callable[[str], ForgejoClient],
        delivery: Delivery,
        *,
        submit: Submit | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._store = store
        self._runtime = runtime
        self._client_for = client_for
        self._delivery = delivery
        self._submit = submit
        self._clock = clock

    # --- before the run ---------------------------------------------------------------------

    async def merge_precheck(self, task: Task, pull: PullRequest) -> Precheck:
        """The lead runs once the gate passes at the approved head and CI passes (or no CI
        reports); pending waits, failing ends the request (and may start a CI fix)."""
        spec = task.spec
        if pull.merged:
            return Precheck.skip(f"#{pull.number} is already merged")
        head = spec.head_sha or pull.head_sha
        if pull.head_sha != head:
            return Precheck.skip(head_moved_reason(head, pull.head_sha))
        gate = await self._delivery.approval_gate(task, pull, head)
        status = await self._client_for(spec.agent).combined_status(spec.repo, head)
        ci = ci_verdict(status)
        now = self._clock()
        waited = max(0.0, now - task.created_at) if task.created_at else 0.0
        check = merge_check(gate, ci, waited=waited, now=now)
        if check.ci_failed:
            await self._submit_ci_fix(task, pull, ci)
        return check.precheck

    async def _submit_ci_fix(self, task: Task, pull: PullRequest, ci: CiVerdict) -> None:
        author = self._agent_named(pull.user.login)
        if author is None or not author.fix_ci or self._submit is None:
            return
        spec = task.spec
        assert spec.number is not None
        fix = TaskSpec(
            agent=author.name,
            kind=TaskKind.CI_FIX,
            repo=spec.repo,
            number=spec.number,
            idempotency_key=ci_fix_key(spec.repo, spec.number, pull.head_sha, author.name),
            requested_by=spec.agent,
            request=ci_fix_request(ci.holding, pull.head_sha),
            source=spec.source,
            is_pull=True,
            head_sha=pull.head_sha,
            hop=spec.hop,
        )
        try:
            await self._submit(fix)
        except Exception as exc:  # e.g. shutting down: the merge request still ends skipped
            error = f"{type(exc).__name__}: {exc}"
            log.warning("ci_fix_not_submitted", task_id=task.id, error=error)
            return
        log.info("ci_fix_submitted", task_id=task.id, agent=author.name, head=pull.head_sha)

    def _agent_named(self, login: str) -> AgentConfig | None:
        return next((a for a in self._config.agents if a.name.lower() == login.lower()), None)

    async def pull_facts(self, task: Task, pull: PullRequest) -> PullFacts:
        spec = task.spec
        client = self._client_for(spec.agent)
        status = None
        if pull.head_sha:
            try:
                status = await client.combined_status(spec.repo, pull.head_sha)
            except ForgejoError as exc:  # the status informs; it never stops the run
                log.warning("commit_status_unavailable", task_id=task.id, error=str(exc))
        reviews = tuple(await client.list_reviews(spec.repo, pull.number))
        feedback = closes = None
        if spec.kind is TaskKind.REVIEW_FEEDBACK and spec.review_id is not None:
            feedback = await self._feedback(client, task, pull, reviews)
        if spec.kind is TaskKind.MERGE_REQUEST:
            closes = await self._closed_issue(client, spec.repo, pull)
        return PullFacts(status, reviews, feedback, closes)

    async def _feedback(
        self, client: ForgejoClient, task: Task, pull: PullRequest, reviews: Sequence[Review]
    ) -> ReviewFeedback | None:
        spec = task.spec
        review = next((r for r in reviews if r.id == spec.review_id), None)
        if review is None:
            return None
        comments = tuple(await client.review_comments(spec.repo, pull.number, review.id))
        earlier_reviews = [
            r
            for r in reviews
            if r.id < review.id
            and r.comments_count > 0
            and r.user is not None
            and r.user.login.lower() != pull.user.login.lower()
        ][-EARLIER_REVIEWS_READ:]
        earlier: list[ReviewComment] = []
        for old in earlier_reviews:
            earlier += unresolved(await client.review_comments(spec.repo, pull.number, old.id))
        return ReviewFeedback(review, comments, tuple(earlier))

    async def _closed_issue(
        self, client: ForgejoClient, repo: str, pull: PullRequest
    ) -> Issue | None:
        for number in closing_issue_numbers(pull.body):
            try:
                issue = await client.get_issue(repo, number)
            except ForgejoError:
                continue
            if not issue.is_pull:
                return issue
        return None

    async def rereview(
        self,
        task: Task,
        agent: AgentConfig,
        plan: workspace.WorkspacePlan,
        env: Sequence[str],
        facts: PullFacts,
        head: str,
    ) -> ReReview | None:
        """A review task after this reviewer's review of an earlier head: that review's
        comments and the diff since, from git in the tree the review runs in."""
        previous = previous_review(facts.reviews, agent.name, head)
        if previous is None or task.spec.number is None:
            return None
        client = self._client_for(agent.name)
        number = task.spec.number
        comments = tuple(await client.review_comments(task.spec.repo, number, previous.id))
        if plan.checkout is not workspace.Checkout.PULL_HEAD:
            return ReReview(previous, comments, missing=True)
        try:
            diff = await self._runtime.diff_since(agent, plan, env, previous.commit_id)
        except workspace.WorkspaceError as exc:
            log.warning("rereview_diff_failed", task_id=task.id, error=str(exc))
            return ReReview(previous, comments, missing=True)
        return ReReview(previous, comments, diff.text, diff.missing)

    # --- after the run ----------------------------------------------------------------------

    async def after_push(
        self,
        task: Task,
        plan: workspace.WorkspacePlan,
        facts: PullFacts | None,
        outcome: Outcome,
        published: workspace.Published,
    ) -> Outcome:
        """A dev run on a pull request's branch pushed (or had nothing to push): answer the
        review's comments and ask the reviewers again, as the step needs."""
        kind = task.spec.kind
        loop_push = kind in (TaskKind.REVIEW_FEEDBACK, TaskKind.CI_FIX)
        if published.commits == 0:
            note = NO_COMMITS_NOTE if loop_push else ""
            return replace(outcome, result=_joined(outcome.result, note))
        body, notes = outcome.result or "", [pushed_note(plan.branch, published.log)]
        if kind is TaskKind.REVIEW_FEEDBACK and facts is not None and facts.feedback is not None:
            body, answers = self._answers(body, facts.feedback)
            notes.append(answers)
        if loop_push:
            notes.append(await self._rerequest(task))
        return replace(outcome, result=_joined(body, *notes))

    def _answers(self, text: str, feedback: ReviewFeedback) -> tuple[str, str]:
        comments = (*feedback.comments, *feedback.earlier)
        answer = parse_feedback_answer(text, [c.id for c in comments])
        listed = [
            (where(c), c.html_url, answer.replies.get(c.id, ""))
            for c in comments
            if c.id in answer.replies or c in feedback.comments
        ]
        return answer.body, answered_comments(listed) if listed else ""

    async def _rerequest(self, task: Task) -> str:
        spec = task.spec
        assert spec.number is not None
        client = self._client_for(spec.agent)
        reviews = await client.list_reviews(spec.repo, spec.number)
        asked_by = spec.requested_by if spec.kind is TaskKind.REVIEW_FEEDBACK else ""
        reviewers = reviewers_to_rerequest(spec.kind, reviews, spec.agent, asked_by)
        review_by = self._config.agent(spec.agent).review_by
        if not reviewers and review_by is not None:
            reviewers = [review_by]
        if not reviewers:
            return rerequested_note(())
        try:
            await client.request_reviewers(spec.repo, spec.number, reviewers)
        except ForgejoError as exc:
            log.warning("rerequest_failed", task_id=task.id, reviewers=reviewers, error=str(exc))
            return rerequest_failed_note(reviewers, str(exc))
        log.info("review_rerequested", task_id=task.id, reviewers=reviewers)
        return rerequested_note(reviewers)

    # --- rounds spent: no run ---------------------------------------------------------------

    async def rounds_spent(self, task: Task) -> Outcome:
        """The one comment to whoever started the work: the loop stopped, and what is open."""
        spec = task.spec
        assert spec.number is not None
        client = self._client_for(spec.agent)
        pull = await client.get_pull(spec.repo, spec.number)
        origin = await self._origin(spec.repo, pull)
        issue_author = await self._issue_author(client, spec.repo, pull, origin)
        who = person_to_tell(origin, issue_author, self._config.agent_names)
        review_body, open_comments = "", []
        if spec.review_id is not None:
            reviews = await client.list_reviews(spec.repo, spec.number)
            review = next((r for r in reviews if r.id == spec.review_id), None)
            review_body = review.body if review is not None else ""
            comments = await client.review_comments(spec.repo, spec.number, spec.review_id)
            open_comments = [(where(c), c.body) for c in unresolved(comments)]
        rounds = self._config.daemon.max_review_rounds
        text = rounds_spent_text(who, rounds, spec.requested_by, open_comments, review_body)
        log.info("review_rounds_spent", task_id=task.id, addressee=who, rounds=rounds)
        return Outcome(TaskState.SUCCEEDED, result=text)

    async def _origin(self, repo: str, pull: PullRequest) -> Task | None:
        """The task whose marker the pull request's body carries, if an agent opened it."""
        if self._agent_named(pull.user.login) is None:
            return None  # a person's body: a marker in it proves nothing
        task_id = find_marker(pull.body)
        origin = await self._store.get(task_id) if task_id is not None else None
        return origin if origin is not None and origin.spec.repo == repo else None

    async def _issue_author(
        self, client: ForgejoClient, repo: str, pull: PullRequest, origin: Task | None
    ) -> str | None:
        if origin is not None and origin.spec.number is not None and not origin.spec.is_pull:
            numbers: Sequence[int] = (origin.spec.number,)
        else:
            numbers = closing_issue_numbers(pull.body)
        for number in numbers:
            try:
                return (await client.get_issue(repo, number)).user.login
            except ForgejoError:
                continue
        return None


def _joined(*parts: str | None) -> str:
    return "\n\n".join(p.strip() for p in parts if p and p.strip())
