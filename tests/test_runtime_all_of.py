"""runner.runtime.all_of: two steps side by side, errors as the callers always caught them."""

from __future__ import annotations

import asyncio

import pytest

from claude_hooks.runner.runtime import all_of


async def test_both_steps_run_side_by_side() -> None:
    # The credentials sync and the workspace exec: each waits for the other to begin,
    # so one after the other would never end.
    begun: list[str] = []
    both = asyncio.Event()

    async def step(name: str) -> str:
        begun.append(name)
        if len(begun) == 2:
            both.set()
        async with asyncio.timeout(5):
            await both.wait()
        return name

    assert await all_of(step("credentials"), step("workspace")) == ("credentials", "workspace")


async def test_an_error_comes_once_both_ended_the_first_arguments_first() -> None:
    ended: list[str] = []

    async def step(name: str, *, after: asyncio.Event | None = None, fail: bool) -> str:
        if after is not None:
            await after.wait()  # ends after the other one
        ended.append(name)
        if fail:
            raise LookupError(name)
        return name

    workspace_done = asyncio.Event()

    async def workspace_fails() -> str:
        try:
            return await step("workspace", fail=True)
        finally:
            workspace_done.set()

    with pytest.raises(LookupError, match="credentials"):
        await all_of(step("credentials", after=workspace_done, fail=True), workspace_fails())
    assert ended == ["workspace", "credentials"]
    ended.clear()
    workspace_done.clear()
    with pytest.raises(LookupError, match="workspace"):
        await all_of(step("credentials", after=workspace_done, fail=False), workspace_fails())
    assert ended == ["workspace", "credentials"]  # the other step was not left running
