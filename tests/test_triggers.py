"""intake/ decisions: mention rules, authorisation, loop guard, keys — pure, no network."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from claude_hooks.forgejo.webhook import WebhookEvent, parse_webhook
from claude_hooks.intake.decide import (
    Decision,
    Policy,
    chain_hop,
    decide_from_thread,
    propose,
    task_markers,
)
from claude_hooks.intake.mentions import find_mentions, parse_control
from claude_hooks.intake.thread import (
    Assignment,
    Post,
    PostKind,
    ReviewRequest,
    ThreadContext,
    ThreadEvent,
    Watermark,
    split_by_watermark,
)
from claude_hooks.intake.webhooks import delivered_thread
from claude_hooks.tasks import ControlAction, ControlCommand, TaskKind, TaskSpec, TriggerSource
from claude_hooks.text import marker

REPO = "acme/app"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(agents=("dev", "reviewer", "lead"), hop_limit=3, repositories=("acme/*",))
WRITERS = frozenset({"alice", "dev", "reviewer", "lead"})


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def comment(cid: int, author: str, body: str, minute: int = 0) -> Post:
    return Post(PostKind.COMMENT, cid, author, body, at(minute))


def thread(
    *new: ThreadEvent, history: tuple[ThreadEvent, ...] = (), **extra: object
) -> ThreadContext:
    values: dict[str, object] = {
        "repo": REPO,
        "number": 7,
        "is_pull": False,
        "title": "Fix the parser",
        "new": new,
        "history": history,
        "writers": WRITERS,
    }
    values.update(extra)
    return ThreadContext(**values)  # type: ignore[arg-type]


def specs(agent: str, ctx: ThreadContext, policy: Policy = POLICY) -> list[TaskSpec]:
    triggers = decide_from_thread(agent, ctx, policy).triggers
    assert all(isinstance(t, TaskSpec) for t in triggers)
    return list(triggers)  # type: ignore[arg-type]


# --- mention rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "@dev please fix this",
        "hey @dev",
        "@Dev: can you look?",
        "@DEV, now",
        "thanks @dev.",
        "(@dev)",
        "[@dev]",
        "is it done, @dev?",
        "@dev's branch is broken",
        "cc @reviewer @dev",
        "first line\n@dev second line",
        "**@dev** in bold",
        "# @dev in a heading",
        "- @dev in a list",
        "`code` @dev after code",
        "> quoted\n\n@dev after the quote",
    ],
)
def test_a_whole_word_mention_counts(text: str) -> None:
    assert find_mentions(text, "dev")


@pytest.mark.parametrize(
    "text",
    [
        "mail a@dev.org",
        "@developer please",
        "@dev-bot please",
        "@dev_bot please",
        "x@dev",
        "`@dev` inline code",
        "``@dev `` double backticks",
        "```\n@dev in a fence\n```",
        "~~~python\n@dev\n~~~",
        "text\n\n    @dev indented code",
        "> @dev quoted",
        "> earlier\n@dev lazy continuation of the quote",
        "  > @dev indented quote",
        "[@dev](https://example.com)",
        "[ask @dev][ref]\n\n[ref]: https://example.com",
        "https://example.com/@dev",
        "<https://example.com/@dev>",
        "<!-- @dev hidden marker -->",
        "@dev/team is a team",
        "@devs plural",
        "",
    ],
)
def test_a_mention_in_code_quote_link_or_another_word_does_not_count(text: str) -> None:
    assert not find_mentions(text, "dev")


def test_an_unclosed_fence_hides_everything_after_it() -> None:
    assert not find_mentions("```\n@dev\nstill code", "dev")


def test_text_after_a_closed_fence_counts_again() -> None:
    assert find_mentions("```\ncode\n```\n@dev after", "dev")


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("@dev stop", ControlAction.STOP),
        ("@Dev STOP", ControlAction.STOP),
        ("@dev: stop.", ControlAction.STOP),
        ("@dev retry", ControlAction.RETRY),
        ("thanks, but\n@dev retry!\n", ControlAction.RETRY),
    ],
)
def test_control_commands_are_recognised(text: str, action: ControlAction) -> None:
    assert parse_control(text, "dev") is action


@pytest.mark.parametrize(
    "text",
    [
        "@dev stop the flaky test",
        "please @dev stop",
        "`@dev stop`",
        "> @dev stop",
        "@reviewer stop",
    ],
)
def test_control_needs_the_command_alone_after_this_agents_mention(text: str) -> None:
    assert parse_control(text, "dev") is None


# --- mentions become tasks -------------------------------------------------------------


def test_a_mention_comment_yields_exactly_one_task() -> None:
    ctx = thread(comment(101, "alice", "@dev please fix the parser"))
    [spec] = specs("dev", ctx)
    assert spec.kind is TaskKind.MENTION
    assert spec.idempotency_key == "acme/app#7/comment/101/dev"
    assert (spec.agent, spec.requested_by, spec.comment_id, spec.hop) == ("dev", "alice", 101, 0)
    assert spec.request == "@dev please fix the parser"
    assert spec.source is TriggerSource.POLL


def test_a_comment_mentioning_two_agents_gives_each_its_task() -> None:
    ctx = thread(comment(101, "alice", "@dev implement, @reviewer review"))
    assert [s.idempotency_key for s in specs("dev", ctx)] == ["acme/app#7/comment/101/dev"]
    assert [s.agent for s in specs("reviewer", ctx)] == ["reviewer"]
    assert specs("lead", ctx) == []


def test_a_comment_without_mention_yields_nothing() -> None:
    assert decide_from_thread("dev", thread(comment(1, "alice", "LGTM")), POLICY).triggers == ()


def test_a_new_issue_body_mention_is_a_task_with_title_and_body() -> None:
    body = Post(PostKind.BODY, 7, "alice", "@dev add a --verbose flag", at(0))
    [spec] = specs("dev", thread(body))
    assert spec.idempotency_key == "acme/app#7/body/dev"
    assert spec.request == "Fix the parser\n\n@dev add a --verbose flag"
    assert spec.comment_id is None


def test_a_review_mentioning_the_agent_only_inline_is_one_task() -> None:
    review = Post(
        PostKind.REVIEW,
        55,
        "alice",
        "Some remarks",
        at(1),
        inline=("@dev rename this", "@dev and this"),
    )
    [spec] = specs("dev", thread(review, is_pull=True, head_sha="abc123"))
    assert spec.idempotency_key == "acme/app#7/review/55/dev"
    assert (spec.review_id, spec.head_sha, spec.is_pull) == (55, "abc123", True)
    assert "rename this" in spec.request and "Some remarks" in spec.request


def test_a_follow_up_mention_is_a_new_task_on_the_same_thread() -> None:
    history = (comment(1, "alice", "@dev do it", 0), comment(2, "dev", "Done: PR #8", 5))
    [spec] = specs("dev", thread(comment(3, "alice", "@dev also add tests", 9), history=history))
    assert (spec.thread, spec.comment_id, spec.hop) == ("acme/app#7", 3, 0)


# --- who may trigger ------------------------------------------------------------------------


def test_an_unauthorised_users_mention_yields_no_task_and_a_refusal() -> None:
    decision = decide_from_thread("dev", thread(comment(9, "mallory", "@dev rm -rf")), POLICY)
    assert decision.triggers == ()
    [refusal] = decision.refusals
    assert (refusal.reason, refusal.user, refusal.repo) == ("not_a_writer", "mallory", REPO)


def test_an_allow_listed_non_writer_may_trigger() -> None:
    policy = Policy(agents=("dev",), allowed_users=frozenset({"Bob"}), repositories=("acme/*",))
    [spec] = specs("dev", thread(comment(9, "bob", "@dev hi")), policy)
    assert spec.requested_by == "bob"


def test_writer_logins_compare_case_insensitively() -> None:
    [spec] = specs("dev", thread(comment(9, "ALICE", "@dev hi"), writers=frozenset({"alice"})))
    assert spec.requested_by == "ALICE"


def test_the_agents_own_comment_never_triggers_it() -> None:
    ctx = thread(comment(9, "dev", "Note to self: @dev check CI"))
    decision = decide_from_thread("dev", ctx, POLICY)
    assert decision.triggers == () and decision.refusals == ()


def test_only_who_would_trigger_is_asked_about() -> None:
    ctx = thread(
        comment(1, "alice", "@dev go", 0),
        comment(2, "carol", "unrelated chatter", 1),
        comment(3, "mallory", "@dev also", 2),
        writers=frozenset(),
    )
    assert propose("dev", ctx, POLICY).requesters(POLICY) == {"alice", "mallory"}


# --- agent-to-agent loop guard ---------------------------------------------------------------


def _ping_pong(length: int) -> list[Post]:
    posts = [comment(1, "alice", "@dev implement it", 0)]
    for i in range(length):
        author, target = ("dev", "reviewer") if i % 2 == 0 else ("reviewer", "dev")
        posts.append(comment(10 + i, author, f"@{target} your turn ({i})", i + 1))
    return posts


def test_an_agent_to_agent_chain_stops_at_the_hop_limit() -> None:
    posts = _ping_pong(5)
    hops = []
    for i in range(1, len(posts)):
        target = "reviewer" if posts[i].author == "dev" else "dev"
        ctx = thread(posts[i], history=tuple(posts[:i]))
        decision = decide_from_thread(target, ctx, POLICY)
        hops.append((len(decision.triggers), [r.reason for r in decision.refusals]))
    assert hops == [(1, []), (1, []), (1, []), (0, ["hop_limit"]), (0, ["hop_limit"])]


def test_hops_are_numbered_from_the_last_human_comment() -> None:
    posts = _ping_pong(3)
    timeline = [
        *posts,
        comment(50, "alice", "@dev one more thing", 9),
        comment(51, "dev", "@reviewer again", 10),
    ]
    assert [chain_hop(timeline, i, POLICY) for i in range(len(timeline))] == [0, 1, 2, 3, 0, 1]


def test_agent_status_comments_without_mentions_do_not_use_up_hops() -> None:
    timeline = [
        comment(1, "alice", "@dev go", 0),
        comment(2, "dev", "Working on it…", 1),
        comment(3, "dev", "Progress: tests pass", 2),
        comment(4, "dev", "@reviewer please", 3),
    ]
    assert chain_hop(timeline, 3, POLICY) == 1


def test_hop_limit_zero_means_agents_never_trigger_each_other() -> None:
    policy = Policy(agents=("dev", "reviewer"), hop_limit=0, repositories=("acme/*",))
    decision = decide_from_thread("reviewer", thread(comment(2, "dev", "@reviewer pls")), policy)
    assert decision.triggers == () and decision.refusals[0].reason == "hop_limit"


def test_a_task_from_an_agent_carries_its_hop() -> None:
    [spec] = specs(
        "reviewer",
        thread(comment(2, "dev", "@reviewer pls"), history=(comment(1, "alice", "@dev go"),)),
    )
    assert spec.hop == 1


# --- edits, review requests, assignments, control ----------------------------------------------


def test_an_edited_comment_stays_in_history_and_does_not_trigger() -> None:
    edited = comment(5, "alice", "@dev (mention added by an edit)", 0)
    history, new = split_by_watermark([edited, comment(6, "alice", "thanks", 10)], at(5))
    assert history == (edited,)
    assert specs("dev", thread(*new, history=history)) == []


def test_split_by_watermark_is_inclusive_and_ordered() -> None:
    a, b, c = comment(1, "x", "", 3), comment(2, "x", "", 5), comment(3, "x", "", 7)
    assert split_by_watermark([c, a, b], at(5)) == ((a,), (b, c))
    assert split_by_watermark([c, a], None) == ((), (a, c))


def test_a_review_request_yields_a_review_task_keyed_by_head() -> None:
    ctx = thread(
        ReviewRequest("reviewer", "alice", at(1)),
        is_pull=True,
        head_sha="f00d",
        requested_reviewers=frozenset({"Reviewer"}),
    )
    [spec] = specs("reviewer", ctx)
    assert spec.kind is TaskKind.REVIEW
    assert spec.idempotency_key == "acme/app#7/review-request/f00d/reviewer"
    assert (spec.head_sha, spec.requested_by) == ("f00d", "alice")


def test_a_withdrawn_review_request_yields_nothing() -> None:
    ctx = thread(ReviewRequest("reviewer", "alice", at(1)), is_pull=True, head_sha="f00d")
    assert specs("reviewer", ctx) == []


def test_an_assignment_yields_an_assignment_task() -> None:
    ctx = thread(Assignment("dev", "alice", at(2), 4242), assignees=frozenset({"dev"}))
    [spec] = specs("dev", ctx)
    assert spec.kind is TaskKind.ASSIGNMENT
    assert spec.idempotency_key == "acme/app#7/assign/dev/4242"


def test_an_assignment_by_a_non_writer_is_refused() -> None:
    ctx = thread(Assignment("dev", "mallory", at(2), 4243), assignees=frozenset({"dev"}))
    assert decide_from_thread("dev", ctx, POLICY).refusals[0].reason == "not_a_writer"


def test_stop_from_a_writer_is_a_control_command_not_a_task() -> None:
    [command] = decide_from_thread(
        "dev", thread(comment(12, "alice", "@dev stop")), POLICY
    ).triggers
    assert command == ControlCommand(
        agent="dev",
        action=ControlAction.STOP,
        repo=REPO,
        number=7,
        requested_by="alice",
        idempotency_key="acme/app#7/comment/12/dev/stop",
        comment_id=12,
    )


def test_control_from_a_non_writer_or_an_agent_is_refused() -> None:
    outsider = decide_from_thread("dev", thread(comment(1, "mallory", "@dev stop")), POLICY)
    agent = decide_from_thread("dev", thread(comment(2, "reviewer", "@dev stop")), POLICY)
    assert [r.reason for r in outsider.refusals + agent.refusals] == [
        "not_a_writer",
        "control_by_agent",
    ]
    assert outsider.triggers == agent.triggers == ()


# --- the webhook path builds the same keys ---------------------------------------------------


def _user(login: str, uid: int = 1) -> dict[str, object]:
    return {"id": uid, "login": login}


def _issue_json(body: str = "", **extra: object) -> dict[str, object]:
    return {
        "number": 7,
        "title": "Fix the parser",
        "body": body,
        "user": _user("alice"),
        "created_at": "2025-03-01T12:00:00Z",
        **extra,
    }


def _comment_payload(action: str, cid: int, author: str, body: str) -> dict[str, object]:
    return {
        "action": action,
        "issue": _issue_json(),
        "repository": {"id": 1, "full_name": REPO},
        "sender": _user(author),
        "is_pull": False,
        "comment": {
            "id": cid,
            "body": body,
            "user": _user(author),
            "created_at": "2025-03-01T12:01:00Z",
        },
    }


def decide_from_webhook(
    event: WebhookEvent,
    policy: Policy,
    *,
    writers: Iterable[str],
    resolved: Sequence[ThreadEvent] = (),
) -> Decision:
    """Every configured agent's decision on one delivery, its writers known."""
    ctx = delivered_thread(event, resolved)
    if ctx is None:
        return Decision()
    ctx = replace(ctx, writers=frozenset(writers))
    decision = Decision()
    for agent in policy.agents:
        decision = decision + decide_from_thread(agent, ctx, policy, TriggerSource.WEBHOOK)
    return decision


def test_the_same_comment_by_webhook_and_by_poll_has_the_same_key() -> None:
    event = parse_webhook("issue_comment", _comment_payload("created", 101, "alice", "@dev go"))
    assert event is not None
    [hooked] = decide_from_webhook(event, POLICY, writers={"alice"}).triggers
    [polled] = specs("dev", thread(comment(101, "alice", "@dev go")))
    assert hooked.idempotency_key == polled.idempotency_key
    assert isinstance(hooked, TaskSpec) and hooked.source is TriggerSource.WEBHOOK


def test_an_edited_comment_webhook_never_triggers() -> None:
    event = parse_webhook("issue_comment", _comment_payload("edited", 101, "alice", "@dev go"))
    assert event is not None
    assert decide_from_webhook(event, POLICY, writers={"alice"}).triggers == ()


def test_an_agents_own_comment_webhook_does_not_trigger_it() -> None:
    event = parse_webhook("issue_comment", _comment_payload("created", 5, "dev", "@dev hmm"))
    assert event is not None
    assert decide_from_webhook(event, POLICY, writers={"dev"}).triggers == ()


def test_a_review_request_webhook_matches_the_polled_key() -> None:
    pull = {**_issue_json(), "head": {"sha": "f00d", "ref": "fix"}, "base": {"ref": "main"}}
    payload = {
        "action": "review_requested",
        "number": 7,
        "pull_request": pull,
        "requested_reviewer": _user("reviewer", 3),
        "sender": _user("alice"),
        "repository": {"id": 1, "full_name": REPO},
    }
    event = parse_webhook("pull_request", payload)
    assert event is not None
    [hooked] = decide_from_webhook(event, POLICY, writers={"alice"}).triggers
    polled = thread(
        ReviewRequest("reviewer", "alice", at(1)),
        is_pull=True,
        head_sha="f00d",
        requested_reviewers=frozenset({"reviewer"}),
    )
    assert [hooked.idempotency_key] == [s.idempotency_key for s in specs("reviewer", polled)]


def test_an_issue_opened_webhook_matches_the_polled_body_key() -> None:
    payload = {
        "action": "opened",
        "number": 7,
        "issue": _issue_json("@dev build it"),
        "sender": _user("alice"),
        "repository": {"id": 1, "full_name": REPO},
    }
    event = parse_webhook("issues", payload)
    assert event is not None
    [hooked] = decide_from_webhook(event, POLICY, writers={"alice"}).triggers
    assert hooked.idempotency_key == "acme/app#7/body/dev"


def test_an_assigned_webhook_triggers_only_through_the_resolved_timeline_item() -> None:
    payload = {
        "action": "assigned",
        "number": 7,
        "issue": _issue_json(assignees=[_user("dev", 2)]),
        "sender": _user("alice"),
        "repository": {"id": 1, "full_name": REPO},
    }
    event = parse_webhook("issues", payload)
    assert event is not None
    assert decide_from_webhook(event, POLICY, writers={"alice"}).triggers == ()
    resolved = (Assignment("dev", "alice", at(2), 4242),)
    [hooked] = decide_from_webhook(event, POLICY, writers={"alice"}, resolved=resolved).triggers
    polled = thread(*resolved, assignees=frozenset({"dev"}))
    assert [hooked.idempotency_key] == [s.idempotency_key for s in specs("dev", polled)]


# --- watermarks -------------------------------------------------------------------------------


def test_a_watermark_rereads_its_second_without_replaying_it() -> None:
    seen = comment(1, "alice", "@dev one", 5)
    mark = Watermark.after([comment(0, "alice", "old", 1), seen])
    same_second = comment(2, "alice", "@dev two", 5)
    history, new = split_by_watermark([seen, same_second, comment(3, "alice", "x", 6)], mark)
    assert history == (seen,)
    assert [p.id for p in new] == [2, 3]  # type: ignore[union-attr]


def test_a_watermark_survives_its_text_form() -> None:
    mark = Watermark.after([comment(7, "a", "", 5), Assignment("dev", "a", at(5), 9)])
    assert Watermark.decode(mark.encode()) == mark
    assert mark.encode() == "2025-03-01T12:05:00Z assign:9 comment:7"
    assert Watermark.decode(None) is None and Watermark.decode("garbage") is None


def test_a_watermark_never_goes_below_its_floor() -> None:
    mark = Watermark.after([comment(1, "a", "", 1)], floor=at(9))
    assert (mark.at, mark.seen) == (at(9), frozenset())


# --- the daemon's own posts and stored hops (issue 12) -----------------------------------


def test_an_agents_post_carrying_our_marker_never_triggers() -> None:
    # The tracking comment used to say "Requested by @dev": one review request made 5-6
    # tasks, once 246 in 40 s. Whatever such a post says, it is a report, not a request.
    report = comment(2, "reviewer", f"{marker(41)}\n✅ Done. @dev please fix the three issues", 1)
    decision = decide_from_thread("dev", thread(report), POLICY)
    assert decision == Decision()


def test_a_persons_post_with_a_pasted_marker_still_counts() -> None:
    pasted = comment(2, "alice", f"{marker(41)}\n\n@dev please look", 1)
    assert len(specs("dev", thread(pasted))) == 1


def review_request_after_pr(hop_of_opener: int, limit: int = 3) -> tuple[int, list[str]]:
    """A PR opened by dev's task 7 (stored hop `hop_of_opener`), then dev requests review."""
    body = Post(PostKind.BODY, 9, "dev", f"{marker(7)}\nFixes the parser.\n\nCloses #7", at(0))
    request = ReviewRequest("reviewer", "dev", at(1))
    ctx = thread(
        request, history=(body,), is_pull=True, head_sha="abc",
        requested_reviewers=frozenset({"reviewer"}), task_hops={7: hop_of_opener},
    )  # fmt: skip
    policy = Policy(POLICY.agents, hop_limit=limit, repositories=POLICY.repositories)
    decision = decide_from_thread("reviewer", ctx, policy)
    hops = [t.hop for t in decision.triggers if isinstance(t, TaskSpec)]
    return (hops[0] if hops else -1), [r.reason for r in decision.refusals]


def test_an_agents_hop_is_the_stored_hop_of_the_task_behind_it_plus_one() -> None:
    assert review_request_after_pr(0) == (1, [])
    assert review_request_after_pr(2) == (3, [])
    assert review_request_after_pr(3) == (-1, ["hop_limit"])


def test_task_markers_name_the_tasks_of_agents_posts_only() -> None:
    events = [
        comment(1, "alice", f"{marker(3)} quoted"),
        comment(2, "dev", f"{marker(4)}\n⏳ Queued"),
        comment(3, "dev", "plain words"),
    ]
    assert task_markers(events, POLICY) == frozenset({4})
