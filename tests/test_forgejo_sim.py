"""The Forgejo simulator keeps Forgejo's semantics (docs/FORGEJO.md).

Driven as a team would drive Forgejo (direct calls) and as an agent would
(HTTP with a token); every HTTP exchange is contract-checked at teardown.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from claude_hooks.demo.sim.mentions import find_mentions
from tests.fakes.forgejo import ForgejoSim, Team, add_team


@pytest.fixture
def team(forgejo_sim: ForgejoSim) -> Team:
    return add_team(forgejo_sim)


@dataclass
class Api:
    """Raw HTTP calls as one user, to see statuses and headers the client hides."""

    sim: ForgejoSim
    session: aiohttp.ClientSession
    token: str

    async def call(
        self, method: str, path: str, json_body: Any = None, params: Any = None
    ) -> tuple[int, Any, dict[str, str]]:
        async with self.session.request(
            method,
            f"{self.sim.base_url}/api/v1{path}",
            json=json_body,
            params=params,
            headers={"Authorization": f"token {self.token}"},
        ) as response:
            text = await response.text()
            is_json = text and response.content_type == "application/json"
            return response.status, json.loads(text) if is_json else text, dict(response.headers)


@pytest.fixture
async def api(forgejo_sim: ForgejoSim, team: Team) -> AsyncIterator[Any]:
    async with aiohttp.ClientSession() as session:
        yield lambda login: Api(forgejo_sim, session, team.token(login))


def titles_of_threads(sim: ForgejoSim, login: str) -> list[tuple[int, str]]:
    return [(t.number, t.status) for t in sim.threads(login)]


# -- mentions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@dev please", ["dev"]),
        ("thanks @Dev.", ["dev"]),
        ("(@dev) and [@reviewer]", ["dev", "reviewer"]),
        ("@dev, @reviewer: @code-lead; done", ["dev", "reviewer", "code-lead"]),
        ("ask @dev? or @reviewer!", ["dev", "reviewer"]),
        ("@dev's branch", ["dev"]),
        ("@alice.smith said", ["alice.smith"]),
        ("@dev @reviewer @dev", ["dev", "reviewer"]),
    ],
)
def test_mentions_that_count(text: str, expected: list[str]) -> None:
    assert find_mentions(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "mail me@dev.example",  # not after whitespace, ( or [
        "`@dev` is the agent",  # code span
        "```\n@dev run\n```",  # fenced code block
        "intro\n\n    @dev indented code",  # indented code block
        "[@dev](https://example.com/@dev)",  # link text and URL
        "<https://example.com/@dev>",  # autolink
        "@dev!now",  # punctuation not followed by whitespace or the end
        "@dev/x",  # a team-like path the simulator has no team for
    ],
)
def test_mentions_that_do_not_count(text: str) -> None:
    assert find_mentions(text) == []


# -- notification threads ----------------------------------------------------------------------


def test_one_thread_per_user_and_issue_is_reused(forgejo_sim: ForgejoSim, team: Team) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "@dev one")
    forgejo_sim.advance(5)
    forgejo_sim.add_comment(team.repo, number, "alice", "@dev two")
    [thread] = forgejo_sim.threads("dev")
    assert (thread.number, thread.status) == (number, "unread")
    assert thread.updated_at == forgejo_sim.clock.now()


async def test_new_event_turns_a_read_thread_unread(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "@dev one")
    [thread] = forgejo_sim.threads("dev")
    status, body, _ = await api("dev").call("PATCH", f"/notifications/threads/{thread.id}")
    assert (status, body["unread"]) == (205, False)
    assert forgejo_sim.threads("dev")[0].status == "read"
    forgejo_sim.add_comment(team.repo, number, "alice", "@dev again")
    assert [(t.id, t.status) for t in forgejo_sim.threads("dev")] == [(thread.id, "unread")]


async def test_pinned_thread_stays_pinned_on_new_event(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "@dev one")
    [thread] = forgejo_sim.threads("dev")
    await api("dev").call("PATCH", f"/notifications/threads/{thread.id}?to-status=pinned")
    forgejo_sim.add_comment(team.repo, number, "alice", "@dev again")
    assert forgejo_sim.threads("dev")[0].status == "pinned"
    status, count, _ = await api("dev").call("GET", "/notifications/new")
    assert (status, count) == (200, {"new": 0})  # /new counts unread only


def test_actor_is_never_notified_of_their_own_action(forgejo_sim: ForgejoSim, team: Team) -> None:
    number = forgejo_sim.create_issue(team.repo, "dev", "mine", "note to self @dev")
    forgejo_sim.add_comment(team.repo, number, "dev", "@dev still me")
    forgejo_sim.assign(team.repo, number, "dev", "dev")
    assert forgejo_sim.threads("dev") == []


def test_participants_get_broadcasts_and_bystanders_do_not(
    forgejo_sim: ForgejoSim, team: Team
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "no mention")
    forgejo_sim.add_comment(team.repo, number, "reviewer", "a remark")
    forgejo_sim.add_comment(team.repo, number, "code-lead", "another")
    assert titles_of_threads(forgejo_sim, "alice") == [(number, "unread")]  # author
    assert titles_of_threads(forgejo_sim, "reviewer") == [(number, "unread")]  # commenter
    assert forgejo_sim.threads("dev") == []


def test_watchers_get_broadcasts(forgejo_sim: ForgejoSim, team: Team) -> None:
    forgejo_sim.watch(team.repo, "dev")
    forgejo_sim.create_issue(team.repo, "alice", "t", "nothing for dev")
    assert len(forgejo_sim.threads("dev")) == 1


def test_mention_of_a_user_who_cannot_read_is_dropped(forgejo_sim: ForgejoSim, team: Team) -> None:
    forgejo_sim.create_issue(team.repo, "alice", "t", "@outsider @nobody please")
    assert forgejo_sim.threads("outsider") == []


def test_editing_in_a_mention_does_not_notify(forgejo_sim: ForgejoSim, team: Team) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "")
    comment_id = forgejo_sim.add_comment(team.repo, number, "alice", "hello")
    forgejo_sim.edit_comment(team.repo, comment_id, "hello @dev")
    assert forgejo_sim.threads("dev") == []


def test_review_request_notifies_the_reviewer_unless_self_requested(
    forgejo_sim: ForgejoSim, team: Team
) -> None:
    number = forgejo_sim.create_pull(team.repo, "alice", "PR", "", head="x")
    forgejo_sim.request_review(team.repo, number, "alice", "reviewer")
    forgejo_sim.request_review(team.repo, number, "dev", "dev")
    assert titles_of_threads(forgejo_sim, "reviewer") == [(number, "unread")]
    assert forgejo_sim.threads("dev") == []
    requested = forgejo_sim.state.requested_reviewers(forgejo_sim.issue(team.repo, number))
    assert requested == ["reviewer", "dev"]


def test_assignment_notifies_the_assignee(forgejo_sim: ForgejoSim, team: Team) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "")
    forgejo_sim.assign(team.repo, number, "alice", "dev")
    assert titles_of_threads(forgejo_sim, "dev") == [(number, "unread")]
    assert [(i.type, i.assignee) for i in forgejo_sim.timeline(team.repo, number)] == [
        ("assignees", "dev")
    ]


async def test_notification_filters_and_order(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    forgejo_sim.create_issue(team.repo, "alice", "issue", "@dev a")
    forgejo_sim.advance(5)
    forgejo_sim.create_pull(team.repo, "alice", "pull", "@dev b", head="p")
    forgejo_sim.advance(5)
    cutoff = forgejo_sim.clock.now()
    forgejo_sim.advance(5)
    forgejo_sim.create_issue(team.repo, "alice", "newest", "@dev c")
    dev = api("dev")
    _, listed, headers = await dev.call("GET", "/notifications")
    assert [t["subject"]["title"] for t in listed] == ["newest", "pull", "issue"]
    assert headers["X-Total-Count"] == "3"
    _, pulls, _ = await dev.call("GET", "/notifications", params={"subject-type": "pull"})
    assert [t["subject"]["type"] for t in pulls] == ["Pull"]
    since = cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
    _, recent, _ = await dev.call("GET", "/notifications", params={"since": since})
    assert [t["subject"]["title"] for t in recent] == ["newest"]
    _, page, _ = await dev.call("GET", "/notifications", params={"limit": 2, "page": 2})
    assert [t["subject"]["title"] for t in page] == ["issue"]


async def test_since_is_inclusive_on_the_thread_time(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    forgejo_sim.create_issue(team.repo, "alice", "t", "@dev")
    at = forgejo_sim.threads("dev")[0].updated_at
    for since, expected in ((at, 1), (at + timedelta(seconds=1), 0)):
        params = {"since": since.strftime("%Y-%m-%dT%H:%M:%SZ")}
        _, found, _ = await api("dev").call("GET", "/notifications", params=params)
        assert len(found) == expected


async def test_mark_all_read_respects_last_read_at(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    forgejo_sim.create_issue(team.repo, "alice", "old", "@dev")
    cutoff = forgejo_sim.clock.now()
    forgejo_sim.advance(10)
    forgejo_sim.create_issue(team.repo, "alice", "new", "@dev")
    params = {"last_read_at": cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")}
    status, changed, _ = await api("dev").call("PUT", "/notifications", params=params)
    assert (status, [t["subject"]["title"] for t in changed]) == (205, ["old"])
    _, unread, _ = await api("dev").call("GET", "/notifications")
    assert [t["subject"]["title"] for t in unread] == ["new"]


async def test_someone_elses_thread_is_forbidden(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    forgejo_sim.create_issue(team.repo, "alice", "t", "@dev")
    [thread] = forgejo_sim.threads("dev")
    status, _, _ = await api("reviewer").call("PATCH", f"/notifications/threads/{thread.id}")
    assert status == 403
    assert forgejo_sim.threads("dev")[0].status == "unread"


async def test_api_merge_marks_the_mergers_thread_read(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_pull(team.repo, "alice", "PR", "@code-lead merge when ready")
    status, _, _ = await api("code-lead").call(
        "POST", f"/repos/{team.repo}/pulls/{number}/merge", {"Do": "merge"}
    )
    assert status == 200
    assert titles_of_threads(forgejo_sim, "code-lead") == [(number, "read")]
    assert titles_of_threads(forgejo_sim, "alice") == [(number, "unread")]  # broadcast


# -- authentication and permissions ------------------------------------------------------------


async def test_bad_or_missing_token_is_401(forgejo_sim: ForgejoSim, team: Team) -> None:
    async with aiohttp.ClientSession() as session:
        for headers in ({"Authorization": "token wrong"}, {"Authorization": "Bearer wrong"}):
            async with session.get(f"{forgejo_sim.base_url}/api/v1/user", headers=headers) as r:
                assert r.status == 401
                assert "message" in await r.json()
    assert all("Authorization" not in r.headers for r in forgejo_sim.requests)


async def test_permission_endpoint_answers_only_admins_and_self(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    path = f"/repos/{team.repo}/collaborators/alice/permission"
    assert (await api("dev").call("GET", path))[0] == 403
    status, own, _ = await api("alice").call("GET", path)
    assert (status, own["permission"]) == (200, "write")
    forgejo_sim.add_user("root", token="root-token-0123456789", admin=True)
    root = Api(forgejo_sim, api("dev").session, "root-token-0123456789")
    status, body, _ = await root.call("GET", path)
    assert (status, body["permission"], body["user"]["login"]) == (200, "write", "alice")


async def test_private_repository_is_404_for_outsiders(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "")
    assert (await api("outsider").call("GET", f"/repos/{team.repo}"))[0] == 404
    assert (await api("outsider").call("GET", f"/repos/{team.repo}/issues/{number}"))[0] == 404


# -- comments, reactions, reviews --------------------------------------------------------------


async def test_comment_since_filter_is_inclusive_on_updated_at(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "")
    first = forgejo_sim.add_comment(team.repo, number, "alice", "first")
    forgejo_sim.advance(10)
    cutoff = forgejo_sim.clock.now()
    forgejo_sim.add_comment(team.repo, number, "alice", "second")
    forgejo_sim.advance(10)
    forgejo_sim.edit_comment(team.repo, first, "first, edited")  # moves its updated_at
    params = {"since": cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")}
    _, comments, _ = await api("dev").call(
        "GET", f"/repos/{team.repo}/issues/{number}/comments", params=params
    )
    assert [c["body"] for c in comments] == ["first, edited", "second"]  # creation order


async def test_reaction_is_201_when_new_200_when_repeated_403_when_unknown(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "")
    path = f"/repos/{team.repo}/issues/{number}/reactions"
    statuses = [(await api("dev").call("POST", path, {"content": c}))[0] for c in ("eyes", "eyes")]
    assert statuses == [201, 200]
    assert (await api("dev").call("POST", path, {"content": "sparkles"}))[0] == 403


async def test_review_rules(forgejo_sim: ForgejoSim, team: Team, api: Any) -> None:
    number = forgejo_sim.create_pull(team.repo, "dev", "PR", "", head="x")
    path = f"/repos/{team.repo}/pulls/{number}/reviews"
    assert (await api("reviewer").call("POST", path, {"event": "REQUEST_CHANGES"}))[0] == 422
    assert (await api("reviewer").call("POST", path, {"event": "COMMENT"}))[0] == 422
    assert (await api("dev").call("POST", path, {"event": "APPROVED"}))[0] == 422  # own PR


async def test_inline_comment_review_keeps_the_request_and_approval_clears_it(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_pull(team.repo, "dev", "PR", "", head="x")
    forgejo_sim.request_review(team.repo, number, "dev", "reviewer")
    path = f"/repos/{team.repo}/pulls/{number}/reviews"
    inline = {"path": "a.py", "body": "nit", "new_position": 1}
    await api("reviewer").call("POST", path, {"event": "COMMENT", "body": "", "comments": [inline]})
    issue = forgejo_sim.issue(team.repo, number)
    assert forgejo_sim.state.requested_reviewers(issue) == ["reviewer"]
    await api("reviewer").call("POST", path, {"event": "APPROVED", "body": "lgtm"})
    assert forgejo_sim.state.requested_reviewers(issue) == []


async def test_pending_review_is_hidden_from_others_and_absorbs_comments(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_pull(team.repo, "dev", "PR", "", head="x")
    path = f"/repos/{team.repo}/pulls/{number}/reviews"
    first = {"path": "a.py", "body": "one", "new_position": 1}
    second = {"path": "a.py", "body": "two", "new_position": 2}
    _, pending, _ = await api("reviewer").call("POST", path, {"body": "", "comments": [first]})
    assert (await api("dev").call("GET", path))[1] == []
    _, submitted, _ = await api("reviewer").call(
        "POST", path, {"event": "COMMENT", "body": "see", "comments": [second]}
    )
    assert submitted["id"] == pending["id"]
    assert submitted["comments_count"] == 2


# -- review verdicts: official, stale, dismissed -----------------------------------------------


def add_person(sim: ForgejoSim, team: Team, login: str, level: str) -> None:
    """Someone with `level` access to the team's repository; `api(login)` then works."""
    token = f"token-of-{login}-0123456789"
    sim.add_user(login, token=token)
    sim.add_collaborator(team.repo, login, level)
    team.tokens[login] = token


async def listed_reviews(api: Any, repo: str, number: int) -> dict[int, dict[str, Any]]:
    _, reviews, _ = await api("dev").call("GET", f"/repos/{repo}/pulls/{number}/reviews")
    return {r["id"]: r for r in reviews}


def flags(review: dict[str, Any]) -> tuple[str, bool, bool, bool]:
    return review["state"], review["official"], review["stale"], review["dismissed"]


async def test_only_a_writers_verdict_is_official(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    add_person(forgejo_sim, team, "rita", "read")
    number = forgejo_sim.create_pull(team.repo, "dev", "PR", "", head="x")
    path = f"/repos/{team.repo}/pulls/{number}/reviews"
    _, by_reader, _ = await api("rita").call("POST", path, {"event": "APPROVED", "body": ""})
    _, by_writer, _ = await api("reviewer").call("POST", path, {"event": "APPROVED", "body": ""})
    _, rejection, _ = await api("alice").call(
        "POST", path, {"event": "REQUEST_CHANGES", "body": "no"}
    )
    _, remark, _ = await api("code-lead").call("POST", path, {"event": "COMMENT", "body": "hm"})
    assert [flags(r) for r in (by_reader, by_writer, rejection, remark)] == [
        ("APPROVED", False, False, False),
        ("APPROVED", True, False, False),
        ("REQUEST_CHANGES", True, False, False),
        ("COMMENT", False, False, False),
    ]


async def test_a_new_verdict_takes_over_from_the_reviewers_earlier_ones(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_pull(team.repo, "dev", "PR", "", head="x")
    rejected = forgejo_sim.submit_review(team.repo, number, "reviewer", "REQUEST_CHANGES", "no")
    approved = forgejo_sim.submit_review(team.repo, number, "reviewer", "APPROVED", "")
    inline = [{"path": "x.txt", "body": "nit", "new_position": 1}]
    again = forgejo_sim.submit_review(
        team.repo, number, "reviewer", "REQUEST_CHANGES", "hm", inline
    )
    listed = await listed_reviews(api, team.repo, number)
    # Created outright, the approval dismissed the rejection before it; submitted from a
    # pending review (inline comments), the last rejection dismissed nothing. Only the
    # latest verdict is official either way.
    assert flags(listed[rejected]) == ("REQUEST_CHANGES", False, False, True)
    assert flags(listed[approved]) == ("APPROVED", False, False, False)
    assert flags(listed[again]) == ("REQUEST_CHANGES", True, False, False)
    forgejo_sim.delete_review(team.repo, number, again)  # the previous verdict counts again
    assert flags((await listed_reviews(api, team.repo, number))[approved])[1] is True


def test_a_submitted_review_notifies_the_pull_requests_author(
    forgejo_sim: ForgejoSim, team: Team
) -> None:
    number = forgejo_sim.create_pull(team.repo, "dev", "PR", "", head="x")
    for thread in forgejo_sim.threads("dev"):
        forgejo_sim.state.threads[thread.id].status = "read"
    for event, body in (("REQUEST_CHANGES", "fix it"), ("COMMENT", "hm"), ("APPROVED", "")):
        forgejo_sim.advance(1)
        review = forgejo_sim.submit_review(team.repo, number, "reviewer", event, body)
        [thread] = forgejo_sim.threads("dev")
        assert (thread.number, thread.status) == (number, "unread")
        assert thread.updated_at == forgejo_sim.review(team.repo, number, review).submitted_at
        forgejo_sim.state.threads[thread.id].status = "read"
    assert forgejo_sim.threads("reviewer") == []  # never the reviewer itself


async def test_reviews_go_stale_when_the_head_moves(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_pull(team.repo, "dev", "PR", "", head="x")
    old = forgejo_sim.issue(team.repo, number).pull.head_sha  # type: ignore[union-attr]
    approved = forgejo_sim.submit_review(team.repo, number, "reviewer", "APPROVED", "")
    new = forgejo_sim.commit_file(team.repo, "x", "x.txt", "more\n", "More")
    late = forgejo_sim.submit_review(team.repo, number, "alice", "APPROVED", "", commit_id=old)
    fresh = forgejo_sim.submit_review(team.repo, number, "code-lead", "APPROVED", "")
    listed = await listed_reviews(api, team.repo, number)
    assert [listed[i]["commit_id"] for i in (approved, late, fresh)] == [old, old, new]
    assert [listed[i]["stale"] for i in (approved, late, fresh)] == [True, True, False]


async def test_asking_a_reviewer_again_takes_their_approval_back(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_pull(team.repo, "dev", "PR", "", head="x")
    approved = forgejo_sim.submit_review(team.repo, number, "reviewer", "APPROVED", "")
    path = f"/repos/{team.repo}/pulls/{number}/requested_reviewers"
    _, [request], _ = await api("dev").call("POST", path, {"reviewers": ["reviewer"]})
    listed = await listed_reviews(api, team.repo, number)
    assert flags(listed[approved]) == ("APPROVED", False, False, False)
    assert flags(request) == ("REQUEST_REVIEW", True, False, False)


async def test_dismissing_a_review_takes_a_repository_admin(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    add_person(forgejo_sim, team, "ada", "admin")
    number = forgejo_sim.create_pull(team.repo, "dev", "PR", "", head="x")
    approved = forgejo_sim.submit_review(team.repo, number, "reviewer", "APPROVED", "")
    remark = forgejo_sim.submit_review(team.repo, number, "alice", "COMMENT", "hm")
    reviews = f"/repos/{team.repo}/pulls/{number}/reviews"
    body = {"message": "outdated"}
    status, _, _ = await api("alice").call("POST", f"{reviews}/{approved}/dismissals", body)
    assert status == 403  # write access is not enough
    status, dismissed, _ = await api("ada").call("POST", f"{reviews}/{approved}/dismissals", body)
    assert (status, flags(dismissed)) == (200, ("APPROVED", True, False, True))
    assert (await api("ada").call("POST", f"{reviews}/{remark}/dismissals", body))[0] == 403
    forgejo_sim.merge(team.repo, number, "alice")
    assert (await api("ada").call("POST", f"{reviews}/{approved}/dismissals", body))[0] == 403


# -- commit statuses ---------------------------------------------------------------------------


async def test_commit_statuses_combine_each_contexts_latest_state(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_pull(team.repo, "dev", "PR", "", head="x")
    head = forgejo_sim.issue(team.repo, number).pull.head_sha  # type: ignore[union-attr]
    report = f"/repos/{team.repo}/statuses/{head}"
    combined = f"/repos/{team.repo}/commits/{head}/status"
    status, nothing, headers = await api("dev").call("GET", combined)
    # Nobody reported: an empty CombinedStatus, not "pending".
    assert status == 200
    assert (nothing["state"], nothing["statuses"], nothing["total_count"]) == ("", None, 0)
    assert "X-Total-Count" not in headers
    status, made, _ = await api("reviewer").call(
        "POST", report, {"state": "success", "context": " ci/test ", "description": "ok"}
    )
    assert (status, made["id"], made["status"], made["context"]) == (201, 1, "success", "ci/test")
    await api("reviewer").call("POST", report, {"state": "pending", "context": "lint"})
    _, both, headers = await api("dev").call("GET", combined)
    assert (both["state"], both["sha"], headers["X-Total-Count"]) == ("pending", head, "2")
    assert [(s["context"], s["status"]) for s in both["statuses"]] == [
        ("lint", "pending"), ("ci/test", "success"),
    ]  # fmt: skip
    await api("reviewer").call("POST", report, {"state": "error", "context": "ci/test"})
    _, by_branch, _ = await api("dev").call("GET", f"/repos/{team.repo}/commits/x/status")
    assert by_branch["state"] == "failure"  # Forgejo combines "error" as "failure"
    assert [(s["context"], s["status"]) for s in by_branch["statuses"]] == [
        ("ci/test", "error"), ("lint", "pending"),
    ]  # fmt: skip
    _, second, _ = await api("dev").call("GET", combined, params={"limit": 1, "page": 2})
    assert [s["context"] for s in second["statuses"]] == ["lint"]


async def test_reporting_a_commit_status_takes_write_access_and_a_known_commit(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    add_person(forgejo_sim, team, "rita", "read")
    head = forgejo_sim.state.repo(team.repo).branches["main"]
    body = {"state": "success", "context": "ci"}
    assert (await api("rita").call("POST", f"/repos/{team.repo}/statuses/{head}", body))[0] == 403
    unknown = f"/repos/{team.repo}/statuses/{'0' * 40}"
    assert (await api("reviewer").call("POST", unknown, body))[0] == 404
    assert (await api("reviewer").call("POST", f"/repos/{team.repo}/statuses/{head}", body))[
        0
    ] == 201


# -- webhooks ----------------------------------------------------------------------------------


@dataclass
class Receiver:
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read()))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    sink = Receiver()
    app = web.Application()
    app.router.add_post("/hook", sink.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield sink, f"http://127.0.0.1:{port}/hook"
    await runner.cleanup()


async def test_webhooks_are_signed_and_delivered_in_order(
    forgejo_sim: ForgejoSim, team: Team, receiver: tuple[Receiver, str]
) -> None:
    sink, url = receiver
    forgejo_sim.add_webhook(url, secret="hook-secret")
    issue = forgejo_sim.create_issue(team.repo, "alice", "t", "")
    forgejo_sim.add_comment(team.repo, issue, "alice", "@dev hi")
    forgejo_sim.assign(team.repo, issue, "alice", "dev")
    pull = forgejo_sim.create_pull(team.repo, "alice", "PR", "", head="x")
    forgejo_sim.request_review(team.repo, pull, "alice", "reviewer")
    forgejo_sim.add_comment(team.repo, pull, "alice", "on the PR")
    forgejo_sim.submit_review(team.repo, pull, "reviewer", "APPROVED", "fine by me")
    await forgejo_sim.webhooks_idle()
    kinds = [(h["X-Forgejo-Event"], h["X-Forgejo-Event-Type"]) for h, _ in sink.deliveries]
    assert kinds == [
        ("issues", "issues"),
        ("issue_comment", "issue_comment"),
        ("issues", "issue_assign"),
        ("pull_request", "pull_request"),
        ("pull_request", "pull_request_review_request"),
        ("issue_comment", "pull_request_comment"),
        ("pull_request_approved", "pull_request_review_approved"),
    ]
    for headers, body in sink.deliveries:
        expected = hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
        assert headers["X-Forgejo-Signature"] == headers["X-Gitea-Signature"] == expected
        assert headers["X-Forgejo-Delivery"] == headers["X-Gitea-Delivery"]
    payloads = [json.loads(body) for _, body in sink.deliveries]
    assert payloads[1]["comment"]["body"] == "@dev hi" and payloads[1]["is_pull"] is False
    assert payloads[2]["action"] == "assigned"
    assert payloads[4]["action"] == "review_requested"
    assert payloads[4]["requested_reviewer"]["login"] == "reviewer"
    assert payloads[5]["is_pull"] is True and payloads[5]["pull_request"]["number"] == pull
    assert payloads[6]["action"] == "reviewed"
    assert payloads[6]["review"] == {
        "type": "pull_request_review_approved",
        "content": "fine by me",
    }


async def test_webhook_failure_is_recorded_not_raised(forgejo_sim: ForgejoSim, team: Team) -> None:
    forgejo_sim.add_webhook("http://127.0.0.1:9/nothing-listens", secret="s")
    forgejo_sim.create_issue(team.repo, "alice", "t", "")
    await forgejo_sim.webhooks_idle()
    [delivery] = forgejo_sim.deliveries
    assert delivery.status is None and delivery.error


# -- fault injection and recording -------------------------------------------------------------


async def test_fail_next_answers_with_the_status_and_retry_after(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    forgejo_sim.fail_next(1, status=429, retry_after=3)
    status, _, headers = await api("dev").call("GET", "/user")
    assert (status, headers["Retry-After"]) == (429, "3")
    assert (await api("dev").call("GET", "/user"))[0] == 200
    assert [r.injected for r in forgejo_sim.requests] == [True, False]


async def test_drop_next_closes_the_connection_without_acting(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "")
    forgejo_sim.drop_next(1)
    with pytest.raises(aiohttp.ServerDisconnectedError):  # a POST: aiohttp does not resend it
        await api("dev").call("POST", f"/repos/{team.repo}/issues/{number}/comments", {"body": "x"})
    assert forgejo_sim.requests[0].status is None
    assert forgejo_sim.comments(team.repo, number) == []


async def test_requests_are_recorded_with_query_and_body(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = forgejo_sim.create_issue(team.repo, "alice", "t", "")
    await api("dev").call("POST", f"/repos/{team.repo}/issues/{number}/comments", {"body": "hi"})
    statuses = [("status-types", "read"), ("status-types", "unread")]
    await api("dev").call("GET", "/notifications", params=statuses)
    post, listing = forgejo_sim.requests
    assert (post.method, post.body, post.status) == ("POST", {"body": "hi"}, 201)
    assert listing.query.getall("status-types") == ["read", "unread"]
