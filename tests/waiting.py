"""Waiting in tests: on a condition, never on the clock alone.

A bare `asyncio.sleep` before an assertion is either too short on a loaded
machine (a flaky test) or too long everywhere (a slow one), and it never says
what it was waiting for. `wait_until` polls a condition in a bounded loop and,
when the time is up, raises a TimeoutError that names the condition (and, via
`details`, whatever explains it: the daemon's log tail, the rows seen so far).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    what: str | None = ...,
    details: Callable[[], object] | None = ...,
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    what: str | None = ...,
    details: Callable[[], object] | None = ...,
) -> T: ...


async def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - the bound is the point: its expiry names the condition
    interval: float = 0.02,
    what: str | None = None,
    details: Callable[[], object] | None = None,
) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy; return that.

    `what` names the condition in the error (default: the predicate's source line);
    `details()` is appended to it on timeout.
    """
    try:
        async with asyncio.timeout(timeout) as deadline:
            while True:
                value = predicate()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        if not deadline.expired():
            raise  # the predicate's own TimeoutError, not ours
        message = f"waited {timeout:g} s for {what or describe(predicate)}"
        if details is not None:
            message += f"\n{details()}"
        raise TimeoutError(message) from None


def describe(predicate: Callable[..., object]) -> str:
    """The predicate's source line for a lambda, else its qualified name."""
    name = getattr(predicate, "__qualname__", repr(predicate))
    if name.endswith("<lambda>"):
        try:
            return inspect.getsource(predicate).strip()
        except (OSError, TypeError):
            pass
    return name
