"""What a thread asks of an agent, and whether it is granted: pure decisions, no I/O.

The Intake reads a thread (reader.py, or a webhook delivery) and hands it here as a
frozen ThreadContext; `propose` answers with the triggers (TaskSpecs and
ControlCommands) the new events would make for one agent, and the refusals already
certain (hop limit, an agent issuing a control command). Whether each requester may
direct the agent is the one fact that takes a question to Forgejo: the Intake asks
about `Proposal.requesters` only, and `authorise` grants or refuses with the answer.
`decide_from_thread` is both steps for a caller that knows the writers already.

On a PR an agent opened, the team closes its own loop without a mention: a review
asking for changes is a REVIEW_FEEDBACK task for the author agent, an approval a
MERGE_REQUEST for the author's `merge_by` lead. These steps (and the author agent's
own review requests) are bounded by `max_review_rounds` per conversation, not by
the hop limit; past it, ROUNDS_SPENT hands the PR back to the person who asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from claude_hooks.config import Config, repository_served
from claude_hooks.intake.mentions import mentioned_names, parse_control
from claude_hooks.intake.thread import (
    Post,
    PostKind,
    ReviewRequest,
    ThreadContext,
    ThreadEvent,
    assignment_key,
    control_key,
    merge_request_key,
    post_key,
    review_feedback_key,
    review_request_key,
    rounds_spent_key,
)
from claude_hooks.tasks import ControlCommand, TaskKind, TaskSpec, Trigger, TriggerSource
from claude_hooks.text import find_marker


@dataclass(frozen=True)
class Policy:
    """Which repositories are served, who counts as an agent, who may trigger one besides
    writers, how far agents chain. One per daemon (`from_config`)."""

    agents: tuple[str, ...]  # every configured agent name, as configured
    allowed_users: frozenset[str] = frozenset()
    hop_limit: int = 3
    repositories: tuple[str, ...] = ()  # forgejo.repositories; none given serves nothing
    merge_by: Mapping[str, str] = field(default_factory=dict)  # dev agent → its merging lead
    max_review_rounds: int = 3
    # daemon.peer_agents: other daemons' agents on this Forgejo. Agents to hops, rounds
    # and reports (a loop between teams stays bounded), never acted for, never trusted.
    peers: tuple[str, ...] = ()
    _agents_lower: frozenset[str] = field(init=False, repr=False, compare=False)
    _ours_lower: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "agents", tuple(self.agents))
        merge_by = {dev.lower(): lead.lower() for dev, lead in self.merge_by.items()}
        object.__setattr__(self, "merge_by", MappingProxyType(merge_by))
        ours = frozenset(a.lower() for a in self.agents)
        object.__setattr__(self, "_ours_lower", ours)
        object.__setattr__(self, "_agents_lower", ours | {p.lower() for p in self.peers})
        object.__setattr__(self, "allowed_users", frozenset(u.lower() for u in self.allowed_users))

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        return cls(
            config.agent_names,
            frozenset(config.daemon.allowed_users),
            config.daemon.hop_limit,
            config.forgejo.repositories,
            merge_by={a.name: a.merge_by for a in config.agents if a.merge_by},
            max_review_rounds=config.daemon.max_review_rounds,
            peers=config.daemon.peer_agents,
        )

    def loop_agents(self, ctx: ThreadContext) -> tuple[str, ...]:
        """The agents whose loop a PR's events may move: its author agent and that agent's
        merging lead (whoever's account read the thread, these must be asked too)."""
        author = ctx.pull_author.lower()
        if not ctx.is_pull or not self.is_agent(author):
            return ()
        wanted = {author, self.merge_by.get(author, author)}
        return tuple(a for a in self.agents if a.lower() in wanted)

    def is_agent(self, login: str) -> bool:
        """An agent of this daemon or of a peer daemon: what counts hops and rounds."""
        return login.lower() in self._agents_lower

    def is_ours(self, login: str) -> bool:
        """An agent this daemon configures: whose tokens and task ids are ours."""
        return login.lower() in self._ours_lower

    def serves(self, repo: str) -> bool:
        return repository_served(self.repositories, repo)

    def may_direct(self, login: str, writers: frozenset[str]) -> bool:
        """Whether `login` may ask an agent for work: a writer (`writers`, lower-cased,
        as Forgejo answered) or on the allow list. The one place the two are joined."""
        return login.lower() in writers or login.lower() in self.allowed_users

    def trusted(self, logins: Iterable[str], writers: frozenset[str]) -> frozenset[str]:
        """The `logins` (lower-cased) that `may_direct`."""
        return frozenset(n.lower() for n in logins if self.may_direct(n, writers))

    def unproven(self, logins: Iterable[str]) -> frozenset[str]:
        """The `logins` (lower-cased) whose write access decides: the allow list needs none."""
        return frozenset(n.lower() for n in logins) - self.allowed_users


@dataclass(frozen=True)
class Refusal:
    """A trigger that was asked for but not granted; the caller logs it."""

    reason: str  # repository_not_configured | not_a_writer | hop_limit | control_by_agent
    agent: str
    user: str
    repo: str
    number: int
    idempotency_key: str


@dataclass(frozen=True)
class Decision:
    triggers: tuple[Trigger, ...] = ()
    refusals: tuple[Refusal, ...] = ()

    def __add__(self, other: Decision) -> Decision:
        seen = {t.idempotency_key for t in self.triggers}
        fresh = tuple(t for t in other.triggers if t.idempotency_key not in seen)
        return Decision(self.triggers + fresh, self.refusals + other.refusals)


@dataclass(frozen=True)
class Proposal:
    """What a thread asks of one agent before anyone's write access is known: the
    triggers it would make and the refusals already certain, in the thread's order."""

    items: tuple[Trigger | Refusal, ...] = ()

    def __add__(self, other: Proposal) -> Proposal:
        return Proposal(self.items + other.items)

    def requesters(self, policy: Policy) -> frozenset[str]:
        """The logins whose write access decides: ask Forgejo about these only."""
        return policy.unproven(
            i.requested_by
            for i in self.items
            if not isinstance(i, Refusal) and not _agents_loop_step(i, policy)
        )


# --- decisions --------------------------------------------------------------------------


def decide_from_thread(
    agent: str,
    ctx: ThreadContext,
    policy: Policy,
    source: TriggerSource = TriggerSource.POLL,
) -> Decision:
    """The triggers for `agent` in what is new on one thread, its writers known (`ctx.writers`)."""
    return authorise(propose(agent, ctx, policy, source), ctx.writers, policy)


def propose(
    agent: str,
    ctx: ThreadContext,
    policy: Policy,
    source: TriggerSource = TriggerSource.POLL,
) -> Proposal:
    """What the new events on one thread ask of `agent`, oldest first."""
    if not policy.serves(ctx.repo):
        return Proposal(unserved(agent, ctx.repo, ctx.number).refusals)
    proposal = Proposal()
    timeline = (*ctx.history, *ctx.new)
    for offset, event in enumerate(ctx.new):
        if event.author.lower() == agent.lower():
            continue  # an agent never reacts to itself
        index = len(ctx.history) + offset
        hop = chain_hop(timeline, index, policy, ctx.task_hops)
        loop = _propose_loop_step(
            agent,
            event,
            ctx,
            policy,
            source,
            review_round(timeline, index, policy, ctx.pull_author),
            hop,
        )
        if loop is not None:
            proposal = proposal + loop  # the review is the trigger: no mention needed
            continue
        if is_report(event, policy):
            continue  # what the daemon posted (tracking comment, review, PR) asks nothing
        proposal = proposal + _propose_event(agent, event, ctx, policy, source, hop)
    return proposal


def authorise(proposal: Proposal, writers: frozenset[str], policy: Policy) -> Decision:
    """Each proposed trigger granted if its requester `may_direct`, refused otherwise.

    `writers`: the requesters Forgejo says have write access (lower-cased); one
    trigger per idempotency key, the first granted one.
    """
    decision = Decision()
    for item in proposal.items:
        if isinstance(item, Refusal):
            decision = decision + Decision(refusals=(item,))
        elif _agents_loop_step(item, policy) or policy.may_direct(item.requested_by, writers):
            decision = decision + Decision(triggers=(item,))
        else:
            decision = decision + Decision(refusals=(_refusal("not_a_writer", item),))
    return decision


def _propose_event(
    agent: str,
    event: ThreadEvent,
    ctx: ThreadContext,
    policy: Policy,
    source: TriggerSource,
    hop: int,
) -> Proposal:
    if isinstance(event, Post):
        return _propose_post(agent, event, ctx, policy, source, hop)
    if isinstance(event, ReviewRequest):
        if event.reviewer.lower() != agent.lower() or agent.lower() not in ctx.requested_reviewers:
            return Proposal()
        key = review_request_key(ctx.repo, ctx.number, ctx.head_sha, agent)
        request = f"Review requested by @{event.requested_by} on PR #{ctx.number}: {ctx.title}"
        spec = _spec(agent, TaskKind.REVIEW, ctx, key, event.requested_by, request, source, hop)
        spec = replace(spec, head_sha=ctx.head_sha or None)
        if event.requested_by.lower() == ctx.pull_author.lower() and policy.is_agent(
            event.requested_by
        ):
            return Proposal((spec,))  # the author agent asking again: a loop step, rounds bound it
        return _within_hops(spec, policy)
    if event.assignee.lower() != agent.lower() or agent.lower() not in ctx.assignees:
        return Proposal()
    key = assignment_key(ctx.repo, ctx.number, agent, event.id)
    request = f"Assigned by @{event.assigned_by}: {ctx.title}"
    spec = _spec(agent, TaskKind.ASSIGNMENT, ctx, key, event.assigned_by, request, source, hop)
    return _within_hops(spec, policy)


def _propose_post(
    agent: str, post: Post, ctx: ThreadContext, policy: Policy, source: TriggerSource, hop: int
) -> Proposal:
    action = parse_control(post.body, agent) if post.kind is PostKind.COMMENT else None
    if action is not None:
        command = ControlCommand(
            agent=agent,
            action=action,
            repo=ctx.repo,
            number=ctx.number,
            requested_by=post.author,
            idempotency_key=control_key(ctx.repo, ctx.number, post.id, agent, action),
            comment_id=post.id,
        )
        if policy.is_agent(post.author):
            return Proposal((_refusal("control_by_agent", command),))
        return Proposal((command,))
    if not post.mentions(agent):
        return Proposal()
    key = post_key(ctx.repo, ctx.number, post, agent)
    request = f"{ctx.title}\n\n{post.body}" if post.kind is PostKind.BODY else post.text
    spec = _spec(agent, TaskKind.MENTION, ctx, key, post.author, request, source, hop)
    if post.kind is PostKind.COMMENT:
        spec = replace(spec, comment_id=post.id)
    elif post.kind is PostKind.REVIEW:
        spec = replace(spec, review_id=post.id, head_sha=ctx.head_sha or None)
    return _within_hops(spec, policy)


def _propose_loop_step(
    agent: str,
    event: ThreadEvent,
    ctx: ThreadContext,
    policy: Policy,
    source: TriggerSource,
    round_: int,
    hop: int,
) -> Proposal | None:
    """The step a review on an agent's PR asks of `agent` by itself; None when it asks none
    (then the review is read for mentions like any post)."""
    author = ctx.pull_author.lower()
    if not isinstance(event, Post) or not ctx.is_pull or not policy.is_agent(author):
        return None
    if event.author.lower() == author:
        return None  # the author's own review of its PR (a comment review) asks nothing
    if event.asks_for_changes and agent.lower() == author:
        if round_ > policy.max_review_rounds:
            kind, key = (
                TaskKind.ROUNDS_SPENT,
                rounds_spent_key(ctx.repo, ctx.number, event.id, agent),
            )
            request = f"Change request {round_} on PR #{ctx.number}: the review loop stops here."
        else:
            kind = TaskKind.REVIEW_FEEDBACK
            key = review_feedback_key(ctx.repo, ctx.number, event.id, agent)
            request = event.text
    elif event.approves and policy.merge_by.get(author) == agent.lower():
        kind = TaskKind.MERGE_REQUEST
        key = merge_request_key(ctx.repo, ctx.number, ctx.head_sha, agent)
        request = f"Approved by {event.author} on PR #{ctx.number}: {ctx.title}"
    else:
        return None
    spec = _spec(agent, kind, ctx, key, event.author, request, source, hop)
    return Proposal((replace(spec, review_id=event.id, head_sha=ctx.head_sha or None),))


def review_round(
    timeline: Sequence[ThreadEvent], index: int, policy: Policy, pull_author: str
) -> int:
    """Which change-request round of the conversation the event at `index` would be.

    A conversation starts at the latest event of a person (a comment, a mention, a
    review, a review request): a person always restarts it. Its rounds are the
    reviews since then, up to `index`, that asked the author for changes.
    """
    start = 0
    for j in range(index, -1, -1):
        if not policy.is_agent(timeline[j].author):
            start = j
            break
    return sum(
        1
        for e in timeline[start : index + 1]
        if isinstance(e, Post) and e.asks_for_changes and e.author.lower() != pull_author.lower()
    )


def _agents_loop_step(item: Trigger, policy: Policy) -> bool:
    """A loop step an agent's review made: configured agents may move the team's loop
    without write access being asked (their tokens are the daemon's own)."""
    return (
        isinstance(item, TaskSpec) and item.kind.is_loop_step and policy.is_ours(item.requested_by)
    )


def _spec(
    agent: str,
    kind: TaskKind,
    ctx: ThreadContext,
    key: str,
    requested_by: str,
    request: str,
    source: TriggerSource,
    hop: int,
) -> TaskSpec:
    return TaskSpec(
        agent=agent,
        kind=kind,
        repo=ctx.repo,
        number=ctx.number,
        idempotency_key=key,
        requested_by=requested_by,
        request=request,
        source=source,
        is_pull=ctx.is_pull,
        hop=hop,
    )


def _within_hops(spec: TaskSpec, policy: Policy) -> Proposal:
    if spec.hop > policy.hop_limit:
        return Proposal((_refusal("hop_limit", spec),))
    return Proposal((spec,))


def _refusal(reason: str, trigger: Trigger) -> Refusal:
    assert trigger.number is not None  # a thread's trigger always has its number
    return Refusal(
        reason=reason,
        agent=trigger.agent,
        user=trigger.requested_by,
        repo=trigger.repo,
        number=trigger.number,
        idempotency_key=trigger.idempotency_key,
    )


def unserved(agent: str, repo: str, number: int, user: str = "") -> Decision:
    """The refusal for a repository outside forgejo.repositories."""
    return Decision(refusals=(Refusal("repository_not_configured", agent, user, repo, number, ""),))


# --- hops: how deep in an agent-to-agent chain ------------------------------------------


def is_report(event: ThreadEvent, policy: Policy) -> bool:
    """A post by an agent carrying our marker: the daemon's own words, never a request."""
    return (
        isinstance(event, Post)
        and policy.is_agent(event.author)
        and find_marker(event.body) is not None
    )


def task_markers(events: Iterable[ThreadEvent], policy: Policy) -> frozenset[int]:
    """The task ids in our agents' posts: the tasks whose stored hops `chain_hop` needs
    (a peer daemon's markers name tasks of its own store)."""
    return frozenset(
        task_id
        for event in events
        if isinstance(event, Post) and policy.is_ours(event.author)
        if (task_id := find_marker(event.body)) is not None
    )


def chain_hop(
    timeline: Sequence[ThreadEvent],
    index: int,
    policy: Policy,
    task_hops: Mapping[int, int] | None = None,
) -> int:
    """How deep in an agent-to-agent chain the event at `index` is (0 = a human asked).

    A person's event is 0, so a person can always restart the conversation. An
    agent's event comes from the agent's latest task on the thread (the marker of
    its latest post there, or of the PR it opened): one hop more than that task's
    stored hop. Stored facts, not the thread's current text, which later edits change.
    Without such a task, the thread counts: one hop more than the agent-to-agent
    triggers directly before it.
    """
    event = timeline[index]
    if not policy.is_agent(event.author):
        return 0
    origin = (
        _origin_task(timeline[: index + 1], event.author) if policy.is_ours(event.author) else None
    )
    if origin is not None and task_hops and origin in task_hops:
        return task_hops[origin] + 1
    hop = 1
    for earlier in reversed(timeline[:index]):
        if not policy.is_agent(earlier.author):
            break
        if _triggers_another_agent(earlier, policy):
            hop += 1
    return hop


def _origin_task(timeline: Sequence[ThreadEvent], author: str) -> int | None:
    mine = (e for e in reversed(timeline) if e.author.lower() == author.lower())
    return next((t for e in mine if isinstance(e, Post) if (t := find_marker(e.body))), None)


def _triggers_another_agent(event: ThreadEvent, policy: Policy) -> bool:
    author = event.author.lower()
    if isinstance(event, Post):
        text = event.text
        return any(policy.is_agent(n) and n != author for n in mentioned_names(text))
    target = event.reviewer if isinstance(event, ReviewRequest) else event.assignee
    return policy.is_agent(target) and target.lower() != author
