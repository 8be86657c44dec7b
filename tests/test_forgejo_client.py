"""ForgejoClient against the Forgejo simulator: every method, retries, errors, pagination.

Every request made here is checked against Forgejo's OpenAPI description when
the test ends (the forgejo_sim fixture, tests/fakes/forgejo.py), if
$CLAUDE_HOOKS_CAPTURES holds it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from claude_hooks.forgejo.client import (
    PAGE_LIMIT,
    ForgejoClient,
    ForgejoError,
    error_message,
    fill_template,
    parse_retry_after,
    rfc3339,
)
from claude_hooks.forgejo.models import CommitStatus, InlineComment
from tests.fakes.forgejo import ForgejoSim, Team, add_team

ClientFactory = Callable[..., ForgejoClient]


@pytest.fixture
def team(forgejo_sim: ForgejoSim) -> Team:
    return add_team(forgejo_sim)


@pytest.fixture
async def make_client(forgejo_sim: ForgejoSim, team: Team) -> AsyncIterator[ClientFactory]:
    """Clients with tiny backoff waits, closed at the end of the test."""
    made: list[ForgejoClient] = []

    def make(login: str = "dev", **options: object) -> ForgejoClient:
        settings: dict = {"timeout": 5.0, "max_backoff": 0.01, "initial_backoff": 0.001}
        settings.update(options)
        client = ForgejoClient(forgejo_sim.base_url, team.token(login), **settings)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


# -- plain functions ---------------------------------------------------------------------------


def test_rfc3339_writes_utc_with_z_and_takes_naive_times_as_utc() -> None:
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"
    east = datetime(2026, 1, 2, 5, 4, 5, tzinfo=UTC) + timedelta()
    assert rfc3339(east.astimezone()) == "2026-01-02T05:04:05Z"


def test_fill_template_quotes_each_value() -> None:
    path = fill_template("/repos/{owner}/{repo}/collaborators/{c}/permission", ["o", "r", "a b/c"])
    assert path == "/repos/o/r/collaborators/a%20b%2Fc/permission"


def test_retry_after_is_read_in_seconds_and_capped() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after("100000") == 300.0


def test_error_message_hides_a_token_the_server_echoes() -> None:
    message = error_message(b'{"message": "token abc123secret is invalid"}', "abc123secret")
    assert "abc123secret" not in message
    assert message == "token *** is invalid"


# -- reading -----------------------------------------------------------------------------------


async def test_current_user_is_the_owner_of_the_token(make_client: ClientFactory) -> None:
    user = await make_client("reviewer").current_user()
    assert user.login == "reviewer"


async def test_get_repo_and_issue(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "Broken build", "It fails")
    client = make_client()
    repo = await client.get_repo(team.repo)
    issue = await client.get_issue(team.repo, number)
    assert (repo.full_name, repo.default_branch) == (team.repo, "main")
    assert repo.clone_url.endswith("/acme/app.git")
    assert (issue.number, issue.title, issue.user.login, issue.is_pull) == (
        number,
        "Broken build",
        "alice",
        False,
    )


async def test_list_comments_since_is_inclusive_and_oldest_first(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "")
    forgejo_sim.add_comment(team.repo, number, "alice", "first")
    forgejo_sim.advance(10)
    watermark = forgejo_sim.clock.now()
    forgejo_sim.add_comment(team.repo, number, "alice", "second")
    forgejo_sim.advance(10)
    forgejo_sim.add_comment(team.repo, number, "alice", "third")
    client = make_client()
    everything = await client.list_comments(team.repo, number)
    recent = await client.list_comments(team.repo, number, since=watermark)
    assert [c.body for c in everything] == ["first", "second", "third"]
    assert [c.body for c in recent] == ["second", "third"]


async def test_get_comment_returns_none_for_an_unknown_id(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "")
    comment_id = forgejo_sim.add_comment(team.repo, number, "alice", "hello")
    client = make_client()
    assert (await client.get_comment(team.repo, comment_id)).body == "hello"  # type: ignore[union-attr]
    assert await client.get_comment(team.repo, 9999) is None


async def test_timeline_lists_review_requests_and_assignments(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    number = forgejo_sim.create_pull(team.repo, "alice", "Feature", "", head="feature")
    forgejo_sim.request_review(team.repo, number, "alice", "reviewer")
    forgejo_sim.assign(team.repo, number, "alice", "dev")
    events = await make_client().timeline(team.repo, number)
    kinds = [(e.type, e.user, e.assignee, e.removed_assignee) for e in events]
    assert kinds == [
        ("review_request", "alice", "reviewer", False),
        ("assignees", "alice", "dev", False),
    ]


# -- notifications -----------------------------------------------------------------------------


async def test_notifications_unread_count_and_mark_read(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "Help", "@dev please look")
    client = make_client("dev")
    assert await client.unread_count() == 1
    [thread] = await client.notifications()
    assert (thread.repo, thread.subject.number, thread.unread) == (team.repo, number, True)
    await client.mark_thread_read(thread.id)
    assert await client.unread_count() == 0
    assert await client.notifications() == []
    assert [t.unread for t in await client.notifications(all=True)] == [False]


async def test_notifications_sends_since_as_rfc3339(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    forgejo_sim.create_issue(team.repo, "alice", "old", "@dev one")
    forgejo_sim.advance(30)
    since = forgejo_sim.clock.now()
    forgejo_sim.create_issue(team.repo, "alice", "new", "@dev two")
    threads = await make_client().notifications(since=since)
    assert [t.subject.title for t in threads] == ["new"]
    [request] = forgejo_sim.api_requests("GET", "/api/v1/notifications")
    assert request.query["since"] == rfc3339(since)


async def test_notifications_follow_pages_past_fifty(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    for index in range(120):
        forgejo_sim.create_issue(team.repo, "alice", f"issue {index}", "@dev look")
    threads = await make_client().notifications()
    assert len({t.id for t in threads}) == 120
    pages = [r.query for r in forgejo_sim.api_requests("GET", "/api/v1/notifications")]
    assert [(q["page"], q["limit"]) for q in pages] == [("1", "50"), ("2", "50"), ("3", "50")]


async def test_paging_stops_at_x_total_count_without_an_empty_page(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    for index in range(50):
        forgejo_sim.create_pull(team.repo, "alice", f"pr {index}", "", head=f"b{index}")
    pulls = await make_client().list_pulls(team.repo)
    assert len(pulls) == 50
    assert len(forgejo_sim.api_requests("GET", "/api/v1/repos/acme/app/pulls")) == 1


# -- writing -----------------------------------------------------------------------------------


async def test_create_and_edit_comment(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "")
    client = make_client("dev")
    created = await client.create_comment(team.repo, number, "working on it")
    edited = await client.edit_comment(team.repo, created.id, "done")
    assert edited.id == created.id
    assert [(c.user, c.body) for c in forgejo_sim.comments(team.repo, number)] == [("dev", "done")]


async def test_reactions_on_issue_and_comment_are_idempotent(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "")
    comment_id = forgejo_sim.add_comment(team.repo, number, "alice", "@dev go")
    client = make_client("dev")
    await client.react_to_issue(team.repo, number, "eyes")
    await client.react_to_comment(team.repo, comment_id, "eyes")
    await client.react_to_comment(team.repo, comment_id, "eyes")  # 200: exists, not an error
    assert [r.content for r in forgejo_sim.reactions(team.repo, number)] == ["eyes"]
    assert [r.user for r in forgejo_sim.reactions(team.repo, comment_id=comment_id)] == ["dev"]
    statuses = [r.status for r in forgejo_sim.requests if r.path.endswith("/reactions")]
    assert statuses == [201, 201, 200]


async def test_pull_request_lifecycle(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    dev = make_client("dev")
    created = await dev.create_pull(team.repo, head="dev/x", base="main", title="X", body="b")
    await dev.request_reviewers(team.repo, created.number, ["reviewer"])
    edited = await dev.edit_pull(team.repo, created.number, body="better body")
    fetched = await dev.get_pull(team.repo, created.number)
    diff = await dev.pull_diff(team.repo, created.number)
    listed = await dev.list_pulls(team.repo)
    assert (edited.title, edited.body) == ("X", "better body")
    assert (fetched.head_ref, fetched.base_ref, fetched.requested_reviewers) == (
        "dev/x",
        "main",
        ("reviewer",),
    )
    assert diff.startswith("diff --git ")
    assert [p.number for p in listed] == [created.number]


async def test_reviews_create_list_comments_delete(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    number = forgejo_sim.create_pull(team.repo, "dev", "Feature", "", head="feature")
    head = forgejo_sim.issue(team.repo, number).pull.head_sha  # type: ignore[union-attr]
    reviewer = make_client("reviewer")
    review = await reviewer.create_review(
        team.repo,
        number,
        event="REQUEST_CHANGES",
        body="Please fix",
        commit_id=head,
        comments=[InlineComment("app.py", "off by one", new_position=3)],
    )
    [listed] = await reviewer.list_reviews(team.repo, number)
    [inline] = await reviewer.review_comments(team.repo, number, review.id)
    assert (review.state, review.commit_id, review.comments_count) == ("REQUEST_CHANGES", head, 1)
    assert listed.id == review.id
    assert (inline.path, inline.position, inline.body) == ("app.py", 3, "off by one")
    pending = await reviewer.create_review(
        team.repo, number, event="", body="", commit_id=None, comments=[InlineComment("a", "b")]
    )
    assert pending.state == "PENDING"
    await reviewer.delete_review(team.repo, number, pending.id)
    assert [r.id for r in forgejo_sim.reviews(team.repo, number)] == [review.id]


async def test_merge_reports_merged_and_refusals(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    stale = forgejo_sim.create_pull(team.repo, "dev", "A", "", head="a")
    fresh = forgejo_sim.create_pull(team.repo, "dev", "B", "", head="b")
    lead = make_client("code-lead")
    merge = {"style": "squash", "delete_branch": True}
    assert await lead.merge_pull(team.repo, stale, head_commit_id="0" * 40, **merge) is False
    assert await lead.merge_pull(team.repo, fresh, head_commit_id=None, **merge) is True
    assert await lead.merge_pull(team.repo, fresh, head_commit_id=None, **merge) is False
    assert forgejo_sim.issue(team.repo, fresh).pull.merged  # type: ignore[union-attr]
    assert "b" not in forgejo_sim.state.repo(team.repo).branches


async def test_combined_status_reads_every_page_and_combines_them_again(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    number = forgejo_sim.create_pull(team.repo, "dev", "PR", "", head="x")
    head = forgejo_sim.issue(team.repo, number).pull.head_sha  # type: ignore[union-attr]
    client = make_client("code-lead")
    empty = await client.combined_status(team.repo, head)
    assert (empty.state, empty.statuses) == ("", ())
    # The oldest context fails: Forgejo lists newest first, so it is alone on page 2,
    # and page 1 alone would read "success".
    forgejo_sim.set_status(team.repo, head, "failure", context="ci/slow", description="broke")
    for i in range(PAGE_LIMIT):
        forgejo_sim.set_status(team.repo, head, "success", context=f"ci/{i}")
    combined = await client.combined_status(team.repo, head)
    assert (combined.state, combined.sha, len(combined.statuses)) == ("failure", head, 51)
    assert combined.statuses[-1] == CommitStatus("ci/slow", "failure", "broke")
    pages = forgejo_sim.api_requests("GET", f"/api/v1/repos/{team.repo}/commits/{head}/status")
    assert [r.query.get("page") for r in pages] == ["1", "1", "2"]


async def test_repo_permission_fails_closed_when_forgejo_refuses(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    dev = make_client("dev")
    assert await dev.repo_permission(team.repo, "dev") == "write"  # about itself: allowed
    assert await dev.repo_permission(team.repo, "alice") is None  # 403 for a plain collaborator
    forgejo_sim.state.repo(team.repo).collaborators["code-lead"] = "admin"
    lead = make_client("code-lead")
    assert await lead.repo_permission(team.repo, "alice") == "write"
    assert await lead.repo_permission(team.repo, "acme") == "owner"
    assert await lead.repo_permission(team.repo, "outsider") == "none"
    assert await lead.repo_permission(team.repo, "nobody-at-all") is None  # 404


# -- failures and retries ----------------------------------------------------------------------


async def test_five_502s_then_success_succeeds(
    forgejo_sim: ForgejoSim, make_client: ClientFactory
) -> None:
    forgejo_sim.fail_next(5, status=502)
    user = await make_client(max_attempts=6).current_user()
    assert user.login == "dev"
    assert [r.status for r in forgejo_sim.requests] == [502] * 5 + [200]


async def test_gives_up_after_max_attempts_with_the_last_status(
    forgejo_sim: ForgejoSim, make_client: ClientFactory
) -> None:
    forgejo_sim.fail_next(3, status=503)
    with pytest.raises(ForgejoError) as caught:
        await make_client(max_attempts=3).current_user()
    assert caught.value.status == 503
    assert len(forgejo_sim.requests) == 3


async def test_429_and_dropped_connections_are_retried(
    forgejo_sim: ForgejoSim, make_client: ClientFactory
) -> None:
    forgejo_sim.drop_next(1)  # drops come before injected statuses
    forgejo_sim.fail_next(1, status=429)
    assert (await make_client().current_user()).login == "dev"
    assert [r.status for r in forgejo_sim.requests] == [None, 429, 200]


async def test_404_is_not_retried(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    with pytest.raises(ForgejoError) as caught:
        await make_client().get_issue(team.repo, 404)
    assert caught.value.status == 404
    assert len(forgejo_sim.requests) == 1


async def test_validation_error_is_not_retried(
    forgejo_sim: ForgejoSim, team: Team, make_client: ClientFactory
) -> None:
    number = forgejo_sim.create_pull(team.repo, "dev", "Mine", "", head="mine")
    with pytest.raises(ForgejoError) as caught:  # approving your own pull request: 422
        await make_client("dev").create_review(
            team.repo, number, event="APPROVED", body="", commit_id=None
        )
    assert caught.value.status == 422
    assert len(forgejo_sim.api_requests("POST")) == 1


async def test_retry_after_is_honoured(forgejo_sim: ForgejoSim, make_client: ClientFactory) -> None:
    forgejo_sim.fail_next(1, status=503, retry_after=0.4)
    started = time.monotonic()
    await make_client(max_backoff=0.01).current_user()
    assert time.monotonic() - started >= 0.4


async def test_timeouts_raise_without_status(
    forgejo_sim: ForgejoSim, make_client: ClientFactory
) -> None:
    forgejo_sim.delay(0.5)
    with pytest.raises(ForgejoError) as caught:
        await make_client(timeout=0.1, max_attempts=2).current_user()
    assert caught.value.status is None
    assert "Timeout" in caught.value.message


async def test_error_names_method_path_status_and_never_the_token(
    forgejo_sim: ForgejoSim, team: Team
) -> None:
    secret = "s3cr3t-token-value-that-must-not-leak"
    async with ForgejoClient(forgejo_sim.base_url, secret, max_attempts=1) as client:
        with pytest.raises(ForgejoError) as caught:
            await client.get_issue(team.repo, 1)
    error = caught.value
    assert (error.method, error.path, error.status) == ("GET", "/repos/acme/app/issues/1", 401)
    assert "GET /repos/acme/app/issues/1" in str(error) and "401" in str(error)
    assert secret not in str(error) and secret not in repr(error.args)


async def test_token_file_is_read_again_after_rotation(
    forgejo_sim: ForgejoSim, team: Team, tmp_path: Path
) -> None:
    token_file = tmp_path / "dev.token"
    token_file.write_text(team.token("dev") + "\n")
    async with ForgejoClient(forgejo_sim.base_url, token_file.read_text, max_attempts=1) as client:
        assert (await client.current_user()).login == "dev"
        forgejo_sim.revoke_token(team.token("dev"))
        forgejo_sim.add_token("dev", "rotated-token-0123456789")
        token_file.write_text("rotated-token-0123456789\n")
        assert (await client.current_user()).login == "dev"


async def test_on_request_hook_sees_templates_and_statuses(
    forgejo_sim: ForgejoSim, team: Team
) -> None:
    seen: list[tuple[str, str, int | None]] = []
    async with ForgejoClient(
        forgejo_sim.base_url,
        team.token("dev"),
        max_attempts=1,
        on_request=lambda method, path, status, seconds: seen.append((method, path, status)),
    ) as client:
        await client.current_user()
        await client.get_comment(team.repo, 7)
    assert seen == [
        ("GET", "/user", 200),
        ("GET", "/repos/{owner}/{repo}/issues/comments/{id}", 404),
    ]


async def test_an_answer_forgejo_would_never_send_is_a_forgejo_error() -> None:
    async def html_page(_: web.Request) -> web.Response:
        return web.Response(text="<html>proxy</html>")

    async def a_list(_: web.Request) -> web.Response:
        return web.json_response([1, 2])

    app = web.Application()  # a misconfigured proxy in front of Forgejo
    app.router.add_get("/api/v1/user", html_page)
    app.router.add_get("/api/v1/notifications/new", a_list)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with ForgejoClient(f"http://127.0.0.1:{port}", "t", max_attempts=1) as client:
            with pytest.raises(ForgejoError, match="not JSON") as html:
                await client.current_user()
            with pytest.raises(ForgejoError, match="unexpected answer") as shape:
                await client.unread_count()
    finally:
        await runner.cleanup()
    assert (html.value.path, html.value.status) == ("/user", 200)
    assert shape.value.path == "/notifications/new"
