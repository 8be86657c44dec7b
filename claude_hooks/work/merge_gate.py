"""Whether the lead may merge a pull request: Forgejo's facts in, yes or the reasons out.

The lead's verdict (`{"action": "merge"}`) only asks for a merge: part of what the
lead reads was written by whoever opened the pull request, so the verdict can be
talked into anything. The merge goes ahead only when the forge shows that someone
trusted accepted the change as it is now:

- at least one approval on the head commit that Forgejo counts (`official`: the
  reviewer had write access when approving), neither `dismissed` nor `stale`, by
  someone who can write to the repository now and did not open the pull request;
- no writer's latest verdict requests changes. A later COMMENT review withdraws
  nothing (Forgejo keeps the change request standing too); a later approval, or
  a dismissal by a repository admin, does;
- the head's combined commit status is not failing or pending. A commit nobody
  reported on is fine: Forgejo answers state "" then, and there is nothing to wait for.

Pure: the caller (Reporter.merge) fetches the reviews, the reviewers' access levels
and the status, and reports the reasons on the lead's tracking comment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from claude_hooks.forgejo.models import CombinedStatus, PullRequest, Review
from claude_hooks.intake.reader import WRITE_LEVELS

VERDICT_STATES = ("APPROVED", "REQUEST_CHANGES")
# "warning" and "skipped" do not hold a merge back; Forgejo ranks warning below pending,
# so every context is looked at, not only the combined state.
PASSING_STATES = frozenset({"success", "warning", "skipped"})
SHA_SHOWN = 10


@dataclass(frozen=True)
class GateResult:
    ok: bool
    reasons: tuple[str, ...] = ()  # why not, in words, when not ok


def _code(text: str, limit: int = 80) -> str:
    """A name in inline code: an `@login` there is no mention, a backtick cannot end it."""
    flat = " ".join(text.replace("`", "'").split())
    return f"`{flat[:limit]}`"


def _sha(sha: str) -> str:
    return _code(sha[:SHA_SHOWN]) if sha else "an unknown commit"


def latest_verdicts(reviews: Iterable[Review]) -> dict[str, Review]:
    """Each reviewer's latest APPROVED or REQUEST_CHANGES review, by lower-cased login."""
    latest: dict[str, Review] = {}
    for review in sorted(reviews, key=lambda r: r.id):  # ids grow: oldest first
        if review.user is not None and review.state in VERDICT_STATES:
            latest[review.user.login.lower()] = review
    return latest


def verdict_reviewers(reviews: Iterable[Review]) -> list[str]:
    """The logins whose access the gate needs: everyone with a standing verdict."""
    return [r.user.login for r in latest_verdicts(reviews).values() if r.user is not None]


def _approval_problem(review: Review, head: str, author: str, level: str | None) -> str | None:
    """Why this approval does not count, or None when it does."""
    assert review.user is not None
    who = _code(review.user.login)
    if review.user.login.lower() == author:
        return f"{who} opened the pull request"
    if review.dismissed:
        return f"{who}'s approval was dismissed"
    if not review.official:
        return f"{who}'s approval is not official (Forgejo counts only reviewers with write access)"
    if review.commit_id != head:
        return f"{who} approved an older commit, {_sha(review.commit_id)}"
    if review.stale:
        return f"{who}'s approval is stale (the pull request changed since)"
    if level is None:
        return (
            f"whether {who} can write could not be checked (Forgejo tells only "
            "repository admins; make the lead account an admin of the repository)"
        )
    if level not in WRITE_LEVELS:
        return f"{who} has no write access ({level})"
    return None


def _approval_reason(
    latest: Mapping[str, Review], head: str, author: str, levels: Mapping[str, str | None]
) -> str | None:
    problems: list[str] = []
    for login, review in latest.items():
        if review.state != "APPROVED":
            continue
        problem = _approval_problem(review, head, author, levels.get(login))
        if problem is None:
            return None
        problems.append(problem)
    if not problems:
        return f"nobody approved {_sha(head)}"
    return f"no approval counts at {_sha(head)}: " + "; ".join(problems)


def _change_requests(latest: Mapping[str, Review], levels: Mapping[str, str | None]) -> list[str]:
    """Standing change requests by writers; one whose author's access is unknown counts too."""
    reasons: list[str] = []
    for login, review in latest.items():
        if review.state != "REQUEST_CHANGES" or review.dismissed or review.user is None:
            continue
        level = levels.get(login)
        if level is None or level in WRITE_LEVELS:
            reasons.append(f"{_code(review.user.login)} requests changes")
    return reasons


def _status_reason(status: CombinedStatus | None, head: str) -> str | None:
    if status is None or (not status.state and not status.statuses):
        return None  # nobody reports on this commit
    if status.sha and status.sha != head:
        return f"the commit status is for {_sha(status.sha)}, not the head {_sha(head)}"
    holding = [s for s in status.statuses if s.state not in PASSING_STATES]
    if status.state in PASSING_STATES and not holding:
        return None
    state = status.state or "unknown"
    listed = ", ".join(f"{_code(s.context or 'default')} {s.state or 'unknown'}" for s in holding)
    return f"the commit status of {_sha(head)} is {state}" + (f" ({listed})" if listed else "")


def merge_gate(
    pull: PullRequest,
    reviews: Iterable[Review],
    access: Mapping[str, str | None],
    status: CombinedStatus | None,
    *,
    head_sha: str | None = None,
) -> GateResult:
    """May the lead merge `pull` now?

    `access`: login → the level Forgejo's permission check gave (None when it would
    not say; a login missing counts the same). `head_sha`: the head the lead
    looked at; when the pull request moved on since, nothing the lead decided holds.
    """
    head = pull.head_sha
    if not head:
        return GateResult(False, ("Forgejo did not say which commit is the head",))
    reasons: list[str] = []
    if head_sha and head_sha != head:
        reasons.append(f"its head moved to {_sha(head)} after the lead read {_sha(head_sha)}")
    latest = latest_verdicts(reviews)
    levels = {login.lower(): level for login, level in access.items()}
    approval = _approval_reason(latest, head, pull.user.login.lower(), levels)
    if approval is not None:
        reasons.append(approval)
    reasons.extend(_change_requests(latest, levels))
    if (status_reason := _status_reason(status, head)) is not None:
        reasons.append(status_reason)
    return GateResult(not reasons, tuple(reasons))
