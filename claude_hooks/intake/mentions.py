"""What Forgejo would count as a mention in a post, and the `@agent stop|retry` commands.

Pure text rules, no I/O: Forgejo strips markdown before it looks for @names
(mdstripper), so a name in code, a link or a quote notifies nobody; ours does the
same, and goes further for block quotes (quoting a mention must not re-trigger).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from claude_hooks.tasks import ControlAction
from claude_hooks.text import MENTION, NAME_CHARS, WHITESPACE

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
