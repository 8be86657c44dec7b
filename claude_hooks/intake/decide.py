"""What a Forgejo event asks of an agent: mentions, review requests, assignments → triggers.

Pure decisions, no I/O. The poller and the webhook intake fetch what Forgejo knows
(the thread's posts, who has write access) and hand it here as frozen values; this
module answers with TaskSpecs and ControlCommands, plus the refusals the caller logs.

Both paths build every idempotency key with the same helpers from the same facts
(repository, number, comment/review id, head sha, timeline id), so an event seen
by a webhook and again by polling, or again after a restart, is one task.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum

from claude_hooks.config import repository_served
from claude_hooks.forgejo.models import Issue
from claude_hooks.forgejo.webhook import (
    CommentEvent,
    IssueEvent,
    ReviewRequestEvent,
    WebhookEvent,
)
from claude_hooks.tasks import (
    ControlAction,
    ControlCommand,
    TaskKind,
    TaskSpec,
    Trigger,
    TriggerSource,
)
from claude_hooks.text import MENTION, NAME_CHARS, WHITESPACE, find_marker

# --- mentions ---------------------------------------------------------------------------

_WS = WHITESPACE
_NAME = NAME_CHARS

_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INDENTED = re.compile(r"^(?: {4}|\t)")
_QUOTE = re.compile(r"^ {0,3}>")
_HTML_BLOCK = re.compile(
    r"^ {0,3}(?:<!--|<\??(?:/?(?:address|article|aside|blockquote|details|dialog|div|dl|"
    r"fieldset|figure|footer|form|h[1-6]|header|hr|li|main|nav|ol|p|pre|section|summary|"
    r"table|tbody|td|th|thead|tr|ul|script|style))(?:[\s/>]|$))",
    re.IGNORECASE,
)
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_LINK_DEFINITION = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*\S+.*$", re.MULTILINE)
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\([^)]*\)")
_REFERENCE_LINK = re.compile(r"!?\[[^\]]*\]\[([^\]]*)\]")
_SHORTCUT_LINK = re.compile(r"!?\[([^\]]+)\](?![(\[])")
_AUTOLINK = re.compile(r"<(?:[a-zA-Z][a-zA-Z0-9+.-]{1,31}:[^\s<>]*|[^\s<>@]+@[^\s<>]+)>")
_BARE_URL = re.compile(r"(?:\b[a-zA-Z][a-zA-Z0-9+.-]*://|\bwww\.)[^\s<]*")
_BARE_EMAIL = re.compile(r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9-]*(?:\s[^<>]*)?/?>")
_UNDERSCORE_EMPHASIS = re.compile(r"(?<![A-Za-z0-9_])(_{1,2})(?=\S)(.+?)(?<=\S)\1(?![A-Za-z0-9_])")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def strip_markdown(text: str) -> str:
    """The plain text of a comment, as Forgejo's mdstripper leaves it for mention search.

    Code blocks and spans, links (text and URL), autolinks, bare URLs and raw HTML go;
    so do block quotes, which Forgejo would keep: quoting a mention must not re-trigger.
    A removed inline element becomes a space, as mdstripper starts each text node anew.
    """
    text = "\n".join(_plain_lines(text.replace("\r\n", "\n").replace("\r", "\n")))
    text = _HTML_COMMENT.sub(" ", text)
    text = _CODE_SPAN.sub(" ", text)
    text = _strip_links(text)
    text = _AUTOLINK.sub(" ", text)
    text = _BARE_URL.sub(" ", text)
    text = _BARE_EMAIL.sub(" ", text)
    text = _HTML_TAG.sub(" ", text)
    text = _UNDERSCORE_EMPHASIS.sub(r" \2 ", text)
    text = re.sub(r"[*~|]+", " ", text)
    return _ESCAPE.sub(r"\1", text)


def _plain_lines(text: str) -> Iterable[str]:
    """The lines outside fenced/indented code, HTML blocks and block quotes."""
    fence: str | None = None
    skipping_block = False  # inside a quote paragraph (lazy continuation) or an HTML block
    previous_blank = True
    for line in text.split("\n"):
        blank = not line.strip()
        if fence is not None:
            if _closes(fence, line):
                fence = None
            yield ""
        elif opening := _FENCE_OPEN.match(line):
            fence = opening[1]
            skipping_block = False
            yield ""
        elif _QUOTE.match(line) or _HTML_BLOCK.match(line) or (skipping_block and not blank):
            skipping_block = True
            yield ""
        elif previous_blank and _INDENTED.match(line) and not blank:
            yield ""  # an indented code block: it only starts after a blank line
            continue  # previous_blank stays True so the block's next lines are code too
        else:
            skipping_block = False
            yield line
        previous_blank = blank


def _closes(fence: str, line: str) -> bool:
    """A closing fence: the opening character, at least as many, and nothing else."""
    closing = _FENCE_OPEN.match(line)
    return bool(
        closing
        and closing[1][0] == fence[0]
        and len(closing[1]) >= len(fence)
        and not line.strip().lstrip(fence[0])
    )


def _strip_links(text: str) -> str:
    labels = {label.strip().lower() for label in _LINK_DEFINITION.findall(text)}
    text = _LINK_DEFINITION.sub(" ", text)
    text = _INLINE_LINK.sub(" ", text)
    text = _REFERENCE_LINK.sub(" ", text)
    return _SHORTCUT_LINK.sub(lambda m: " " if m[1].strip().lower() in labels else m[0], text)


def mentioned_names(text: str) -> list[str]:
    """Every @name Forgejo would see in `text`, lower-cased, in order (teams excluded)."""
    plain = strip_markdown(text)
    return [m[1][1:].lower() for m in MENTION.finditer(plain) if "/" not in m[1]]


def find_mentions(text: str, name: str) -> bool:
    """Whether `text` mentions @name by Forgejo's rules (whole word, any case, not quoted)."""
    return name.lower() in mentioned_names(text)


_CONTROL = re.compile(
    rf"^[{_WS}]*@([{_NAME}.]+)[:,]?[{_WS}]+(stop|retry)[{_WS}.!]*$",
    re.IGNORECASE | re.MULTILINE,
)


def parse_control(text: str, agent: str) -> ControlAction | None:
    """`@agent stop` / `@agent retry` on a line of its own (any case, trailing . or !).

    The command must be the whole line, so "@dev stop the flaky test from failing"
    stays an ordinary request instead of cancelling the agent's work.
    """
    for match in _CONTROL.finditer(strip_markdown(text)):
        if match[1].lower() == agent.lower():
            return ControlAction(match[2].lower())
    return None


# --- facts about a thread -------------------------------------------------------------


class PostKind(StrEnum):
    BODY = "body"  # the issue or PR description
    COMMENT = "comment"  # a plain comment, or a reply to a code comment
    REVIEW = "review"  # a submitted review: its body and its author's inline comments


@dataclass(frozen=True)
class Post:
    """Text on a thread that may mention an agent."""

    kind: PostKind
    id: int  # comment id or review id; the issue number for BODY
    author: str
    body: str
    at: datetime | None  # creation (submission for reviews): edits never move it
    inline: tuple[str, ...] = ()  # REVIEW: the bodies of its author's inline comments

    def mentions(self, name: str) -> bool:
        return any(find_mentions(text, name) for text in (self.body, *self.inline))

    @property
    def text(self) -> str:
        return "\n\n".join(t for t in (self.body, *self.inline) if t)


@dataclass(frozen=True)
class ReviewRequest:
    """`requested_by` asked `reviewer` to review the PR (timeline or webhook)."""

    reviewer: str
    requested_by: str
    at: datetime | None

    @property
    def author(self) -> str:
        return self.requested_by


@dataclass(frozen=True)
class Assignment:
    """`assigned_by` assigned the issue or PR to `assignee` (timeline item)."""

    assignee: str
    assigned_by: str
    at: datetime | None
    id: int  # the timeline item: the same one whether polling or a webhook looks it up

    @property
    def author(self) -> str:
        return self.assigned_by


ThreadEvent = Post | ReviewRequest | Assignment


@dataclass(frozen=True)
class Policy:
    """Which repositories are served, who counts as an agent, who may trigger one besides
    writers, how far agents chain."""

    agents: tuple[str, ...]  # every configured agent name, as configured
    allowed_users: frozenset[str] = frozenset()
    hop_limit: int = 3
    repositories: tuple[str, ...] = ()  # forgejo.repositories; none given serves nothing
    _agents_lower: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "agents", tuple(self.agents))
        object.__setattr__(self, "_agents_lower", frozenset(a.lower() for a in self.agents))
        object.__setattr__(self, "allowed_users", frozenset(u.lower() for u in self.allowed_users))

    def is_agent(self, login: str) -> bool:
        return login.lower() in self._agents_lower

    def serves(self, repo: str) -> bool:
        return repository_served(self.repositories, repo)


@dataclass(frozen=True)
class ThreadContext:
    """One issue or PR as the caller fetched it: its history and what is new since last time.

    `history` only matters for agent-authored new events (their hop count): a caller
    that sees one must pass the thread's earlier events too. `writers` holds the logins
    known to have write access to `repo` (resolved by the caller; unknown means no).
    """

    repo: str
    number: int
    is_pull: bool
    title: str
    new: tuple[ThreadEvent, ...]  # oldest first
    history: tuple[ThreadEvent, ...] = ()  # older than everything in `new`, oldest first
    writers: frozenset[str] = frozenset()
    head_sha: str = ""  # PR head: a review request is for this commit
    requested_reviewers: frozenset[str] = frozenset()  # still open; a removed one is moot
    assignees: frozenset[str] = frozenset()
    # The stored hop of each task whose marker an agent's post on the thread carries
    # (resolved by the caller from the store): the hop of what an agent does next.
    task_hops: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("writers", "requested_reviewers", "assignees"):
            object.__setattr__(self, name, frozenset(x.lower() for x in getattr(self, name)))


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


def event_identity(event: ThreadEvent) -> str:
    """A name for one event that stays the same however often the thread is read."""
    if isinstance(event, Post):
        return f"{event.kind}:{event.id}"
    if isinstance(event, Assignment):
        return f"assign:{event.id}"
    return f"review-request:{event.reviewer.lower()}:{event.requested_by.lower()}"


@dataclass(frozen=True)
class Watermark:
    """How far a thread has been read.

    Forgejo's times have one-second resolution and its `since` is inclusive, so a
    thread is re-read from the second it was last read at; `seen` names the events
    of that very second already handled, so re-reading them is not a replay.
    """

    at: datetime
    seen: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _aware(self.at))

    def is_new(self, event: ThreadEvent) -> bool:
        moment = _event_time(event)
        return moment > self.at or (moment == self.at and event_identity(event) not in self.seen)

    @classmethod
    def after(cls, events: Iterable[ThreadEvent], floor: datetime | None = None) -> Watermark:
        """The watermark once `events` are handled: their newest time (at least `floor`)."""
        events = list(events)
        times = [_event_time(e) for e in events if e.at is not None]
        if floor is not None:
            times.append(_aware(floor))
        at = max(times, default=_EPOCH)
        seen = frozenset(
            event_identity(e) for e in events if e.at is not None and _event_time(e) == at
        )
        return cls(at, seen)

    def encode(self) -> str:
        stamp = self.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return " ".join([stamp, *sorted(self.seen)])

    @classmethod
    def decode(cls, text: str | None) -> Watermark | None:
        if not text:
            return None
        stamp, *seen = text.split()
        try:
            at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            return None
        return cls(at, frozenset(seen))


def split_by_watermark(
    events: Iterable[ThreadEvent], since: Watermark | datetime | None
) -> tuple[tuple[ThreadEvent, ...], tuple[ThreadEvent, ...]]:
    """(history, new), both oldest first. New means created after the watermark.

    Creation time, never update time: an edited comment keeps its place in history,
    so an edit that adds a mention does not trigger (as Forgejo does not notify it).
    """
    ordered = sorted(events, key=_event_time)
    if since is None:
        return (), tuple(ordered)
    mark = since if isinstance(since, Watermark) else Watermark(since)
    return (
        tuple(e for e in ordered if not mark.is_new(e)),
        tuple(e for e in ordered if mark.is_new(e)),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _event_time(event: ThreadEvent) -> datetime:
    return _aware(event.at) if event.at is not None else _EPOCH


# --- idempotency keys -------------------------------------------------------------------


def body_key(repo: str, number: int, agent: str) -> str:
    return f"{repo}#{number}/body/{agent.lower()}"


def comment_key(repo: str, number: int, comment_id: int, agent: str) -> str:
    return f"{repo}#{number}/comment/{comment_id}/{agent.lower()}"


def review_key(repo: str, number: int, review_id: int, agent: str) -> str:
    return f"{repo}#{number}/review/{review_id}/{agent.lower()}"


def review_request_key(repo: str, number: int, head_sha: str, agent: str) -> str:
    return f"{repo}#{number}/review-request/{head_sha or 'unknown'}/{agent.lower()}"


def assignment_key(repo: str, number: int, agent: str, timeline_id: int) -> str:
    return f"{repo}#{number}/assign/{agent.lower()}/{timeline_id}"


def control_key(repo: str, number: int, comment_id: int, agent: str, action: str) -> str:
    return f"{comment_key(repo, number, comment_id, agent)}/{action}"


def post_key(repo: str, number: int, post: Post, agent: str) -> str:
    if post.kind is PostKind.BODY:
        return body_key(repo, number, agent)
    if post.kind is PostKind.REVIEW:
        return review_key(repo, number, post.id, agent)
    return comment_key(repo, number, post.id, agent)


# --- decisions --------------------------------------------------------------------------


def decide_from_thread(
    agent: str,
    ctx: ThreadContext,
    policy: Policy,
    source: TriggerSource = TriggerSource.POLL,
) -> Decision:
    """The triggers for `agent` in what is new on one thread, oldest first."""
    if not policy.serves(ctx.repo):
        return unserved(agent, ctx.repo, ctx.number)
    decision = Decision()
    timeline = (*ctx.history, *ctx.new)
    for offset, event in enumerate(ctx.new):
        if event.author.lower() == agent.lower():
            continue  # an agent never reacts to itself
        if is_report(event, policy):
            continue  # what the daemon posted (tracking comment, review, PR) asks nothing
        hop = chain_hop(timeline, len(ctx.history) + offset, policy, ctx.task_hops)
        decision = decision + _decide_event(agent, event, ctx, policy, source, hop)
    return decision


def _decide_event(
    agent: str,
    event: ThreadEvent,
    ctx: ThreadContext,
    policy: Policy,
    source: TriggerSource,
    hop: int,
) -> Decision:
    if isinstance(event, Post):
        return _decide_post(agent, event, ctx, policy, source, hop)
    if isinstance(event, ReviewRequest):
        if event.reviewer.lower() != agent.lower() or agent.lower() not in ctx.requested_reviewers:
            return Decision()
        key = review_request_key(ctx.repo, ctx.number, ctx.head_sha, agent)
        request = f"Review requested by @{event.requested_by} on PR #{ctx.number}: {ctx.title}"
        spec = _spec(agent, TaskKind.REVIEW, ctx, key, event.requested_by, request, source, hop)
        return _grant(replace(spec, head_sha=ctx.head_sha or None), ctx, policy)
    if event.assignee.lower() != agent.lower() or agent.lower() not in ctx.assignees:
        return Decision()
    key = assignment_key(ctx.repo, ctx.number, agent, event.id)
    request = f"Assigned by @{event.assigned_by}: {ctx.title}"
    spec = _spec(agent, TaskKind.ASSIGNMENT, ctx, key, event.assigned_by, request, source, hop)
    return _grant(spec, ctx, policy)


def _decide_post(
    agent: str, post: Post, ctx: ThreadContext, policy: Policy, source: TriggerSource, hop: int
) -> Decision:
    action = parse_control(post.body, agent) if post.kind is PostKind.COMMENT else None
    if action is not None:
        key = control_key(ctx.repo, ctx.number, post.id, agent, action)
        if policy.is_agent(post.author):
            return _refuse("control_by_agent", agent, post.author, ctx, key)
        command = ControlCommand(
            agent=agent,
            action=action,
            repo=ctx.repo,
            number=ctx.number,
            requested_by=post.author,
            idempotency_key=key,
            comment_id=post.id,
        )
        return _grant(command, ctx, policy)
    if not post.mentions(agent):
        return Decision()
    key = post_key(ctx.repo, ctx.number, post, agent)
    request = f"{ctx.title}\n\n{post.body}" if post.kind is PostKind.BODY else post.text
    spec = _spec(agent, TaskKind.MENTION, ctx, key, post.author, request, source, hop)
    if post.kind is PostKind.COMMENT:
        spec = replace(spec, comment_id=post.id)
    elif post.kind is PostKind.REVIEW:
        spec = replace(spec, review_id=post.id, head_sha=ctx.head_sha or None)
    return _grant(spec, ctx, policy)


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


def _grant(trigger: Trigger, ctx: ThreadContext, policy: Policy) -> Decision:
    user = trigger.requested_by
    if isinstance(trigger, TaskSpec) and trigger.hop > policy.hop_limit:
        return _refuse("hop_limit", trigger.agent, user, ctx, trigger.idempotency_key)
    if user.lower() not in ctx.writers and user.lower() not in policy.allowed_users:
        return _refuse("not_a_writer", trigger.agent, user, ctx, trigger.idempotency_key)
    return Decision(triggers=(trigger,))


def _refuse(reason: str, agent: str, user: str, ctx: ThreadContext, key: str) -> Decision:
    refusal = Refusal(reason, agent, user, ctx.repo, ctx.number, key)
    return Decision(refusals=(refusal,))


def unserved(agent: str, repo: str, number: int, user: str = "") -> Decision:
    """The refusal for a repository outside forgejo.repositories."""
    return Decision(refusals=(Refusal("repository_not_configured", agent, user, repo, number, ""),))


def is_report(event: ThreadEvent, policy: Policy) -> bool:
    """A post by an agent carrying our marker: the daemon's own words, never a request."""
    return (
        isinstance(event, Post)
        and policy.is_agent(event.author)
        and find_marker(event.body) is not None
    )


def task_markers(events: Iterable[ThreadEvent], policy: Policy) -> frozenset[int]:
    """The task ids in agents' posts: the tasks whose stored hops `chain_hop` needs."""
    return frozenset(
        task_id
        for event in events
        if isinstance(event, Post) and policy.is_agent(event.author)
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
    origin = _origin_task(timeline[: index + 1], event.author)
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


def authors_to_check(agent: str, ctx: ThreadContext, policy: Policy) -> frozenset[str]:
    """The logins whose write access decides this thread: ask Forgejo about these only."""
    everyone = frozenset(e.author.lower() for e in ctx.new)
    hopeful = decide_from_thread(agent, replace(ctx, writers=everyone), policy)
    return frozenset(t.requested_by.lower() for t in hopeful.triggers) - policy.allowed_users


# --- webhooks ---------------------------------------------------------------------------


def webhook_context(
    event: WebhookEvent,
    *,
    writers: Iterable[str] = (),
    history: Sequence[ThreadEvent] = (),
    resolved: Sequence[ThreadEvent] = (),
    task_hops: Mapping[int, int] | None = None,
) -> ThreadContext | None:
    """The thread as a webhook delivery shows it; None when the delivery asks nothing.

    A submitted review (no id, no inline comments in the payload) and an assignment
    (no time) only count through `resolved`: the events the intake looked up for them,
    so that their keys are the ones polling builds from the same lookups.
    """
    ctx = _delivered_thread(event, writers, history, resolved)
    return replace(ctx, task_hops=dict(task_hops or {})) if ctx is not None else None


def _delivered_thread(
    event: WebhookEvent,
    writers: Iterable[str],
    history: Sequence[ThreadEvent],
    resolved: Sequence[ThreadEvent],
) -> ThreadContext | None:
    if isinstance(event, CommentEvent):
        if event.action != "created":
            return None  # an edit never triggers, whatever it added
        c = event.comment
        new: tuple[ThreadEvent, ...] = (
            Post(PostKind.COMMENT, c.id, c.user.login, c.body, c.created_at),
        )
        return _webhook_thread(event.repo, event.issue, new, writers, history)
    if isinstance(event, IssueEvent):
        issue = event.issue
        if event.action == "opened":
            new = (
                Post(PostKind.BODY, issue.number, issue.user.login, issue.body, issue.created_at),
            )
        else:
            new = tuple(resolved)
        ctx = _webhook_thread(event.repo, issue, new, writers, history)
        return replace(ctx, assignees=frozenset(issue.assignees))
    pull = event.pull
    if isinstance(event, ReviewRequestEvent):
        new = (ReviewRequest(event.reviewer, event.sender, None),)
        requested: frozenset[str] = frozenset({event.reviewer})
    else:
        new, requested = tuple(resolved), frozenset()
    return ThreadContext(
        repo=event.repo,
        number=pull.number,
        is_pull=True,
        title=pull.title,
        new=new,
        history=tuple(history),
        writers=frozenset(writers),
        head_sha=pull.head_sha,
        requested_reviewers=requested,
    )


def _webhook_thread(
    repo: str,
    issue: Issue,
    new: tuple[ThreadEvent, ...],
    writers: Iterable[str],
    history: Sequence[ThreadEvent],
) -> ThreadContext:
    return ThreadContext(
        repo=repo,
        number=issue.number,
        is_pull=issue.is_pull,
        title=issue.title,
        new=new,
        history=tuple(history),
        writers=frozenset(writers),
    )


def decide_from_webhook(
    event: WebhookEvent,
    policy: Policy,
    *,
    writers: Iterable[str] = (),
    history: Sequence[ThreadEvent] = (),
    resolved: Sequence[ThreadEvent] = (),
    task_hops: Mapping[int, int] | None = None,
) -> Decision:
    """The triggers one delivery holds, for every configured agent."""
    ctx = webhook_context(
        event, writers=writers, history=history, resolved=resolved, task_hops=task_hops
    )
    decision = Decision()
    if ctx is None:
        return decision
    for agent in policy.agents:
        decision = decision + decide_from_thread(agent, ctx, policy, TriggerSource.WEBHOOK)
    return decision
