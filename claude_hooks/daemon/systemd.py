"""sd_notify(3) over the datagram socket systemd gives a Type=notify unit.

The protocol is one datagram of `KEY=value` lines to $NOTIFY_SOCKET; a leading
`@` means the abstract namespace. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

log = structlog.get_logger(__name__)


class SystemdNotifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str | int) -> None:
        if self._sock is None or self._address is None:
            return
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:  # systemd gone or socket full: never fatal to the daemon
            log.warning("sd_notify_failed", error=str(exc))

    def ready(self, status: str) -> None:
        self.notify(ready=1, status=status)

    def status(self, status: str) -> None:
        self.notify(status=status)

    def stopping(self, status: str) -> None:
        self.notify(stopping=1, status=status)

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises; None when not asked."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not self.enabled or not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None

    async def watchdog(self) -> None:
        """Ping while the event loop turns; a stuck loop stops the pings and systemd acts."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            self.notify(watchdog=1)
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
