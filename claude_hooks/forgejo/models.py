"""Typed views of the Forgejo JSON we use, as Forgejo's OpenAPI document defines it
(swagger.v1.json of Forgejo 17.0.0-dev, see tests/data/SPEC-SOURCE.md).

`from_json` takes what Forgejo sent and keeps only what the daemon reads; a
missing optional field gets a neutral default, a missing required one raises
ForgejoDataError, so a bad payload is refused at the edge instead of deep inside.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class ForgejoDataError(ValueError):
    """Forgejo (or a webhook sender) sent JSON that lacks what we need."""


def _req(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(data, Mapping):
        raise ForgejoDataError(f"expected an object, got {type(data).__name__}")
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ForgejoDataError(f"field {key!r}: expected {kind}, got {value!r:.80}")
    # Forgejo's ids are int64, as is SQLite's INTEGER.
    if isinstance(value, int) and kind is int and not -(2**63) <= value < 2**63:
        raise ForgejoDataError(f"field {key!r}: does not fit a 64-bit integer")
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def parse_time(text: str | None) -> datetime | None:
    if not text or not isinstance(text, str):  # a webhook body may carry anything here
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class User:
    id: int
    login: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> User:
        return cls(id=_req(data, "id", int), login=_req(data, "login", str))


@dataclass(frozen=True)
class Repository:
    id: int
    full_name: str  # "owner/name"
    default_branch: str
    clone_url: str
    html_url: str

    @property
    def owner(self) -> str:
        return self.full_name.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.full_name.split("/", 1)[1]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Repository:
        return cls(
            id=_req(data, "id", int),
            full_name=_req(data, "full_name", str),
            default_branch=_opt_str(data, "default_branch") or "main",
            clone_url=_opt_str(data, "clone_url"),
            html_url=_opt_str(data, "html_url"),
        )


@dataclass(frozen=True)
class Issue:
    """An issue or a pull request seen through the issues API."""

    number: int
    title: str
    body: str
    state: str  # open | closed
    user: User
    is_pull: bool
    html_url: str
    assignees: tuple[str, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Issue:
        assignees = data.get("assignees") or []
        return cls(
            number=_req(data, "number", int),
            title=_opt_str(data, "title"),
            body=_opt_str(data, "body"),
            state=_opt_str(data, "state") or "open",
            user=User.from_json(_req(data, "user", Mapping)),
            is_pull=bool(data.get("pull_request")),
            html_url=_opt_str(data, "html_url"),
            assignees=tuple(
                a["login"]
                for a in assignees
                if isinstance(a, Mapping) and isinstance(a.get("login"), str)
            ),
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
        )


@dataclass(frozen=True)
class Comment:
    id: int
    body: str
    user: User
    html_url: str
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Comment:
        return cls(
            id=_req(data, "id", int),
            body=_opt_str(data, "body"),
            user=User.from_json(_req(data, "user", Mapping)),
            html_url=_opt_str(data, "html_url"),
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
        )


@dataclass(frozen=True)
class PullRequest:
    number: int
    title: str
    body: str
    state: str  # open | closed
    merged: bool
    user: User
    head_sha: str
    head_ref: str
    base_ref: str
    html_url: str
    requested_reviewers: tuple[str, ...] = ()
    draft: bool = False
    mergeable: bool = False
    # Which repository each branch lives in ("" when Forgejo did not say, e.g. a fork
    # since deleted): a head outside the base's repository is a fork's, not ours to push.
    head_repo: str = ""
    base_repo: str = ""

    @property
    def from_fork(self) -> bool:
        """The head branch is not in the base repository (or Forgejo would not say where)."""
        return not self.head_repo or self.head_repo.lower() != self.base_repo.lower()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PullRequest:
        head = _req(data, "head", Mapping)
        base = _req(data, "base", Mapping)
        reviewers = data.get("requested_reviewers") or []
        return cls(
            number=_req(data, "number", int),
            title=_opt_str(data, "title"),
            body=_opt_str(data, "body"),
            state=_opt_str(data, "state") or "open",
            merged=bool(data.get("merged")),
            user=User.from_json(_req(data, "user", Mapping)),
            head_sha=_opt_str(head, "sha"),
            head_ref=_opt_str(head, "ref"),
            base_ref=_opt_str(base, "ref"),
            html_url=_opt_str(data, "html_url"),
            requested_reviewers=tuple(
                r["login"]
                for r in reviewers
                if isinstance(r, Mapping) and isinstance(r.get("login"), str)
            ),
            draft=bool(data.get("draft")),
            mergeable=bool(data.get("mergeable")),
            head_repo=_repo_name(head),
            base_repo=_repo_name(base),
        )


def _repo_name(branch: Mapping[str, Any]) -> str:
    repo = branch.get("repo")
    return _opt_str(repo, "full_name") if isinstance(repo, Mapping) else ""


@dataclass(frozen=True)
class Review:
    id: int
    state: str  # APPROVED | REQUEST_CHANGES | COMMENT | PENDING | REQUEST_REVIEW
    body: str
    user: User | None
    commit_id: str
    comments_count: int = 0
    submitted_at: datetime | None = None
    # Forgejo's own verdict on the review. from_json reads a flag Forgejo did not send
    # as the answer that blocks a merge: not official, stale, dismissed.
    official: bool = False  # counts towards approval: the reviewer could write when it was given
    stale: bool = False  # the pull request's content changed after the review's commit
    dismissed: bool = False  # a repository admin (or a newer verdict) set it aside

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Review:
        user = data.get("user")
        return cls(
            id=_req(data, "id", int),
            state=_opt_str(data, "state"),
            body=_opt_str(data, "body"),
            user=User.from_json(user) if isinstance(user, Mapping) else None,
            commit_id=_opt_str(data, "commit_id"),
            comments_count=data.get("comments_count") or 0,
            submitted_at=parse_time(data.get("submitted_at")),
            official=data.get("official") is True,
            stale=data.get("stale") is not False,
            dismissed=data.get("dismissed") is not False,
        )


# Forgejo's order of commit states, worst first (modules/structs/commit_status.go);
# a state it does not know counts as worse than all of them.
STATUS_PRIORITY = ("error", "failure", "warning", "pending", "success", "skipped")


def worst_state(states: Iterable[str]) -> str:
    """The worst of some commit states, "" for none (as Forgejo combines them)."""
    rank = {state: i for i, state in enumerate(STATUS_PRIORITY)}
    return min(states, key=lambda state: rank.get(state, -1), default="")


@dataclass(frozen=True)
class CommitStatus:
    """The latest status one context (a CI job, a check) reported for a commit."""

    context: str
    state: str  # pending | success | error | failure | warning | skipped (Forgejo's "status")
    description: str = ""
    target_url: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CommitStatus:
        return cls(
            context=_opt_str(data, "context"),
            state=_opt_str(data, "status"),
            description=_opt_str(data, "description"),
            target_url=_opt_str(data, "target_url"),
        )


@dataclass(frozen=True)
class CombinedStatus:
    """GET /repos/{owner}/{repo}/commits/{ref}/status: each context's latest status.

    A commit nobody reported on comes back with state "" and no statuses (Forgejo
    answers an empty CombinedStatus then, not "pending").
    """

    state: str  # the worst of the statuses ("error" reads "failure"); "" when there are none
    sha: str
    statuses: tuple[CommitStatus, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CombinedStatus:
        if not isinstance(data, Mapping):
            raise ForgejoDataError(f"expected an object, got {type(data).__name__}")
        statuses = data.get("statuses") or []
        if not isinstance(statuses, list):
            raise ForgejoDataError(f"field 'statuses': expected a list, got {statuses!r:.80}")
        return cls(
            state=_opt_str(data, "state"),
            sha=_opt_str(data, "sha"),
            statuses=tuple(CommitStatus.from_json(s) for s in statuses if isinstance(s, Mapping)),
        )


@dataclass(frozen=True)
class ReviewComment:
    id: int
    body: str
    user: User
    path: str
    position: int  # new-side line
    original_position: int  # old-side line
    created_at: datetime | None = None
    diff_hunk: str = ""  # the diff around the line, as Forgejo shows it with the comment
    commit_id: str = ""  # the commit the comment was made on
    html_url: str = ""
    resolver: str = ""  # login of who marked the conversation resolved; "" while open

    @property
    def line(self) -> int:
        """The line it is on: new side, else old side (a comment on a removed line)."""
        return self.position or self.original_position

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReviewComment:
        return cls(
            id=_req(data, "id", int),
            body=_opt_str(data, "body"),
            user=User.from_json(_req(data, "user", Mapping)),
            path=_opt_str(data, "path"),
            position=data.get("position") or 0,
            original_position=data.get("original_position") or 0,
            created_at=parse_time(data.get("created_at")),
            diff_hunk=_opt_str(data, "diff_hunk"),
            commit_id=_opt_str(data, "commit_id"),
            html_url=_opt_str(data, "html_url"),
            resolver=_login_of(data.get("resolver")),
        )


@dataclass(frozen=True)
class InlineComment:
    """One inline comment of a review we create (Forgejo: absolute file lines)."""

    path: str
    body: str
    new_position: int = 0
    old_position: int = 0


@dataclass(frozen=True)
class NotificationSubject:
    type: str  # Issue | Pull | Repository | Commit
    title: str
    url: str  # API URL of the issue or PR
    html_url: str
    state: str
    latest_comment_url: str

    @property
    def number(self) -> int | None:
        tail = self.url.rstrip("/").rsplit("/", 1)[-1]
        return int(tail) if tail.isdigit() else None


@dataclass(frozen=True)
class NotificationThread:
    id: int
    repo: str  # full name
    subject: NotificationSubject
    unread: bool
    pinned: bool
    updated_at: datetime | None

    @property
    def is_pull(self) -> bool:
        return self.subject.type == "Pull"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NotificationThread:
        subject = _req(data, "subject", Mapping)
        repo = _req(data, "repository", Mapping)
        return cls(
            id=_req(data, "id", int),
            repo=_req(repo, "full_name", str),
            subject=NotificationSubject(
                type=_opt_str(subject, "type"),
                title=_opt_str(subject, "title"),
                url=_opt_str(subject, "url"),
                html_url=_opt_str(subject, "html_url"),
                state=_opt_str(subject, "state"),
                latest_comment_url=_opt_str(subject, "latest_comment_url"),
            ),
            unread=bool(data.get("unread")),
            pinned=bool(data.get("pinned")),
            updated_at=parse_time(data.get("updated_at")),
        )


def _login_of(value: Any) -> str:
    return value.get("login", "") if isinstance(value, Mapping) else ""


@dataclass(frozen=True)
class TimelineEvent:
    """One item of /issues/{n}/timeline (Forgejo's TimelineComment), users as logins."""

    id: int
    type: str  # comment | review_request | assignees | review | merge_pull | close | …
    user: str  # login of who did it; "" when Forgejo sent no user
    assignee: str  # review_request: the requested reviewer; assignees: the assignee
    removed_assignee: bool  # True when the request / assignment was withdrawn
    created_at: datetime | None
    body: str = ""
    updated_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TimelineEvent:
        return cls(
            id=_req(data, "id", int),
            type=_req(data, "type", str),
            user=_login_of(data.get("user")),
            assignee=_login_of(data.get("assignee")),
            removed_assignee=bool(data.get("removed_assignee")),
            created_at=parse_time(data.get("created_at")),
            body=_opt_str(data, "body"),
            updated_at=parse_time(data.get("updated_at")),
        )
