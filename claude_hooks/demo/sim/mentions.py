"""@mention detection the way Forgejo does it (modules/references, modules/markup/mdstripper).

Markdown is stripped first, so code spans, code blocks and links never count.
A mention starts at the beginning of the text or after whitespace, `(` or `[`,
and ends at whitespace, the end, `)`, `]`, `'`, or one of `:,;.?!` followed by
whitespace or the end. Names compare case-insensitively. Team mentions
(`@org/team`) are not modelled: the simulator has no teams.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^ {0,3}\1[`~]*[ \t]*$|\Z)", re.M | re.S)
_INDENTED_CODE = re.compile(r"(?:\A|(?<=\n\n))(?:(?: {4}|\t)[^\n]*(?:\n|\Z))+")
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
_LINK = re.compile(r"!?\[[^\]\n]*\]\([^)\n]*\)")
_AUTOLINK = re.compile(r"<[a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*>")
_MENTION = re.compile(
    r"(?<![^\s(\[])"  # start of text, whitespace, ( or [
    r"@([0-9A-Za-z_\-](?:[0-9A-Za-z_.\-]*?))"  # the name, shortest that ends well
    r"(?=['\s)\]]|[:,;.?!](?:\s|\Z)|\Z)"
)


def strip_markdown(text: str) -> str:
    """The text a reader sees as prose: code and links replaced by a space."""
    for pattern in (_FENCE, _INDENTED_CODE, _CODE_SPAN, _LINK, _AUTOLINK):
        text = pattern.sub(" ", text)
    return text


def find_mentions(text: str) -> list[str]:
    """Lower-cased logins mentioned in `text`, each once, in order of appearance."""
    found: dict[str, None] = {}
    for match in _MENTION.finditer(strip_markdown(text)):
        found.setdefault(match.group(1).lower())
    return list(found)
