"""Forgejo REST client: one aiohttp session per agent token, retries, pagination.

Every call goes through `_send`, which applies the timeout, the retry policy
(connection errors, timeouts, 429 and 5xx are retried with exponential backoff
and jitter, or after `Retry-After` when the server says so; other 4xx never)
and turns every failure into a ForgejoError. The token is read again for each
request, so a rotated token file takes effect without a restart, and it never
appears in an error or a log line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from claude_hooks.forgejo.models import (
    CombinedStatus,
    Comment,
    ForgejoDataError,
    InlineComment,
    Issue,
    NotificationThread,
    PullRequest,
    Repository,
    Review,
    ReviewComment,
    TimelineEvent,
    User,
    worst_state,
)

log = structlog.get_logger(__name__)

API_PREFIX = "/api/v1"
PAGE_LIMIT = 50  # Forgejo's [api] MAX_RESPONSE_ITEMS default; larger limits are cut to it
MAX_PAGES = 1000  # a runaway guard, far beyond any real listing
RETRY_AFTER_CEILING = 300.0  # a Retry-After beyond this is a misconfigured proxy, not advice
MESSAGE_LIMIT = 300

T = TypeVar("T")
TokenSource = Callable[[], str] | str
RequestHook = Callable[[str, str, int | None, float], None]
Query = Mapping[str, str | int | Sequence[str]]


REPO_SCOPED = "/repos/{owner}/{repo}"


class ForgejoError(Exception):
    """A Forgejo call failed; says which call and why, never with the token."""

    def __init__(self, method: str, path: str, status: int | None, message: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.message = message
        self.retry_after: float | None = None
        super().__init__(str(self))

    def __str__(self) -> str:
        status = "no response" if self.status is None else f"HTTP {self.status}"
        return f"Forgejo {self.method} {self.path}: {status}: {self.message}"

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500


class RepositoryNotServed(ForgejoError):
    """A call about a repository outside forgejo.repositories: refused before it is sent."""

    def __init__(self, repo: str, method: str = "", path: str = "") -> None:
        self.repo = repo
        super().__init__(method, path, None, f"repository {repo} is not in forgejo.repositories")

    def __str__(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        return False


class TokenUnreadable(ForgejoError):
    """This account's token file could not be read: nothing was sent, and Forgejo may be
    fine. Retried by the client (a file mid-rotation), but never an outage of Forgejo:
    one agent's missing file must not hold back the others (poller.is_outage)."""

    def __init__(self, method: str, path: str, file: str | None, reason: str) -> None:
        self.file = file
        where = f" {file}" if file else ""
        super().__init__(method, path, None, f"cannot read the token{where}: {reason}")


@dataclass(frozen=True)
class _Response:
    method: str
    path: str
    status: int
    body: bytes
    total_count: int | None

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            raise self._bad(f"not JSON: {self.text()[:80]!r}") from None

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def one(self, parse: Callable[[Any], T]) -> T:
        """The body as one model; a body Forgejo would never send is a ForgejoError."""
        return self._parse(parse, self.json())

    def many(self, parse: Callable[[Any], T]) -> list[T]:
        data = self.json()
        if data is None:
            return []
        if not isinstance(data, list):
            raise self._bad(f"expected a list, got {type(data).__name__}")
        return [self._parse(parse, item) for item in data]

    def _parse(self, parse: Callable[[Any], T], data: Any) -> T:
        try:
            return parse(data)
        except (ForgejoDataError, AttributeError, TypeError, KeyError, ValueError) as exc:
            raise self._bad(str(exc)) from None

    def _bad(self, why: str) -> ForgejoError:
        return ForgejoError(self.method, self.path, self.status, f"unexpected answer: {why}")


def rfc3339(moment: datetime) -> str:
    """Forgejo parses RFC3339; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_repo(repo: str) -> tuple[str, str]:
    owner, sep, name = repo.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise ValueError(f"repository must be 'owner/name', got {repo!r}")
    return owner, name


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; the HTTP-date form is not honoured (None)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CEILING)


def error_message(body: bytes, token: str) -> str:
    """Forgejo's JSON `message` (or the start of a proxy's text), with the token hidden."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        text = data["message"]
    text = " ".join(text.split())[:MESSAGE_LIMIT] or "(empty body)"
    return text.replace(token, "***") if token else text


class _RetryAfterOrBackoff:
    """Wait what the server asked for, else exponential backoff with jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._backoff = wait_exponential_jitter(
            multiplier=initial, max=maximum, jitter=min(1.0, maximum)
        )

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, ForgejoError) and error.retry_after is not None:
            return error.retry_after
        return self._backoff(state)


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, ForgejoError) and error.retryable


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, ForgejoError):
        log.warning(
            "forgejo_retry",
            method=error.method,
            path=error.path,
            status=error.status,
            attempt=state.attempt_number,
            wait=round(state.upcoming_sleep, 3),
            error=error.message,
        )


class ForgejoClient:
    """Talks to one Forgejo as one user (one token)."""

    def __init__(
        self,
        base_url: str,
        token: TokenSource,
        *,
        timeout: float = 30.0,
        max_attempts: int = 5,
        max_backoff: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        initial_backoff: float = 1.0,
        on_request: RequestHook | None = None,
        serves: Callable[[str], bool] | None = None,
        token_file: Path | None = None,
    ) -> None:
        self._api = base_url.rstrip("/") + API_PREFIX
        self._token_file = token_file  # named when the token cannot be read
        # The daemon's clients pass forgejo.repositories here: the last line of defence,
        # so no code path reads or writes a repository the operator did not configure.
        self._serves = serves
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_attempts = max(1, max_attempts)
        self._wait = _RetryAfterOrBackoff(min(initial_backoff, max_backoff), max_backoff)
        self._session = session
        self._owns_session = session is None
        self._on_request = on_request

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    # -- the user -----------------------------------------------------------------

    async def current_user(self) -> User:
        return (await self._call("GET", "/user")).one(User.from_json)

    async def repo_permission(self, repo: str, login: str) -> str | None:
        """The user's access level, or None when Forgejo will not say (callers fail closed)."""
        template = "/repos/{owner}/{repo}/collaborators/{collaborator}/permission"
        try:
            response = await self._call("GET", template, *split_repo(repo), login)
        except ForgejoError as error:
            if error.status in (403, 404):
                return None
            raise
        permission = response.one(lambda data: data.get("permission"))
        return permission if isinstance(permission, str) and permission else None

    # -- notifications -------------------------------------------------------------

    async def unread_count(self) -> int:
        response = await self._call("GET", "/notifications/new")
        return response.one(lambda data: int(data["new"]))

    async def notifications(
        self, since: datetime | None = None, *, all: bool = False
    ) -> list[NotificationThread]:
        query: dict[str, str] = {}
        if since is not None:
            query["since"] = rfc3339(since)
        if all:
            query["all"] = "true"
        return await self._paged(NotificationThread.from_json, "/notifications", query=query)

    async def mark_thread_read(self, thread_id: int) -> None:
        query = {"to-status": "read"}
        await self._call("PATCH", "/notifications/threads/{id}", thread_id, query=query)

    # -- repositories, issues, comments ---------------------------------------------

    async def get_repo(self, repo: str) -> Repository:
        response = await self._call("GET", "/repos/{owner}/{repo}", *split_repo(repo))
        return response.one(Repository.from_json)

    async def get_issue(self, repo: str, number: int) -> Issue:
        template = "/repos/{owner}/{repo}/issues/{index}"
        response = await self._call("GET", template, *split_repo(repo), number)
        return response.one(Issue.from_json)

    async def list_comments(
        self, repo: str, number: int, since: datetime | None = None
    ) -> list[Comment]:
        """Plain comments, oldest first; `since` is inclusive on updated_at (not paged)."""
        query = {"since": rfc3339(since)} if since is not None else {}
        template = "/repos/{owner}/{repo}/issues/{index}/comments"
        response = await self._call("GET", template, *split_repo(repo), number, query=query)
        return response.many(Comment.from_json)

    async def get_comment(self, repo: str, comment_id: int) -> Comment | None:
        template = "/repos/{owner}/{repo}/issues/comments/{id}"
        try:
            response = await self._call("GET", template, *split_repo(repo), comment_id)
        except ForgejoError as error:
            if error.status == 404:
                return None
            raise
        # 204: the id is a timeline item, not a plain comment
        return response.one(Comment.from_json) if response.status == 200 else None

    async def create_comment(self, repo: str, number: int, body: str) -> Comment:
        template = "/repos/{owner}/{repo}/issues/{index}/comments"
        payload = {"body": body}
        response = await self._call("POST", template, *split_repo(repo), number, json_body=payload)
        return response.one(Comment.from_json)

    async def edit_comment(self, repo: str, comment_id: int, body: str) -> Comment:
        template = "/repos/{owner}/{repo}/issues/comments/{id}"
        payload = {"body": body}
        response = await self._call(
            "PATCH", template, *split_repo(repo), comment_id, json_body=payload
        )
        return response.one(Comment.from_json)

    async def react_to_issue(self, repo: str, number: int, content: str) -> None:
        template = "/repos/{owner}/{repo}/issues/{index}/reactions"
        payload = {"content": content}
        await self._call("POST", template, *split_repo(repo), number, json_body=payload)

    async def react_to_comment(self, repo: str, comment_id: int, content: str) -> None:
        template = "/repos/{owner}/{repo}/issues/comments/{id}/reactions"
        payload = {"content": content}
        await self._call("POST", template, *split_repo(repo), comment_id, json_body=payload)

    async def timeline(
        self, repo: str, number: int, since: datetime | None = None
    ) -> list[TimelineEvent]:
        query = {"since": rfc3339(since)} if since is not None else {}
        template = "/repos/{owner}/{repo}/issues/{index}/timeline"
        return await self._paged(
            TimelineEvent.from_json, template, *split_repo(repo), number, query=query
        )

    # -- pull requests ------------------------------------------------------------------

    async def get_pull(self, repo: str, number: int) -> PullRequest:
        template = "/repos/{owner}/{repo}/pulls/{index}"
        response = await self._call("GET", template, *split_repo(repo), number)
        return response.one(PullRequest.from_json)

    async def pull_diff(self, repo: str, number: int) -> str:
        template = "/repos/{owner}/{repo}/pulls/{index}.{diffType}"
        return (await self._call("GET", template, *split_repo(repo), number, "diff")).text()

    async def list_pulls(self, repo: str, state: str = "open") -> list[PullRequest]:
        template = "/repos/{owner}/{repo}/pulls"
        return await self._paged(
            PullRequest.from_json, template, *split_repo(repo), query={"state": state}
        )

    async def create_pull(
        self, repo: str, *, head: str, base: str, title: str, body: str
    ) -> PullRequest:
        payload = {"head": head, "base": base, "title": title, "body": body}
        template = "/repos/{owner}/{repo}/pulls"
        response = await self._call("POST", template, *split_repo(repo), json_body=payload)
        return response.one(PullRequest.from_json)

    async def edit_pull(
        self, repo: str, number: int, *, title: str | None = None, body: str | None = None
    ) -> PullRequest:
        payload = {k: v for k, v in (("title", title), ("body", body)) if v is not None}
        template = "/repos/{owner}/{repo}/pulls/{index}"
        response = await self._call("PATCH", template, *split_repo(repo), number, json_body=payload)
        return response.one(PullRequest.from_json)

    async def merge_pull(
        self,
        repo: str,
        number: int,
        *,
        style: str,
        head_commit_id: str | None,
        delete_branch: bool,
    ) -> bool:
        """True when merged; False when Forgejo refuses (405 not mergeable, 409 stale head)."""
        payload: dict[str, Any] = {"Do": style, "delete_branch_after_merge": delete_branch}
        if head_commit_id:
            payload["head_commit_id"] = head_commit_id
        template = "/repos/{owner}/{repo}/pulls/{index}/merge"
        try:
            await self._call("POST", template, *split_repo(repo), number, json_body=payload)
        except ForgejoError as error:
            if error.status in (405, 409):
                log.info("forgejo_merge_refused", repo=repo, number=number, reason=error.message)
                return False
            raise
        return True

    # -- commit statuses --------------------------------------------------------------------

    async def combined_status(self, repo: str, ref: str) -> CombinedStatus:
        """Each context's latest status on `ref` (a sha or branch), every page of them.

        Forgejo combines only the page it answers, so the state is combined again
        over all pages here.
        """
        template = "/repos/{owner}/{repo}/commits/{ref}/status"
        pages: list[CombinedStatus] = []
        for page in range(1, MAX_PAGES + 1):
            query = {"page": page, "limit": PAGE_LIMIT}
            response = await self._call("GET", template, *split_repo(repo), ref, query=query)
            pages.append(response.one(CombinedStatus.from_json))
            seen = sum(len(p.statuses) for p in pages)
            total = response.total_count
            if len(pages[-1].statuses) < PAGE_LIMIT or (total is not None and seen >= total):
                break
        reported = [p for p in pages if p.statuses]
        if not reported:
            return pages[0]
        return CombinedStatus(
            state=worst_state(p.state for p in reported),
            sha=reported[0].sha,
            statuses=tuple(s for p in reported for s in p.statuses),
        )

    # -- reviews ----------------------------------------------------------------------------

    async def list_reviews(self, repo: str, number: int) -> list[Review]:
        template = "/repos/{owner}/{repo}/pulls/{index}/reviews"
        return await self._paged(Review.from_json, template, *split_repo(repo), number)

    async def review_comments(self, repo: str, number: int, review_id: int) -> list[ReviewComment]:
        template = "/repos/{owner}/{repo}/pulls/{index}/reviews/{id}/comments"
        response = await self._call("GET", template, *split_repo(repo), number, review_id)
        return response.many(ReviewComment.from_json)

    async def create_review(
        self,
        repo: str,
        number: int,
        *,
        event: str,
        body: str,
        commit_id: str | None,
        comments: Sequence[InlineComment] = (),
    ) -> Review:
        payload: dict[str, Any] = {
            "event": event,
            "body": body,
            "comments": [inline_comment_json(comment) for comment in comments],
        }
        if commit_id:
            payload["commit_id"] = commit_id
        template = "/repos/{owner}/{repo}/pulls/{index}/reviews"
        response = await self._call("POST", template, *split_repo(repo), number, json_body=payload)
        return response.one(Review.from_json)

    async def delete_review(self, repo: str, number: int, review_id: int) -> None:
        template = "/repos/{owner}/{repo}/pulls/{index}/reviews/{id}"
        await self._call("DELETE", template, *split_repo(repo), number, review_id)

    async def request_reviewers(self, repo: str, number: int, reviewers: Sequence[str]) -> None:
        template = "/repos/{owner}/{repo}/pulls/{index}/requested_reviewers"
        payload = {"reviewers": list(reviewers)}
        await self._call("POST", template, *split_repo(repo), number, json_body=payload)

    # -- transport ------------------------------------------------------------------------------

    async def _paged(
        self,
        parse: Callable[[Any], T],
        template: str,
        *args: str | int,
        query: Query | None = None,
    ) -> list[T]:
        """Every item of a paged list: pages of PAGE_LIMIT until a short page or the total."""
        items: list[T] = []
        for page in range(1, MAX_PAGES + 1):
            page_query = {**(query or {}), "page": page, "limit": PAGE_LIMIT}
            response = await self._call("GET", template, *args, query=page_query)
            batch = response.many(parse)
            items.extend(batch)
            total = response.total_count
            if len(batch) < PAGE_LIMIT or (total is not None and len(items) >= total):
                break
        return items

    async def _call(
        self,
        method: str,
        template: str,
        *args: str | int,
        query: Query | None = None,
        json_body: Any = None,
    ) -> _Response:
        path = fill_template(template, args)
        if self._serves is not None and template.startswith(REPO_SCOPED):
            repo = f"{args[0]}/{args[1]}"
            if not self._serves(repo):
                raise RepositoryNotServed(repo, method, path)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception(_is_retryable),
            before_sleep=_log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._send(method, template, path, query, json_body)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _send(
        self, method: str, template: str, path: str, query: Query | None, json_body: Any
    ) -> _Response:
        started = time.monotonic()
        status: int | None = None
        try:
            token = self._read_token(method, path)
            session = self._ensure_session()
            async with session.request(
                method,
                self._api + path,
                params=encode_query(query),
                json=json_body,
                headers={"Authorization": f"token {token}", "Accept": "application/json"},
                timeout=self._timeout,
            ) as raw:
                status = raw.status
                body = await raw.read()
                response = _Response(method, path, status, body, _total_count(raw.headers))
                if status >= 400:
                    error = ForgejoError(method, path, status, error_message(body, token))
                    error.retry_after = parse_retry_after(raw.headers.get("Retry-After"))
                    raise error
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ForgejoError(method, path, None, f"{type(exc).__name__}: {reason}") from None
        finally:
            if self._on_request is not None:
                self._on_request(method, template, status, time.monotonic() - started)

    def _read_token(self, method: str, path: str) -> str:
        if isinstance(self._token, str):
            return self._token.strip()
        try:
            return self._token().strip()
        except Exception as exc:  # a token file mid-rotation: retried like a connection error
            file = self._token_file or getattr(exc, "filename", None)
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise TokenUnreadable(method, path, str(file) if file else None, reason) from None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session


def fill_template(template: str, args: Sequence[str | int]) -> str:
    """'/repos/{owner}/{repo}' + ('a', 'b') → '/repos/a/b', each value URL-quoted."""
    names = [part.split("}", 1)[0] for part in template.split("{")[1:]]
    if len(names) != len(args):
        raise ValueError(f"{template} takes {len(names)} values, got {len(args)}")
    values = {name: quote(str(value), safe="") for name, value in zip(names, args, strict=True)}
    return template.format(**values)


def encode_query(query: Query | None) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in (query or {}).items():
        values = [value] if isinstance(value, str | int) else list(value)
        pairs.extend((key, str(item)) for item in values)
    return pairs


def inline_comment_json(comment: InlineComment) -> dict[str, Any]:
    return {
        "path": comment.path,
        "body": comment.body,
        "new_position": comment.new_position,
        "old_position": comment.old_position,
    }


def _total_count(headers: Mapping[str, str]) -> int | None:
    value = headers.get("X-Total-Count")
    return int(value) if value and value.isdigit() else None


__all__ = ["ForgejoClient", "ForgejoError", "TokenUnreadable", "rfc3339", "split_repo"]
