"""One task, from "may it still run?" to the result on Forgejo.

The scheduler calls `precheck` and `execute`; `execute` walks the steps in order:
container → thread context → workspace → prompt → `claude -p` (events to the log,
the store and the progress comment) → what the role delivers (a pushed branch and
a pull request, a review, a merge). Reporting on state changes goes through
`TaskReports`, which keeps each task's Forgejo writes in order without ever
holding up the scheduler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import structlog

from claude_hooks.config import AgentConfig, Config, Role, learn_secret_file, read_secret
from claude_hooks.forgejo.client import ForgejoClient, ForgejoError
from claude_hooks.forgejo.models import Comment, Issue, PullRequest
from claude_hooks.intake.reader import PermissionCache
from claude_hooks.report.tracker import INTERRUPTED_REASON, Reporter
from claude_hooks.runner import workspace
from claude_hooks.runner.claude import claude_argv, exec_env, with_forge_auth
from claude_hooks.runner.execution import ExecResult
from claude_hooks.runner.runtime import AgentRuntime
from claude_hooks.runner.stream import StreamEvent, outcome_of
from claude_hooks.store.db import Store
from claude_hooks.tasks import Outcome, Task, TaskKind, TaskState
from claude_hooks.work.prompts import (
    PromptContext,
    branch_name,
    build_prompt,
    load_template,
    system_prompt,
)
from claude_hooks.work.scheduler import Precheck
from claude_hooks.work.verdict import LeadAction, parse_lead_verdict, review_from_result

log = structlog.get_logger(__name__)

STEPS_SHOWN = 10  # checklist lines in the progress comment
STOP_GRACE = 10.0  # seconds a stopped run's processes get after SIGTERM, before SIGKILL
REPORTS_CLOSE_WITHIN = 10.0  # seconds the report chains may finish at shutdown


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


def outcome_of_task(task: Task) -> Outcome:
    """The outcome a stored task records, for the final report."""
    return Outcome(
        state=task.state,
        reason=task.error,
        result=task.result,
        session_id=task.session_id,
        cost_usd=task.cost_usd,
        num_turns=task.num_turns,
        duration_ms=task.duration_ms,
        links=task.links,
    )


def workspace_plan(
    task: Task, agent: AgentConfig, facts: ThreadFacts | None
) -> workspace.WorkspacePlan:
    spec = task.spec
    path = workspace.task_directory(spec.repo, spec.number, task.id)
    if facts is None or not facts.clone_url or not agent.checkout:
        return workspace.WorkspacePlan(path=path, checkout=workspace.Checkout.NONE)
    common = {"path": path, "clone_url": facts.clone_url, "base": facts.default_branch}
    if agent.role is Role.DEV and facts.pull is None:
        branch = branch_name(task)
        return workspace.WorkspacePlan(checkout=workspace.Checkout.BRANCH, branch=branch, **common)
    if facts.pull is not None:
        return workspace.WorkspacePlan(
            checkout=workspace.Checkout.PULL_HEAD, pull_number=facts.pull.number,
            head_sha=spec.head_sha or facts.pull.head_sha, **common,
        )  # fmt: skip
    return workspace.WorkspacePlan(checkout=workspace.Checkout.DEFAULT, **common)


class Progress:
    """The run's checklist: the last few steps, one line each."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def note(self, step: str) -> tuple[str, ...]:
        self.steps.append(step)
        del self.steps[:-STEPS_SHOWN]
        return tuple(self.steps)


class TaskWorker:
    """Runs tasks for the scheduler; everything I/O it needs is passed in."""

    def __init__(
        self,
        config: Config,
        store: Store,
        runtime: AgentRuntime,
        client_for: Callable[[str], ForgejoClient],
        reports: TaskReports,
        *,
        daemon_id: str,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self._config = config
        self._store = store
        self._runtime = runtime
        self._client_for = client_for
        self._reports = reports
        self._daemon_id = daemon_id
        self._stop_grace = stop_grace
        self._permissions: dict[str, PermissionCache] = {}

    # --- precheck ---------------------------------------------------------------------------

    async def precheck(self, task: Task) -> Precheck:
        spec = task.spec
        if spec.number is None:
            return Precheck.proceed()
        client = self._client_for(spec.agent)
        issue = await client.get_issue(spec.repo, spec.number)
        if issue.state != "open" and spec.kind is not TaskKind.API:
            return Precheck.skip(f"{spec.thread} is {issue.state}")
        comment_id = spec.comment_id
        if comment_id is not None and await client.get_comment(spec.repo, comment_id) is None:
            return Precheck.skip("the comment that asked was deleted")
        if spec.kind is TaskKind.REVIEW and issue.is_pull:
            pull = await client.get_pull(spec.repo, spec.number)
            if spec.head_sha and pull.head_sha != spec.head_sha:
                log.info("review_head_moved", task_id=task.id, old=spec.head_sha, new=pull.head_sha)
                return Precheck.proceed(replace(spec, head_sha=pull.head_sha))
        return Precheck.proceed()

    # --- execute ----------------------------------------------------------------------------

    async def execute(self, task: Task) -> Outcome:
        agent = self._config.agent(task.spec.agent)
        # Claude reads these credentials, so they may show up in what it prints: redact
        # the values the file holds now (it may have been rewritten since the start).
        learn_secret_file(agent.credentials_file)
        bound = log.bind(
            task_id=task.id, agent=agent.name, repo=task.spec.repo, number=task.spec.number
        )
        progress = Progress()

        def step(text: str) -> None:
            self._reports.progress(task, progress.note(text))

        step("starting the agent's container")
        facts = await self._thread_facts(task) if task.spec.number is not None else None
        env = exec_env(
            agent, task_id=task.id, daemon_id=self._daemon_id, extra=_git_identity(agent)
        )
        # Clone and push carry the token; the Claude exec between them never does.
        git_env = with_forge_auth(env, read_secret(agent.token_file), self._config.forgejo.url)
        plan = workspace_plan(task, agent, facts)
        step(f"preparing {plan.path}")
        await self._runtime.prepare(agent, plan, git_env)
        session = await self._store.last_session(agent.name, task.spec.repo, task.spec.number)
        prompt = self._prompt(
            task, agent, facts, follow_up=session is not None,
            config_from_base=plan.checkout is workspace.Checkout.PULL_HEAD,
        )  # fmt: skip
        bound.info("claude_started", resume=session, workdir=plan.path)
        result = await self._run(task, agent, env, plan, prompt, session, step, bound)
        outcome = outcome_of(result.result_event, result.exit_code, result.stderr_tail)
        if outcome.state is TaskState.SUCCEEDED:
            outcome = await self._deliver(task, agent, git_env, plan, facts, outcome, step)
        bound.info(
            "claude_finished",
            state=str(outcome.state),
            reason=outcome.reason,
            cost_usd=outcome.cost_usd,
            turns=outcome.num_turns,
            lines=result.lines,
        )
        return outcome

    async def _run(
        self,
        task: Task,
        agent: AgentConfig,
        env: list[str],
        plan: workspace.WorkspacePlan,
        prompt: str,
        session: str | None,
        step: Callable[[str], None],
        bound: structlog.typing.FilteringBoundLogger,
    ) -> ExecResult:
        sink = self._store.event_sink(task.id)

        def on_event(event: StreamEvent) -> None:
            sink.add(event.kind, event.summary, event.raw)
            bound.info("claude_event", type=event.kind, text=event.summary)
            if event.kind in ("tool_use", "api_retry", "permission_denied"):
                step(event.summary)

        argv = claude_argv(agent, session_id=session, system_prompt=system_prompt(agent.role))
        try:
            return await self._runtime.run(
                agent, argv=argv, env=env, stdin=prompt.encode(), workdir=plan.path,
                task_id=task.id, on_event=on_event, stop_grace=self._stop_grace,
            )  # fmt: skip
        finally:
            await asyncio.shield(sink.close())

    def _prompt(
        self,
        task: Task,
        agent: AgentConfig,
        facts: ThreadFacts | None,
        *,
        follow_up: bool,
        config_from_base: bool,
    ) -> str:
        if facts is None:
            return task.spec.request
        ctx = PromptContext(
            task=task, repo=task.spec.repo, issue=facts.issue, pull=facts.pull,
            comments=facts.comments, writers=facts.writers,
            agents=frozenset(a.lower() for a in self._config.agent_names), diff=facts.diff,
            is_follow_up=follow_up, default_branch=facts.default_branch,
            config_from_base=config_from_base,
        )  # fmt: skip
        return build_prompt(agent.role, ctx, load_template(agent.role, agent.prompt_file))

    async def _thread_facts(self, task: Task) -> ThreadFacts:
        spec = task.spec
        assert spec.number is not None
        client = self._client_for(spec.agent)
        repo = await client.get_repo(spec.repo)
        issue = await client.get_issue(spec.repo, spec.number)
        pull = await client.get_pull(spec.repo, spec.number) if issue.is_pull else None
        comments = tuple(await client.list_comments(spec.repo, spec.number))
        authors = {issue.user.login, *(c.user.login for c in comments)}
        writers = await self._writers(spec.agent, spec.repo, authors)
        diff = await client.pull_diff(spec.repo, spec.number) if pull is not None else None
        return ThreadFacts(
            issue, pull, comments, writers, diff, repo.default_branch, repo.clone_url
        )

    async def _writers(self, agent: str, repo: str, logins: set[str]) -> frozenset[str]:
        cache = self._permissions.get(agent)
        if cache is None:
            cache = PermissionCache(self._client_for(agent).repo_permission)
            self._permissions[agent] = cache
        allowed = {u.lower() for u in self._config.daemon.allowed_users}
        return (await cache.writers(repo, logins)) | frozenset(
            allowed & {x.lower() for x in logins}
        )

    # --- delivery ---------------------------------------------------------------------------

    async def _deliver(
        self,
        task: Task,
        agent: AgentConfig,
        env: list[str],
        plan: workspace.WorkspacePlan,
        facts: ThreadFacts | None,
        outcome: Outcome,
        step: Callable[[str], None],
    ) -> Outcome:
        if facts is None:
            return outcome
        try:
            if plan.checkout is workspace.Checkout.BRANCH:
                return await self._deliver_branch(task, agent, env, plan, facts, outcome, step)
            if facts.pull is not None and agent.role is Role.REVIEWER:
                step("posting the review")
                review = review_from_result(outcome.result, facts.diff or "")
                await self._reports.reporter.post_review(task, review, _head_sha(task, facts))
                return outcome
            if facts.pull is not None and agent.role is Role.LEAD:
                return await self._deliver_merge(task, agent, facts, outcome, step)
        except (ForgejoError, workspace.WorkspaceError) as exc:
            return replace(outcome, state=TaskState.FAILED, reason=f"delivering failed: {exc}")
        return outcome

    async def _deliver_branch(
        self,
        task: Task,
        agent: AgentConfig,
        env: list[str],
        plan: workspace.WorkspacePlan,
        facts: ThreadFacts,
        outcome: Outcome,
        step: Callable[[str], None],
    ) -> Outcome:
        step(f"pushing {plan.branch}")
        published = await self._runtime.publish(agent, plan, env)
        if published.commits == 0:
            return outcome
        title = facts.issue.title if facts.issue.title else f"Work on #{task.spec.number}"
        url = await self._reports.reporter.open_or_update_pull(
            task, plan.branch, plan.base, title, outcome.result or "", review_by=agent.review_by
        )
        step(f"pull request {url}")
        return replace(outcome, links=(*outcome.links, url))

    async def _deliver_merge(
        self,
        task: Task,
        agent: AgentConfig,
        facts: ThreadFacts,
        outcome: Outcome,
        step: Callable[[str], None],
    ) -> Outcome:
        verdict = parse_lead_verdict(outcome.result or "")
        if verdict.action is not LeadAction.MERGE:
            return outcome
        step("merging")
        merged = await self._reports.reporter.merge(task, agent.merge_style, _head_sha(task, facts))
        note = f"merge: {merged.detail}"
        return replace(outcome, result=f"{outcome.result or ''}\n\n{note}".strip())


def _head_sha(task: Task, facts: ThreadFacts) -> str:
    """The PR head the task is about: the queued sha, else the head seen before the run."""
    return task.spec.head_sha or (facts.pull.head_sha if facts.pull else "")


def _git_identity(agent: AgentConfig) -> dict[str, str]:
    email = f"{agent.name}@claude-hooks.invalid"
    return {
        "GIT_AUTHOR_NAME": agent.name, "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": agent.name, "GIT_COMMITTER_EMAIL": email,
    }  # fmt: skip


class TaskReports:
    """Each task's Forgejo writes, in order, off the scheduler's path.

    The scheduler waits for on_change before it dispatches the next task; a
    Forgejo round trip there would slow every start. So each change queues its
    report on the task's own chain and returns at once; `close` lets the chains
    finish (bounded, then cancelled) at shutdown.
    """

    def __init__(
        self, reporter: Reporter, store: Store, scheduler_position: Callable[[int], int | None]
    ) -> None:
        self.reporter = reporter
        self._store = store
        self._position = scheduler_position
        self._chains: dict[int, asyncio.Task[None]] = {}

    def _chain(self, task_id: int, make: Callable[[], Awaitable[None]]) -> None:
        previous = self._chains.get(task_id)

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            try:
                await make()
            except Exception:
                log.exception("report_failed", task_id=task_id)

        chain = asyncio.create_task(run(), name=f"report-{task_id}")
        self._chains[task_id] = chain
        chain.add_done_callback(
            lambda t: self._chains.get(task_id) is t and self._chains.pop(task_id)
        )

    async def on_change(self, task: Task) -> None:
        if task.spec.number is None:
            return
        if task.state is TaskState.QUEUED:
            self._chain(task.id, lambda: self._acknowledge(task))
        elif task.state.is_final or task.state is TaskState.INTERRUPTED:
            outcome = outcome_of_task(task)
            if task.state is TaskState.INTERRUPTED and not outcome.reason:
                outcome = replace(outcome, reason=INTERRUPTED_REASON)
            self._chain(task.id, lambda: self.reporter.finish(task, outcome))

    def progress(self, task: Task, steps: tuple[str, ...]) -> None:
        if task.spec.number is not None:
            self._chain(task.id, lambda: self.reporter.progress(task, steps))

    async def _acknowledge(self, task: Task) -> None:
        comment_id = await self.reporter.acknowledge(task, self._position(task.id))
        if comment_id is not None and comment_id != task.tracking_comment_id:
            await self._store.set_tracking_comment(task.id, comment_id)

    async def close(self, limit: float = REPORTS_CLOSE_WITHIN) -> None:
        """Let the chains finish for `limit` seconds, then cancel the rest: after this no
        chain uses the store or a Forgejo client, which close next."""
        pending = list(self._chains.values())
        if pending:
            _, left = await asyncio.wait(pending, timeout=limit)
            if left:
                cut = sorted(task_id for task_id, chain in self._chains.items() if chain in left)
                log.warning("reports_cut_short", tasks=cut, within=limit)
                for chain in left:
                    chain.cancel()
                await asyncio.wait(left)
        await self.reporter.close()
