"""The team's own loop on an agent's PR (#14), as the intake decides it: pure, no network.

A review asking for changes → REVIEW_FEEDBACK for the author agent; an approval →
MERGE_REQUEST for its merge_by lead; past max_review_rounds → ROUNDS_SPENT; the author
agent's re-requests are loop steps the rounds bound, not the hop limit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from claude_hooks.intake.decide import Policy, authorise, decide_from_thread, propose, review_round
from claude_hooks.intake.thread import Post, PostKind, ReviewRequest, ThreadContext, ThreadEvent
from claude_hooks.tasks import TaskKind, TaskSpec
from claude_hooks.text import marker

REPO = "acme/app"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
HEAD = "c0ffee" * 6 + "abcd"
POLICY = Policy(
    agents=("dev", "reviewer", "code-lead"),
    hop_limit=3,
    repositories=("acme/*",),
    merge_by={"dev": "code-lead"},
    max_review_rounds=3,
)
WRITERS = frozenset({"alice", "bob"})  # the agents' write access is never asked for the loop


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


def review(
    rid: int, author: str, state: str, minute: int, *, inline: tuple[str, ...] = (), task: int = 0
) -> Post:
    body = f"{marker(task)}\nreview {rid}" if task else f"review {rid}"
    return Post(
        PostKind.REVIEW,
        rid,
        author,
        body,
        at(minute),
        inline,
        review_state=state,
        inline_count=len(inline),
    )


def pull(
    *new: ThreadEvent, history: tuple[ThreadEvent, ...] = (), author: str = "dev"
) -> ThreadContext:
    return ThreadContext(
        repo=REPO,
        number=21,
        is_pull=True,
        title="Container orchestration",
        new=new,
        history=history,
        writers=WRITERS,
        head_sha=HEAD,
        requested_reviewers=frozenset({"reviewer"}),
        pull_author=author,
    )


def specs(agent: str, ctx: ThreadContext, policy: Policy = POLICY) -> list[TaskSpec]:
    triggers = decide_from_thread(agent, ctx, policy).triggers
    assert all(isinstance(t, TaskSpec) for t in triggers)
    return list(triggers)  # type: ignore[arg-type]


PR_BODY = Post(PostKind.BODY, 21, "dev", f"{marker(5)}\nCloses #20", at(0))


@pytest.mark.parametrize(
    ("state", "inline", "kind"),
    [
        ("REQUEST_CHANGES", ("off by one",), TaskKind.REVIEW_FEEDBACK),
        ("REQUEST_CHANGES", (), TaskKind.REVIEW_FEEDBACK),
        ("COMMENT", ("rename this",), TaskKind.REVIEW_FEEDBACK),
        ("COMMENT", (), None),  # a remark without lines asks nothing
        ("APPROVED", (), None),  # an approval is the lead's, never a feedback task
        ("APPROVED", ("nit",), None),
    ],
)
def test_a_review_asking_for_changes_is_feedback_for_the_author_agent_without_a_mention(
    state: str, inline: tuple[str, ...], kind: TaskKind | None
) -> None:
    made = specs(
        "dev", pull(review(301, "reviewer", state, 5, inline=inline, task=9), history=(PR_BODY,))
    )
    assert [s.kind for s in made] == ([kind] if kind else [])
    if kind:
        (spec,) = made
        assert spec.agent == "dev" and spec.review_id == 301 and spec.head_sha == HEAD
        assert spec.requested_by == "reviewer" and spec.is_pull
        assert spec.idempotency_key == f"{REPO}#21/review-feedback/301/dev"
        assert all(text in spec.request for text in inline)


def test_a_persons_change_request_makes_feedback_too_but_a_strangers_is_refused() -> None:
    by_writer = specs("dev", pull(review(302, "alice", "REQUEST_CHANGES", 5)))
    assert [s.kind for s in by_writer] == [TaskKind.REVIEW_FEEDBACK]
    refused = decide_from_thread("dev", pull(review(303, "mallory", "REQUEST_CHANGES", 5)), POLICY)
    assert refused.triggers == ()
    assert [r.reason for r in refused.refusals] == ["not_a_writer"]


def test_a_person_s_pr_gets_no_feedback_task_and_other_agents_none_either() -> None:
    persons = pull(review(304, "reviewer", "REQUEST_CHANGES", 5, task=9), author="alice")
    assert specs("dev", persons) == [] and specs("code-lead", persons) == []
    agents = pull(review(305, "reviewer", "REQUEST_CHANGES", 5, task=9))
    assert specs("reviewer", agents) == [] and specs("code-lead", agents) == []


def test_a_change_request_mentioning_the_author_is_one_feedback_task_not_two() -> None:
    mentioning = review(306, "alice", "REQUEST_CHANGES", 5, inline=("@dev this leaks",))
    assert [s.kind for s in specs("dev", pull(mentioning))] == [TaskKind.REVIEW_FEEDBACK]


def test_an_approval_is_a_merge_request_for_the_author_agents_lead_keyed_by_the_head() -> None:
    approved = pull(review(310, "reviewer", "APPROVED", 9, task=12), history=(PR_BODY,))
    (spec,) = specs("code-lead", approved)
    assert spec.kind is TaskKind.MERGE_REQUEST and spec.agent == "code-lead"
    assert spec.idempotency_key == f"{REPO}#21/merge-request/{HEAD}/code-lead"
    assert (spec.review_id, spec.head_sha, spec.requested_by) == (310, HEAD, "reviewer")
    assert specs("dev", approved) == []  # the author does nothing on an approval
    no_lead = Policy(agents=POLICY.agents, repositories=("acme/*",))
    assert specs("code-lead", approved, no_lead) == []  # merge_by unset: a person merges


def test_a_dev_polling_its_notification_moves_the_leads_step_too() -> None:
    ctx = pull(review(311, "reviewer", "APPROVED", 9, task=12))
    assert POLICY.loop_agents(ctx) == ("dev", "code-lead")
    assert POLICY.loop_agents(pull(author="alice")) == ()


def _round_trip(rounds: int) -> tuple[ThreadEvent, ...]:
    """The PR body, then `rounds` × (review request by dev, change request by reviewer)."""
    events: list[ThreadEvent] = [PR_BODY]
    for n in range(rounds):
        events.append(ReviewRequest("reviewer", "dev", at(10 * n + 1)))
        events.append(review(400 + n, "reviewer", "REQUEST_CHANGES", 10 * n + 5, task=20 + n))
    return tuple(events)


def test_the_fourth_change_request_hands_the_pr_back_instead_of_a_fourth_fix() -> None:
    events = _round_trip(4)
    kinds = [
        [s.kind for s in specs("dev", pull(event, history=events[:i]))]
        for i, event in enumerate(events)
        if isinstance(event, Post) and event.kind is PostKind.REVIEW
    ]
    assert kinds == [[TaskKind.REVIEW_FEEDBACK]] * 3 + [[TaskKind.ROUNDS_SPENT]]
    (spent,) = specs("dev", pull(events[-1], history=events[:-1]))
    assert spent.idempotency_key == f"{REPO}#21/rounds-spent/403/dev"


def test_a_persons_comment_restarts_the_rounds() -> None:
    events = _round_trip(3)
    restart = Post(PostKind.COMMENT, 900, "alice", "try once more, with tests", at(40))
    fourth = review(499, "reviewer", "REQUEST_CHANGES", 45, task=30)
    assert review_round((*events, restart, fourth), len(events) + 1, POLICY, "dev") == 1
    assert [s.kind for s in specs("dev", pull(fourth, history=(*events, restart)))] == [
        TaskKind.REVIEW_FEEDBACK
    ]


def test_the_authors_re_requests_are_bounded_by_rounds_not_by_the_hop_limit() -> None:
    """With hop_limit 3 the whole seed flow must fit: every re-request is a review task."""
    events = _round_trip(3)
    tight = Policy(
        agents=POLICY.agents, hop_limit=1, repositories=("acme/*",), merge_by={"dev": "code-lead"}
    )
    hops = {20 + n: 5 + n for n in range(3)}  # the stored hops grow with every step
    last_request = next(e for e in reversed(events) if isinstance(e, ReviewRequest))
    i = events.index(last_request)
    ctx = pull(last_request, history=events[:i])
    # Requesting a review takes write access, as any review request does.
    ctx = ThreadContext(**{**ctx.__dict__, "task_hops": hops, "writers": WRITERS | {"dev"}})
    (spec,) = specs("reviewer", ctx, tight)
    assert spec.kind is TaskKind.REVIEW
    # A person's review request still counts hops as before: a chain of agents is refused.
    chained = ReviewRequest("reviewer", "code-lead", at(99))
    refusals = decide_from_thread("reviewer", pull(chained, history=events), tight).refusals
    assert [r.reason for r in refusals] == ["hop_limit"]


def test_loop_steps_by_agents_ask_forgejo_about_no_one() -> None:
    proposal = propose("dev", pull(review(320, "reviewer", "REQUEST_CHANGES", 5, task=9)), POLICY)
    assert proposal.requesters(POLICY) == frozenset()
    granted = authorise(proposal, frozenset(), POLICY)  # nobody known to write
    assert [t.kind for t in granted.triggers] == [TaskKind.REVIEW_FEEDBACK]  # type: ignore[union-attr]
