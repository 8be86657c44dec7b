"""The words people read on Forgejo, in one place: pure functions, no I/O.

Phases of the tracking comment, why a run ended (timeout, max turns, API error,
cancelled, skipped, interrupted…), durations and costs, the tracking comment
itself, the pull request body and the review body. The scheduler, the worker and
the delivery all take their words from here, so one fact reads the same wherever
it is shown; the runner reports facts (`RunFailure`) and this module words them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum

from claude_hooks.tasks import (
    FailureKind,
    Outcome,
    RunFailure,
    Task,
    TaskKind,
    TaskState,
    UsageLimit,
)
from claude_hooks.text import (
    MENTION,
    defuse_mentions,
    fence,
    format_cost,
    format_duration,
    marker,
    one_line,
    strip_markers,
)

Redact = Callable[[str], str]

MAX_STEPS = 10  # checklist lines in the progress comment
MAX_STEP_CHARS = 160
MAX_RESULT_CHARS = 30_000  # Forgejo stores comments as TEXT: keep well under 64 KiB
MAX_REASON_CHARS = 400
MAX_STDERR_LINE_CHARS = 300
STDERR_TAIL_LINES = 40
STDERR_TAIL_CHARS = 4_000


# ---------------------------------------------------------------- phases


class Phase(StrEnum):
    QUEUED = "queued"
    WORKING = "working"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def is_final(self) -> bool:
        return self not in (Phase.QUEUED, Phase.WORKING)


def phase_of(outcome: Outcome) -> Phase:
    return {
        TaskState.SUCCEEDED: Phase.SUCCEEDED,
        TaskState.CANCELLED: Phase.CANCELLED,
        TaskState.INTERRUPTED: Phase.INTERRUPTED,
    }.get(outcome.state, Phase.FAILED)


# ---------------------------------------------------------------- why a run ended

INTERRUPTED_REASON = "interrupted by shutdown — will resume"


def timeout_reason(seconds: float) -> str:
    return f"timeout after {format_duration(seconds, round_to_minutes=True)}"


def max_turns_reason(max_turns: int | None = None) -> str:
    return "max turns reached" + (f" ({max_turns})" if max_turns else "")


def api_error_reason(status: int | None) -> str:
    return (
        f"Claude API error {status} after retries" if status else "Claude API error after retries"
    )


def budget_reason(budget_usd: float | None) -> str:
    return f"budget limit reached ({_usd(budget_usd)})" if budget_usd else "budget limit reached"


def _usd(amount: float) -> str:
    # As the operator wrote it in the config: "$5.00", "$0.50"; finer amounts in full.
    return f"${amount:.2f}" if round(amount, 2) == amount else f"${amount:g}"


def usage_limit_reason(limit: UsageLimit | None) -> str:
    """A run stopped by a Claude usage limit: which limit, and until when if known."""
    if limit is None:
        return "Claude usage limit reached"
    which = f" ({limit.limit_type})" if limit.limit_type else ""
    until = f", resets {reset_in_words(limit.resets_at)}" if limit.resets_at is not None else ""
    return f"Claude usage limit reached{which}{until}"


def reset_in_words(resets_at: float) -> str:
    """ "2026-12-02 05:00 UTC": an operator compares it with the CLI's own "resets 5am"."""
    try:
        return datetime.fromtimestamp(resets_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return "at an unreadable time"


USAGE_LIMIT_PAUSE = "Claude usage limit"
PAUSED_PREFIX = "paused until "


def paused_reason(until: float, why: str) -> str:
    """An agent's queue held until `until`: "paused until 05:00 UTC (Claude usage limit)"."""
    return f"{PAUSED_PREFIX}{clock_time(until)} ({why})"


def daily_budget_pause(budget_usd: float) -> str:
    return f"daily budget of {_usd(budget_usd)} reached"


def cancelled_reason(by: str | None = None) -> str:
    return f"cancelled by {by}" if by else "cancelled"


def skipped_reason(why: str) -> str:
    return f"skipped: {why}"


def delivery_failed_reason(what: str) -> str:
    """Delivering the work failed; `what` is in words, never an exception's text."""
    return f"delivering failed: {what}"


def crashed_reason(what: str) -> str:
    """A run that raised: `what` in words; the exception itself stays in the journal."""
    return f"{what} (the daemon's journal has the details)"


def outage_reason(what: str, attempt: int, attempts: int) -> str:
    """A task waiting out an outage: `what` is down, e.g. "Forgejo is unreachable"."""
    return f"{what}, will retry (try {attempt} of {attempts})"


def engine_lost_reason(engine: str) -> str:
    """A running task whose Docker engine (of an engine pool) stopped answering."""
    return f"interrupted: Docker engine {engine} stopped answering — will re-run"


def gave_up_reason(what: str, tries: int, seconds: float) -> str:
    """An outage that outlasted the task's retry budget."""
    return f"gave up after {tries} retries over {format_duration(seconds)}: {what}"


def with_merge_note(result: str | None, detail: str) -> str:
    """A lead's answer, then what its merge did (or why it did not merge)."""
    return f"{result or ''}\n\nmerge: {detail}".strip()


def failure_reason(failure: RunFailure) -> str:
    """The runner's facts about a failed run, in words."""
    match failure.kind:
        case FailureKind.MAX_TURNS:
            return max_turns_reason()
        case FailureKind.API_ERROR:
            return api_error_reason(failure.api_status)
        case FailureKind.BUDGET:
            return budget_reason(failure.budget_usd)
        case FailureKind.USAGE_LIMIT:
            return usage_limit_reason(failure.usage_limit)
        case FailureKind.CLAUDE_ERROR:
            what = failure.what or "error"
            said = f": {failure.detail}" if failure.detail else ""
            return one_line(f"Claude Code failed ({what}){said}", MAX_REASON_CHARS)
        case FailureKind.KILLED:
            return f"claude exited {failure.exit_code} without a result (killed)"
        case FailureKind.NO_RESULT if failure.exit_code is None:
            return "claude ended without a result or an exit code"
        case FailureKind.NO_RESULT:
            last = one_line(failure.detail, MAX_STDERR_LINE_CHARS)
            return f"claude exited {failure.exit_code} without a result" + (
                f": {last}" if last else ""
            )


def reason_in_words(outcome: Outcome) -> str:
    """Why a run ended badly, for people: the runner's words, else what the state says."""
    if outcome.reason:
        return outcome.reason
    if outcome.state is TaskState.CANCELLED:
        return cancelled_reason()
    if outcome.state is TaskState.INTERRUPTED:
        return INTERRUPTED_REASON
    if outcome.state is TaskState.FAILED:
        code = outcome.exit_code
        return f"Claude Code exited with code {code}" if code else "failed for an unknown reason"
    return ""


# ---------------------------------------------------------------- the tracking comment


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def stderr_tail(stderr: str) -> str:
    lines = _ANSI.sub("", stderr).rstrip().splitlines()[-STDERR_TAIL_LINES:]
    return "\n".join(lines)[-STDERR_TAIL_CHARS:]


def render_checklist(steps: Sequence[str], *, done: bool) -> str:
    """The latest steps as a task list; the last one is in progress unless done."""
    shown = list(steps)[-MAX_STEPS:]
    lines = [f"- … {len(steps) - len(shown)} earlier steps"] if len(steps) > len(shown) else []
    for i, step in enumerate(shown):
        box = "x" if done or i < len(shown) - 1 else " "
        lines.append(f"- [{box}] {one_line(strip_markers(step), MAX_STEP_CHARS)}")
    return "\n".join(lines)


def _elapsed(task: Task, outcome: Outcome | None, now: float) -> float | None:
    if task.started_at is not None:
        return (task.finished_at or now) - task.started_at
    if outcome is not None and outcome.duration_ms is not None:
        return outcome.duration_ms / 1000
    return None


def render_stats(task: Task, outcome: Outcome, now: float) -> str:
    parts = [f"status: {outcome.state.value}"]
    if (elapsed := _elapsed(task, outcome, now)) is not None:
        parts.append(format_duration(elapsed))
    turns = outcome.num_turns if outcome.num_turns is not None else task.num_turns
    if turns is not None:
        parts.append(f"{turns} turn" + ("" if turns == 1 else "s"))
    cost = outcome.cost_usd if outcome.cost_usd is not None else task.cost_usd
    if cost is not None:
        parts.append(format_cost(cost))
    return " · ".join(parts)


_HEADLINES = {
    Phase.SUCCEEDED: "✅ **Done**",
    Phase.FAILED: "❌ **Failed: {reason}**",
    Phase.CANCELLED: "🛑 **{reason}**",
    Phase.INTERRUPTED: "⏸️ **{reason}**",
}


def _headline(phase: Phase, outcome: Outcome) -> str:
    reason = reason_in_words(outcome)
    return _HEADLINES[phase].format(reason=reason[:1].upper() + reason[1:])


def _final_body(task: Task, phase: Phase, outcome: Outcome, now: float) -> list[str]:
    parts = [_headline(phase, outcome), render_stats(task, outcome, now)]
    result = strip_markers((outcome.result or "").strip())
    if len(result) > MAX_RESULT_CHARS:
        result = result[:MAX_RESULT_CHARS] + "\n\n[… truncated]"
    if result:
        parts.append(result)
    links = outcome.links or task.links
    if links:
        parts.append("\n".join(f"- {link}" for link in links))
    if phase is Phase.FAILED and outcome.stderr_tail and outcome.stderr_tail.strip():
        tail = fence(stderr_tail(outcome.stderr_tail), "text")
        parts.append(f"<details><summary>Last lines of stderr</summary>\n\n{tail}\n\n</details>")
    return parts


def render_tracking(
    task: Task,
    phase: Phase,
    *,
    position: int | None = None,
    steps: Sequence[str] = (),
    outcome: Outcome | None = None,
    now: float,
    redact: Redact,
) -> str:
    """The whole tracking comment for one phase; `redact` hides secrets in every part."""
    parts = [marker(task.id)]
    if phase is Phase.QUEUED and task.deferred:
        parts.append(waiting_line(task))
    elif phase is Phase.QUEUED:
        where = f" — position {position} in {task.spec.agent}'s queue" if position else ""
        parts.append(f"⏳ **Queued**{where}. Requested by {task.spec.requested_by}.")
    elif phase is Phase.WORKING:
        since = task.started_at if task.started_at is not None else now
        parts.append(f"🔧 **Working** for {format_duration(now - since)}…")
        if steps:
            parts.append(render_checklist(steps, done=False))
    else:
        if outcome is None:
            raise ValueError(f"render_tracking: phase {phase} needs an outcome")
        parts += _final_body(task, phase, outcome, now)
    parts.append(f"<sub>claude-hooks task {task.id} · {task.spec.agent}</sub>")
    body = defuse_mentions("\n\n".join(parts))
    if phase.is_final and outcome is not None and (who := addressee(task, outcome)):
        # The one mention the daemon means: the person a stopped loop hands back to.
        body = body.replace(f"\n\n`@{who}`", f"\n\n@{who}", 1)
    # The marker goes back first after redaction, which could never touch it anyway.
    return redact(body)


def addressee(task: Task, outcome: Outcome) -> str | None:
    """The login a final comment is addressed to, by a leading `@login` of its result:
    only a ROUNDS_SPENT task's, whose whole text the daemon writes (no Claude run)."""
    if task.spec.kind is not TaskKind.ROUNDS_SPENT or outcome.state is not TaskState.SUCCEEDED:
        return None
    match = MENTION.match(strip_markers(outcome.result or "").strip())
    return match[1][1:] if match else None


def posts_only_final(task: Task) -> bool:
    """A task without a run posts one comment, its final one, and no "Queued" first:
    Forgejo notifies a mention in a new comment, never one an edit adds."""
    return task.spec.kind is TaskKind.ROUNDS_SPENT


def clock_time(ts: float) -> str:
    """A moment as people read it on the thread: "05:00 UTC", with the date when not today."""
    moment = datetime.fromtimestamp(ts, UTC)
    if moment.date() == datetime.now(UTC).date():
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def waiting_line(task: Task) -> str:
    """A deferred task's line: until when, and why; a paused agent's reason says when."""
    words = waiting_words(task)
    if words.startswith(PAUSED_PREFIX):
        return f"⏸️ **Waiting**: {words}."
    assert task.not_before is not None
    return f"⏳ **Waiting** until {clock_time(task.not_before)}: {words}."


def waiting_words(task: Task) -> str:
    """Why a deferred task waits, and that it will go on by itself."""
    return f"{task.error or 'deferred'}; will resume"


# ---------------------------------------------------------------- pull request and review


def pull_body(task: Task, summary: str) -> str:
    """Body of the PR a dev task opens: its summary, the closing keyword, our marker."""
    spec = task.spec
    closes = f"\n\nCloses #{spec.number}" if spec.number is not None and not spec.is_pull else ""
    asked = f"\n\nRequested by {spec.requested_by} in {spec.thread}." if spec.number else ""
    return defuse_mentions(f"{marker(task.id)}\n{strip_markers(summary).strip()}{closes}{asked}")


def review_body(task: Task, body: str) -> str:
    return defuse_mentions(f"{marker(task.id)}\n{strip_markers(body).strip()}")


def comment_only_note(intended: str) -> str:
    """Added to a review Forgejo would only take as a comment (e.g. on the agent's own PR)."""
    return f"(Verdict: {intended}; Forgejo only accepted a comment review.)"


def comment_as_text(path: str, line: int | None, body: str) -> str:
    """An inline comment that cannot sit on a line of the diff, moved into the review body."""
    where = f"{path}:{line}" if line else path
    return f"(on {where}) {body}"


# ---------------------------------------------------------------- the team's loop (#14)


def _code(text: str, limit: int = 120) -> str:
    """A name someone chose (a branch, a path, a CI context) in inline code, on one line."""
    flat = one_line(text.replace("`", "'"), limit)
    return f"`{flat}`"


FORK_REASON = "its branch is in another repository (a fork), which the daemon does not push to"


def unplain_branch_reason(branch: str) -> str:
    return f"its branch name {_code(branch)} is not one the daemon pushes to"


def not_pushed_note(why: str) -> str:
    """A dev run on a pull request whose branch the daemon cannot push."""
    return f"Not pushed: {why}. The commits stay in the agent's working tree only."


def push_refused_reason(branch: str, detail: str) -> str:
    said = f": {one_line(detail, MAX_STDERR_LINE_CHARS)}" if detail else ""
    return f"could not push {_code(branch)}, Forgejo refused it or was not reachable{said}"


def pushed_note(branch: str, log: Sequence[str]) -> str:
    count = len(log)
    lines = [f"Pushed {count} commit{'' if count == 1 else 's'} to {_code(branch)}:"]
    lines += [f"- {one_line(line, MAX_STEP_CHARS)}" for line in log]
    return "\n".join(lines)


NO_COMMITS_NOTE = "No commits: nothing was pushed, and review was not re-requested."


def rerequested_note(reviewers: Sequence[str]) -> str:
    if not reviewers:
        return "Nobody to re-request review from."
    return "Review re-requested from " + ", ".join(_code(r, 60) for r in reviewers) + "."


def rerequest_failed_note(reviewers: Sequence[str], error: str) -> str:
    who = ", ".join(_code(r, 60) for r in reviewers)
    return f"Re-requesting review from {who} failed: {one_line(error, 200)}"


def answered_comments(answers: Sequence[tuple[str, str, str]]) -> str:
    """The one summary answering a review's inline comments (Forgejo's API has no reply
    to a review comment's thread): (where, link, answer) each."""
    lines = ["Review comments:"]
    for where, link, answer in answers:
        place = f"[{_code(where)}]({link})" if link else _code(where)
        lines.append(f"- {place}: {one_line(answer, 600) or 'not answered in this run'}")
    return "\n".join(lines)


def ci_contexts(statuses: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{_code(context or 'default', 60)} {state or 'unknown'}"
                     for context, state in statuses)  # fmt: skip


def ci_failed_reason(statuses: Sequence[tuple[str, str]]) -> str:
    return f"CI failed: {ci_contexts(statuses)}"


def ci_pending_reason(statuses: Sequence[tuple[str, str]]) -> str:
    return f"CI pending: {ci_contexts(statuses)}" if statuses else "CI pending"


def ci_waited_too_long_reason(waited: float, statuses: Sequence[tuple[str, str]]) -> str:
    return f"CI still pending after {format_duration(waited)}: {ci_contexts(statuses)}"


def ci_line(state: str, statuses: Sequence[tuple[str, str]]) -> str:
    """The head's commit status on a tracking comment."""
    if not state and not statuses:
        return "CI: no commit status reported for the head."
    listed = f" ({ci_contexts(statuses)})" if statuses else ""
    return f"CI: {state or 'unknown'}{listed}"


def head_moved_reason(queued: str, now: str) -> str:
    return f"the head moved to {_code(now[:10])} after {_code(queued[:10])}"


def ci_fix_request(statuses: Sequence[tuple[str, str]], head: str) -> str:
    """The request text of a CI_FIX task (the daemon's words, shown to the dev agent)."""
    return f"The commit status of {head[:10]} failed: {ci_contexts(statuses)}. Fix it."


def lead_declined_note(reason: str) -> str:
    because = f": {one_line(reason, MAX_REASON_CHARS)}" if reason.strip() else ""
    return f"Not merged: the lead declined{because}"


def rounds_spent_text(
    addressee: str | None,
    rounds: int,
    reviewer: str,
    unresolved: Sequence[tuple[str, str]],
    review_body: str = "",
) -> str:
    """The one comment to the person who started the work when the loop stops: how many
    rounds, and what is unresolved (where, text each). Only the leading @addressee may
    notify (render_tracking keeps it); the rest is defused like every post."""
    to = f"@{addressee} " if addressee else ""
    s = "" if rounds == 1 else "s"
    lines = [
        f"{to}The agents stopped after {rounds} review round{s} without an approval: "
        f"{reviewer} still requests changes. Over to you: fix it, or say what to do next.",
    ]
    if review_body.strip():
        lines += ["", f"Latest review: {one_line(strip_markers(review_body), 600)}"]
    if unresolved:
        lines += ["", "Unresolved:"]
        lines += [f"- {_code(where)}: {one_line(text, 600)}" for where, text in unresolved]
    return "\n".join(lines)
