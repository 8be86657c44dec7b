"""Run `claude -p` as one `docker exec`, stream its events, and stop it cleanly.

The prompt goes on stdin, which is then closed (an open stdin costs Claude Code a
3 s wait). Stdout is split into lines as frames arrive — a line can span frames,
the last one may lack its newline — and each line is parsed and handed to
`on_event` in order. The end of stderr is kept for the failure message.

Stopping (the scheduler cancels the asyncio task on cancel, timeout and drain):
every process of the task is found by its CLAUDE_HOOKS_TASK marker, which Bash-tool
children in their own session carry too. They get SIGTERM (Claude Code then stops
its tools and exits 143), `stop_grace` seconds to end, then SIGKILL. The stop runs
to its end even when cancelled again, so that when `run_claude` raises, nothing
of the task runs any more.

A run that ends without a result in a container that is no longer running raises
`ContainerStopped`: the container was stopped under it (from outside, or by its engine
shutting down), which is not Claude's failure and is retried (work/outages.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiodocker.containers import DockerContainer
from aiodocker.execs import Exec
from aiodocker.stream import Stream

from claude_hooks.precedence import PRECEDENCE, Precedence
from claude_hooks.runner.containers import (
    ContainerStopped,
    close_stdin,
    is_running,
    read_exactly,
    signal_processes,
    task_processes,
    wait_gone,
)
from claude_hooks.runner.limits import NO_SIGNALS, RunSignals
from claude_hooks.runner.stream import Result, StreamEvent, observe, parse_line
from claude_hooks.runner.workspace import entering

log = structlog.get_logger(__name__)

STDERR_TAIL_BYTES = 8192
CONTAINER_SETTLE = 2.0  # seconds for the engine to show a container stopped under a run
MAX_LINE_BYTES = 64 << 20  # a longer "line" is not stream-json; it is cut and reported
STDOUT, STDERR = 1, 2  # docker's stream ids in exec output frames
# Stream parsing per turn of the event loop, all runs together, and the least one run
# gets: a timer (the API, a webhook, a poll) waits at most about two turns.
STREAM_TURN = 0.001
LEAST_SLICE = 0.00005
KILL_SETTLE = 5.0  # seconds for the exec's stream to end, and the kernel to reap, after SIGKILL

# Awaited between output frames: until whoever takes the events has room for more (the
# store's sink, when its writer is behind). Meanwhile Docker holds the output back.
Room = Callable[[], Awaitable[None]]


def stop_within(grace: float) -> float:
    """The longest `_stop_task` waits: `grace` after SIGTERM, then KILL_SETTLE for the
    output to end after SIGKILL and KILL_SETTLE for the processes to be gone."""
    return grace + 2 * KILL_SETTLE


@dataclass(frozen=True)
class ClaudeExec:
    """One `claude -p` of a task: the command, its environment and input, where it runs."""

    task_id: int  # CLAUDE_HOOKS_TASK in `env`: how every process of the run is found
    argv: tuple[str, ...]
    env: tuple[str, ...]
    stdin: bytes  # the prompt
    workdir: str
    stop_grace: float = 10.0  # seconds between SIGTERM and SIGKILL when it is stopped
    # No workspace exec made `workdir` (nothing to check out): this exec makes it.
    makes_workdir: bool = False


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None
    result_event: Result | None  # the stream's `result` line; None when claude was killed
    stderr_tail: str
    lines: int  # stdout lines parsed
    signals: RunSignals = NO_SIGNALS  # usage-limit events and API errors among the lines


class LineSplitter:
    """Bytes as they arrive → whole lines (without the newline)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._max_line = max_line
        self._discarding = False  # inside an overlong line, until its newline

    def feed(self, data: bytes) -> list[bytes]:
        if self._buffer:  # the line a frame cut short: its start, then the rest
            data = bytes(self._buffer) + data
        lines = data.split(b"\n")  # bytes in, bytes out: no copy per line
        rest = lines.pop()
        if self._discarding and lines:
            lines = lines[1:]
            self._discarding = False
        self._buffer = bytearray(rest)
        if len(self._buffer) > self._max_line and not self._discarding:
            lines.append(bytes(self._buffer[: self._max_line]))
            self._discarding = True
        if self._discarding:
            self._buffer.clear()
        return lines

    def flush(self) -> list[bytes]:
        """The last line, when the output did not end with a newline."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return [rest] if rest and not self._discarding else []


class TailBuffer:
    """The last `limit` bytes written."""

    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        self._data = bytearray()
        self._limit = limit

    def write(self, data: bytes) -> None:
        self._data += data
        if len(self._data) > self._limit:
            del self._data[: -self._limit]

    def text(self) -> str:
        return self._data.decode("utf-8", errors="replace")


class StreamShare:
    """How long one run may parse before it lets the event loop go on.

    aiodocker's read_out() does not yield while frames are buffered, and one frame is
    ~200 lines: a fast stream would hold the loop (webhooks, the API, other runs) for
    as long as claude kept printing. Each run yields after its slice; the slices of all
    runs streaming at once add up to about `turn` per turn of the loop, so twenty
    streams stall it no longer than one.
    """

    def __init__(self, turn: float = STREAM_TURN, least: float = LEAST_SLICE) -> None:
        self.turn = turn
        self.least = least
        self.streaming = 0  # runs whose output is being read now

    def slice(self) -> float:
        return max(self.turn / max(self.streaming, 1), self.least)


SHARE = StreamShare()  # one per process: the daemon runs one event loop


class _OutputReader:
    """Consumes an exec's output frames: events to `on_event`, stderr to a tail."""

    def __init__(
        self,
        on_event: Callable[[StreamEvent], None],
        share: StreamShare = SHARE,
        room: Room | None = None,
        precedence: Precedence = PRECEDENCE,
    ) -> None:
        self._on_event = on_event
        self._room = room
        self._precedence = precedence
        self._lines = LineSplitter()
        self._share = share
        self._yield_at = 0.0  # perf_counter() time at which this run lets the loop go on
        self.stderr = TailBuffer()
        self.result: Result | None = None
        self.signals = NO_SIGNALS
        self.count = 0

    async def pump(self, stream: Stream) -> None:
        """Until the exec's output ends."""
        self._share.streaming += 1
        try:
            self._yield_at = time.perf_counter() + self._share.slice()
            while (message := await stream.read_out()) is not None:
                if message.stream == STDERR:
                    self.stderr.write(message.data)
                else:
                    await self._deliver(self._lines.feed(message.data))
                    if self._room is not None:
                        await self._room()
            await self._deliver(self._lines.flush())
        finally:
            self._share.streaming -= 1

    async def _deliver(self, lines: list[bytes]) -> None:
        for line in lines:
            if time.perf_counter() >= self._yield_at:
                if self._precedence.held():
                    await self._precedence.step_aside()  # a person waits: the streams wait
                else:
                    await asyncio.sleep(0)
                self._yield_at = time.perf_counter() + self._share.slice()
            if not line or line.isspace():  # (strip() would copy every line)
                continue
            event = parse_line(line)
            self.count += 1
            if isinstance(event, Result):
                self.result = event
            self.signals = observe(self.signals, event)
            self._on_event(event)


async def run_claude(
    container: DockerContainer,
    claude: ClaudeExec,
    *,
    user: str,
    on_event: Callable[[StreamEvent], None],
    room: Room | None = None,
    half_close: bool = True,
) -> ExecResult:
    """Run claude in the container until it exits; stop all its processes if cancelled.
    `half_close` False (a TLS engine): the prompt's end is its length, not end of input."""
    reader = _OutputReader(on_event, room=room)
    task_id = claude.task_id
    argv = entering(claude.workdir, claude.argv) if claude.makes_workdir else list(claude.argv)
    if not half_close:
        argv = read_exactly(argv, len(claude.stdin))
    execution = await container.exec(
        argv,
        stdin=True,
        environment=list(claude.env),
        workdir=None if claude.makes_workdir else claude.workdir,
        user=user,
    )
    stream = execution.start(detach=False)
    try:
        await stream.write_in(claude.stdin)
        close_stdin(stream)
        await reader.pump(stream)
        exit_code = await _exit_code(execution)
        # Killed without a result: by its container stopping under it, perhaps (then
        # nothing of the task is left to sweep, and the run is not Claude's failure).
        stopped = reader.result is None and await _stopped_under(container, exit_code)
        if not stopped:
            # Claude is gone; what it started in the background must not outlive it (it
            # would run beside the push exec, whose environment holds the Forgejo token).
            await _run_to_end(_kill_leftovers(container, task_id=task_id, user=user))
    except BaseException:
        # Cancelled (cancel, timeout, drain) or the stream broke: nothing may keep running.
        await _run_to_end(
            _stop_task(
                container, stream, reader, task_id=task_id, user=user, grace=claude.stop_grace
            )
        )
        raise
    finally:
        await stream.close()
    if stopped:
        raise ContainerStopped(container.id[:12])
    return ExecResult(
        exit_code=exit_code,
        result_event=reader.result,
        stderr_tail=reader.stderr.text(),
        lines=reader.count,
        signals=reader.signals,
    )


async def _exit_code(execution: Exec, settle: float = 2.0) -> int | None:
    # The output can end a moment before the engine records the exit code.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle
    while True:
        info = await execution.inspect()
        if not info.get("Running") or loop.time() >= deadline:
            return info.get("ExitCode")
        await asyncio.sleep(0.02)


async def _stopped_under(container: DockerContainer, exit_code: int | None) -> bool:
    """Whether a run that ended by a signal (or with no exit code) did so because its
    container stopped: the engine records the container's end a moment after the exec's."""
    if exit_code is not None and exit_code <= 128:
        return False  # Claude exited by itself
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONTAINER_SETTLE
    while await is_running(container):
        if loop.time() >= deadline:
            return False  # killed alone (out of memory, say): the container is up
        await asyncio.sleep(0.05)
    return True


async def _stop_task(
    container: DockerContainer,
    stream: Stream,
    reader: _OutputReader,
    *,
    task_id: int,
    user: str,
    grace: float,
) -> None:
    match = task_processes(task_id)
    try:
        terminated = await signal_processes(container, "TERM", match, user=user)
        log.info("task_processes_terminated", task_id=task_id, pids=terminated)
        if terminated and not await _output_ends(stream, reader, grace):
            log.info("task_stop_grace_expired", task_id=task_id, grace=grace)
        if killed := await signal_processes(container, "KILL", match, user=user):
            log.warning("task_processes_killed", task_id=task_id, pids=killed)
            await _output_ends(stream, reader, KILL_SETTLE)
        if not await wait_gone(container, match, user=user, grace=KILL_SETTLE):
            log.error("task_processes_survived", task_id=task_id)
    except Exception:  # never mask why the run ended; say that the stop went wrong
        log.exception("task_stop_failed", task_id=task_id)


async def _kill_leftovers(container: DockerContainer, *, task_id: int, user: str) -> None:
    match = task_processes(task_id)
    try:
        if killed := await signal_processes(container, "KILL", match, user=user):
            log.info("task_leftovers_killed", task_id=task_id, pids=killed)
            if not await wait_gone(container, match, user=user, grace=KILL_SETTLE):
                log.error("task_processes_survived", task_id=task_id)
    except Exception:  # the run itself ended well: say the sweep failed, keep its result
        log.exception("task_leftovers_sweep_failed", task_id=task_id)


async def _output_ends(stream: Stream, reader: _OutputReader, within: float) -> bool:
    """Whether the exec's output ended within `within` seconds. What it printed meanwhile still
    reaches `on_event` (whole lines: Claude Code prints nothing half on SIGTERM)."""
    if stream._resp is None:  # cancelled before the exec started
        return True
    try:
        await asyncio.wait_for(reader.pump(stream), within)
    except TimeoutError:
        return False
    except Exception as exc:  # a broken connection, a failing on_event: stop anyway
        log.warning("task_output_failed_while_stopping", error=repr(exc))
        return False
    return True


async def _run_to_end(work: Awaitable[None]) -> None:
    """Await `work` to its end even if cancelled meanwhile; then re-raise that cancel."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
