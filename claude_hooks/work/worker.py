"""One task, from "may it still run?" to the result on Forgejo.

The scheduler calls `precheck` and `execute`; `execute` walks the steps in order:
container → thread context → workspace → prompt → `claude -p` (events to the log,
the store and the progress comment) → what the role delivers (a pushed branch and
a pull request, a review, a merge: work/delivery.py). The steps go to the tracking
comment through report/tracker.py's `TaskReports`, which keeps each task's Forgejo
writes in order without ever holding up the scheduler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog

from claude_hooks.config import AgentConfig, Config, Role, learn_secret_file, read_secret
from claude_hooks.forgejo.client import ForgejoClient, ForgejoError
from claude_hooks.forgejo.models import Comment, Issue, PullRequest, Repository
from claude_hooks.intake.reader import Permissions
from claude_hooks.report.render import (
    failure_reason,
    head_moved_reason,
    lead_declined_note,
    not_pushed_note,
    push_refused_reason,
    with_merge_note,
)
from claude_hooks.report.tracker import TaskReports
from claude_hooks.runner import workspace
from claude_hooks.runner.claude import (
    claude_argv,
    claude_secrets,
    exec_env,
    with_claude_secrets,
    with_forge_auth,
)
from claude_hooks.runner.execution import ClaudeExec, ExecResult
from claude_hooks.runner.limits import zone_named
from claude_hooks.runner.placement import EnginePlacer, Lease
from claude_hooks.runner.runtime import AgentRuntime, all_of
from claude_hooks.runner.stream import RateLimit, StreamEvent, journal_level, outcome_of
from claude_hooks.store import Store
from claude_hooks.tasks import Outcome, Task, TaskKind, TaskState
from claude_hooks.work.delivery import Delivery
from claude_hooks.work.loop_steps import (
    LoopSteps,
    PullFacts,
    Submit,
    pull_push_refusal,
    status_line,
)
from claude_hooks.work.outages import (
    EngineLost,
    OutagePolicy,
    delivery_words,
    engine_failed,
    outage_of,
)
from claude_hooks.work.pauses import budget_pause, run_deferral
from claude_hooks.work.prompts import (
    PromptContext,
    ReReview,
    branch_name,
    build_prompt,
    load_template,
    system_prompt,
)
from claude_hooks.work.scheduler import Precheck
from claude_hooks.work.verdict import LeadAction, parse_lead_verdict, review_from_result

log = structlog.get_logger(__name__)

STOP_GRACE = 10.0  # seconds a stopped run's processes get after SIGTERM, before SIGKILL


@dataclass(frozen=True)
class ThreadFacts:
    """What the task's thread looked like just before the run."""

    issue: Issue
    pull: PullRequest | None
    comments: tuple[Comment, ...]
    writers: frozenset[str]
    diff: str | None
    default_branch: str
    clone_url: str
    pull_facts: PullFacts | None = None  # a pull request's status, reviews, loop context


# Seconds the thread reads a precheck began stand for the run right after it.
READ_AHEAD_FOR = 5.0


@dataclass(frozen=True)
class ReadAhead:
    """The thread reads a task's precheck began for its run: the issue the precheck read,
    the repository and the comments in flight (each a result or the error it raised)."""

    began: float
    issue: Issue
    rest: asyncio.Future[tuple[Repository | BaseException, list[Comment] | BaseException]]


def workspace_plan(
    task: Task, agent: AgentConfig, facts: ThreadFacts | None
) -> workspace.WorkspacePlan:
    spec = task.spec
    path = workspace.task_directory(spec.repo, spec.number, task.id)
    if facts is None or not facts.clone_url or not agent.checkout:
        return workspace.WorkspacePlan(path=path, checkout=workspace.Checkout.NONE)
    default = workspace.WorkspacePlan(
        path=path,
        checkout=workspace.Checkout.DEFAULT,
        clone_url=facts.clone_url,
        base=facts.default_branch,
    )
    if agent.role is Role.DEV and facts.pull is None:
        return replace(default, checkout=workspace.Checkout.BRANCH, branch=branch_name(task))
    if agent.role is Role.DEV and facts.pull is not None and pull_push_refusal(facts.pull) is None:
        # A dev on a pull request of this repository commits on its head branch, and the
        # daemon pushes it there (a fork's, or a name it will not push, stays detached).
        return replace(
            default,
            checkout=workspace.Checkout.PULL_BRANCH,
            branch=facts.pull.head_ref,
            pull_number=facts.pull.number,
            head_sha=spec.head_sha or facts.pull.head_sha,
        )
    if facts.pull is not None:
        return replace(
            default,
            checkout=workspace.Checkout.PULL_HEAD,
            pull_number=facts.pull.number,
            head_sha=spec.head_sha or facts.pull.head_sha,
        )
    return default


@dataclass(frozen=True)
class TaskRun:
    """One run of a task: what every step after reading the thread needs."""

    task: Task
    agent: AgentConfig
    facts: ThreadFacts | None  # None: an API task without a thread
    plan: workspace.WorkspacePlan
    env: tuple[str, ...]  # the Claude exec's: never the Forgejo token
    git_env: tuple[str, ...]  # clone and push: the token, as a header
    step: Callable[[str], None]  # one line more on the tracking comment's checklist
    log: structlog.typing.FilteringBoundLogger
    rereview: ReReview | None = None  # a review after this reviewer's review of an older head


class TaskWorker:
    """Runs tasks for the scheduler; everything I/O it needs is passed in."""

    def __init__(
        self,
        config: Config,
        store: Store,
        runtime: AgentRuntime,
        client_for: Callable[[str], ForgejoClient],
        reports: TaskReports,
        delivery: Delivery,
        *,
        daemon_id: str,
        permissions: Permissions,
        stop_grace: float = STOP_GRACE,
        submit: Submit | None = None,
        clock: Callable[[], float] = time.time,
        retries: OutagePolicy | None = None,
        placer: EnginePlacer | None = None,
    ) -> None:
        self._config = config
        self._placer = placer  # None: every agent on its one engine (the demo, tests)
        self._store = store
        self._runtime = runtime
        self._client_for = client_for
        self._reports = reports
        self._delivery = delivery
        self._daemon_id = daemon_id
        self._stop_grace = stop_grace
        self._permissions = permissions  # the daemon's one view, shared with the intake
        self._clock = clock
        # A retryable API error is waited out on the outage budget (work/outages.py).
        self._retries = retries or OutagePolicy()
        # The team's loop: its facts, checks and follow-ups; `submit` queues a CI fix.
        self._loop = LoopSteps(
            config, store, runtime, client_for, delivery, submit=submit, clock=clock
        )
        self._read_ahead: dict[int, ReadAhead] = {}  # task id: the thread reads its precheck began

    # --- precheck ---------------------------------------------------------------------------

    async def precheck(self, task: Task) -> Precheck:
        spec = task.spec
        budget = self._config.agent(spec.agent).daily_budget_usd
        if budget is not None:
            pause = budget_pause(spec.agent, await self._store.spend(spec.agent), budget)
            if pause is not None:
                return Precheck.later(pause.until, pause.reason, uses_attempt=False, pause=pause)
        if spec.number is None:
            return Precheck.proceed()
        self._drop_stale_reads()
        client = self._client_for(spec.agent)
        # The run's own thread reads (repository, comments) begin with the precheck's: the
        # run then waits for no second round trip, and the issue is read once. They only
        # ever answer the run; the precheck looks at its own reads alone, as before.
        began = self._clock()
        rest = asyncio.gather(
            client.get_repo(spec.repo),
            client.list_comments(spec.repo, spec.number),
            return_exceptions=True,
        )
        check: Precheck | None = None
        try:
            check, issue = await self._check_thread(task, client)
        finally:
            if check is not None and check.skip_reason is None and check.deferral is None:
                self._keep_reads(task.id, ReadAhead(began, issue, rest))
            else:
                rest.cancel()  # skipped, deferred or failed: no run reads them
        return check

    async def _check_thread(self, task: Task, client: ForgejoClient) -> tuple[Precheck, Issue]:
        """Whether the thread still wants the task; and the issue as read for that."""
        spec = task.spec
        assert spec.number is not None
        comment_id = spec.comment_id
        # Both reads at once: the run waits for one round trip, not two. The answers are
        # looked at in the old order: a closed thread is skipped whatever the comment read
        # said, and the issue's error comes first.
        issue_read, comment_read = await asyncio.gather(
            client.get_issue(spec.repo, spec.number),
            client.get_comment(spec.repo, comment_id) if comment_id is not None else _none(),
            return_exceptions=True,
        )
        if isinstance(issue_read, BaseException):
            raise issue_read
        issue = issue_read
        if issue.state != "open" and spec.kind is not TaskKind.API:
            return Precheck.skip(f"{spec.thread} is {issue.state}"), issue
        if isinstance(comment_read, BaseException):
            raise comment_read
        if comment_id is not None and comment_read is None:
            return Precheck.skip("the comment that asked was deleted"), issue
        if spec.kind is TaskKind.REVIEW and issue.is_pull:
            pull = await client.get_pull(spec.repo, spec.number)
            if spec.head_sha and pull.head_sha != spec.head_sha:
                log.info("review_head_moved", task_id=task.id, old=spec.head_sha, new=pull.head_sha)
                return Precheck.proceed(replace(spec, head_sha=pull.head_sha)), issue
        if spec.kind is TaskKind.MERGE_REQUEST and issue.is_pull:
            pull = await client.get_pull(spec.repo, spec.number)
            return await self._loop.merge_precheck(task, pull), issue
        if spec.kind is TaskKind.CI_FIX and issue.is_pull and spec.head_sha:
            pull = await client.get_pull(spec.repo, spec.number)
            if pull.head_sha != spec.head_sha:  # a newer head gets its own status, and fix
                return Precheck.skip(head_moved_reason(spec.head_sha, pull.head_sha)), issue
        return Precheck.proceed(), issue

    def _keep_reads(self, task_id: int, reads: ReadAhead) -> None:
        self._forget_reads(task_id)  # an earlier precheck's, never taken
        self._read_ahead[task_id] = reads

    def _take_reads(self, task_id: int) -> ReadAhead | None:
        """The reads the task's precheck began, if recent enough to stand for "just
        before the run" (a task may wait for room on an engine after its precheck)."""
        reads = self._read_ahead.pop(task_id, None)
        if reads is not None and self._clock() - reads.began > READ_AHEAD_FOR:
            reads.rest.cancel()
            return None
        return reads

    def _forget_reads(self, task_id: int) -> None:
        if (reads := self._read_ahead.pop(task_id, None)) is not None:
            reads.rest.cancel()

    def _drop_stale_reads(self) -> None:
        """Forget reads no run took (the task was cancelled or drained after its precheck)."""
        now = self._clock()
        for task_id, reads in list(self._read_ahead.items()):
            if now - reads.began > READ_AHEAD_FOR:
                reads.rest.cancel()
                del self._read_ahead[task_id]

    # --- execute ----------------------------------------------------------------------------

    async def execute(self, task: Task) -> Outcome:
        try:
            return await self._execute_placed(task)
        finally:
            self._forget_reads(task.id)  # the run did not take them (it ended before)

    async def _execute_placed(self, task: Task) -> Outcome:
        if task.spec.kind is TaskKind.ROUNDS_SPENT:
            return await self._loop.rounds_spent(task)  # one comment, no Claude run
        agent = self._config.agent(task.spec.agent)
        if self._placer is None or not agent.pool:
            return await self._execute(task, Lease(agent))
        async with self._placer.lease(task, agent) as lease:
            try:
                return await self._execute(task, lease)
            except Exception as exc:
                if lease.engine is None or not engine_failed(exc):
                    raise
                self._placer.lost(lease.engine)  # the scheduler re-runs it where one is up
                raise EngineLost(lease.engine) from exc

    async def _execute(self, task: Task, lease: Lease) -> Outcome:
        spec = task.spec
        # The session to resume is the store's answer alone: looked up during the start.
        run, session = await all_of(
            self._start(task, lease.agent),
            self._store.last_session(lease.agent.name, spec.repo, spec.number),
        )
        if not lease.keeps_workspace:
            session = None  # on another engine of its pool: the session is not there
        prompt = self._prompt(run, follow_up=session is not None)
        run.log.info("claude_started", resume=session, workdir=run.plan.path)
        result = await self._claude(run, prompt, session)
        outcome = outcome_of(
            result.result_event,
            result.exit_code,
            result.stderr_tail,
            failure_reason,
            signals=result.signals,
            ended_at=time.time(),
            zone=zone_named(run.agent.time_zone),
            budget_usd=run.agent.max_budget_usd,
        )
        # A usage limit pauses the agent; an overloaded API is retried: back to the queue.
        outcome = run_deferral(
            task,
            outcome,
            self._clock(),
            backoff=run.agent.usage_limit_backoff,
            retries=self._retries,
        )
        if outcome.state is TaskState.SUCCEEDED:
            outcome = await self._deliver(run, outcome)
        run.log.info(
            "claude_finished",
            state=str(outcome.state),
            reason=outcome.reason,
            cost_usd=outcome.cost_usd,
            turns=outcome.num_turns,
            lines=result.lines,
        )
        return outcome

    async def _start(self, task: Task, agent: AgentConfig) -> TaskRun:
        """The container, the thread's facts and the prepared working tree."""
        # Claude reads these credentials, so they may show up in what it prints: redact
        # the values the file holds now (it may have been rewritten since the start).
        if agent.credentials_file is not None:
            learn_secret_file(agent.credentials_file)
        bound = log.bind(
            task_id=task.id, agent=agent.name, repo=task.spec.repo, number=task.spec.number
        )
        step = self._reports.checklist(task)
        step("starting the agent's container")
        # The container (and its login) while the thread is read: neither needs the other.
        # The thread's errors come first, as when the container came after.
        reading = self._thread_facts(task) if task.spec.number is not None else _none()
        facts, _ = await all_of(reading, self._runtime.ready(agent))
        env = exec_env(
            agent, task_id=task.id, daemon_id=self._daemon_id, extra=_git_identity(agent)
        )
        # Clone and push carry the token; the Claude exec between them never does.
        git_env = with_forge_auth(env, read_secret(agent.token_file), self._config.forgejo.url)
        plan = workspace_plan(task, agent, facts)
        step(f"preparing {plan.path}")
        await self._runtime.prepare(agent, plan, git_env)
        rereview = None
        if task.spec.kind is TaskKind.REVIEW and facts is not None and facts.pull_facts is not None:
            head = _head_sha(task, facts)
            rereview = await self._loop.rereview(task, agent, plan, env, facts.pull_facts, head)
        run_env, run_git_env = tuple(env), tuple(git_env)
        return TaskRun(task, agent, facts, plan, run_env, run_git_env, step, bound, rereview)

    async def _claude(self, run: TaskRun, prompt: str, session: str | None) -> ExecResult:
        sink = self._store.event_sink(run.task.id)

        def on_event(event: StreamEvent) -> None:
            kept, level = sink.keeps(event.kind), journal_level(event)
            logged = run.log.is_enabled_for(level)
            if kept or logged:
                summary = event.summary  # a property, the costliest part here: made once
                if kept:
                    sink.add(event.kind, summary, event.raw)
                if logged:
                    run.log.log(level, "claude_event", type=event.kind, text=summary)
            if (line := checklist_line(event)) is not None:
                run.step(line)

        agent = run.agent
        rules = system_prompt(agent.role, run.task.spec.kind)
        argv = claude_argv(agent, session_id=session, system_prompt=rules)
        claude = ClaudeExec(
            task_id=run.task.id,
            argv=tuple(argv),
            # Claude's login and secret_env: in this exec's environment only, read now.
            env=tuple(with_claude_secrets(run.env, claude_secrets(agent))),
            stdin=prompt.encode(),
            workdir=run.plan.path,
            stop_grace=self._stop_grace,
            makes_workdir=workspace.claude_makes_directory(run.plan),
        )
        try:
            return await self._runtime.run(agent, claude, on_event, room=sink.room)
        finally:
            await asyncio.shield(sink.close())

    def _prompt(self, run: TaskRun, *, follow_up: bool) -> str:
        task, facts = run.task, run.facts
        if facts is None:
            return task.spec.request
        ctx = PromptContext(
            task=task,
            repo=task.spec.repo,
            issue=facts.issue,
            pull=facts.pull,
            comments=facts.comments,
            writers=facts.writers,
            agents=frozenset(a.lower() for a in self._config.agent_names),
            diff=facts.diff,
            is_follow_up=follow_up,
            default_branch=facts.default_branch,
            config_from_base=run.plan.checkout is workspace.Checkout.PULL_HEAD,
            status=facts.pull_facts.status if facts.pull_facts is not None else None,
            feedback=facts.pull_facts.feedback if facts.pull_facts is not None else None,
            rereview=run.rereview,
            closes=facts.pull_facts.closes if facts.pull_facts is not None else None,
        )
        role, template = run.agent.role, load_template(run.agent.role, run.agent.prompt_file)
        return build_prompt(role, ctx, template)

    async def _thread_facts(self, task: Task) -> ThreadFacts:
        spec = task.spec
        assert spec.number is not None
        client = self._client_for(spec.agent)
        repo, issue, comments = await self._thread_reads(task, client)
        pull = await client.get_pull(spec.repo, spec.number) if issue.is_pull else None
        authors = {issue.user.login, *(c.user.login for c in comments)}
        trusted = self._permissions.trusted(spec.agent, spec.repo, authors)
        diff: str | None = None
        pull_facts: PullFacts | None = None
        if pull is None:
            writers = await trusted
        else:
            about_pull = all_of(
                client.pull_diff(spec.repo, spec.number), self._loop.pull_facts(task, pull)
            )
            writers, pulled = await all_of(trusted, about_pull)
            diff, pull_facts = pulled
        return ThreadFacts(
            issue, pull, comments, writers, diff, repo.default_branch, repo.clone_url, pull_facts
        )

    async def _thread_reads(
        self, task: Task, client: ForgejoClient
    ) -> tuple[Repository, Issue, tuple[Comment, ...]]:
        """Repository, issue and comments: those the precheck began, else read now. Errors
        come in the old order: the repository's, then the issue's, then the comments'."""
        spec = task.spec
        assert spec.number is not None
        ahead = self._take_reads(task.id)
        if ahead is None:
            # Independent reads side by side: the run waits for the slowest, not the sum.
            repo_and_issue = all_of(
                client.get_repo(spec.repo), client.get_issue(spec.repo, spec.number)
            )
            read, comment_list = await all_of(
                repo_and_issue, client.list_comments(spec.repo, spec.number)
            )
            return read[0], read[1], tuple(comment_list)
        repo_read, comments_read = await ahead.rest
        if isinstance(repo_read, BaseException):
            raise repo_read
        if isinstance(comments_read, BaseException):
            raise comments_read
        return repo_read, ahead.issue, tuple(comments_read)

    # --- delivery ---------------------------------------------------------------------------

    async def _deliver(self, run: TaskRun, outcome: Outcome) -> Outcome:
        facts, role = run.facts, run.agent.role
        if facts is None:
            return outcome
        try:
            if run.plan.checkout is workspace.Checkout.BRANCH:
                return await self._deliver_branch(run, facts, outcome)
            if run.plan.checkout is workspace.Checkout.PULL_BRANCH:
                return await self._deliver_pull_branch(run, outcome)
            if facts.pull is not None and role is Role.DEV and (why := self._unpushable(run)):
                return replace(outcome, result=_with(outcome.result, not_pushed_note(why)))
            if facts.pull is not None and role is Role.REVIEWER:
                run.step("posting the review")
                review = review_from_result(outcome.result, facts.diff or "")
                await self._delivery.post_review(run.task, review, _head_sha(run.task, facts))
                return self._with_status(outcome, facts)
            if facts.pull is not None and role is Role.LEAD:
                return self._with_status(await self._deliver_merge(run, facts, outcome), facts)
        except workspace.PushRefused as exc:
            reason = push_refused_reason(exc.branch, exc.detail)
            return replace(outcome, state=TaskState.FAILED, reason=reason)
        except (ForgejoError, workspace.WorkspaceError) as exc:
            if outage_of(exc) is not None:
                raise  # Forgejo down: the scheduler puts the task back until it answers
            run.log.warning("delivery_failed", error=str(exc))
            return replace(outcome, state=TaskState.FAILED, reason=delivery_words(exc))
        return outcome

    async def _deliver_pull_branch(self, run: TaskRun, outcome: Outcome) -> Outcome:
        """Push what Claude committed on the pull request's branch; the loop's follow-ups."""
        run.step(f"pushing {run.plan.branch}")
        published = await self._runtime.publish(run.agent, run.plan, run.git_env)
        pull_facts = run.facts.pull_facts if run.facts is not None else None
        return await self._loop.after_push(run.task, run.plan, pull_facts, outcome, published)

    def _unpushable(self, run: TaskRun) -> str | None:
        """Why a dev's run on a pull request was not pushed (its checkout stayed detached)."""
        pull = run.facts.pull if run.facts is not None else None
        if pull is None or run.plan.checkout is not workspace.Checkout.PULL_HEAD:
            return None
        return pull_push_refusal(pull)

    def _with_status(self, outcome: Outcome, facts: ThreadFacts) -> Outcome:
        """The head's commit status, on the reviewer's and the lead's tracking comment."""
        if facts.pull_facts is None:
            return outcome
        return replace(outcome, result=_with(outcome.result, status_line(facts.pull_facts)))

    async def _deliver_branch(self, run: TaskRun, facts: ThreadFacts, outcome: Outcome) -> Outcome:
        plan = run.plan
        run.step(f"pushing {plan.branch}")
        published = await self._runtime.publish(run.agent, plan, run.git_env)
        if published.commits == 0:
            return outcome
        title = facts.issue.title or f"Work on #{run.task.spec.number}"
        summary, review_by = outcome.result or "", run.agent.review_by
        url = await self._delivery.open_or_update_pull(
            run.task, plan.branch, plan.base, title, summary, review_by=review_by
        )
        run.step(f"pull request {url}")
        return replace(outcome, links=(*outcome.links, url))

    async def _deliver_merge(self, run: TaskRun, facts: ThreadFacts, outcome: Outcome) -> Outcome:
        verdict = parse_lead_verdict(outcome.result or "")
        if verdict.action is not LeadAction.MERGE:
            if run.task.spec.kind is TaskKind.MERGE_REQUEST:  # asked to merge: say it did not
                return replace(outcome, result=_with(outcome.result, lead_declined_note("")))
            return outcome
        run.step("merging")
        head_sha = _head_sha(run.task, facts)
        merged = await self._delivery.merge(run.task, run.agent.merge_style, head_sha)
        return replace(outcome, result=with_merge_note(outcome.result, merged.detail))


def checklist_line(event: StreamEvent) -> str | None:
    """What of a run's stream the tracking comment lists: tool calls, the API's retries,
    refusals, and a usage limit coming close (only news: the run goes on)."""
    if event.kind in ("tool_use", "api_retry", "permission_denied"):
        return event.summary
    if isinstance(event, RateLimit) and event.is_warning:
        return event.summary
    return None


async def _none() -> None:
    return None


def _head_sha(task: Task, facts: ThreadFacts) -> str:
    """The PR head the task is about: the queued sha, else the head seen before the run."""
    return task.spec.head_sha or (facts.pull.head_sha if facts.pull else "")


def _with(result: str | None, note: str) -> str:
    return f"{result or ''}\n\n{note}".strip()


def _git_identity(agent: AgentConfig) -> dict[str, str]:
    email = f"{agent.name}@claude-hooks.invalid"
    return {
        "GIT_AUTHOR_NAME": agent.name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": agent.name,
        "GIT_COMMITTER_EMAIL": email,
    }
