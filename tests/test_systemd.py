from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_hooks.daemon.systemd import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_notifier_sends_ready_status_and_stopping_datagrams(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    notifier = SystemdNotifier(path)
    notifier.ready("0 running, 0 queued")
    notifier.status("1 running, 2 queued")
    notifier.stopping("draining 1 running task(s)")
    received = [sock.recv(4096).decode() for _ in range(3)]
    assert received == [
        "READY=1\nSTATUS=0 running, 0 queued",
        "STATUS=1 running, 2 queued",
        "STOPPING=1\nSTATUS=draining 1 running task(s)",
    ]
    notifier.close()


def test_notifier_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    notifier.ready("x")  # must not raise
    assert notifier.watchdog_interval() is None


def test_watchdog_interval_is_half_of_watchdog_usec(
    notify_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert SystemdNotifier(notify_socket[0]).watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert SystemdNotifier(notify_socket[0]).watchdog_interval() is None


def test_a_vanished_notify_socket_is_not_fatal(tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "gone.sock"))
    notifier.status("still running")  # logs a warning, does not raise
    assert notifier.enabled
