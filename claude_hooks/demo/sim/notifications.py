"""Forgejo's notification semantics (models/activities/notification*.go, services/uinotification).

One thread per (user, issue), reused forever. A new event on a read thread makes
it unread again; on an unread or pinned one it only bumps `updated_at`. The actor
is never notified of their own action, and only users who can read the
repository are notified at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from claude_hooks.demo.sim.state import SimError, SimIssue, SimState, SimThread, has_access

STATUSES = ("unread", "read", "pinned")
SUBJECT_TYPES = ("issue", "pull", "repository")


@dataclass(frozen=True)
class ThreadQuery:
    """The filters of GET /notifications (and the status part of PUT /notifications)."""

    statuses: frozenset[str]
    subject_types: frozenset[str]  # empty: every type
    since: datetime | None = None
    before: datetime | None = None

    def matches(self, thread: SimThread, is_pull: bool) -> bool:
        if thread.status not in self.statuses:
            return False
        if self.subject_types and ("pull" if is_pull else "issue") not in self.subject_types:
            return False
        if self.since is not None and thread.updated_at < self.since:
            return False
        return self.before is None or thread.updated_at <= self.before


def parse_time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SimError(422, f"{name}: {value!r} is not an RFC3339 time") from None
    if moment.tzinfo is None:
        raise SimError(422, f"{name}: {value!r} has no time zone")
    return moment


def parse_bool(value: str | None) -> bool:
    return (value or "").lower() in ("1", "t", "true")


def thread_query(
    statuses: Sequence[str],
    subject_types: Sequence[str],
    *,
    show_all: bool,
    default_statuses: Iterable[str],
    since: datetime | None = None,
    before: datetime | None = None,
) -> ThreadQuery:
    chosen = {s.lower() for s in statuses if s.lower() in STATUSES} or set(default_statuses)
    return ThreadQuery(
        statuses=frozenset(STATUSES if show_all else chosen),
        subject_types=frozenset(t.lower() for t in subject_types if t.lower() in SUBJECT_TYPES),
        since=since,
        before=before,
    )


def select_threads(state: SimState, login: str, query: ThreadQuery) -> list[SimThread]:
    """The user's matching threads, newest update first."""
    key = login.lower()
    found = [
        t
        for t in state.threads.values()
        if t.user == key and query.matches(t, state.issue(t.repo, t.number).is_pull)
    ]
    return sorted(found, key=lambda t: (t.updated_at, t.id), reverse=True)


def set_status(thread: SimThread, status: str, now: datetime) -> None:
    """Changing a status also moves updated_at (SetNotificationStatus)."""
    thread.status = status
    thread.updated_at = now


def notify(state: SimState, login: str, issue: SimIssue, comment_id: int, now: datetime) -> None:
    key = login.lower()
    for thread in state.threads.values():
        if thread.user == key and thread.repo == issue.repo and thread.number == issue.number:
            if thread.status == "read":
                thread.status = "unread"
                thread.comment_id = comment_id
            thread.updated_at = now
            return
    thread_id = state.next_id("notification")
    state.threads[thread_id] = SimThread(
        thread_id, key, issue.repo, issue.number, "unread", now, comment_id
    )


def participants(state: SimState, issue: SimIssue) -> set[str]:
    """Issue author plus authors of plain comments and submitted reviews."""
    found = {issue.user}
    found |= {c.user for c in state.plain_comments(issue.repo, issue.number)}
    reviews = state.pr_reviews(issue.repo, issue.number)
    found |= {r.user for r in reviews if r.state not in ("PENDING", "REQUEST_REVIEW")}
    return found


def broadcast_audience(state: SimState, issue: SimIssue) -> set[str]:
    """Who hears about a new comment, review, merge…: participants and repo watchers."""
    audience = participants(state, issue)
    if not issue.draft:  # repo watchers are skipped for WIP pull requests
        audience |= state.repos[issue.repo].watchers
    return audience


def deliver(
    state: SimState,
    issue: SimIssue,
    actor: str,
    recipients: Iterable[str],
    comment_id: int,
    now: datetime,
) -> list[str]:
    """Notify each recipient who exists, is active and can read the repo — never the actor."""
    repo = state.repos[issue.repo]
    notified = []
    for login in sorted({r.lower() for r in recipients} - {actor.lower()}):
        user = state.users.get(login)
        if user is None or not user.active or not has_access(state, repo, login, "read"):
            continue
        notify(state, login, issue, comment_id, now)
        notified.append(login)
    return notified


def unread_count(state: SimState, login: str) -> int:
    key = login.lower()
    return sum(1 for t in state.threads.values() if t.user == key and t.status == "unread")


def own_thread(state: SimState, login: str, thread_id: int) -> SimThread:
    thread = state.threads.get(thread_id)
    if thread is None:
        raise SimError(404, f"notification thread {thread_id} does not exist")
    if thread.user != login.lower():
        raise SimError(403, f"notification thread {thread_id} belongs to someone else")
    return thread
