"""The one shared wait: it returns what it waited for and says what it waited for."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.conftest import REPO_ROOT
from tests.waiting import wait_until


async def test_it_returns_the_first_truthy_value() -> None:
    values = iter([0, None, "", "ready"])
    assert await wait_until(lambda: next(values), interval=0) == "ready"


async def test_an_async_predicate_is_awaited() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_soon(event.set)

    async def is_set() -> bool:
        return event.is_set()

    assert await wait_until(is_set) is True


async def test_the_timeout_names_the_condition_and_its_details() -> None:
    rows: list[str] = ["queued"]
    with pytest.raises(TimeoutError) as err:
        await wait_until(lambda: "succeeded" in rows, timeout=0.05, details=lambda: rows)
    assert 'lambda: "succeeded" in rows' in str(err.value)
    assert "['queued']" in str(err.value)
    with pytest.raises(TimeoutError, match=r"waited 0\.05 s for the task to succeed"):
        await wait_until(lambda: False, timeout=0.05, what="the task to succeed")


async def test_a_timeout_raised_by_the_predicate_is_not_mistaken_for_ours() -> None:
    def times_out() -> bool:
        raise TimeoutError("the API call timed out")

    with pytest.raises(TimeoutError, match="the API call timed out"):
        await wait_until(times_out, timeout=5)


def test_tests_wait_on_conditions_and_share_one_wait_until() -> None:
    """A sleep in a test is either a wait in disguise or says why it is not one."""
    tests = REPO_ROOT / "tests"
    sleeps, helpers = [], []
    for path in sorted(tests.rglob("*.py")):
        if path == tests / "waiting.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(REPO_ROOT)}:{number}"
            if re.search(r"\b(asyncio|time)\.sleep\(", line) and "# not a wait:" not in line:
                sleeps.append(where)
            if re.search(r"def (wait_until|_?until)\(", line):
                helpers.append(where)
    assert sleeps == []
    assert helpers == []
