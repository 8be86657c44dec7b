"""Find a secret in text in the shapes it leaks in: as is, base64, hex, percent-encoded.

Worked out here from the encoders themselves, not from claude_hooks.redact, so a test
does not check the redactor against its own idea of what to look for. A base64 shape
is the part of the encoding that depends on the secret alone: encoded after two
different prefixes (of 0, 1, 2 bytes: the three alignments) and before two different
suffixes, the characters both encodings share.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Callable

# Line breaks an encoder or a JSON string puts into its output; removed before searching.
_BREAKS = (b"\\r\\n", b"\\n", b"\\r", b"\r\n", b"\n", b"\r")


def _shared_middle(a: str, b: str) -> str:
    same = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x == y]
    return a[same[0] : same[-1] + 1] if same else ""


def base64_shapes(secret: bytes) -> dict[str, str]:
    shapes = {}
    encoders: dict[str, Callable[[bytes], bytes]] = {
        "base64": base64.b64encode, "base64url": base64.urlsafe_b64encode,
    }  # fmt: skip
    for name, encode in encoders.items():
        for offset in range(3):
            # Every bit of the surroundings differs, so does every character holding one.
            low = encode(b"\x00" * offset + secret + b"\x00\x00").decode().rstrip("=")
            high = encode(b"\xff" * offset + secret + b"\xff\xff").decode().rstrip("=")
            shapes[f"{name} at byte offset {offset}"] = _shared_middle(low, high)
    return shapes


def shapes(secret: str) -> dict[str, str]:
    """Name → the text that, found anywhere, gives the secret away."""
    raw = secret.encode()
    return {
        "plain": secret,
        **base64_shapes(raw),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "url quote": urllib.parse.quote(secret, safe=""),
        "url quote_plus": urllib.parse.quote_plus(secret),
    }


def unbroken(data: str | bytes) -> bytes:
    """The text without line breaks, raw or JSON-escaped: wrapped encodings made whole."""
    out = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    for brk in _BREAKS:
        out = out.replace(brk, b"")
    return out


def leaks(secrets: dict[str, str], where: str, data: str | bytes) -> list[str]:
    """Each shape of each secret found, as "<secret name> <shape> in <where>"."""
    haystack = unbroken(data)
    return [
        f"{name} {shape} in {where}"
        for name, secret in secrets.items()
        for shape, needle in shapes(secret).items()
        if needle.encode() in haystack
    ]
