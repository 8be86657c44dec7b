"""What a task's work delivers on Forgejo: the pull request, the review, the merge.

These are the work itself, not reports on it: each raises ForgejoError when it
cannot be made (the merge says why not instead), so the task is recorded as failed.
Each is idempotent per task: the pull request is found by its branch, the review by
the task's marker, a merged pull request is not merged again. The words come from
report/render.py; the merge goes through the gate in work/merge_gate.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog

from claude_hooks.config import MergeStyle
from claude_hooks.forgejo.client import ForgejoClient, ForgejoError
from claude_hooks.forgejo.models import PullRequest, Review
from claude_hooks.report.render import (
    Redact,
    comment_as_text,
    comment_only_note,
    pull_body,
    review_body,
)
from claude_hooks.tasks import Task
from claude_hooks.text import defuse_mentions, find_marker
from claude_hooks.work.merge_gate import GateResult, merge_gate, verdict_reviewers
from claude_hooks.work.verdict import ReviewState, ValidatedVerdict

log: structlog.typing.FilteringBoundLogger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class MergeResult:
    merged: bool
    detail: str  # in words, for the tracking comment


def review_attempts(verdict: ValidatedVerdict) -> list[ValidatedVerdict]:
    """What to try when Forgejo refuses a review (422), most faithful first.

    APPROVED / REQUEST_CHANGES on the agent's own PR is refused: retry as COMMENT
    naming the intended verdict. Inline comments Forgejo cannot place: retry with
    them in the body.
    """
    attempts = [verdict]
    if verdict.event is not ReviewState.COMMENT:
        body = f"{verdict.body}\n\n{comment_only_note(verdict.event.value)}".strip()
        attempts.append(
            ValidatedVerdict(ReviewState.COMMENT, body, verdict.comments, verdict.moved)
        )
    if verdict.comments:
        texts = [comment_as_text(c.path, c.new_position, c.body) for c in verdict.comments]
        body = "\n\n".join([attempts[-1].body, *texts]).strip()
        attempts.append(ValidatedVerdict(ReviewState.COMMENT, body, (), verdict.moved))
    return attempts


class Delivery:
    """Makes one task's outputs on Forgejo, as the task's agent."""

    def __init__(self, client_for: Callable[[str], ForgejoClient], *, redact: Redact) -> None:
        self._client_for = client_for
        self._redact = redact

    def _log(self, task: Task) -> structlog.typing.FilteringBoundLogger:
        return log.bind(task_id=task.id, agent=task.spec.agent, thread=task.spec.thread)

    # -- the review

    async def post_review(
        self, task: Task, verdict: ValidatedVerdict, head_sha: str | None
    ) -> Review:
        """Post the review (inline comments at absolute new-side lines); idempotent per task."""
        spec = task.spec
        if spec.number is None:
            raise ValueError(f"task {task.id}: a review needs a pull request number")
        client = self._client_for(spec.agent)
        existing = await self._clear_pending_reviews(task, client)
        if existing is not None:
            return existing
        attempts = review_attempts(verdict)
        for i, attempt in enumerate(attempts):
            try:
                return await client.create_review(
                    spec.repo,
                    spec.number,
                    event=attempt.event.value,
                    body=self._redact(review_body(task, attempt.body)),
                    commit_id=head_sha,
                    comments=[
                        replace(c, body=self._redact(defuse_mentions(c.body)))
                        for c in attempt.comments
                    ],
                )
            except ForgejoError as exc:
                if exc.status != 422 or i == len(attempts) - 1:
                    raise
                self._log(task).warning(
                    "review_refused", review_event=attempt.event.value, error=str(exc)
                )
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _clear_pending_reviews(self, task: Task, client: ForgejoClient) -> Review | None:
        """Delete the agent's stale PENDING reviews (they would swallow new inline comments);
        return the review this task already posted, if a previous run got that far."""
        spec, agent = task.spec, task.spec.agent.lower()
        assert spec.number is not None
        mine = [
            r
            for r in await client.list_reviews(spec.repo, spec.number)
            if r.user is not None and r.user.login.lower() == agent
        ]
        for review in mine:
            if review.state == "PENDING":
                await client.delete_review(spec.repo, spec.number, review.id)
                self._log(task).info("stale_pending_review_deleted", review_id=review.id)
        return next(
            (r for r in mine if r.state != "PENDING" and find_marker(r.body) == task.id), None
        )

    # -- the pull request

    async def open_or_update_pull(
        self,
        task: Task,
        branch: str,
        base: str,
        title: str,
        summary: str,
        *,
        review_by: str | None = None,
    ) -> str:
        """Open the PR for a dev task's branch (or update the one already open); its URL."""
        spec = task.spec
        client = self._client_for(spec.agent)
        body = self._redact(pull_body(task, summary))
        open_pulls = await client.list_pulls(spec.repo, "open")
        pull = next((p for p in open_pulls if p.head_ref == branch and p.base_ref == base), None)
        if pull is None:
            pull = await client.create_pull(
                spec.repo, head=branch, base=base, title=title, body=body
            )
            self._log(task).info("pull_opened", number=pull.number, branch=branch)
        else:
            pull = await client.edit_pull(spec.repo, pull.number, title=title, body=body)
            self._log(task).info("pull_updated", number=pull.number, branch=branch)
        if review_by is not None and review_by.lower() not in {
            r.lower() for r in pull.requested_reviewers
        }:
            try:
                await client.request_reviewers(spec.repo, pull.number, [review_by])
            except ForgejoError as exc:
                self._log(task).warning("review_request_failed", reviewer=review_by, error=str(exc))
        return pull.html_url

    # -- the merge

    async def merge(self, task: Task, style: MergeStyle, head_sha: str) -> MergeResult:
        """Merge the task's PR, deleting the branch, if the merge gate lets it through at
        `head_sha` (claude_hooks/work/merge_gate.py); otherwise say why not."""
        spec = task.spec
        if spec.number is None:
            return MergeResult(False, "no pull request to merge")
        client = self._client_for(spec.agent)
        try:
            pull = await client.get_pull(spec.repo, spec.number)
            if pull.merged:
                return MergeResult(True, f"#{pull.number} was already merged")
            if pull.state != "open":
                return MergeResult(False, f"#{pull.number} is {pull.state}, not open")
            gate = await self._merge_gate(client, spec.repo, pull, head_sha)
            if not gate.ok:
                self._log(task).info("merge_gate_closed", number=pull.number, reasons=gate.reasons)
                because = "; ".join(gate.reasons)
                return MergeResult(False, f"did not merge #{pull.number}: {because}")
            merged = await client.merge_pull(
                spec.repo,
                spec.number,
                style=style.value,
                head_commit_id=head_sha or pull.head_sha,  # the commit the gate let through
                delete_branch=True,
            )
        except ForgejoError as exc:
            self._log(task).warning("merge_refused", error=str(exc))
            if exc.status is None:  # no answer: the message is the connection error's text
                return MergeResult(False, "Forgejo did not answer the merge request")
            return MergeResult(False, f"Forgejo refused the merge: {exc.message} ({exc.status})")
        if not merged:  # 405 / 409: not mergeable (conflict, WIP) or the head moved
            return MergeResult(
                False,
                f"Forgejo refused to merge #{spec.number}: not mergeable "
                f"now, or its head moved past {head_sha[:10]}",
            )
        self._log(task).info("pull_merged", number=spec.number, style=style.value)
        return MergeResult(True, f"merged #{spec.number} ({style.value}) and deleted its branch")

    async def approval_gate(self, task: Task, pull: PullRequest, head_sha: str) -> GateResult:
        """The merge gate without the commit status (the caller weighs pending and failing
        apart: a merge request waits for one and gives up on the other)."""
        client = self._client_for(task.spec.agent)
        return await self._merge_gate(client, task.spec.repo, pull, head_sha, with_status=False)

    async def _merge_gate(
        self,
        client: ForgejoClient,
        repo: str,
        pull: PullRequest,
        head_sha: str,
        *,
        with_status: bool = True,
    ) -> GateResult:
        """The gate's facts, fresh from Forgejo: reviews, reviewers' access, the head's status."""
        reviews = await client.list_reviews(repo, pull.number)
        reviewers = verdict_reviewers(reviews)
        access = {login: await client.repo_permission(repo, login) for login in reviewers}
        status = None
        if with_status and pull.head_sha:
            status = await client.combined_status(repo, pull.head_sha)
        return merge_gate(pull, reviews, access, status, head_sha=head_sha)
