"""One daemon per state directory: an exclusive flock on `<state_dir>/daemon.lock`.

Two daemons on one state directory share the task store and the agent containers: the
second would kill the first one's Claude processes as strays of a dead daemon and take
up its running tasks as interrupted. So the daemon (and the demo, on its own state
directory) takes this lock before it touches Docker or the store, and holds it for the
life of the process; the kernel drops it when the process ends, however it ends, so a
crash or `kill -9` never leaves a stale lock behind. The file holds the holder's pid,
only to name it in the refusal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from claude_hooks.store import StoreError

LOCK_NAME = "daemon.lock"


class StateDirInUse(StoreError):
    """Another process holds the state directory's lock."""

    def __init__(self, state_dir: Path, holder: int | None) -> None:
        self.holder = holder
        who = f"pid {holder}" if holder is not None else "a process that has not written its pid"
        super().__init__(
            state_dir,
            f"in use by another claude-hooks daemon ({who}, from {state_dir / LOCK_NAME}): "
            "one daemon per state directory; stop that one first, or give this one "
            "another daemon.state_dir",
        )


class StateDirLock:
    """The held lock; `release` (or the end of the process) lets the next daemon in."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateDirLock:
        """Lock `state_dir` or raise StateDirInUse (naming the holder) or StoreError."""
        path = state_dir / LOCK_NAME
        try:
            # Never truncated before the lock is ours: the holder's pid stays readable.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(path, f"cannot open the lock file: {_why(exc, state_dir)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateDirInUse(state_dir, holder_pid(path)) from None
            raise StoreError(path, f"cannot lock: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock

    async def aclose(self) -> None:
        self.release()


def holder_pid(path: Path) -> int | None:
    """The pid the holder wrote, None if it has not yet (or the file says nothing usable)."""
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text(encoding="ascii").strip())
    return None


def _why(exc: OSError, state_dir: Path) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason} ({state_dir} is not writable by this user)"
    return reason
