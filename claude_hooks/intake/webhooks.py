"""A verified webhook delivery → the thread it shows → the Intake.

Comments, new issues and review requests carry all they need; a submitted review
(no id, no inline comments) and an assignment (no timeline id) are looked up first,
the same lookups the poller makes, so both paths build the same keys. The thread is
built once (`delivered_thread`, pure), then decided for each agent it asks something
of (`asked_agents`, pure), each with its own account: the reads and permission checks
for an agent's triggers are made by that agent, never by the first configured one, so
one agent's unreadable token file (`token_unreadable`, not an outage) stops only its
own triggers; that decision fails, and the inbox below tries it again.

Deciding asks Forgejo (permissions, reviews, timelines), which may be slow or down;
Forgejo waits only ~10 s for an answer. So the API hands a delivery to the
`WebhookInbox`: checked for shape, kept in the store, answered at once; the inbox
decides from the stored row in the background (retrying with backoff, and again
after a restart) and deletes it once decided. Deciding twice is harmless: every
trigger has an idempotency key.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import replace
from typing import Any

import structlog

from claude_hooks.forgejo.client import TokenUnreadable
from claude_hooks.forgejo.models import ForgejoDataError, Issue
from claude_hooks.forgejo.webhook import (
    CommentEvent,
    IssueEvent,
    ReviewEvent,
    ReviewRequestEvent,
    WebhookEvent,
    parse_webhook,
)
from claude_hooks.intake.decide import Decision, Policy, propose
from claude_hooks.intake.intake import Intake
from claude_hooks.intake.mentions import find_mentions
from claude_hooks.intake.thread import Post, PostKind, ReviewRequest, ThreadContext, ThreadEvent
from claude_hooks.precedence import PRECEDENCE
from claude_hooks.store import Store, StoredWebhook
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
        decision, unreadable = Decision(), None
        for agent in asked_agents(ctx, intake.policy):
            try:
                decision = decision + await self._take(ctx, agent, event)
            except TokenUnreadable as error:
                _log_unreadable(error, agent, delivery)
                unreadable = unreadable or error  # the other agents' triggers still go in
        if unreadable is not None:
            raise unreadable  # not remembered: a redelivery retries it; keys dedupe the rest
        return decision

    async def _take(self, ctx: ThreadContext, agent: str, event: WebhookEvent) -> Decision:
        """`agent`'s part of the delivery, read and checked with `agent`'s account."""
        intake = self._intake
        if intake.policy.is_agent(event.sender):
            ctx = await intake.reader(agent).with_history(ctx)  # a person's event is hop 0
        return await intake.take(ctx, (agent,), TriggerSource.WEBHOOK, delivery=event.delivery)

    async def _resolve(self, event: WebhookEvent) -> list[ThreadEvent]:
        """The lookups a payload needs, made by the agent it addresses (the next one when
        that agent's token cannot be read)."""
        if not isinstance(event, ReviewEvent | IssueEvent) or (
            isinstance(event, IssueEvent) and event.action != "assigned"
        ):
            return []
        unreadable: TokenUnreadable | None = None
        for agent in lookup_agents(event, self._intake.policy):
            try:
                return await self._lookup(event, agent)
            except TokenUnreadable as error:
                _log_unreadable(error, agent, event.delivery)
                unreadable = unreadable or error
        assert unreadable is not None  # a Policy always has agents
        raise unreadable

    async def _lookup(self, event: ReviewEvent | IssueEvent, agent: str) -> list[ThreadEvent]:
        reader = self._intake.reader(agent)
        if isinstance(event, ReviewEvent):
            return await reader.submitted_review(event.repo, event.number, event.sender)
        agents = [a for a in event.issue.assignees if self._intake.policy.is_ours(a)]
        return await reader.latest_assignments(event.repo, event.number, agents)


def _log_unreadable(error: TokenUnreadable, agent: str, delivery: str | None) -> None:
    log.error(
        "token_unreadable", file=error.file, agent=agent, delivery=delivery, error=error.message
    )


def asked_agents(ctx: ThreadContext, policy: Policy) -> list[str]:
    """The agents the delivered thread asks something of (a mention, `@agent stop`, a
    review request, an assignment); history only changes the hop, never who is asked."""
    return [
        agent for agent in policy.agents if propose(agent, ctx, policy, TriggerSource.WEBHOOK).items
    ]


def lookup_agents(event: ReviewEvent | IssueEvent, policy: Policy) -> list[str]:
    """Whose account looks up what the payload lacks: the agents it addresses first (the
    assigned ones; those the review's text mentions), then the others."""
    if isinstance(event, ReviewEvent):
        addressed = [a for a in policy.agents if find_mentions(event.content, a)]
    else:
        assigned = {a.lower() for a in event.issue.assignees}
        addressed = [a for a in policy.agents if a.lower() in assigned]
    return addressed + [a for a in policy.agents if a not in addressed]


MAX_DECISION_ATTEMPTS = 12  # with retry_delay: about half an hour of Forgejo trouble


def retry_delay(attempts: int, first: float = 2.0, ceiling: float = 300.0) -> float:
    """Seconds before deciding a delivery again after `attempts` failed decisions."""
    return float(min(ceiling, first * 2 ** (attempts - 1)))


class WebhookInbox:
    """Takes deliveries at once (kept in the store) and decides them in the background.

    A delivery the API just kept is handed over in memory, with its row: reading it
    back cost a store round trip per delivery, and under load (bench figure 8) each
    round trip was tens of milliseconds of the 👀's wait. The store is read at start
    (what an earlier run left), when a retry is due, and after an error. A decided
    delivery's row is dropped in the background, the next decision not waiting for it:
    a crash before the drop only decides it again, which its idempotency keys make
    harmless.
    """

    def __init__(
        self,
        handler: WebhookHandler,
        store: Store,
        *,
        first_retry: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handler = handler
        self._store = store
        self._first_retry = first_retry
        self._clock = clock
        self._wake = asyncio.Event()
        self._taken: list[StoredWebhook] = []  # kept by the API, not yet looked at
        self._look_at: float | None = 0.0  # when to read the store's rows (None: no need)
        self._not_before: dict[int, float] = {}  # row id → when to try it again
        self._drops: set[asyncio.Task[None]] = set()
        self._dropping: set[int] = set()  # rows decided, their drop not yet written
        self._task: asyncio.Task[None] | None = None

    async def take(self, event: str, payload: dict[str, Any], delivery: str | None) -> int:
        """The API's part: 1 when the delivery was kept for a decision, 0 when it asks
        nothing. Raises ForgejoDataError for a payload of the wrong shape (a 400, at once)."""
        if parse_webhook(event, payload, delivery) is None:
            return 0  # a push, a closed issue, …: nothing to keep
        body = json.dumps(payload)
        row = await self._store.add_webhook(event, body, delivery)
        if row is not None:  # (None: a redelivery of one still waiting in the store)
            self._taken.append(StoredWebhook(row, event, body, delivery, attempts=0))
        self._wake.set()
        return 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhook-inbox")

    async def close(self) -> None:
        """Stop deciding; what is left stays in the store for the next start."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if self._drops:  # bounded by the store's own close, which runs them first
            await asyncio.wait(self._drops)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                for stored in await self._next_rows():
                    due = self._not_before.get(stored.id, 0.0) - self._clock()
                    if due > 0:
                        self._look_again(due)
                        continue
                    retry_in = await self._decide(stored)
                    if retry_in is not None:
                        self._look_again(retry_in)
            except Exception as exc:  # the store busy or failing: look again later
                log.warning("webhook_inbox_unreadable", error=str(exc))
                self._look_again(self._first_retry)
            wait = None if self._look_at is None else max(self._look_at - self._clock(), 0.0)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _next_rows(self) -> list[StoredWebhook]:
        """The deliveries handed over, and the store's rows when a look is due; in order."""
        # A row decided and not yet dropped is not decided again: one the API handed over
        # that the start's read of the store had already brought, or read back meanwhile.
        taken = [row for row in self._taken if row.id not in self._dropping]
        self._taken = []
        if self._look_at is None or self._clock() < self._look_at:
            return taken
        self._look_at = None
        try:
            stored = await self._store.pending_webhooks()
        except BaseException:
            self._taken[:0] = taken  # not lost: the next turn has them again
            raise
        by_id = {row.id: row for row in taken} | {row.id: row for row in stored}
        return [by_id[row_id] for row_id in sorted(by_id) if row_id not in self._dropping]

    def _look_again(self, within: float) -> None:
        at = self._clock() + within
        self._look_at = at if self._look_at is None else min(self._look_at, at)

    async def _decide(self, stored: StoredWebhook) -> float | None:
        """Decide one kept delivery and drop it; when it must wait, the seconds to wait."""
        fields = {"webhook_event": stored.event, "delivery": stored.delivery}
        try:
            parsed = parse_webhook(stored.event, json.loads(stored.payload), stored.delivery)
            with PRECEDENCE.first():  # on the way to the delivery's 👀
                triggers = len((await self._handler.handle(parsed)).triggers) if parsed else 0
        except (ForgejoDataError, ValueError) as exc:  # the same row fails the same way again
            log.error("webhook_dropped", error=str(exc), **fields)
        except Exception as exc:  # Forgejo slow or down, the store busy: try again later
            attempts = stored.attempts + 1
            if attempts < MAX_DECISION_ATTEMPTS:
                delay = retry_delay(attempts, self._first_retry)
                log.warning(
                    "webhook_decision_failed",
                    error=str(exc),
                    attempts=attempts,
                    retry_in=delay,
                    **fields,
                )
                await self._store.webhook_attempted(stored.id)
                self._not_before[stored.id] = self._clock() + delay
                return delay
            log.error("webhook_abandoned", error=str(exc), attempts=attempts, **fields)
        else:
            log.info("webhook_decided", tasks=triggers, **fields)
        self._not_before.pop(stored.id, None)
        self._dropping.add(stored.id)
        drop = asyncio.create_task(self._drop(stored.id), name=f"webhook-drop-{stored.id}")
        self._drops.add(drop)
        drop.add_done_callback(self._drops.discard)
        return None

    async def _drop(self, row: int) -> None:
        try:
            await self._store.webhook_decided(row)
        except Exception as exc:  # kept: decided again at the next look, harmlessly
            log.warning("webhook_drop_failed", row=row, error=str(exc))
        finally:
            self._dropping.discard(row)


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
