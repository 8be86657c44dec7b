"""Everything the daemon writes back to Forgejo: reaction, tracking comment, review, PR, merge.

One task, one tracking comment from the agent: queued (with position) → working
(a checklist of the latest steps, edited at most every few seconds) → finished,
failed, cancelled or interrupted. The comment carries a hidden marker with the
task id, so a re-run (after a restart) finds and edits it instead of posting a
duplicate. Reviews carry the same marker, so a re-run does not review twice.

Rendering is pure (`render_tracking` and friends); `Reporter` is the thin I/O
shell. Reporting never crashes a task: a failed edit is logged and the next edit
tries again. Outputs that *are* the task's work (the review, the pull request)
raise ForgejoError when they cannot be made, so the task is recorded as failed.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from claude_hooks.config import MergeStyle
from claude_hooks.forgejo.client import ForgejoClient, ForgejoError
from claude_hooks.forgejo.models import PullRequest, Review
from claude_hooks.tasks import Outcome, Task, TaskState
from claude_hooks.text import defuse_mentions, find_marker, marker, strip_markers
from claude_hooks.work.merge_gate import GateResult, merge_gate, verdict_reviewers
from claude_hooks.work.verdict import ReviewEvent, ValidatedVerdict

log = structlog.get_logger(__name__)

Redact = Callable[[str], str]

MAX_STEPS = 10
MAX_STEP_CHARS = 160
MAX_RESULT_CHARS = 30_000  # Forgejo stores comments as TEXT: keep well under 64 KiB
STDERR_TAIL_LINES = 40
STDERR_TAIL_CHARS = 4_000


# ---------------------------------------------------------------- words and numbers


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


INTERRUPTED_REASON = "interrupted by shutdown — will resume"


def timeout_reason(seconds: float) -> str:
    return f"timeout after {format_duration(seconds, round_to_minutes=True)}"


def max_turns_reason(max_turns: int | None = None) -> str:
    return "max turns reached" + (f" ({max_turns})" if max_turns else "")


def api_error_reason(status: int | None) -> str:
    return (
        f"Claude API error {status} after retries" if status else "Claude API error after retries"
    )


def cancelled_reason(by: str | None = None) -> str:
    return f"cancelled by {by}" if by else "cancelled"


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


def format_duration(seconds: float, *, round_to_minutes: bool = False) -> str:
    """ "45 s", "4 min 12 s", "1 h 3 min"; with round_to_minutes whole minutes read "60 min"."""
    seconds = max(0.0, seconds)
    if round_to_minutes and seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def format_cost(usd: float) -> str:
    return f"${usd:.4f}" if usd < 1 else f"${usd:.2f}"


# ---------------------------------------------------------------- rendering


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _fence(text: str, info: str = "") -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(strip_markers(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def stderr_tail(stderr: str) -> str:
    lines = _ANSI.sub("", stderr).rstrip().splitlines()[-STDERR_TAIL_LINES:]
    return "\n".join(lines)[-STDERR_TAIL_CHARS:]


def render_checklist(steps: Sequence[str], *, done: bool) -> str:
    """The latest steps as a task list; the last one is in progress unless done."""
    shown = list(steps)[-MAX_STEPS:]
    lines = [f"- … {len(steps) - len(shown)} earlier steps"] if len(steps) > len(shown) else []
    for i, step in enumerate(shown):
        box = "x" if done or i < len(shown) - 1 else " "
        lines.append(f"- [{box}] {_one_line(step, MAX_STEP_CHARS)}")
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
        tail = _fence(stderr_tail(outcome.stderr_tail), "text")
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
    if phase is Phase.QUEUED:
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
    # The marker goes back first after redaction, which could never touch it anyway.
    return redact(defuse_mentions("\n\n".join(parts)))


def pull_body(task: Task, summary: str) -> str:
    """Body of the PR a dev task opens: its summary, the closing keyword, our marker."""
    spec = task.spec
    closes = f"\n\nCloses #{spec.number}" if spec.number is not None and not spec.is_pull else ""
    asked = f"\n\nRequested by {spec.requested_by} in {spec.thread}." if spec.number else ""
    return defuse_mentions(f"{marker(task.id)}\n{strip_markers(summary).strip()}{closes}{asked}")


def review_body(task: Task, body: str) -> str:
    return defuse_mentions(f"{marker(task.id)}\n{strip_markers(body).strip()}")


def review_attempts(verdict: ValidatedVerdict) -> list[ValidatedVerdict]:
    """What to try when Forgejo refuses a review (422), most faithful first.

    APPROVED / REQUEST_CHANGES on the agent's own PR is refused: retry as COMMENT
    naming the intended verdict. Inline comments Forgejo cannot place: retry with
    them in the body.
    """
    attempts = [verdict]
    if verdict.event is not ReviewEvent.COMMENT:
        note = f"(Verdict: {verdict.event.value}; Forgejo only accepted a comment review.)"
        body = f"{verdict.body}\n\n{note}".strip()
        attempts.append(
            ValidatedVerdict(ReviewEvent.COMMENT, body, verdict.comments, verdict.moved)
        )
    if verdict.comments:
        texts = [f"(on {c.path}:{c.new_position}) {c.body}" for c in verdict.comments]
        body = "\n\n".join([attempts[-1].body, *texts]).strip()
        attempts.append(ValidatedVerdict(ReviewEvent.COMMENT, body, (), verdict.moved))
    return attempts


# ---------------------------------------------------------------- throttle


@dataclass
class ProgressThrottle:
    """Edit at most every `interval` seconds; the final edit is always due."""

    interval: float
    last: float | None = None

    def due(self, now: float, *, final: bool = False) -> bool:
        return final or self.last is None or now - self.last >= self.interval

    def wait(self, now: float) -> float:
        """Seconds until the next edit is due."""
        return 0.0 if self.last is None else max(0.0, self.last + self.interval - now)

    def mark(self, now: float) -> None:
        self.last = now


# ---------------------------------------------------------------- I/O


@dataclass(frozen=True)
class MergeResult:
    merged: bool
    detail: str  # in words, for the tracking comment


@dataclass
class _Tracker:
    """What the reporter remembers about one task's tracking comment."""

    throttle: ProgressThrottle
    comment_id: int | None = None
    started_at: float | None = None
    steps: tuple[str, ...] = ()
    last_body: str | None = None
    flush: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Reporter:
    """Writes one task's progress and results to Forgejo as the task's agent."""

    def __init__(
        self,
        client_for: Callable[[str], ForgejoClient],
        *,
        redact: Redact,
        edit_interval: float = 5.0,
        final_attempts: int = 4,
        final_backoff: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client_for = client_for
        self._redact = redact
        self._edit_interval = edit_interval
        self._final_attempts = final_attempts
        self._final_backoff = final_backoff
        self._clock = clock
        self._wall = wall_clock
        self._trackers: dict[int, _Tracker] = {}
        # Tasks whose final text is posted: a late progress call must not overwrite it.
        self._finished: set[int] = set()

    async def close(self) -> None:
        """Drop progress edits still waiting for their throttle slot (at shutdown)."""
        flushes = [t.flush for t in self._trackers.values() if t.flush and not t.flush.done()]
        for flush in flushes:
            flush.cancel()
        await asyncio.gather(*flushes, return_exceptions=True)

    def _tracker(self, task: Task) -> _Tracker:
        tracker = self._trackers.get(task.id)
        if tracker is None:
            tracker = _Tracker(ProgressThrottle(self._edit_interval))
            tracker.comment_id = task.tracking_comment_id
            self._trackers[task.id] = tracker
        return tracker

    def _log(self, task: Task) -> structlog.typing.FilteringBoundLogger:
        return log.bind(task_id=task.id, agent=task.spec.agent, thread=task.spec.thread)

    # -- tracking comment

    async def acknowledge(self, task: Task, position: int | None = None) -> int | None:
        """👀 on the trigger and the queued tracking comment; its id, or None if none exists."""
        if task.spec.number is None:
            return None
        self._finished.discard(task.id)
        await self._react(task)
        tracker = self._tracker(task)
        body = self._render(task, Phase.QUEUED, position=position)
        async with tracker.lock:
            try:
                await self._write(task, tracker, body)
            except Exception as exc:  # reporting never fails the task
                self._tracking_failed(task, "queued", exc)
        return tracker.comment_id

    async def progress(self, task: Task, steps: Sequence[str]) -> None:
        """Show the latest steps; edits are throttled, a skipped one is flushed later."""
        if task.spec.number is None or task.id in self._finished:
            return
        tracker = self._tracker(task)
        tracker.steps = tuple(steps)
        if tracker.started_at is None:
            tracker.started_at = task.started_at or self._wall()
        wait = tracker.throttle.wait(self._clock())
        if wait <= 0:
            await self._flush_progress(task, tracker)
        elif tracker.flush is None or tracker.flush.done():
            tracker.flush = asyncio.create_task(self._flush_later(task, tracker, wait))

    async def _flush_later(self, task: Task, tracker: _Tracker, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._flush_progress(task, tracker)

    async def _flush_progress(self, task: Task, tracker: _Tracker) -> None:
        async with tracker.lock:
            started = (
                task if task.started_at is not None else task.with_(started_at=tracker.started_at)
            )
            body = self._render(started, Phase.WORKING, steps=tracker.steps)
            try:
                await self._write(task, tracker, body)
            except Exception as exc:  # reporting never fails the task
                # Not marked as done: the next progress call (or the final edit) retries.
                self._tracking_failed(task, "working", exc)
                return
            tracker.throttle.mark(self._clock())

    async def finish(self, task: Task, outcome: Outcome) -> None:
        """The final edit: result, status, duration, turns, cost, links or the failure reason."""
        if task.spec.number is None:
            return
        tracker = self._trackers.pop(task.id, None) or self._tracker(task)
        self._finished.add(task.id)
        if tracker.flush is not None:
            # A flush cut off mid-request may have created the comment unseen; the
            # write below then finds it by its marker.
            tracker.flush.cancel()
        body = self._render(task, phase_of(outcome), outcome=outcome)
        # The client already retries one request for seconds; the final state is the
        # one thing people must see, so the whole find-or-edit is retried over a longer
        # window too (Forgejo restarting, a proxy briefly down).
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._final_attempts),
            wait=wait_exponential(multiplier=self._final_backoff, max=60),
            retry=retry_if_exception_type(ForgejoError),
            reraise=True,
        )
        try:
            async with tracker.lock:
                async for attempt in retrying:
                    with attempt:
                        await self._write(task, tracker, body)
        except Exception as exc:  # reporting never fails the task
            self._tracking_failed(task, "final", exc)

    def _tracking_failed(self, task: Task, phase: str, exc: Exception) -> None:
        # A ForgejoError already says what and where; anything else is a bug: keep its trace.
        self._log(task).warning(
            "tracking_comment_failed",
            phase=phase,
            error=str(exc),
            exc_info=False if isinstance(exc, ForgejoError) else exc,
        )

    def _render(self, task: Task, phase: Phase, **kwargs: object) -> str:
        return render_tracking(task, phase, now=self._wall(), redact=self._redact, **kwargs)  # type: ignore[arg-type]

    async def _write(self, task: Task, tracker: _Tracker, body: str) -> None:
        """Edit the task's comment (found by its marker after a restart), else create it."""
        if body == tracker.last_body:
            return
        client, spec = self._client_for(task.spec.agent), task.spec
        assert spec.number is not None
        if tracker.comment_id is None:
            tracker.comment_id = await self.find_tracking_comment(task)
        if tracker.comment_id is not None:
            try:
                await client.edit_comment(spec.repo, tracker.comment_id, body)
                tracker.last_body = body
                return
            except ForgejoError as exc:
                if exc.status != 404:
                    raise
                self._log(task).info("tracking_comment_gone", comment_id=tracker.comment_id)
        comment = await client.create_comment(spec.repo, spec.number, body)
        tracker.comment_id, tracker.last_body = comment.id, body

    async def find_tracking_comment(self, task: Task) -> int | None:
        """The agent's comment carrying this task's marker, if a run already posted one."""
        spec = task.spec
        if spec.number is None:
            return None
        comments = await self._client_for(spec.agent).list_comments(spec.repo, spec.number)
        for comment in comments:
            if (
                comment.user.login.lower() == spec.agent.lower()
                and find_marker(comment.body) == task.id
            ):
                return comment.id
        return None

    async def _react(self, task: Task) -> None:
        client, spec = self._client_for(task.spec.agent), task.spec
        try:
            if spec.comment_id is not None:
                await client.react_to_comment(spec.repo, spec.comment_id, "eyes")
            elif spec.number is not None:
                await client.react_to_issue(spec.repo, spec.number, "eyes")
        except ForgejoError as exc:
            self._log(task).warning("reaction_failed", error=str(exc))

    # -- outputs of the work itself: these raise ForgejoError when they cannot be made

    async def post_review(
        self, task: Task, verdict: ValidatedVerdict, head_sha: str | None
    ) -> Review:
        """Post the review (inline comments at absolute new-side lines); idempotent per task."""
        spec = task.spec
        if spec.number is None:
            raise ValueError(f"task {task.id}: a review needs a pull request number")
        client = self._client_for(spec.agent)
        existing = await self._clear_pending_reviews(task, client)
        if existing is not None:
            return existing
        attempts = review_attempts(verdict)
        for i, attempt in enumerate(attempts):
            try:
                return await client.create_review(
                    spec.repo,
                    spec.number,
                    event=attempt.event.value,
                    body=self._redact(review_body(task, attempt.body)),
                    commit_id=head_sha,
                    comments=[
                        replace(c, body=self._redact(defuse_mentions(c.body)))
                        for c in attempt.comments
                    ],
                )
            except ForgejoError as exc:
                if exc.status != 422 or i == len(attempts) - 1:
                    raise
                self._log(task).warning(
                    "review_refused", review_event=attempt.event.value, error=str(exc)
                )
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _clear_pending_reviews(self, task: Task, client: ForgejoClient) -> Review | None:
        """Delete the agent's stale PENDING reviews (they would swallow new inline comments);
        return the review this task already posted, if a previous run got that far."""
        spec, agent = task.spec, task.spec.agent.lower()
        assert spec.number is not None
        mine = [
            r
            for r in await client.list_reviews(spec.repo, spec.number)
            if r.user is not None and r.user.login.lower() == agent
        ]
        for review in mine:
            if review.state == "PENDING":
                await client.delete_review(spec.repo, spec.number, review.id)
                self._log(task).info("stale_pending_review_deleted", review_id=review.id)
        return next(
            (r for r in mine if r.state != "PENDING" and find_marker(r.body) == task.id), None
        )

    async def open_or_update_pull(
        self,
        task: Task,
        branch: str,
        base: str,
        title: str,
        summary: str,
        *,
        review_by: str | None = None,
    ) -> str:
        """Open the PR for a dev task's branch (or update the one already open); its URL."""
        spec = task.spec
        client = self._client_for(spec.agent)
        body = self._redact(pull_body(task, summary))
        open_pulls = await client.list_pulls(spec.repo, "open")
        pull = next((p for p in open_pulls if p.head_ref == branch and p.base_ref == base), None)
        if pull is None:
            pull = await client.create_pull(
                spec.repo, head=branch, base=base, title=title, body=body
            )
            self._log(task).info("pull_opened", number=pull.number, branch=branch)
        else:
            pull = await client.edit_pull(spec.repo, pull.number, title=title, body=body)
            self._log(task).info("pull_updated", number=pull.number, branch=branch)
        wanted = review_by is not None and review_by.lower() not in {
            r.lower() for r in pull.requested_reviewers
        }
        if wanted:
            try:
                await client.request_reviewers(spec.repo, pull.number, [review_by])  # type: ignore[list-item]
            except ForgejoError as exc:
                self._log(task).warning("review_request_failed", reviewer=review_by, error=str(exc))
        return pull.html_url

    async def merge(self, task: Task, style: MergeStyle, head_sha: str) -> MergeResult:
        """Merge the task's PR, deleting the branch, if the merge gate lets it through at
        `head_sha` (claude_hooks/work/merge_gate.py); otherwise say why not."""
        spec = task.spec
        if spec.number is None:
            return MergeResult(False, "no pull request to merge")
        client = self._client_for(spec.agent)
        try:
            pull = await client.get_pull(spec.repo, spec.number)
            if pull.merged:
                return MergeResult(True, f"#{pull.number} was already merged")
            if pull.state != "open":
                return MergeResult(False, f"#{pull.number} is {pull.state}, not open")
            gate = await self._merge_gate(client, spec.repo, pull, head_sha)
            if not gate.ok:
                self._log(task).info("merge_gate_closed", number=pull.number, reasons=gate.reasons)
                because = "; ".join(gate.reasons)
                return MergeResult(False, f"did not merge #{pull.number}: {because}")
            merged = await client.merge_pull(
                spec.repo,
                spec.number,
                style=style.value,
                head_commit_id=head_sha or pull.head_sha,  # the commit the gate let through
                delete_branch=True,
            )
        except ForgejoError as exc:
            self._log(task).warning("merge_refused", error=str(exc))
            return MergeResult(False, f"Forgejo refused the merge: {exc.message} ({exc.status})")
        if not merged:  # 405 / 409: not mergeable (conflict, WIP) or the head moved
            return MergeResult(
                False,
                f"Forgejo refused to merge #{spec.number}: not mergeable "
                f"now, or its head moved past {head_sha[:10]}",
            )
        self._log(task).info("pull_merged", number=spec.number, style=style.value)
        return MergeResult(True, f"merged #{spec.number} ({style.value}) and deleted its branch")

    async def _merge_gate(
        self, client: ForgejoClient, repo: str, pull: PullRequest, head_sha: str
    ) -> GateResult:
        """The gate's facts, fresh from Forgejo: reviews, reviewers' access, the head's status."""
        reviews = await client.list_reviews(repo, pull.number)
        access = {login: await client.repo_permission(repo, login)
                  for login in verdict_reviewers(reviews)}  # fmt: skip
        status = await client.combined_status(repo, pull.head_sha) if pull.head_sha else None
        return merge_gate(pull, reviews, access, status, head_sha=head_sha)
