"""Text conventions shared by what the daemon reads and what it writes on Forgejo.

A leaf module (no claude_hooks imports): the hidden task marker every post of ours
carries, Forgejo's mention pattern, the defusing of mentions in text we post, and
the one copy of each small text helper (one line, a code fence, a duration, a cost)
that every stage shares, so the same fact reads the same wherever it is shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# --- the marker ----------------------------------------------------------------------------

_MARKER = re.compile(r"<!--\s*claude-hooks:task=(\d+)\s*-->")


def marker(task_id: int) -> str:
    return f"<!-- claude-hooks:task={task_id} -->"


def find_marker(body: str) -> int | None:
    """The task id in a post we wrote, or None. Our marker always comes first."""
    match = _MARKER.search(body)
    return int(match[1]) if match else None


def strip_markers(text: str) -> str:
    """Text we embed (Claude's result, steps) must not carry a marker of another task."""
    return _MARKER.sub("", text)


# --- mentions ------------------------------------------------------------------------------

# Forgejo's own pattern (modules/references/references.go, mentionPattern), with its
# leading and trailing context turned into look-arounds so that adjacent mentions are all
# found. Go's \s, ^ and $ are ASCII whitespace, text start and text end.
WHITESPACE = r"\t\n\f\r "
NAME_CHARS = r"0-9a-zA-Z_\-"
MENTION = re.compile(
    rf"(?:\A|(?<=[{WHITESPACE}(\[]))"
    rf"(@[{NAME_CHARS}]+|@[{NAME_CHARS}]+/?[{NAME_CHARS}]+"
    rf"|@[{NAME_CHARS}][{NAME_CHARS}.]+/?[{NAME_CHARS}.]+[{NAME_CHARS}])"
    rf"(?=['{WHITESPACE})\]]|[:,;.?!](?:[{WHITESPACE}]|\Z)|\Z)"
)

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)")


def defuse_mentions(text: str) -> str:
    """`@name` outside code becomes `` `@name` ``: shown the same, notifying nobody.

    Everything the daemon posts goes through this, so its own words (and Claude's,
    which it relays) never make Forgejo notify a person or trigger an agent: agents
    hand work to each other only through the explicit steps the daemon takes.
    """
    return "\n".join(_defuse_lines(text.split("\n")))


def _defuse_lines(lines: list[str]) -> Iterator[str]:
    fence: str | None = None
    for line in lines:
        opening = _FENCE.match(line)
        if fence is not None:
            closes = (
                opening is not None
                and opening[1][0] == fence[0]
                and len(opening[1]) >= len(fence)
                and not line.strip().strip(fence[0])
            )
            if closes:
                fence = None
            yield line
        elif opening is not None:
            fence = opening[1]
            yield line
        else:
            yield _defuse_inline(line)


def _defuse_inline(line: str) -> str:
    out, last = [], 0
    for span in _CODE_SPAN.finditer(line):
        out += [_defuse_plain(line[last : span.start()]), span[0]]
        last = span.end()
    out.append(_defuse_plain(line[last:]))
    return "".join(out)


def _defuse_plain(text: str) -> str:
    return MENTION.sub(lambda m: f"`{m[1]}`", text)


# --- small helpers -------------------------------------------------------------------------


def one_line(text: str, limit: int) -> str:
    """`text` with runs of whitespace (newlines included) collapsed, cut to `limit` chars."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def fence(text: str, info: str = "") -> str:
    """`text` as a fenced code block longer than any backtick run inside, so it cannot
    close the fence early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


def format_duration(seconds: float, *, round_to_minutes: bool = False) -> str:
    """ "45 s", "4 min 12 s", "1 h 3 min"; with round_to_minutes whole minutes read "60 min"."""
    seconds = max(0.0, seconds)
    if round_to_minutes and seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def format_cost(usd: float) -> str:
    """Cents matter below a dollar: "$0.0382"; above, "$2.50"."""
    return f"${usd:.4f}" if usd < 1 else f"${usd:.2f}"
