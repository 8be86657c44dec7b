"""Forgejo webhook deliveries: signature check and typed events.

The HTTP handler (api.py) reads the raw body, calls `verify_signature` before parsing
anything, then `parse_webhook`; the Intake turns the event into triggers. Only the
events that can ask something of an agent are parsed; everything else is None.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from claude_hooks.forgejo.models import Comment, ForgejoDataError, Issue, PullRequest, User

# Forgejo sends the same hex digest under each name (services/webhook/shared/payloader.go).
SIGNATURE_HEADERS = ("X-Forgejo-Signature", "X-Gitea-Signature", "X-Hub-Signature-256")
EVENT_HEADERS = ("X-Forgejo-Event", "X-Gitea-Event", "X-Gogs-Event", "X-GitHub-Event")
DELIVERY_HEADERS = (
    "X-Forgejo-Delivery",
    "X-Gitea-Delivery",
    "X-Gogs-Delivery",
    "X-GitHub-Delivery",
)
# X-Forgejo-Event of a submitted review (modules/webhook/type.go); the event-type spelling
# (pull_request_review_*) is accepted too, since some proxies forward that one.
REVIEW_EVENTS = frozenset(
    {
        "pull_request_approved",
        "pull_request_rejected",
        "pull_request_comment",
        "pull_request_review_approved",
        "pull_request_review_rejected",
        "pull_request_review_comment",
        "pull_request_review",
    }
)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def verify_signature(secret: bytes, body: bytes, headers: Mapping[str, str]) -> bool:
    """True only if a signature header is present and every one present is the body's HMAC.

    No secret configured means no delivery is trusted: Forgejo sends an empty signature
    then, and accepting that would let anyone create tasks.
    """
    if not secret:
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode("ascii")
    given = [v for v in (_header(headers, name) for name in SIGNATURE_HEADERS) if v is not None]
    if not given:
        return False
    return all(_matches(expected, value) for value in given)


def _matches(expected: bytes, value: str) -> bool:
    digest = value.strip()
    if digest[:7].lower() == "sha256=":
        digest = digest[7:]
    try:
        candidate = digest.lower().encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected, candidate)


def event_name(headers: Mapping[str, str]) -> str | None:
    return next((v for v in (_header(headers, n) for n in EVENT_HEADERS) if v), None)


def delivery_id(headers: Mapping[str, str]) -> str | None:
    return next((v for v in (_header(headers, n) for n in DELIVERY_HEADERS) if v), None)


@dataclass(frozen=True)
class CommentEvent:
    """issue_comment: a comment on an issue or PR (also a reply to a code comment)."""

    delivery: str | None
    action: str  # created | edited | deleted
    repo: str
    issue: Issue  # is_pull is set for PR comments
    comment: Comment
    sender: str

    @property
    def number(self) -> int:
        return self.issue.number


@dataclass(frozen=True)
class IssueEvent:
    """issues / pull_request with action opened or assigned."""

    delivery: str | None
    action: str  # opened | assigned
    repo: str
    issue: Issue  # for a PR: its issue view (is_pull=True)
    sender: str

    @property
    def number(self) -> int:
        return self.issue.number


@dataclass(frozen=True)
class ReviewRequestEvent:
    """pull_request/review_requested: one delivery per requested user."""

    delivery: str | None
    repo: str
    pull: PullRequest
    reviewer: str
    sender: str

    @property
    def number(self) -> int:
        return self.pull.number


@dataclass(frozen=True)
class ReviewEvent:
    """pull_request_{approved,rejected,comment}: a submitted review (without its id or
    inline comments: the Intake looks those up)."""

    delivery: str | None
    repo: str
    pull: PullRequest
    review_type: str
    content: str
    sender: str

    @property
    def number(self) -> int:
        return self.pull.number


WebhookEvent = CommentEvent | IssueEvent | ReviewRequestEvent | ReviewEvent


def parse_webhook(
    event: str | None, payload: Mapping[str, Any], delivery: str | None = None
) -> WebhookEvent | None:
    """The typed event, or None for deliveries that cannot ask anything of an agent.

    `event` is the X-Forgejo-Event header. Raises ForgejoDataError when a delivery of
    an event we handle lacks what we need (the handler answers 400).
    """
    if not isinstance(payload, Mapping):
        raise ForgejoDataError(f"webhook payload: expected an object, got {type(payload).__name__}")
    action = payload.get("action")
    if event == "issue_comment" and _is_legacy_comment_review(payload):
        return _review_event(payload, delivery)
    # issue_comment's event-type for PRs is "pull_request_comment", the same word as a
    # review's event: the payload's shape tells them apart.
    if event == "issue_comment" or ("comment" in payload and "issue" in payload):
        return _comment_event(payload, delivery)
    if event == "issues" and action in ("opened", "assigned"):
        return IssueEvent(
            delivery, action, _repo(payload), _issue(payload["issue"]), _sender(payload)
        )
    if event == "pull_request" and action in ("opened", "assigned"):
        issue = dataclasses.replace(_issue(payload.get("pull_request")), is_pull=True)
        return IssueEvent(delivery, action, _repo(payload), issue, _sender(payload))
    if event == "pull_request" and action == "review_requested":
        reviewer = User.from_json(_object(payload, "requested_reviewer"))
        return ReviewRequestEvent(
            delivery, _repo(payload), _pull(payload), reviewer.login, _sender(payload)
        )
    if event in REVIEW_EVENTS and action == "reviewed":
        return _review_event(payload, delivery)
    return None


def _is_legacy_comment_review(payload: Mapping[str, Any]) -> bool:
    """A "comment" review from Gitea/Forgejo before 1.19.1 (go-gitea/gitea#23650): sent
    as issue_comment, but with the review's pull-request payload and no comment."""
    return (
        payload.get("action") == "reviewed"
        and "comment" not in payload
        and isinstance(payload.get("review"), Mapping)
        and isinstance(payload.get("pull_request"), Mapping)
    )


def _review_event(payload: Mapping[str, Any], delivery: str | None) -> ReviewEvent:
    review = _object(payload, "review")
    return ReviewEvent(
        delivery,
        _repo(payload),
        _pull(payload),
        str(review.get("type") or ""),
        str(review.get("content") or ""),
        _sender(payload),
    )


def _comment_event(payload: Mapping[str, Any], delivery: str | None) -> CommentEvent:
    issue = _issue(payload.get("issue"))
    if payload.get("is_pull") or payload.get("pull_request"):
        issue = dataclasses.replace(issue, is_pull=True)
    return CommentEvent(
        delivery=delivery,
        action=str(payload.get("action") or ""),
        repo=_repo(payload),
        issue=issue,
        comment=Comment.from_json(_object(payload, "comment")),
        sender=_sender(payload),
    )


def _object(payload: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = payload.get(key)
    if not isinstance(value, Mapping):
        raise ForgejoDataError(f"webhook payload: field {key!r} is missing or not an object")
    return value


def _issue(data: Any) -> Issue:
    if not isinstance(data, Mapping):
        raise ForgejoDataError("webhook payload: the issue or pull_request object is missing")
    return Issue.from_json(data)


def _pull(payload: Mapping[str, Any]) -> PullRequest:
    return PullRequest.from_json(_object(payload, "pull_request"))


def _repo(payload: Mapping[str, Any]) -> str:
    name = _object(payload, "repository").get("full_name")
    if not isinstance(name, str) or "/" not in name:
        raise ForgejoDataError("webhook payload: repository.full_name is missing")
    return name


def _sender(payload: Mapping[str, Any]) -> str:
    return User.from_json(_object(payload, "sender")).login
