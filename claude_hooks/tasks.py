"""The typed values that flow between modules: what was asked, what is stored, how it ended.

Every hand-off in docs/ARCHITECTURE.md's flow passes one of these. They are frozen so that no
module can change what another one holds; a new state is a new value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum


class TaskKind(StrEnum):
    MENTION = "mention"  # @agent in an issue/PR body, a comment or a review
    REVIEW = "review"  # a review of a pull request was requested from the agent
    ASSIGNMENT = "assignment"  # the issue or PR was assigned to the agent
    API = "api"  # submitted through the HTTP API or `claude-hooks submit`
    # The team's own loop on a PR an agent opened (no mention needed; bounded by
    # daemon.max_review_rounds, not by hop_limit):
    REVIEW_FEEDBACK = "review_feedback"  # changes were asked for: the author agent fixes them
    MERGE_REQUEST = "merge_request"  # approved at its head: the merge_by lead checks and merges
    CI_FIX = "ci_fix"  # the head's commit status failed: the author agent (fix_ci) fixes it
    ROUNDS_SPENT = "rounds_spent"  # max_review_rounds reached: one comment to the human, no run

    @property
    def is_loop_step(self) -> bool:
        """A step the team takes by itself on its own PR (not something a person asked)."""
        return self in LOOP_STEPS


LOOP_STEPS = frozenset(
    {TaskKind.REVIEW_FEEDBACK, TaskKind.MERGE_REQUEST, TaskKind.CI_FIX, TaskKind.ROUNDS_SPENT}
)


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # was running at shutdown or crash; re-queued once

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


class TriggerSource(StrEnum):
    POLL = "poll"
    WEBHOOK = "webhook"
    API = "api"


@dataclass(frozen=True)
class TaskSpec:
    """What a trigger asks of one agent; the store turns it into a Task."""

    agent: str
    kind: TaskKind
    repo: str  # "owner/name"
    number: int | None  # issue or PR number; None for an API task without a thread
    idempotency_key: str  # the same event seen twice (poll + webhook, restart) is one task
    requested_by: str  # Forgejo login (or "api") of whoever asked
    request: str  # the text that asked: the comment body, review request note, API prompt
    source: TriggerSource
    is_pull: bool = False
    comment_id: int | None = None  # the triggering comment, for the 👀 reaction and re-checks
    review_id: int | None = None
    head_sha: str | None = None  # PR head when a review was requested
    hop: int = 0  # agent-to-agent chain depth on this thread (0 = a human asked)

    @property
    def thread(self) -> str:
        return f"{self.repo}#{self.number}" if self.number is not None else self.repo


class ControlAction(StrEnum):
    STOP = "stop"
    RETRY = "retry"


@dataclass(frozen=True)
class ControlCommand:
    """`@agent stop` / `@agent retry` from a user with write access."""

    agent: str
    action: ControlAction
    repo: str
    number: int
    requested_by: str
    idempotency_key: str
    comment_id: int | None = None


Trigger = TaskSpec | ControlCommand


@dataclass(frozen=True)
class Task:
    """A stored task: the spec plus everything the store knows about its life."""

    id: int
    spec: TaskSpec
    state: TaskState
    attempts: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    session_id: str | None = None  # Claude Code session, for --resume on follow-ups
    result: str | None = None  # final text from Claude
    error: str | None = None  # why it failed / was cancelled / interrupted, in words
    cost_usd: float | None = None
    num_turns: int | None = None
    duration_ms: int | None = None
    tracking_comment_id: int | None = None
    links: tuple[str, ...] = ()  # branch / PR / review URLs produced by the task
    not_before: float | None = None  # deferred: queued, but not run before this time
    deferrals: int = 0  # deferrals that used up an attempt since it was last (re)queued
    deferred_since: float | None = None  # when the first of those deferrals was recorded
    final_reported: bool = False  # its final state is shown on the thread (the outbox)

    @property
    def deferred(self) -> bool:
        """Queued, waiting for a time (an outage, a usage limit, CI) before it may run."""
        return self.state is TaskState.QUEUED and self.not_before is not None

    def with_(self, **changes: object) -> Task:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TaskEvent:
    """One stored line of a task's event log (mostly what the runner streamed)."""

    task_id: int
    seq: int  # 1-based, dense per task: SSE resume uses it as Last-Event-ID
    ts: float
    type: str  # init, text, tool_use, tool_result, api_retry, result, state, stderr, unknown, …
    summary: str  # one human line: what the log and the progress comment show
    data: str | None = None  # the raw JSON line, when there was one


@dataclass(frozen=True)
class AgentPause:
    """An agent whose queue waits until `until` (a usage limit, a daily budget); its
    tasks stay queued, other agents run."""

    agent: str
    until: float  # seconds since the epoch
    reason: str  # in words, for the thread, the status page and the journal
    cause: str  # usage_limit | daily_budget …: the metric's label
    # usage_limit: five_hour, seven_day …, as Claude said (for the metric; not stored)
    limit_type: str | None = None


@dataclass(frozen=True)
class UsageLimit:
    """A run stopped by a Claude usage limit (a subscription's session or weekly window).

    Not the task's fault: whoever gets the outcome may pause the agent until
    `resets_at` and run the task again; with no reset time known, after a backoff.
    """

    limit_type: str | None  # the CLI's rateLimitType ("five_hour", "seven_day", …) or the text's
    resets_at: float | None  # unix seconds; None: unknown (use agents.usage_limit_backoff)
    message: str  # what the CLI said, e.g. "Weekly limit reached ∙ resets 5am"


@dataclass(frozen=True)
class Outcome:
    """How one run ended, as the runner saw it; the scheduler records it.

    `state=QUEUED` with `retry_at` set is a deferral: the task goes back to the queue
    and is not run before `retry_at` (seconds since the epoch). `uses_attempt` says
    whether that counts against the task's retry budget (`Task.deferrals`): an outage
    does, a usage limit (the agent is paused, not the task at fault) does not.
    """

    state: TaskState
    reason: str | None = None  # in words: "timeout after 60 min", "max turns reached", …
    result: str | None = None
    session_id: str | None = None
    cost_usd: float | None = None
    num_turns: int | None = None
    duration_ms: int | None = None
    exit_code: int | None = None
    stderr_tail: str | None = None
    links: tuple[str, ...] = ()
    retry_at: float | None = None  # QUEUED: deferred until this time
    uses_attempt: bool = True  # QUEUED: the deferral counts against the retry budget
    pause: AgentPause | None = None  # QUEUED: the agent's whole queue waits too (usage limit)
    # FAILED by a usage limit, not by the task: pause the agent and requeue (see UsageLimit).
    usage_limit: UsageLimit | None = None
    # FAILED by an error that may pass (API overloaded, 5xx) after the CLI's own retries.
    retryable: bool = False

    @property
    def deferred(self) -> bool:
        return self.state is TaskState.QUEUED and self.retry_at is not None


class FailureKind(StrEnum):
    MAX_TURNS = "max_turns"
    API_ERROR = "api_error"  # the Claude API kept failing after the CLI's own retries
    BUDGET = "budget"  # the run reached agents.max_budget_usd
    USAGE_LIMIT = "usage_limit"  # a Claude usage limit stopped the run (RunFailure.usage_limit)
    CLAUDE_ERROR = "claude_error"  # any other error result
    KILLED = "killed"  # no result: the process died of a signal
    NO_RESULT = "no_result"  # no result: it exited (or vanished) without one


@dataclass(frozen=True)
class RunFailure:
    """Why a `claude -p` run failed, as the runner saw it; report/render.py words it."""

    kind: FailureKind
    exit_code: int | None = None
    api_status: int | None = None  # API_ERROR: the last HTTP status, when the CLI said
    what: str | None = None  # CLAUDE_ERROR: the CLI's terminal reason or subtype
    detail: str = ""  # CLAUDE_ERROR: its errors or result; NO_RESULT: stderr's last line
    usage_limit: UsageLimit | None = None  # USAGE_LIMIT: which limit, until when
    budget_usd: float | None = None  # BUDGET: the agent's max_budget_usd
    retryable: bool = False  # API_ERROR: overloaded or a server error, worth another run
