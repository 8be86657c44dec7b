"""Reading a thread from Forgejo, and who has write access: the Intake's I/O.

The poller and the webhook path both read through here, so they see the same facts
the same way (and build the same idempotency keys from them). Nothing here decides
anything: it fetches and hands frozen ThreadContexts to the Intake.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Protocol

import structlog

from claude_hooks.forgejo.models import (
    Comment,
    Issue,
    PullRequest,
    Review,
    ReviewComment,
    TimelineEvent,
)
from claude_hooks.intake.decide import Policy, task_markers
from claude_hooks.intake.thread import (
    Assignment,
    Post,
    PostKind,
    ReviewRequest,
    ThreadContext,
    ThreadEvent,
    Watermark,
    split_by_watermark,
)

log = structlog.get_logger(__name__)

# The stored hop of a task, or None when the store has no such task (Store.task_hop).
TaskHops = Callable[[int], Awaitable[int | None]]


async def stored_hops(lookup: TaskHops | None, task_ids: Iterable[int]) -> dict[int, int]:
    """The stored hop of each task named by a marker on the thread."""
    if lookup is None:
        return {}
    found = {task_id: await lookup(task_id) for task_id in sorted(task_ids)}
    return {task_id: hop for task_id, hop in found.items() if hop is not None}


WRITE_LEVELS = frozenset({"write", "admin", "owner"})
SUBMITTED_REVIEW_STATES = frozenset({"APPROVED", "REQUEST_CHANGES", "COMMENT"})


class ThreadSource(Protocol):
    """The ForgejoClient calls the reader makes (a test may pass a stand-in)."""

    async def get_issue(self, repo: str, number: int) -> Issue: ...
    async def get_pull(self, repo: str, number: int) -> PullRequest: ...
    async def list_comments(
        self, repo: str, number: int, since: datetime | None = None
    ) -> list[Comment]: ...
    async def list_reviews(self, repo: str, number: int) -> list[Review]: ...
    async def review_comments(
        self, repo: str, number: int, review_id: int
    ) -> list[ReviewComment]: ...
    async def timeline(
        self, repo: str, number: int, since: datetime | None = None
    ) -> list[TimelineEvent]: ...
    async def repo_permission(self, repo: str, login: str) -> str | None: ...


# --- write access ---------------------------------------------------------------------------


# (repo, login) → Forgejo's permission level, None when Forgejo would not say
PermissionLookup = Callable[[str, str], Awaitable[str | None]]


class PermissionCache:
    """Who has write access to which repository, asked once per TTL.

    Forgejo answers 403 to a non-admin asking about someone else: the client returns
    None then and this counts it as "no" (fail closed). Errors (5xx, no connection)
    propagate, so a flaky Forgejo delays a trigger instead of refusing it.
    """

    def __init__(
        self,
        lookup: PermissionLookup,
        *,
        ttl: float = 300.0,
        refused_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._refused_ttl = refused_ttl
        self._clock = clock
        self._known: dict[tuple[str, str], tuple[bool, float]] = {}

    async def writers(self, repo: str, logins: Iterable[str]) -> frozenset[str]:
        granted: set[str] = set()
        for login in {name.lower() for name in logins}:
            if await self.can_write(repo, login):
                granted.add(login)
        return frozenset(granted)

    async def can_write(self, repo: str, login: str) -> bool:
        key = (repo.lower(), login.lower())
        cached = self._known.get(key)
        now = self._clock()
        if cached is not None and cached[1] > now:
            return cached[0]
        level = await self._lookup(repo, login)
        allowed = level in WRITE_LEVELS
        if level is None:
            log.warning(
                "permission_unknown",
                user=login,
                repo=repo,
                hint="Forgejo refused the permission check; counted as no write access",
            )
        self._known[key] = (allowed, now + (self._ttl if allowed else self._refused_ttl))
        return allowed


class Permissions:
    """The daemon's one view of who may direct its agents, shared by the intake and the
    worker (whose prompts mark what writers said as trusted).

    Forgejo tells only a repository admin who else can write, so each agent asks with
    its own account (one cache per account): a trigger is checked by the agent it is
    for. The allow list (daemon.allowed_users) needs no question.
    """

    def __init__(
        self,
        policy: Policy,
        lookups: Mapping[str, PermissionLookup],
        *,
        ttl: float = 300.0,
        refused_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._caches = {
            agent.lower(): PermissionCache(lookup, ttl=ttl, refused_ttl=refused_ttl, clock=clock)
            for agent, lookup in lookups.items()
        }

    async def writers(self, agent: str, repo: str, logins: Iterable[str]) -> frozenset[str]:
        """The `logins` (lower-cased) with write access to `repo`, as `agent`'s account is told."""
        cache = self._caches.get(agent.lower())
        if cache is None:
            raise KeyError(f"no Forgejo account to ask permissions with for agent {agent!r}")
        return await cache.writers(repo, logins)

    async def trusted(self, agent: str, repo: str, logins: Iterable[str]) -> frozenset[str]:
        """The `logins` (lower-cased) that may direct agents on `repo` (Policy.may_direct)."""
        names = frozenset(n.lower() for n in logins)
        writers = await self.writers(agent, repo, self._policy.unproven(names))
        return self._policy.trusted(names, writers)


# --- reading a thread ----------------------------------------------------------------------


def body_post(issue: Issue) -> Post:
    return Post(PostKind.BODY, issue.number, issue.user.login, issue.body, issue.created_at)


def comment_posts(comments: Iterable[Comment]) -> list[Post]:
    return [Post(PostKind.COMMENT, c.id, c.user.login, c.body, c.created_at) for c in comments]


def review_posts(review: Review, inline: Sequence[ReviewComment]) -> list[Post]:
    """A review is one post with its author's inline comments; replies by others are comments.

    A reply to someone's code comment belongs to the review it answers, but Forgejo
    delivers it by webhook as an issue_comment: keyed by its comment id, it matches.
    """
    author = review.user.login if review.user else ""
    own = tuple(c.body for c in inline if c.user.login.lower() == author.lower())
    replies = [
        Post(PostKind.COMMENT, c.id, c.user.login, c.body, c.created_at)
        for c in inline
        if c.user.login.lower() != author.lower()
    ]
    post = Post(
        PostKind.REVIEW,
        review.id,
        author,
        review.body,
        review.submitted_at,
        own,
        review_state=review.state,
        inline_count=review.comments_count,
    )
    return [post, *replies]


def timeline_events(items: Iterable[TimelineEvent]) -> list[ThreadEvent]:
    events: list[ThreadEvent] = []
    for item in items:
        if item.removed_assignee or not item.assignee:
            continue
        if item.type == "review_request":
            events.append(ReviewRequest(item.assignee, item.user, item.created_at))
        elif item.type == "assignees":
            events.append(Assignment(item.assignee, item.user, item.created_at, item.id))
    return events


class ThreadReader:
    """Fetches one issue or PR and what happened on it since a watermark."""

    def __init__(
        self, client: ThreadSource, policy: Policy, task_hops: TaskHops | None = None
    ) -> None:
        self._client = client
        self._policy = policy
        self._task_hops = task_hops

    async def read(
        self, repo: str, number: int, *, agent: str, since: Watermark | None
    ) -> ThreadContext:
        """The thread for `agent`: events created after the watermark `since` are new.

        History is only fetched in full when an agent wrote something new (its hop
        count needs the chain before it); the timeline only when the agent is assigned
        or requested, the only case where an assignment or review request can count.
        """
        client, name = self._client, agent.lower()
        issue = await client.get_issue(repo, number)
        pull = await client.get_pull(repo, number) if issue.is_pull else None
        requested = {r.lower() for r in pull.requested_reviewers} if pull else set()
        wants_timeline = name in {a.lower() for a in issue.assignees} or name in requested
        cut = since.at if since is not None else None
        events = await self._events(repo, issue, pull, cut, wants_timeline)
        history, new = split_by_watermark(events, since)
        if cut is not None and any(self._policy.is_agent(e.author) for e in new):
            events = await self._events(repo, issue, pull, None, True, inline_from=cut)
            history, new = split_by_watermark(events, since)
        agents_acted = any(self._policy.is_agent(e.author) for e in new)
        markers = task_markers((*history, *new), self._policy) if agents_acted else ()
        return ThreadContext(
            repo=repo,
            number=number,
            is_pull=issue.is_pull,
            title=issue.title,
            new=new,
            history=history,
            head_sha=pull.head_sha if pull else "",
            requested_reviewers=frozenset(requested),
            assignees=frozenset(issue.assignees),
            pull_author=pull.user.login if pull else "",
            task_hops=await stored_hops(self._task_hops, markers),
        )

    async def with_history(self, ctx: ThreadContext) -> ThreadContext:
        """`ctx` (a delivered event) with the thread's earlier events and their tasks' hops:
        what an agent's event needs for its hop count."""
        earlier = await self._history(ctx.repo, ctx.number)
        for delivered in ctx.new:  # the delivered event is already in Forgejo's history
            match = next((e for e in reversed(earlier) if _same(e, delivered)), None)
            if match is not None:
                earlier.remove(match)
        markers = task_markers((*earlier, *ctx.new), self._policy) if earlier else ()
        hops = await stored_hops(self._task_hops, markers)
        return replace(ctx, history=tuple(earlier), task_hops=hops)

    async def submitted_review(self, repo: str, number: int, author: str) -> list[ThreadEvent]:
        """`author`'s latest submitted review with its inline comments (a webhook's review
        carries neither its id nor those), as polling reads it; none when not found."""
        reviews = [
            r
            for r in await self._client.list_reviews(repo, number)
            if r.user is not None
            and r.user.login.lower() == author.lower()
            and r.state in SUBMITTED_REVIEW_STATES
        ]
        if not reviews:
            log.info("webhook_review_not_found", repo=repo, number=number, user=author)
            return []
        review = max(reviews, key=lambda r: r.id)
        inline = await self._client.review_comments(repo, number, review.id)
        return [p for p in review_posts(review, inline) if p.kind is PostKind.REVIEW]

    async def latest_assignments(
        self, repo: str, number: int, assignees: Iterable[str]
    ) -> list[ThreadEvent]:
        """The latest timeline assignment of each of `assignees` (a webhook carries no
        timeline id): the item polling keys the assignment by."""
        wanted = {a.lower() for a in assignees}
        if not wanted:
            return []
        latest: dict[str, ThreadEvent] = {}
        for item in timeline_events(await self._client.timeline(repo, number)):
            if isinstance(item, Assignment) and item.assignee.lower() in wanted:
                latest[item.assignee.lower()] = item  # the timeline is oldest first
        return list(latest.values())

    async def _history(self, repo: str, number: int) -> list[ThreadEvent]:
        """Everything on the thread, oldest first (inline comments left out: a review's
        own post is enough to count it in a chain)."""
        issue = await self._client.get_issue(repo, number)
        pull = await self._client.get_pull(repo, number) if issue.is_pull else None
        events = await self._events(repo, issue, pull, None, True, inline=False)
        return list(split_by_watermark(events, None)[1])

    async def _events(
        self,
        repo: str,
        issue: Issue,
        pull: PullRequest | None,
        since: datetime | None,
        with_timeline: bool,
        *,
        inline: bool = True,
        inline_from: datetime | None = None,
    ) -> list[ThreadEvent]:
        """Body, comments, reviews (since `since`) and, if asked, timeline items.

        Inline comments cost a request per review: they are fetched only for reviews
        submitted at or after `inline_from` (default: `since`).
        """
        client, number = self._client, issue.number
        events: list[ThreadEvent] = [body_post(issue)]
        events += comment_posts(await client.list_comments(repo, number, since=since))
        if pull is not None:
            inline_cut = inline_from or since
            for review in await client.list_reviews(repo, number):
                if review.state not in SUBMITTED_REVIEW_STATES or not _at_or_after(
                    review.submitted_at, since
                ):
                    continue
                fresh = (
                    inline
                    and review.comments_count
                    and _at_or_after(review.submitted_at, inline_cut)
                )
                comments = await client.review_comments(repo, number, review.id) if fresh else []
                events += review_posts(review, comments)
        if with_timeline:
            events += timeline_events(await client.timeline(repo, number, since=since))
        return events


def _at_or_after(moment: datetime | None, since: datetime | None) -> bool:
    if moment is None or since is None:
        return True  # unknown time: better looked at twice than missed
    if (moment.tzinfo is None) != (since.tzinfo is None):
        moment, since = moment.replace(tzinfo=None), since.replace(tzinfo=None)
    return moment >= since


def _same(a: ThreadEvent, b: ThreadEvent) -> bool:
    if isinstance(a, Post) and isinstance(b, Post):
        return (a.kind, a.id) == (b.kind, b.id)
    if isinstance(a, Assignment) and isinstance(b, Assignment):
        return a.id == b.id
    if isinstance(a, ReviewRequest) and isinstance(b, ReviewRequest):
        return (a.reviewer.lower(), a.author.lower()) == (b.reviewer.lower(), b.author.lower())
    return False
