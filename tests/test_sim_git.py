"""Real git in the Forgejo simulator: bare repositories served over smart HTTP by
`git http-backend`, authenticated like Forgejo, with pushes reaching pull requests.

The client side is the host's git, authenticated exactly as the daemon's workspace
scripts are (claude.git_auth_env: an extra header from the environment).
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.demo.sim.git import (
    RECEIVE_PACK,
    UPLOAD_PACK,
    git_available,
    parse_cgi_head,
    service_of,
    token_of,
)
from claude_hooks.runner.claude import git_auth_env
from tests.fakes.forgejo import Team, add_team

pytestmark = pytest.mark.skipif(
    not git_available(), reason="git (with git-http-backend) is not installed"
)


class Git:
    """The host's git as a client of the simulator, with a clean configuration."""

    def __init__(self, home: Path, base_url: str) -> None:
        self.home = home
        self.base_url = base_url
        home.mkdir(parents=True, exist_ok=True)

    def env(self, token: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "Dev",
            "GIT_AUTHOR_EMAIL": "dev@example.invalid",
            "GIT_COMMITTER_NAME": "Dev",
            "GIT_COMMITTER_EMAIL": "dev@example.invalid",
        }
        if token is not None:
            env |= git_auth_env(token, self.base_url)
        return env | (extra or {})

    async def run(
        self,
        *args: str,
        cwd: Path | None = None,
        token: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        # Not subprocess.run: the simulator answers on this same event loop.
        proc = await asyncio.create_subprocess_exec(
            "git", *args, cwd=cwd or self.home, env=self.env(token, extra),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    async def ok(self, *args: str, cwd: Path | None = None, token: str | None = None) -> str:
        code, out = await self.run(*args, cwd=cwd, token=token)
        assert code == 0, f"git {' '.join(args)} failed ({code}): {out}"
        return out.strip()

    async def commit(self, work: Path, path: str, content: str | bytes, message: str) -> str:
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        await self.ok("add", "-A", cwd=work)
        await self.ok("commit", "-q", "-m", message, cwd=work)
        return await self.ok("rev-parse", "HEAD", cwd=work)


@pytest.fixture
def team(forgejo_sim: ForgejoSim) -> Team:
    return add_team(forgejo_sim)


@pytest.fixture
def git(tmp_path: Path, forgejo_sim: ForgejoSim) -> Git:
    return Git(tmp_path / "client", forgejo_sim.base_url)


def clone_url(sim: ForgejoSim, repo: str) -> str:
    return f"{sim.base_url}/{repo}.git"


def bare(sim: ForgejoSim, repo: str, *args: str) -> str:
    """Read the bare repository directly (no server involved)."""
    done = subprocess.run(
        ["git", "--git-dir", str(sim.git_dir(repo)), *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


async def clone(git: Git, sim: ForgejoSim, team: Team, login: str = "dev") -> Path:
    work = git.home / f"work-{login}"
    await git.ok("clone", "-q", clone_url(sim, team.repo), str(work), token=team.token(login))
    return work


# --- the pure parts -------------------------------------------------------------------


def test_a_token_is_read_from_every_header_form_forgejo_accepts() -> None:
    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert token_of("token abc") == "abc"
    assert token_of("Bearer abc") == "abc"
    assert token_of(basic("dev", "abc")) == "abc"
    assert token_of(basic("abc", "x-oauth-basic")) == "abc"
    assert token_of(basic("abc", "")) == "abc"
    assert token_of("") is None
    assert token_of("Digest xyz") == ""
    assert token_of("Basic not-base64!") == ""


def test_the_service_of_a_request_decides_whether_it_writes() -> None:
    assert service_of("info/refs", {"service": RECEIVE_PACK}) == RECEIVE_PACK
    assert service_of("info/refs", {"service": UPLOAD_PACK}) == UPLOAD_PACK
    assert service_of(RECEIVE_PACK, {}) == RECEIVE_PACK
    assert service_of(UPLOAD_PACK, {}) == UPLOAD_PACK
    assert service_of("HEAD", {}) == UPLOAD_PACK


def test_cgi_headers_give_the_status_and_the_rest() -> None:
    lines = [b"Status: 403 Forbidden\r\n", b"Content-Type: text/plain\r\n", b"Expires: x\n"]
    assert parse_cgi_head(lines) == (403, {"Content-Type": "text/plain", "Expires": "x"})
    assert parse_cgi_head([b"Content-Type: a/b\r\n"]) == (200, {"Content-Type": "a/b"})


# --- clone and fetch --------------------------------------------------------------------


async def test_a_repository_clones_with_the_token_header_and_starts_with_a_readme(
    forgejo_sim: ForgejoSim, team: Team, git: Git
) -> None:
    work = await clone(git, forgejo_sim, team)
    assert (work / "README.md").read_text() == "# app\n"
    head = await git.ok("rev-parse", "HEAD", cwd=work)
    assert head == forgejo_sim.state.repo(team.repo).branches["main"]
    assert head == bare(forgejo_sim, team.repo, "rev-parse", "refs/heads/main")


async def test_git_requests_are_not_api_requests_and_skip_the_contract_check(
    forgejo_sim: ForgejoSim, team: Team, git: Git
) -> None:
    await clone(git, forgejo_sim, team)
    assert forgejo_sim.all_requests == ()


async def test_a_private_repository_refuses_anonymous_and_unknown_tokens(
    forgejo_sim: ForgejoSim, team: Team, git: Git
) -> None:
    url = clone_url(forgejo_sim, team.repo)
    code, out = await git.run("clone", "-q", url, "anon")
    assert code != 0 and "could not read Username" in out  # asked to log in: a 401
    code, out = await git.run("clone", "-q", url, "bad", token="not-a-token")
    assert code != 0 and "could not read Username" in out  # a 401 again
    code, out = await git.run("clone", "-q", url, "outsider", token=team.token("outsider"))
    assert code != 0 and "not found" in out.lower()
    refs = f"{url}/info/refs?service=git-upload-pack"
    async with aiohttp.ClientSession() as http, http.get(refs) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")


async def test_a_public_repository_clones_anonymously_but_refuses_an_anonymous_push(
    forgejo_sim: ForgejoSim, git: Git
) -> None:
    forgejo_sim.add_repo("acme/open")
    url = clone_url(forgejo_sim, "acme/open")
    await git.ok("clone", "-q", url, "open")
    work = git.home / "open"
    await git.commit(work, "a.txt", "a\n", "A")
    code, out = await git.run("push", "-q", "origin", "HEAD:refs/heads/anon", cwd=work)
    assert code != 0 and "could not read Username" in out
    assert "anon" not in forgejo_sim.state.repo("acme/open").branches


async def test_basic_auth_with_the_token_as_password_works_too(
    forgejo_sim: ForgejoSim, team: Team, git: Git
) -> None:
    header = base64.b64encode(f"dev:{team.token('dev')}".encode()).decode()
    extra = {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {header}",
    }
    code, out = await git.run("clone", "-q", clone_url(forgejo_sim, team.repo), "b", extra=extra)
    assert code == 0, out


# --- push -------------------------------------------------------------------------------


async def test_a_user_with_read_access_cannot_push(forgejo_sim: ForgejoSim, git: Git) -> None:
    forgejo_sim.add_user("reader", token="token-of-reader-0123456789")
    forgejo_sim.add_repo("acme/lib", collaborators={"reader": "read"}, private=True)
    url = clone_url(forgejo_sim, "acme/lib")
    work = git.home / "lib"
    await git.ok("clone", "-q", url, str(work), token="token-of-reader-0123456789")
    await git.commit(work, "x.txt", "x\n", "X")
    code, out = await git.run(
        "push", "-q", "origin", "HEAD:refs/heads/x", cwd=work, token="token-of-reader-0123456789"
    )
    assert code != 0 and "403" in out
    assert "x" not in forgejo_sim.state.repo("acme/lib").branches


async def test_a_pushed_branch_becomes_the_head_of_a_pull_request_opened_over_the_api(
    forgejo_sim: ForgejoSim, team: Team, git: Git
) -> None:
    work = await clone(git, forgejo_sim, team)
    await git.ok("checkout", "-q", "-b", "dev/1", cwd=work)
    sha = await git.commit(work, "GREETING.md", "hello\n", "Add greeting")
    await git.ok("push", "-q", "origin", "HEAD:refs/heads/dev/1", cwd=work, token=team.token("dev"))
    assert forgejo_sim.state.repo(team.repo).branches["dev/1"] == sha

    async with aiohttp.ClientSession(
        headers={"Authorization": f"token {team.token('dev')}"}
    ) as http:
        api = f"{forgejo_sim.base_url}/api/v1/repos/{team.repo}"
        body = {"head": "dev/1", "base": "main", "title": "Greeting", "body": "Closes #1"}
        async with http.post(f"{api}/pulls", json=body) as response:
            assert response.status == 201
            pull = await response.json()
        async with http.get(f"{api}/pulls/{pull['number']}.diff") as response:
            diff = await response.text()
    assert pull["head"]["sha"] == sha
    assert pull["merge_base"] == forgejo_sim.state.repo(team.repo).branches["main"]
    assert bare(forgejo_sim, team.repo, "rev-parse", f"refs/pull/{pull['number']}/head") == sha
    assert diff.startswith("diff --git a/GREETING.md b/GREETING.md")
    assert "+hello" in diff


async def test_pushing_to_a_pull_requests_branch_moves_its_head_and_its_pull_ref(
    forgejo_sim: ForgejoSim, team: Team, git: Git
) -> None:
    first = forgejo_sim.commit_file(team.repo, "feature", "app.py", "print(1)\n", "One", "alice")
    number = forgejo_sim.create_pull(team.repo, "alice", "Feature", head="feature")
    assert forgejo_sim.issue(team.repo, number).pull.head_sha == first  # type: ignore[union-attr]

    work = await clone(git, forgejo_sim, team)
    # What the workspace does for a reviewer: fetch the pull ref, check it out detached.
    await git.ok(
        "fetch", "-q", "origin", f"+refs/pull/{number}/head:refs/remotes/origin/pull/{number}",
        cwd=work, token=team.token("dev"),
    )  # fmt: skip
    assert await git.ok("rev-parse", f"origin/pull/{number}", cwd=work) == first
    await git.ok("checkout", "-q", "feature", cwd=work)
    second = await git.commit(work, "app.py", "print(2)\n", "Two")
    await git.ok("push", "-q", "origin", "feature", cwd=work, token=team.token("dev"))

    assert forgejo_sim.issue(team.repo, number).pull.head_sha == second  # type: ignore[union-attr]
    assert bare(forgejo_sim, team.repo, "rev-parse", f"refs/pull/{number}/head") == second
    diff = forgejo_sim.pull_diff(team.repo, number)
    assert "+print(2)" in diff and "print(1)" not in diff  # merge-base..head, not one commit


async def test_a_push_to_a_pull_requests_branch_sends_synchronized_from_the_pusher(
    forgejo_sim: ForgejoSim, team: Team, git: Git
) -> None:
    forgejo_sim.commit_file(team.repo, "feature", "app.py", "print(1)\n", "One", "alice")
    number = forgejo_sim.create_pull(team.repo, "alice", "Feature", head="feature")
    forgejo_sim.add_webhook("http://127.0.0.1:9/hook")  # refused; the delivery is recorded
    work = await clone(git, forgejo_sim, team)
    await git.ok("checkout", "-q", "feature", cwd=work)
    second = await git.commit(work, "app.py", "print(2)\n", "Two")
    await git.ok("push", "-q", "origin", "feature", "HEAD:refs/heads/side", cwd=work,
                 token=team.token("dev"))  # fmt: skip
    await forgejo_sim.webhooks_idle()

    [sync] = forgejo_sim.deliveries  # the new branch `side` heads no pull request
    assert (sync.event, sync.event_type, sync.payload["action"]) == (
        "pull_request", "pull_request_sync", "synchronized",
    )  # fmt: skip
    assert sync.payload["sender"]["login"] == "dev"  # the pusher, not the author (alice)
    assert sync.payload["pull_request"]["head"]["sha"] == second
    assert sync.payload["number"] == number


async def test_deleting_a_branch_by_push_removes_it_from_the_repository(
    forgejo_sim: ForgejoSim, team: Team, git: Git
) -> None:
    forgejo_sim.commit_file(team.repo, "old", "o.txt", "o\n", "Old")
    work = await clone(git, forgejo_sim, team)
    await git.ok("push", "-q", "origin", ":refs/heads/old", cwd=work, token=team.token("dev"))
    assert "old" not in forgejo_sim.state.repo(team.repo).branches
    assert bare(forgejo_sim, team.repo, "branch", "--list", "old") == ""


async def test_a_push_larger_than_git_buffers_streams_through_the_backend(
    forgejo_sim: ForgejoSim, team: Team, git: Git
) -> None:
    """Over http.postBuffer (1 MiB) git sends the pack chunked, of unknown length."""
    work = await clone(git, forgejo_sim, team)
    sha = await git.commit(work, "blob.bin", os.urandom(3 << 20), "Big")
    await git.ok("push", "-q", "origin", "HEAD:refs/heads/big", cwd=work, token=team.token("dev"))
    assert bare(forgejo_sim, team.repo, "rev-parse", "refs/heads/big") == sha


# --- pull requests nobody pushed ----------------------------------------------------------


async def test_a_pull_request_on_an_unpushed_branch_gets_a_real_commit_and_diff(
    forgejo_sim: ForgejoSim, team: Team
) -> None:
    number = forgejo_sim.create_pull(team.repo, "alice", "Fix", head="fix")
    pull = forgejo_sim.issue(team.repo, number).pull
    assert pull is not None
    assert bare(forgejo_sim, team.repo, "rev-parse", f"refs/pull/{number}/head") == pull.head_sha
    assert bare(forgejo_sim, team.repo, "show", "-s", "--format=%s", pull.head_sha) == "Work on fix"
    assert "+work on fix" in forgejo_sim.pull_diff(team.repo, number)


async def test_an_explicit_diff_or_made_up_head_keeps_the_old_behaviour(
    forgejo_sim: ForgejoSim, team: Team
) -> None:
    given = forgejo_sim.create_pull(team.repo, "alice", "A", head="a", diff="diff --git x\n")
    assert forgejo_sim.pull_diff(team.repo, given) == "diff --git x\n"
    made_up = forgejo_sim.create_pull(team.repo, "alice", "B", head="b", head_sha="f00d" * 10)
    assert forgejo_sim.issue(team.repo, made_up).pull.head_sha == "f00d" * 10  # type: ignore[union-attr]
    assert "+work on b" in forgejo_sim.pull_diff(team.repo, made_up)


def test_without_git_the_simulator_makes_up_commit_ids() -> None:
    sim = ForgejoSim(git=False)
    repo = sim.add_repo("acme/nogit")
    assert len(repo.branches["main"]) == 40
    with pytest.raises(Exception, match="no git repository"):
        sim.git_dir("acme/nogit")


async def test_a_fetch_whose_negotiation_git_gzips_reaches_the_backend_intact(
    forgejo_sim: ForgejoSim, team: Team, git: Git
) -> None:
    """Over 1 KiB of "have" lines, git gzips the upload-pack request body."""
    work = await clone(git, forgejo_sim, team)
    many = "for i in $(seq 150); do git commit -q --allow-empty -m $i || exit 1; done"
    local = await asyncio.create_subprocess_exec("sh", "-c", many, cwd=work, env=git.env(None))
    assert await local.wait() == 0
    theirs = forgejo_sim.commit_file(team.repo, "main", "new.txt", "new\n", "New upstream")
    code, out = await git.run("fetch", "origin", cwd=work, token=team.token("dev"))
    assert code == 0, out
    assert await git.ok("rev-parse", "origin/main", cwd=work) == theirs
