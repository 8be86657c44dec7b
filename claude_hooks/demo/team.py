"""The demo's team: three scripted agents that close the loop the way the real ones do.

demo-dev opens a pull request for alice's issue and asks demo-reviewer for a review;
demo-reviewer asks for a change on a line of it the first time and approves the
second; demo-dev fixes that line by itself and asks again; demo-lead, the dev's
`merge_by`, merges once the approval and the (scripted) CI agree. Only Claude is
scripted here: one shell script (TEAM_CLAUDE) that does what each role's model
would, minus the model. Everything around it is the daemon's own code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HUMAN = "alice"
DEV, REVIEWER, LEAD = "demo-dev", "demo-reviewer", "demo-lead"
AGENTS = (DEV, REVIEWER, LEAD)
REPO = "demo/hello"
ISSUE_TITLE = "Greet our visitors"
ISSUE_BODY = "The project says nothing to people who find it."
MENTION = f"@{DEV} please add a greeting file for our visitors."
CI_CONTEXT = "demo-ci / test"

# What each role's Claude does in the demo (bash, the host's userland). It reads the
# prompt, acts in its working tree, and prints a one-turn stream-json run whose
# result text is what the role's prompt asks a model to end with.
TEAM_CLAUDE = r"""#!/bin/bash
set -eu
cat >/dev/null   # the prompt: the script knows its part already
session="demo-$DEMO_ROLE-session"
# Tests count the runs: one file per run, named by task.
[ -d /record ] && echo "$DEMO_ROLE" >"/record/run-$CLAUDE_HOOKS_TASK-$(date +%s%N)"

say() {  # say TEXT: a one-turn stream-json run whose result is TEXT
    python3 - "$1" "$session" <<'PY'
import json, sys
text, session = sys.argv[1], sys.argv[2]
for line in (
    {"type": "system", "subtype": "init", "session_id": session, "tools": [], "model": "demo"},
    {"type": "assistant", "session_id": session, "message": {"id": "msg_demo", "type": "message",
     "role": "assistant", "content": [{"type": "text", "text": text}]}},
    {"type": "result", "subtype": "success", "is_error": False, "result": text, "num_turns": 1,
     "session_id": session, "total_cost_usd": 0.01, "duration_ms": 800},
):
    print(json.dumps(line))
PY
}

case "$DEMO_ROLE" in
dev)
    if git log --format=%an | grep -qx "$GIT_AUTHOR_NAME"; then
        # Its own commit is on the branch already: a review round (or a CI fix).
        if grep -q Welcome GREETING.md; then
            echo "Revised in task $CLAUDE_HOOKS_TASK." >>GREETING.md
        else
            echo "Welcome to demo/hello." >>GREETING.md
        fi
        git commit -qam "Name the project in the greeting" >&2
        say "Addressed the review: GREETING.md:1 is followed by a line naming the project."
    else
        printf 'Hello, visitor!\n' >GREETING.md
        git add GREETING.md >&2
        git commit -qm "Add a greeting for visitors" >&2
        say "Added GREETING.md with a greeting for visitors."
    fi
    ;;
reviewer)
    if [ -e "$HOME/.demo-reviewed" ] && [ "${DEMO_REVIEW:-}" != always-changes ]; then
        say 'The greeting names the project now.
```json
{"event": "APPROVED", "body": "Looks good: the greeting names the project."}
```'
    else
        touch "$HOME/.demo-reviewed"
        say 'One thing blocks this.
```json
{"event": "REQUEST_CHANGES", "body": "One change before this can merge.",
 "comments": [{"path": "GREETING.md", "line": 1,
               "body": "Say which project the visitor found: add a line naming it."}]}
```'
    fi
    ;;
lead)
    say 'The pull request does what the issue asks, the review approved it and CI passed.
```json
{"action": "merge", "body": "Merging: it closes the issue as asked."}
```'
    ;;
*)
    echo "team-claude: DEMO_ROLE is not set" >&2
    exit 2
    ;;
esac
"""


def write_team_claude(directory: Path) -> Path:
    """The script, executable, where the agents' containers mount it from."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "team-claude"
    script.write_text(TEAM_CLAUDE)
    script.chmod(0o755)
    return script


def team_agents(
    *,
    image: str,
    mounts: Sequence[str],
    claude: str,
    tokens: Mapping[str, Path],
    credentials: Path,
    env: Mapping[str, Mapping[str, str]] | None = None,
    **common: Any,
) -> list[dict[str, Any]]:
    """The three [[agents]] tables, as an operator would write them: the dev asks the
    reviewer for reviews and merges through the lead. `env` adds to an agent's env."""
    roles = {DEV: "dev", REVIEWER: "reviewer", LEAD: "lead"}
    loop = {DEV: {"review_by": REVIEWER, "merge_by": LEAD}}
    return [
        {
            "name": name,
            "role": role,
            "token_file": str(tokens[name]),
            "credentials_file": str(credentials),
            "image": image,
            "network": "host",  # git over HTTP to the simulator on 127.0.0.1
            "timeout": "2m",
            "claude_command": claude,
            "mounts": list(mounts),
            "env": {"DEMO_ROLE": role, **(env or {}).get(name, {})},
            **loop.get(name, {}),
            **common,
        }
        for name, role in roles.items()
    ]
