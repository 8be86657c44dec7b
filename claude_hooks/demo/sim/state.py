"""In-memory state of the Forgejo simulator: small mutable records and the rules on them.

Times have Forgejo's one-second resolution (it stores Unix seconds). Logins and
repository names are case-insensitive, as in Forgejo, so every index is keyed
by the lower-cased name while the records keep the spelling they were created with.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

ACCESS_ORDER = ("none", "read", "write", "admin", "owner")
COLLABORATOR_LEVELS = ("read", "write", "admin")
ALLOWED_REACTIONS = frozenset(
    {"+1", "-1", "laugh", "hooray", "confused", "heart", "rocket", "eyes"}
)


class SimError(Exception):
    """A request Forgejo would refuse; becomes an HTTP error with Forgejo's JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SimClock:
    """Wall-clock time cut to whole seconds; tests move it forward with advance()."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> datetime:
        return datetime.fromtimestamp(int(time.time() + self.offset), tz=UTC)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def fake_sha(*parts: object) -> str:
    """A stable 40-hex commit id for branches nobody pushed real commits to."""
    return hashlib.sha1("/".join(map(str, parts)).encode(), usedforsecurity=False).hexdigest()


@dataclass
class SimUser:
    id: int
    login: str
    created: datetime
    admin: bool = False
    active: bool = True

    @property
    def key(self) -> str:
        return self.login.lower()


@dataclass
class SimRepo:
    id: int
    owner: str
    name: str
    default_branch: str
    created_at: datetime
    private: bool = False
    collaborators: dict[str, str] = field(default_factory=dict)  # lower login → level
    watchers: set[str] = field(default_factory=set)  # lower logins
    branches: dict[str, str] = field(default_factory=dict)  # ref → head sha
    next_number: int = 1

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def key(self) -> str:
        return self.full_name.lower()


@dataclass
class SimPull:
    """The pull-request half of an issue."""

    head_ref: str
    head_sha: str
    base_ref: str
    merge_base: str
    diff: str
    merged: bool = False
    merged_at: datetime | None = None
    merged_by: str = ""
    merge_commit_sha: str = ""
    mergeable: bool = True


@dataclass
class SimIssue:
    id: int
    repo: str  # repository key
    number: int
    user: str  # lower login
    title: str
    body: str
    created_at: datetime
    updated_at: datetime
    state: str = "open"
    closed_at: datetime | None = None
    assignees: list[str] = field(default_factory=list)
    pull: SimPull | None = None

    @property
    def is_pull(self) -> bool:
        return self.pull is not None

    @property
    def draft(self) -> bool:
        title = self.title.lower()
        return self.is_pull and (title.startswith("wip:") or title.startswith("[wip]"))


@dataclass
class SimComment:
    """A row of Forgejo's comment table: a plain comment or a timeline item."""

    id: int
    repo: str
    number: int
    type: str  # comment | review_request | assignees | review | merge_pull
    user: str
    body: str
    created_at: datetime
    updated_at: datetime
    assignee: str = ""
    removed_assignee: bool = False
    review_id: int = 0


@dataclass
class SimReview:
    id: int
    repo: str
    number: int
    user: str
    state: str  # PENDING | APPROVED | REQUEST_CHANGES | COMMENT | REQUEST_REVIEW
    body: str
    commit_id: str
    submitted_at: datetime
    updated_at: datetime
    comment_ids: list[int] = field(default_factory=list)
    official: bool = False  # counts towards approval (forgejo.py: _submit, request_review)
    stale: bool = False  # the pull request's head moved past commit_id
    dismissed: bool = False


@dataclass
class SimReviewComment:
    id: int
    review_id: int
    repo: str
    number: int
    user: str
    path: str
    body: str
    new_position: int
    old_position: int
    commit_id: str
    created_at: datetime
    updated_at: datetime


@dataclass
class SimStatus:
    """One commit status report; `index` counts per commit from 1, as Forgejo's id does."""

    index: int
    repo: str
    sha: str
    state: str
    context: str
    description: str
    target_url: str
    creator: str
    created_at: datetime


@dataclass
class SimReaction:
    user: str
    content: str
    created_at: datetime


@dataclass
class SimThread:
    """One user's notification thread about one issue or pull request."""

    id: int
    user: str
    repo: str
    number: int
    status: str  # unread | read | pinned
    updated_at: datetime
    comment_id: int = 0  # what the thread last pointed at (Forgejo keeps it, the API hides it)


@dataclass
class SimState:
    users: dict[str, SimUser] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # token → lower login
    repos: dict[str, SimRepo] = field(default_factory=dict)
    issues: dict[tuple[str, int], SimIssue] = field(default_factory=dict)
    comments: dict[int, SimComment] = field(default_factory=dict)
    reviews: dict[int, SimReview] = field(default_factory=dict)
    review_comments: dict[int, SimReviewComment] = field(default_factory=dict)
    reactions: dict[tuple[str, int | str], list[SimReaction]] = field(default_factory=dict)
    threads: dict[int, SimThread] = field(default_factory=dict)
    statuses: dict[tuple[str, str], list[SimStatus]] = field(default_factory=dict)  # (repo, sha)
    _ids: dict[str, itertools.count[int]] = field(default_factory=dict)

    def next_id(self, kind: str) -> int:
        """Ids per table; plain comments, timeline items and code comments share one."""
        return next(self._ids.setdefault(kind, itertools.count(1)))

    def user(self, login: str) -> SimUser:
        user = self.users.get(login.lower())
        if user is None:
            raise SimError(404, f"user {login!r} does not exist")
        return user

    def repo(self, full_name: str) -> SimRepo:
        repo = self.repos.get(full_name.lower())
        if repo is None:
            raise SimError(404, f"repository {full_name!r} does not exist")
        return repo

    def issue(self, repo: str, number: int) -> SimIssue:
        issue = self.issues.get((repo.lower(), number))
        if issue is None:
            raise SimError(404, f"issue {repo}#{number} does not exist")
        return issue

    def pull(self, repo: str, number: int) -> tuple[SimIssue, SimPull]:
        issue = self.issue(repo, number)
        if issue.pull is None:
            raise SimError(404, f"{repo}#{number} is an issue, not a pull request")
        return issue, issue.pull

    def plain_comments(self, repo: str, number: int) -> list[SimComment]:
        key = repo.lower()
        found = [
            c
            for c in self.comments.values()
            if c.repo == key and c.number == number and c.type == "comment"
        ]
        return sorted(found, key=lambda c: (c.created_at, c.id))

    def timeline(self, repo: str, number: int) -> list[SimComment]:
        key = repo.lower()
        found = [c for c in self.comments.values() if c.repo == key and c.number == number]
        return sorted(found, key=lambda c: (c.created_at, c.id))

    def pr_reviews(self, repo: str, number: int) -> list[SimReview]:
        key = repo.lower()
        found = [r for r in self.reviews.values() if r.repo == key and r.number == number]
        return sorted(found, key=lambda r: r.id)

    def latest_statuses(self, repo: str, sha: str) -> list[SimStatus]:
        """Each context's newest status on a commit, newest first (GetLatestCommitStatus)."""
        latest: dict[str, SimStatus] = {}
        for status in self.statuses.get((repo.lower(), sha), []):
            latest[status.context] = status  # appended in index order: the last one wins
        return sorted(latest.values(), key=lambda s: s.index, reverse=True)

    def requested_reviewers(self, issue: SimIssue) -> list[str]:
        reviews = self.pr_reviews(issue.repo, issue.number)
        return [r.user for r in reviews if r.state == "REQUEST_REVIEW"]


def access_level(state: SimState, repo: SimRepo, login: str) -> str:
    """Forgejo's AccessMode for a user on a repository, as the permission API names it."""
    key = login.lower()
    user = state.users.get(key)
    if user is None:
        return "none"
    if key == repo.owner.lower():
        return "owner"
    if user.admin:
        return "admin"
    level = repo.collaborators.get(key)
    if level is not None:
        return level
    return "none" if repo.private else "read"


def has_access(state: SimState, repo: SimRepo, login: str, needed: str) -> bool:
    level = access_level(state, repo, login)
    return ACCESS_ORDER.index(level) >= ACCESS_ORDER.index(needed)
