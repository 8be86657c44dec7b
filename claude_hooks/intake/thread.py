"""One issue or PR as the intake sees it: its posts, review requests and assignments.

Frozen values, no I/O: the reader builds them from what Forgejo returns, a webhook
delivery builds them from its payload, and the decisions read them. The names given
here to events and triggers stay the same however often (and by whichever path) a
thread is read: the watermark names what was handled, the idempotency keys name
what was stored, so an event seen by a webhook and again by polling, or again after
a restart, is one task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from claude_hooks.intake.mentions import find_mentions


class PostKind(StrEnum):
    BODY = "body"  # the issue or PR description
    COMMENT = "comment"  # a plain comment, or a reply to a code comment
    REVIEW = "review"  # a submitted review: its body and its author's inline comments


@dataclass(frozen=True)
class Post:
    """Text on a thread that may mention an agent."""

    kind: PostKind
    id: int  # comment id or review id; the issue number for BODY
    author: str
    body: str
    at: datetime | None  # creation (submission for reviews): edits never move it
    inline: tuple[str, ...] = ()  # REVIEW: the bodies of its author's inline comments
    review_state: str = ""  # REVIEW: APPROVED | REQUEST_CHANGES | COMMENT
    inline_count: int = 0  # REVIEW: its inline comments, as Forgejo counts them (even unread)

    @property
    def asks_for_changes(self) -> bool:
        """A review that wants the PR changed: REQUEST_CHANGES, or COMMENT on lines."""
        if self.kind is not PostKind.REVIEW:
            return False
        on_lines = bool(self.inline) or self.inline_count > 0
        return self.review_state == "REQUEST_CHANGES" or (
            self.review_state == "COMMENT" and on_lines
        )

    @property
    def approves(self) -> bool:
        return self.kind is PostKind.REVIEW and self.review_state == "APPROVED"

    def mentions(self, name: str) -> bool:
        return any(find_mentions(text, name) for text in (self.body, *self.inline))

    @property
    def text(self) -> str:
        return "\n\n".join(t for t in (self.body, *self.inline) if t)


@dataclass(frozen=True)
class ReviewRequest:
    """`requested_by` asked `reviewer` to review the PR (timeline or webhook)."""

    reviewer: str
    requested_by: str
    at: datetime | None

    @property
    def author(self) -> str:
        return self.requested_by


@dataclass(frozen=True)
class Assignment:
    """`assigned_by` assigned the issue or PR to `assignee` (timeline item)."""

    assignee: str
    assigned_by: str
    at: datetime | None
    id: int  # the timeline item: the same one whether polling or a webhook looks it up

    @property
    def author(self) -> str:
        return self.assigned_by


ThreadEvent = Post | ReviewRequest | Assignment


@dataclass(frozen=True)
class ThreadContext:
    """One issue or PR as the caller fetched it: its history and what is new since last time.

    `history` only matters for agent-authored new events (their hop count): a caller
    that sees one must pass the thread's earlier events too. `writers` holds the logins
    known to have write access to `repo`, for `decide_from_thread` (unknown means no);
    the Intake leaves it empty and asks Forgejo about the requesters only.
    """

    repo: str
    number: int
    is_pull: bool
    title: str
    new: tuple[ThreadEvent, ...]  # oldest first
    history: tuple[ThreadEvent, ...] = ()  # older than everything in `new`, oldest first
    writers: frozenset[str] = frozenset()
    head_sha: str = ""  # PR head: a review request is for this commit
    requested_reviewers: frozenset[str] = frozenset()  # still open; a removed one is moot
    assignees: frozenset[str] = frozenset()
    pull_author: str = ""  # PR: who opened it (an agent's PR is the team's loop to close)
    # The stored hop of each task whose marker an agent's post on the thread carries
    # (resolved by the caller from the store): the hop of what an agent does next.
    task_hops: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("writers", "requested_reviewers", "assignees"):
            object.__setattr__(self, name, frozenset(x.lower() for x in getattr(self, name)))


def event_identity(event: ThreadEvent) -> str:
    """A name for one event that stays the same however often the thread is read."""
    if isinstance(event, Post):
        return f"{event.kind}:{event.id}"
    if isinstance(event, Assignment):
        return f"assign:{event.id}"
    return f"review-request:{event.reviewer.lower()}:{event.requested_by.lower()}"


@dataclass(frozen=True)
class Watermark:
    """How far a thread has been read.

    Forgejo's times have one-second resolution and its `since` is inclusive, so a
    thread is re-read from the second it was last read at; `seen` names the events
    of that very second already handled, so re-reading them is not a replay.
    """

    at: datetime
    seen: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _aware(self.at))

    def is_new(self, event: ThreadEvent) -> bool:
        moment = _event_time(event)
        return moment > self.at or (moment == self.at and event_identity(event) not in self.seen)

    @classmethod
    def after(cls, events: Iterable[ThreadEvent], floor: datetime | None = None) -> Watermark:
        """The watermark once `events` are handled: their newest time (at least `floor`)."""
        events = list(events)
        times = [_event_time(e) for e in events if e.at is not None]
        if floor is not None:
            times.append(_aware(floor))
        at = max(times, default=_EPOCH)
        seen = frozenset(
            event_identity(e) for e in events if e.at is not None and _event_time(e) == at
        )
        return cls(at, seen)

    def encode(self) -> str:
        stamp = self.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return " ".join([stamp, *sorted(self.seen)])

    @classmethod
    def decode(cls, text: str | None) -> Watermark | None:
        if not text:
            return None
        stamp, *seen = text.split()
        try:
            at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            return None
        return cls(at, frozenset(seen))


def split_by_watermark(
    events: Iterable[ThreadEvent], since: Watermark | datetime | None
) -> tuple[tuple[ThreadEvent, ...], tuple[ThreadEvent, ...]]:
    """(history, new), both oldest first. New means created after the watermark.

    Creation time, never update time: an edited comment keeps its place in history,
    so an edit that adds a mention does not trigger (as Forgejo does not notify it).
    """
    ordered = sorted(events, key=_event_time)
    if since is None:
        return (), tuple(ordered)
    mark = since if isinstance(since, Watermark) else Watermark(since)
    return (
        tuple(e for e in ordered if not mark.is_new(e)),
        tuple(e for e in ordered if mark.is_new(e)),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _event_time(event: ThreadEvent) -> datetime:
    return _aware(event.at) if event.at is not None else _EPOCH


# --- idempotency keys -------------------------------------------------------------------


def body_key(repo: str, number: int, agent: str) -> str:
    return f"{repo}#{number}/body/{agent.lower()}"


def comment_key(repo: str, number: int, comment_id: int, agent: str) -> str:
    return f"{repo}#{number}/comment/{comment_id}/{agent.lower()}"


def review_key(repo: str, number: int, review_id: int, agent: str) -> str:
    return f"{repo}#{number}/review/{review_id}/{agent.lower()}"


def review_request_key(repo: str, number: int, head_sha: str, agent: str) -> str:
    return f"{repo}#{number}/review-request/{head_sha or 'unknown'}/{agent.lower()}"


def review_feedback_key(repo: str, number: int, review_id: int, agent: str) -> str:
    return f"{repo}#{number}/review-feedback/{review_id}/{agent.lower()}"


def merge_request_key(repo: str, number: int, head_sha: str, agent: str) -> str:
    return f"{repo}#{number}/merge-request/{head_sha or 'unknown'}/{agent.lower()}"


def rounds_spent_key(repo: str, number: int, review_id: int, agent: str) -> str:
    return f"{repo}#{number}/rounds-spent/{review_id}/{agent.lower()}"


def assignment_key(repo: str, number: int, agent: str, timeline_id: int) -> str:
    return f"{repo}#{number}/assign/{agent.lower()}/{timeline_id}"


def control_key(repo: str, number: int, comment_id: int, agent: str, action: str) -> str:
    return f"{comment_key(repo, number, comment_id, agent)}/{action}"


def post_key(repo: str, number: int, post: Post, agent: str) -> str:
    if post.kind is PostKind.BODY:
        return body_key(repo, number, agent)
    if post.kind is PostKind.REVIEW:
        return review_key(repo, number, post.id, agent)
    return comment_key(repo, number, post.id, agent)
