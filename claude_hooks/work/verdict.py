"""What a reviewer or lead agent decided, read from Claude's final text.

The reviewer ends its answer with a fenced ```json block `{"event":
"APPROVED|REQUEST_CHANGES|COMMENT", "body": "…", "comments": [{"path", "line", "body"}]}`;
the lead may end with `{"action": "merge"}`. Claude does not always comply, so
parsing is tolerant (the last JSON object wins, spellings of the event are
normalised) and anything unusable falls back to a COMMENT review carrying the
whole text: the work is never lost because the structure was off.

Inline comments are checked against the pull request's unified diff before they
are posted: Forgejo places them on absolute new-side file lines, and a line
outside the diff's hunks is refused (or lands nowhere useful), so such a comment
is moved into the review body as "(on path:line) …" instead of being dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from claude_hooks.forgejo.models import InlineComment
from claude_hooks.report.render import comment_as_text


class ReviewState(StrEnum):
    """The state a posted review has on Forgejo (its API's "event" when creating one)."""

    APPROVED = "APPROVED"
    REQUEST_CHANGES = "REQUEST_CHANGES"
    COMMENT = "COMMENT"


# Spellings Claude has been seen to use (GitHub's among them), squeezed to letters.
_EVENT_SPELLINGS = {
    "approved": ReviewState.APPROVED,
    "approve": ReviewState.APPROVED,
    "approval": ReviewState.APPROVED,
    "lgtm": ReviewState.APPROVED,
    "requestchanges": ReviewState.REQUEST_CHANGES,
    "requestedchanges": ReviewState.REQUEST_CHANGES,
    "changesrequested": ReviewState.REQUEST_CHANGES,
    "reject": ReviewState.REQUEST_CHANGES,
    "rejected": ReviewState.REQUEST_CHANGES,
    "comment": ReviewState.COMMENT,
    "commented": ReviewState.COMMENT,
}

DEFAULT_BODIES = {
    ReviewState.REQUEST_CHANGES: "Changes requested; see the inline comments.",
    ReviewState.COMMENT: "Review comments are inline.",
}


@dataclass(frozen=True)
class VerdictComment:
    """An inline comment as Claude proposed it: a new-side line of a file in the diff."""

    path: str
    line: int
    body: str


@dataclass(frozen=True)
class ReviewVerdict:
    event: ReviewState
    body: str
    comments: tuple[VerdictComment, ...] = ()


@dataclass(frozen=True)
class ValidatedVerdict:
    """A review ready to post: every inline comment sits on a line the diff shows."""

    event: ReviewState
    body: str
    comments: tuple[InlineComment, ...] = ()
    moved: tuple[VerdictComment, ...] = ()  # comments outside the diff, now in the body
    fallback: bool = False  # True when Claude gave no usable verdict structure


class LeadAction(StrEnum):
    MERGE = "merge"
    NONE = "none"


@dataclass(frozen=True)
class LeadVerdict:
    action: LeadAction
    body: str = ""


# ---------------------------------------------------------------- finding JSON


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([^\n`]*)\n(.*?)^ {0,3}\1[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class _Found:
    data: dict[str, Any]
    start: int  # where the block (fence included) begins in the text
    end: int


def _fenced_objects(text: str) -> Iterator[_Found]:
    for match in _FENCE.finditer(text):
        info = match[2].strip().lower()
        if info not in ("", "json", "jsonc", "json5"):
            continue
        try:
            data = json.loads(match[3])
        except ValueError:
            continue
        if isinstance(data, dict):
            yield _Found(data, match.start(), match.end())


def _bare_objects(text: str) -> Iterator[_Found]:
    """Top-level JSON objects anywhere in prose, left to right."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            data, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(data, dict):
            yield _Found(data, i, end)
        i = text.find("{", end)


def _last_object_with(text: str, key: str) -> _Found | None:
    """The last fenced JSON object holding `key`, else the last bare one."""
    for finder in (_fenced_objects, _bare_objects):
        found = [f for f in finder(text) if key in f.data]
        if found:
            return found[-1]
    return None


# ---------------------------------------------------------------- review verdict


def normalise_event(value: object) -> ReviewState | None:
    if not isinstance(value, str):
        return None
    return _EVENT_SPELLINGS.get(re.sub(r"[^a-z]", "", value.lower()))


def _as_line(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip()) or None
    return None


def _verdict_comments(raw: object) -> tuple[VerdictComment, ...]:
    if not isinstance(raw, list):
        return ()
    comments: list[VerdictComment] = []
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        path, body = item.get("path"), item.get("body")
        line = _as_line(item.get("line", item.get("new_position", item.get("new_line"))))
        if isinstance(path, str) and path.strip() and isinstance(body, str) and body.strip():
            comments.append(VerdictComment(path.strip(), line or 0, body.strip()))
    return tuple(comments)


def parse_review_verdict(result_text: str) -> ReviewVerdict | None:
    """The reviewer's verdict from its final text, or None when there is no usable one.

    An empty "body" is filled with the prose before the JSON block, which is
    usually where Claude wrote its review.
    """
    found = _last_object_with(result_text, "event")
    if found is None:
        return None
    event = normalise_event(found.data.get("event"))
    if event is None:
        return None
    body = found.data.get("body")
    body = body.strip() if isinstance(body, str) else ""
    if not body:
        body = result_text[: found.start].strip()
    return ReviewVerdict(event, body, _verdict_comments(found.data.get("comments")))


def fallback_verdict(result_text: str) -> ValidatedVerdict:
    body = result_text.strip() or "The review produced no text."
    return ValidatedVerdict(ReviewState.COMMENT, body, fallback=True)


# ---------------------------------------------------------------- the diff


def _unquote_git_path(text: str) -> str:
    """git quotes paths holding unusual bytes: "b/caf\\303\\251.txt"."""
    text = text.strip()
    if not (text.startswith('"') and text.endswith('"')):
        return text.split("\t", 1)[0]
    raw = text[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
    return raw.encode("latin-1").decode("utf-8", "replace")


def _new_side_path(header: str) -> str | None:
    path = _unquote_git_path(header)
    if path == "/dev/null":
        return None
    return path[2:] if path.startswith(("b/", "a/")) else path


_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def diff_new_lines(diff_text: str) -> dict[str, frozenset[int]]:
    """{path: new-side line numbers shown in the diff's hunks (added or context)}.

    Hunk bodies are consumed by the counts in their headers, so a removed line
    that reads "--- x" is never taken for a file header.
    """
    lines: dict[str, set[int]] = {}
    path: str | None = None
    old_left = new_left = 0
    new_line = 0
    for row in diff_text.splitlines():
        if old_left > 0 or new_left > 0:
            tag = row[:1]
            if tag in (" ", ""):
                old_left, new_left = old_left - 1, new_left - 1
            elif tag == "-":
                old_left -= 1
                continue
            elif tag == "+":
                new_left -= 1
            else:  # "\ No newline at end of file" and the like
                continue
            if path is not None:
                lines.setdefault(path, set()).add(new_line)
            new_line += 1
            continue
        if row.startswith("+++ "):
            path = _new_side_path(row[4:])
        elif row.startswith("diff --git "):
            path = None
        elif match := _HUNK.match(row):
            old_left = int(match[1]) if match[1] is not None else 1
            new_line = int(match[2])
            new_left = int(match[3]) if match[3] is not None else 1
    return {p: frozenset(ls) for p, ls in lines.items()}


def _match_path(path: str, known: Mapping[str, frozenset[int]]) -> str | None:
    candidates = [path, path.removeprefix("./"), path.lstrip("/")]
    if path.startswith(("a/", "b/")):
        candidates.append(path[2:])
    return next((c for c in candidates if c in known), None)


_HUNK_HEADER = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")
HUNK_CONTEXT = 8  # lines shown either side of the commented one when cutting a hunk


def hunk_around(diff: str, path: str, line: int) -> str:
    """The part of a unified diff around new-side `line` of `path`: Forgejo sends it with
    the comment (`diff_hunk`); this is for a comment that came without one."""
    if not diff or not path or line <= 0:
        return ""
    file_path: str | None = None
    current: list[tuple[int, str]] | None = None  # the hunk being read, if it holds `line`
    found: list[tuple[int, str]] | None = None
    new_line = 0
    for row in diff.splitlines():
        if row.startswith("diff --git "):
            file_path = current = None
        elif row.startswith("+++ ") and current is None:
            file_path = row[4:].strip().removeprefix("b/")
        elif file_path == path and (match := _HUNK_HEADER.match(row)):
            if found is not None:
                break
            start, count = int(match[1]), int(match[2] or 1)
            new_line = start
            current = found = [(line, row)] if start <= line < start + count else None
        elif current is not None:
            current.append((new_line, row))
            new_line += 0 if row.startswith("-") else 1
    if found is None:
        return ""
    return "\n".join(row for n, row in found if abs(n - line) <= HUNK_CONTEXT)


# ---------------------------------------------------------------- validation


def validate_against_diff(verdict: ReviewVerdict, diff_text: str) -> ValidatedVerdict:
    """Keep inline comments the diff can hold; move the rest into the body as text."""
    shown = diff_new_lines(diff_text)
    inline: list[InlineComment] = []
    moved: list[VerdictComment] = []
    for comment in verdict.comments:
        path = _match_path(comment.path, shown)
        if path is not None and comment.line in shown[path]:
            inline.append(InlineComment(path=path, body=comment.body, new_position=comment.line))
        else:
            moved.append(comment)
    body = verdict.body.strip()
    if moved:
        body = "\n\n".join(
            [body, *(comment_as_text(c.path, c.line, c.body) for c in moved)]
        ).strip()
    if not body and verdict.event is not ReviewState.APPROVED:
        body = DEFAULT_BODIES[verdict.event]
    return ValidatedVerdict(verdict.event, body, tuple(inline), tuple(moved))


def review_from_result(result_text: str | None, diff_text: str) -> ValidatedVerdict:
    """Claude's final text → the review to post; COMMENT with the whole text if unstructured."""
    verdict = parse_review_verdict(result_text or "")
    if verdict is None:
        return fallback_verdict(result_text or "")
    return validate_against_diff(verdict, diff_text)


# ---------------------------------------------------------------- lead verdict


def parse_lead_verdict(result_text: str) -> LeadVerdict:
    """{"action": "merge"} → MERGE; anything else, or nothing, → NONE (never merge by accident)."""
    found = _last_object_with(result_text, "action")
    if found is None:
        return LeadVerdict(LeadAction.NONE, result_text.strip())
    action = found.data.get("action")
    is_merge = isinstance(action, str) and action.strip().lower() == "merge"
    body = found.data.get("body")
    text = body.strip() if isinstance(body, str) and body.strip() else result_text[: found.start]
    return LeadVerdict(LeadAction.MERGE if is_merge else LeadAction.NONE, text.strip())


# ---------------------------------------------------------------- review feedback answer


@dataclass(frozen=True)
class FeedbackAnswer:
    """What the author agent said about each inline comment it was asked to address."""

    body: str  # its final text without the JSON block
    replies: Mapping[int, str]  # review comment id → what was done about it


def parse_feedback_answer(result_text: str, comment_ids: Iterable[int]) -> FeedbackAnswer:
    """`{"addressed": [{"comment": 123, "reply": "…"}]}` at the end of the dev's answer.

    Only ids of the comments it was shown count; anything unusable leaves the whole
    text as the body and no replies (each comment is then listed as not answered).
    """
    known = set(comment_ids)
    found = _last_object_with(result_text, "addressed")
    if found is None or not isinstance(found.data.get("addressed"), list):
        return FeedbackAnswer(result_text.strip(), {})
    replies: dict[int, str] = {}
    for item in found.data["addressed"]:
        if not isinstance(item, Mapping):
            continue
        comment_id = _as_line(item.get("comment", item.get("id")))
        reply = item.get("reply", item.get("body"))
        if comment_id in known and isinstance(reply, str) and reply.strip():
            replies[comment_id] = reply.strip()
    body = (result_text[: found.start] + result_text[found.end :]).strip()
    return FeedbackAnswer(body, replies)
