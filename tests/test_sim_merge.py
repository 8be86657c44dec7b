"""Merging in the Forgejo simulator is a real git merge, answered as Forgejo answers.

Every call goes over the REST API (contract-checked at teardown); what the merge did is
read from the bare repository itself. Forgejo's rules: routers/api/v1/repo/pull.go
MergePullRequest, services/pull/{check,merge,merge_*}.go (docs/FORGEJO.md, "Merging").
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from claude_hooks.demo.sim.git import git_available
from claude_hooks.demo.sim.references import IssueAction, issue_actions
from tests.fakes.forgejo import ForgejoSim, Team, add_team

pytestmark = pytest.mark.skipif(
    not git_available(), reason="git (with git-http-backend) is not installed"
)

UNREACHABLE_HOOK = "http://127.0.0.1:9/hook"  # refused at once; the delivery is still recorded


@dataclass
class Api:
    sim: ForgejoSim
    session: aiohttp.ClientSession
    token: str

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method,
            f"{self.sim.base_url}/api/v1{path}",
            json=body,
            headers={"Authorization": f"token {self.token}"},
        ) as response:
            text = await response.text()
            is_json = bool(text) and response.content_type == "application/json"
            return response.status, (await response.json()) if is_json else text


@pytest.fixture
def team(forgejo_sim: ForgejoSim) -> Team:
    return add_team(forgejo_sim)


@pytest.fixture
async def api(forgejo_sim: ForgejoSim, team: Team) -> AsyncIterator[Callable[[str], Api]]:
    async with aiohttp.ClientSession() as session:
        yield lambda login: Api(forgejo_sim, session, team.token(login))


def bare(sim: ForgejoSim, repo: str, *args: str) -> str:
    done = subprocess.run(
        ["git", "--git-dir", str(sim.git_dir(repo)), *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def parents(sim: ForgejoSim, repo: str, rev: str) -> list[str]:
    return bare(sim, repo, "rev-list", "--parents", "-n", "1", rev).split()[1:]


def file_at(sim: ForgejoSim, repo: str, rev: str, path: str) -> str:
    return bare(sim, repo, "show", f"{rev}:{path}")


def diverged_pull(sim: ForgejoSim, team: Team, body: str = "") -> int:
    """dev's PR adding fix.py on `fix`, while main moved on with other.py meanwhile."""
    sim.commit_file(team.repo, "fix", "fix.py", "fixed = True\n", "Fix the crash", "dev")
    sim.commit_file(team.repo, "main", "other.py", "other = 1\n", "Unrelated work", "alice")
    return sim.create_pull(team.repo, "dev", "Fix crash", body, head="fix")


def merge_path(team: Team, number: int) -> str:
    return f"/repos/{team.repo}/pulls/{number}/merge"


async def merge(api: Any, team: Team, number: int, body: dict[str, Any]) -> int:
    """code-lead's POST /merge; the status it got."""
    return (await api("code-lead").call("POST", merge_path(team, number), body))[0]


# --- each merge style is git's ----------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "parent_count", "subject"),
    [
        ("merge", 2, "Merge pull request 'Fix crash' (#1) from fix into main"),
        ("rebase-merge", 2, "Merge pull request 'Fix crash' (#1) from fix into main"),
        ("squash", 1, "Fix crash (#1)"),
        ("rebase", 1, "Fix the crash"),
    ],
)
async def test_each_style_merges_with_git_and_marks_the_pull_merged(
    forgejo_sim: ForgejoSim, team: Team, api: Any, style: str, parent_count: int, subject: str
) -> None:
    number = diverged_pull(forgejo_sim, team)
    pull = forgejo_sim.issue(team.repo, number).pull
    assert pull is not None
    main_before, head = forgejo_sim.state.repo(team.repo).branches["main"], pull.head_sha

    status, body = await api("code-lead").call(
        "POST", merge_path(team, number), {"Do": style, "head_commit_id": head}
    )

    assert (status, body) == (200, "")
    main = bare(forgejo_sim, team.repo, "rev-parse", "refs/heads/main")
    assert forgejo_sim.state.repo(team.repo).branches["main"] == main != main_before
    assert file_at(forgejo_sim, team.repo, main, "fix.py") == "fixed = True"
    assert file_at(forgejo_sim, team.repo, main, "other.py") == "other = 1"
    assert len(parents(forgejo_sim, team.repo, main)) == parent_count
    assert bare(forgejo_sim, team.repo, "log", "-1", "--format=%s%n%cn", main).split("\n") == [
        subject, "code-lead",
    ]  # fmt: skip
    _, merged = await api("dev").call("GET", f"/repos/{team.repo}/pulls/{number}")
    assert (merged["merged"], merged["state"], merged["merge_commit_sha"]) == (True, "closed", main)
    assert merged["merged_by"]["login"] == "code-lead"


async def test_squash_credits_the_pull_requests_author(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = diverged_pull(forgejo_sim, team)
    assert await merge(api, team, number, {"Do": "squash"}) == 200
    author = bare(forgejo_sim, team.repo, "log", "-1", "--format=%an", "refs/heads/main")
    assert author == "dev"


async def test_rebase_replays_the_commits_on_the_new_base(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = diverged_pull(forgejo_sim, team)
    main_before = forgejo_sim.state.repo(team.repo).branches["main"]
    assert await merge(api, team, number, {"Do": "rebase"}) == 200
    main = bare(forgejo_sim, team.repo, "rev-parse", "refs/heads/main")
    assert parents(forgejo_sim, team.repo, main) == [main_before]  # linear, on top of main


async def test_fast_forward_only_moves_the_base_to_the_head(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    head = forgejo_sim.commit_file(team.repo, "fix", "fix.py", "fixed = True\n", "Fix", "dev")
    number = forgejo_sim.create_pull(team.repo, "dev", "Fix crash", head="fix")
    body = {"Do": "fast-forward-only"}
    assert (await api("code-lead").call("POST", merge_path(team, number), body))[0] == 200
    assert bare(forgejo_sim, team.repo, "rev-parse", "refs/heads/main") == head
    assert forgejo_sim.issue(team.repo, number).pull.merge_commit_sha == head  # type: ignore[union-attr]


async def test_fast_forward_only_refuses_a_head_behind_the_base(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = diverged_pull(forgejo_sim, team)
    main_before = forgejo_sim.state.repo(team.repo).branches["main"]
    body = {"Do": "fast-forward-only"}
    assert (await api("code-lead").call("POST", merge_path(team, number), body))[0] == 405
    assert bare(forgejo_sim, team.repo, "rev-parse", "refs/heads/main") == main_before
    assert not forgejo_sim.issue(team.repo, number).pull.merged  # type: ignore[union-attr]


# --- refusals ------------------------------------------------------------------------------


async def test_a_conflicting_pull_is_not_mergeable_and_merging_it_answers_405(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    forgejo_sim.commit_file(team.repo, "fix", "README.md", "# theirs\n", "Edit readme", "dev")
    number = forgejo_sim.create_pull(team.repo, "dev", "Readme", head="fix")
    _, clean = await api("dev").call("GET", f"/repos/{team.repo}/pulls/{number}")
    forgejo_sim.commit_file(team.repo, "main", "README.md", "# ours\n", "Edit readme too", "alice")
    main_before = forgejo_sim.state.repo(team.repo).branches["main"]

    _, conflicted = await api("dev").call("GET", f"/repos/{team.repo}/pulls/{number}")
    status, _ = await api("code-lead").call("POST", merge_path(team, number), {"Do": "merge"})

    assert (clean["mergeable"], conflicted["mergeable"], status) == (True, False, 405)
    assert bare(forgejo_sim, team.repo, "rev-parse", "refs/heads/main") == main_before


async def test_a_rebase_that_conflicts_where_the_merge_would_not_answers_409(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    # The head edits the README and then puts it back: merged as a whole it changes
    # nothing there (the pull checker sees no conflict), but its first commit, replayed
    # on a base that edited the README too, conflicts.
    forgejo_sim.commit_file(team.repo, "fix", "README.md", "# temp\n", "Try", "dev")
    forgejo_sim.commit_file(team.repo, "fix", "README.md", "# app\n", "Undo", "dev")
    forgejo_sim.commit_file(team.repo, "fix", "fix.py", "fixed = True\n", "Fix", "dev")
    number = forgejo_sim.create_pull(team.repo, "dev", "Fix", head="fix")
    forgejo_sim.commit_file(team.repo, "main", "README.md", "# App\n", "Title case", "alice")
    main_before = forgejo_sim.state.repo(team.repo).branches["main"]

    assert forgejo_sim.issue(team.repo, number).pull.mergeable  # type: ignore[union-attr]
    status, error = await api("code-lead").call("POST", merge_path(team, number), {"Do": "rebase"})

    assert (status, "conflict" in error["message"]) == (409, True)
    assert bare(forgejo_sim, team.repo, "rev-parse", "refs/heads/main") == main_before
    assert await merge(api, team, number, {"Do": "merge"}) == 200


async def test_a_head_moved_past_head_commit_id_answers_409_and_merges_nothing(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = diverged_pull(forgejo_sim, team)
    approved = forgejo_sim.issue(team.repo, number).pull.head_sha  # type: ignore[union-attr]
    forgejo_sim.commit_file(team.repo, "fix", "late.py", "late = 1\n", "Late push", "dev")
    body = {"Do": "merge", "head_commit_id": approved}
    status, error = await api("code-lead").call("POST", merge_path(team, number), body)
    assert (status, error["message"]) == (409, "head out of date")
    assert not forgejo_sim.issue(team.repo, number).pull.merged  # type: ignore[union-attr]


async def test_merging_again_answers_405_and_a_closed_pull_404(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = diverged_pull(forgejo_sim, team)
    assert await merge(api, team, number, {"Do": "merge"}) == 200
    assert await merge(api, team, number, {"Do": "merge"}) == 405
    other = forgejo_sim.create_pull(team.repo, "dev", "Other", head="other")
    forgejo_sim.issue(team.repo, other).state = "closed"
    assert await merge(api, team, other, {"Do": "merge"}) == 404


async def test_a_reader_may_not_merge_but_learns_first_that_a_pull_is_closed(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    forgejo_sim.add_user("rita", token="token-of-rita-0123456789")
    forgejo_sim.add_collaborator(team.repo, "rita", "read")
    number = diverged_pull(forgejo_sim, team)
    reader = Api(api("dev").sim, api("dev").session, "token-of-rita-0123456789")
    status, error = await reader.call("POST", merge_path(team, number), {"Do": "merge"})
    assert (status, error["message"]) == (405, "User not allowed to merge PR")
    forgejo_sim.issue(team.repo, number).state = "closed"
    assert (await reader.call("POST", merge_path(team, number), {"Do": "merge"}))[0] == 404


# --- after the merge ---------------------------------------------------------------------


async def test_delete_branch_after_merge_removes_the_head_branch_from_git(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = diverged_pull(forgejo_sim, team)
    body = {"Do": "merge", "delete_branch_after_merge": True}
    assert (await api("code-lead").call("POST", merge_path(team, number), body))[0] == 200
    assert "fix" not in forgejo_sim.state.repo(team.repo).branches
    assert bare(forgejo_sim, team.repo, "branch", "--list", "fix") == ""
    _, pull = await api("dev").call("GET", f"/repos/{team.repo}/pulls/{number}")
    assert pull["head"]["ref"] == "fix"  # the pull request still names its branch


async def test_closing_keywords_in_the_body_close_those_issues_on_merge(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    closed = [forgejo_sim.create_issue(team.repo, "alice", f"bug {n}") for n in range(1, 5)]
    kept = [forgejo_sim.create_issue(team.repo, "alice", f"idea {n}") for n in range(1, 3)]
    body = (
        f"Closes #{closed[0]}, fixes: #{closed[1]}\nRESOLVED #{closed[2]} and fixed #{closed[3]}.\n"
        f"See #{kept[0]}; closes  #{kept[1]} (two spaces do not count)."
    )
    number = diverged_pull(forgejo_sim, team, body)
    forgejo_sim.add_webhook(UNREACHABLE_HOOK)
    assert all(forgejo_sim.issue(team.repo, n).state == "open" for n in closed)  # not before

    assert await merge(api, team, number, {"Do": "merge"}) == 200
    await forgejo_sim.webhooks_idle()

    states = {n: (await api("alice").call("GET", f"/repos/{team.repo}/issues/{n}"))[1]["state"]
              for n in closed + kept}  # fmt: skip
    assert states == {**dict.fromkeys(closed, "closed"), **dict.fromkeys(kept, "open")}
    events = [(d.event, d.payload["action"], d.payload["number"]) for d in forgejo_sim.deliveries]
    assert events == [
        ("pull_request", "closed", number), *(("issues", "closed", n) for n in closed),
    ]  # fmt: skip
    timeline = forgejo_sim.timeline(team.repo, closed[0])
    assert [(i.type, i.user) for i in timeline][-1] == ("close", "code-lead")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Closes #20", [IssueAction("", 20, True)]),
        ("fix: #3", [IssueAction("", 3, True)]),
        ("(resolves #4)", [IssueAction("", 4, True)]),
        ("Closes acme/app#7", [IssueAction("acme/app", 7, True)]),
        ("closes #8, then reopens #8", [IssueAction("", 8, False)]),
        ("closes  #9", []),
        ("preclose #10", []),
        ("see #11", []),
        ("`closes #12`", []),
        ("closes #13x", []),
    ],
)
def test_closing_keywords_read_as_forgejo_reads_them(
    text: str, expected: list[IssueAction]
) -> None:
    assert issue_actions(text) == expected


# --- pushes and commit statuses ------------------------------------------------------------


async def test_a_push_to_the_head_sends_synchronized_and_a_push_to_the_base_rechecks(
    forgejo_sim: ForgejoSim, team: Team
) -> None:
    forgejo_sim.commit_file(team.repo, "fix", "README.md", "# theirs\n", "Edit", "dev")
    number = forgejo_sim.create_pull(team.repo, "dev", "Readme", head="fix")
    forgejo_sim.add_webhook(UNREACHABLE_HOOK)

    head = forgejo_sim.commit_file(team.repo, "fix", "more.py", "more = 1\n", "More", "dev")
    forgejo_sim.commit_file(team.repo, "main", "README.md", "# ours\n", "Edit too", "alice")
    await forgejo_sim.webhooks_idle()

    [sync] = forgejo_sim.deliveries  # the push to main moved no pull request's head
    assert (sync.event, sync.event_type) == ("pull_request", "pull_request_sync")
    payload = sync.payload
    assert (payload["action"], payload["number"], payload["sender"]["login"]) == (
        "synchronized", number, "dev",
    )  # fmt: skip
    assert payload["pull_request"]["head"]["sha"] == head
    absent = (payload["requested_reviewer"], payload["commit_id"], payload["review"])
    assert absent == (None, "", None)
    assert not forgejo_sim.issue(team.repo, number).pull.mergeable  # type: ignore[union-attr]


async def test_playing_ci_sets_a_status_on_the_pull_requests_head_and_sends_nothing(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = diverged_pull(forgejo_sim, team)
    head = forgejo_sim.issue(team.repo, number).pull.head_sha  # type: ignore[union-attr]
    forgejo_sim.add_webhook(UNREACHABLE_HOOK)
    threads_before = [(t.id, t.updated_at) for t in forgejo_sim.threads("dev")]

    forgejo_sim.set_pull_status(team.repo, number, "pending", context="ci/test")
    forgejo_sim.set_pull_status(team.repo, number, "failure", context="ci/test")
    await forgejo_sim.webhooks_idle()

    _, combined = await api("dev").call("GET", f"/repos/{team.repo}/commits/fix/status")
    assert (combined["state"], combined["sha"]) == ("failure", head)
    assert [(s["context"], s["status"]) for s in combined["statuses"]] == [("ci/test", "failure")]
    assert forgejo_sim.deliveries == []  # Forgejo has no commit-status webhook
    assert [(t.id, t.updated_at) for t in forgejo_sim.threads("dev")] == threads_before


async def test_a_status_reported_on_a_short_sha_lands_on_the_full_one(
    forgejo_sim: ForgejoSim, team: Team, api: Any
) -> None:
    number = diverged_pull(forgejo_sim, team)
    head = forgejo_sim.issue(team.repo, number).pull.head_sha  # type: ignore[union-attr]
    status, made = await api("reviewer").call(
        "POST", f"/repos/{team.repo}/statuses/{head[:10]}", {"state": "success", "context": "ci"}
    )
    assert (status, made["url"].rsplit("/", 1)[1]) == (201, head)
    _, combined = await api("dev").call("GET", f"/repos/{team.repo}/commits/{head}/status")
    assert combined["state"] == "success"
