"""The team loop's review-feedback step with the REAL Claude Code CLI (#14).

Claude Code 2.1.332 runs in the dev agent's container against the scripted Messages
API, as in test_real_claude.py. First the dev flow opens the agent's pull request: a
writer mentions the agent on an issue, the CLI commits app.py, the daemon pushes the
branch and opens the pull request. Then the writer starts a review with one inline
comment on a line of the diff and submits it as REQUEST_CHANGES; nobody mentions the
agent. The dev account's poll finds the review and the intake makes the
review_feedback task; the worker checks out the pull request's head branch and runs
the CLI once more: turn 1 fixes the line with the Bash tool and commits, turn 2 ends
with the `addressed` block the dev's system prompt asks for.

What the model saw is asserted on the request bodies the API received (the review and
its inline comment, with path, line and diff hunk, and the rules for the answer); what
the daemon did on the simulator: one new commit on the same branch on top of the old
head, the pull request's head moved, review re-requested from the writer, the tracking
comment answering the inline comment; one run of the CLI per event. A second round
(one more miss found) resumes the feedback run's session on the same thread and
builds on the first fix, the earlier comment listed as still open.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from claude_hooks.config import Config
from claude_hooks.daemon.services import Services
from claude_hooks.demo.sim.forgejo import ForgejoSim
from claude_hooks.demo.sim.git import git_available
from claude_hooks.demo.sim.state import SimReviewComment
from claude_hooks.tasks import TaskKind, TaskState
from tests.e2e.claude_cli import (  # noqa: F401  (installed_claude: a fixture)
    cli_agent,
    installed_claude,
    one_agent_config,
)
from tests.e2e.host_image import built_host_image, unavailable  # noqa: F401
from tests.e2e.test_real_claude import bare_git, finished, tracking_comment_with
from tests.fakes.configs import ConfigFactory
from tests.fakes.docker import AGENT_UID
from tests.fakes.messages_api import (
    ScriptedMessagesApi,
    Turn,
    bash_turn,
    final_turn,
    tool_results,
    turn_index,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

REPO = "acme/app"
# A name of its own: its container claude-hooks-<name> is not another test's "dev".
ALICE, DEV = "alice", f"dev{uuid.uuid4().hex[:8]}"
DEV_TOKEN = f"forgejo-token-of-{DEV}-0123456789"
REVIEW_BODY = "One issue blocks merge."
DEV_SCRIPT = [
    bash_turn(
        "printf 'x = 1\\ny = 1\\n' > app.py && git add -A && git commit -q -m 'Add app'",
        description="Write and commit app.py",
    ),
    final_turn("Added app.py."),
]


@dataclass(frozen=True)
class Fix:
    """One round: the inline comment on a line of app.py, and how the model answers it."""

    line: int
    inline: str  # the reviewer's comment
    old: str  # the line as it is, and as the fix makes it
    new: str
    message: str  # the fix's commit message
    reply: str  # the model's answer to the comment
    summary: str  # the model's final text before its answer block


Y_FIX = Fix(2, "y must be 2, the caller divides by it", "y = 1", "y = 2", "Set y to 2",
            "Set y to 2 in app.py.", "Changed y to 2 as the review asked.")  # fmt: skip
X_FIX = Fix(1, "x must start at 0", "x = 1", "x = 0", "Start x at 0",
            "x starts at 0 now.", "Changed x to 0 too.")  # fmt: skip


def feedback_script(fix: Fix, comment_id: int) -> list[Turn]:
    """The model's two turns: fix and commit with the Bash tool, then the answer."""
    addressed = f'{{"addressed": [{{"comment": {comment_id}, "reply": "{fix.reply}"}}]}}'
    return [
        bash_turn(
            f"sed -i 's/^{fix.old}$/{fix.new}/' app.py && git commit -q -am '{fix.message}'",
            description="Fix the line and commit",
        ),
        final_turn(f"{fix.summary}\n\n```json\n{addressed}\n```"),
    ]


def feedback_config(
    factory: ConfigFactory, sim: ForgejoSim, image: str, claude: Path, api_url: str
) -> Config:
    sim.add_user(ALICE, token="forgejo-token-of-alice-0123456789")
    sim.add_user(DEV, token=DEV_TOKEN)
    sim.add_repo(REPO, collaborators={ALICE: "write", DEV: "admin"})
    creds = factory.secret("dev-creds.json", "{}")  # the API key only: see test_real_claude
    os.chown(creds, AGENT_UID, AGENT_UID)
    agent = cli_agent(
        factory, DEV, claude=claude, api_url=api_url, image=image,
        token_file=str(factory.secret("dev-token", DEV_TOKEN)), credentials_file=str(creds),
    )  # fmt: skip
    return one_agent_config(factory, sim, agent)


@pytest.fixture
async def messages_api() -> AsyncIterator[ScriptedMessagesApi]:
    async with ScriptedMessagesApi([]) as api:  # each run's script is set by the test
        yield api


@pytest.fixture
async def services(
    forgejo_sim: ForgejoSim,
    config_factory: ConfigFactory,
    host_image: str,
    claude_binary: Path,
    messages_api: ScriptedMessagesApi,
    test_labels: dict[str, str],
) -> AsyncIterator[Services]:
    if not git_available():
        unavailable("git with git-http-backend is not installed")
    config = feedback_config(
        config_factory, forgejo_sim, host_image, claude_binary, messages_api.base_url
    )
    async with Services.running(
        config, daemon_id="test-e2e-feedback", extra_labels=test_labels, listen=False
    ) as started:
        yield started


def user_text(body: Mapping[str, Any]) -> str:
    """Everything the request's user messages say, text blocks joined."""
    parts: list[str] = []
    for message in body.get("messages") or []:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [b.get("text", "") for b in content if b.get("type") == "text"]
    return "\n".join(parts)


def last_user_text(body: Mapping[str, Any]) -> str:
    """What the request's last user message says: a resumed run's new prompt."""
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    return user_text({"messages": users[-1:]})


def rerequests(sim: ForgejoSim, number: int) -> list[tuple[str, str]]:
    """(who asked, whom) of each review request on the pull request's timeline."""
    items = sim.timeline(REPO, number)
    return [(i.user, i.assignee) for i in items if i.type == "review_request"]


def answer_line(sim: ForgejoSim, number: int, inline: SimReviewComment, fix: Fix) -> str:
    """The tracking comment's line answering `inline`, linked to it."""
    link = f"{sim.base_url}/{REPO}/pulls/{number}/files#issuecomment-{inline.id}"
    return f"- [`app.py:{fix.line}`]({link}): {fix.reply}"


def notification_polls(sim: ForgejoSim) -> int:
    return sum(1 for r in sim.requests if r.path.endswith("/notifications/new"))


def system_text(body: Mapping[str, Any]) -> str:
    system = body.get("system")
    if isinstance(system, list):
        return "\n".join(b.get("text", "") for b in system if isinstance(b, dict))
    return str(system or "")


async def opened_pull(sim: ForgejoSim, services: Services, api: ScriptedMessagesApi) -> int:
    """The dev agent's pull request, as its dev flow opens one: a mention, a run, a push."""
    api.turns = tuple(DEV_SCRIPT)
    issue = sim.create_issue(REPO, ALICE, "Add app.py", "Please add app.py.")
    sim.add_comment(REPO, issue, ALICE, "@" + DEV + " please implement this")
    opened = await finished(services, 1)
    assert opened.state is TaskState.SUCCEEDED, opened.error
    [number] = [i.number for i in sim.state.issues.values() if i.pull is not None]
    pull = sim.issue(REPO, number)
    assert pull.pull is not None and pull.pull.head_ref == f"{DEV}/{issue}"
    assert f"Closes #{issue}" in pull.body
    assert bare_git(sim, "show", f"{pull.pull.head_sha}:app.py") == "x = 1\ny = 1"
    return number


def request_changes(
    sim: ForgejoSim, api: ScriptedMessagesApi, number: int, fix: Fix, earlier: Sequence[Turn]
) -> tuple[int, SimReviewComment]:
    """Alice starts a review with one inline comment (pending: nobody is told yet), so the
    scripted model can answer that comment by its id, then submits it. Nobody mentions
    the agent. `earlier`: the turns of the conversation so far."""
    sim.advance(1)  # see tests/test_dev_flow.py: same-second events are missed
    comment = {"path": "app.py", "body": fix.inline, "new_position": fix.line}
    review_id = sim.submit_review(REPO, number, ALICE, "PENDING", comments=[comment])
    [inline] = sim.review_comments(review_id)
    api.turns = (*earlier, *feedback_script(fix, inline.id))
    assert sim.submit_review(REPO, number, ALICE, "REQUEST_CHANGES", REVIEW_BODY) == review_id
    return review_id, inline


def branch_head(sim: ForgejoSim, number: int) -> tuple[str, str]:
    pull = sim.issue(REPO, number).pull
    assert pull is not None
    return pull.head_ref, bare_git(sim, "rev-parse", f"refs/heads/{pull.head_ref}")


async def test_the_real_cli_addresses_an_inline_review_and_the_daemon_re_requests_it(
    forgejo_sim: ForgejoSim, services: Services, messages_api: ScriptedMessagesApi
) -> None:
    sim = forgejo_sim
    number = await opened_pull(sim, services, messages_api)
    branch, old_head = branch_head(sim, number)
    review_id, inline = request_changes(sim, messages_api, number, Y_FIX, earlier=())

    task = await finished(services, 2)
    events = await services.store.events(task.id)
    assert task.state is TaskState.SUCCEEDED, (task.error, [e.summary for e in events])
    assert (task.spec.kind, task.spec.number, task.spec.review_id, task.spec.requested_by) == (
        TaskKind.REVIEW_FEEDBACK, number, review_id, ALICE,
    )  # fmt: skip

    # One run of the CLI for the review: two model calls of one conversation (after the
    # two of the run that opened the pull request), the tool succeeded.
    feedback_requests = messages_api.requests[2:]
    assert [turn_index(r) for r in messages_api.requests] == [0, 1, 0, 1]
    assert messages_api.unscripted == []
    [tool_result] = tool_results(feedback_requests[1])
    assert not tool_result.get("is_error"), tool_result
    # What the CLI sent the model: the review, its inline comment with path, line and the
    # diff around it; and the dev's rules for answering each comment by its number.
    prompt = user_text(feedback_requests[0])
    assert REVIEW_BODY in prompt and Y_FIX.inline in prompt, prompt
    assert f"### Comment {inline.id} by @{ALICE}, line 2" in prompt, prompt
    assert "File: app.py" in prompt and "+y = 1" in prompt, prompt
    assert '{"addressed": [{"comment": 123' in system_text(feedback_requests[0])

    # The fix is a new commit on the pull request's own branch, on top of the old head.
    _, new_head = branch_head(sim, number)
    assert new_head != old_head and bare_git(sim, "rev-parse", f"{new_head}~1") == old_head
    assert bare_git(sim, "log", "-1", "--format=%s|%an", new_head) == f"{Y_FIX.message}|{DEV}"
    assert bare_git(sim, "show", f"{new_head}:app.py") == "x = 1\ny = 2"
    pull = sim.issue(REPO, number).pull
    assert pull is not None and (pull.head_ref, pull.head_sha) == (branch, new_head)

    # Review asked of Alice again, by the agent, on the thread's timeline.
    assert rerequests(sim, number) == [(DEV, ALICE)]
    assert ALICE in sim.state.requested_reviewers(sim.issue(REPO, number))

    # The tracking comment answers the inline comment; the answer block itself is read.
    body = await tracking_comment_with(
        sim, number, task, Y_FIX.summary, f"Pushed 1 commit to `{branch}`",
        answer_line(sim, number, inline, Y_FIX), f"Review re-requested from `{ALICE}`.",
    )  # fmt: skip
    assert '"addressed"' not in body
    # The only comment on the pull request is the agent's tracking comment; and once the
    # dev's poller has looked twice more (after the push, the answers, the re-request),
    # still one task per event.
    assert [c.user for c in sim.comments(REPO, number)] == [DEV]
    polled = notification_polls(sim)
    await wait_until(lambda: notification_polls(sim) >= polled + 2, what="two more polls")
    assert len(await services.store.list_tasks(limit=10)) == 2


async def test_a_second_round_resumes_the_session_and_builds_on_the_first_fix(
    forgejo_sim: ForgejoSim, services: Services, messages_api: ScriptedMessagesApi
) -> None:
    sim = forgejo_sim
    number = await opened_pull(sim, services, messages_api)
    _, first_inline = request_changes(sim, messages_api, number, Y_FIX, earlier=())
    first = await finished(services, 2)
    assert first.state is TaskState.SUCCEEDED, first.error
    branch, first_fix = branch_head(sim, number)

    # Alice finds one more miss: the same thread, so the CLI resumes its session.
    round_one = feedback_script(Y_FIX, first_inline.id)
    _, inline = request_changes(sim, messages_api, number, X_FIX, earlier=round_one)
    task = await finished(services, 3)
    events = await services.store.events(task.id)
    assert task.state is TaskState.SUCCEEDED, (task.error, [e.summary for e in events])
    assert task.session_id == first.session_id
    assert [turn_index(r) for r in messages_api.requests] == [0, 1, 0, 1, 2, 3]
    # The resumed conversation's new prompt: the new comment, the earlier one still open.
    prompt = last_user_text(messages_api.requests[4])
    assert f"### Comment {inline.id} by @{ALICE}, line 1" in prompt and X_FIX.inline in prompt
    assert "Earlier review comments still unresolved" in prompt, prompt
    assert f"### Comment {first_inline.id} by @{ALICE}, line 2" in prompt, prompt

    # On top of the first fix, on the same branch; asked again; the answer on the thread.
    _, head = branch_head(sim, number)
    assert bare_git(sim, "rev-parse", f"{head}~1") == first_fix
    assert bare_git(sim, "show", f"{head}:app.py") == "x = 0\ny = 2"
    pull = sim.issue(REPO, number).pull
    assert pull is not None and pull.head_sha == head
    assert rerequests(sim, number) == [(DEV, ALICE), (DEV, ALICE)]
    await tracking_comment_with(
        sim, number, task, X_FIX.summary, f"Pushed 1 commit to `{branch}`",
        answer_line(sim, number, inline, X_FIX), f"Review re-requested from `{ALICE}`.",
    )  # fmt: skip
