"""A Forgejo simulator: a real aiohttp server on 127.0.0.1 with Forgejo's semantics, in memory.

Tests and `claude-hooks demo` drive it two ways: as the users of a team, by
direct Python calls (`sim.add_comment(repo, 1, "alice", "@dev please")`), and
as an agent, through the same REST API a real Forgejo serves (claude_hooks/demo/sim/api.py).
Both paths go through the same actions below, so a comment posted over HTTP
notifies, mentions and fires webhooks exactly like one posted from a test.

Semantics follow docs/FORGEJO.md: notification threads
(claude_hooks/demo/sim/notifications.py), mentions (mentions.py), JSON shapes
(render.py), webhooks (webhooks.py). Every API request is recorded in
`sim.requests` with the response it got, so tests/contract.py can check both
against Forgejo's OpenAPI description.

Git (claude_hooks/demo/sim/git.py): where git is installed, every repository is also a
real bare repository (`sim.git_dir(repo)`), cloned and pushed over smart HTTP at its
clone_url; pushes move the simulator's branches and pull-request heads, and
`sim.commit_file` seeds content. Only /api/v1 requests are authenticated by the API
gateway, recorded and subject to fault injection; git requests check their own tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import structlog
from aiohttp import web

from claude_hooks.demo.sim import notifications as notes
from claude_hooks.demo.sim.gateway import ApiGateway, Outage, RecordedRequest
from claude_hooks.demo.sim.git import (
    SIM_IDENTITY,
    FileCommit,
    GitHttp,
    GitStore,
    MergeConflict,
    MergeSpec,
    NotFastForward,
)
from claude_hooks.demo.sim.mentions import find_mentions
from claude_hooks.demo.sim.references import issue_actions
from claude_hooks.demo.sim.render import Renderer
from claude_hooks.demo.sim.state import (
    ALLOWED_REACTIONS,
    COLLABORATOR_LEVELS,
    SimClock,
    SimComment,
    SimError,
    SimIssue,
    SimPull,
    SimReaction,
    SimRepo,
    SimReview,
    SimReviewComment,
    SimState,
    SimStatus,
    SimThread,
    SimUser,
    fake_sha,
    has_access,
)
from claude_hooks.demo.sim.webhooks import Delivery, HookEvent, WebhookDispatcher

__all__ = ["ForgejoSim", "RecordedRequest", "SimClock", "SimError"]

log = structlog.get_logger(__name__)

SUBMIT_EVENTS = ("APPROVED", "REQUEST_CHANGES", "COMMENT")
VERDICTS = ("APPROVED", "REQUEST_CHANGES")  # the review states that count for or against a merge
MERGE_STYLES = ("merge", "rebase", "rebase-merge", "squash", "fast-forward-only", "manually-merged")


class ForgejoSim:
    """State, actions and the HTTP server of one simulated Forgejo instance."""

    def __init__(self, *, clock: SimClock | None = None, git: bool | None = None) -> None:
        """`git`: back repositories with real git (default: when git is installed)."""
        self.state = SimState()
        self.clock = clock or SimClock()
        self.git = GitStore(enabled=git)
        self.gateway = ApiGateway(self.state, lambda: self._base_url)
        self.requests = self.gateway.requests  # every API request; tests may clear it
        self.app = web.Application(middlewares=[self.gateway.middleware])
        self._webhooks = WebhookDispatcher()
        self._runner: web.AppRunner | None = None
        self._base_url = "http://127.0.0.1:0"
        self._routes_added = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0: an ephemeral port); returns the base URL."""
        from claude_hooks.demo.sim.api import api_routes

        if not self._routes_added:
            self.app.add_routes(api_routes(self))
            if self.git.enabled:
                self.app.add_routes(GitHttp(self).routes())
            self._routes_added = True
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        self._base_url = f"http://{host}:{bound[1]}"
        await self._webhooks.start()
        log.info("sim_forgejo_started", url=self._base_url)
        return self._base_url

    async def stop(self) -> None:
        await self._webhooks.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def render(self) -> Renderer:
        return Renderer(self._base_url, self.state)

    def advance(self, seconds: float) -> None:
        """Move the simulated clock forward (Forgejo times have 1 s resolution)."""
        self.clock.advance(seconds)

    # -- users, repositories, hooks ------------------------------------------------------

    def add_user(self, login: str, token: str | None = None, admin: bool = False) -> SimUser:
        if login.lower() in self.state.users:
            raise SimError(422, f"user {login!r} already exists")
        user = SimUser(self.state.next_id("user"), login, self.clock.now(), admin=admin)
        self.state.users[user.key] = user
        if token:
            self.add_token(login, token)
        return user

    def add_token(self, login: str, token: str) -> None:
        self.state.tokens[token] = self.state.user(login).key

    def revoke_token(self, token: str) -> None:
        self.state.tokens.pop(token, None)

    def add_repo(
        self,
        full_name: str,
        collaborators: Mapping[str, str] | None = None,
        default_branch: str = "main",
        private: bool = False,
    ) -> SimRepo:
        owner, _, name = full_name.partition("/")
        if not owner or not name:
            raise ValueError(f"repository must be 'owner/name', got {full_name!r}")
        if owner.lower() not in self.state.users:
            self.add_user(owner)
        levels = {login.lower(): level for login, level in (collaborators or {}).items()}
        for login, level in levels.items():
            self.state.user(login)
            if level not in COLLABORATOR_LEVELS:
                raise ValueError(f"{login}: level must be one of {COLLABORATOR_LEVELS}")
        repo = SimRepo(
            self.state.next_id("repo"),
            self.state.user(owner).login,
            name,
            default_branch,
            self.clock.now(),
            private=private,
            collaborators=levels,
        )
        repo.branches[default_branch] = (
            self.git.create(repo, self.clock.now())
            if self.git.enabled
            else fake_sha(repo.full_name, default_branch)
        )
        self.state.repos[repo.key] = repo
        return repo

    def add_collaborator(self, repo: str, login: str, level: str) -> None:
        """Give `login` read, write or admin access (Forgejo asks the added user nothing)."""
        if level not in COLLABORATOR_LEVELS:
            raise ValueError(f"{login}: level must be one of {COLLABORATOR_LEVELS}")
        self.state.repo(repo).collaborators[self.state.user(login).key] = level

    def watch(self, repo: str, login: str) -> None:
        self.state.repo(repo).watchers.add(self.state.user(login).key)

    def set_branch(self, repo: str, ref: str, sha: str, pusher: str | None = None) -> None:
        """A push happened: move `ref` to `sha`; open pull requests from it follow, and
        each one whose head moved sends `pull_request` `synchronized` (sender: `pusher`,
        else the pull request's author). Pull requests from or into `ref` are checked
        for conflicts again, as Forgejo's pull checker does after a push."""
        target = self.state.repo(repo)
        target.branches[ref] = sha
        for issue in self._open_pulls(target):
            pull = issue.pull
            assert pull is not None
            if pull.head_ref == ref:
                moved, pull.head_sha = pull.head_sha != sha, sha
                self.git.set_ref(target.full_name, f"refs/pull/{issue.number}/head", sha)
                if moved:
                    self._mark_reviews_stale(issue, sha)
                    self._recheck(target, pull)
                    sender = pusher or issue.user
                    self._emit_pull("pull_request_sync", "synchronized", issue, sender)
            elif pull.base_ref == ref:
                self._recheck(target, pull)

    def git_dir(self, repo: str) -> Path:
        """The bare repository behind `repo` (git must be enabled)."""
        target = self.state.repo(repo)
        if not self.git.has(target.full_name):
            raise SimError(404, f"{target.full_name} has no git repository (is git installed?)")
        return self.git.path(target.full_name)

    def commit_file(
        self,
        repo: str,
        branch: str,
        path: str,
        content: str,
        message: str,
        author: str | None = None,
    ) -> str:
        """Commit one file to `branch` (made from the default branch if new), as a push
        would; pull requests from the branch follow. The new sha."""
        target = self.state.repo(repo)
        self.git_dir(repo)  # git must back the repository
        heads = self.git.branches(target.full_name)
        parent = heads.get(branch) or heads[target.default_branch]
        who = self.state.user(author) if author else None
        identity = _git_identity(who) if who else SIM_IDENTITY
        commit = FileCommit(
            f"refs/heads/{branch}", parent, path, content.encode(), message, identity,
            self.clock.now(),
        )  # fmt: skip
        sha = self.git.commit(target.full_name, commit)
        self.set_branch(target.full_name, branch, sha, pusher=who.login if who else None)
        return sha

    def add_webhook(self, url: str, secret: str = "", events: Iterable[str] | None = None) -> int:
        return self._webhooks.add(url, secret, None if events is None else frozenset(events)).id

    @property
    def deliveries(self) -> list[Delivery]:
        return self._webhooks.deliveries

    async def webhooks_idle(self) -> None:
        """Wait until every webhook emitted so far has been delivered or has failed."""
        await self._webhooks.idle()

    # -- fault injection -----------------------------------------------------------------

    def fail_next(self, n: int, status: int = 502, retry_after: float | None = None) -> None:
        """The next n API requests get `status` (with Retry-After when given)."""
        self.gateway.faults.fail.extend([(status, retry_after)] * n)

    def drop_next(self, n: int) -> None:
        """The next n API requests get their connection closed without a response."""
        self.gateway.faults.drop += n

    def outage(
        self, match: Callable[[str, str], bool], status: int | None = 500, hang: float = 0.0
    ) -> Outage:
        """API requests `match(method, path)` selects fail until `end_outage` (status None:
        the connection is dropped; `hang`: they wait that long first)."""
        outage = Outage(match, status, hang)
        self.gateway.faults.outages.append(outage)
        return outage

    def end_outage(self, outage: Outage | None = None) -> None:
        """End one outage, or all of them."""
        faults = self.gateway.faults
        faults.outages = [o for o in faults.outages if outage is not None and o is not outage]

    def delay(self, seconds: float) -> None:
        """Every API request waits this long before being answered (0 turns it off)."""
        self.gateway.faults.delay = seconds

    # -- issues and comments -------------------------------------------------------------

    def create_issue(
        self,
        repo: str,
        author: str,
        title: str,
        body: str = "",
        is_pull: bool = False,
        assignees: Sequence[str] = (),
    ) -> int:
        if is_pull:
            number = self.state.repo(repo).next_number
            return self.create_pull(repo, author, title, body, head=f"pull-{number}")
        issue = self._new_issue(repo, author, title, body, pull=None)
        audience = self.state.repos[issue.repo].watchers | set(find_mentions(body))
        self._deliver(issue, author, audience)
        self._emit_issue("issues", "opened", issue, author)
        for login in assignees:
            self.assign(repo, issue.number, author, login)
        return issue.number

    def add_comment(self, repo: str, number: int, author: str, body: str) -> int:
        issue = self.state.issue(repo, number)
        comment = self._timeline_item(issue, "comment", author, body=body)
        self._deliver(
            issue,
            author,
            notes.broadcast_audience(self.state, issue) | set(find_mentions(body)),
            comment.id,
        )
        self._emit_comment("created", comment, author)
        return comment.id

    def edit_comment(
        self, repo: str, comment_id: int, body: str, editor: str | None = None
    ) -> None:
        """Edits never notify, even when they add a mention (as in Forgejo)."""
        comment = self.comment(repo, comment_id)
        before, comment.body, comment.updated_at = comment.body, body, self.clock.now()
        self._emit_comment("edited", comment, editor or comment.user, before)

    def react(self, target: tuple[str, int | str], user: str, content: str) -> bool:
        """Add a reaction; True when it is new (201), False when it existed (200)."""
        if content not in ALLOWED_REACTIONS:
            raise SimError(403, f"'{content}' is not an allowed reaction")
        login = self.state.user(user).key
        existing = self.state.reactions.setdefault(target, [])
        if any(r.user == login and r.content == content for r in existing):
            return False
        existing.append(SimReaction(login, content, self.clock.now()))
        return True

    def react_to_issue(self, repo: str, number: int, user: str, content: str) -> bool:
        issue = self.state.issue(repo, number)
        return self.react((issue.repo, issue.number), user, content)

    def react_to_comment(self, repo: str, comment_id: int, user: str, content: str) -> bool:
        return self.react(("comment", self.comment(repo, comment_id).id), user, content)

    def assign(self, repo: str, number: int, actor: str, assignee: str) -> None:
        issue = self.state.issue(repo, number)
        login = self.state.user(assignee).key
        if login in issue.assignees:
            return
        issue.assignees.append(login)
        item = self._timeline_item(issue, "assignees", actor, assignee=login)
        self._deliver(issue, actor, {login}, item.id)
        if issue.is_pull:
            self._emit_pull("pull_request_assign", "assigned", issue, actor)
        else:
            self._emit_issue("issue_assign", "assigned", issue, actor)

    # -- pull requests and reviews -------------------------------------------------------

    def create_pull(
        self,
        repo: str,
        author: str,
        title: str,
        body: str = "",
        head: str = "feature",
        base: str | None = None,
        head_sha: str | None = None,
        diff: str | None = None,
        reviewers: Sequence[str] = (),
        assignees: Sequence[str] = (),
    ) -> int:
        target = self.state.repo(repo)
        base = base or target.default_branch
        self._check_new_pull(target, head, base)
        head_sha = head_sha or target.branches.get(head) or self._unpushed_head(target, head, base)
        target.branches[head] = head_sha
        merge_base = self.git.merge_base(target.full_name, target.branches[base], head_sha)
        # With git behind both commits the diff is git's (pull_diff); else a made-up one.
        diff = diff or ("" if merge_base else _synthetic_diff(head))
        pull = SimPull(head, head_sha, base, merge_base or target.branches[base], diff)
        pull.mergeable = not self.git.conflicts(target.full_name, target.branches[base], head_sha)
        issue = self._new_issue(repo, author, title, body, pull=pull)
        self.git.set_ref(target.full_name, f"refs/pull/{issue.number}/head", head_sha)
        audience = notes.broadcast_audience(self.state, issue) | set(find_mentions(body))
        self._deliver(issue, author, audience)
        self._emit_pull("pull_request", "opened", issue, author)
        for login in reviewers:
            self.request_review(repo, issue.number, author, login)
        for login in assignees:
            self.assign(repo, issue.number, author, login)
        return issue.number

    def pull_diff(self, repo: str, number: int) -> str:
        """What GET /pulls/{n}.diff serves: `git diff merge-base..head` when git has both."""
        issue, pull = self.state.pull(repo, number)
        if pull.diff:
            return pull.diff
        target = self.state.repos[issue.repo]
        base = pull.merge_base if pull.merged else target.branches.get(pull.base_ref, "")
        text = self.git.diff(target.full_name, base, pull.head_sha)
        return _synthetic_diff(pull.head_ref) if text is None else text

    def edit_issue(
        self, repo: str, number: int, title: str | None = None, body: str | None = None
    ) -> SimIssue:
        issue = self.state.issue(repo, number)
        issue.title = issue.title if title is None else title
        issue.body = issue.body if body is None else body
        issue.updated_at = self.clock.now()
        return issue

    def request_review(self, repo: str, number: int, requester: str, reviewer: str) -> int:
        issue, _ = self.state.pull(repo, number)
        login = self._existing_login(reviewer)
        if login == issue.user:
            raise SimError(422, f"{reviewer} is the author of the pull request")
        for review in self.state.pr_reviews(issue.repo, number):
            if review.user == login and review.state == "REQUEST_REVIEW":
                return review.id  # already requested: Forgejo changes nothing
        # An official reviewer asked again: their earlier verdict no longer counts
        # (models/issues/review.go AddReviewRequest); the request itself is official.
        official = self._may_write(issue, login)
        if official:
            self._clear_official(issue, login)
        review = self._new_review(issue, login, "REQUEST_REVIEW", "", "")
        review.official = official
        item = self._timeline_item(issue, "review_request", requester, assignee=login)
        self._deliver(issue, requester, {login}, item.id)
        self._emit_pull(
            "pull_request_review_request",
            "review_requested",
            issue,
            requester,
            requested_reviewer=self.render.user(login),
        )
        return review.id

    def submit_review(
        self,
        repo: str,
        number: int,
        reviewer: str,
        event: str,
        body: str = "",
        comments: Sequence[Mapping[str, Any]] = (),
        commit_id: str | None = None,
    ) -> int:
        """POST /pulls/{n}/reviews semantics; `comments` as CreatePullReviewComment dicts."""
        issue, pull = self.state.pull(repo, number)
        login = self.state.user(reviewer).key
        state = event.upper() if event.upper() in SUBMIT_EVENTS else "PENDING"
        _check_review(state, body, comments, own_pull=login == issue.user)
        pending = self._pending_review(issue, login)
        if pending is None and not comments and state in VERDICTS:
            # Forgejo creates such a review outright (CreateReview), which dismisses the
            # reviewer's earlier verdicts; one submitted from a pending review does not.
            for earlier in self.state.pr_reviews(issue.repo, number):
                if earlier.user == login and earlier.state in VERDICTS:
                    earlier.dismissed = True
        review = pending or self._new_review(
            issue, login, "PENDING", body, commit_id or pull.head_sha
        )
        for comment in comments:
            self._add_review_comment(issue, review, comment)
        if state != "PENDING":
            self._submit(issue, review, state, body, commit_id or pull.head_sha)
        return review.id

    def delete_review(self, repo: str, number: int, review_id: int) -> None:
        review = self.review(repo, number, review_id)
        for comment_id in review.comment_ids:
            self.state.review_comments.pop(comment_id, None)
        del self.state.reviews[review.id]
        if review.official:  # the reviewer's previous verdict counts again
            issue = self.state.issue(repo, number)
            kinds = (*VERDICTS, "REQUEST_REVIEW")
            mine = [r for r in self.state.pr_reviews(issue.repo, number) if r.user == review.user]
            previous = [r for r in mine if r.state in kinds]
            if previous:
                previous[-1].official = True

    def dismiss_review(
        self, repo: str, number: int, review_id: int, message: str = "", priors: bool = False
    ) -> SimReview:
        """POST .../reviews/{id}/dismissals semantics, the caller's admin right aside.

        Forgejo also writes a dismiss_review timeline item; the simulator does not.
        """
        issue, pull = self.state.pull(repo, number)
        review = self.review(repo, number, review_id)
        if review.state not in VERDICTS:
            raise SimError(
                403,
                "not need to dismiss this review because it's type is not Approve or "
                "change request",
            )
        if issue.state != "open" or pull.merged:
            raise SimError(403, "not need to dismiss this review because this pr is closed")
        review.dismissed = True
        if priors:
            for earlier in self.state.pr_reviews(issue.repo, number):
                if earlier.user == review.user and earlier.state in VERDICTS:
                    earlier.dismissed = True
        return review

    # -- commit statuses -----------------------------------------------------------------

    def set_status(
        self,
        repo: str,
        sha: str,
        state: str,
        context: str = "",
        creator: str | None = None,
        description: str = "",
        target_url: str = "",
    ) -> SimStatus:
        """Report a commit status (POST /statuses/{sha}); Forgejo stores any state string."""
        target = self.state.repo(repo)
        sha = self._full_sha(target, sha)
        if not self._is_commit(target, sha):
            raise SimError(404, f"commit {sha!r} does not exist in {target.full_name}")
        kept = self.state.statuses.setdefault((target.key, sha), [])
        status = SimStatus(
            len(kept) + 1, target.key, sha, state, context.strip(), description.strip(),
            target_url.strip(), self.state.user(creator or target.owner).key, self.clock.now(),
        )  # fmt: skip
        kept.append(status)
        return status

    def set_pull_status(
        self,
        repo: str,
        number: int,
        state: str,
        context: str = "ci",
        creator: str | None = None,
        description: str = "",
    ) -> SimStatus:
        """Play CI: report `state` for `context` on the pull request's current head.

        Forgejo sends no webhook and no notification for a commit status
        (docs/FORGEJO.md, "Commit statuses"): the daemon sees it only by asking.
        """
        _, pull = self.state.pull(repo, number)
        return self.set_status(
            repo, pull.head_sha, state, context=context, creator=creator, description=description
        )

    def resolve_ref(self, repo: str, ref: str) -> str:
        """A branch name → its head sha; anything else is taken for a sha (ResolveRefOrSha)."""
        return self.state.repo(repo).branches.get(ref, ref)

    def merge(
        self,
        repo: str,
        number: int,
        actor: str,
        style: str = "merge",
        head_commit_id: str | None = None,
        delete_branch: bool = False,
        title: str = "",
        message: str = "",
        merge_commit_id: str = "",
        may_merge: bool = True,
    ) -> None:
        """POST /pulls/{n}/merge semantics (routers/api/v1/repo/pull.go MergePullRequest),
        `may_merge` the caller's right to: the checks in Forgejo's order, a real git merge
        when git holds both commits, then the pull request marked merged, the issues its
        body closes closed, and the head branch deleted when asked."""
        issue, pull = self.state.pull(repo, number)
        target = self.state.repos[issue.repo]
        merger = self.state.user(actor).key
        _check_mergeable(issue, pull, style, may_merge)
        if style == "manually-merged":
            sha = self._manually_merged(target, pull, merge_commit_id)
        else:
            if head_commit_id and head_commit_id != pull.head_sha:
                raise SimError(409, "head out of date")  # ErrSHADoesNotMatch
            sha = self._merge_commits(target, issue, merger, style, title, message)
        now = self.clock.now()
        pull.merged, pull.merged_at, pull.merged_by = True, now, merger
        pull.merge_commit_sha = sha
        issue.state, issue.closed_at, issue.updated_at = "closed", now, now
        if style != "manually-merged":
            self.set_branch(target.full_name, pull.base_ref, sha, pusher=merger)
        item = self._timeline_item(issue, "merge_pull", actor)
        self._deliver(issue, actor, notes.broadcast_audience(self.state, issue), item.id)
        self._mark_read_for(actor, issue)
        self._emit_pull("pull_request", "closed", issue, actor)
        self._act_on_references(issue, actor, sha)
        if delete_branch:
            self._delete_branch(target, pull.head_ref)

    def _merge_commits(
        self, target: SimRepo, issue: SimIssue, merger: str, style: str, title: str, message: str
    ) -> str:
        """The base branch's head after merging; made up when git lacks the commits."""
        pull = issue.pull
        assert pull is not None
        base_sha = target.branches[pull.base_ref]
        if not (
            self.git.has_commit(target.full_name, base_sha)
            and self.git.has_commit(target.full_name, pull.head_sha)
        ):
            return fake_sha(target.full_name, issue.number, "merge", pull.head_sha)
        text = (title.strip() or _default_merge_message(target, issue, style)) + (
            f"\n\n{message.strip()}" if message.strip() else ""
        )
        spec = MergeSpec(
            pull.base_ref, base_sha, pull.head_sha, style, text,
            committer=_git_identity(self.state.user(merger)),
            author=_git_identity(self.state.user(issue.user)), when=self.clock.now(),
        )  # fmt: skip
        try:
            return self.git.merge(target.full_name, spec)
        except MergeConflict as conflict:  # ErrMergeConflicts / ErrRebaseConflicts
            raise SimError(409, f"merge conflict: {conflict}") from None
        except NotFastForward as refused:
            # Forgejo d883bd8f12 answers 500 here (ErrMergeDivergingFastForwardOnly is
            # not mapped by the API handler); 405 is what its OpenAPI lets it say.
            raise SimError(405, f"not possible to fast-forward: {refused}") from None

    def _manually_merged(self, target: SimRepo, pull: SimPull, merge_commit_id: str) -> str:
        """MergedManually: the given commit must be on the base branch and hold the head."""
        base_sha = target.branches[pull.base_ref]
        on_base = self.git.is_ancestor(target.full_name, merge_commit_id, base_sha)
        if not (on_base and self.git.is_ancestor(target.full_name, pull.head_sha, merge_commit_id)):
            raise SimError(409, f"Wrong commit ID {merge_commit_id!r}")
        return merge_commit_id

    def _act_on_references(self, pull: SimIssue, actor: str, sha: str) -> None:
        """handleCloseCrossReferences: issues of this repository the body closes (or
        reopens) change state, each with a timeline item and an `issues` webhook."""
        for action in issue_actions(pull.body):
            if action.repo not in ("", pull.repo):
                continue
            issue = self.state.issues.get((pull.repo, action.number))
            if issue is None or issue.is_pull or (issue.state == "closed") == action.closes:
                continue
            now = self.clock.now()
            issue.state = "closed" if action.closes else "open"
            issue.closed_at = now if action.closes else None
            kind = "close" if action.closes else "reopen"
            item = self._timeline_item(issue, kind, actor, body=sha)
            self._deliver(issue, actor, notes.broadcast_audience(self.state, issue), item.id)
            self._emit_issue("issues", "closed" if action.closes else "reopened", issue, actor)

    def _delete_branch(self, target: SimRepo, branch: str) -> None:
        if branch == target.default_branch:
            raise SimError(403, "the head branch is the default branch")
        target.branches.pop(branch, None)
        if self.git.has(target.full_name):
            self.git.delete_branch(target.full_name, branch)

    # -- inspection ----------------------------------------------------------------------

    def user(self, login: str) -> SimUser:
        return self.state.user(login)

    def issue(self, repo: str, number: int) -> SimIssue:
        return self.state.issue(repo, number)

    def comments(self, repo: str, number: int) -> list[SimComment]:
        return self.state.plain_comments(repo, number)

    def comment(self, repo: str, comment_id: int) -> SimComment:
        comment = self.state.comments.get(comment_id)
        if comment is None or comment.repo != repo.lower() or comment.type != "comment":
            raise SimError(404, f"comment {comment_id} does not exist in {repo}")
        return comment

    def timeline(self, repo: str, number: int) -> list[SimComment]:
        return self.state.timeline(repo, number)

    def reactions(
        self, repo: str, number: int | None = None, comment_id: int | None = None
    ) -> list[SimReaction]:
        """Reactions on an issue (number) or on a comment (comment_id)."""
        if comment_id is not None:
            return list(self.state.reactions.get(("comment", comment_id), []))
        if number is None:
            raise ValueError("reactions() needs a number or a comment_id")
        return list(self.state.reactions.get((repo.lower(), number), []))

    def reviews(self, repo: str, number: int) -> list[SimReview]:
        return self.state.pr_reviews(repo, number)

    def review(self, repo: str, number: int, review_id: int) -> SimReview:
        review = self.state.reviews.get(review_id)
        if review is None or review.repo != repo.lower() or review.number != number:
            raise SimError(404, f"review {review_id} does not exist on {repo}#{number}")
        return review

    def review_comments(self, review_id: int) -> list[SimReviewComment]:
        review = self.state.reviews.get(review_id)
        ids = review.comment_ids if review else []
        return [self.state.review_comments[i] for i in ids if i in self.state.review_comments]

    def threads(self, login: str) -> list[SimThread]:
        """All of a user's notification threads, newest update first."""
        query = notes.thread_query((), (), show_all=True, default_statuses=())
        return notes.select_threads(self.state, login, query)

    @property
    def all_requests(self) -> tuple[RecordedRequest, ...]:
        """Every API request since start, whatever a test did to `requests`."""
        return tuple(self.gateway.all_requests)

    def api_requests(
        self, method: str | None = None, path: str | None = None
    ) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (path is None or r.path == path)
        ]

    # -- internals: records --------------------------------------------------------------

    def _existing_login(self, login: str) -> str:
        try:
            return self.state.user(login).key
        except SimError:
            raise SimError(422, f"user {login!r} does not exist") from None

    def _new_issue(
        self, repo: str, author: str, title: str, body: str, pull: SimPull | None
    ) -> SimIssue:
        target = self.state.repo(repo)
        now = self.clock.now()
        number, target.next_number = target.next_number, target.next_number + 1
        issue = SimIssue(
            self.state.next_id("issue"),
            target.key,
            number,
            self.state.user(author).key,
            title,
            body,
            now,
            now,
            pull=pull,
        )
        self.state.issues[(target.key, number)] = issue
        return issue

    def _timeline_item(
        self, issue: SimIssue, kind: str, actor: str, body: str = "", **extra: Any
    ) -> SimComment:
        now = self.clock.now()
        item = SimComment(
            self.state.next_id("comment"),
            issue.repo,
            issue.number,
            kind,
            self.state.user(actor).key,
            body,
            now,
            now,
            **extra,
        )
        self.state.comments[item.id] = item
        issue.updated_at = now
        return item

    def _new_review(
        self, issue: SimIssue, login: str, state: str, body: str, commit_id: str
    ) -> SimReview:
        now = self.clock.now()
        review = SimReview(
            self.state.next_id("review"),
            issue.repo,
            issue.number,
            login,
            state,
            body,
            commit_id,
            now,
            now,
        )
        self.state.reviews[review.id] = review
        return review

    def _pending_review(self, issue: SimIssue, login: str) -> SimReview | None:
        """A pending review left behind absorbs new inline comments (as in Forgejo)."""
        for review in self.state.pr_reviews(issue.repo, issue.number):
            if review.user == login and review.state == "PENDING":
                return review
        return None

    def _add_review_comment(
        self, issue: SimIssue, review: SimReview, comment: Mapping[str, Any]
    ) -> None:
        now = self.clock.now()
        record = SimReviewComment(
            self.state.next_id("comment"),
            review.id,
            issue.repo,
            issue.number,
            review.user,
            str(comment.get("path", "")),
            str(comment.get("body", "")),
            int(comment.get("new_position") or 0),
            int(comment.get("old_position") or 0),
            review.commit_id,
            now,
            now,
        )
        self.state.review_comments[record.id] = record
        review.comment_ids.append(record.id)

    def _submit(
        self, issue: SimIssue, review: SimReview, state: str, body: str, commit_id: str
    ) -> None:
        now = self.clock.now()
        review.state, review.body, review.commit_id = state, body, commit_id
        review.submitted_at = review.updated_at = now
        # Only a reviewer's latest verdict is official, and only with write access
        # (models/issues/review.go SubmitReview, IsOfficialReviewer without branch
        # protection). A verdict on a commit other than the head is stale from the
        # start (Forgejo compares the diffs; here any other commit counts as changed).
        review.official = review.stale = False
        if state in VERDICTS:
            self._clear_official(issue, review.user)
            review.official = self._may_write(issue, review.user)
            assert issue.pull is not None
            review.stale = commit_id != issue.pull.head_sha
        if state != "COMMENT" or not review.comment_ids:
            self._clear_review_request(issue, review.user)
        item = self._timeline_item(issue, "review", review.user, body=body, review_id=review.id)
        texts = [body, *(c.body for c in self.review_comments(review.id))]
        mentioned = {login for text in texts for login in find_mentions(text)}
        audience = notes.broadcast_audience(self.state, issue) | mentioned
        self._deliver(issue, review.user, audience, item.id)
        event = {"APPROVED": "approved", "REQUEST_CHANGES": "rejected", "COMMENT": "comment"}[state]
        self._emit_pull(
            f"pull_request_review_{event}",
            "reviewed",
            issue,
            review.user,
            event=f"pull_request_{event}",
            review={"type": f"pull_request_review_{event}", "content": body},
            requested_reviewer=self.render.user(review.user),
        )

    def _may_write(self, issue: SimIssue, login: str) -> bool:
        return has_access(self.state, self.state.repos[issue.repo], login, "write")

    def _clear_official(self, issue: SimIssue, login: str) -> None:
        for review in self.state.pr_reviews(issue.repo, issue.number):
            if review.user == login:
                review.official = False

    def _mark_reviews_stale(self, issue: SimIssue, head: str) -> None:
        """A push moved the head: every review is stale but those of the new head
        (MarkReviewsAsStale, then MarkReviewsAsNotStale, in services/pull/pull.go).
        Forgejo skips this when the diff to the merge base stayed the same; here every
        move counts as a change."""
        for review in self.state.pr_reviews(issue.repo, issue.number):
            review.stale = review.commit_id != head

    def _open_pulls(self, repo: SimRepo) -> list[SimIssue]:
        return [
            i for i in self.state.issues.values()
            if i.repo == repo.key and i.pull is not None and i.state == "open"
        ]  # fmt: skip

    def _recheck(self, repo: SimRepo, pull: SimPull) -> None:
        """The pull checker after a push: conflicts and merge base against the base now."""
        base_sha = repo.branches.get(pull.base_ref, "")
        pull.mergeable = not self.git.conflicts(repo.full_name, base_sha, pull.head_sha)
        pull.merge_base = self.git.merge_base(repo.full_name, base_sha, pull.head_sha) or (
            pull.merge_base
        )

    def _full_sha(self, repo: SimRepo, sha: str) -> str:
        """A short sha git knows, made full (CreateCommitStatus does the same)."""
        if len(sha) >= 40 or not self.git.has(repo.full_name):
            return sha
        commit = f"{sha}^{{commit}}"
        full = self.git.git(repo.full_name, "rev-parse", "--verify", "--quiet", commit, check=False)
        return full.strip() or sha

    def _is_commit(self, repo: SimRepo, sha: str) -> bool:
        """A full sha git knows, or one a branch or pull request points at (made-up heads)."""
        pulls = [i.pull for i in self.state.issues.values() if i.repo == repo.key and i.pull]
        if sha in {*repo.branches.values(), *(p.head_sha for p in pulls)}:
            return True
        return len(sha) == 40 and self.git.has_commit(repo.full_name, sha)

    def _clear_review_request(self, issue: SimIssue, login: str) -> None:
        for review in self.state.pr_reviews(issue.repo, issue.number):
            if review.user == login and review.state == "REQUEST_REVIEW":
                del self.state.reviews[review.id]

    def _unpushed_head(self, target: SimRepo, head: str, base: str) -> str:
        """A head branch nobody pushed: with git, one commit on the base adding the file
        the made-up diff shows; without git, a made-up sha."""
        if not self.git.has(target.full_name):
            return fake_sha(target.full_name, head)
        parent = self.git.branches(target.full_name).get(base, "")
        content = f"work on {head}\n".encode()
        commit = FileCommit(
            f"refs/heads/{head}", parent, f"{head}.txt", content, f"Work on {head}",
            SIM_IDENTITY, self.clock.now(),
        )  # fmt: skip
        return self.git.commit(target.full_name, commit)

    def _check_new_pull(self, repo: SimRepo, head: str, base: str) -> None:
        if head == base:
            raise SimError(422, "head and base are the same branch")
        if base not in repo.branches:
            raise SimError(404, f"base branch {base!r} does not exist")
        for issue in self.state.issues.values():
            pull = issue.pull
            same_targets = pull is not None and (pull.head_ref, pull.base_ref) == (head, base)
            if issue.repo == repo.key and same_targets and issue.state == "open":
                raise SimError(
                    409, f"pull request already exists for these targets: #{issue.number}"
                )

    # -- internals: notifications and webhooks -------------------------------------------

    def _deliver(
        self, issue: SimIssue, actor: str, recipients: Iterable[str], comment_id: int = 0
    ) -> None:
        notes.deliver(self.state, issue, actor, recipients, comment_id, self.clock.now())

    def _mark_read_for(self, login: str, issue: SimIssue) -> None:
        for thread in self.state.threads.values():
            key = (thread.user, thread.repo, thread.number)
            if key == (login.lower(), issue.repo, issue.number):
                notes.set_status(thread, "read", self.clock.now())

    def _emit_issue(self, event_type: str, action: str, issue: SimIssue, sender: str) -> None:
        payload = self.render.issue_payload(action, issue, sender)
        self._webhooks.emit(HookEvent("issues", event_type, payload))

    def _emit_pull(
        self,
        event_type: str,
        action: str,
        issue: SimIssue,
        sender: str,
        event: str = "pull_request",
        **extra: Any,
    ) -> None:
        payload = self.render.pull_payload(action, issue, sender) | extra
        self._webhooks.emit(HookEvent(event, event_type, payload))

    def _emit_comment(
        self, action: str, comment: SimComment, sender: str, body_before: str | None = None
    ) -> None:
        payload = self.render.comment_payload(action, comment, sender, body_before)
        event_type = "pull_request_comment" if payload["is_pull"] else "issue_comment"
        self._webhooks.emit(HookEvent("issue_comment", event_type, payload))


def _check_review(
    state: str, body: str, comments: Sequence[Mapping[str, Any]], own_pull: bool
) -> None:
    if state == "REQUEST_CHANGES" and not body.strip():
        raise SimError(422, "review event REQUEST_CHANGES needs a body")
    if state == "COMMENT" and not body.strip() and not comments:
        raise SimError(422, "review event COMMENT needs a body or comments")
    if own_pull and state in ("APPROVED", "REQUEST_CHANGES"):
        verb = "approve" if state == "APPROVED" else "reject"
        raise SimError(422, f"{verb} your own pull is not allowed")


def _check_mergeable(issue: SimIssue, pull: SimPull, style: str, may_merge: bool) -> None:
    """The form binding, then services/pull/check.go CheckPullMergeable, in its order."""
    if style not in MERGE_STYLES:
        raise SimError(422, f"unknown merge style {style!r}")
    if pull.merged:
        raise SimError(405, "PR already merged")
    if issue.state != "open":
        raise SimError(404, "the pull request is closed")  # ErrIsClosed → NotFound
    if not may_merge:
        raise SimError(405, "User not allowed to merge PR")
    if style == "manually-merged":
        return
    if issue.draft:
        raise SimError(405, "Work in progress PRs cannot be merged")
    if not pull.mergeable:
        raise SimError(405, "PR not in mergeable state: it conflicts with the base")


def _default_merge_message(target: SimRepo, issue: SimIssue, style: str) -> str:
    """GetDefaultMergeMessage's title line (the API leaves out its body)."""
    pull = issue.pull
    assert pull is not None
    if style == "squash":
        return f"{issue.title} (#{issue.number})"
    return (
        f"Merge pull request '{issue.title}' (#{issue.number}) "
        f"from {pull.head_ref} into {pull.base_ref}"
    )


def _git_identity(user: SimUser) -> tuple[str, str]:
    return user.login, f"{user.key}@forgejo.invalid"


def _synthetic_diff(head: str) -> str:
    return (
        f"diff --git a/{head}.txt b/{head}.txt\n"
        "new file mode 100644\n"
        "index 0000000..e69de29\n"
        "--- /dev/null\n"
        f"+++ b/{head}.txt\n"
        "@@ -0,0 +1 @@\n"
        f"+work on {head}\n"
    )
