"""The team's own loop on a pull request (issue #14): the decisions, as plain functions.

The intake submits the loop's steps (review feedback to the author agent, the merge
request to its `merge_by` lead, rounds spent); the worker runs them and asks these
functions what to do: whether the merge may go ahead now, later or not at all (the
merge gate and the head's commit status), whom to ask for a review again after a
push, which review a re-review follows, who the person is a stopped loop hands back
to, and where in the diff an inline comment sits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from claude_hooks.forgejo.models import CombinedStatus, Review, ReviewComment
from claude_hooks.report.render import (
    ci_failed_reason,
    ci_pending_reason,
    ci_waited_too_long_reason,
)
from claude_hooks.tasks import Task, TaskKind
from claude_hooks.work.merge_gate import PASSING_STATES, GateResult, latest_verdicts
from claude_hooks.work.scheduler import Precheck

# How long a merge request waits for a pending commit status, from when it was queued,
# before it gives up and says so: CI that has not finished in 4 h is stuck, not slow.
CI_WAIT_LIMIT = 4 * 3600.0
# Re-checks of a pending status back off: half the time waited so far, within these.
CI_RECHECK_MIN = 20.0
CI_RECHECK_MAX = 600.0
PENDING_STATES = frozenset({"pending"})

Contexts = tuple[tuple[str, str], ...]  # (context, state) each


class CiState(StrEnum):
    ABSENT = "absent"  # nobody reports on the commit: nothing to wait for
    PASSING = "passing"
    PENDING = "pending"
    FAILING = "failing"


@dataclass(frozen=True)
class CiVerdict:
    state: CiState
    combined: str = ""  # Forgejo's combined state
    holding: Contexts = ()  # the contexts that are not passing
    contexts: Contexts = ()  # every context, for the prompts and the tracking comment


def ci_verdict(status: CombinedStatus | None) -> CiVerdict:
    """The head's commit status as the loop reads it: each context counts, not only the
    combined state (Forgejo ranks "warning" below "pending"); a state Forgejo does not
    know is failing."""
    if status is None or (not status.state and not status.statuses):
        return CiVerdict(CiState.ABSENT)
    contexts = tuple((s.context, s.state) for s in status.statuses)
    holding = tuple((c, st) for c, st in contexts if st not in PASSING_STATES)
    if not holding and (status.state in PASSING_STATES or not status.state):
        return CiVerdict(CiState.PASSING, status.state, (), contexts)
    if holding and all(st in PENDING_STATES for _, st in holding):
        return CiVerdict(CiState.PENDING, status.state, holding, contexts)
    if not holding and status.state in PENDING_STATES:
        return CiVerdict(CiState.PENDING, status.state, (), contexts)
    failing = tuple((c, st) for c, st in holding if st not in PENDING_STATES)
    return CiVerdict(CiState.FAILING, status.state, failing or (("", status.state),), contexts)


def ci_recheck_delay(waited: float) -> float:
    """Seconds until a pending status is looked at again: grows with the wait (x1.5 a
    step), so a quick CI is seen quickly and a slow one is not polled hard."""
    return min(CI_RECHECK_MAX, max(CI_RECHECK_MIN, waited / 2))


@dataclass(frozen=True)
class MergeCheck:
    precheck: Precheck
    ci_failed: bool = False  # the head's status failed: a CI_FIX may follow


def merge_check(gate: GateResult, ci: CiVerdict, *, waited: float, now: float) -> MergeCheck:
    """May the merge request's lead run now? The gate (an approval that counts at the
    head, no standing change request) must pass; CI must pass or be absent. Pending
    waits (not using an attempt: CI is not the task's fault), up to CI_WAIT_LIMIT."""
    if not gate.ok:
        return MergeCheck(Precheck.skip("; ".join(gate.reasons)))
    if ci.state is CiState.FAILING:
        return MergeCheck(Precheck.skip(ci_failed_reason(ci.holding)), ci_failed=True)
    if ci.state is CiState.PENDING:
        if waited >= CI_WAIT_LIMIT:
            return MergeCheck(Precheck.skip(ci_waited_too_long_reason(waited, ci.holding)))
        reason = ci_pending_reason(ci.holding)
        return MergeCheck(
            Precheck.later(now + ci_recheck_delay(waited), reason, uses_attempt=False)
        )
    return MergeCheck(Precheck.proceed())


def ci_fix_key(repo: str, number: int, head_sha: str, agent: str) -> str:
    """Once per head sha: the same failing head seen again is the same task."""
    return f"{repo}#{number}/ci-fix/{head_sha}/{agent}"


# ---------------------------------------------------------------- after a push


def reviewers_to_rerequest(
    kind: TaskKind, reviews: Iterable[Review], author: str, asked_by: str
) -> list[str]:
    """Whom to ask for a review again once the author agent pushed.

    After review feedback: everyone whose standing verdict requests changes, and the
    reviewer whose review the task answers (a COMMENT review with inline comments asks
    for changes too). After a CI fix: everyone whose verdict the push made stale, so the
    approval the merge needs can be given again at the new head. Never the author.
    """
    latest = latest_verdicts(reviews)
    wanted = {"REQUEST_CHANGES"} if kind is TaskKind.REVIEW_FEEDBACK else {
        "REQUEST_CHANGES", "APPROVED",
    }  # fmt: skip
    logins = [
        r.user.login
        for r in sorted(latest.values(), key=lambda r: r.id)
        if r.user is not None and r.state in wanted and not r.dismissed
    ]
    if kind is TaskKind.REVIEW_FEEDBACK and asked_by:
        logins.append(asked_by)
    chosen: list[str] = []
    for login in logins:
        if login.lower() != author.lower() and login.lower() not in map(str.lower, chosen):
            chosen.append(login)
    return chosen


# ---------------------------------------------------------------- re-review


REVIEWED_STATES = frozenset({"APPROVED", "REQUEST_CHANGES", "COMMENT"})
_SHA = re.compile(r"[0-9a-f]{7,64}")


def previous_review(reviews: Iterable[Review], reviewer: str, head: str) -> Review | None:
    """The reviewer's latest submitted review of an earlier head of the pull request: a
    review task after it is a re-review. None when it reviewed only this head, or never."""
    mine = [
        r
        for r in reviews
        if r.user is not None
        and r.user.login.lower() == reviewer.lower()
        and r.state in REVIEWED_STATES
        and _SHA.fullmatch(r.commit_id)
    ]
    if not mine:
        return None
    latest = max(mine, key=lambda r: r.id)
    return latest if latest.commit_id != head else None


# ---------------------------------------------------------------- comments


def where(comment: ReviewComment) -> str:
    return f"{comment.path}:{comment.line}" if comment.line else comment.path


def unresolved(comments: Iterable[ReviewComment]) -> list[ReviewComment]:
    return [c for c in comments if not c.resolver]


# ---------------------------------------------------------------- rounds spent


_CLOSING = re.compile(r"(?i)(?<![\w/#])(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?):?[ \t]+#(\d+)\b")


def closing_issue_numbers(body: str) -> tuple[int, ...]:
    """The issues of the same repository a pull request body closes ("Closes #20")."""
    seen: list[int] = []
    for match in _CLOSING.finditer(body):
        number = int(match[1])
        if number not in seen:
            seen.append(number)
    return tuple(seen)


def person_to_tell(
    origin: Task | None, issue_author: str | None, agents: Sequence[str]
) -> str | None:
    """Who started the work a stopped loop hands back: the requester of the task that
    opened the pull request, else the author of the issue it closes; never an agent
    (nor the API's placeholder), so a mention of them starts nothing."""
    robots = {a.lower() for a in agents} | {"api", ""}
    candidates = [origin.spec.requested_by if origin is not None else None, issue_author]
    return next((c for c in candidates if c and c.lower() not in robots), None)
