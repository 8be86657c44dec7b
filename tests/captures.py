"""Other people's captured runs and deliveries, which this repository does not
redistribute: the tests that replay them read them from the directory that
CLAUDE_HOOKS_CAPTURES names (`$CLAUDE_HOOKS_CAPTURES/<kind>/<file>`, e.g.
`claude/real-streams/…`). Each PROVENANCE.md under tests/data says where every such
file lives upstream.

Unset, those tests skip with a reason naming the variable. Set, a missing file is a
skip too on a developer's machine, but a failure under CI=true: there the variable
was set on purpose, and a silently shrinking replay would pass for a full one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

CAPTURES_ENV = "CLAUDE_HOOKS_CAPTURES"


def captures_dir(kind: str) -> Path:
    """`$CLAUDE_HOOKS_CAPTURES/<kind>`, or skip (or fail, see above) the calling test."""
    root = os.environ.get(CAPTURES_ENV, "")
    if not root:
        pytest.skip(f"{CAPTURES_ENV} is not set: this replays a capture not redistributed here")
    directory = Path(root) / kind
    if not directory.is_dir():
        _missing(f"{CAPTURES_ENV}={root}: no directory {directory}")
    return directory


def capture(kind: str, name: str) -> Path:
    """The captured file `$CLAUDE_HOOKS_CAPTURES/<kind>/<name>`, or skip (or fail)."""
    path = captures_dir(kind) / name
    if not path.is_file():
        _missing(f"{CAPTURES_ENV}={os.environ[CAPTURES_ENV]}: no file {path}")
    return path


def locate(kind: str, name: str) -> Path | str:
    """`$CLAUDE_HOOKS_CAPTURES/<kind>/<name>`, or why it is unavailable; nothing raised.

    For callers that decide themselves what a missing file means (tests/contract.py).
    """
    root = os.environ.get(CAPTURES_ENV, "")
    if not root:
        return f"{CAPTURES_ENV} is not set"
    path = Path(root) / kind / name
    if not path.is_file():
        return f"{CAPTURES_ENV}={root}: no file {path}"
    return path


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def required() -> bool:
    """Whether a missing capture fails: under CI=true with CLAUDE_HOOKS_CAPTURES set (a
    clean clone's CI without the captures skips what needs them, as anywhere else)."""
    return under_ci() and bool(os.environ.get(CAPTURES_ENV))


def _missing(reason: str) -> NoReturn:
    if under_ci():
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)
