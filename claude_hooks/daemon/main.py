"""`claude-hooks run`: the daemon process around `Services` (daemon/services.py).

Two scopes, as in Forgejo runner's poller (`Services.run`):
- **accepting** new work (pollers, webhooks, API submissions) stops at the first
  SIGTERM/SIGINT;
- **work** (running tasks) continues until `drain_timeout`, then is stopped and
  recorded `interrupted`, so the next start re-runs it.
A second SIGTERM/SIGINT skips the rest of the drain. SIGHUP is logged, never fatal.
systemd hears READY once the port answers and recovered tasks are dispatched, STATUS
while it runs, STOPPING when the drain starts.

Exit codes (docs/OPERATIONS.md, "Exit codes"): a stop that was asked for exits 0 even
when the drain cut tasks short, since they resume on the next start and systemd must
not mark every routine restart `failed`. Real failures keep codes of their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from dataclasses import dataclass

import structlog

from claude_hooks.config import Config
from claude_hooks.daemon.interpreter import tune_for_serving
from claude_hooks.daemon.log import config_secret_files, redactor
from claude_hooks.daemon.services import Services
from claude_hooks.daemon.systemd import SystemdNotifier
from claude_hooks.tasks import TaskState

log = structlog.get_logger(__name__)

EXIT_STOPPED = 0  # stopped when asked, drained; tasks cut short resume on the next start
EXIT_CRASHED = 1  # an uncaught exception: Python's own code, its traceback in the journal
EXIT_CONFIG = 2  # the config does not load (cli.EXIT_USAGE), or api.listen cannot be bound
# The task store cannot be opened (StoreError names the file), or another daemon holds
# the state directory (StateDirInUse names its pid): the state is not this process's.
EXIT_STORE = 3


@dataclass
class ShutdownSignals:
    """First SIGTERM/SIGINT ends accepting new work; a second one ends the drain too."""

    stop_accepting: asyncio.Event
    skip_drain: asyncio.Event

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> ShutdownSignals:
        signals = cls(asyncio.Event(), asyncio.Event())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signals._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, signals._on_hup)
        return signals

    def _on_stop(self, sig: signal.Signals) -> None:
        if self.stop_accepting.is_set():
            log.warning("drain_skipped", signal=sig.name)
            self.skip_drain.set()
        else:
            log.info("shutdown_requested", signal=sig.name)
            self.stop_accepting.set()

    def _on_hup(self) -> None:
        log.info(
            "sighup_ignored",
            hint="restart the unit to apply config changes; token files are re-read on use",
        )

    @staticmethod
    def remove(loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def run_daemon(config: Config, *, signals: ShutdownSignals | None = None) -> int:
    """Run until told to stop, then drain; EXIT_STOPPED, whatever the drain had to cut."""
    for file in redactor.add_files(config_secret_files(config)):
        log.warning(
            "secret_file_unreadable",
            file=str(file),
            hint="the daemon cannot redact what it cannot read: let its user read the file",
        )
    for warning in config.warnings:
        log.warning("config_warning", detail=warning)
    loop = asyncio.get_running_loop()
    own_signals = signals is None
    signals = signals or ShutdownSignals.install(loop)
    notifier = SystemdNotifier()
    daemon_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        services = await Services.start(config, daemon_id=daemon_id)
        log.debug("interpreter_tuned", objects=tune_for_serving())
        try:
            cut_short = await _serve(config, services, signals, notifier)
        finally:
            await asyncio.shield(services.close())
    finally:
        notifier.close()
        if own_signals:
            ShutdownSignals.remove(loop)
    log.info("daemon_stopped", clean=not cut_short, resume=list(cut_short))
    return EXIT_STOPPED


async def _serve(
    config: Config, services: Services, signals: ShutdownSignals, notifier: SystemdNotifier
) -> tuple[int, ...]:
    """Serve until the first stop signal, then drain: the ids of the tasks cut short."""
    helpers = [
        asyncio.create_task(notifier.watchdog(), name="watchdog"),
        asyncio.create_task(_report_status(services, notifier), name="status"),
    ]
    try:
        notifier.ready(await _status_line(services))
        log.info(
            "daemon_ready",
            agents=list(config.agent_names),
            listen=config.api.listen,
            poll_interval=config.daemon.poll_interval,
        )
        return await services.run(
            signals.stop_accepting,
            skip_drain=signals.skip_drain,
            on_drain=lambda running: notifier.stopping(f"draining {running} running task(s)"),
        )
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)


async def _status_line(services: Services) -> str:
    counts = await services.store.counts()
    queued = sum(n for (_, state), n in counts.items() if state is TaskState.QUEUED)
    return f"{len(services.scheduler.running_ids())} running, {queued} queued"


async def _report_status(services: Services, notifier: SystemdNotifier) -> None:
    last = ""
    while True:
        await asyncio.sleep(5)
        line = await _status_line(services)
        if line != last:
            notifier.status(line)
            last = line
