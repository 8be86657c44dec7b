"""A verified webhook delivery → the thread it shows → the Intake.

Comments, new issues and review requests carry all they need; a submitted review
(no id, no inline comments) and an assignment (no timeline id) are looked up first,
the same lookups the poller makes, so both paths build the same keys. The thread is
built once (`delivered_thread`, pure) and decided once for every configured agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import structlog

from claude_hooks.forgejo.models import Issue
from claude_hooks.forgejo.webhook import (
    CommentEvent,
    IssueEvent,
    ReviewEvent,
    ReviewRequestEvent,
    WebhookEvent,
    parse_webhook,
)
from claude_hooks.intake.decide import Decision
from claude_hooks.intake.intake import Intake
from claude_hooks.intake.thread import Post, PostKind, ReviewRequest, ThreadContext, ThreadEvent
from claude_hooks.tasks import TriggerSource

log = structlog.get_logger(__name__)


class WebhookHandler:
    """Turns one verified, parsed webhook delivery into stored triggers."""

    def __init__(self, intake: Intake) -> None:
        self._intake = intake

    async def receive(self, event: str, payload: dict[str, Any], delivery: str | None) -> int:
        """One delivery as the API took it (event header, JSON body, delivery id): how
        many triggers it stored. Raises ForgejoDataError for a payload of the wrong shape."""
        parsed = parse_webhook(event, payload, delivery)
        if parsed is None:
            return 0  # an event that asks nothing (a push, a closed issue, …)
        return len((await self.handle(parsed)).triggers)

    async def handle(self, event: WebhookEvent) -> Decision:
        intake, delivery = self._intake, event.delivery
        if not intake.serves(
            event.repo, event.number, user=event.sender, source="webhook", delivery=delivery
        ):
            return Decision()  # refused before any lookup: nothing read or written there
        ctx = delivered_thread(event, resolved=await self._resolve(event))
        if ctx is None or not ctx.new:
            return Decision()
        if intake.policy.is_agent(event.sender):
            ctx = await intake.reader().with_history(ctx)  # a person's event is hop 0
        agents = intake.policy.agents
        return await intake.take(ctx, agents, TriggerSource.WEBHOOK, delivery=delivery)

    async def _resolve(self, event: WebhookEvent) -> list[ThreadEvent]:
        reader = self._intake.reader()
        if isinstance(event, ReviewEvent):
            return await reader.submitted_review(event.repo, event.number, event.sender)
        if isinstance(event, IssueEvent) and event.action == "assigned":
            is_agent = self._intake.policy.is_agent
            agents = [a for a in event.issue.assignees if is_agent(a)]
            return await reader.latest_assignments(event.repo, event.number, agents)
        return []


def delivered_thread(
    event: WebhookEvent, resolved: Sequence[ThreadEvent] = ()
) -> ThreadContext | None:
    """The thread as a webhook delivery shows it; None when the delivery asks nothing.

    A submitted review (no id, no inline comments in the payload) and an assignment
    (no time) only count through `resolved`: the events looked up for them, so that
    their keys are the ones polling builds from the same lookups.
    """
    if isinstance(event, CommentEvent):
        if event.action != "created":
            return None  # an edit never triggers, whatever it added
        c = event.comment
        new: tuple[ThreadEvent, ...] = (
            Post(PostKind.COMMENT, c.id, c.user.login, c.body, c.created_at),
        )
        return _issue_thread(event.repo, event.issue, new)
    if isinstance(event, IssueEvent):
        issue = event.issue
        if event.action == "opened":
            new = (
                Post(PostKind.BODY, issue.number, issue.user.login, issue.body, issue.created_at),
            )
        else:
            new = tuple(resolved)
        return replace(_issue_thread(event.repo, issue, new), assignees=frozenset(issue.assignees))
    pull = event.pull
    if isinstance(event, ReviewRequestEvent):
        new = (ReviewRequest(event.reviewer, event.sender, None),)
        requested: frozenset[str] = frozenset({event.reviewer})
    else:
        new, requested = tuple(resolved), frozenset()
    return ThreadContext(
        repo=event.repo,
        number=pull.number,
        is_pull=True,
        title=pull.title,
        new=new,
        head_sha=pull.head_sha,
        requested_reviewers=requested,
        pull_author=pull.user.login,
    )


def _issue_thread(repo: str, issue: Issue, new: tuple[ThreadEvent, ...]) -> ThreadContext:
    return ThreadContext(
        repo=repo,
        number=issue.number,
        is_pull=issue.is_pull,
        title=issue.title,
        new=new,
        pull_author=issue.user.login if issue.is_pull else "",  # a PR's poster is the issue's
    )
