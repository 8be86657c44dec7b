"""Webhooks are answered at once and decided in the background (#16 §3).

Forgejo waits about 10 s for a webhook's answer; deciding one asks Forgejo itself
(who may write, which review), and a slow Forgejo made the daemon answer 500 after
~44 s of retries. Here the daemon's own listener (Services, the store, the intake; no
Docker) takes the simulator's real deliveries while the simulator answers its API
slowly: the answer comes within a bound, the task lands afterwards, and a delivery
kept but not decided before a stop is decided by the next start.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from claude_hooks.config import Config
from claude_hooks.daemon.services import Services
from claude_hooks.forgejo.client import ForgejoError
from claude_hooks.intake.decide import Decision
from claude_hooks.intake.webhooks import WebhookInbox, retry_delay
from claude_hooks.precedence import PRECEDENCE
from claude_hooks.store import Store
from claude_hooks.tasks import Task, TriggerSource
from tests.fakes.configs import ConfigFactory
from tests.test_services import FakeDocker, HeldRuntime, free_port
from tests.waiting import wait_until

SECRET = "webhook-secret-0123456789"
REPO = "acme/app"
ANSWER_WITHIN = 1.0  # Forgejo gives up after 10 s; the slow simulator takes 2 s per request
SLOW = 2.0


@pytest.fixture(autouse=True)
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiodocker, "Docker", FakeDocker)


def hooked_config(factory: ConfigFactory, sim: Any) -> Config:
    token = "forgejo-token-of-dev-0123456789"
    sim.add_user("alice", token="forgejo-token-of-alice-0123456789")
    sim.add_user("dev", token=token)
    sim.add_repo(REPO, collaborators={"alice": "write", "dev": "admin"})
    return factory.load(
        forgejo={
            "url": sim.base_url,
            "repositories": [REPO],
            "webhook_secret_file": str(factory.secret("hook-secret", SECRET)),
        },
        daemon={"poll_interval": 60, "drain_timeout": 5},
        api={"listen": f"127.0.0.1:{free_port()}"},
        agents=[factory.agent("dev", token_file=str(factory.secret("dev-token", token)))],
    )


@contextlib.asynccontextmanager
async def daemon(config: Config) -> AsyncIterator[Services]:
    services = await Services.start(config, daemon_id="test-inbox", runtime=HeldRuntime())
    try:
        yield services
    finally:
        await services.close()


async def mention_by_webhook(sim: Any, config: Config) -> tuple[int, float]:
    """Alice mentions @dev; the simulator delivers the webhook. Its status and how long
    the daemon took to answer it."""
    sim.add_webhook(f"{config.api.base_url}/hooks/forgejo", SECRET)
    number = sim.create_issue(REPO, "alice", "Crash", "It crashes.")
    await sim.webhooks_idle()
    sim.deliveries.clear()
    sim.delay(SLOW)
    started = time.monotonic()
    sim.add_comment(REPO, number, "alice", "@dev please fix the crash")
    await sim.webhooks_idle()
    took = time.monotonic() - started
    (delivery,) = sim.deliveries
    return int(delivery.status or 0), took


async def webhook_task(store: Store) -> Task | None:
    tasks = await store.list_tasks()
    return tasks[0] if tasks else None


def kept_deliveries(db_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return int(db.execute("SELECT count(*) FROM webhook_inbox").fetchone()[0])


async def test_a_webhook_is_answered_at_once_while_forgejo_is_slow_and_its_task_lands(
    forgejo_sim: Any, config_factory: ConfigFactory
) -> None:
    config = hooked_config(config_factory, forgejo_sim)
    async with daemon(config) as services:
        status, took = await mention_by_webhook(forgejo_sim, config)
        assert (status, took < ANSWER_WITHIN) == (202, True), took
        task = await wait_until(lambda: webhook_task(services.store), timeout=30)
        await wait_until(lambda: kept_deliveries(config.daemon.db_path) == 0)
    assert (task.spec.source, task.spec.requested_by) == (TriggerSource.WEBHOOK, "alice")


async def test_a_webhook_kept_but_not_decided_before_a_stop_is_decided_by_the_next_start(
    forgejo_sim: Any, config_factory: ConfigFactory
) -> None:
    config = hooked_config(config_factory, forgejo_sim)
    async with daemon(config) as services:
        status, took = await mention_by_webhook(forgejo_sim, config)
        assert (status, took < ANSWER_WITHIN) == (202, True), took
        assert await webhook_task(services.store) is None  # still asking the slow Forgejo
    assert kept_deliveries(config.daemon.db_path) == 1
    forgejo_sim.delay(0)
    async with daemon(config) as services:
        task = await wait_until(lambda: webhook_task(services.store), timeout=30)
        await wait_until(lambda: kept_deliveries(config.daemon.db_path) == 0)
    assert (task.spec.source, task.spec.requested_by) == (TriggerSource.WEBHOOK, "alice")


# --- the inbox's retries ----------------------------------------------------------------------


class FlakyHandler:
    """Stands in for WebhookHandler: fails `failures` times, then decides nothing."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def handle(self, event: object) -> Decision:
        self.calls += 1
        if self.calls <= self.failures:
            raise ForgejoError("GET", "/repos/acme/app", 503, "unavailable")
        return Decision()


COMMENT_HOOK = {
    "action": "created",
    "repository": {"id": 2, "full_name": REPO, "name": "app", "owner": {"id": 1, "login": "a"}},
    "issue": {"id": 3, "number": 7, "title": "t", "body": "", "user": {"id": 1, "login": "a"}},
    "comment": {"id": 4, "body": "@dev hi", "user": {"id": 1, "login": "a"}, "created_at": ""},
    "sender": {"id": 1, "login": "a"},
}


async def test_a_failed_decision_is_retried_and_the_delivery_dropped_once_decided(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "store.sqlite3")
    handler = FlakyHandler(failures=2)
    inbox = WebhookInbox(handler, store, first_retry=0.01)  # type: ignore[arg-type]
    try:
        inbox.start()
        assert await inbox.take("issue_comment", COMMENT_HOOK, "d-1") == 1
        await wait_until(lambda: handler.calls == 3)
        await wait_until(lambda: kept_deliveries(tmp_path / "store.sqlite3") == 0)
        assert await inbox.take("push", {}, "d-2") == 0  # asks nothing: not even kept
        assert await store.pending_webhooks() == []
    finally:
        await inbox.close()
        await store.close()


def test_retries_back_off_up_to_a_ceiling() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 9, 20)] == [2.0, 4.0, 8.0, 300.0, 300.0]


class CountingStore:
    """The store, counting how often the inbox reads all kept deliveries back."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.reads = 0

    async def pending_webhooks(self) -> list[Any]:
        self.reads += 1
        return await self._store.pending_webhooks()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def comment_hook(comment_id: int) -> dict[str, Any]:
    return COMMENT_HOOK | {"comment": COMMENT_HOOK["comment"] | {"id": comment_id}}


async def test_a_delivery_just_kept_is_decided_without_reading_the_store_back(
    tmp_path: Path,
) -> None:
    """Under load each store round trip costs tens of milliseconds of the 👀's wait
    (bench figure 8): the inbox reads the kept rows at start, not again for each
    delivery the API hands it. Fails when every delivery is read back (4 reads)."""
    store = await Store.open(tmp_path / "store.sqlite3")
    counting, handler = CountingStore(store), FlakyHandler(failures=0)
    inbox = WebhookInbox(handler, counting, first_retry=0.01)  # type: ignore[arg-type]
    try:
        inbox.start()
        await wait_until(lambda: counting.reads == 1, what="the look at start")
        for n in range(3):
            assert await inbox.take("issue_comment", comment_hook(10 + n), f"d-{n}") == 1
            await wait_until(lambda n=n: handler.calls == n + 1, what=f"delivery {n} decided")
        await wait_until(lambda: kept_deliveries(tmp_path / "store.sqlite3") == 0)
        assert counting.reads == 1
    finally:
        await inbox.close()
        await store.close()


async def test_a_due_retry_is_made_while_new_deliveries_keep_coming(tmp_path: Path) -> None:
    """A delivery whose decision failed is retried when due from the store, even though
    the deliveries handed over meanwhile need no look at the store."""
    store = await Store.open(tmp_path / "store.sqlite3")
    handler = FlakyHandler(failures=1)
    inbox = WebhookInbox(handler, store, first_retry=0.05)  # type: ignore[arg-type]
    try:
        inbox.start()
        assert await inbox.take("issue_comment", comment_hook(20), "d-failing") == 1
        await wait_until(lambda: handler.calls == 1, what="the first, failing decision")
        assert await inbox.take("issue_comment", comment_hook(21), "d-next") == 1
        await wait_until(lambda: handler.calls >= 3, what="the retry and the next delivery")
        await wait_until(lambda: kept_deliveries(tmp_path / "store.sqlite3") == 0)
        assert await store.pending_webhooks() == []
    finally:
        await inbox.close()
        await store.close()


class HoldWatchingHandler(FlakyHandler):
    """Notes, while it decides, how many precedence holds are open."""

    def __init__(self) -> None:
        super().__init__(failures=0)
        self.holds: list[int] = []

    async def handle(self, event: object) -> Decision:
        self.holds.append(PRECEDENCE.open_holds)
        return await super().handle(event)


async def test_deciding_a_delivery_holds_the_agents_streams(tmp_path: Path) -> None:
    """Its way to the 👀 goes before the agents' output (claude_hooks/precedence.py)."""
    store = await Store.open(tmp_path / "store.sqlite3")
    handler = HoldWatchingHandler()
    inbox = WebhookInbox(handler, store, first_retry=0.01)  # type: ignore[arg-type]
    before = PRECEDENCE.open_holds
    try:
        inbox.start()
        await inbox.take("issue_comment", COMMENT_HOOK, "d-1")
        await wait_until(lambda: kept_deliveries(tmp_path / "store.sqlite3") == 0)
    finally:
        await inbox.close()
        await store.close()
    assert handler.holds == [before + 1]
    assert PRECEDENCE.open_holds == before


async def test_a_delivery_kept_as_the_inbox_starts_is_decided_once(tmp_path: Path) -> None:
    """The start's read of the store brought the row the API was handing over: it was
    decided twice, reading the thread from Forgejo twice (harmless, not free)."""
    store = await Store.open(tmp_path / "store.sqlite3")
    handler = FlakyHandler(failures=0)
    inbox = WebhookInbox(handler, store, first_retry=0.01)  # type: ignore[arg-type]
    try:
        inbox.start()  # its first read of the store queues behind the delivery's write
        await inbox.take("issue_comment", COMMENT_HOOK, "d-1")
        await wait_until(lambda: kept_deliveries(tmp_path / "store.sqlite3") == 0)
        await inbox.take("issue_comment", comment_hook(5), "d-2")  # one more turn of it
        await wait_until(lambda: handler.calls >= 2)
        await wait_until(lambda: kept_deliveries(tmp_path / "store.sqlite3") == 0)
    finally:
        await inbox.close()
        await store.close()
    assert handler.calls == 2
