"""Real deliveries from Gitea and Forgejo servers become the typed events the intake
expects, or none.

The 9 COMMITTED rows read tests/data/real-payloads; the 22 CAPTURED rows read
deliveries not redistributed here, from `$CLAUDE_HOOKS_CAPTURES/forgejo/real-payloads/`
(tests/captures.py; PROVENANCE.md in tests/data/real-payloads says where each lives
upstream). Each row gives the file, the headers its server sends with it (the *Headers*
column of PROVENANCE.md: Gitea sends `X-Gitea-Event` and, from 1.16 on,
`X-Gitea-Event-Type`; Forgejo sends each under its `X-Forgejo-` name too), and what
`forgejo/webhook.py` must make of it, written out by hand from the payload.
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
from tests.captures import capture, captures_dir

PAYLOADS = Path(__file__).parent / "data" / "real-payloads"
CAPTURED_DIR = "forgejo/real-payloads"  # under $CLAUDE_HOOKS_CAPTURES
DELIVERY = "0b6e5f0c-real-payload"


def gitea_headers(event: str, event_type: str | None) -> dict[str, str]:
    headers = {"X-Gitea-Event": event, "X-Gitea-Delivery": DELIVERY}
    if event_type is not None:  # no Event-Type header before Gitea 1.16
        headers["X-Gitea-Event-Type"] = event_type
    return headers


def forgejo_headers(event: str, event_type: str) -> dict[str, str]:
    """Forgejo sends each Gitea header under its own name as well (the same value)."""
    gitea = gitea_headers(event, event_type)
    return gitea | {name.replace("X-Gitea-", "X-Forgejo-"): v for name, v in gitea.items()}


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

COMMITTED = [
    # Gitea ~1.10/1.11 (try.gitea.io, 2019): no Event-Type header yet.
    ("webhook-issue_comment-created-on-issue.zulip-gitea.json",
     gitea_headers("issue_comment", None),
     ("comment", "created", ZULIP, 3, False, 24400, "kostekIV")),
    ("webhook-issue_comment-created-on-pr.zulip-gitea.json",
     gitea_headers("issue_comment", None),
     ("comment", "created", ZULIP, 1, True, 24399, "kostekIV")),
    ("webhook-issues-edited-title.zulip-gitea.json", gitea_headers("issues", None), None),
    # Gitea ~1.23–1.24 (local, 2025).
    ("webhook-issue_comment-created-on-pr.jgc-gitea.json",
     gitea_headers("issue_comment", "pull_request_comment"),
     ("comment", "created", JGC, 2, True, 21, "reviewer")),
    ("webhook-pull_request-opened.jgc-gitea.json", gitea_headers("pull_request", "pull_request"),
     ("issue", "opened", JGC, 1, True, "admin")),
    ("webhook-pull_request-review_request_removed.jgc-gitea.json",
     gitea_headers("pull_request", "pull_request_review_request"), None),
    ("webhook-pull_request_review_approved-reviewed.jgc-gitea.json",
     gitea_headers("pull_request_approved", "pull_request_review_approved"),
     ("review", JGC, 2, "pull_request_review_approved", "", "reviewer")),
    ("webhook-pull_request_review_rejected-reviewed.jgc-gitea.json",
     gitea_headers("pull_request_rejected", "pull_request_review_rejected"),
     ("review", JGC, 2, "pull_request_review_rejected", "a", "reviewer")),
    ("webhook-pull_request_review_comment-reviewed.jgc-gitea.json",
     gitea_headers("pull_request_comment", "pull_request_review_comment"),
     ("review", JGC, 2, "pull_request_review_comment", "Review comment", "reviewer")),
]  # fmt: skip

AGENT = "infra/test"  # dadezzz/forgejo-agent: Forgejo 15.0.3 Actions `forge.event` dumps
PLAYGROUND = "example/example"  # go-playground/webhooks: Gitea ~1.16, local
PLAYGROUND_HEAD = "48e773f892a831faa47c0a160d1b7f0cd369ae2a"
NICE = "a_nice_user/hello_world_ci"  # woodpecker, gitea.com (anonymised, trimmed)
NICE_HEAD = "07977177c2cd7d46bad37b8472a9d50e7acb9d1f"
CODEBERG = "test_it/test_ci_thing"  # woodpecker, codeberg.org (Forgejo)

CAPTURED = [
    # Forgejo 15.0.3: comments, an issue and a PR opened, a review asked of the bot.
    ("webhook-issue_comment-created-on-issue.forgejo-agent-actions.json",
     forgejo_headers("issue_comment", "issue_comment"),
     ("comment", "created", AGENT, 1, False, 24320, "davide")),
    ("webhook-issue_comment-created-on-pr.forgejo-agent-actions.json",
     forgejo_headers("issue_comment", "pull_request_comment"),
     ("comment", "created", AGENT, 2, True, 24321, "davide")),
    ("webhook-issues-opened.forgejo-agent-actions.json", forgejo_headers("issues", "issues"),
     ("issue", "opened", AGENT, 1, False, "davide")),
    ("webhook-pull_request-opened.forgejo-agent-actions.json",
     forgejo_headers("pull_request", "pull_request"),
     ("issue", "opened", AGENT, 3, True, "davide")),
    ("webhook-pull_request-review_requested.forgejo-agent-actions.json",
     forgejo_headers("pull_request", "pull_request_review_request"),
     ("review_request", AGENT, 3, "feccb7914b4fa8941296756ff12c37d3a81b34fb", "llm-bot",
      "davide")),
    # Gitea ~1.16 (local, 2022). The fixtures' own tests sent some of these under
    # X-Gitea-Event values Gitea never sends there (pull_request_comment, issue_assign,
    # pull_request_assign, pull_request_review); these rows send what Gitea sends.
    ("webhook-issue_comment-created-on-issue.go-playground-webhooks.json",
     gitea_headers("issue_comment", "issue_comment"),
     ("comment", "created", PLAYGROUND, 1, False, 2, "example")),
    ("webhook-issue_comment-created-on-pr.go-playground-webhooks.json",
     gitea_headers("issue_comment", "pull_request_comment"),
     ("comment", "created", PLAYGROUND, 2, True, 6, "example")),
    ("webhook-issues-opened.go-playground-webhooks.json", gitea_headers("issues", "issues"),
     ("issue", "opened", PLAYGROUND, 1, False, "example")),
    ("webhook-issues-assigned.go-playground-webhooks.json",
     gitea_headers("issues", "issue_assign"),
     ("issue", "assigned", PLAYGROUND, 1, False, "example")),
    ("webhook-pull_request-opened.go-playground-webhooks.json",
     gitea_headers("pull_request", "pull_request"),
     ("issue", "opened", PLAYGROUND, 2, True, "example2")),
    ("webhook-pull_request-assigned.go-playground-webhooks.json",
     gitea_headers("pull_request", "pull_request_assign"),
     ("issue", "assigned", PLAYGROUND, 2, True, "example")),
    # Before Gitea 1.19.1 a "comment" review came as issue_comment, with no comment object.
    ("webhook-pull_request_review_comment-reviewed-legacy.go-playground-webhooks.json",
     gitea_headers("issue_comment", "pull_request_comment"),
     ("review", PLAYGROUND, 2, "pull_request_comment", "123", "example")),
    # Gitea ≥1.22 (gitea.com, anonymised): a review asked, reviews given, edits, a push.
    ("webhook-pull_request-review_requested.woodpecker-gitea.json",
     gitea_headers("pull_request", "pull_request_review_request"),
     ("review_request", NICE, 7, NICE_HEAD, "a_nice_user", "a_nice_user")),
    ("webhook-pull_request_review_approved-reviewed.woodpecker-gitea.json",
     gitea_headers("pull_request_approved", "pull_request_review_approved"),
     ("review", NICE, 7, "pull_request_review_approved", "juhu thats a great idea",
      "a_nice_user")),
    ("webhook-pull_request_review_rejected-reviewed.woodpecker-gitea.json",
     gitea_headers("pull_request_rejected", "pull_request_review_rejected"),
     ("review", NICE, 7, "pull_request_review_rejected", "I decided otherwhies :O",
      "a_nice_user")),
    ("webhook-pull_request_review_comment-reviewed.woodpecker-gitea.json",
     gitea_headers("pull_request_comment", "pull_request_review_comment"),
     ("review", NICE, 7, "pull_request_review_comment", "and somethimes you have to comment",
      "a_nice_user")),
    ("webhook-pull_request-assigned.woodpecker-gitea.json",
     gitea_headers("pull_request", "pull_request_assign"),
     ("issue", "assigned", NICE, 7, True, "a_nice_user")),
    ("webhook-pull_request-edited-body.woodpecker-gitea.json",
     gitea_headers("pull_request", "pull_request"), None),
    ("webhook-pull_request-synchronized.woodpecker-gitea.json",
     gitea_headers("pull_request", "pull_request_sync"), None),
    # Forgejo (codeberg.org; the edited one's host is anonymised).
    ("webhook-pull_request-assigned.woodpecker-forgejo.json",
     forgejo_headers("pull_request", "pull_request_assign"),
     ("issue", "assigned", CODEBERG, 1, True, "6543")),
    ("webhook-pull_request-edited.woodpecker-forgejo.json",
     forgejo_headers("pull_request", "pull_request"), None),
    ("webhook-pull_request-reopened.woodpecker-forgejo.json",
     forgejo_headers("pull_request", "pull_request"), None),
]  # fmt: skip
CASES = COMMITTED + CAPTURED


def payload_file(name: str) -> Path:
    committed = {case[0] for case in COMMITTED}
    return PAYLOADS / name if name in committed else capture(CAPTURED_DIR, name)


@pytest.mark.parametrize(("name", "headers", "expected"), CASES, ids=[case[0] for case in CASES])
def test_a_real_delivery_parses_into_the_event_it_stands_for(
    name: str, headers: dict[str, str], expected: tuple[Any, ...] | None
) -> None:
    payload = json.loads(payload_file(name).read_bytes())
    parsed = parse_webhook(event_name(headers), payload, delivery_id(headers))
    assert summary(parsed) == expected
    if parsed is not None:
        assert parsed.delivery == DELIVERY


@pytest.mark.parametrize("rows", [COMMITTED, CAPTURED], ids=["committed", "captured"])
def test_every_payload_in_the_directory_has_a_row(rows: list[Any]) -> None:
    directory = PAYLOADS if rows is COMMITTED else captures_dir(CAPTURED_DIR)
    files = {p.name for p in directory.glob("*.json")}
    if rows is CAPTURED:  # a captures directory may hold the committed ones as well
        files -= {case[0] for case in COMMITTED}
    assert sorted(files) == sorted(case[0] for case in rows)


def test_the_reviews_head_is_the_pull_requests_head() -> None:
    """A review delivery names no commit (commit_id ""); the head comes from the PR."""
    payload = json.loads((PAYLOADS / COMMITTED[6][0]).read_bytes())
    parsed = parse_webhook("pull_request_approved", payload)
    assert isinstance(parsed, ReviewEvent)
    assert (payload["commit_id"], parsed.pull.head_sha) == ("", JGC_HEAD)
