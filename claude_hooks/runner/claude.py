"""The command line and environment of one `claude -p` exec: pure functions.

Where things live inside an agent container (decided here, used by containers.py):
everything Claude Code and git keep between tasks is under the state volume at
/state, so a rebuilt container finds its sessions again (`--resume` needs the
transcripts in $CLAUDE_CONFIG_DIR/projects/…). A `credentials_file` login is
copied to $CLAUDE_CONFIG_DIR/.credentials.json, where the CLI looks for it and
may write it back when it refreshes the token (containers.sync_credentials).

Secrets reach a process only through the exec's environment, which `docker
inspect` does not show; never through argv (it does show arguments) and never
through a git remote URL (it would be written to .git/config). The Forgejo token
reaches only the workspace's clone and push execs, never Claude's; Claude's own
login (CLAUDE_CODE_OAUTH_TOKEN, ANTHROPIC_API_KEY) and `secret_env` reach only the
`claude -p` exec, never the clone and push execs (`with_claude_secrets`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from claude_hooks.config import AUTH_ENV, AgentConfig, read_secret

STATE_DIR = "/state"
HOME_DIR = f"{STATE_DIR}/home"
CLAUDE_CONFIG_DIR = f"{HOME_DIR}/.claude"
CREDENTIALS_PATH = f"{CLAUDE_CONFIG_DIR}/.credentials.json"

# Every process of a task carries these, so a task's processes (Bash-tool children
# in their own session included) can be found in /proc/*/environ and killed, and
# so can those left behind by an earlier daemon instance.
TASK_MARKER = "CLAUDE_HOOKS_TASK"
DAEMON_MARKER = "CLAUDE_HOOKS_DAEMON"

# Defaults an agent's `env` may override (e.g. CLAUDE_CODE_MAX_RETRIES in tests).
_DEFAULT_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # no telemetry, updates, reports
    "DISABLE_AUTOUPDATER": "1",
    "GIT_TERMINAL_PROMPT": "0",  # a git auth failure fails instead of waiting for input
}


def claude_argv(agent: AgentConfig, *, session_id: str | None, system_prompt: str) -> list[str]:
    """`claude -p` in stream-json mode; the prompt itself goes on stdin."""
    argv = [agent.claude_command, "-p", "--output-format", "stream-json", "--verbose"]
    # Headless: nobody can answer a permission prompt, and the agent's container is
    # the sandbox. Works for a non-root user (root would also need IS_SANDBOX=1).
    argv += ["--permission-mode", "bypassPermissions"]
    # The working tree may be a pull request's head: none of its configuration may
    # steer Claude (.claude/settings*.json hooks run shell commands, .mcp.json starts
    # servers, CLAUDE.md and .claude/ commands, agents and skills are instructions).
    # Only the agent's own user settings load, and no MCP server at all.
    argv += ["--setting-sources", "user", "--strict-mcp-config"]
    if agent.model:
        argv += ["--model", agent.model]
    if agent.max_turns is not None:
        argv += ["--max-turns", str(agent.max_turns)]
    if agent.max_budget_usd is not None:
        argv += ["--max-budget-usd", f"{agent.max_budget_usd:g}"]
    if system_prompt:
        argv += ["--append-system-prompt", system_prompt]
    if session_id:
        argv += ["--resume", session_id]
    return argv


def exec_env(
    agent: AgentConfig,
    *,
    task_id: int,
    daemon_id: str,
    extra: Mapping[str, str] | None = None,
) -> list[str]:
    """The environment of one task's execs, as Docker's `KEY=value` list.

    It holds no Forgejo credential: the `claude -p` exec runs with exactly this, so
    nothing Claude (or a prompt steering it) runs can reach the agent's token. Only
    the clone and push execs get it, through `with_forge_auth`.

    Precedence: defaults < agent.env < extra < what the runner depends on (the
    state layout, task markers), which nothing may override.
    """
    env = {**_DEFAULT_ENV, **agent.env, **(extra or {})}
    env.update({"HOME": HOME_DIR, "CLAUDE_CONFIG_DIR": CLAUDE_CONFIG_DIR})
    env.update({TASK_MARKER: str(task_id), DAEMON_MARKER: daemon_id})
    return [f"{key}={value}" for key, value in env.items()]


def claude_secrets(agent: AgentConfig, read: Callable[[Path], str] = read_secret) -> dict[str, str]:
    """The secret environment of the `claude -p` exec: its login token or API key (for
    those auth modes) and every `secret_env` file, read now so a rotation needs no
    restart. `read` is config.read_secret, which teaches each value to the redactor."""
    secrets = {name: read(file) for name, file in agent.secret_env.items()}
    variable = AUTH_ENV.get(agent.auth)
    if variable is not None and agent.auth_file is not None:
        secrets[variable] = read(agent.auth_file)
    return secrets


def with_claude_secrets(env: Sequence[str], secrets: Mapping[str, str]) -> list[str]:
    """`env` plus Claude's secrets: for the `claude -p` exec only. They override a
    plain `agents.env` value, never the runner's own layout and markers."""
    merged = dict(item.split("=", 1) for item in env)
    protected = {"HOME", "CLAUDE_CONFIG_DIR", TASK_MARKER, DAEMON_MARKER}
    merged.update({k: v for k, v in secrets.items() if k not in protected})
    return [f"{key}={value}" for key, value in merged.items()]


def with_forge_auth(env: Sequence[str], token: str, forgejo_url: str | None) -> list[str]:
    """`env` plus git's auth header: for the workspace's clone/fetch and push execs only.

    With `forgejo_url`, git sends the token only to that server, not to every remote.
    """
    merged = dict(item.split("=", 1) for item in env)
    merged.update(git_auth_env(token, forgejo_url))
    return [f"{key}={value}" for key, value in merged.items()]


def git_auth_env(token: str, forgejo_url: str | None = None) -> dict[str, str]:
    """Git config through the environment: an auth header on every HTTP request."""
    key = f"http.{forgejo_url.rstrip('/')}/.extraHeader" if forgejo_url else "http.extraHeader"
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": key,
        "GIT_CONFIG_VALUE_0": f"Authorization: token {token}",
        "GIT_TERMINAL_PROMPT": "0",
    }
