"""The dev role with real git: a mention on an issue → a branch pushed to the simulator's
bare repository → a pull request "Closes #n" → the tracking comment links it; a
follow-up mention reuses the branch and resumes Claude's session.

Everything is the product's own code path (poller, scheduler, container, workspace
scripts, publish, reporter) against the Forgejo simulator's real git over HTTP. The
agent container borrows the host's userland (tests/e2e/host_image.py) for git; only
claude is a stand-in: a shell script that commits in its working directory and
replays a recorded stream-json run.

The workspace scripts are also run straight on the host against the same git server,
for the cases a whole flow would be slow to set up (a branch that diverged, a pull
request's head).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from claude_hooks.config import AgentConfig, Config, ConfigError, bind_spec_problem
from claude_hooks.daemon.services import Services
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.demo.sim.git import git_available
from claude_hooks.intake.mentions import mentioned_names
from claude_hooks.runner import workspace
from claude_hooks.runner.claude import git_auth_env
from claude_hooks.runner.containers import ContainerManager
from claude_hooks.tasks import Task, TaskState
from claude_hooks.text import find_marker
from tests.e2e.host_image import HOST_USR_MOUNT, built_host_image, samples_dir  # noqa: F401
from tests.fakes.configs import ConfigFactory
from tests.fakes.docker import AGENT_UID
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(
    not git_available(), reason="git with git-http-backend is not installed"
)

REPO = "acme/app"
ALICE, DEV, REVIEWER = "alice", "dev", "reviewer"
DEV_TOKEN = "forgejo-token-of-dev-0123456789"
REVIEWER_TOKEN = "forgejo-token-of-reviewer-0123456789"
SESSION = "5625f66b-7328-4ea2-862c-2a7754499e4e"  # the session id of tool-run-success.jsonl

# What a dev agent does, minus the model: read the prompt, change a file, commit, and
# report the recorded run. git's chatter goes to stderr; stdout is the stream-json.
FAKE_CLAUDE = r"""#!/bin/sh
set -eu
cat >/dev/null
printf '%s\n' "$@" >"/record/argv-$CLAUDE_HOOKS_TASK"
env >"/record/env-$CLAUDE_HOOKS_TASK"
echo "Hello from task $CLAUDE_HOOKS_TASK" >>GREETING.md
git add -A >&2
git commit -q -m "Greeting from task $CLAUDE_HOOKS_TASK" >&2
cat /samples/tool-run-success.jsonl
"""


def dev_config(
    factory: ConfigFactory, sim: ForgejoSim, image: str, tmp: Path, *, reviewer: bool = False
) -> Config:
    sim.add_user(ALICE, token="forgejo-token-of-alice-0123456789")
    sim.add_user(DEV, token=DEV_TOKEN)
    sim.add_user(REVIEWER, token=REVIEWER_TOKEN)
    sim.add_repo(REPO, collaborators={ALICE: "write", DEV: "admin", REVIEWER: "admin"})
    token = factory.secret("dev-token", DEV_TOKEN)
    creds = factory.secret("dev-creds.json", '{"claudeAiOauth": {"accessToken": "oauth-x-123"}}')
    os.chown(creds, AGENT_UID, AGENT_UID)
    script = tmp / "fake-claude"
    script.write_text(FAKE_CLAUDE)
    script.chmod(0o755)
    record = tmp / "record"
    record.mkdir()
    record.chmod(0o777)
    mounts = [
        HOST_USR_MOUNT, f"{script}:/opt/fake/claude:ro", f"{samples_dir()}:/samples:ro",
        f"{record}:/record",
    ]  # fmt: skip
    common = {
        "credentials_file": str(creds), "image": image, "network": "host", "checkout": True,
        "timeout": 60, "mounts": mounts, "claude_command": "/opt/fake/claude",
    }  # fmt: skip
    agents = [factory.agent(DEV, token_file=str(token), **common)]
    if reviewer:
        agents[0]["review_by"] = REVIEWER
        reviewer_token = factory.secret("reviewer-token", REVIEWER_TOKEN)
        agents.append(
            factory.agent(REVIEWER, role="reviewer", token_file=str(reviewer_token), **common)
        )
    return factory.load(
        forgejo={"url": sim.base_url},
        daemon={"poll_interval": 0.2, "drain_timeout": 5},
        agents=agents,
    )


@pytest.fixture
def with_reviewer() -> bool:
    return False


@pytest.fixture
async def services(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    host_image: str,
    test_labels: dict[str, str],
    tmp_path: Path,
    with_reviewer: bool,
) -> AsyncIterator[Services]:
    config = dev_config(config_factory, forgejo_sim, host_image, tmp_path, reviewer=with_reviewer)
    async with Services.running(
        config, daemon_id="test-dev-flow", extra_labels=test_labels, listen=False
    ) as started:
        yield started


async def finished(services: Services, count: int, limit: float = 30) -> list[Task]:
    """The first `count` tasks, once all of them have ended."""

    async def ended() -> list[Task] | None:
        tasks = sorted(await services.store.list_tasks(limit=10), key=lambda t: t.id)
        done = len(tasks) >= count and all(t.state.is_final for t in tasks[:count])
        return tasks[:count] if done else None

    return await wait_until(ended, timeout=limit, interval=0.1, what=f"{count} tasks to end")


def bare_git(sim: ForgejoSim, *args: str) -> str:
    done = subprocess.run(
        ["git", "--git-dir", str(sim.git_dir(REPO)), *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def tracking_bodies(sim: ForgejoSim, number: int) -> list[str]:
    return [c.body for c in sim.comments(REPO, number) if c.user == DEV]


@pytest.mark.docker
async def test_a_mention_pushes_a_branch_opens_a_pull_request_and_a_follow_up_resumes(
    forgejo_sim: ForgejoSim, services: Services, tmp_path: Path
) -> None:
    number = forgejo_sim.create_issue(REPO, ALICE, "Add a greeting", "Please say hello.")
    forgejo_sim.add_comment(REPO, number, ALICE, "@dev please implement this")
    [first] = await finished(services, 1)
    assert first.state is TaskState.SUCCEEDED, first.error

    branch = f"dev/{number}"
    head = bare_git(forgejo_sim, "rev-parse", f"refs/heads/{branch}")
    assert (
        bare_git(forgejo_sim, "log", "-1", "--format=%s", head) == f"Greeting from task {first.id}"
    )
    assert bare_git(forgejo_sim, "log", "-1", "--format=%an", head) == DEV
    pulls = [i for i in forgejo_sim.state.issues.values() if i.pull is not None]
    assert len(pulls) == 1
    pull = pulls[0]
    assert pull.pull is not None and pull.pull.head_ref == branch
    assert pull.pull.head_sha == head and pull.user == DEV
    assert f"Closes #{number}" in pull.body and pull.title == "Add a greeting"
    assert "+Hello from task" in forgejo_sim.pull_diff(REPO, pull.number)
    pull_url = f"{forgejo_sim.base_url}/{REPO}/pulls/{pull.number}"

    def linked(task: Task) -> bool:
        return any(find_marker(b) == task.id and pull_url in b for b in tracking_bodies(
            forgejo_sim, number))  # fmt: skip

    await wait_until(lambda: linked(first))

    # Meanwhile alice pushes to the branch herself: the agent must build on her commit.
    hers = forgejo_sim.commit_file(REPO, branch, "NOTES.md", "from alice\n", "Notes", ALICE)
    forgejo_sim.add_comment(REPO, number, ALICE, "@dev now add a second line")
    second = (await finished(services, 2))[1]
    assert second.state is TaskState.SUCCEEDED, second.error

    argv = (tmp_path / "record" / f"argv-{second.id}").read_text().splitlines()
    assert argv[argv.index("--resume") + 1] == SESSION
    assert "--resume" not in (tmp_path / "record" / f"argv-{first.id}").read_text().splitlines()
    new_head = bare_git(forgejo_sim, "rev-parse", f"refs/heads/{branch}")
    # The same branch, grown on top of alice's commit rather than forced over it.
    assert bare_git(forgejo_sim, "rev-list", "--first-parent", f"{head}..{new_head}").split() == [
        new_head, hers,
    ]  # fmt: skip
    assert pull.pull.head_sha == new_head  # the open pull request followed the push
    assert bare_git(forgejo_sim, "rev-parse", f"refs/pull/{pull.number}/head") == new_head
    assert len([i for i in forgejo_sim.state.issues.values() if i.pull is not None]) == 1
    await wait_until(lambda: linked(second))


# --- the workspace scripts on the host, against the simulator's git -------------------------


class Scripts:
    """Runs workspace.py's prepare and publish scripts as the container would."""

    def __init__(self, sim: ForgejoSim, root: Path) -> None:
        sim.add_user(DEV, token=DEV_TOKEN)
        sim.add_user(ALICE)
        sim.add_repo(REPO, collaborators={DEV: "write", ALICE: "write"}, private=True)
        self.sim, self.root = sim, root
        self.env = {
            "PATH": os.environ["PATH"], "HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": DEV, "GIT_AUTHOR_EMAIL": "dev@example.invalid",
            "GIT_COMMITTER_NAME": DEV, "GIT_COMMITTER_EMAIL": "dev@example.invalid",
            **git_auth_env(DEV_TOKEN, sim.base_url),
        }  # fmt: skip

    def plan(self, checkout: workspace.Checkout, **fields: object) -> workspace.WorkspacePlan:
        return workspace.WorkspacePlan(
            path=str(self.root / "work"), checkout=checkout,
            clone_url=f"{self.sim.base_url}/{REPO}.git", **fields,  # type: ignore[arg-type]
        )  # fmt: skip

    async def run(self, args: list[str], cwd: Path | None = None) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *args, env=self.env, cwd=cwd or self.root,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    async def commit(self, plan: workspace.WorkspacePlan, path: str, content: str) -> None:
        (Path(plan.path) / path).write_text(content)
        for args in (["git", "add", "-A"], ["git", "commit", "-q", "-m", f"Edit {path}"]):
            code, out = await self.run(args, cwd=Path(plan.path))
            assert code == 0, out


@pytest.fixture
def scripts(forgejo_sim: ForgejoSim, tmp_path: Path) -> Scripts:
    return Scripts(forgejo_sim, tmp_path)


async def test_a_branch_that_diverged_is_rebased_onto_the_pushed_one(scripts: Scripts) -> None:
    plan = scripts.plan(workspace.Checkout.BRANCH, branch="dev/1")
    assert (await scripts.run(workspace.prepare_args(plan)))[0] == 0
    await scripts.commit(plan, "mine.txt", "mine\n")
    code, out = await scripts.run(workspace.publish_args(plan))
    assert code == 0 and workspace.parse_publish_output(out).commits == 1, out
    await scripts.commit(plan, "unpushed.txt", "a publish that failed\n")
    hers = scripts.sim.commit_file(REPO, "dev/1", "hers.txt", "hers\n", "Hers", ALICE)

    code, out = await scripts.run(workspace.prepare_args(plan))
    assert code == 0, out
    code, out = await scripts.run(workspace.publish_args(plan))
    assert code == 0 and workspace.parse_publish_output(out).commits == 3, out
    head = bare_git(scripts.sim, "rev-parse", "refs/heads/dev/1")
    assert bare_git(scripts.sim, "rev-parse", f"{head}~1") == hers
    assert bare_git(scripts.sim, "show", f"{head}:unpushed.txt") == "a publish that failed"


async def test_a_conflicting_divergence_fails_prepare_with_the_reason(scripts: Scripts) -> None:
    plan = scripts.plan(workspace.Checkout.BRANCH, branch="dev/1")
    assert (await scripts.run(workspace.prepare_args(plan)))[0] == 0
    await scripts.commit(plan, "same.txt", "mine\n")
    scripts.sim.commit_file(REPO, "dev/1", "same.txt", "hers\n", "Hers", ALICE)
    code, out = await scripts.run(workspace.prepare_args(plan))
    assert code != 0 and "conflict with origin/dev/1" in out
    assert not (Path(plan.path) / ".git" / "rebase-merge").exists()  # no rebase left half-done


async def test_a_kept_tree_fetches_from_where_the_plan_says_now(scripts: Scripts) -> None:
    # A tree kept for follow-ups remembers the URL it was cloned from; after forgejo.url
    # changed (or a test's simulator moved to another port) every fetch went there.
    plan = scripts.plan(workspace.Checkout.BRANCH, branch="dev/3")
    assert (await scripts.run(workspace.prepare_args(plan)))[0] == 0
    moved = ["git", "-C", plan.path, "remote", "set-url", "origin", "http://127.0.0.1:9/x.git"]
    assert (await scripts.run(moved))[0] == 0
    code, out = await scripts.run(workspace.prepare_args(plan))
    assert code == 0, out


async def test_nothing_committed_means_nothing_pushed(scripts: Scripts) -> None:
    plan = scripts.plan(workspace.Checkout.BRANCH, branch="dev/2")
    assert (await scripts.run(workspace.prepare_args(plan)))[0] == 0
    code, out = await scripts.run(workspace.publish_args(plan))
    assert code == 0 and workspace.parse_publish_output(out).commits == 0
    assert "dev/2" not in scripts.sim.state.repo(REPO).branches


async def test_a_pull_request_head_is_checked_out_at_the_sha_the_task_was_queued_for(
    scripts: Scripts,
) -> None:
    first = scripts.sim.commit_file(REPO, "fix", "fix.txt", "one\n", "One", ALICE)
    number = scripts.sim.create_pull(REPO, ALICE, "Fix", head="fix")
    scripts.sim.commit_file(REPO, "fix", "fix.txt", "two\n", "Two", ALICE)
    plan = scripts.plan(workspace.Checkout.PULL_HEAD, pull_number=number, head_sha=first)
    code, out = await scripts.run(workspace.prepare_args(plan))
    assert code == 0 and out.strip().splitlines()[-1] == first, out
    assert (Path(plan.path) / "fix.txt").read_text() == "one\n"


# --- the agent container's extra bind mounts (what lends it the host's /usr) ----------------


def test_a_bind_spec_is_host_colon_container_with_an_optional_mode() -> None:
    assert bind_spec_problem("/usr:/usr:ro") is None
    assert bind_spec_problem("/srv/tools:/opt/tools") is None
    assert bind_spec_problem("/a:/b:rw") is None
    assert bind_spec_problem("/usr") == 'must be "host:container" or "host:container:ro"'
    assert bind_spec_problem("usr:/usr") == "both paths must be absolute"
    assert bind_spec_problem("/a:/b:rx") == "mode must be ro or rw, got 'rx'"


def test_a_bad_mount_names_its_key(config_factory: ConfigFactory) -> None:
    agent = config_factory.agent(mounts=["/usr:/usr:ro", "relative:/x"])
    with pytest.raises(ConfigError, match=r"agents\[0\]\.mounts\[1\]: 'relative:/x'"):
        config_factory.load(agents=[agent])


def test_mounts_are_binds_of_the_container_and_part_of_its_config_hash(tmp_path: Path) -> None:
    manager = ContainerManager(None)  # type: ignore[arg-type]  # pure: no engine is asked
    plain = AgentConfig(name="dev", token_file=tmp_path / "t", credentials_file=tmp_path / "c")
    mounted = AgentConfig(
        name="dev", token_file=tmp_path / "t", credentials_file=tmp_path / "c",
        mounts=(HOST_USR_MOUNT,),
    )  # fmt: skip
    assert "Binds" not in manager.container_config(plain)["HostConfig"]
    assert manager.container_config(mounted)["HostConfig"]["Binds"] == [HOST_USR_MOUNT]
    assert manager.config_hash(mounted) != manager.config_hash(plain)


@pytest.mark.docker
async def test_claude_never_holds_the_forgejo_token_while_clone_and_push_still_use_it(
    forgejo_sim: ForgejoSim, services: Services, tmp_path: Path
) -> None:
    # A prompt-injected Claude ran `env | grep GIT_CONFIG_VALUE | base64` and posted the
    # agent's token (issue 12): its exec's environment must hold no Forgejo credential.
    number = forgejo_sim.create_issue(REPO, ALICE, "Add a greeting", "Please say hello.")
    forgejo_sim.add_comment(REPO, number, ALICE, "@dev please implement this")
    [task] = await finished(services, 1)
    assert task.state is TaskState.SUCCEEDED, task.error
    claude_env = (tmp_path / "record" / f"env-{task.id}").read_text()
    assert f"CLAUDE_HOOKS_TASK={task.id}" in claude_env  # it is the claude exec's environment
    assert DEV_TOKEN not in claude_env
    assert "GIT_CONFIG" not in claude_env and "extraHeader" not in claude_env
    # The clone before Claude and the push after it did authenticate.
    assert bare_git(forgejo_sim, "log", "-1", "--format=%s", f"refs/heads/dev/{number}") == (
        f"Greeting from task {task.id}"
    )


@pytest.mark.docker
@pytest.mark.parametrize("with_reviewer", [True])
async def test_one_review_request_makes_one_review_task_and_no_echoes(
    forgejo_sim: ForgejoSim, services: Services
) -> None:
    # Issue 12: the tracking comments said "Requested by @dev" and the PR body mentioned
    # the requester, so one review request made 5-6 tasks (once 246 in 40 s).
    number = forgejo_sim.create_issue(REPO, ALICE, "Add a greeting", "Please say hello.")
    forgejo_sim.add_comment(REPO, number, ALICE, "@dev please implement this")
    dev_task, review_task = await finished(services, 2)
    assert (dev_task.spec.agent, review_task.spec.agent) == (DEV, REVIEWER)
    assert (dev_task.spec.hop, review_task.spec.hop) == (0, 1)  # from the stored hop of task 1
    assert review_task.state is TaskState.SUCCEEDED, review_task.error
    [pull] = [i for i in forgejo_sim.state.issues.values() if i.pull is not None]
    await wait_until(lambda: len(forgejo_sim.reviews(REPO, pull.number)) == 1)
    await wait_until(lambda: all(t.status == "read" for t in forgejo_sim.threads(DEV)))
    # Every notification handled: another poll by each agent finds nothing more to do.
    for poller in services.pollers:
        assert await poller.poll_once() == 0
    assert len(await services.store.list_tasks(limit=10)) == 2
    posted = [c.body for n in (number, pull.number) for c in forgejo_sim.comments(REPO, n)]
    assert all(not mentioned_names(body) for body in [*posted[1:], pull.body] if find_marker(body))
