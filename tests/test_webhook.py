"""forgejo/webhook.py: HMAC verification and typed parsing of deliveries."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from claude_hooks.forgejo.models import ForgejoDataError
from claude_hooks.forgejo.webhook import (
    CommentEvent,
    IssueEvent,
    ReviewEvent,
    ReviewRequestEvent,
    delivery_id,
    event_name,
    parse_webhook,
    verify_signature,
)

SECRET = b"s3cret-hook-key"
BODY = json.dumps({"action": "created", "hello": "world"}).encode()


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_a_valid_forgejo_signature_is_accepted() -> None:
    assert verify_signature(SECRET, BODY, {"X-Forgejo-Signature": sign(BODY)})


def test_the_gitea_header_and_upper_case_hex_are_accepted() -> None:
    assert verify_signature(SECRET, BODY, {"x-gitea-signature": sign(BODY).upper()})


def test_the_github_style_header_needs_its_sha256_prefix_stripped() -> None:
    assert verify_signature(SECRET, BODY, {"X-Hub-Signature-256": "sha256=" + sign(BODY)})


def test_all_three_headers_as_forgejo_sends_them_are_accepted() -> None:
    digest = sign(BODY)
    headers = {
        "X-Forgejo-Signature": digest,
        "X-Gitea-Signature": digest,
        "X-Hub-Signature-256": f"sha256={digest}",
    }
    assert verify_signature(SECRET, BODY, headers)


def test_a_missing_signature_is_rejected() -> None:
    assert not verify_signature(SECRET, BODY, {"X-Forgejo-Event": "issue_comment"})


def test_a_signature_made_with_another_secret_is_rejected() -> None:
    assert not verify_signature(SECRET, BODY, {"X-Forgejo-Signature": sign(BODY, b"other")})


def test_a_tampered_body_is_rejected() -> None:
    headers = {"X-Forgejo-Signature": sign(BODY)}
    assert not verify_signature(SECRET, BODY + b" ", headers)


@pytest.mark.parametrize("value", ["", "sha256=", "not-hex", "é" * 64, sign(BODY)[:-1]])
def test_a_malformed_signature_is_rejected(value: str) -> None:
    assert not verify_signature(SECRET, BODY, {"X-Forgejo-Signature": value})


def test_one_bad_header_among_good_ones_is_rejected() -> None:
    headers = {"X-Forgejo-Signature": sign(BODY), "X-Gitea-Signature": sign(BODY, b"x")}
    assert not verify_signature(SECRET, BODY, headers)


def test_no_configured_secret_trusts_nothing() -> None:
    assert not verify_signature(b"", BODY, {"X-Forgejo-Signature": sign(BODY, b"")})


def test_event_and_delivery_headers_are_read_whatever_the_case() -> None:
    headers = {"x-gitea-event": "issues", "X-Forgejo-Delivery": "d-1"}
    assert (event_name(headers), delivery_id(headers)) == ("issues", "d-1")
    assert event_name({}) is None and delivery_id({}) is None


# --- parsing ------------------------------------------------------------------------------

REPO = {"id": 1, "full_name": "acme/app"}


def _user(login: str, uid: int = 1) -> dict[str, object]:
    return {"id": uid, "login": login}


def _issue(**extra: object) -> dict[str, object]:
    return {"number": 7, "title": "T", "body": "B", "user": _user("alice"), **extra}


def _pull() -> dict[str, object]:
    return {**_issue(), "head": {"sha": "f00d", "ref": "fix"}, "base": {"ref": "main"}}


def test_a_pr_comment_parses_as_a_comment_on_a_pull() -> None:
    payload = {
        "action": "created",
        "issue": _issue(),
        "is_pull": True,
        "repository": REPO,
        "sender": _user("alice"),
        "comment": {"id": 9, "body": "@dev hi", "user": _user("alice")},
    }
    event = parse_webhook("issue_comment", payload, delivery="d-9")
    assert isinstance(event, CommentEvent)
    assert (event.repo, event.number, event.issue.is_pull, event.comment.id) == (
        "acme/app",
        7,
        True,
        9,
    )
    assert (event.action, event.sender, event.delivery) == ("created", "alice", "d-9")


def test_a_comment_payload_is_recognised_even_under_the_event_type_name() -> None:
    payload = {
        "action": "created",
        "issue": _issue(),
        "repository": REPO,
        "sender": _user("alice"),
        "comment": {"id": 9, "body": "", "user": _user("a")},
    }
    assert isinstance(parse_webhook("pull_request_comment", payload), CommentEvent)


def test_issue_opened_and_assigned_parse_as_issue_events() -> None:
    for action in ("opened", "assigned"):
        payload = {
            "action": action,
            "number": 7,
            "issue": _issue(assignees=[_user("dev", 2)]),
            "repository": REPO,
            "sender": _user("alice"),
        }
        event = parse_webhook("issues", payload)
        assert isinstance(event, IssueEvent) and event.action == action
        assert event.issue.assignees == ("dev",)


def test_a_pull_request_opened_is_an_issue_event_on_a_pull() -> None:
    payload = {
        "action": "opened",
        "number": 7,
        "pull_request": _pull(),
        "repository": REPO,
        "sender": _user("alice"),
    }
    event = parse_webhook("pull_request", payload)
    assert isinstance(event, IssueEvent) and event.issue.is_pull


def test_a_review_request_parses_with_reviewer_and_head() -> None:
    payload = {
        "action": "review_requested",
        "number": 7,
        "pull_request": _pull(),
        "requested_reviewer": _user("reviewer", 3),
        "repository": REPO,
        "sender": _user("alice"),
    }
    event = parse_webhook("pull_request", payload)
    assert isinstance(event, ReviewRequestEvent)
    assert (event.reviewer, event.sender, event.pull.head_sha) == ("reviewer", "alice", "f00d")


@pytest.mark.parametrize("name", ["pull_request_rejected", "pull_request_review_comment"])
def test_a_submitted_review_parses_with_its_type_and_content(name: str) -> None:
    payload = {
        "action": "reviewed",
        "number": 7,
        "pull_request": _pull(),
        "review": {"type": "pull_request_review_rejected", "content": "@dev fix"},
        "repository": REPO,
        "sender": _user("alice"),
    }
    event = parse_webhook(name, payload)
    assert isinstance(event, ReviewEvent)
    assert (event.content, event.sender, event.number) == ("@dev fix", "alice", 7)


def test_a_comment_review_from_gitea_before_1_19_1_parses_as_the_review_it_is() -> None:
    # Before Gitea 1.19.1 (go-gitea/gitea#23650; Forgejo v1.19.0-3) a "comment" review went
    # out as HookEventPullRequestComment, so with X-Gitea-Event: issue_comment, carrying the
    # review's PullRequestPayload: action "reviewed", review.type "pull_request_comment",
    # and no comment object (go-playground/webhooks' capture testdata/gitea/
    # pull-request-review-event.json has this shape).
    payload = {
        "action": "reviewed",
        "number": 7,
        "pull_request": _pull(),
        "review": {"type": "pull_request_comment", "content": "@dev look at this"},
        "repository": REPO,
        "sender": _user("reviewer", 3),
    }
    event = parse_webhook("issue_comment", payload, delivery="d-legacy")
    assert isinstance(event, ReviewEvent)
    assert (event.review_type, event.content, event.sender, event.number, event.delivery) == (
        "pull_request_comment", "@dev look at this", "reviewer", 7, "d-legacy",
    )  # fmt: skip
    assert event.pull.head_sha == "f00d"


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("push", {"ref": "refs/heads/main"}),
        ("issues", {"action": "closed", "issue": _issue(), "repository": REPO}),
        ("pull_request", {"action": "review_request_removed"}),
        (None, {"zen": "ping"}),
    ],
)
def test_events_that_ask_nothing_parse_to_none(name: str | None, payload: dict) -> None:
    assert parse_webhook(name, payload) is None


def test_a_comment_event_without_its_comment_is_a_data_error() -> None:
    payload = {"action": "created", "issue": _issue(), "repository": REPO, "sender": _user("a")}
    with pytest.raises(ForgejoDataError, match="comment"):
        parse_webhook("issue_comment", payload)


def test_a_payload_without_repository_is_a_data_error() -> None:
    payload = {"action": "opened", "issue": _issue(), "sender": _user("a")}
    with pytest.raises(ForgejoDataError, match="repository"):
        parse_webhook("issues", payload)


@pytest.mark.parametrize(
    ("where", "value"),
    [("issue", {"number": 2**63}), ("comment", {"id": 10**30}), ("sender", {"id": -(2**63) - 1})],
)
def test_a_number_sqlite_cannot_hold_is_a_data_error(where: str, value: dict) -> None:
    payload: dict = {
        "action": "created",
        "issue": _issue(),
        "repository": REPO,
        "sender": _user("alice"),
        "comment": {"id": 9, "body": "@dev hi", "user": _user("alice")},
    }
    payload[where] = {**payload[where], **value}  # type: ignore[dict-item]
    field = next(iter(value))
    with pytest.raises(ForgejoDataError, match=f"field '{field}'.*64-bit"):
        parse_webhook("issue_comment", payload)
