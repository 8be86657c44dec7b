"""An agent runtime whose Claude answers one fixed text: no container, no checkout.

For tests of what the worker does with an answer (the merge gate against an injected
verdict, the team loop's merge and rounds steps) without Docker or git.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from claude_hooks.config import AgentConfig
from claude_hooks.runner import workspace
from claude_hooks.runner.execution import ClaudeExec, ExecResult
from claude_hooks.runner.stream import Result, StreamEvent, parse_line


class AnsweringRuntime:
    """A runtime whose Claude answers one fixed text; no container, no checkout."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.prompts: list[str] = []
        self.plans: list[workspace.WorkspacePlan] = []
        self.refuse_push: str | None = None  # git's last words, when the push fails

    async def ready(self, agent: AgentConfig) -> None:
        return None

    async def prepare(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> str:
        self.plans.append(plan)
        return ""

    async def run(
        self,
        agent: AgentConfig,
        claude: ClaudeExec,
        on_event: Callable[[StreamEvent], None],
        room: object = None,
    ) -> ExecResult:
        self.prompts.append(claude.stdin.decode())
        line = json.dumps({
            "type": "result", "subtype": "success", "is_error": False, "result": self.answer,
            "num_turns": 1, "session_id": "lead-session", "terminal_reason": "completed",
        })  # fmt: skip
        event = parse_line(line)
        assert isinstance(event, Result)
        on_event(event)
        return ExecResult(exit_code=0, result_event=event, stderr_tail="", lines=1)

    async def publish(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str]
    ) -> workspace.Published:
        if self.refuse_push is not None:
            raise workspace.PushRefused(plan.branch, 1, f"To http://x\n{self.refuse_push}")
        return workspace.Published(commits=0, log=())

    async def diff_since(
        self, agent: AgentConfig, plan: workspace.WorkspacePlan, env: Sequence[str], since: str
    ) -> workspace.DiffSince:
        return workspace.DiffSince(since, missing=True)
