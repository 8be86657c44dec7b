"""Webhook delivery the way Forgejo sends it (services/webhook/shared/payloader.go).

Each event is POSTed as JSON to every matching hook, one delivery at a time and
in the order the events happened; a failing receiver is recorded, never retried,
and never holds up the simulator itself.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import uuid
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import structlog

log = structlog.get_logger(__name__)

DELIVERY_TIMEOUT = 10.0


@dataclass(frozen=True)
class HookEvent:
    event: str  # X-Forgejo-Event, e.g. issue_comment
    event_type: str  # X-Forgejo-Event-Type, e.g. pull_request_comment
    payload: dict[str, Any]


@dataclass(frozen=True)
class Webhook:
    id: int
    url: str
    secret: str
    events: frozenset[str] | None  # None: every event

    def wants(self, event: HookEvent) -> bool:
        if self.events is None:
            return True
        return event.event in self.events or event.event_type in self.events


@dataclass(frozen=True)
class Delivery:
    hook_id: int
    url: str
    delivery_id: str
    event: str
    event_type: str
    body: bytes
    status: int | None  # None: the receiver did not answer
    error: str = ""

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


def sign(body: bytes, secret: str, algorithm: str = "sha256") -> str:
    """Hex HMAC of the payload bytes; empty when the hook has no secret (as Forgejo)."""
    if not secret:
        return ""
    return hmac.new(secret.encode(), body, algorithm).hexdigest()


def delivery_headers(
    event: HookEvent, body: bytes, secret: str, delivery_id: str
) -> dict[str, str]:
    signature = sign(body, secret)
    sha1 = sign(body, secret, "sha1")
    headers = {"Content-Type": "application/json", "User-Agent": "Go-http-client/1.1"}
    for vendor in ("Forgejo", "Gitea", "Gogs"):
        headers[f"X-{vendor}-Delivery"] = delivery_id
        headers[f"X-{vendor}-Event"] = event.event
        headers[f"X-{vendor}-Event-Type"] = event.event_type
        headers[f"X-{vendor}-Signature"] = signature
    headers["X-GitHub-Delivery"] = delivery_id
    headers["X-GitHub-Event"] = event.event
    headers["X-GitHub-Event-Type"] = event.event_type
    headers["X-Hub-Signature"] = f"sha1={sha1}" if sha1 else ""
    headers["X-Hub-Signature-256"] = f"sha256={signature}" if signature else ""
    return headers


class WebhookDispatcher:
    """Queues events per registration and delivers them in order from one task."""

    def __init__(self) -> None:
        self.hooks: list[Webhook] = []
        self.deliveries: list[Delivery] = []
        self._queue: asyncio.Queue[tuple[Webhook, HookEvent]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def add(self, url: str, secret: str, events: frozenset[str] | None) -> Webhook:
        hook = Webhook(len(self.hooks) + 1, url, secret, events)
        self.hooks.append(hook)
        return hook

    def emit(self, event: HookEvent) -> None:
        for hook in self.hooks:
            if hook.wants(event):
                self._queue.put_nowait((hook, event))

    async def start(self) -> None:
        # No keep-alive: an idle pooled connection would hold up the receiver's shutdown.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT),
        )
        self._worker = asyncio.create_task(self._run(), name="forgejo-sim-webhooks")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def idle(self) -> None:
        """Wait until every event emitted so far has been delivered (or has failed)."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            hook, event = await self._queue.get()
            try:
                self.deliveries.append(await self._deliver(hook, event))
            except Exception as exc:  # a broken delivery must not stop the ones after it
                log.exception("sim_webhook_crashed", url=hook.url, event=event.event)
                self.deliveries.append(_failed(hook, event, f"{type(exc).__name__}: {exc}"))
            finally:
                self._queue.task_done()

    async def _deliver(self, hook: Webhook, event: HookEvent) -> Delivery:
        assert self._session is not None, "the dispatcher delivers only while started"
        body = json.dumps(event.payload).encode()
        delivery_id = str(uuid.uuid4())
        headers = delivery_headers(event, body, hook.secret, delivery_id)
        record = Delivery(hook.id, hook.url, delivery_id, event.event, event.event_type, body, None)
        try:
            async with self._session.post(hook.url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("sim_webhook_failed", url=hook.url, hook_event=event.event, error=str(exc))
            return replace(record, error=f"{type(exc).__name__}: {exc}")
        log.debug("sim_webhook_delivered", url=hook.url, hook_event=event.event, status=status)
        return replace(record, status=status)


def _failed(hook: Webhook, event: HookEvent, error: str) -> Delivery:
    body = json.dumps(event.payload).encode()
    return Delivery(hook.id, hook.url, "", event.event, event.event_type, body, None, error)
