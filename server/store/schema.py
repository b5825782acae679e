"""The job store's tables, defined once for both engines as numbered migrations.

A database records the steps it has had (the ``schema_migrations`` table) and gets the missing ones when a store
opens it, in order, each in the transaction that records it; a database newer than this code is refused rather
than used with a schema the code does not know. Each step is SQL that SQLite and PostgreSQL both run, with two
types spelled per engine (``{serial}``, an auto-numbered primary key; ``{json}``, a JSON document: jsonb in
PostgreSQL, text in SQLite), plus what only PostgreSQL has: the triggers that announce changes to every process
(``server/store/postgres.py``) and, for a while, the fleet's secrets (steps 5 and 7). A new column of the job table is a
new step here and a field of ``server.store.jobs.Job``, nothing else. Steps are append only: a released step never
changes, since databases record that they have had it.

SQLite databases made before the steps were numbered (releases up to 2026-12) hold the tables of steps 1 to
``UNNUMBERED_SQLITE`` (older ones some of their columns): on first open they are completed from the same steps,
then numbered, so every SQLite database from a previous version opens.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Literal

Engine = Literal["sqlite", "postgres"]

QUEUE_CHANNEL = "vace_queue"
JOB_CHANNEL = "vace_job"
WEBHOOK_CHANNEL = "vace_webhook"
"""PostgreSQL's notification channels, one per kind of announcement (``server/store/postgres.py`` describes them)."""

_TYPES: dict[Engine, dict[str, str]] = {
    "sqlite": {"{serial}": "INTEGER PRIMARY KEY AUTOINCREMENT", "{json}": "TEXT"},
    "postgres": {"{serial}": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "{json}": "JSONB"},
}
VERSIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
)


class StoreUnavailableError(RuntimeError):
    """The database cannot be used: it cannot be reached, or its schema is newer than this code."""


@dataclass(frozen=True)
class Migration:
    """One numbered step: statements both engines run, then those only PostgreSQL runs."""

    both: tuple[str, ...] = ()
    postgres: tuple[str, ...] = ()

    def statements(self, engine: Engine) -> list[str]:
        spelled = []
        for statement in self.both:
            for word, spelling in _TYPES[engine].items():
                statement = statement.replace(word, spelling)
            spelled.append(statement)
        return spelled + list(self.postgres if engine == "postgres" else ())


def _notify_job(*, webhooks: bool, previews: bool = False) -> str:
    """The trigger function that announces a job's transitions on the channels (``webhooks``: from step 8 on,
    ``previews``: from step 9 on, a new live preview is announced like a control video)."""
    announce_end = (
        f"""
        IF NEW.webhook_state = 'pending' AND NEW.webhook_owner IS NULL AND (TG_OP = 'INSERT'
                OR OLD.webhook_state IS DISTINCT FROM 'pending' OR OLD.webhook_owner IS NOT NULL) THEN
            PERFORM pg_notify('{WEBHOOK_CHANNEL}', NEW.id);
        END IF;"""
        if webhooks
        else ""
    )
    previewed, new_preview = (", OLD.preview_key", ", NEW.preview_key") if previews else ("", "")
    return f"""
    CREATE OR REPLACE FUNCTION vace_notify_job() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.status = 'IN_QUEUE' AND (TG_OP = 'INSERT' OR OLD.status <> 'IN_QUEUE') THEN
            PERFORM pg_notify('{QUEUE_CHANNEL}', NEW.id);
        END IF;
        IF TG_OP = 'INSERT' OR (OLD.status, OLD.cancel_requested, OLD.control_video_url{previewed})
                IS DISTINCT FROM (NEW.status, NEW.cancel_requested, NEW.control_video_url{new_preview}) THEN
            PERFORM pg_notify('{JOB_CHANNEL}', NEW.id);
        END IF;{announce_end}
        RETURN NULL;
    END $$"""


MIGRATIONS: tuple[Migration, ...] = (
    # 1: jobs and their logs.
    Migration(
        both=(
            """CREATE TABLE jobs (
            seq {serial},
            id TEXT UNIQUE NOT NULL,
            app TEXT NOT NULL,
            task TEXT NOT NULL,
            model TEXT NOT NULL,
            input {json} NOT NULL,
            base_url TEXT NOT NULL,
            webhook_url TEXT,
            webhook_state TEXT,
            status TEXT NOT NULL,
            outcome TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            result {json},
            failure {json},
            created_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            control_video_url TEXT,
            owner TEXT,
            priority SMALLINT NOT NULL DEFAULT 0,
            start_deadline DOUBLE PRECISION,
            runner_hint TEXT,
            webhook_attempts INTEGER NOT NULL DEFAULT 0,
            webhook_next_at DOUBLE PRECISION
        )""",
            "CREATE INDEX jobs_queue ON jobs (priority, seq) WHERE status = 'IN_QUEUE'",
            "CREATE INDEX jobs_status ON jobs (status, seq)",
            "CREATE INDEX jobs_webhooks ON jobs (seq) WHERE webhook_state = 'pending'",
            """CREATE TABLE logs (
            seq {serial},
            job_id TEXT NOT NULL,
            timestamp DOUBLE PRECISION NOT NULL,
            level TEXT NOT NULL,
            message TEXT NOT NULL
        )""",
            "CREATE INDEX logs_job ON logs (job_id, seq)",
        )
    ),
    # 2: leases tie a running job to its worker, so that another node can take it back when the worker is gone.
    Migration(
        both=(
            "ALTER TABLE jobs ADD COLUMN worker_id TEXT",
            "ALTER TABLE jobs ADD COLUMN lease_expires_at DOUBLE PRECISION",
            "CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE status = 'IN_PROGRESS'",
        )
    ),
    # 3: PostgreSQL announces transitions to every process with triggers (SQLite's store calls its sink itself).
    Migration(
        postgres=(
            _notify_job(webhooks=False),
            "CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION vace_notify_job()",
            f"""CREATE FUNCTION vace_notify_log() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{JOB_CHANNEL}', NEW.job_id);
            RETURN NULL;
        END $$""",
            "CREATE TRIGGER logs_notify AFTER INSERT ON logs FOR EACH ROW EXECUTE FUNCTION vace_notify_log()",
        )
    ),
    # 4: the workers' signs of life, for the fleet view of /ready.
    Migration(
        both=("CREATE TABLE workers (id TEXT PRIMARY KEY, info {json} NOT NULL, last_seen DOUBLE PRECISION NOT NULL)",)
    ),
    # 5: the fleet's secrets, one row per name, written once by the first node (no longer: step 7 drops them).
    Migration(
        postgres=(
            "CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
            "REVOKE ALL ON secrets FROM PUBLIC",
        )
    ),
    # 6: webhook delivery claims, so any node resumes a dead node's deliveries and no two nodes deliver one at once.
    Migration(
        both=(
            "ALTER TABLE jobs ADD COLUMN webhook_owner TEXT",
            "ALTER TABLE jobs ADD COLUMN webhook_lease_until DOUBLE PRECISION",
        )
    ),
    # 7: the fleet's secrets leave the database, which every node reads (server/api/node_secrets.py).
    Migration(postgres=("DROP TABLE IF EXISTS secrets",)),
    # 8: wake-ups for webhooks that fall due, so the API nodes deliver those of jobs that worker nodes ended.
    Migration(postgres=(_notify_job(webhooks=True),)),
    # 9: a running or handed-back job's newest checkpoint (its file's key and the step it resumes at) and its newest
    #    live preview (key and step), both files in the file store; a new preview wakes the status streams.
    Migration(
        both=(
            "ALTER TABLE jobs ADD COLUMN checkpoint_key TEXT",
            "ALTER TABLE jobs ADD COLUMN checkpoint_step INTEGER",
            "ALTER TABLE jobs ADD COLUMN preview_key TEXT",
            "ALTER TABLE jobs ADD COLUMN preview_step INTEGER",
        ),
        postgres=(_notify_job(webhooks=True, previews=True),),
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
UNNUMBERED_SQLITE = 6
"""The step whose tables SQLite databases made before the steps were numbered hold."""


def check_version(current: int) -> None:
    """Refuse a database whose schema is newer than this code."""
    if current > SCHEMA_VERSION:
        raise StoreUnavailableError(
            f"the database's schema is version {current}, newer than this server's "
            f"({SCHEMA_VERSION}): upgrade the server"
        )


def migrate_sqlite(db: sqlite3.Connection) -> int:
    """Bring a SQLite database (a connection in autocommit mode) up to ``SCHEMA_VERSION``, in one transaction that
    holds the file's write lock; returns the version it had (0: a new file)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        db.execute(VERSIONS_TABLE)
        if "jobs" in tables and "schema_migrations" not in tables:
            _number_old_sqlite(db)
        current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
        check_version(current)
        _apply(db, range(current + 1, SCHEMA_VERSION + 1))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return current


def _apply(db: sqlite3.Connection, versions: range) -> None:
    for version in versions:
        for statement in MIGRATIONS[version - 1].statements("sqlite"):
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, time.time()))


def _number_old_sqlite(db: sqlite3.Connection) -> None:
    """Complete a database made before the steps were numbered to step ``UNNUMBERED_SQLITE`` and record the steps:
    every table, column and index that those steps make and it lacks is added, as those steps define it (read off
    a database made from them), so the steps stay the one definition."""
    model = sqlite3.connect(":memory:", isolation_level=None)
    try:
        model.execute(VERSIONS_TABLE)
        _apply(model, range(1, UNNUMBERED_SQLITE + 1))
        for table, sql in model.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND"
            " name NOT IN ('schema_migrations', 'sqlite_sequence')"
        ).fetchall():
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if not have:
                db.execute(sql)
                continue
            for _, column, kind, not_null, default, _ in model.execute(f"PRAGMA table_info({table})"):
                if column not in have:
                    constraints = (" NOT NULL" if not_null else "") + (
                        f" DEFAULT {default}" if default is not None else ""
                    )
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}{constraints}")
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        for index, sql in model.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"):
            if index not in indexes:
                db.execute(sql)
        db.executemany(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
            [(version, time.time()) for version in range(1, UNNUMBERED_SQLITE + 1)],
        )
    finally:
        model.close()
