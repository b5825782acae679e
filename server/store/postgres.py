"""The job store in PostgreSQL: one queue and all job state shared by every API and worker node of a fleet.

The logic is :class:`server.store.jobs.JobStore`'s, the same SQL the SQLite store runs; this module adds what a shared
database needs. Any number of processes on any number of machines open the same database at once (no owner lock):

- **Claims** lock the next queued row with ``FOR UPDATE SKIP LOCKED``, so concurrent workers never take the same
  job and never wait for each other; sweeps (lease expiry, start timeouts) skip the rows another node is handling.
- **Leases** (explained in ``server/store/jobs.py``) replace SQLite's crash recovery: :meth:`recover` would take back
  the jobs that live workers elsewhere are running.
- **The schema** is created and upgraded on start by the numbered steps of ``server/store/schema.py`` (the same steps as
  SQLite's, plus the triggers below); an advisory lock makes nodes that start together apply each step once.
- **Announcements** (``server/store/jobs.py``) cross processes with LISTEN/NOTIFY, and only that way: triggers notify
  inside the transaction that made a change, so a notification arrives only once its change is committed and
  visible, whichever node (or person with psql) made it, and every node's listener hands it to the node's sink:

  ``vace_queue`` (payload: the job id)
      A job became claimable: submitted, handed back after a lost lease or a restart, or requeued on a graceful
      stop. Idle workers listen here instead of polling.
  ``vace_job`` (payload: the job id)
      A job's status, cancel flag or control video changed, or it got a log line: announced as ``updated``, which
      wakes the status streams and sync requests waiting on it.
  ``vace_webhook`` (payload: the job id)
      A job's webhook fell due and no node holds its delivery: the job ended, or the node delivering it stopped.
      Announced as ``ended``, which schedules its delivery on API nodes (they hold the signing key; worker nodes
      deliver nothing).

  Notifications are not stored: a listener that was disconnected missed them, so :class:`NotificationListener`
  calls its ``on_connect`` after every (re)connection for its owner to re-read what it waits for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row, tuple_row
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool, PoolTimeout

from .jobs import Change, ChangeSink, Cursor, JobStore
from .schema import (
    JOB_CHANNEL,
    MIGRATIONS,
    QUEUE_CHANNEL,
    SCHEMA_VERSION,
    VERSIONS_TABLE,
    WEBHOOK_CHANNEL,
    StoreUnavailableError,
    check_version,
)

log = logging.getLogger(__name__)

_CHANGES: dict[str, Change] = {QUEUE_CHANNEL: "queued", JOB_CHANNEL: "updated", WEBHOOK_CHANNEL: "ended"}

# TCP keepalives: a connection whose peer vanished (a dead network, not a restart) fails in seconds, not hours.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}
_MIGRATION_LOCK = 0x7ACE_5C4E  # the advisory lock key that serialises schema changes between nodes


def migrate(conn: psycopg.Connection[Any], to_version: int = SCHEMA_VERSION) -> int:
    """Bring the schema up to ``to_version`` (every step by default); returns the version it had before.

    Safe with several nodes starting at once: the steps run under an advisory lock (in the one transaction that
    records them), so nodes that start together apply each step once.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(VERSIONS_TABLE)
        versions = (
            conn.cursor(row_factory=tuple_row)
            .execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetchone()
        )
        current = int(versions[0]) if versions else 0
        check_version(current)
        for version in range(current + 1, to_version + 1):
            for statement in MIGRATIONS[version - 1].statements("postgres"):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)", (version, time.time()))
    return current


class PostgresJobStore(JobStore):
    """:class:`server.store.jobs.JobStore` in a PostgreSQL database that many processes share (see the module
    docstring).

    ``url`` is a libpq URI, ``postgresql://user:password@host:port/database``. Connections come from a pool (one
    per concurrent call, at most ``max_connections``), each checked before use, so after the database restarts
    the next call reconnects; a call in flight when the connection drops raises ``psycopg.OperationalError``.
    """

    _LOCK = " FOR UPDATE"
    _LOCK_SKIP = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, *, max_connections: int = 8, connect_timeout_s: float = 30) -> None:
        self.url = url
        self._listeners: list[NotificationListener] = []
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs={"autocommit": True, "row_factory": dict_row, **_KEEPALIVES},
            configure=_configure,
            name="vace-jobs",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
            with self._pool.connection() as conn:
                migrate(conn)
        except BaseException as e:
            self._pool.close()
            if isinstance(e, PoolTimeout):
                raise StoreUnavailableError(
                    f"cannot connect to PostgreSQL at {_where(url)} within {connect_timeout_s:g} s"
                ) from e
            raise

    def close(self) -> None:
        for listener in self._listeners:
            listener.stop()
        self._pool.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[_QmarkConnection]:
        with self._pool.connection() as conn, conn.transaction():
            yield _QmarkConnection(conn)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Mapping[str, Any]]:
        with self._pool.connection() as conn:
            return _QmarkConnection(conn).execute(sql, args).fetchall()

    def announce_to(self, sink: ChangeSink) -> None:
        """Hand ``sink`` every transition any process commits, as the triggers notify them; after a reconnection
        (notifications sent meanwhile are lost) tell it that it ``missed`` some."""
        self.listen(_CHANGES, lambda channel, job_id: sink.announce(job_id, _CHANGES[channel]), on_connect=sink.missed)

    def _committed(self, changes: Mapping[str, Change]) -> None:
        """Nothing to do: the triggers announced ``changes`` when they were made, delivered on commit."""

    def notify(self, channel: str, payload: str = "") -> None:
        """Send a notification on ``channel`` to every listening process (e.g. a test's marker); the store's own
        changes notify by themselves (module docstring)."""
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def listen(
        self,
        channels: Iterable[str],
        callback: Callable[[str, str], None],
        *,
        on_connect: Callable[[], None] | None = None,
    ) -> NotificationListener:
        """Start a :class:`NotificationListener` on this database; the store stops it when it closes."""
        listener = NotificationListener(self.url, channels, callback, on_connect=on_connect).start()
        self._listeners.append(listener)
        return listener


class NotificationListener:
    """LISTENs on ``channels`` on a thread with its own connection (outside the pool: a listening connection must
    stay open) and calls ``callback(channel, payload)`` per notification, on that thread.

    When the connection drops (the database restarted, the network failed) it reconnects every ``retry_s`` until
    stopped, then calls ``on_connect``, as it does after the first connection: notifications sent while it was away
    are lost, so the owner re-reads the state it waits on there. A callback that raises is logged and the listener
    goes on.
    """

    def __init__(
        self,
        url: str,
        channels: Iterable[str],
        callback: Callable[[str, str], None],
        *,
        on_connect: Callable[[], None] | None = None,
        retry_s: float = 0.5,
    ) -> None:
        self.url, self.channels, self.callback, self.on_connect = url, tuple(channels), callback, on_connect
        self.retry_s = retry_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vace-pg-listener", daemon=True)

    def start(self) -> NotificationListener:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5) -> None:
        self._stopping.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                conninfo = make_conninfo(self.url, connect_timeout=5, **_KEEPALIVES)
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    for channel in self.channels:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self._call(self.on_connect)
                    while not self._stopping.is_set():
                        # A bounded wait, so that a stop is seen within it.
                        for note in conn.notifies(timeout=0.25):
                            self._call(functools.partial(self.callback, note.channel, note.payload))
            except psycopg.OperationalError as e:
                if not self._stopping.is_set():
                    log.warning(
                        "listening for %s at %s: %s; reconnecting",
                        ", ".join(self.channels),
                        _where(self.url),
                        str(e).strip(),
                    )
                    self._stopping.wait(self.retry_s)

    @staticmethod
    def _call(function: Callable[[], None] | None) -> None:
        if function is None:
            return
        try:
            function()
        except Exception:
            log.exception("a notification callback failed")


class _QmarkConnection:
    """A psycopg connection that takes the shared SQL's ``?`` placeholders (psycopg's own are ``%s``; the shared
    SQL has no ``%`` and no ``?`` of its own)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = (), /) -> Cursor:
        return self._conn.execute(_to_psycopg(sql), args)


@functools.lru_cache(maxsize=256)
def _to_psycopg(sql: str) -> str:
    return sql.replace("?", "%s")


def _configure(conn: psycopg.Connection[Any]) -> None:
    """jsonb columns read as their text: the shared row decoder parses JSON itself, as it does for SQLite."""
    conn.adapters.register_loader("jsonb", TextLoader)


def _where(url: str) -> str:
    """The database's address for messages, without the password."""
    params = conninfo_to_dict(url)
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
