"""Real deliveries from Gitea servers (tests/data/real-payloads, see PROVENANCE.md there)
become the typed events the intake expects, or none.

Each row gives the file, the headers its server sends with it (the *Headers* column of
PROVENANCE.md: Gitea sends `X-Gitea-Event` and, from 1.16 on, `X-Gitea-Event-Type`),
and what `forgejo/webhook.py` must make of it, written out by hand from the payload.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from claude_hooks.forgejo.webhook import (
    CommentEvent,
    IssueEvent,
    ReviewEvent,
    ReviewRequestEvent,
    WebhookEvent,
    delivery_id,
    event_name,
    parse_webhook,
)

PAYLOADS = Path(__file__).parent / "data" / "real-payloads"
DELIVERY = "0b6e5f0c-real-payload"


def gitea_headers(event: str, event_type: str | None) -> dict[str, str]:
    headers = {"X-Gitea-Event": event, "X-Gitea-Delivery": DELIVERY}
    if event_type is not None:  # no Event-Type header before Gitea 1.16
        headers["X-Gitea-Event-Type"] = event_type
    return headers


def summary(event: WebhookEvent | None) -> tuple[Any, ...] | None:
    """What the intake reads from an event, as a plain tuple to compare with the table."""
    match event:
        case None:
            return None
        case CommentEvent():
            issue = event.issue
            return ("comment", event.action, event.repo, event.number, issue.is_pull,
                    event.comment.id, event.sender)  # fmt: skip
        case IssueEvent():
            return ("issue", event.action, event.repo, event.number, event.issue.is_pull,
                    event.sender)  # fmt: skip
        case ReviewRequestEvent():
            return ("review_request", event.repo, event.number, event.pull.head_sha,
                    event.reviewer, event.sender)  # fmt: skip
        case ReviewEvent():
            return ("review", event.repo, event.number, event.review_type, event.content,
                    event.sender)  # fmt: skip
    raise AssertionError(f"unexpected event {event!r}")


JGC = "TEST/test-repository"
JGC_HEAD = "c8ef951c4e57f9d4a5b8526ba974b59db1500192"
ZULIP = "kostekIV/test"

CASES = [
    # Gitea ~1.10/1.11 (try.gitea.io, 2019): no Event-Type header yet.
    ("webhook-issue_comment-created-on-issue.zulip-gitea.json", "issue_comment", None,
     ("comment", "created", ZULIP, 3, False, 24400, "kostekIV")),
    ("webhook-issue_comment-created-on-pr.zulip-gitea.json", "issue_comment", None,
     ("comment", "created", ZULIP, 1, True, 24399, "kostekIV")),
    ("webhook-issues-edited-title.zulip-gitea.json", "issues", None, None),
    # Gitea ~1.23–1.24 (local, 2025).
    ("webhook-issue_comment-created-on-pr.jgc-gitea.json", "issue_comment",
     "pull_request_comment", ("comment", "created", JGC, 2, True, 21, "reviewer")),
    ("webhook-pull_request-opened.jgc-gitea.json", "pull_request", "pull_request",
     ("issue", "opened", JGC, 1, True, "admin")),
    ("webhook-pull_request-review_request_removed.jgc-gitea.json", "pull_request",
     "pull_request_review_request", None),
    ("webhook-pull_request_review_approved-reviewed.jgc-gitea.json", "pull_request_approved",
     "pull_request_review_approved",
     ("review", JGC, 2, "pull_request_review_approved", "", "reviewer")),
    ("webhook-pull_request_review_rejected-reviewed.jgc-gitea.json", "pull_request_rejected",
     "pull_request_review_rejected",
     ("review", JGC, 2, "pull_request_review_rejected", "a", "reviewer")),
    ("webhook-pull_request_review_comment-reviewed.jgc-gitea.json", "pull_request_comment",
     "pull_request_review_comment",
     ("review", JGC, 2, "pull_request_review_comment", "Review comment", "reviewer")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "event", "event_type", "expected"), CASES, ids=[case[0] for case in CASES]
)
def test_a_real_delivery_parses_into_the_event_it_stands_for(
    name: str, event: str, event_type: str | None, expected: tuple[Any, ...] | None
) -> None:
    headers = gitea_headers(event, event_type)
    payload = json.loads((PAYLOADS / name).read_bytes())
    parsed = parse_webhook(event_name(headers), payload, delivery_id(headers))
    assert summary(parsed) == expected
    if parsed is not None:
        assert parsed.delivery == DELIVERY


def test_every_payload_in_the_directory_has_a_row() -> None:
    assert sorted(p.name for p in PAYLOADS.glob("*.json")) == sorted(c[0] for c in CASES)


def test_the_reviews_head_is_the_pull_requests_head() -> None:
    """A review delivery names no commit (commit_id ""); the head comes from the PR."""
    payload = json.loads((PAYLOADS / CASES[6][0]).read_bytes())
    parsed = parse_webhook("pull_request_approved", payload)
    assert isinstance(parsed, ReviewEvent)
    assert (payload["commit_id"], parsed.pull.head_sha) == ("", JGC_HEAD)
