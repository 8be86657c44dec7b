"""The working tree of a task, inside the agent's container, managed with git.

One tree per thread, /state/work/<owner>/<repo>/<number>, kept for follow-ups.
git runs as the agent user (the one that runs claude: git refuses a tree owned by
another uid) and authenticates with a header from the exec's environment
(claude.git_auth_env), so the token is never written into .git/config.

The decisions (which directory, which ref, which branch) are pure functions;
`prepare` and `publish` only run the scripts they choose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from aiodocker.containers import DockerContainer

from claude_hooks.runner.claude import STATE_DIR
from claude_hooks.runner.containers import run_exec

WORK_ROOT = f"{STATE_DIR}/work"


class WorkspaceError(Exception):
    """The working tree could not be prepared or pushed; the message says why."""


class PushRefused(WorkspaceError):
    """git push failed: the forge refused it (protected branch, no write access, a push
    that raced ours) or could not be reached. `detail` is git's own last words."""

    def __init__(self, branch: str, exit_code: int | None, output: str) -> None:
        super().__init__(f"pushing {branch} failed (exit {exit_code}): {output}")
        self.branch = branch
        self.exit_code = exit_code
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        self.detail = lines[-1] if lines else ""


class Checkout(StrEnum):
    BRANCH = "branch"  # dev: branch <agent>/<number> from the default branch, reused later
    PULL_HEAD = "pull-head"  # reviewer/lead: the PR's head, at the sha the task was queued for
    # dev on a pull request of this repository: its head branch, checked out by name, so
    # what Claude commits is pushed to the pull request (issue #14, item 6)
    PULL_BRANCH = "pull-branch"
    DEFAULT = "default"  # anything else: the default branch, detached
    NONE = "none"  # no repository: an empty directory


@dataclass(frozen=True)
class WorkspacePlan:
    path: str
    checkout: Checkout
    clone_url: str = ""
    base: str = "main"  # default branch
    branch: str = ""  # the branch a dev pushes: its own, or the pull request's head branch
    pull_number: int | None = None
    head_sha: str = ""


def task_directory(repo: str, number: int | None, task_id: int) -> str:
    if number is None:
        return f"{WORK_ROOT}/_tasks/{task_id}"
    return f"{WORK_ROOT}/{repo}/{number}"


# What Claude Code reads from a working tree by itself, at any depth: settings with
# hooks (shell commands), permissions and env; MCP servers; CLAUDE.md instructions;
# commands, agents and skills. Plus .gitmodules (git fetch may follow it) and
# .ripgreprc. On a pull request's head these are the author's; prepare replaces them
# with the default branch's (claude_argv also tells the CLI not to load them).
CLAUDE_CONFIG_NAMES = (
    ".claude", ".claude.json", ".mcp.json", "CLAUDE.md", "CLAUDE.local.md",
    ".gitmodules", ".ripgreprc",
)  # fmt: skip


def config_pathspecs() -> str:
    """The names as git pathspecs, each itself and everything under it, at any depth."""
    specs = [f"':(glob)**/{name}{tail}'" for name in CLAUDE_CONFIG_NAMES for tail in ("", "/**")]
    return " ".join(specs)


# Positional arguments: $1 dir, $2 url, $3 checkout, $4 base, $5 branch, $6 pull, $7 sha.
# In pull-head mode the checkout is forced (an earlier restore left the tree changed),
# then restore_config makes the configuration paths the default branch's in the
# working tree only: the index stays at the head, so `git show HEAD:<path>` shows the
# pull request's version. Only git touches the files: it removes symlinks rather than
# following them, never writes through one, and `clean` removes untracked (and
# ignored) copies, e.g. a settings.local.json left behind.
PREPARE_SCRIPT = r"""
set -eu
dir=$1 url=$2 mode=$3 base=$4 branch=$5 pull=$6 sha=$7
restore_config() {
    set -- @CONFIG_PATHSPECS@
    git clean -ffdxq -- "$@"
    # The default branch's tree, or none at all (an empty repository): fail closed.
    tree=$(git rev-parse --verify --quiet "origin/$base^{tree}") ||
        tree=$(git hash-object -t tree /dev/null)
    [ -n "$(git ls-files --with-tree="$tree" -- "$@")" ] || return 0
    git ls-files -z --with-tree="$tree" -- "$@" |
        git --literal-pathspecs restore --quiet --source="$tree" --worktree \
            --pathspec-from-file=- --pathspec-file-nul
}
mkdir -p "$dir"
[ "$mode" = none ] && exit 0
command -v git >/dev/null 2>&1 || { echo "git is not installed in this image" >&2; exit 127; }
if [ -d "$dir/.git" ]; then
    # The tree was cloned from what forgejo.url said then: fetch from where it says now.
    git -C "$dir" remote set-url origin "$url"
    git -C "$dir" fetch --quiet --prune --no-recurse-submodules origin
else
    git clone --quiet --no-checkout "$url" "$dir"
fi
cd "$dir"
case $mode in
branch|pull-branch)
    if [ "$mode" = pull-branch ] &&
        ! git rev-parse --verify --quiet "refs/remotes/origin/$branch" >/dev/null; then
        echo "the pull request's branch $branch is not in the repository any more" >&2
        exit 1
    fi
    if git rev-parse --verify --quiet "refs/heads/$branch" >/dev/null; then
        git checkout --quiet "$branch"
        # Others may have pushed to the branch since: build on that, never force over
        # it (publish's lease is against what this fetch saw).
        if git rev-parse --verify --quiet "refs/remotes/origin/$branch" >/dev/null &&
            ! git merge --quiet --ff-only "origin/$branch" >/dev/null 2>&1; then
            git rebase --quiet "origin/$branch" >&2 || {
                git rebase --abort
                echo "$branch has commits here that conflict with origin/$branch" >&2
                exit 1
            }
        fi
    elif git rev-parse --verify --quiet "refs/remotes/origin/$branch" >/dev/null; then
        git checkout --quiet -b "$branch" "origin/$branch"
    else
        git checkout --quiet -b "$branch" "origin/$base"
    fi ;;
pull-head)
    git fetch --quiet --no-recurse-submodules origin \
        "+refs/pull/$pull/head:refs/remotes/origin/pull/$pull"
    if [ -n "$sha" ] && git cat-file -e "$sha^{commit}" 2>/dev/null; then
        git checkout --quiet --force --detach "$sha"
    else
        git checkout --quiet --force --detach "origin/pull/$pull"
    fi
    restore_config ;;
*)
    git checkout --quiet --detach "origin/$base" ;;
esac
git rev-parse HEAD
""".replace("@CONFIG_PATHSPECS@", config_pathspecs())

# $1 dir, $2 the ref new work is counted from, $3 branch. Prints the commits HEAD has
# over that ref, then pushes the branch when there are any. A dev branch counts from the
# default branch (everything on it is the task's); a pull request's branch from its head
# as fetched (only what this run added), and the lease keeps a push that raced us out.
PUBLISH_SCRIPT = r"""
set -eu
cd "$1"
commits=$(git rev-list --count "$2..HEAD")
echo "commits=$commits"
[ "$commits" -gt 0 ] || exit 0
git log --format='%h %s' "$2..HEAD"
git push --quiet --force-with-lease origin "HEAD:refs/heads/$3"
echo "head=$(git rev-parse HEAD)"
"""


# $1 dir, $2 the commit reviewed before. What changed on the checked-out head since then,
# or one line saying the commit is not here (a force-push dropped it): a re-review reads
# it (issue #14, item 2). Forgejo's compare API names only the files and commits, so the
# diff itself comes from git, in the tree the review runs in.
DIFF_SINCE_SCRIPT = r"""
set -eu
cd "$1"
if ! git cat-file -e "$2^{commit}" 2>/dev/null; then
    echo "missing=$2"
    exit 0
fi
git -c core.quotePath=false diff --no-color --no-ext-diff "$2" HEAD --
"""


def diff_since_args(plan: WorkspacePlan, since: str) -> list[str]:
    return ["sh", "-c", DIFF_SINCE_SCRIPT, "diff-since", plan.path, since]


@dataclass(frozen=True)
class DiffSince:
    since: str
    text: str = ""  # the unified diff since..HEAD ("" when nothing changed)
    missing: bool = False  # the commit is not in the tree (history was rewritten)


def parse_diff_since(since: str, output: str) -> DiffSince:
    if output.startswith("missing="):
        return DiffSince(since, missing=True)
    return DiffSince(since, text=output)


def claude_makes_directory(plan: WorkspacePlan) -> bool:
    """Whether claude's own exec makes the task's directory (`entering`), with no
    workspace exec before it: with nothing to check out that exec would only run
    `mkdir -p`, one more engine round trip on every such task's way to Claude."""
    return plan.checkout is Checkout.NONE


# $0 a name for ps, $1 the directory, then the command. It replaces the shell (one pid:
# the task's marker finds it, its exit code is the exec's); if mkdir fails, sh says why
# on stderr and the command never starts.
ENTER_SCRIPT = 'mkdir -p -- "$1" && cd -- "$1" && shift && exec "$@"'


def entering(directory: str, argv: Sequence[str]) -> list[str]:
    """`argv` run in `directory`, made first (as the exec's user) if it is not there."""
    return ["sh", "-c", ENTER_SCRIPT, "enter-workspace", directory, *argv]


def prepare_args(plan: WorkspacePlan) -> list[str]:
    return [
        "sh", "-c", PREPARE_SCRIPT, "prepare-workspace", plan.path, plan.clone_url,
        plan.checkout.value, plan.base, plan.branch,
        str(plan.pull_number or ""), plan.head_sha,
    ]  # fmt: skip


def publish_since(plan: WorkspacePlan) -> str:
    """The ref the commits a publish pushes are counted from."""
    if plan.checkout is Checkout.PULL_BRANCH:
        return f"origin/{plan.branch}"
    return f"origin/{plan.base}"


def publish_args(plan: WorkspacePlan) -> list[str]:
    since = publish_since(plan)
    return ["sh", "-c", PUBLISH_SCRIPT, "publish-workspace", plan.path, since, plan.branch]


@dataclass(frozen=True)
class Published:
    commits: int
    log: tuple[str, ...]  # "abc1234 subject" lines
    head: str = ""  # the sha pushed, when anything was


def parse_publish_output(output: str) -> Published:
    lines = [line for line in output.splitlines() if line.strip()]
    count, head = 0, ""
    for line in lines:
        if line.startswith("commits="):
            count = int(line.removeprefix("commits=") or 0)
        elif line.startswith("head="):
            head = line.removeprefix("head=").strip()
    subjects = tuple(line for line in lines if not line.startswith(("commits=", "head=")))
    return Published(commits=count, log=subjects[:count], head=head)


async def prepare(
    container: DockerContainer, plan: WorkspacePlan, *, user: str, env: Sequence[str]
) -> str:
    """Clone or fetch, check out what the plan says; the HEAD sha ("" without git)."""
    code, output = await run_exec(container, prepare_args(plan), user=user, environment=env)
    if code != 0:
        raise WorkspaceError(f"preparing {plan.path} failed (exit {code}): {output.strip()}")
    return output.strip().splitlines()[-1] if output.strip() else ""


async def diff_since(
    container: DockerContainer, plan: WorkspacePlan, since: str, *, user: str, env: Sequence[str]
) -> DiffSince:
    """The diff from `since` to the tree's HEAD (the caller checks `since` is a sha)."""
    args = diff_since_args(plan, since)
    code, output = await run_exec(container, args, user=user, environment=env)
    if code != 0:
        raise WorkspaceError(f"diffing {plan.path} since {since[:10]} failed (exit {code})")
    return parse_diff_since(since, output)


async def publish(
    container: DockerContainer, plan: WorkspacePlan, *, user: str, env: Sequence[str]
) -> Published:
    """Push the dev branch when Claude committed to it."""
    code, output = await run_exec(container, publish_args(plan), user=user, environment=env)
    if code != 0:
        raise PushRefused(plan.branch, code, output.strip())
    return parse_publish_output(output)
