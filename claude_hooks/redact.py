"""Hide secrets, and the usual encodings of them, in any text the daemon writes out.

A secret leaks in more shapes than its own: a prompt-injected Claude runs
`env | base64` or `xxd -p` on its credentials, a URL carries it percent-encoded,
a stream-json line carries it JSON-escaped. For every secret the redactor learns
it precomputes those shapes once (base64 at each of the three byte alignments a
secret can have inside a longer stream, standard and URL-safe alphabets; hex in
both cases; percent-encoding as `quote` and `quote_plus` write it), and a few
short probes that a text must contain if it holds any of them. Redaction runs on
every log line and stored event, so the common case (no secret) costs one folding
of the text and a substring search per probe; the shapes themselves are searched
for only when a probe hits. No regex is compiled per secret: Python compiles
regexes in Python, and a pattern for every shape of a long OAuth token takes
a tenth of a second.

Secrets are learnt when read: `config.read_secret` feeds every value it returns,
so a rotated token is hidden from its first use on, and old values stay hidden.
No logging here: config.py feeds this module, and log.py uses it.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import re
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REDACTED = "***"
# Shorter values (and shorter encoded shapes) are too likely to occur by chance in
# ordinary text to redact safely.
MIN_SECRET_LENGTH = 6
# `base64` and `xxd -p` wrap their output (76 and 60 columns); in a stream-json line
# the break is JSON-escaped. A wrapped encoding may break anywhere, once per line.
_BREAKS = re.compile(r"\\r\\n|\\n|\\r|\r\n|\n|\r")
_B64_ALPHABETS = (base64.b64encode, base64.urlsafe_b64encode)


def base64_cores(secret: bytes) -> set[str]:
    """The base64 characters that depend on `secret` alone, wherever it sits in a stream.

    A secret starting at byte offset k (mod 3) of a longer text shares its first
    ceil(8k/6) output characters with what comes before it and its last partial
    sextet with what follows; the characters in between are the same in every
    text that contains it at that alignment.
    """
    cores = set()
    for encode in _B64_ALPHABETS:
        for k in range(3):
            encoded = encode(b"\0" * k + secret).decode("ascii")
            start, end = -(-8 * k // 6), 8 * (k + len(secret)) // 6
            cores.add(encoded[start:end])
    return cores


def hex_forms(secret: bytes) -> set[str]:
    lower = binascii.hexlify(secret).decode("ascii")
    return {lower, lower.upper()}


def literal_forms(secret: str) -> set[str]:
    """The secret itself, JSON-escaped and percent-encoded (upper- and lower-case escapes)."""
    quoted = {
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret),
        urllib.parse.quote_plus(secret, safe="/"),
    }
    lowered = {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), q) for q in quoted}
    escaped = {json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    return {secret} | quoted | lowered | escaped


def secret_shapes(secret: str) -> tuple[set[str], set[str]]:
    """(shapes that appear contiguous, shapes an encoder may wrap across lines)."""
    raw = secret.encode("utf-8")
    wrappable = base64_cores(raw) | hex_forms(raw)
    return literal_forms(secret) - wrappable, wrappable


def fold(text: str) -> str:
    """Text reduced for the cheap pre-check: one case, one base64 alphabet, no line breaks."""
    text = fold_chars(text)
    for brk in ("\\r\\n", "\\n", "\\r", "\n", "\r"):
        text = text.replace(brk, "")
    return text


def probe(shape: str) -> str:
    """A piece of `shape` that `fold(text)` contains whenever `text` contains the shape.

    The longest stretch without a backslash or line break, less its first character:
    folding a text can eat a stretch's first character (a backslash before an `n`),
    never another one.
    """
    pieces = re.split(r"[\\\r\n]", fold_chars(shape))
    return max(pieces, key=len)[1:]


def fold_chars(text: str) -> str:
    return text.lower().replace("-", "+").replace("_", "/")


@dataclass(frozen=True)
class SecretMatcher:
    """One secret in all its shapes: cheap probes first, the search only on a hit."""

    length: int
    shapes: tuple[str, ...]  # longest first, so a longer shape wins over one inside it
    wrappable: tuple[str, ...]  # the base64 and hex shapes, also found across line breaks
    probes: tuple[str, ...]  # one is in fold(text) whenever a shape is in text

    @classmethod
    def of(cls, secret: str) -> SecretMatcher:
        contiguous, wrappable = secret_shapes(secret)
        shapes = sorted(
            (s for s in contiguous | wrappable if len(s) >= MIN_SECRET_LENGTH),
            key=len,
            reverse=True,
        )
        wrapped = tuple(s for s in shapes if s in wrappable)
        return cls(len(secret), tuple(shapes), wrapped, minimal_probes(map(probe, shapes)))

    def hits(self, folded: str) -> bool:
        return any(piece in folded for piece in self.probes)

    def redact(self, text: str) -> str:
        for shape in self.shapes:
            if shape in text:
                text = text.replace(shape, REDACTED)
        if self.wrappable and self.hits(fold(text)):  # what is left may be wrapped
            text = redact_wrapped(text, self.wrappable)
        return text


def redact_wrapped(text: str, shapes: Iterable[str]) -> str:
    """Hide `shapes` where line breaks (raw or JSON-escaped) run through them."""
    text_starts, unbroken_starts, parts = [], [], []
    position = length = 0
    for brk in _BREAKS.finditer(text):
        text_starts.append(position)
        unbroken_starts.append(length)
        parts.append(text[position : brk.start()])
        length += brk.start() - position
        position = brk.end()
    text_starts.append(position)
    unbroken_starts.append(length)
    parts.append(text[position:])
    unbroken = "".join(parts)

    def in_text(index: int) -> int:
        part = bisect.bisect_right(unbroken_starts, index) - 1
        return text_starts[part] + index - unbroken_starts[part]

    spans = []
    for shape in shapes:
        found = unbroken.find(shape)
        while found >= 0:
            spans.append((in_text(found), in_text(found + len(shape) - 1) + 1))
            found = unbroken.find(shape, found + len(shape))
    for start, end in sorted(_merged(spans), reverse=True):
        text = text[:start] + REDACTED + text[end:]
    return text


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def minimal_probes(probes: Iterable[str]) -> tuple[str, ...]:
    """Drop each probe that contains another: the shorter one already finds it."""
    kept: list[str] = []
    for candidate in sorted(set(probes), key=len):
        if not any(shorter in candidate for shorter in kept):
            kept.append(candidate)
    return tuple(kept)


@dataclass(frozen=True)
class _Known:
    """Every learnt secret, swapped in whole so a concurrent reader sees old or new."""

    secrets: frozenset[str] = frozenset()
    matchers: tuple[SecretMatcher, ...] = ()  # longest secret first: one inside another
    probes: tuple[str, ...] = ()  # all matchers' probes: no hit, nothing to redact


class Redactor:
    """Holds the secret values to hide; shared by logs, the store and report text.

    Learning a secret works out its shapes once; redacting a text folds it once and
    runs a few substring searches, and searches for a secret's shapes only when one
    of its probes is there.
    """

    def __init__(self) -> None:
        self._known = _Known()
        self._lock = threading.Lock()

    @property
    def secrets(self) -> frozenset[str]:
        return self._known.secrets

    def add(self, *values: str) -> None:
        fresh = {v.strip() for v in values if v and len(v.strip()) >= MIN_SECRET_LENGTH}
        if fresh <= self._known.secrets:
            return  # the common case: a token file read again, unchanged
        with self._lock:
            known = self._known
            new = [SecretMatcher.of(s) for s in fresh - known.secrets]
            matchers = sorted([*known.matchers, *new], key=lambda m: m.length, reverse=True)
            probes = minimal_probes(p for m in matchers for p in m.probes)
            self._known = _Known(known.secrets | fresh, tuple(matchers), probes)

    def learn(self, text: str) -> None:
        """A secret file's content: the strings inside a JSON document, else the whole text."""
        self.add(*(json_string_values(text) or [text]))

    def add_files(self, files: Iterable[Path]) -> list[Path]:
        """Learn each file; the ones that cannot be read (so cannot be hidden) come back."""
        unreadable = []
        for file in files:
            try:
                self.learn(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                unreadable.append(file)
        return unreadable

    def __call__(self, text: str) -> str:
        known = self._known
        if not known.probes:
            return text
        folded = fold(text)
        if not any(piece in folded for piece in known.probes):
            return text  # the common case, at the cost of a few substring searches
        for matcher in known.matchers:
            if matcher.hits(folded):
                text = matcher.redact(text)
        return text

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(v) for v in value)
        if isinstance(value, BaseException | Path):
            return self(str(value))
        return value


def json_string_values(text: str) -> list[str]:
    """String leaves of a JSON document (the tokens inside .credentials.json)."""
    if not text.lstrip().startswith(("{", "[")):
        return []
    try:
        doc = json.loads(text)
    except ValueError:
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, str):
            found.append(node)
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    return found


# One process-wide instance: every logger, every stored event and every report uses it.
redactor = Redactor()
