"""Durable state: tasks, their event logs, the poller's cursors, undecided webhooks, in SQLite.

The only package with SQL. Read it in this order: schema.py (the tables and
their migrations), db.py (the connection and every query), writer.py (the thread it runs on),
events.py (the per-task event cap and the batching sink), facade.py (`Store`,
the async API everyone else calls).
"""

from claude_hooks.store.db import (
    CRASH_INTERRUPTION,
    MAX_INTERRUPTIONS,
    InvalidTransition,
    RecoveryReport,
    Spend,
    StoredWebhook,
    StoreError,
    TaskNotFound,
)
from claude_hooks.store.events import EventCap, EventSink
from claude_hooks.store.facade import Store
from claude_hooks.store.schema import SCHEMA_VERSION

__all__ = [
    "CRASH_INTERRUPTION",
    "MAX_INTERRUPTIONS",
    "SCHEMA_VERSION",
    "EventCap",
    "EventSink",
    "InvalidTransition",
    "RecoveryReport",
    "Spend",
    "Store",
    "StoreError",
    "StoredWebhook",
    "TaskNotFound",
]
