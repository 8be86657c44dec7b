"""The shutdown budget: the longest a stop can take, against how long systemd waits for it.

After SIGTERM the daemon drains (running tasks get `daemon.drain_timeout`), stops
what is left (SIGTERM, the stop grace, SIGKILL and its settling time), then closes
(bounded waits for the listener, stop commands and report chains). systemd SIGKILLs
the whole unit at TimeoutStopSec (deploy/claude-hooks.service), and what is killed
then loses its bookkeeping; so the sum, plus a margin for the store and Docker calls
between the waits, must fit. `claude-hooks check` and `claude-hooks run` refuse a
config whose stop does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from claude_hooks.config import SYSTEMD_STOP_TIMEOUT, Config, ConfigError
from claude_hooks.daemon.services import CLOSE_WITHIN
from claude_hooks.runner.execution import stop_within
from claude_hooks.work.worker import STOP_GRACE

STOP_MARGIN = 10.0  # seconds left for the store writes and Docker calls between the waits


@dataclass(frozen=True)
class ShutdownBudget:
    drain: float  # daemon.drain_timeout
    stop: float  # a task still running at the drain deadline: grace, SIGKILL, settle
    close: float  # Services.close's bounded waits

    @property
    def total(self) -> float:
        return self.drain + self.stop + self.close

    @property
    def limit(self) -> float:
        return SYSTEMD_STOP_TIMEOUT - STOP_MARGIN

    @property
    def fits(self) -> bool:
        return self.total <= self.limit

    def explain(self) -> str:
        return (
            f"drain {self.drain:g}s + stop {self.stop:g}s + close {self.close:g}s = {self.total:g}s"
        )


def shutdown_budget(drain_timeout: float) -> ShutdownBudget:
    return ShutdownBudget(drain=drain_timeout, stop=stop_within(STOP_GRACE), close=CLOSE_WITHIN)


def check_shutdown_budget(config: Config) -> None:
    """Raise a ConfigError naming daemon.drain_timeout if the stop overruns TimeoutStopSec."""
    budget = shutdown_budget(config.daemon.drain_timeout)
    if budget.fits:
        return
    most = budget.limit - budget.stop - budget.close
    raise ConfigError(
        config.path,
        "daemon.drain_timeout",
        f"{budget.drain:g}s makes a stop take up to {budget.explain()}, more than the unit's"
        f" TimeoutStopSec={SYSTEMD_STOP_TIMEOUT:g} less {STOP_MARGIN:g}s (systemd would"
        f" SIGKILL the drain): set it to at most {most:g}s",
    )
