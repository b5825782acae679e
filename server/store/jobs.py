"""The job store: every request the server accepted, its state, logs and outcome, and the one owner of its changes.

Everything else in the server talks to :class:`JobStore` only. Its logic is written once, in SQL that SQLite and
PostgreSQL both run; the SQLite store (the embedded default, jobs survive a restart) supplies its connection here,
``server/store/postgres.py`` the shared, multi-node one.

**Transitions.** A job is queued, claimed by a worker, reports progress (log lines, its control video, its live
preview and checkpoints), may be asked
to cancel, may be handed back to the queue, and ends (completed, failed or cancelled). Every one of these goes through
a method of the store, and the store announces it once it is committed to the one :class:`ChangeSink` the node wired
(``announce_to``), which wakes idle workers, status streams and sync requests and schedules webhooks. Nobody else
announces anything. How the announcement travels is the engine's: SQLite's store calls the sink after its commit, in
the process that wrote (a worker process relays it to its node, ``server/runtime/worker_process.py``), and PostgreSQL's
triggers notify every listening process (``server/store/postgres.py``).

**Leases.** A running job is tied to the worker that claimed it by a lease: ``claim(worker_id=..., lease_s=...)``
stamps the job with the worker's id and a time (``lease_expires_at``) until which the job counts as alive, and the
worker renews it every third of a lease (``heartbeat``) while it runs the job. A worker that dies, hangs or loses the
database stops renewing; once the lease has run out, the queue upkeep of any node (``server/runtime/upkeep.py``) hands
the job back to the queue in its old place, the lost run counted (``requeue_expired``), and fails it after
``max_attempts`` runs, since a job that keeps killing its worker must end. A worker that lost its job that way can
record nothing more for it: ``heartbeat``, ``finish`` and ``requeue`` with its ``worker_id`` return False, and it
stops the job. Nodes compare lease times from their own clocks, so in a fleet they must agree (NTP) to well within a
lease. A store that one node owns (SQLite) also has ``recover``: at its start, every running job is an orphan of the
last run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

from .schema import migrate_sqlite

Status = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
Outcome = Literal["ok", "error", "cancelled"]
WebhookState = Literal["pending", "delivered", "failed"]
Priority = Literal["normal", "low"]
Change = Literal["queued", "updated", "ended"]
"""What the store announces about a job: ``queued`` (a worker may claim it: it was submitted or handed back),
``updated`` (claimed, a log line, its control video, a cancel request) or ``ended`` (completed, failed or
cancelled: its webhook, if it has one, is due). PostgreSQL announces an end as ``updated`` and, for a job with a
webhook, ``ended`` when the webhook falls due (again, should a stopping node hand its delivery back)."""
STATES = ("queued", "running", "completed", "failed", "cancelled")
LEVELS = ("STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG")
"""fal's log levels: a status body's ``logs[].level`` is one of these."""


@dataclass(frozen=True)
class Failure:
    """Why a job did not produce output: the HTTP status, body and headers its result request answers with, and
    the error type (one of fal's where one fits; see ``server/fal/failures.py``)."""

    status_code: int
    body: dict[str, Any]
    message: str
    type: str
    headers: dict[str, str] = field(default_factory=dict)


def request_failure(status_code: int, message: str, error_type: str, **headers: str) -> Failure:
    """A failure in fal's request-error shape: ``{detail: message, error_type}``."""
    return Failure(status_code, {"detail": message, "error_type": error_type}, message, error_type, dict(headers))


CANCELLED = request_failure(499, "Request was cancelled", "client_cancelled")


@dataclass(frozen=True)
class Job:
    id: str
    seq: int
    app: str
    task: str
    model: str
    input: dict[str, Any]
    base_url: str
    webhook_url: str | None
    status: Status
    outcome: Outcome | None
    attempts: int
    result: dict[str, Any] | None
    failure: Failure | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    control_video_url: str | None = None
    """The control video that ``preprocess=true`` made, kept for the playground (not part of fal's output)."""
    owner: str | None = None
    """The ``key_id`` of the API key that submitted the job (None with auth off): other keys cannot see it."""
    priority: Priority = "normal"
    """``low`` jobs run after every queued ``normal`` one (``X-Fal-Queue-Priority``)."""
    start_deadline: float | None = None
    """When a job still queued ends as timed out (``X-Fal-Request-Timeout``)."""
    runner_hint: str | None = None
    """``X-Fal-Runner-Hint``: a worker that ran a job with the same hint lately takes this one first (``claim``)."""
    webhook_attempts: int = 0
    webhook_next_at: float | None = None
    """Delivery attempts made so far (each counted before it is sent) and when the next one is due should the last
    fail, so a restart, or a node taking over from a dead one, resumes the back-off where it was."""
    worker_id: str | None = None
    """The worker that claimed the job last (None: claimed without a lease, or never)."""
    lease_expires_at: float | None = None
    """When a running job counts as orphaned unless its worker renews the lease (None: no lease, never)."""
    checkpoint_key: str | None = None
    checkpoint_step: int | None = None
    """The file-store key of the job's newest checkpoint and the step it resumes at (``pipelines.resume``): kept
    while the job runs or waits to run again, cleared when it ends."""
    preview_key: str | None = None
    preview_step: int | None = None
    """The file-store key of the job's newest live preview and the step it shows; cleared when the job ends."""


class ChangeSink(Protocol):
    """Where the store announces its committed transitions; the node wires one (``JobStore.announce_to``)."""

    def announce(self, job_id: str, change: Change) -> None:
        """Job ``job_id`` made a transition; called after the commit, from any thread."""

    def missed(self) -> None:
        """Announcements may have been lost (a listener reconnected): whatever waits on jobs should look again."""


@dataclass(frozen=True)
class LogLine:
    message: str
    level: str
    timestamp: float


_PRIORITIES: dict[str, int] = {"normal": 0, "low": 1}


class StoreLockedError(RuntimeError):
    """Another server process already owns this database."""


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses (sqlite3's and psycopg's both fit); rows read by column name."""

    @property
    def rowcount(self) -> int: ...  # read-only on both drivers' cursors

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """A connection inside one of the store's transactions: ``execute`` takes SQL with ``?`` placeholders."""

    def execute(self, sql: str, args: Sequence[Any] = (), /) -> Cursor: ...


_PRECEDENCE: dict[Change, int] = {"updated": 0, "queued": 1, "ended": 2}


class Transaction:
    """One write transaction of the store: its SQL, and the transitions it made, announced once it commits."""

    def __init__(self, db: Connection) -> None:
        self._db = db
        self.changes: dict[str, Change] = {}
        """Per job, the transition to announce: one per job and transaction, the weightiest (a job re-queued with
        a log line is announced as queued, which wakes its watchers too)."""

    def execute(self, sql: str, args: Sequence[Any] = (), /) -> Cursor:
        return self._db.execute(sql, args)

    def changed(self, job_id: str, change: Change) -> None:
        if job_id not in self.changes or _PRECEDENCE[change] > _PRECEDENCE[self.changes[job_id]]:
            self.changes[job_id] = change


class JobStore(ABC):
    """What the server needs from a job store, in SQL that SQLite and PostgreSQL both run, so that the two stores
    cannot drift apart; their tables are defined once, in ``server/store/schema.py``.

    A subclass supplies transactions (``_tx``), single reads (``_query``), the way its transitions reach the
    node's sink (``announce_to``, ``_committed``) and the row locks its engine needs where several processes share
    the database: ``_LOCK`` for a row about to be changed on what was read (cancel), and ``_LOCK_SKIP`` for claims
    and sweeps, which take rows another process holds as not theirs to take. SQLite needs neither (a write
    transaction locks the whole file).
    """

    _LOCK = ""
    _LOCK_SKIP = ""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def announce_to(self, sink: ChangeSink) -> None:
        """Announce every committed transition of a job, made by this process or (a fleet's store) any other, to
        ``sink``; the node calls this once, before it starts anything that changes jobs."""

    @abstractmethod
    def _committed(self, changes: Mapping[str, Change]) -> None:
        """A write transaction committed ``changes`` (job id: transition)."""

    def relayed(self, job_id: str, change: Change) -> None:
        """A worker process of this node committed a transition that only its own process heard (a store whose
        announcements stay in the process that wrote, SQLite's) and relayed it here: announce it as if written
        here."""
        self._committed({job_id: change})

    @contextlib.contextmanager
    def _write(self) -> Iterator[Transaction]:
        """A write transaction whose transitions are announced once it has committed (never if it rolls back)."""
        with self._tx() as db:
            tx = Transaction(db)
            yield tx
        if tx.changes:
            self._committed(tx.changes)

    @abstractmethod
    def _tx(self) -> contextlib.AbstractContextManager[Connection]:
        """One transaction, committed when the block ends and rolled back when it raises."""

    @abstractmethod
    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Mapping[str, Any]]:
        """The rows of one read."""

    def add(
        self,
        *,
        app: str,
        task: str,
        model: str,
        input: dict[str, Any],
        base_url: str,
        webhook_url: str | None,
        owner: str | None = None,
        priority: Priority = "normal",
        start_timeout_s: float | None = None,
        runner_hint: str | None = None,
    ) -> Job:
        job_id = str(uuid.uuid4())
        now = time.time()
        deadline = now + start_timeout_s if start_timeout_s is not None else None
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (id, app, task, model, input, base_url, webhook_url, status, created_at, owner,"
                " priority, start_deadline, runner_hint) VALUES (?, ?, ?, ?, ?, ?, ?, 'IN_QUEUE', ?, ?, ?, ?, ?)",
                (
                    job_id,
                    app,
                    task,
                    model,
                    json.dumps(input),
                    base_url,
                    webhook_url,
                    now,
                    owner,
                    _PRIORITIES[priority],
                    deadline,
                    runner_hint,
                ),
            )
            db.changed(job_id, "queued")
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def queue_position(self, job: Job) -> int:
        """How many queued jobs run before ``job`` (0: it is next): every queued job of a higher priority, and the
        older ones of its own."""
        rank = _PRIORITIES[job.priority]
        rows = self._query(
            "SELECT COUNT(*) AS n FROM jobs WHERE status = 'IN_QUEUE' AND (priority < ? OR (priority = ? AND seq < ?))",
            (rank, rank, job.seq),
        )
        return int(rows[0]["n"])

    def claim(
        self,
        *,
        worker_id: str | None = None,
        lease_s: float | None = None,
        models: Collection[str] | None = None,
        loaded: Collection[str] = (),
        hints: Collection[str] = (),
        switch_after_s: float = 0.0,
    ) -> Job | None:
        """Take the next queued job (normal before low, oldest first) and mark it running (one more attempt).

        ``worker_id`` and ``lease_s`` tie the job to its worker for ``lease_s`` seconds, renewed by
        :meth:`heartbeat`; without them the job has no lease and only :meth:`recover` takes it back. ``models``
        (when given) limits the claim to jobs for those models, the ones this worker can serve.

        Within a priority, a job this worker is the better place for goes first: one whose runner hint is in
        ``hints`` (the hints of the jobs it ran lately), then one for a model in ``loaded`` (a 14B model switch
        costs minutes of loading). The preference is bounded so that no job starves: a job that has waited
        ``switch_after_s`` or longer is never passed over (the old ones run oldest first), so a preferred job
        jumps ahead only of jobs younger than that; 0 turns the preference off.
        """
        now = time.time()
        lease = now + lease_s if lease_s is not None else None
        only: tuple[str, ...] = tuple(models) if models is not None else ()
        if models is not None and not only:
            return None
        for_models = f" AND model IN ({_marks(only)})" if only else ""
        # One CASE ranks the queued jobs: waited too long, hinted here, model loaded here, the rest.
        hinted, warm = tuple(hints), tuple(loaded)
        rank = "CASE WHEN created_at <= ? THEN 0"
        if hinted:
            rank += f" WHEN runner_hint IN ({_marks(hinted)}) THEN 1"
        if warm:
            rank += f" WHEN model IN ({_marks(warm)}) THEN 2"
        rank += " ELSE 3 END"
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET status = 'IN_PROGRESS', attempts = attempts + 1, started_at = ?, worker_id = ?,"
                " lease_expires_at = ? WHERE seq = (SELECT seq FROM jobs WHERE status = 'IN_QUEUE' AND"
                f" (start_deadline IS NULL OR start_deadline > ?){for_models} ORDER BY priority, {rank}, seq"
                f" LIMIT 1{self._LOCK_SKIP}) RETURNING *",
                (now, worker_id, lease, now, *only, now - switch_after_s, *hinted, *warm),
            ).fetchone()
            if row is not None:
                db.changed(row["id"], "updated")
        return _job(row) if row is not None else None

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> bool:
        """Renew the lease of a job that ``worker_id`` is running, for ``lease_s`` more seconds.

        False when the job is no longer this worker's (another node handed it back after the lease ran out, or it
        ended, e.g. cancelled while queued again): the worker must stop it and record nothing. A lease that ran out
        but that no node has acted on yet is renewed.
        """
        with self._tx() as db:
            return (
                db.execute(
                    "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND status = 'IN_PROGRESS' AND worker_id = ?",
                    (time.time() + lease_s, job_id, worker_id),
                ).rowcount
                == 1
            )

    def finish(
        self,
        job_id: str,
        *,
        result: dict[str, Any] | None = None,
        failure: Failure | None = None,
        cancelled: bool = False,
        worker_id: str | None = None,
    ) -> bool:
        """Record a job's end: ``result`` on success, else ``failure`` (``cancelled`` marks a user's cancel).

        With ``worker_id`` only while that worker still holds the job, so a worker that lost it (its lease ran
        out and another node took it back) never completes it a second time; a lease that ran out but that no node
        has acted on yet still counts as held. Returns whether it was recorded.
        """
        with self._write() as db:
            return _complete(
                db,
                job_id,
                result=result,
                failure=CANCELLED if cancelled else failure,
                cancelled=cancelled,
                worker_id=worker_id,
            )

    def requeue(self, job_id: str, reason: str, *, worker_id: str | None = None) -> bool:
        """Give a running job back to the queue, in its old place, without counting the interrupted run (a graceful
        stop). With ``worker_id`` only while that worker holds it. Returns whether the job was handed back."""
        owned = " AND worker_id = ?" if worker_id is not None else ""
        with self._write() as db:
            handed_back = (
                db.execute(
                    "UPDATE jobs SET status = 'IN_QUEUE',"
                    " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,"
                    f" started_at = NULL, worker_id = NULL, lease_expires_at = NULL WHERE id = ? AND"
                    f" status = 'IN_PROGRESS'{owned}",
                    (job_id, worker_id) if worker_id is not None else (job_id,),
                ).rowcount
                == 1
            )
            if handed_back:
                _insert_log(db, job_id, reason, "WARN")
                db.changed(job_id, "queued")
        return handed_back

    def request_cancel(self, job_id: str) -> Job | None:
        """Cancel a job: a queued one ends now and never runs; a running one is flagged for its worker.

        Returns the job as it was before the call, or None if it does not exist.
        """
        job = self.get(job_id)
        if job is None or job.status == "COMPLETED":
            return job
        with self._write() as db:
            status = db.execute(f"SELECT status FROM jobs WHERE id = ?{self._LOCK}", (job_id,)).fetchone()["status"]
            if status == "COMPLETED":  # it ended between the two reads
                return job
            db.execute("UPDATE jobs SET cancel_requested = TRUE WHERE id = ?", (job_id,))
            _insert_log(db, job_id, "cancellation requested", "WARN")
            if status == "IN_QUEUE":
                _complete(db, job_id, failure=CANCELLED, cancelled=True)
        return job

    def cancel_requested(self, job_id: str) -> bool:
        rows = self._query("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0]["cancel_requested"])

    def log(self, job_id: str, message: str, level: str = "INFO") -> None:
        with self._write() as db:
            _insert_log(db, job_id, message, level)

    def set_control_video(self, job_id: str, url: str | None) -> None:
        with self._write() as db:
            if db.execute("UPDATE jobs SET control_video_url = ? WHERE id = ?", (url, job_id)).rowcount:
                db.changed(job_id, "updated")

    def set_checkpoint(self, job_id: str, worker_id: str, key: str, step: int) -> tuple[bool, str | None]:
        """Make ``key`` the newest checkpoint of the job that ``worker_id`` runs (after ``step`` steps). Returns
        whether it was recorded (not when the job is no longer this worker's) and the key it replaced, whose file the
        caller deletes."""
        return self._replace_file(job_id, worker_id, "checkpoint", key, step)

    def set_preview(self, job_id: str, worker_id: str, key: str, step: int) -> tuple[bool, str | None]:
        """Make ``key`` the newest live preview of the job that ``worker_id`` runs (showing ``step``), announced as
        an update; returns as :meth:`set_checkpoint` does."""
        return self._replace_file(job_id, worker_id, "preview", key, step)

    def _replace_file(
        self, job_id: str, worker_id: str, kind: Literal["checkpoint", "preview"], key: str, step: int
    ) -> tuple[bool, str | None]:
        with self._write() as db:
            row = db.execute(
                f"SELECT {kind}_key FROM jobs WHERE id = ? AND status = 'IN_PROGRESS' AND worker_id = ?{self._LOCK}",
                (job_id, worker_id),
            ).fetchone()
            if row is None:
                return False, None
            db.execute(f"UPDATE jobs SET {kind}_key = ?, {kind}_step = ? WHERE id = ?", (key, step, job_id))
            if kind == "preview":
                db.changed(job_id, "updated")
        return True, row[f"{kind}_key"]

    def logs(self, job_id: str) -> list[LogLine]:
        rows = self._query("SELECT message, level, timestamp FROM logs WHERE job_id = ? ORDER BY seq", (job_id,))
        return [LogLine(r["message"], r["level"], r["timestamp"]) for r in rows]

    def counts(self) -> dict[str, int]:
        """Jobs per state (every state present, zero included)."""
        counts = dict.fromkeys(STATES, 0)
        rows = self._query("SELECT status, outcome, COUNT(*) AS n FROM jobs GROUP BY status, outcome")
        for r in rows:
            if r["status"] == "IN_QUEUE":
                counts["queued"] += r["n"]
            elif r["status"] == "IN_PROGRESS":
                counts["running"] += r["n"]
            else:
                counts[{"ok": "completed", "cancelled": "cancelled"}.get(r["outcome"], "failed")] += r["n"]
        return counts

    def queue_depths(self) -> dict[tuple[str, str, Priority], int]:
        """Queued jobs per ``(app, task, priority)``: what an autoscaler scales GPU workers on (only the keys that
        have jobs)."""
        rows = self._query(
            "SELECT app, task, priority, COUNT(*) AS n FROM jobs WHERE status = 'IN_QUEUE' GROUP BY app, task, priority"
        )
        return {(r["app"], r["task"], "low" if r["priority"] else "normal"): int(r["n"]) for r in rows}

    def worker_seen(self, worker_id: str, info: dict[str, Any]) -> None:
        """Record that a worker is alive and what it holds (``info``: node, device, models, current job), for the
        fleet view of ``/ready``."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO workers (id, info, last_seen) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " info = excluded.info, last_seen = excluded.last_seen",
                (worker_id, json.dumps(info), time.time()),
            )

    def live_workers(self, seen_after: float) -> list[dict[str, Any]]:
        """The workers seen since ``seen_after``, each ``info`` with its ``id`` and ``last_seen``."""
        rows = self._query("SELECT id, info, last_seen FROM workers WHERE last_seen > ? ORDER BY id", (seen_after,))
        return [{"id": r["id"], **json.loads(r["info"]), "last_seen": r["last_seen"]} for r in rows]

    def recover(self, max_attempts: int) -> list[str]:
        """After a crash: re-queue the jobs that were running, or fail those that already had ``max_attempts``,
        and free the webhook deliveries the last run was making (due at once, or when their back-off ends).

        Every running job counts as orphaned, so this is for a store that one process owns (SQLite's lock
        ensures it); where several processes share the database, :meth:`requeue_expired` is the one to call.
        Returns the ids of the jobs it touched.
        """
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET webhook_owner = NULL, webhook_lease_until = NULL WHERE webhook_state = 'pending'"
            )
            return self._hand_back(db, "", (), max_attempts, "the server stopped while this job was running")

    def requeue_expired(self, max_attempts: int) -> list[str]:
        """Hand the running jobs whose lease ran out (their worker died or lost the database) back to the queue,
        in their old place, the lost run counted; fail those that already had ``max_attempts``, since a job that
        keeps killing its worker must end. Any node may call it at any time. Returns the ids of the jobs it
        touched."""
        with self._write() as db:
            return self._hand_back(
                db,
                " AND lease_expires_at < ?",
                (time.time(),),
                max_attempts,
                "the worker running this job stopped renewing its lease",
            )

    def hand_back(self, job_id: str | None, worker_id: str, max_attempts: int, cause: str) -> bool:
        """Word that ``worker_id``'s run of ``job_id`` was interrupted (a rank of its group died; with None: the
        worker's process died, whatever it held): re-queue it or fail it under the same attempt rules as
        :meth:`requeue_expired`, now rather than after the lease. Only while ``worker_id`` holds it; returns
        whether it did."""
        where, args = (
            (" AND id = ? AND worker_id = ?", (job_id, worker_id)) if job_id else (" AND worker_id = ?", (worker_id,))
        )
        with self._write() as db:
            return bool(self._hand_back(db, where, args, max_attempts, cause))

    def _hand_back(
        self, db: Transaction, where: str, args: tuple[Any, ...], max_attempts: int, cause: str
    ) -> list[str]:
        """Re-queue or fail the running jobs that match ``where``, saying ``cause`` in their logs."""
        touched = []
        rows = db.execute(
            f"SELECT id, attempts FROM jobs WHERE status = 'IN_PROGRESS'{where} ORDER BY seq{self._LOCK_SKIP}", args
        ).fetchall()
        for row in rows:
            job_id, attempts = row["id"], row["attempts"]
            touched.append(job_id)
            if attempts < max_attempts:
                db.execute(
                    "UPDATE jobs SET status = 'IN_QUEUE', started_at = NULL, worker_id = NULL,"
                    " lease_expires_at = NULL WHERE id = ?",
                    (job_id,),
                )
                _insert_log(db, job_id, f"{cause} (run {attempts} of at most {max_attempts}); re-queued", "WARN")
                db.changed(job_id, "queued")
                continue
            reason = f"{cause}, {attempts} times; it is not retried again"
            _complete(db, job_id, failure=request_failure(503, reason, "runner_disconnected"))
            _insert_log(db, job_id, reason, "ERROR")
        return touched

    def expire_unstarted(self) -> list[str]:
        """End the queued jobs whose start timeout passed (fal's 504 ``request_timeout``, the user's own timeout);
        returns their ids."""
        now = time.time()
        expired = []
        with self._write() as db:
            rows = db.execute(
                "SELECT id, start_deadline, created_at FROM jobs WHERE status = 'IN_QUEUE' AND"
                f" start_deadline <= ? ORDER BY seq{self._LOCK_SKIP}",
                (now,),
            ).fetchall()
            for row in rows:
                waited = row["start_deadline"] - row["created_at"]
                reason = f"the request did not start within its start timeout of {waited:g} s"
                _complete(
                    db,
                    row["id"],
                    failure=request_failure(504, reason, "request_timeout", **{"x-fal-request-timeout-type": "user"}),
                )
                _insert_log(db, row["id"], reason, "ERROR")
                expired.append(row["id"])
        return expired

    def pending_webhooks(self) -> list[Job]:
        """The webhooks still to deliver that no node is delivering: never claimed, or the claim ran out (the node
        that held it died or lost the database)."""
        rows = self._query(
            "SELECT * FROM jobs WHERE webhook_state = 'pending' AND (webhook_lease_until IS NULL OR"
            " webhook_lease_until < ?) ORDER BY seq",
            (time.time(),),
        )
        return [_job(r) for r in rows]

    def claim_webhook(self, job_id: str, node_id: str, lease_s: float) -> Job | None:
        """Take the delivery of ``job_id``'s webhook for node ``node_id``, or renew the claim it holds: until
        ``lease_s`` seconds past its next attempt (now, or the back-off's ``webhook_next_at``). Only one node holds
        a delivery at a time, so two nodes never deliver a webhook at once; a claim that ran out may be taken by
        any node. Returns the job, or None when the webhook is not pending or another node holds it."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "UPDATE jobs SET webhook_owner = ?, webhook_lease_until = (CASE WHEN webhook_next_at > ? THEN"
                " webhook_next_at ELSE ? END) + ? WHERE id = ? AND webhook_state = 'pending' AND"
                " (webhook_owner IS NULL OR webhook_owner = ? OR webhook_lease_until < ?) RETURNING *",
                (node_id, now, now, lease_s, job_id, node_id, now),
            ).fetchone()
        return _job(row) if row is not None else None

    def set_webhook_state(self, job_id: str, state: WebhookState, *, node_id: str | None = None) -> bool:
        """Record a delivery's end, releasing its claim; with ``node_id`` only while that node holds it (a node
        whose claim was taken over records nothing). Returns whether it was recorded."""
        owned = " AND webhook_owner = ?" if node_id is not None else ""
        with self._tx() as db:
            return (
                db.execute(
                    "UPDATE jobs SET webhook_state = ?, webhook_owner = NULL, webhook_lease_until = NULL"
                    f" WHERE id = ?{owned}",
                    (state, job_id, node_id) if node_id is not None else (state, job_id),
                ).rowcount
                == 1
            )

    def webhook_attempt(self, job_id: str, attempt: int, next_at: float, *, node_id: str, lease_s: float) -> bool:
        """Count delivery attempt ``attempt`` (1-based) before it is sent, so that a node dying during it has used
        it up; should it fail, the next is due at ``next_at``, and node ``node_id`` keeps its claim until ``lease_s``
        past that. Returns False, recording nothing, when the node no longer holds the pending delivery."""
        with self._tx() as db:
            return (
                db.execute(
                    "UPDATE jobs SET webhook_attempts = ?, webhook_next_at = ?, webhook_lease_until = ?"
                    " WHERE id = ? AND webhook_owner = ? AND webhook_state = 'pending'",
                    (attempt, next_at, next_at + lease_s, job_id, node_id),
                ).rowcount
                == 1
            )

    def release_webhooks(self, node_id: str) -> int:
        """Give up the deliveries node ``node_id`` holds (it is stopping): any live node takes them up at its next
        sweep, when their back-off ends, instead of after the claim runs out. Returns how many were released."""
        with self._tx() as db:
            return db.execute(
                "UPDATE jobs SET webhook_owner = NULL, webhook_lease_until = NULL WHERE"
                " webhook_state = 'pending' AND webhook_owner = ?",
                (node_id,),
            ).rowcount

    def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first."""
        return [_job(r) for r in self._query("SELECT * FROM jobs WHERE status != 'COMPLETED' ORDER BY seq")]

    def purge(self, finished_before: float) -> int:
        """Delete the jobs (and their logs) that ended before ``finished_before``; a job whose webhook is still
        being delivered stays until it is. Returns how many were deleted."""
        with self._tx() as db:
            where = "status = 'COMPLETED' AND finished_at < ? AND (webhook_state IS NULL OR webhook_state != 'pending')"
            db.execute(f"DELETE FROM logs WHERE job_id IN (SELECT id FROM jobs WHERE {where})", (finished_before,))
            return db.execute(f"DELETE FROM jobs WHERE {where}", (finished_before,)).rowcount

    def rename_owners(self, renamed: Mapping[str, str]) -> int:
        """Record the jobs of owner ``old`` as ``renamed[old]``'s (owner ids as earlier releases made them, see
        ``server/api/auth.py``); returns how many jobs changed. Idempotent: a renamed job no longer matches."""
        pairs, changed = list(renamed.items()), 0
        with self._tx() as db:
            for start in range(0, len(pairs), 500):  # one scan per 500 keys, within both engines' parameter limits
                chunk = pairs[start : start + 500]
                cases, marks = " ".join("WHEN ? THEN ?" for _ in chunk), ", ".join("?" for _ in chunk)
                changed += db.execute(
                    f"UPDATE jobs SET owner = CASE owner {cases} END WHERE owner IN ({marks})",
                    (*[v for pair in chunk for v in pair], *[old for old, _ in chunk]),
                ).rowcount
        return changed


class SqliteJobStore(JobStore):
    """:class:`JobStore` in one SQLite file (WAL mode: readers never wait for a writer, and writers in several
    processes take turns).

    The file belongs to one node: the node's process opens it as its ``owner`` (an exclusive lock file enforces one
    owner, and at start every running job is an orphan of the last run, ``recover``), and the node's worker
    processes, which the node starts after recovering, open it as members (``owner=False``).
    """

    def __init__(self, path: Path, *, owner: bool = True) -> None:
        self._lock_file = self._lock(path) if owner else None
        # A write waits for another process's write (each a few milliseconds) rather than failing at once.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash, which is what we need
        if owner:
            migrate_sqlite(self._db)
        self._mutex = threading.Lock()
        self._sink: ChangeSink | None = None

    @staticmethod
    def _lock(path: Path) -> TextIO:
        """Take the file for this node (the lock is held for the store's life) and create it, owner-only."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = path.with_name(path.name + ".lock")
        lock_file = os.fdopen(os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600), "w")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise StoreLockedError(f"{path} is in use by another vace server (one server per data directory)") from None
        # Prompts, webhook URLs and file URLs are the users' own: the database is its owner's only (SQLite gives
        # its -wal and -shm files the database file's mode).
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        path.chmod(0o600)
        return lock_file

    def close(self) -> None:
        with self._mutex:
            self._db.close()
            if self._lock_file is not None:
                self._lock_file.close()

    def announce_to(self, sink: ChangeSink) -> None:
        """SQLite has no notifications: the store tells ``sink`` itself, after each commit, in the process that
        wrote. A worker process's sink relays to its node, which announces there (:meth:`relayed`)."""
        self._sink = sink

    def _committed(self, changes: Mapping[str, Change]) -> None:
        if self._sink is not None:
            for job_id, change in changes.items():
                self._sink.announce(job_id, change)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Mapping[str, Any]]:
        with self._mutex:
            return self._db.execute(sql, args).fetchall()


def _complete(
    db: Transaction,
    job_id: str,
    *,
    result: dict[str, Any] | None = None,
    failure: Failure | None = None,
    cancelled: bool = False,
    worker_id: str | None = None,
) -> bool:
    """Mark a job COMPLETED (with ``worker_id``: only while that worker holds it); its webhook (if any) becomes
    due, and it no longer names a checkpoint or a preview (whoever ends it deletes those files; retention sweeps
    what a job that ended elsewhere left). Returns whether the job was marked."""
    outcome: Outcome = "cancelled" if cancelled else ("ok" if failure is None else "error")
    owned = " AND status = 'IN_PROGRESS' AND worker_id = ?" if worker_id is not None else ""
    args = (outcome, _dumps(result), _dumps(failure.__dict__ if failure else None), time.time(), job_id)
    ended = (
        db.execute(
            "UPDATE jobs SET status = 'COMPLETED', outcome = ?, result = ?, failure = ?, finished_at = ?,"
            " checkpoint_key = NULL, checkpoint_step = NULL, preview_key = NULL, preview_step = NULL,"
            f" webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END WHERE id = ?{owned}",
            (*args, worker_id) if worker_id is not None else args,
        ).rowcount
        == 1
    )
    if ended:
        db.changed(job_id, "ended")
    return ended


def _insert_log(db: Transaction, job_id: str, message: str, level: str) -> None:
    db.execute(
        "INSERT INTO logs (job_id, timestamp, level, message) VALUES (?, ?, ?, ?)",
        (job_id, time.time(), level, message),
    )
    db.changed(job_id, "updated")


def _marks(values: Sequence[Any]) -> str:
    """The ``?, ?, ...`` of an ``IN (...)`` list of ``values`` (never empty: PostgreSQL refuses ``IN ()``)."""
    return ", ".join("?" * len(values))


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


_DECODE: dict[str, Callable[[Any], Any]] = {
    "input": json.loads,
    "result": lambda text: json.loads(text) if text else None,
    "failure": lambda text: Failure(**json.loads(text)) if text else None,  # older rows lack "headers": the default
    "priority": lambda rank: "low" if rank else "normal",
}
"""How a column's value becomes its ``Job`` field, where the two differ (JSON text, the priority's rank)."""


def _job(row: Mapping[str, Any]) -> Job:
    """A row of the job table as a :class:`Job`: each field read from the column of its name."""
    return Job(**{f.name: _DECODE.get(f.name, _same)(row[f.name]) for f in fields(Job)})


def _same(value: Any) -> Any:
    return value
