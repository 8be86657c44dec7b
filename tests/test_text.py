"""What the daemon posts on Forgejo never mentions anyone (issue 12, finding 2).

The queued comment said "Requested by @dev" and the PR body mentioned the requester:
real mentions, so agents triggered each other through the daemon's own words. Every
phase of the tracking comment, the PR body and a review body are checked here with
Forgejo's own mention rules (triggers.mentioned_names).
"""

from __future__ import annotations

import pytest

from claude_hooks.intake.mentions import mentioned_names
from claude_hooks.report.render import Phase, pull_body, render_tracking, review_body
from claude_hooks.tasks import Outcome, Task, TaskKind, TaskSpec, TaskState, TriggerSource
from claude_hooks.text import defuse_mentions, find_marker, marker

AGENTS_AND_PEOPLE = ("dev", "reviewer", "alice")
RELAYED = "Fixed it. @reviewer please re-review; thanks @alice!\n\n```\n@dev in code\n```"


def task(requested_by: str = "reviewer") -> Task:
    spec = TaskSpec(
        agent="dev", kind=TaskKind.MENTION, repo="acme/app", number=12, idempotency_key="k",
        requested_by=requested_by, request="@dev fix it", source=TriggerSource.POLL,
    )  # fmt: skip
    return Task(id=42, spec=spec, state=TaskState.RUNNING, started_at=100.0)


@pytest.mark.parametrize("phase", list(Phase))
def test_no_phase_of_the_tracking_comment_mentions_anyone(phase: Phase) -> None:
    outcome = Outcome(
        state={Phase.SUCCEEDED: TaskState.SUCCEEDED, Phase.CANCELLED: TaskState.CANCELLED}.get(
            phase, TaskState.FAILED
        ),
        result=RELAYED,
        reason="cancelled by alice" if phase is Phase.CANCELLED else None,
    )
    body = render_tracking(
        task(), phase, position=2, steps=("asked @alice",), now=200.0, redact=str,
        outcome=outcome if phase.is_final else None,
    )  # fmt: skip
    assert mentioned_names(body) == []
    assert find_marker(body) == 42
    if phase is Phase.QUEUED:
        assert "Requested by reviewer" in body  # the words stay, the @ goes


def test_the_pull_request_and_review_bodies_mention_nobody() -> None:
    for body in (pull_body(task("alice"), RELAYED), review_body(task(), RELAYED)):
        assert mentioned_names(body) == []
        assert "`@reviewer`" in body  # shown as written, in code
        assert "@dev in code" in body  # code is left exactly as it was


@pytest.mark.parametrize(
    ("text", "defused"),
    [
        ("@dev go", "`@dev` go"),
        ("thanks @alice, and @reviewer.", "thanks `@alice`, and `@reviewer`."),
        ("mail me: alice@example.org", "mail me: alice@example.org"),
        ("already `@dev` quoted", "already `@dev` quoted"),
        ("~~~\n@dev\n~~~\n@dev", "~~~\n@dev\n~~~\n`@dev`"),
        ("team @acme/owners", "team `@acme/owners`"),
    ],
)
def test_defuse_mentions(text: str, defused: str) -> None:
    assert defuse_mentions(text) == defused
    assert not set(mentioned_names(defuse_mentions(text))) & set(AGENTS_AND_PEOPLE)


def test_the_marker_survives_defusing() -> None:
    assert find_marker(defuse_mentions(f"{marker(7)}\n@dev hi")) == 7
