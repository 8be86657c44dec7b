"""The state directory's lock (daemon/lock.py): one holder, named; gone with its process."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from claude_hooks.daemon.lock import LOCK_NAME, StateDirInUse, StateDirLock
from claude_hooks.store import StoreError

# A second process that takes the lock, says so, and holds it until killed.
HOLDER = """
import signal, sys
from pathlib import Path
from claude_hooks.daemon.lock import StateDirLock
StateDirLock.acquire(Path(sys.argv[1]))
print("held", flush=True)
signal.pause()  # until killed
"""


def test_a_lock_held_in_another_process_is_refused_naming_its_pid_and_dies_with_it(
    tmp_path: Path,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(StateDirInUse) as refused:
            StateDirLock.acquire(tmp_path)
        assert refused.value.holder == holder.pid
        assert f"pid {holder.pid}" in str(refused.value) and str(tmp_path) in str(refused.value)
    finally:
        holder.kill()  # as `kill -9` would: no cleanup in the holder runs
        holder.wait()
    lock = StateDirLock.acquire(tmp_path)  # no stale lock left behind
    lock.release()


def test_a_released_lock_can_be_taken_again_and_says_whose_it_is(tmp_path: Path) -> None:
    lock = StateDirLock.acquire(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(StateDirInUse):
        StateDirLock.acquire(tmp_path)  # another open file: refused in one process too
    lock.release()
    lock.release()  # twice is harmless
    StateDirLock.acquire(tmp_path).release()


def test_a_holder_that_has_not_written_its_pid_yet_is_still_refused_in_words(
    tmp_path: Path,
) -> None:
    with (tmp_path / LOCK_NAME).open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(StateDirInUse, match="a process that has not written its pid"):
            StateDirLock.acquire(tmp_path)


def test_a_state_dir_that_cannot_hold_the_lock_file_is_a_store_error_naming_it(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "not-there"
    with pytest.raises(StoreError, match=f"{missing / LOCK_NAME}: cannot open the lock file"):
        StateDirLock.acquire(missing)
