"""Many runs streaming at once share each turn of the event loop instead of each
holding it for a whole frame.

aiodocker's read_out() does not yield while frames are buffered, and one 32 KiB
frame is ~200 lines: with one yield per frame, 20 fast streams held the loop for
20 frames' worth of parsing (4,000 lines) in every turn, and every timer — the API,
webhooks, polls — waited that long. No timing is asserted: the test counts the
events handled between two turns of the loop.
"""

from __future__ import annotations

import asyncio
import time

from claude_hooks.runner.execution import StreamShare, _OutputReader
from claude_hooks.runner.stream import StreamEvent
from tests.test_claude_journal import FramedStream, _assistant, frames

STREAMS = 20
LINES = 1_000  # per stream: five frames
LINE_COST = 20e-6  # seconds of work per event in on_event, so a slice holds few lines


class TurnCounter:
    """Counts events per turn of the event loop (a callback that runs once per turn)."""

    def __init__(self) -> None:
        self.events = 0
        self.most = 0
        self.turns = 0
        self._running = True

    def start(self) -> None:
        asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        self.most = max(self.most, self.events)
        self.events = 0
        self.turns += 1
        if self._running:
            asyncio.get_running_loop().call_soon(self._turn)

    def stop(self) -> None:
        self._running = False

    def on_event(self, event: StreamEvent) -> None:
        self.events += 1
        until = time.perf_counter() + LINE_COST
        while time.perf_counter() < until:
            pass


async def test_twenty_streams_parse_a_few_lines_each_per_turn_of_the_loop() -> None:
    counter = TurnCounter()
    share = StreamShare()
    lines = [_assistant({"type": "text", "text": f"line {i}"}) for i in range(LINES)]
    readers = [_OutputReader(counter.on_event, share) for _ in range(STREAMS)]
    counter.start()
    await asyncio.gather(
        *(reader.pump(FramedStream(frames(iter(lines)))) for reader in readers)  # type: ignore[arg-type]
    )
    counter.stop()
    assert [reader.count for reader in readers] == [LINES] * STREAMS
    assert share.streaming == 0
    # Before: a whole frame (~200 lines) per stream per turn, 4,000 events in one turn.
    assert counter.most <= 10 * STREAMS, f"{counter.most} events in one turn of the loop"


async def test_one_stream_alone_gets_the_whole_turn() -> None:
    share = StreamShare(turn=0.001, least=0.00005)
    assert share.slice() == 0.001
    share.streaming = 4
    assert share.slice() == 0.00025
    share.streaming = 100
    assert share.slice() == 0.00005  # never less than `least`: each run makes progress
