"""What the daemon writes back to Forgejo: pure rendering (report/render.py) here, then the
Reporter (report/tracker.py) and the delivery (work/delivery.py) against the simulator."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from claude_hooks.config import MergeStyle
from claude_hooks.forgejo.client import ForgejoClient
from claude_hooks.forgejo.models import InlineComment
from claude_hooks.report.render import (
    INTERRUPTED_REASON,
    Phase,
    api_error_reason,
    cancelled_reason,
    max_turns_reason,
    phase_of,
    pull_body,
    reason_in_words,
    render_checklist,
    render_tracking,
    stderr_tail,
    timeout_reason,
)
from claude_hooks.report.tracker import ProgressThrottle, Reporter, TaskReports
from claude_hooks.store import Store
from claude_hooks.tasks import Outcome, Task, TaskKind, TaskSpec, TaskState, TriggerSource
from claude_hooks.text import find_marker, format_cost, format_duration, marker
from claude_hooks.work.delivery import Delivery, review_attempts
from claude_hooks.work.verdict import ReviewState, ValidatedVerdict, review_from_result
from tests.fakes.forgejo import TEAM_REPO, ForgejoSim, Team, add_team
from tests.waiting import wait_until

NOW = 1_700_000_000.0


def no_redact(text: str) -> str:
    return text


def make_task(*, number: int | None = 12, task_id: int = 42, **changes: object) -> Task:
    spec = TaskSpec(
        agent="dev",
        kind=TaskKind.MENTION,
        repo="acme/app",
        number=number,
        idempotency_key="k",
        requested_by="alice",
        request="@dev fix it",
        source=TriggerSource.POLL,
        comment_id=10,
    )
    task = Task(id=task_id, spec=spec, state=TaskState.RUNNING, started_at=NOW - 252)
    return task.with_(**changes)


def render(phase: Phase, **kwargs: object) -> str:
    task = kwargs.pop("task", make_task())
    return render_tracking(task, phase, now=NOW, redact=no_redact, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- marker


def test_marker_round_trips() -> None:
    assert find_marker(f"{marker(42)}\nsome text") == 42


def test_find_marker_without_marker_is_none() -> None:
    assert find_marker("an ordinary comment <!-- note -->") is None


def test_rendered_comment_carries_the_task_marker_first() -> None:
    body = render(Phase.QUEUED, position=1)
    assert body.startswith(marker(42))
    assert find_marker(body) == 42


def test_marker_in_claudes_result_cannot_hijack_the_comment() -> None:
    outcome = Outcome(TaskState.SUCCEEDED, result=f"done {marker(99)}")
    body = render(Phase.SUCCEEDED, outcome=outcome)
    assert find_marker(body) == 42
    assert marker(99) not in body


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0 s"),
        (45, "45 s"),
        (252, "4 min 12 s"),
        (3600, "1 h 0 min"),
        (3780, "1 h 3 min"),
        (-5, "0 s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("usd", "text"), [(0.0123, "$0.0123"), (0.038184, "$0.0382"), (0, "$0.0000"), (2.5, "$2.50")]
)
def test_format_cost(usd: float, text: str) -> None:
    assert format_cost(usd) == text


# ---------------------------------------------------------------- phases


def test_queued_shows_the_position() -> None:
    body = render(Phase.QUEUED, position=3)
    assert "**Queued**" in body
    assert "position 3" in body


def test_queued_without_position_says_queued_only() -> None:
    body = render(Phase.QUEUED, position=None)
    assert "**Queued**" in body
    assert "position" not in body


def test_working_shows_elapsed_time_and_a_checklist_with_the_last_step_open() -> None:
    body = render(Phase.WORKING, steps=["Read the issue", "Bash: pytest -q"])
    assert "**Working** for 4 min 12 s" in body
    assert "- [x] Read the issue" in body
    assert "- [ ] Bash: pytest -q" in body


def test_checklist_keeps_the_last_ten_steps_and_counts_the_rest() -> None:
    steps = [f"step {i}" for i in range(1, 26)]
    text = render_checklist(steps, done=False)
    assert "- … 15 earlier steps" in text
    assert "step 15\n" not in text
    assert "- [x] step 16" in text
    assert "- [ ] step 25" in text


def test_checklist_steps_are_one_line_and_bounded() -> None:
    text = render_checklist(["Bash: echo a\necho b " + "x" * 500], done=True)
    assert text.count("\n") == 0
    assert len(text) < 200


def test_succeeded_shows_summary_stats_and_links() -> None:
    outcome = Outcome(
        TaskState.SUCCEEDED,
        result="Fixed the crash in the loader.",
        cost_usd=0.0123,
        num_turns=7,
        links=("https://forge/acme/app/pulls/13", "branch `dev/12`"),
    )
    body = render(Phase.SUCCEEDED, outcome=outcome, task=make_task(finished_at=NOW))
    assert "✅ **Done**" in body
    assert "Fixed the crash in the loader." in body
    assert "status: succeeded · 4 min 12 s · 7 turns · $0.0123" in body
    assert "- https://forge/acme/app/pulls/13" in body
    assert "- branch `dev/12`" in body


def test_duration_falls_back_to_claudes_own_when_start_is_unknown() -> None:
    outcome = Outcome(TaskState.SUCCEEDED, result="ok", duration_ms=61_000, num_turns=1)
    body = render(Phase.SUCCEEDED, outcome=outcome, task=make_task(started_at=None))
    assert "1 min 1 s · 1 turn" in body


@pytest.mark.parametrize(
    ("outcome", "headline"),
    [
        (
            Outcome(TaskState.FAILED, reason=timeout_reason(3600)),
            "❌ **Failed: Timeout after 60 min**",
        ),
        (Outcome(TaskState.FAILED, reason=max_turns_reason()), "❌ **Failed: Max turns reached**"),
        (
            Outcome(TaskState.FAILED, reason=api_error_reason(529)),
            "❌ **Failed: Claude API error 529 after retries**",
        ),
        (Outcome(TaskState.FAILED, exit_code=2), "❌ **Failed: Claude Code exited with code 2**"),
        (
            Outcome(TaskState.CANCELLED, reason=cancelled_reason("alice")),
            "🛑 **Cancelled by alice**",
        ),
        (Outcome(TaskState.CANCELLED), "🛑 **Cancelled**"),
        (Outcome(TaskState.INTERRUPTED), "⏸️ **Interrupted by shutdown — will resume**"),
    ],
)
def test_failure_reasons_are_in_words(outcome: Outcome, headline: str) -> None:
    body = render(phase_of(outcome), outcome=outcome)
    assert headline in body


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        (timeout_reason(3600), "timeout after 60 min"),
        (timeout_reason(90), "timeout after 1 min 30 s"),
        (max_turns_reason(30), "max turns reached (30)"),
        (api_error_reason(529), "Claude API error 529 after retries"),
        (api_error_reason(None), "Claude API error after retries"),
        (cancelled_reason("alice"), "cancelled by alice"),
        (INTERRUPTED_REASON, "interrupted by shutdown — will resume"),
    ],
)
def test_reason_helpers_word_each_failure(reason: str, text: str) -> None:
    assert reason == text


def test_reason_in_words_prefers_the_runners_words() -> None:
    outcome = Outcome(TaskState.FAILED, reason="workspace clone failed", exit_code=1)
    assert reason_in_words(outcome) == "workspace clone failed"


def test_failed_shows_the_stderr_tail_fenced_and_redacted() -> None:
    stderr = "\n".join(f"line {i}" for i in range(100)) + "\n\x1b[31mtoken=sekrit-123456\x1b[0m"
    outcome = Outcome(TaskState.FAILED, reason="boom", stderr_tail=stderr)

    def redact(text: str) -> str:
        return text.replace("sekrit-123456", "***")

    body = render_tracking(make_task(), Phase.FAILED, outcome=outcome, now=NOW, redact=redact)
    assert "sekrit" not in body
    assert "token=***" in body
    assert "\x1b[" not in body
    assert "line 99" in body
    assert "line 10\n" not in body
    assert "```text\n" in body


def test_stderr_tail_is_bounded() -> None:
    assert len(stderr_tail("x" * 100_000)) <= 4_000


def test_redact_applies_to_result_and_steps() -> None:
    def redact(text: str) -> str:
        return text.replace("hunter2-secret", "***")

    outcome = Outcome(TaskState.SUCCEEDED, result="used hunter2-secret")
    done = render_tracking(make_task(), Phase.SUCCEEDED, outcome=outcome, now=NOW, redact=redact)
    working = render_tracking(
        make_task(), Phase.WORKING, steps=["Bash: echo hunter2-secret"], now=NOW, redact=redact
    )
    assert "hunter2-secret" not in done + working


def test_final_phase_without_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="needs an outcome"):
        render(Phase.SUCCEEDED)


def test_phase_of_maps_every_state() -> None:
    assert phase_of(Outcome(TaskState.SUCCEEDED)) is Phase.SUCCEEDED
    assert phase_of(Outcome(TaskState.FAILED)) is Phase.FAILED
    assert phase_of(Outcome(TaskState.CANCELLED)) is Phase.CANCELLED
    assert phase_of(Outcome(TaskState.INTERRUPTED)) is Phase.INTERRUPTED


# ---------------------------------------------------------------- throttle


def test_throttle_allows_the_first_edit_then_waits_the_interval() -> None:
    throttle = ProgressThrottle(interval=5.0)
    assert throttle.wait(100.0) == 0.0
    throttle.mark(100.0)
    assert throttle.wait(103.0) == pytest.approx(2.0)
    assert throttle.wait(105.0) == 0.0
    assert throttle.wait(107.0) == 0.0


# ---------------------------------------------------------------- PR and review text


def test_pull_body_closes_the_issue_and_carries_the_marker() -> None:
    body = pull_body(make_task(), "Fixed the loader.")
    assert find_marker(body) == 42
    assert "Fixed the loader." in body
    assert "Closes #12" in body


def test_pull_body_for_an_api_task_has_no_closing_keyword() -> None:
    assert "Closes" not in pull_body(make_task(number=None), "Did it.")


def test_review_attempts_degrade_to_comment_then_to_text() -> None:
    inline = (InlineComment(path="a.py", body="here", new_position=3),)
    verdict = ValidatedVerdict(ReviewState.REQUEST_CHANGES, "Fix it.", inline)
    attempts = review_attempts(verdict)
    assert [a.event for a in attempts] == [
        ReviewState.REQUEST_CHANGES,
        ReviewState.COMMENT,
        ReviewState.COMMENT,
    ]
    assert "Verdict: REQUEST_CHANGES" in attempts[1].body
    assert attempts[1].comments == inline
    assert attempts[2].comments == ()
    assert "(on a.py:3) here" in attempts[2].body


def test_review_attempts_for_a_plain_comment_is_just_the_review() -> None:
    verdict = ValidatedVerdict(ReviewState.COMMENT, "Note.")
    assert review_attempts(verdict) == [verdict]


# ================================================================ Reporter against the simulator

DIFF = """\
diff --git a/src/app.py b/src/app.py
--- a/src/app.py
+++ b/src/app.py
@@ -20,3 +20,4 @@ def run():
     value = compute()
+    log(value)
     return value

"""


@pytest.fixture
def team(forgejo_sim: ForgejoSim) -> Team:
    return add_team(forgejo_sim)


@pytest.fixture
async def clients(forgejo_sim: ForgejoSim, team: Team) -> AsyncIterator[dict[str, ForgejoClient]]:
    """One client per agent, failing fast: the Reporter's own retries are what is tested."""
    made = {
        login: ForgejoClient(
            forgejo_sim.base_url,
            team.token(login),
            timeout=5.0,
            max_attempts=1,
            max_backoff=0.01,
            initial_backoff=0.001,
        )
        for login in ("dev", "reviewer", "code-lead")
    }
    yield made
    for client in made.values():
        await client.close()


def make_reporter(clients: dict[str, ForgejoClient], **options: object) -> Reporter:
    settings: dict = {"redact": no_redact, "edit_interval": 60.0, "final_backoff": 0.001}
    settings.update(options)
    return Reporter(clients.__getitem__, **settings)


def thread_task(
    sim: ForgejoSim,
    *,
    agent: str = "dev",
    number: int,
    comment_id: int | None,
    task_id: int = 42,
    kind: TaskKind = TaskKind.MENTION,
) -> Task:
    spec = TaskSpec(
        agent=agent,
        kind=kind,
        repo=TEAM_REPO,
        number=number,
        idempotency_key=f"k{task_id}",
        requested_by="alice",
        request="@dev fix it",
        source=TriggerSource.POLL,
        comment_id=comment_id,
    )
    return Task(id=task_id, spec=spec, state=TaskState.QUEUED, started_at=time.time())


def agent_comments(sim: ForgejoSim, number: int, agent: str = "dev") -> list[str]:
    return [c.body for c in sim.comments(TEAM_REPO, number) if c.user == agent]


@pytest.fixture
def issue_with_request(forgejo_sim: ForgejoSim, team: Team) -> tuple[int, int]:
    number = forgejo_sim.create_issue(TEAM_REPO, "alice", "Crash", "It crashes.")
    comment_id = forgejo_sim.add_comment(TEAM_REPO, number, "alice", "@dev fix it")
    return number, comment_id


async def test_acknowledge_reacts_on_the_trigger_comment_and_posts_one_queued_comment(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], issue_with_request: tuple[int, int]
) -> None:
    number, comment_id = issue_with_request
    task = thread_task(forgejo_sim, number=number, comment_id=comment_id)
    comment = await make_reporter(clients).acknowledge(task, position=2)
    assert comment is not None
    reactions = forgejo_sim.reactions(TEAM_REPO, comment_id=comment_id)
    assert [(r.user, r.content) for r in reactions] == [("dev", "eyes")]
    [body] = agent_comments(forgejo_sim, number)
    assert find_marker(body) == 42
    assert "position 2" in body


async def test_acknowledge_twice_for_the_same_task_edits_the_one_comment(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], issue_with_request: tuple[int, int]
) -> None:
    number, comment_id = issue_with_request
    task = thread_task(forgejo_sim, number=number, comment_id=comment_id)
    first = await make_reporter(clients).acknowledge(task, position=2)
    # A restarted daemon: a new Reporter that never heard of the comment id.
    second = await make_reporter(clients).acknowledge(task, position=1)
    assert first == second
    [body] = agent_comments(forgejo_sim, number)
    assert "position 1" in body
    assert len(forgejo_sim.reactions(TEAM_REPO, comment_id=comment_id)) == 1


async def test_acknowledge_without_trigger_comment_reacts_on_the_issue(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], issue_with_request: tuple[int, int]
) -> None:
    number, _ = issue_with_request
    await make_reporter(clients).acknowledge(
        thread_task(forgejo_sim, number=number, comment_id=None)
    )
    assert [r.content for r in forgejo_sim.reactions(TEAM_REPO, number)] == ["eyes"]


async def test_task_without_a_thread_writes_nothing(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], team: Team
) -> None:
    spec = TaskSpec(
        agent="dev",
        kind=TaskKind.API,
        repo=TEAM_REPO,
        number=None,
        idempotency_key="api",
        requested_by="api",
        request="do it",
        source=TriggerSource.API,
    )
    task = Task(id=5, spec=spec, state=TaskState.QUEUED)
    reporter = make_reporter(clients)
    assert await reporter.acknowledge(task, 1) is None
    await reporter.progress(task, ["step"])
    await reporter.finish(task, Outcome(TaskState.SUCCEEDED, result="ok"))
    assert forgejo_sim.api_requests() == []


async def test_progress_is_throttled_and_a_skipped_edit_is_flushed_later(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], issue_with_request: tuple[int, int]
) -> None:
    number, comment_id = issue_with_request
    task = thread_task(forgejo_sim, number=number, comment_id=comment_id)
    reporter = make_reporter(clients, edit_interval=0.2)
    await reporter.acknowledge(task, 1)
    forgejo_sim.requests.clear()
    await reporter.progress(task, ["Read the issue"])
    await reporter.progress(task, ["Read the issue", "Bash: pytest"])
    await reporter.progress(task, ["Read the issue", "Bash: pytest", "Edit: app.py"])
    assert len(forgejo_sim.api_requests("PATCH")) == 1
    [body] = agent_comments(forgejo_sim, number)
    assert "- [ ] Read the issue" in body
    await wait_until(lambda: len(forgejo_sim.api_requests("PATCH")) == 2, what="the later flush")
    [body] = agent_comments(forgejo_sim, number)
    assert "- [ ] Edit: app.py" in body


async def test_finish_writes_the_final_text_and_late_progress_cannot_overwrite_it(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], issue_with_request: tuple[int, int]
) -> None:
    number, comment_id = issue_with_request
    task = thread_task(forgejo_sim, number=number, comment_id=comment_id)
    reporter = make_reporter(clients, edit_interval=0.0)
    await reporter.acknowledge(task, 1)
    await reporter.progress(task, ["Bash: pytest"])
    outcome = Outcome(
        TaskState.SUCCEEDED,
        result="Fixed it.",
        cost_usd=0.01,
        num_turns=3,
        links=("https://forge/acme/app/pulls/9",),
    )
    await reporter.finish(task, outcome)
    await reporter.progress(task, ["late step"])
    [body] = agent_comments(forgejo_sim, number)
    assert "✅ **Done**" in body and "Fixed it." in body and "$0.0100" in body
    assert "late step" not in body


async def test_the_final_edit_does_not_wait_for_the_progress_throttle(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], issue_with_request: tuple[int, int]
) -> None:
    number, comment_id = issue_with_request
    task = thread_task(forgejo_sim, number=number, comment_id=comment_id)
    reporter = make_reporter(clients, edit_interval=3600.0)
    await reporter.progress(task, ["Bash: pytest"])  # the throttle's slot is used now
    await reporter.finish(task, Outcome(TaskState.SUCCEEDED, result="Fixed it."))
    [body] = agent_comments(forgejo_sim, number)
    assert "✅ **Done**" in body and "Bash: pytest" not in body


async def test_final_edit_is_retried_through_forgejo_errors(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], issue_with_request: tuple[int, int]
) -> None:
    number, comment_id = issue_with_request
    task = thread_task(forgejo_sim, number=number, comment_id=comment_id)
    reporter = make_reporter(clients)
    await reporter.acknowledge(task, 1)
    forgejo_sim.fail_next(2, status=503)
    await reporter.finish(task, Outcome(TaskState.FAILED, reason=timeout_reason(3600)))
    [body] = agent_comments(forgejo_sim, number)
    assert "Timeout after 60 min" in body


async def test_reporting_errors_never_reach_the_task(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], issue_with_request: tuple[int, int]
) -> None:
    number, comment_id = issue_with_request
    task = thread_task(forgejo_sim, number=number, comment_id=comment_id)
    reporter = make_reporter(clients, final_attempts=2)
    forgejo_sim.fail_next(100, status=500)
    assert await reporter.acknowledge(task, 1) is None
    await reporter.progress(task, ["step"])
    await reporter.finish(task, Outcome(TaskState.SUCCEEDED, result="ok"))
    forgejo_sim.gateway.faults.fail.clear()
    assert agent_comments(forgejo_sim, number) == []


async def test_a_deleted_tracking_comment_is_posted_again(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], issue_with_request: tuple[int, int]
) -> None:
    number, comment_id = issue_with_request
    task = thread_task(forgejo_sim, number=number, comment_id=comment_id)
    reporter = make_reporter(clients)
    tracking = await reporter.acknowledge(task, 1)
    assert tracking is not None
    del forgejo_sim.state.comments[tracking]  # someone deleted it in the web UI
    await reporter.finish(task, Outcome(TaskState.CANCELLED, reason=cancelled_reason("alice")))
    [body] = agent_comments(forgejo_sim, number)
    assert "Cancelled by alice" in body


# ================================================= work/delivery.py against the simulator


# ---------------------------------------------------------------- reviews


@pytest.fixture
def pull_number(forgejo_sim: ForgejoSim, team: Team) -> int:
    return forgejo_sim.create_pull(
        TEAM_REPO,
        "alice",
        "Log values",
        "Adds logging.",
        head="feature",
        diff=DIFF,
        reviewers=["reviewer"],
    )


def make_delivery(clients: dict[str, ForgejoClient]) -> Delivery:
    return Delivery(clients.__getitem__, redact=no_redact)


def review_task(sim: ForgejoSim, number: int, task_id: int = 43) -> Task:
    return thread_task(
        sim, agent="reviewer", number=number, comment_id=None, task_id=task_id, kind=TaskKind.REVIEW
    )


async def test_review_is_posted_with_inline_comments_at_absolute_lines(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], pull_number: int
) -> None:
    result = (
        "Mostly fine.\n```json\n"
        + json.dumps(
            {
                "event": "REQUEST_CHANGES",
                "body": "One problem.",
                "comments": [
                    {"path": "src/app.py", "line": 21, "body": "Use the logger."},
                    {"path": "src/app.py", "line": 5, "body": "Outside the diff."},
                ],
            }
        )
        + "\n```"
    )
    verdict = review_from_result(result, DIFF)
    head = forgejo_sim.issue(TEAM_REPO, pull_number).pull.head_sha  # type: ignore[union-attr]
    task = review_task(forgejo_sim, pull_number)
    await make_delivery(clients).post_review(task, verdict, head)
    [review] = [r for r in forgejo_sim.reviews(TEAM_REPO, pull_number) if r.user == "reviewer"]
    assert review.state == "REQUEST_CHANGES"
    assert find_marker(review.body) == 43
    assert "(on src/app.py:5) Outside the diff." in review.body
    [inline] = forgejo_sim.review_comments(review.id)
    assert (inline.path, inline.new_position, inline.body) == ("src/app.py", 21, "Use the logger.")


async def test_invalid_verdict_posts_a_comment_review_with_the_whole_text(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], pull_number: int
) -> None:
    text = "I could not decide; the change to run() needs a test."
    task = review_task(forgejo_sim, pull_number)
    await make_delivery(clients).post_review(task, review_from_result(text, DIFF), None)
    [review] = [r for r in forgejo_sim.reviews(TEAM_REPO, pull_number) if r.user == "reviewer"]
    assert review.state == "COMMENT"
    assert text in review.body


async def test_stale_pending_review_is_deleted_before_posting(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], pull_number: int
) -> None:
    stale = forgejo_sim.submit_review(
        TEAM_REPO,
        pull_number,
        "reviewer",
        "PENDING",
        comments=[{"path": "src/app.py", "body": "half-written", "new_position": 21}],
    )
    verdict = ValidatedVerdict(
        ReviewState.COMMENT,
        "Looks fine.",
        (InlineComment(path="src/app.py", body="nice", new_position=21),),
    )
    task = review_task(forgejo_sim, pull_number)
    review = await make_delivery(clients).post_review(task, verdict, None)
    assert stale not in [r.id for r in forgejo_sim.reviews(TEAM_REPO, pull_number)]
    assert [c.body for c in forgejo_sim.review_comments(review.id)] == ["nice"]


async def test_posting_the_same_tasks_review_twice_makes_one_review(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], pull_number: int
) -> None:
    verdict = ValidatedVerdict(ReviewState.APPROVED, "Good.")
    task = review_task(forgejo_sim, pull_number)
    first = await make_delivery(clients).post_review(task, verdict, None)
    second = await make_delivery(clients).post_review(task, verdict, None)
    assert first.id == second.id
    assert (
        len(
            [
                r
                for r in forgejo_sim.reviews(TEAM_REPO, pull_number)
                if r.user == "reviewer" and r.state == "APPROVED"
            ]
        )
        == 1
    )


async def test_verdict_on_the_agents_own_pull_falls_back_to_a_comment_review(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], team: Team
) -> None:
    number = forgejo_sim.create_pull(TEAM_REPO, "reviewer", "Mine", "", head="mine", diff=DIFF)
    verdict = ValidatedVerdict(ReviewState.REQUEST_CHANGES, "Needs work.")
    review = await make_delivery(clients).post_review(
        review_task(forgejo_sim, number), verdict, None
    )
    assert review.state == "COMMENT"
    assert "Verdict: REQUEST_CHANGES" in review.body


# ---------------------------------------------------------------- pull requests and merging


async def test_open_or_update_pull_opens_once_closes_the_issue_and_requests_review(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], issue_with_request: tuple[int, int]
) -> None:
    number, comment_id = issue_with_request
    forgejo_sim.set_branch(TEAM_REPO, "dev/1", "a" * 40)
    task = thread_task(forgejo_sim, number=number, comment_id=comment_id)
    delivery = make_delivery(clients)
    url = await delivery.open_or_update_pull(
        task, "dev/1", "main", "Fix crash", "Fixed.", review_by="reviewer"
    )
    again = await delivery.open_or_update_pull(
        task, "dev/1", "main", "Fix crash", "Fixed v2.", review_by="reviewer"
    )
    assert url == again
    pull_number = int(url.rstrip("/").rsplit("/", 1)[1])
    pull = forgejo_sim.issue(TEAM_REPO, pull_number)
    assert "Closes #1" in pull.body and "Fixed v2." in pull.body
    requests = [r for r in forgejo_sim.reviews(TEAM_REPO, pull_number) if r.user == "reviewer"]
    assert [r.state for r in requests] == ["REQUEST_REVIEW"]


async def test_merge_merges_an_approved_pull_and_deletes_its_branch(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], pull_number: int
) -> None:
    forgejo_sim.add_collaborator(TEAM_REPO, "code-lead", "admin")  # to check who may write
    head = forgejo_sim.issue(TEAM_REPO, pull_number).pull.head_sha  # type: ignore[union-attr]
    forgejo_sim.submit_review(TEAM_REPO, pull_number, "reviewer", "APPROVED", "LGTM")
    task = thread_task(forgejo_sim, agent="code-lead", number=pull_number, comment_id=None)
    result = await make_delivery(clients).merge(task, MergeStyle.SQUASH, head)
    assert result.merged, result.detail
    assert forgejo_sim.issue(TEAM_REPO, pull_number).pull.merged  # type: ignore[union-attr]
    assert "feature" not in forgejo_sim.state.repo(TEAM_REPO).branches


async def test_merge_refuses_a_pull_that_is_not_approved(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], pull_number: int
) -> None:
    head = forgejo_sim.issue(TEAM_REPO, pull_number).pull.head_sha  # type: ignore[union-attr]
    task = thread_task(forgejo_sim, agent="code-lead", number=pull_number, comment_id=None)
    result = await make_delivery(clients).merge(task, MergeStyle.MERGE, head)
    assert not result.merged
    assert result.detail == f"did not merge #{pull_number}: nobody approved `{head[:10]}`"
    assert not forgejo_sim.issue(TEAM_REPO, pull_number).pull.merged  # type: ignore[union-attr]


async def test_merge_by_a_lead_that_cannot_check_permissions_says_what_it_needs(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], pull_number: int
) -> None:
    head = forgejo_sim.issue(TEAM_REPO, pull_number).pull.head_sha  # type: ignore[union-attr]
    forgejo_sim.submit_review(TEAM_REPO, pull_number, "reviewer", "APPROVED", "LGTM")
    task = thread_task(forgejo_sim, agent="code-lead", number=pull_number, comment_id=None)
    result = await make_delivery(clients).merge(task, MergeStyle.MERGE, head)  # lead: write only
    assert not result.merged
    assert "make the lead account an admin of the repository" in result.detail


async def test_merge_waits_for_a_failing_or_pending_head(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], pull_number: int
) -> None:
    forgejo_sim.add_collaborator(TEAM_REPO, "code-lead", "admin")
    head = forgejo_sim.issue(TEAM_REPO, pull_number).pull.head_sha  # type: ignore[union-attr]
    forgejo_sim.submit_review(TEAM_REPO, pull_number, "reviewer", "APPROVED", "LGTM")
    forgejo_sim.set_status(TEAM_REPO, head, "success", context="lint")
    forgejo_sim.set_status(TEAM_REPO, head, "pending", context="ci/test")
    task = thread_task(forgejo_sim, agent="code-lead", number=pull_number, comment_id=None)
    delivery = make_delivery(clients)
    result = await delivery.merge(task, MergeStyle.MERGE, head)
    assert not result.merged
    assert f"the commit status of `{head[:10]}` is pending (`ci/test` pending)" in result.detail
    forgejo_sim.set_status(TEAM_REPO, head, "success", context="ci/test")
    assert (await delivery.merge(task, MergeStyle.MERGE, head)).merged


async def test_close_drops_a_waiting_progress_edit(
    forgejo_sim: ForgejoSim, clients: dict[str, ForgejoClient], issue_with_request: tuple[int, int]
) -> None:
    number, comment_id = issue_with_request
    task = thread_task(forgejo_sim, number=number, comment_id=comment_id)
    reporter = make_reporter(clients, edit_interval=0.1)
    await reporter.progress(task, ["first"])
    await reporter.progress(task, ["first", "second"])
    await reporter.close()
    # The dropped edit was due 0.1 s after the first; another task's edit, throttled the
    # same way but started after the close, comes due later still: once it lands, the
    # dropped one's moment has passed.
    later = forgejo_sim.create_issue(TEAM_REPO, "alice", "Later", "Another one.")
    control = make_reporter(clients, edit_interval=0.1)
    other = thread_task(forgejo_sim, number=later, comment_id=None, task_id=43)
    await control.progress(other, ["one"])
    await control.progress(other, ["one", "two"])
    await wait_until(lambda: any("two" in body for body in agent_comments(forgejo_sim, later)))
    [body] = agent_comments(forgejo_sim, number)
    assert "second" not in body


def test_a_deferred_task_says_what_it_waits_for_until_when_and_that_it_resumes() -> None:
    waiting = make_task(
        state=TaskState.QUEUED,
        not_before=NOW + 3600,  # 2023-11-14 23:13:20 UTC
        error="paused (Claude usage limit)",
    )
    body = render(Phase.QUEUED, task=waiting, position=1)
    assert (
        "⏳ **Waiting** until 2023-11-14 23:13 UTC: paused (Claude usage limit); will resume."
        in (body)
    )
    assert "position" not in body


# ---------------------------------------------------------------- the outbox (issue 16)


async def finished_in_store(store: Store, number: int, comment_id: int) -> Task:
    spec = TaskSpec(
        agent="dev", kind=TaskKind.MENTION, repo=TEAM_REPO, number=number,
        idempotency_key=f"outbox-{number}", requested_by="alice", request="@dev fix it",
        source=TriggerSource.POLL, comment_id=comment_id,
    )  # fmt: skip
    task, _ = await store.enqueue(spec)
    await store.mark_running(task.id)
    return await store.finish(task.id, Outcome(TaskState.SUCCEEDED, result="All fixed."))


@pytest.fixture
async def outbox_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "outbox.sqlite3")
    yield store
    await store.close()


async def test_a_final_report_forgejo_refuses_stays_in_the_outbox_until_it_lands(
    forgejo_sim: ForgejoSim,
    clients: dict[str, ForgejoClient],
    issue_with_request: tuple[int, int],
    outbox_store: Store,
) -> None:
    # Issue 16: the final edit gave up during an outage and nothing ever tried it again.
    number, comment_id = issue_with_request
    reports = TaskReports(make_reporter(clients, final_attempts=1), outbox_store, lambda _: None)
    task = await finished_in_store(outbox_store, number, comment_id)
    assert not task.final_reported
    outage = forgejo_sim.outage(lambda method, path: method == "POST" and "/comments" in path)
    await reports.on_change(task)
    await reports.close()  # the chain has run: the final edit was refused
    assert agent_comments(forgejo_sim, number) == []
    assert [t.id for t in await outbox_store.unreported()] == [task.id]
    forgejo_sim.end_outage(outage)
    assert await reports.redeliver() == 1
    await reports.close()
    [body] = agent_comments(forgejo_sim, number)
    assert body.startswith(marker(task.id)) and "✅ **Done**" in body and "All fixed." in body
    assert await outbox_store.unreported() == []
    assert await reports.redeliver() == 0


async def test_a_final_report_forgejo_refuses_for_good_leaves_the_outbox(
    forgejo_sim: ForgejoSim,
    clients: dict[str, ForgejoClient],
    issue_with_request: tuple[int, int],
    outbox_store: Store,
) -> None:
    number, comment_id = issue_with_request
    reports = TaskReports(make_reporter(clients, final_attempts=3), outbox_store, lambda _: None)
    task = await finished_in_store(outbox_store, number, comment_id)
    forgejo_sim.outage(lambda method, path: method == "POST" and "/comments" in path, status=403)
    await reports.on_change(task)
    await reports.close()
    writes = [r for r in forgejo_sim.requests if r.method == "POST" and r.injected]
    assert len(writes) == 1  # a refusal is not retried, now or later
    assert await outbox_store.unreported() == []
