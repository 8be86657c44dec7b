"""Review and lead verdicts: parsing Claude's final text, checking it against the diff."""

from __future__ import annotations

import json

import pytest

from claude_hooks.forgejo.models import InlineComment
from claude_hooks.work.verdict import (
    LeadAction,
    ReviewState,
    ReviewVerdict,
    VerdictComment,
    diff_new_lines,
    normalise_event,
    parse_lead_verdict,
    parse_review_verdict,
    review_from_result,
    validate_against_diff,
)

DIFF = """\
diff --git a/src/app.py b/src/app.py
index 1111111..2222222 100644
--- a/src/app.py
+++ b/src/app.py
@@ -1,4 +1,5 @@
 import os
-import sys
+import json
+import logging

 def main():
@@ -20,3 +21,4 @@ def run():
     value = compute()
---- a removed line that looks like a header
+    log(value)
+    return value

diff --git a/old.txt b/old.txt
deleted file mode 100644
--- a/old.txt
+++ /dev/null
@@ -1,2 +0,0 @@
-bye
-now
diff --git a/docs/new.md b/docs/new.md
new file mode 100644
--- /dev/null
+++ b/docs/new.md
@@ -0,0 +1,2 @@
+# Title
+text
\\ No newline at end of file
diff --git "a/caf\\303\\251.txt" "b/caf\\303\\251.txt"
--- "a/caf\\303\\251.txt"
+++ "b/caf\\303\\251.txt"
@@ -3 +3 @@
-old
+new
"""


def fenced(data: object, info: str = "json") -> str:
    return f"```{info}\n{json.dumps(data)}\n```"


# ---------------------------------------------------------------- diff parsing


def test_diff_new_lines_counts_added_and_context_lines_on_the_new_side() -> None:
    lines = diff_new_lines(DIFF)
    assert lines["src/app.py"] == frozenset({1, 2, 3, 4, 5, 21, 22, 23, 24})


def test_diff_removed_line_resembling_a_header_does_not_end_the_hunk() -> None:
    lines = diff_new_lines(DIFF)
    assert "a removed line that looks like a header" not in "".join(lines)
    assert 23 in lines["src/app.py"]


def test_diff_deleted_file_has_no_new_side_lines() -> None:
    assert "old.txt" not in diff_new_lines(DIFF)


def test_diff_new_file_lines_start_at_one_and_ignore_no_newline_note() -> None:
    assert diff_new_lines(DIFF)["docs/new.md"] == frozenset({1, 2})


def test_diff_quoted_non_ascii_path_is_unquoted() -> None:
    assert diff_new_lines(DIFF)["café.txt"] == frozenset({3})


def test_diff_of_nothing_is_empty() -> None:
    assert diff_new_lines("") == {}


# ---------------------------------------------------------------- parsing


def test_parse_takes_the_last_fenced_json_block() -> None:
    text = (
        "Example of the format: "
        + fenced({"event": "APPROVED", "body": "example"})
        + "\nMy review.\n"
        + fenced({"event": "REQUEST_CHANGES", "body": "Fix the bug."})
    )
    verdict = parse_review_verdict(text)
    assert verdict == ReviewVerdict(ReviewState.REQUEST_CHANGES, "Fix the bug.")


def test_parse_accepts_a_bare_json_object_in_prose() -> None:
    text = 'All good. {"event": "approve", "body": "LGTM"} Thanks!'
    assert parse_review_verdict(text) == ReviewVerdict(ReviewState.APPROVED, "LGTM")


def test_parse_fills_an_empty_body_with_the_prose_before_the_block() -> None:
    text = "The parser leaks file handles.\n\n" + fenced({"event": "COMMENT", "body": ""})
    verdict = parse_review_verdict(text)
    assert verdict is not None
    assert verdict.body == "The parser leaks file handles."


def test_parse_reads_inline_comments_and_tolerates_string_line_numbers() -> None:
    data = {
        "event": "COMMENT",
        "body": "b",
        "comments": [
            {"path": "src/app.py", "line": "3", "body": "why json?"},
            {"path": "src/app.py", "line": 22, "body": "log level?"},
            {"path": "src/app.py", "body": ""},  # no body: not a comment
            "not an object",
        ],
    }
    verdict = parse_review_verdict(fenced(data))
    assert verdict is not None
    assert verdict.comments == (
        VerdictComment("src/app.py", 3, "why json?"),
        VerdictComment("src/app.py", 22, "log level?"),
    )


@pytest.mark.parametrize(
    ("spelling", "event"),
    [
        ("APPROVED", ReviewState.APPROVED),
        ("approve", ReviewState.APPROVED),
        ("Request changes", ReviewState.REQUEST_CHANGES),
        ("request-changes", ReviewState.REQUEST_CHANGES),
        ("CHANGES_REQUESTED", ReviewState.REQUEST_CHANGES),
        ("comment", ReviewState.COMMENT),
        ("merge it", None),
        (3, None),
    ],
)
def test_event_spellings_are_normalised(spelling: object, event: ReviewState | None) -> None:
    assert normalise_event(spelling) == event


@pytest.mark.parametrize(
    "text",
    [
        "Just prose, no structure at all.",
        fenced({"event": "SHIP IT", "body": "x"}),
        '```json\n{"event": "APPROVED", "body": \n```',  # broken JSON
        fenced(["APPROVED"]),
        "",
    ],
)
def test_parse_without_a_usable_verdict_returns_none(text: str) -> None:
    assert parse_review_verdict(text) is None


# ---------------------------------------------------------------- validation


def test_validate_keeps_comments_on_lines_the_diff_shows_at_absolute_lines() -> None:
    verdict = ReviewVerdict(
        ReviewState.REQUEST_CHANGES,
        "Two issues.",
        (VerdictComment("src/app.py", 22, "log level?"), VerdictComment("café.txt", 3, "typo")),
    )
    validated = validate_against_diff(verdict, DIFF)
    assert validated.comments == (
        InlineComment(path="src/app.py", body="log level?", new_position=22),
        InlineComment(path="café.txt", body="typo", new_position=3),
    )
    assert validated.moved == ()
    assert validated.body == "Two issues."


def test_validate_moves_comments_outside_the_diff_into_the_body() -> None:
    verdict = ReviewVerdict(
        ReviewState.COMMENT,
        "Summary.",
        (
            VerdictComment("src/app.py", 10, "not in a hunk"),
            VerdictComment("nowhere.py", 1, "no such file"),
            VerdictComment("old.txt", 1, "deleted file"),
        ),
    )
    validated = validate_against_diff(verdict, DIFF)
    assert validated.comments == ()
    assert len(validated.moved) == 3
    assert "(on src/app.py:10) not in a hunk" in validated.body
    assert "(on nowhere.py:1) no such file" in validated.body
    assert validated.body.startswith("Summary.")


def test_validate_accepts_paths_with_git_prefixes() -> None:
    verdict = ReviewVerdict(ReviewState.COMMENT, "x", (VerdictComment("b/src/app.py", 2, "hm"),))
    validated = validate_against_diff(verdict, DIFF)
    assert validated.comments == (InlineComment(path="src/app.py", body="hm", new_position=2),)


@pytest.mark.parametrize("event", [ReviewState.REQUEST_CHANGES, ReviewState.COMMENT])
def test_validate_gives_an_empty_body_a_text_where_forgejo_requires_one(
    event: ReviewState,
) -> None:
    validated = validate_against_diff(ReviewVerdict(event, "  "), DIFF)
    assert validated.body.strip()


def test_validate_leaves_an_approval_without_body_empty() -> None:
    assert validate_against_diff(ReviewVerdict(ReviewState.APPROVED, ""), DIFF).body == ""


def test_review_from_unstructured_text_falls_back_to_comment_with_the_whole_text() -> None:
    text = "I looked at it; the loop in run() never ends."
    validated = review_from_result(text, DIFF)
    assert validated.event is ReviewState.COMMENT
    assert validated.body == text
    assert validated.fallback
    assert validated.comments == ()


def test_review_from_empty_result_still_has_a_body() -> None:
    validated = review_from_result(None, DIFF)
    assert validated.event is ReviewState.COMMENT
    assert validated.body


def test_review_from_structured_result_is_validated() -> None:
    data = {
        "event": "approved",
        "body": "ok",
        "comments": [{"path": "src/app.py", "line": 3, "body": "nice"}],
    }
    validated = review_from_result("Reviewed.\n" + fenced(data), DIFF)
    assert validated.event is ReviewState.APPROVED
    assert not validated.fallback
    assert validated.comments == (InlineComment(path="src/app.py", body="nice", new_position=3),)


# ---------------------------------------------------------------- lead


def test_lead_merge_action_is_recognised() -> None:
    verdict = parse_lead_verdict("Approved and green.\n" + fenced({"action": "merge"}))
    assert verdict.action is LeadAction.MERGE
    assert verdict.body == "Approved and green."


@pytest.mark.parametrize(
    "text",
    [
        "Not ready: tests fail.",
        fenced({"action": "none"}),
        fenced({"action": "merge please"}),
        fenced({"action": "merge"}) + "\nOn second thought:\n" + fenced({"action": "none"}),
    ],
)
def test_lead_anything_but_a_final_merge_action_does_not_merge(text: str) -> None:
    assert parse_lead_verdict(text).action is LeadAction.NONE
