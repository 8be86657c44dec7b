"""Work a person waits for goes before the agents' output (claude_hooks/precedence.py).

Bench figure 8 (20 runs streaming 50,000 lines each): a webhook's way to its 👀 took
p50 136 ms, p95 363 ms, each of its awaits waiting out a turn of the loop full of
parsing. With the streams stepping aside while a hold is open: p50 ~40 ms, p95 ~90 ms.
These tests pin the behaviour, not those timings.
"""

from __future__ import annotations

import asyncio

from claude_hooks.precedence import Precedence
from claude_hooks.runner.execution import StreamShare, _OutputReader
from claude_hooks.runner.stream import StreamEvent
from tests.fakes.clock import FakeClock
from tests.test_claude_journal import FramedStream, _assistant, frames


def test_a_hold_holds_until_released_or_lapsed() -> None:
    clock = FakeClock()
    precedence = Precedence(hold_for=1.0, clock=clock)
    assert not precedence.held()
    with precedence.first():
        assert precedence.held()
    assert not precedence.held() and precedence.open_holds == 0

    release = precedence.take()
    clock.now += 0.5
    assert precedence.held()
    clock.now += 0.6  # one waiting on a slow Forgejo: the streams go on regardless
    assert not precedence.held() and precedence.open_holds == 1
    release()
    release()  # a second call does nothing: the count stays right
    assert precedence.open_holds == 0


def test_a_lapsed_hold_left_open_does_not_keep_a_new_one_open() -> None:
    """An idle connection holds from its accept until it closes: a webhook's hold taken
    later must still end with the webhook's work, not with the idle connection."""
    clock = FakeClock()
    precedence = Precedence(hold_for=1.0, clock=clock)
    idle = precedence.take()
    clock.now += 5
    with precedence.first():
        assert precedence.held()
    assert not precedence.held()
    idle()
    assert precedence.open_holds == 0


async def test_a_stream_steps_aside_until_the_hold_is_released() -> None:
    precedence = Precedence(hold_for=60.0)
    release = precedence.take()
    waiting = [asyncio.create_task(precedence.step_aside()) for _ in range(3)]
    await asyncio.sleep(0)  # not a wait: one turn, to show nothing moved in it
    assert not any(task.done() for task in waiting)
    release()
    await asyncio.wait_for(asyncio.gather(*waiting), 5)


async def test_a_stream_steps_aside_no_longer_than_hold_for() -> None:
    precedence = Precedence(hold_for=0.05)
    release = precedence.take()  # never released in time
    await asyncio.wait_for(precedence.step_aside(), 5)
    assert not precedence.held()
    release()


def test_one_precedence_serves_one_event_loop_after_another() -> None:
    """The daemon's is a module global: each test (and `claude-hooks demo`) runs its own
    loop, and an asyncio.Event bound to the first loop would refuse the second."""
    precedence = Precedence(hold_for=60.0)

    async def one_round() -> None:
        release = precedence.take()
        aside = asyncio.create_task(precedence.step_aside())
        await asyncio.sleep(0)  # not a wait: one turn, to show nothing moved in it
        release()
        await asyncio.wait_for(aside, 5)

    asyncio.run(one_round())
    asyncio.run(one_round())


async def test_the_output_reader_parses_nothing_more_while_a_hold_is_open() -> None:
    precedence = Precedence(hold_for=60.0)
    events: list[StreamEvent] = []
    lines = [_assistant({"type": "text", "text": f"line {i}"}) for i in range(1_000)]
    # A slice of no time: the reader looks at the hold after every line.
    reader = _OutputReader(events.append, StreamShare(turn=0.0, least=0.0), precedence=precedence)
    release = precedence.take()
    pump = asyncio.create_task(reader.pump(FramedStream(frames(iter(lines)))))  # type: ignore[arg-type]
    for _ in range(10):  # turns of the loop in which the reader could have gone on
        await asyncio.sleep(0)  # not a wait: one turn, to show nothing moved in it
    assert events == [] and not pump.done()
    release()
    await asyncio.wait_for(pump, 5)
    assert reader.count == len(lines)  # every line, in order, once the hold is gone
    assert [e.summary for e in events[:2]] == ["line 0", "line 1"]
