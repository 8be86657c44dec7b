"""Closing and reopening keywords the way Forgejo reads them (modules/references).

On markdown stripped as for mentions, an issue reference `#N` (or `owner/repo#N`)
counts as an action when the text right before it is a keyword, an optional
colon and exactly one space: `Closes #20`, `fixes: #3`, `(closes #3)`; not
`closes  #3` (two spaces) nor `preclose #3` (the keyword inside a word). Keywords
are Forgejo's defaults ([repository.pull-request] CLOSE_KEYWORDS / REOPEN_KEYWORDS),
case-insensitive. When one issue is referenced more than once, the last action wins
(ResolveCrossReferences keeps the latest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from claude_hooks.demo.sim.mentions import strip_markdown

CLOSE_KEYWORDS = (
    "close", "closes", "closed", "fix", "fixes", "fixed", "resolve", "resolves", "resolved",
)  # fmt: skip
REOPEN_KEYWORDS = ("reopen", "reopens", "reopened")

# issueNumericPattern / crossReferenceIssueNumericPattern in modules/references.
_REFERENCE = re.compile(
    r"(?:(?<=[\s(\['\"])|^)((?:[0-9a-zA-Z_.\-]+/[0-9a-zA-Z_.\-]+)?#([0-9]+))"
    r"(?=\s|$|[)\]'\"]|[:;,.?!](?:\s|$))",
    re.M,
)


def _keyword_before(words: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"(?:\s|^|\(|\[)(" + "|".join(words) + r"):? $", re.I)


_CLOSES = _keyword_before(CLOSE_KEYWORDS)
_REOPENS = _keyword_before(REOPEN_KEYWORDS)


@dataclass(frozen=True)
class IssueAction:
    repo: str  # "owner/name", or "" for this repository
    number: int
    closes: bool  # False: reopens


def issue_actions(text: str) -> list[IssueAction]:
    """The issues `text` closes or reopens, once each, the last keyword winning."""
    stripped = strip_markdown(text)
    found: dict[tuple[str, int], IssueAction] = {}
    for match in _REFERENCE.finditer(stripped):
        before = stripped[: match.start(1)]
        if _CLOSES.search(before):
            closes = True
        elif _REOPENS.search(before):
            closes = False
        else:
            continue
        repo = match.group(1).split("#", 1)[0].rstrip("/")
        action = IssueAction(repo.lower(), int(match.group(2)), closes)
        found.pop((action.repo, action.number), None)
        found[(action.repo, action.number)] = action
    return list(found.values())
