"""The simulator's REST routes: one handler per Forgejo operation the daemon uses.

Each handler checks what Forgejo checks (access, required fields), calls the
same ForgejoSim action a test would call, and answers with Forgejo's status code
and JSON (render.py). Authentication happens before, in ForgejoSim's middleware,
which puts the caller's login in request[LOGIN].
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from claude_hooks.demo.sim import notifications as notes
from claude_hooks.demo.sim.gateway import LOGIN
from claude_hooks.demo.sim.render import Renderer
from claude_hooks.demo.sim.state import SimError, SimIssue, SimRepo, SimState, has_access

if TYPE_CHECKING:
    from claude_hooks.demo.sim.forgejo import ForgejoSim

DEFAULT_PAGE_SIZE = 30  # [api] DEFAULT_PAGING_NUM
MAX_PAGE_SIZE = 50  # [api] MAX_RESPONSE_ITEMS
REPO = "/api/v1/repos/{owner}/{repo}"
ISSUE = REPO + r"/issues/{index:\d+}"
PULL = REPO + r"/pulls/{index:\d+}"


def api_routes(sim: ForgejoSim) -> list[web.RouteDef]:
    api = ApiHandlers(sim)
    return [
        web.get("/api/v1/user", api.current_user),
        web.get("/api/v1/notifications", api.list_notifications),
        web.put("/api/v1/notifications", api.mark_notifications),
        web.get("/api/v1/notifications/new", api.new_notifications),
        web.get(r"/api/v1/notifications/threads/{id:\d+}", api.get_thread),
        web.patch(r"/api/v1/notifications/threads/{id:\d+}", api.mark_thread),
        web.get(REPO, api.get_repo),
        web.get(REPO + "/collaborators/{collaborator}/permission", api.get_permission),
        web.get(ISSUE, api.get_issue),
        web.get(ISSUE + "/comments", api.list_comments),
        web.post(ISSUE + "/comments", api.create_comment),
        web.post(ISSUE + "/reactions", api.react_to_issue),
        web.get(ISSUE + "/timeline", api.timeline),
        web.get(REPO + r"/issues/comments/{id:\d+}", api.get_comment),
        web.patch(REPO + r"/issues/comments/{id:\d+}", api.edit_comment),
        web.post(REPO + r"/issues/comments/{id:\d+}/reactions", api.react_to_comment),
        web.get(REPO + "/pulls", api.list_pulls),
        web.post(REPO + "/pulls", api.create_pull),
        web.get(PULL + r".{diffType:diff|patch}", api.pull_diff),
        web.get(PULL, api.get_pull),
        web.patch(PULL, api.edit_pull),
        web.get(PULL + "/reviews", api.list_reviews),
        web.post(PULL + "/reviews", api.create_review),
        web.get(PULL + r"/reviews/{id:\d+}", api.get_review),
        web.delete(PULL + r"/reviews/{id:\d+}", api.delete_review),
        web.get(PULL + r"/reviews/{id:\d+}/comments", api.review_comments),
        web.post(PULL + r"/reviews/{id:\d+}/dismissals", api.dismiss_review),
        web.post(PULL + "/requested_reviewers", api.request_reviewers),
        web.post(PULL + "/merge", api.merge),
        web.post(REPO + "/statuses/{sha}", api.create_status),
        web.get(REPO + "/commits/{ref}/status", api.combined_status),
    ]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def paged(items: Sequence[Any], query: Mapping[str, str]) -> web.Response:
    """One page of a list, with X-Total-Count as Forgejo sends it."""
    page = _positive_int(query.get("page"), 1)
    limit = min(_positive_int(query.get("limit"), DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)
    chunk = list(items[(page - 1) * limit : page * limit])
    response = json_response(chunk)
    response.headers["X-Total-Count"] = str(len(items))
    return response


def _positive_int(value: str | None, default: int) -> int:
    try:
        number = int(value) if value else default
    except ValueError:
        return default
    return number if number > 0 else default


def _text(data: Mapping[str, Any], key: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise SimError(422, f"[{key}]: Required" if value is None else f"[{key}]: must be a string")
    return value


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        raise SimError(422, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise SimError(422, "the request body must be a JSON object")
    return data


class ApiHandlers:
    def __init__(self, sim: ForgejoSim) -> None:
        self.sim = sim

    @property
    def state(self) -> SimState:
        return self.sim.state

    @property
    def render(self) -> Renderer:
        return self.sim.render

    # -- helpers -------------------------------------------------------------------------

    def _repo(self, request: web.Request, needed: str = "read") -> SimRepo:
        """The repository of the URL; 404 when the caller cannot see it, 403 if too weak."""
        info = request.match_info
        repo = self.state.repos.get(f"{info['owner']}/{info['repo']}".lower())
        login = request[LOGIN]
        if repo is None or not has_access(self.state, repo, login, "read"):
            raise SimError(404, f"repository {info['owner']}/{info['repo']} not found")
        if not has_access(self.state, repo, login, needed):
            raise SimError(403, f"{needed} access to {repo.full_name} is required")
        return repo

    def _issue(self, request: web.Request) -> tuple[SimRepo, SimIssue]:
        repo = self._repo(request)
        return repo, self.state.issue(repo.full_name, int(request.match_info["index"]))

    def _pull(self, request: web.Request) -> tuple[SimRepo, SimIssue]:
        repo = self._repo(request)
        issue, _ = self.state.pull(repo.full_name, int(request.match_info["index"]))
        return repo, issue

    def _may_write_or_own(self, repo: SimRepo, login: str, owner: str) -> bool:
        return login == owner or has_access(self.state, repo, login, "write")

    # -- user, notifications -------------------------------------------------------------

    async def current_user(self, request: web.Request) -> web.Response:
        return json_response(self.render.user(request[LOGIN]))

    async def list_notifications(self, request: web.Request) -> web.Response:
        q = request.query
        query = notes.thread_query(
            q.getall("status-types", []),
            q.getall("subject-type", []),
            show_all=notes.parse_bool(q.get("all")),
            default_statuses=("unread", "pinned"),
            since=notes.parse_time(q.get("since"), "since"),
            before=notes.parse_time(q.get("before"), "before"),
        )
        threads = notes.select_threads(self.state, request[LOGIN], query)
        return paged([self.render.thread(t) for t in threads], q)

    async def mark_notifications(self, request: web.Request) -> web.Response:
        q = request.query
        query = notes.thread_query(
            q.getall("status-types", []),
            (),
            show_all=notes.parse_bool(q.get("all")),
            default_statuses=("unread",),
            before=notes.parse_time(q.get("last_read_at"), "last_read_at"),
        )
        status = _to_status(q.get("to-status"))
        changed = notes.select_threads(self.state, request[LOGIN], query)
        for thread in changed:
            notes.set_status(thread, status, self.sim.clock.now())
        return json_response([self.render.thread(t) for t in changed], status=205)

    async def new_notifications(self, request: web.Request) -> web.Response:
        return json_response({"new": notes.unread_count(self.state, request[LOGIN])})

    async def get_thread(self, request: web.Request) -> web.Response:
        thread = notes.own_thread(self.state, request[LOGIN], int(request.match_info["id"]))
        return json_response(self.render.thread(thread))

    async def mark_thread(self, request: web.Request) -> web.Response:
        thread = notes.own_thread(self.state, request[LOGIN], int(request.match_info["id"]))
        status = _to_status(request.query.get("to-status"))
        notes.set_status(thread, status, self.sim.clock.now())
        return json_response(self.render.thread(thread), status=205)

    # -- repository ----------------------------------------------------------------------

    async def get_repo(self, request: web.Request) -> web.Response:
        return json_response(self.render.repo(self._repo(request), viewer=request[LOGIN]))

    async def get_permission(self, request: web.Request) -> web.Response:
        """200 only for site admins, repo admins, or a user asking about itself."""
        repo = self._repo(request)
        target = self.state.users.get(request.match_info["collaborator"].lower())
        if target is None:
            raise SimError(404, f"user {request.match_info['collaborator']!r} does not exist")
        caller = request[LOGIN]
        if caller != target.key and not has_access(self.state, repo, caller, "admin"):
            raise SimError(
                403,
                "Only admins can query all permissions, repo admins can query all repo "
                "permissions, collaborators can query only their own",
            )
        return json_response(self.render.permission(repo, target.login))

    # -- issues and comments -------------------------------------------------------------

    async def get_issue(self, request: web.Request) -> web.Response:
        return json_response(self.render.issue(self._issue(request)[1]))

    async def list_comments(self, request: web.Request) -> web.Response:
        """Plain comments, oldest first, `since`/`before` inclusive on updated_at; not paged."""
        _, issue = self._issue(request)
        comments = _updated_between(
            self.state.plain_comments(issue.repo, issue.number), request.query
        )
        return json_response([self.render.comment(c) for c in comments])

    async def create_comment(self, request: web.Request) -> web.Response:
        repo, issue = self._issue(request)
        body = _text(await _body(request), "body", required=True) or ""
        comment_id = self.sim.add_comment(repo.full_name, issue.number, request[LOGIN], body)
        return json_response(self.render.comment(self.state.comments[comment_id]), status=201)

    async def get_comment(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        item = self.state.comments.get(int(request.match_info["id"]))
        if item is None or item.repo != repo.key:
            raise SimError(404, f"comment {request.match_info['id']} not found")
        if item.type != "comment":
            return web.Response(status=204)  # a timeline item, not a plain comment
        return json_response(self.render.comment(item))

    async def edit_comment(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        comment = self.sim.comment(repo.full_name, int(request.match_info["id"]))
        login = request[LOGIN]
        if not self._may_write_or_own(repo, login, comment.user):
            raise SimError(403, "only the author or a user with write access may edit")
        body = _text(await _body(request), "body", required=True) or ""
        self.sim.edit_comment(repo.full_name, comment.id, body, editor=login)
        return json_response(self.render.comment(comment))

    async def react_to_issue(self, request: web.Request) -> web.Response:
        repo, issue = self._issue(request)
        content = _text(await _body(request), "content", required=True) or ""
        created = self.sim.react_to_issue(repo.full_name, issue.number, request[LOGIN], content)
        return self._reaction((issue.repo, issue.number), request[LOGIN], content, created)

    async def react_to_comment(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        comment = self.sim.comment(repo.full_name, int(request.match_info["id"]))
        content = _text(await _body(request), "content", required=True) or ""
        created = self.sim.react_to_comment(repo.full_name, comment.id, request[LOGIN], content)
        return self._reaction(("comment", comment.id), request[LOGIN], content, created)

    def _reaction(
        self, target: tuple[str, int | str], login: str, content: str, created: bool
    ) -> web.Response:
        reaction = next(
            r for r in self.state.reactions[target] if r.user == login and r.content == content
        )
        return json_response(self.render.reaction(reaction), status=201 if created else 200)

    async def timeline(self, request: web.Request) -> web.Response:
        _, issue = self._issue(request)
        items = _updated_between(self.state.timeline(issue.repo, issue.number), request.query)
        return paged([self.render.timeline_item(i) for i in items], request.query)

    # -- pull requests -------------------------------------------------------------------

    async def list_pulls(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        state = request.query.get("state") or "open"
        pulls = [
            i
            for i in self.state.issues.values()
            if i.repo == repo.key and i.is_pull and state in ("all", i.state)
        ]
        pulls.sort(key=lambda i: i.number, reverse=True)
        return paged([self.render.pull(i) for i in pulls], request.query)

    async def create_pull(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        data = await _body(request)
        head = _text(data, "head", required=True) or ""
        base = _text(data, "base", required=True) or ""
        title = _text(data, "title", required=True) or ""
        body = _text(data, "body") or ""
        head = head.split(":", 1)[1] if head.lower().startswith(repo.owner.lower() + ":") else head
        number = self.sim.create_pull(
            repo.full_name, request[LOGIN], title, body, head=head, base=base
        )
        return json_response(self.render.pull(self.state.issue(repo.full_name, number)), 201)

    async def get_pull(self, request: web.Request) -> web.Response:
        return json_response(self.render.pull(self._pull(request)[1]))

    async def edit_pull(self, request: web.Request) -> web.Response:
        repo, issue = self._pull(request)
        if not self._may_write_or_own(repo, request[LOGIN], issue.user):
            raise SimError(403, "only the author or a user with write access may edit")
        data = await _body(request)
        self.sim.edit_issue(
            repo.full_name, issue.number, title=_text(data, "title"), body=_text(data, "body")
        )
        return json_response(self.render.pull(issue), status=201)

    async def pull_diff(self, request: web.Request) -> web.Response:
        repo, issue = self._pull(request)
        assert issue.pull is not None
        text = self.sim.pull_diff(repo.full_name, issue.number)
        if request.match_info["diffType"] == "patch":
            text = f"From {issue.pull.head_sha} Mon Sep 17 00:00:00 2001\n" + text
        return web.Response(text=text, content_type="text/plain")

    async def merge(self, request: web.Request) -> web.Response:
        repo, issue = self._pull(request)
        data = await _body(request)
        style = _text(data, "Do", required=True) or ""
        self.sim.merge(
            repo.full_name,
            issue.number,
            request[LOGIN],
            style=style,
            may_merge=has_access(self.state, repo, request[LOGIN], "write"),
            head_commit_id=_text(data, "head_commit_id"),
            delete_branch=bool(data.get("delete_branch_after_merge")),
            title=_text(data, "MergeTitleField") or "",
            message=_text(data, "MergeMessageField") or "",
            merge_commit_id=_text(data, "MergeCommitID") or "",
        )
        return web.Response(status=200)

    # -- reviews -------------------------------------------------------------------------

    def _visible(self, request: web.Request, issue: SimIssue) -> list[Any]:
        """Pending reviews are only shown to their author (and site admins)."""
        login = request[LOGIN]
        admin = self.state.users[login].admin
        return [
            r
            for r in self.state.pr_reviews(issue.repo, issue.number)
            if r.state != "PENDING" or r.user == login or admin
        ]

    async def list_reviews(self, request: web.Request) -> web.Response:
        _, issue = self._pull(request)
        reviews = self._visible(request, issue)
        return paged([self.render.review(r) for r in reviews], request.query)

    async def create_review(self, request: web.Request) -> web.Response:
        repo, issue = self._pull(request)
        data = await _body(request)
        comments = data.get("comments") or []
        if not isinstance(comments, list) or not all(isinstance(c, dict) for c in comments):
            raise SimError(422, "[comments]: must be a list of objects")
        for comment in comments:
            _text(comment, "path", required=True)
            _text(comment, "body", required=True)
        review_id = self.sim.submit_review(
            repo.full_name,
            issue.number,
            request[LOGIN],
            event=_text(data, "event") or "",
            body=_text(data, "body") or "",
            comments=comments,
            commit_id=_text(data, "commit_id") or None,
        )
        return json_response(self.render.review(self.state.reviews[review_id]))

    def _review(self, request: web.Request) -> tuple[SimRepo, SimIssue, Any]:
        repo, issue = self._pull(request)
        review_id = int(request.match_info["id"])
        review = next((r for r in self._visible(request, issue) if r.id == review_id), None)
        if review is None:
            raise SimError(404, f"review {review_id} not found")
        return repo, issue, review

    async def get_review(self, request: web.Request) -> web.Response:
        return json_response(self.render.review(self._review(request)[2]))

    async def delete_review(self, request: web.Request) -> web.Response:
        repo, issue, review = self._review(request)
        login = request[LOGIN]
        if review.user != login and not self.state.users[login].admin:
            raise SimError(403, "only the reviewer may delete a review")
        self.sim.delete_review(repo.full_name, issue.number, review.id)
        return web.Response(status=204)

    async def review_comments(self, request: web.Request) -> web.Response:
        review = self._review(request)[2]
        comments = self.sim.review_comments(review.id)
        return json_response([self.render.review_comment(c) for c in comments])

    async def dismiss_review(self, request: web.Request) -> web.Response:
        repo, issue, review = self._review(request)
        if not has_access(self.state, repo, request[LOGIN], "admin"):
            raise SimError(403, "Must be repo admin")
        data = await _body(request)
        self.sim.dismiss_review(
            repo.full_name, issue.number, review.id,
            message=_text(data, "message") or "", priors=data.get("priors") is True,
        )  # fmt: skip
        return json_response(self.render.review(review))

    async def request_reviewers(self, request: web.Request) -> web.Response:
        repo, issue = self._pull(request)
        login = request[LOGIN]
        if not self._may_write_or_own(repo, login, issue.user):
            raise SimError(403, "only the author or a user with write access may request")
        reviewers = (await _body(request)).get("reviewers") or []
        if not isinstance(reviewers, list) or not all(isinstance(r, str) for r in reviewers):
            raise SimError(422, "[reviewers]: must be a list of logins")
        ids = [self.sim.request_review(repo.full_name, issue.number, login, r) for r in reviewers]
        return json_response([self.render.review(self.state.reviews[i]) for i in ids], 201)

    # -- commit statuses -----------------------------------------------------------------

    async def create_status(self, request: web.Request) -> web.Response:
        repo = self._repo(request, "write")  # reqRepoWriter(unit.TypeCode)
        data = await _body(request)
        text = {key: _text(data, key) or "" for key in ("context", "description", "target_url")}
        state = _text(data, "state") or ""
        status = self.sim.set_status(
            repo.full_name, request.match_info["sha"], state, creator=request[LOGIN], **text
        )
        return json_response(self.render.commit_status(status), status=201)

    async def combined_status(self, request: web.Request) -> web.Response:
        """One page of each context's latest status; X-Total-Count counts the contexts."""
        repo = self._repo(request)
        sha = self.sim.resolve_ref(repo.full_name, request.match_info["ref"])
        latest = self.state.latest_statuses(repo.key, sha)
        page = _positive_int(request.query.get("page"), 1)
        limit = min(_positive_int(request.query.get("limit"), DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)
        chunk = latest[(page - 1) * limit : page * limit]
        response = json_response(self.render.combined_status(repo, chunk, viewer=request[LOGIN]))
        if chunk:  # Forgejo sends no count with the empty answer
            response.headers["X-Total-Count"] = str(len(latest))
        return response


def _to_status(value: str | None) -> str:
    status = (value or "read").lower()
    if status not in notes.STATUSES:
        raise SimError(422, f"to-status must be one of {notes.STATUSES}, got {value!r}")
    return status


def _updated_between(items: Sequence[Any], query: Mapping[str, str]) -> list[Any]:
    since = notes.parse_time(query.get("since"), "since")
    before = notes.parse_time(query.get("before"), "before")
    return [
        item
        for item in items
        if (since is None or item.updated_at >= since)
        and (before is None or item.updated_at <= before)
    ]
