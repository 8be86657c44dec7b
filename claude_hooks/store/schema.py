"""The task store's schema: forward migrations, applied in order at open.

PRAGMA user_version is how many migrations a database has run. Append, never
edit: a released migration is part of somebody's database. A database newer
than this code is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3

import structlog

log = structlog.get_logger(__name__)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: tasks and their event log
    (
        """CREATE TABLE tasks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            idempotency_key TEXT NOT NULL UNIQUE,
            agent TEXT NOT NULL,
            kind TEXT NOT NULL,
            source TEXT NOT NULL,
            repo TEXT NOT NULL,
            number INTEGER,
            is_pull INTEGER NOT NULL DEFAULT 0,
            requested_by TEXT NOT NULL,
            request TEXT NOT NULL,
            comment_id INTEGER,
            review_id INTEGER,
            head_sha TEXT,
            hop INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            session_id TEXT,
            result TEXT,
            error TEXT,
            cost_usd REAL,
            num_turns INTEGER,
            duration_ms INTEGER
        )""",
        "CREATE INDEX tasks_by_state ON tasks (state, id)",
        "CREATE INDEX tasks_by_thread ON tasks (agent, repo, number, id)",
        """CREATE TABLE task_events (
            task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,
            type TEXT NOT NULL,
            summary TEXT NOT NULL,
            data TEXT,
            PRIMARY KEY (task_id, seq)
        ) WITHOUT ROWID""",
    ),
    # 2: reporting and recovery bookkeeping, poller watermarks
    (
        "ALTER TABLE tasks ADD COLUMN tracking_comment_id INTEGER",
        "ALTER TABLE tasks ADD COLUMN links TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE tasks ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE cursors (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
    ),
    # 3: deferred tasks (back in the queue until a time) and paused agents
    (
        "ALTER TABLE tasks ADD COLUMN not_before REAL",
        "ALTER TABLE tasks ADD COLUMN deferrals INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE agent_pauses (
            agent TEXT PRIMARY KEY,
            until REAL NOT NULL,
            reason TEXT NOT NULL,
            cause TEXT NOT NULL
        )""",
    ),
    # 4: webhook deliveries taken but not yet decided.
    # The API answers once a delivery is here; the intake decides from this row in
    # the background (again after a restart) and deletes it once decided.
    (
        """CREATE TABLE webhook_inbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            delivery TEXT UNIQUE,
            event TEXT NOT NULL,
            payload TEXT NOT NULL,
            received_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0
        )""",
    ),
    # 5: outages (when a task's run of deferrals began) and the outbox of final reports
    # (NULL: the final state is not yet shown on the thread; older tasks count as shown)
    (
        "ALTER TABLE tasks ADD COLUMN deferred_since REAL",
        "ALTER TABLE tasks ADD COLUMN final_reported_at REAL",
        "UPDATE tasks SET final_reported_at = COALESCE(finished_at, created_at)"
        " WHERE state IN ('succeeded', 'failed', 'cancelled')",
    ),
    # 6: what each run cost, when it ended (the daily budget's window): a ledger, so a
    # run deferred by a usage limit, then resumed, or a task retried, still counts
    (
        """CREATE TABLE run_costs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
            agent TEXT NOT NULL,
            at REAL NOT NULL,
            cost_usd REAL NOT NULL
        )""",
        "CREATE INDEX run_costs_by_agent ON run_costs (agent, at)",
    ),
    # 7: the engine of an engine pool a task last ran on (issue 18): the thread's working
    # tree and Claude session are there, so a follow-up goes there too, after a restart
    ("ALTER TABLE tasks ADD COLUMN engine TEXT",),
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations up to `target`, each in its own transaction."""
    current: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {current} is newer than this claude-hooks knows "
            f"({SCHEMA_VERSION}); upgrade claude-hooks"
        )
    for version in range(current + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("store_migrated", version=version)
    return max(current, target)
