"""The daemon's one Intake: a thread as Forgejo shows it → the triggers it grants → submitted.

The pollers (one per agent) and the webhook handler both come here with a
ThreadContext, so both paths read, check write access and decide the same way. For
each agent the Intake asks `decide.propose` what the thread asks of it, asks Forgejo
(with that agent's own account) about the requesters only, lets `decide.authorise`
grant or refuse, logs every refusal and hands the granted triggers to `submit`
(the durable store) before it returns: only then may the caller mark its source read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import structlog

from claude_hooks.intake.decide import Decision, Policy, authorise, propose, unserved
from claude_hooks.intake.reader import Permissions, TaskHops, ThreadReader, ThreadSource
from claude_hooks.intake.thread import ThreadContext, Watermark
from claude_hooks.tasks import TaskSpec, Trigger, TriggerSource

log = structlog.get_logger(__name__)

# Stores granted triggers durably (intake.submit.Submitter.submit in the daemon).
Submit = Callable[[Sequence[Trigger]], Awaitable[None]]


class Intake:
    """Reads threads, checks who may direct the agents, decides, and submits."""

    def __init__(
        self,
        policy: Policy,
        clients: Mapping[str, ThreadSource],
        permissions: Permissions,
        submit: Submit,
        *,
        task_hops: TaskHops | None = None,
    ) -> None:
        if not clients:
            raise ValueError("the Intake needs the Forgejo client of at least one agent")
        self.policy = policy
        self._readers = {
            agent.lower(): ThreadReader(client, policy, task_hops)
            for agent, client in clients.items()
        }
        self._permissions = permissions
        self._submit = submit

    def reader(self, agent: str | None = None) -> ThreadReader:
        """`agent`'s reader (a poller reads its notifications' threads as itself); without
        an agent (a webhook delivery, before anyone is known to be asked), the first's."""
        if agent is None:
            return next(iter(self._readers.values()))
        reader = self._readers.get(agent.lower())
        if reader is None:
            raise KeyError(f"no Forgejo client for agent {agent!r}")
        return reader

    def serves(
        self, repo: str, number: int, *, agent: str = "-", user: str = "", **context: object
    ) -> bool:
        """Whether `repo` is served; the refusal is logged when it is not. Anyone can add
        an agent to a repository of theirs: such a thread is never read, never run."""
        if self.policy.serves(repo):
            return True
        log_decision(unserved(agent, repo, number, user), **context)
        return False

    async def read(
        self, agent: str, repo: str, number: int, since: Watermark | None
    ) -> ThreadContext:
        """The thread as `agent` sees it: events created after `since` are new."""
        return await self.reader(agent).read(repo, number, agent=agent, since=since)

    async def take(
        self,
        ctx: ThreadContext,
        agents: Iterable[str],
        source: TriggerSource,
        **context: object,
    ) -> Decision:
        """What `ctx` asks of `agents`, granted or refused, the granted part submitted.

        Raises when Forgejo cannot say who may write (an outage delays a trigger; it
        never refuses one) or when submitting fails: the caller reads the thread again.
        """
        decision = Decision()
        for agent in dict.fromkeys([*agents, *self.policy.loop_agents(ctx)]):
            proposal = propose(agent, ctx, self.policy, source)
            askers = proposal.requesters(self.policy)
            writers = await self._permissions.writers(agent, ctx.repo, askers)
            decision = decision + authorise(proposal, writers, self.policy)
        log_decision(decision, source=str(source), **context)
        if decision.triggers:
            await self._submit(decision.triggers)
        return decision


def log_decision(decision: Decision, **context: object) -> None:
    for refusal in decision.refusals:
        log.warning(
            "trigger_refused",
            reason=refusal.reason,
            user=refusal.user,
            repo=refusal.repo,
            number=refusal.number,
            agent=refusal.agent,
            key=refusal.idempotency_key,
            **context,
        )
    for trigger in decision.triggers:
        kind = trigger.kind if isinstance(trigger, TaskSpec) else f"control:{trigger.action}"
        log.info(
            "trigger_accepted",
            agent=trigger.agent,
            kind=str(kind),
            repo=trigger.repo,
            number=trigger.number,
            user=trigger.requested_by,
            key=trigger.idempotency_key,
            **context,
        )
