"""A writer behind the streams slows the streams; it does not fill the daemon's memory.

With twenty tasks streaming, the store's writer fell behind and up to 30,000 events
(~12 MB) waited in memory at the peak (bench figure 6: RSS p95 84.6 MB, target 80).
Now each task's sink lets its run go on only while fewer than UNSTORED_LIMIT of its
events are on their way to the store, and the run's output reader waits for that
between frames, so Docker holds the output back meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

from aiodocker.stream import Message

from claude_hooks.runner.execution import StreamShare, _OutputReader
from claude_hooks.store import Store
from claude_hooks.store.events import UNSTORED_LIMIT
from tests.test_claude_journal import FramedStream, _assistant, frames
from tests.test_store import make_spec
from tests.waiting import wait_until


async def test_a_sink_has_no_room_while_its_writer_holds_the_limit_of_its_events(
    tmp_path: Path,
) -> None:
    go_on, writing = threading.Event(), threading.Event()
    go_on.set()

    def redact(text: str) -> str:  # on the writer thread: held while go_on is clear
        if not go_on.is_set():
            writing.set()
        go_on.wait(10)
        return text

    store = await Store.open(tmp_path / "tasks.sqlite3", redact=redact)
    task, _ = await store.enqueue(make_spec(1))
    sink = store.event_sink(task.id, max_batch=100)
    go_on.clear()
    for i in range(UNSTORED_LIMIT):  # ten batches handed to a writer that is stuck
        sink.add("text", f"line {i}")
    room = asyncio.ensure_future(sink.room())
    await wait_until(writing.is_set, what="the writer to be held in the first batch")
    assert not room.done()  # (room has run meanwhile: with room to spare it ends at once)
    go_on.set()
    await wait_until(room.done, what="room once the writer stored a batch")
    await sink.close()
    assert len(await store.events(task.id, limit=2000)) == UNSTORED_LIMIT + 1
    await store.close()


class CountingStream(FramedStream):
    def __init__(self, messages: Iterator[Message]) -> None:
        super().__init__(messages)
        self.read = 0

    async def read_out(self) -> Message | None:
        self.read += 1
        return await super().read_out()


async def test_the_output_reader_reads_no_further_frame_until_there_is_room() -> None:
    lines = [_assistant({"type": "text", "text": f"line {i}"}) for i in range(2_000)]
    stream = CountingStream(frames(iter(lines)))
    gate, asked = asyncio.Event(), asyncio.Event()

    async def room() -> None:
        asked.set()
        await gate.wait()

    events: list[object] = []
    reader = _OutputReader(events.append, StreamShare(), room=room)
    pump = asyncio.ensure_future(reader.pump(stream))  # type: ignore[arg-type]
    await wait_until(asked.is_set, what="the reader to ask for room")
    parsed = len(events)
    assert stream.read == 1 and 0 < parsed < len(lines)  # one frame's lines, then it waits
    gate.set()
    await pump
    assert len(events) == len(lines) and stream.read > 2
