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


class Checkout(StrEnum):
    BRANCH = "branch"  # dev: branch <agent>/<number> from the default branch, reused later
    PULL_HEAD = "pull-head"  # reviewer/lead: the PR's head, at the sha the task was queued for
    DEFAULT = "default"  # anything else: the default branch, detached
    NONE = "none"  # no repository: an empty directory


@dataclass(frozen=True)
class WorkspacePlan:
    path: str
    checkout: Checkout
    clone_url: str = ""
    base: str = "main"  # default branch
    branch: str = ""  # dev branch name
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
branch)
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

# $1 dir, $2 base, $3 branch. Prints the commits the branch has over the base, then
# pushes the branch when there are any.
PUBLISH_SCRIPT = r"""
set -eu
cd "$1"
commits=$(git rev-list --count "origin/$2..HEAD")
echo "commits=$commits"
[ "$commits" -gt 0 ] || exit 0
git log --format='%h %s' "origin/$2..HEAD"
git push --quiet --force-with-lease origin "HEAD:refs/heads/$3"
"""


def prepare_args(plan: WorkspacePlan) -> list[str]:
    return [
        "sh", "-c", PREPARE_SCRIPT, "prepare-workspace", plan.path, plan.clone_url,
        plan.checkout.value, plan.base, plan.branch,
        str(plan.pull_number or ""), plan.head_sha,
    ]  # fmt: skip


def publish_args(plan: WorkspacePlan) -> list[str]:
    return ["sh", "-c", PUBLISH_SCRIPT, "publish-workspace", plan.path, plan.base, plan.branch]


@dataclass(frozen=True)
class Published:
    commits: int
    log: tuple[str, ...]  # "abc1234 subject" lines


def parse_publish_output(output: str) -> Published:
    lines = [line for line in output.splitlines() if line.strip()]
    count = 0
    for line in lines:
        if line.startswith("commits="):
            count = int(line.removeprefix("commits=") or 0)
    subjects = tuple(line for line in lines if not line.startswith("commits="))
    return Published(commits=count, log=subjects[:count])


async def prepare(
    container: DockerContainer, plan: WorkspacePlan, *, user: str, env: Sequence[str]
) -> str:
    """Clone or fetch, check out what the plan says; the HEAD sha ("" without git)."""
    code, output = await run_exec(container, prepare_args(plan), user=user, environment=env)
    if code != 0:
        raise WorkspaceError(f"preparing {plan.path} failed (exit {code}): {output.strip()}")
    return output.strip().splitlines()[-1] if output.strip() else ""


async def publish(
    container: DockerContainer, plan: WorkspacePlan, *, user: str, env: Sequence[str]
) -> Published:
    """Push the dev branch when Claude committed to it."""
    code, output = await run_exec(container, publish_args(plan), user=user, environment=env)
    if code != 0:
        raise WorkspaceError(f"pushing {plan.branch} failed (exit {code}): {output.strip()}")
    return parse_publish_output(output)
