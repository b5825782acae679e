"""The job store protocol, one suite run against both stores (SQLite and PostgreSQL): ordering, priorities, queue
positions, cancel, crash recovery, start timeouts, webhook state, retention, persistence, leases, and the
announcement of every transition once it is committed.

Closing a store and opening the same database again stands for a server restart.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import psycopg
import pytest

from server.store.jobs import Change, Failure, Job, JobStore, SqliteJobStore, StoreLockedError
from server.store.schema import SCHEMA_VERSION, StoreUnavailableError

OpenStore = Callable[[], JobStore]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens the test's own database (each call a new store on the same database); closes them all at the end."""
    if request.param == "sqlite":

        def open_one() -> JobStore:
            return SqliteJobStore(tmp_path / "jobs.sqlite3")
    else:
        from server.store.postgres import PostgresJobStore

        url = request.getfixturevalue("pg_url")

        def open_one() -> JobStore:
            return PostgresJobStore(url)

    opened: list[JobStore] = []

    def open_store() -> JobStore:
        opened.append(open_one())
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> JobStore:
    return open_store()


def add(store: JobStore, webhook: str | None = None, **options: object) -> Job:
    return store.add(
        app="fal-ai/wan-vace-14b",
        task="pose",
        model="wan-vace-14b",
        input={"prompt": "x"},
        base_url="http://h",
        webhook_url=webhook,
        **options,
    )  # type: ignore[arg-type]


def test_fifo_claim_and_queue_positions(store: JobStore) -> None:
    a, b, c = add(store), add(store), add(store)
    assert [store.queue_position(j) for j in (a, b, c)] == [0, 1, 2]
    claimed = store.claim()
    assert claimed is not None and claimed.id == a.id and claimed.status == "IN_PROGRESS" and claimed.attempts == 1
    assert claimed.started_at is not None and claimed.worker_id is None and claimed.lease_expires_at is None
    assert [store.queue_position(j) for j in (b, c)] == [0, 1]
    assert store.counts() == {"queued": 2, "running": 1, "completed": 0, "failed": 0, "cancelled": 0}


def test_normal_priority_before_low_then_fifo(store: JobStore) -> None:
    low1 = add(store, priority="low")
    normal1 = add(store)
    low2 = add(store, priority="low")
    normal2 = add(store)
    assert store.get(low1.id).priority == "low"  # type: ignore[union-attr]
    assert [store.queue_position(j) for j in (normal1, normal2, low1, low2)] == [0, 1, 2, 3]
    assert store.queue_depths() == {
        ("fal-ai/wan-vace-14b", "pose", "normal"): 2,
        ("fal-ai/wan-vace-14b", "pose", "low"): 2,
    }
    assert [store.claim().id for _ in range(4)] == [normal1.id, normal2.id, low1.id, low2.id]  # type: ignore[union-attr]
    assert store.claim() is None


def test_fields_kept_as_given(store: JobStore) -> None:
    job = add(store, webhook="http://hook", owner="key-1", runner_hint="gpu-a", start_timeout_s=60)
    again = store.get(job.id)
    assert again == job
    assert (again.owner, again.runner_hint, again.webhook_url, again.input) == (  # type: ignore[union-attr]
        "key-1",
        "gpu-a",
        "http://hook",
        {"prompt": "x"},
    )
    assert again.start_deadline == pytest.approx(again.created_at + 60)  # type: ignore[union-attr,operator]
    store.set_control_video(job.id, "http://h/files/control.mp4")
    assert store.get(job.id).control_video_url == "http://h/files/control.mp4"  # type: ignore[union-attr]
    store.set_control_video(job.id, None)
    assert store.get(job.id).control_video_url is None  # type: ignore[union-attr]
    assert store.get("no-such-id") is None


def test_cancel_queued_never_runs_and_running_is_flagged(store: JobStore) -> None:
    running, queued = add(store), add(store, webhook="http://hook")
    assert store.claim().id == running.id  # type: ignore[union-attr]
    assert store.request_cancel(queued.id).status == "IN_QUEUE"  # type: ignore[union-attr]
    after = store.get(queued.id)
    assert after.status == "COMPLETED" and after.outcome == "cancelled"  # type: ignore[union-attr]
    assert after.failure.type == "client_cancelled"  # type: ignore[union-attr]
    assert [j.id for j in store.pending_webhooks()] == [queued.id]
    assert store.claim() is None  # the cancelled job is not handed out
    assert not store.cancel_requested(running.id)
    store.request_cancel(running.id)
    assert store.cancel_requested(running.id) and store.get(running.id).status == "IN_PROGRESS"  # type: ignore[union-attr]
    store.finish(running.id, cancelled=True)
    assert store.request_cancel(running.id).status == "COMPLETED"  # type: ignore[union-attr]
    assert store.request_cancel("no-such-id") is None
    assert store.counts()["cancelled"] == 2


def test_crash_recovery_requeues_once_then_fails_with_reason(open_store: OpenStore) -> None:
    store = open_store()
    job, behind = add(store), add(store)
    store.claim()
    store.close()  # the process dies with the job running

    store = open_store()
    assert store.recover(max_attempts=2) == [job.id]
    again = store.get(job.id)
    assert again.status == "IN_QUEUE" and store.queue_position(again) == 0  # type: ignore[union-attr,arg-type]
    assert "re-queued" in store.logs(job.id)[-1].message
    assert store.claim().attempts == 2  # type: ignore[union-attr]
    store.close()  # ... and dies again

    store = open_store()
    assert store.recover(max_attempts=2) == [job.id]
    failed = store.get(job.id)
    assert failed.status == "COMPLETED" and failed.outcome == "error"  # type: ignore[union-attr]
    assert failed.failure.status_code == 503 and "2 times" in failed.failure.body["detail"]  # type: ignore[union-attr]
    assert failed.failure.type == "runner_disconnected"  # type: ignore[union-attr]
    assert store.get(behind.id).status == "IN_QUEUE"  # type: ignore[union-attr]
    assert store.recover(max_attempts=2) == []


def test_graceful_requeue_does_not_count_the_run(store: JobStore) -> None:
    job = add(store)
    store.claim()
    assert store.requeue(job.id, "stopping")
    assert store.get(job.id).attempts == 0 and store.claim().attempts == 1  # type: ignore[union-attr]
    assert store.logs(job.id)[-1].message == "stopping" and store.logs(job.id)[-1].level == "WARN"


def test_results_logs_and_failures_persist(open_store: OpenStore) -> None:
    store = open_store()
    ok, bad = add(store), add(store)
    store.claim()
    store.log(ok.id, "step 1/2")
    store.log(ok.id, "slow step", "WARN")
    assert store.finish(ok.id, result={"video": {"url": "u"}, "seed": 1, "prompt": "x"})
    store.claim()
    store.finish(
        bad.id,
        failure=Failure(
            422, {"detail": [{"loc": ["body", "video_url"]}]}, "bad", "video_decode_error", {"x-fal-error": "1"}
        ),
    )
    store.close()
    store = open_store()
    assert store.get(ok.id).result["seed"] == 1  # type: ignore[union-attr,index]
    assert [(line.message, line.level) for line in store.logs(ok.id)] == [("step 1/2", "INFO"), ("slow step", "WARN")]
    assert store.logs(ok.id)[0].timestamp <= store.logs(ok.id)[1].timestamp
    failure = store.get(bad.id).failure  # type: ignore[union-attr]
    assert failure == Failure(
        422, {"detail": [{"loc": ["body", "video_url"]}]}, "bad", "video_decode_error", {"x-fal-error": "1"}
    )
    assert store.counts()["completed"] == 1 and store.counts()["failed"] == 1


def test_start_timeout_ends_an_unstarted_job(store: JobStore) -> None:
    late, patient = add(store, start_timeout_s=0), add(store, start_timeout_s=3600)
    time.sleep(0.01)
    assert store.claim().id == patient.id  # type: ignore[union-attr]  # a job past its deadline is not started
    assert store.expire_unstarted() == [late.id]
    ended = store.get(late.id)
    assert ended.status == "COMPLETED" and ended.outcome == "error"  # type: ignore[union-attr]
    assert ended.failure.status_code == 504 and ended.failure.type == "request_timeout"  # type: ignore[union-attr]
    assert ended.failure.headers == {"x-fal-request-timeout-type": "user"}  # type: ignore[union-attr]
    assert store.logs(late.id)[-1].level == "ERROR"
    assert store.expire_unstarted() == []


def test_webhook_state_retries_and_retention(store: JobStore) -> None:
    hooked, plain, running = add(store, webhook="http://hook"), add(store), add(store)
    for job in (hooked, plain):
        store.claim()
        store.finish(job.id, result={"seed": 1})
    store.claim()
    assert [j.id for j in store.pending_webhooks()] == [hooked.id]
    assert store.claim_webhook(hooked.id, "node-1", 30) is not None
    assert store.webhook_attempt(hooked.id, 3, 1234.5, node_id="node-1", lease_s=30)
    again = store.get(hooked.id)
    assert (again.webhook_attempts, again.webhook_next_at) == (3, 1234.5)  # type: ignore[union-attr]
    assert [j.id for j in store.unfinished()] == [running.id]

    later = time.time() + 1
    assert store.purge(finished_before=later) == 1  # the plain one; the webhook is still being delivered
    assert store.get(plain.id) is None and store.logs(plain.id) == []
    store.set_webhook_state(hooked.id, "delivered")
    assert store.pending_webhooks() == []
    assert store.purge(finished_before=later) == 1 and store.get(hooked.id) is None
    assert store.purge(finished_before=later) == 0 and store.get(running.id) is not None


def test_claim_only_for_the_models_a_worker_serves(store: JobStore) -> None:
    pose = add(store)
    depth = store.add(
        app="fal-ai/wan-22-vace-fun-a14b",
        task="depth",
        model="wan-22-vace-fun-a14b",
        input={"prompt": "y"},
        base_url="http://h",
        webhook_url=None,
    )
    assert store.claim(models=[]) is None
    assert store.claim(models=["wan-22-vace-fun-a14b"]).id == depth.id  # type: ignore[union-attr]
    assert store.claim(models=["wan-22-vace-fun-a14b"]) is None
    assert store.claim(models=["wan-vace-14b", "other"]).id == pose.id  # type: ignore[union-attr]


def test_lease_renewed_by_heartbeat_only_for_its_worker(store: JobStore) -> None:
    job = add(store)
    claimed = store.claim(worker_id="w1", lease_s=30)
    assert claimed.worker_id == "w1"  # type: ignore[union-attr]
    assert claimed.lease_expires_at == pytest.approx(time.time() + 30, abs=5)  # type: ignore[union-attr]
    assert store.heartbeat(job.id, "w1", lease_s=600)
    assert store.get(job.id).lease_expires_at == pytest.approx(time.time() + 600, abs=5)  # type: ignore[union-attr]
    assert not store.heartbeat(job.id, "w2", lease_s=600)
    assert store.requeue_expired(max_attempts=3) == []  # a live lease is left alone
    assert store.finish(job.id, result={"seed": 1}, worker_id="w1")
    assert not store.heartbeat(job.id, "w1", lease_s=30)  # it ended


def test_expired_lease_hands_the_job_to_another_worker(store: JobStore) -> None:
    job, unleased = add(store), add(store)
    store.claim(worker_id="w1", lease_s=0.01)
    store.claim()  # a job claimed without a lease never expires
    time.sleep(0.05)  # w1 dies: no heartbeat
    assert store.requeue_expired(max_attempts=3) == [job.id]
    back = store.get(job.id)
    assert back.status == "IN_QUEUE" and back.attempts == 1 and back.worker_id is None  # type: ignore[union-attr]
    assert store.queue_position(back) == 0  # type: ignore[arg-type]
    assert "stopped renewing its lease (run 1 of at most 3); re-queued" in store.logs(job.id)[-1].message
    assert store.get(unleased.id).status == "IN_PROGRESS"  # type: ignore[union-attr]

    assert store.claim(worker_id="w2", lease_s=30).attempts == 2  # type: ignore[union-attr]
    # w1 comes back from a network partition: nothing it does touches w2's run.
    assert not store.heartbeat(job.id, "w1", lease_s=30)
    assert not store.finish(job.id, result={"seed": 1}, worker_id="w1")
    assert not store.requeue(job.id, "w1 stopping", worker_id="w1")
    assert store.get(job.id).status == "IN_PROGRESS" and store.get(job.id).worker_id == "w2"  # type: ignore[union-attr]
    assert store.finish(job.id, result={"seed": 2}, worker_id="w2")
    done = store.get(job.id)
    assert done.outcome == "ok" and done.result == {"seed": 2}  # type: ignore[union-attr]


def test_a_job_that_keeps_losing_its_worker_fails_after_max_attempts(store: JobStore) -> None:
    job = add(store, webhook="http://hook")
    for attempt in (1, 2):
        assert store.claim(worker_id=f"w{attempt}", lease_s=0.01).attempts == attempt  # type: ignore[union-attr]
        time.sleep(0.05)
        assert store.requeue_expired(max_attempts=2) == [job.id]
    failed = store.get(job.id)
    assert failed.status == "COMPLETED" and failed.outcome == "error"  # type: ignore[union-attr]
    assert failed.failure.status_code == 503 and failed.failure.type == "runner_disconnected"  # type: ignore[union-attr]
    assert "2 times" in failed.failure.body["detail"]  # type: ignore[union-attr]
    assert [j.id for j in store.pending_webhooks()] == [job.id]
    assert not store.finish(job.id, result={"seed": 1}, worker_id="w2")  # the last worker cannot revive it


def test_graceful_stop_hands_a_leased_job_back_at_once(store: JobStore) -> None:
    job = add(store)
    store.claim(worker_id="w1", lease_s=30)
    assert store.requeue(job.id, "worker w1 stopping", worker_id="w1")
    back = store.get(job.id)
    assert back.status == "IN_QUEUE" and back.attempts == 0 and back.lease_expires_at is None  # type: ignore[union-attr]
    assert not store.heartbeat(job.id, "w1", lease_s=30)


def test_an_interrupted_run_is_handed_back_at_once_under_the_attempt_rules(store: JobStore) -> None:
    job, other = add(store), add(store)
    store.claim(worker_id="g1", lease_s=30)
    store.claim(worker_id="g2", lease_s=30)
    assert not store.hand_back(job.id, "g2", 2, "rank 1 exited")  # only its holder may say so
    assert store.hand_back(job.id, "g1", 2, "rank 1 exited")
    back = store.get(job.id)
    assert back.status == "IN_QUEUE" and back.attempts == 1 and back.worker_id is None  # type: ignore[union-attr]
    assert "rank 1 exited (run 1 of at most 2); re-queued" in store.logs(job.id)[-1].message
    assert store.get(other.id).status == "IN_PROGRESS"  # type: ignore[union-attr]
    store.claim(worker_id="g1", lease_s=30)
    assert store.hand_back(job.id, "g1", 2, "rank 1 exited")
    failed = store.get(job.id)
    assert failed.outcome == "error" and failed.failure.type == "runner_disconnected"  # type: ignore[union-attr]


def test_one_sqlite_server_per_database(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    with pytest.raises(StoreLockedError):
        SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.close()
    SqliteJobStore(tmp_path / "jobs.sqlite3").close()


# The SQLite schema of the releases before numbered migrations (server/store/jobs.py until 2026-12), as they left a
# file.
PREVIOUS_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, app TEXT NOT NULL, task TEXT NOT NULL,
    model TEXT NOT NULL, input TEXT NOT NULL, base_url TEXT NOT NULL, webhook_url TEXT, webhook_state TEXT,
    status TEXT NOT NULL, outcome TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0, result TEXT, failure TEXT, created_at REAL NOT NULL,
    started_at REAL, finished_at REAL, control_video_url TEXT,
    owner TEXT, priority INTEGER NOT NULL DEFAULT 0, start_deadline REAL, runner_hint TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0, webhook_next_at REAL, worker_id TEXT, lease_expires_at REAL,
    webhook_owner TEXT, webhook_lease_until REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, timestamp REAL NOT NULL, level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_job ON logs (job_id, seq);
CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, info TEXT NOT NULL, last_seen REAL NOT NULL);
"""


def sqlite_versions(path: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [v for (v,) in db.execute("SELECT version FROM schema_migrations ORDER BY version")]


def test_sqlite_database_of_the_previous_release_opens_and_is_numbered(tmp_path: Path) -> None:
    """A file the previous release made: its jobs and logs stay as they were, it gains the steps' indexes, and its
    steps are recorded, so that the next step applies to it as to a new file (#23)."""
    path = tmp_path / "jobs.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(PREVIOUS_SQLITE_SCHEMA)
        db.execute(
            "INSERT INTO jobs (id, app, task, model, input, base_url, webhook_url, status, created_at, attempts,"
            " started_at, priority, worker_id, lease_expires_at) VALUES ('running', 'fal-ai/wan-vace-14b',"
            " 'pose', 'wan-vace-14b', '{\"prompt\": \"old\"}', 'http://h', 'http://hook', 'IN_PROGRESS', 1.0, 1,"
            " 2.0, 1, 'w0', 3.0)"
        )
        db.execute("INSERT INTO logs (job_id, timestamp, level, message) VALUES ('running', 2.0, 'INFO', 'step 1/2')")
    store = SqliteJobStore(path)
    try:
        assert sqlite_versions(path) == list(range(1, SCHEMA_VERSION + 1))
        old = store.get("running")
        assert old is not None and (old.input, old.priority, old.webhook_url, old.worker_id) == (
            {"prompt": "old"},
            "low",
            "http://hook",
            "w0",
        )
        assert [line.message for line in store.logs("running")] == ["step 1/2"]
        assert store.recover(max_attempts=2) == ["running"]
        assert store.claim(worker_id="w1", lease_s=30).id == "running"  # type: ignore[union-attr]
        with contextlib.closing(sqlite3.connect(path)) as db:
            indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"jobs_queue", "jobs_webhooks", "jobs_leases", "jobs_status", "logs_job"} <= indexes
    finally:
        store.close()
    SqliteJobStore(path).close()  # opening an up-to-date file changes nothing
    assert sqlite_versions(path) == list(range(1, SCHEMA_VERSION + 1))


def test_sqlite_database_of_the_first_release_gains_what_it_lacks(tmp_path: Path) -> None:
    """A file made before most columns, the logs and the workers existed gains them on open."""
    path = tmp_path / "jobs.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(
            "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,"
            " app TEXT NOT NULL, task TEXT NOT NULL, model TEXT NOT NULL, input TEXT NOT NULL,"
            " base_url TEXT NOT NULL, webhook_url TEXT, webhook_state TEXT, status TEXT NOT NULL,"
            " outcome TEXT, attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL"
            " DEFAULT 0, result TEXT, failure TEXT, created_at REAL NOT NULL, started_at REAL,"
            " finished_at REAL);"
            "INSERT INTO jobs (id, app, task, model, input, base_url, status, created_at)"
            " VALUES ('old', 'a', 'pose', 'm', '{}', 'http://h', 'IN_QUEUE', 1.0);"
        )
    store = SqliteJobStore(path)
    try:
        assert store.get("old").priority == "normal"  # type: ignore[union-attr]  # the column's default
        assert store.claim(worker_id="w1", lease_s=30).id == "old"  # type: ignore[union-attr]
        assert store.heartbeat("old", "w1", lease_s=30)
        store.log("old", "logs exist now")
        store.worker_seen("w1", {"node": "n"})
    finally:
        store.close()


def test_a_newer_sqlite_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    SqliteJobStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreUnavailableError, match="newer than this server"):
        SqliteJobStore(path)


def test_both_engines_make_one_job_table(tmp_path: Path, pg_url: str) -> None:
    """One definition (server/store/schema.py): SQLite and PostgreSQL get the same tables and columns, and every column
    of the job table is a field of Job."""
    from server.store.postgres import PostgresJobStore

    SqliteJobStore(tmp_path / "jobs.sqlite3").close()
    PostgresJobStore(pg_url).close()
    with contextlib.closing(sqlite3.connect(tmp_path / "jobs.sqlite3")) as db:
        tables = [
            t
            for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'sqlite_sequence'")
        ]
        in_sqlite = {t: [row[1] for row in db.execute(f"PRAGMA table_info({t})")] for t in tables}
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema ="
            " 'public' ORDER BY table_name, ordinal_position"
        ).fetchall()
    in_postgres: dict[str, list[str]] = {}
    for table, column in rows:
        in_postgres.setdefault(table, []).append(column)
    assert in_sqlite == in_postgres
    assert set(in_sqlite["jobs"]) - {"webhook_state", "cancel_requested", "webhook_owner", "webhook_lease_until"} == {
        f.name for f in fields(Job)
    }


def test_workers_signs_of_life(store: JobStore) -> None:
    store.worker_seen("node-1:10:cpu:aa", {"node": "node-1", "models_present": ["wan-vace-14b"], "current_job": None})
    store.worker_seen("node-2:20:cpu:bb", {"node": "node-2", "models_present": [], "current_job": None})
    store.worker_seen("node-1:10:cpu:aa", {"node": "node-1", "models_present": ["wan-vace-14b"], "current_job": "j"})
    live = store.live_workers(time.time() - 60)
    assert [w["id"] for w in live] == ["node-1:10:cpu:aa", "node-2:20:cpu:bb"] and live[0]["current_job"] == "j"
    assert store.live_workers(time.time() + 1) == []  # nobody seen since a moment in the future


def add_for(store: JobStore, model: str, **options: object) -> Job:
    return store.add(
        app="fal-ai/x",
        task="pose",
        model=model,
        input={"prompt": "x"},
        base_url="http://h",
        webhook_url=None,
        **options,
    )  # type: ignore[arg-type]


def test_a_worker_prefers_its_loaded_model_but_not_past_the_bound(store: JobStore) -> None:
    older_b = add_for(store, "model-b")
    time.sleep(0.3)
    newer_a, newest_a = add_for(store, "model-a"), add_for(store, "model-a")
    assert store.claim(loaded=["model-a"], switch_after_s=60).id == newer_a.id  # type: ignore[union-attr]
    # The B job has now waited longer than the bound: it goes first even though an A job is queued.
    assert store.claim(loaded=["model-a"], switch_after_s=0.2).id == older_b.id  # type: ignore[union-attr]
    assert store.claim(loaded=["model-a"], switch_after_s=60).id == newest_a.id  # type: ignore[union-attr]


def test_without_a_preference_the_claim_stays_fifo(store: JobStore) -> None:
    older_b, newer_a = add_for(store, "model-b"), add_for(store, "model-a")
    assert store.claim(loaded=["model-a"], switch_after_s=0).id == older_b.id  # type: ignore[union-attr]
    assert store.claim(loaded=["model-c"], switch_after_s=60).id == newer_a.id  # type: ignore[union-attr]


def test_a_runner_hint_routes_to_the_worker_that_saw_it(store: JobStore) -> None:
    plain_a = add_for(store, "model-a")
    other_hint = add_for(store, "model-b", runner_hint="session-2")
    hinted_b = add_for(store, "model-b", runner_hint="session-1")
    # A hint this worker saw beats both age and its loaded model (within the bound)...
    claimed = store.claim(loaded=["model-a"], hints=["session-1"], switch_after_s=60)
    assert claimed.id == hinted_b.id  # type: ignore[union-attr]
    # ...and a hint it did not see is no reason to take a job first.
    assert store.claim(hints=["session-1"], switch_after_s=60).id == plain_a.id  # type: ignore[union-attr]
    assert store.claim(hints=["session-1"], switch_after_s=60).id == other_hint.id  # type: ignore[union-attr]


def test_priority_comes_before_any_preference(store: JobStore) -> None:
    low_a = add_for(store, "model-a", priority="low", runner_hint="h")
    normal_b = add_for(store, "model-b")
    assert store.claim(loaded=["model-a"], hints=["h"], switch_after_s=60).id == normal_b.id  # type: ignore[union-attr]
    assert store.claim(loaded=["model-a"], hints=["h"], switch_after_s=60).id == low_a.id  # type: ignore[union-attr]


def test_one_node_at_a_time_holds_a_webhook_delivery(store: JobStore) -> None:
    job = add(store, webhook="http://hook")
    assert store.claim_webhook(job.id, "node-1", 30) is None  # nothing to deliver while it runs
    store.claim()
    store.finish(job.id, result={"seed": 1})
    assert store.claim_webhook(job.id, "node-1", 0.2).id == job.id  # type: ignore[union-attr]
    assert store.claim_webhook(job.id, "node-2", 30) is None and store.pending_webhooks() == []
    assert store.claim_webhook(job.id, "node-1", 0.2) is not None  # renewed by its holder
    assert store.webhook_attempt(job.id, 1, time.time() + 0.2, node_id="node-1", lease_s=0.1)
    time.sleep(0.1)
    assert store.claim_webhook(job.id, "node-2", 30) is None  # held through the back-off, and past it
    time.sleep(0.3)  # node-1 died: its claim runs out
    assert [j.id for j in store.pending_webhooks()] == [job.id]
    taken = store.claim_webhook(job.id, "node-2", 30)
    assert taken is not None and taken.webhook_attempts == 1  # the back-off goes on where node-1 left it
    # node-1 comes back: it can neither record a retry nor an outcome, nor take the delivery back.
    assert not store.webhook_attempt(job.id, 2, time.time(), node_id="node-1", lease_s=30)
    assert not store.set_webhook_state(job.id, "delivered", node_id="node-1")
    assert store.claim_webhook(job.id, "node-1", 30) is None
    assert store.set_webhook_state(job.id, "delivered", node_id="node-2")
    assert store.claim_webhook(job.id, "node-2", 30) is None and store.pending_webhooks() == []


def test_a_stopping_node_releases_only_its_own_deliveries(store: JobStore) -> None:
    mine, theirs = add(store, webhook="http://hook"), add(store, webhook="http://hook")
    for job in (mine, theirs):
        store.claim()
        store.finish(job.id, result={"seed": 1})
    assert store.claim_webhook(mine.id, "stopping", 3600) and store.claim_webhook(theirs.id, "other", 3600)
    assert store.release_webhooks("stopping") == 1
    assert [j.id for j in store.pending_webhooks()] == [mine.id]  # at once, not after an hour
    assert store.claim_webhook(mine.id, "other", 30) is not None
    assert store.release_webhooks("stopping") == 0


def test_recovery_frees_the_deliveries_of_the_last_run(open_store: OpenStore) -> None:
    store = open_store()
    job = add(store, webhook="http://hook")
    store.claim()
    store.finish(job.id, result={"seed": 1})
    assert store.claim_webhook(job.id, "last-run", 3600) is not None
    store.close()
    store = open_store()
    assert store.pending_webhooks() == []
    store.recover(max_attempts=2)
    assert [j.id for j in store.pending_webhooks()] == [job.id]
    assert store.claim_webhook(job.id, "this-run", 30) is not None


def test_a_checkpoint_and_a_preview_replace_the_last_and_end_with_the_job(store: JobStore) -> None:
    job = add(store)
    store.claim(worker_id="w1", lease_s=30)
    assert store.set_checkpoint(job.id, "w1", "t/c1", 1) == (True, None)
    assert store.set_checkpoint(job.id, "w1", "t/c2", 2) == (True, "t/c1")  # the caller deletes t/c1
    assert store.set_preview(job.id, "w1", "t/p2", 2) == (True, None)
    assert store.set_checkpoint(job.id, "w2", "t/c3", 3) == (False, None)  # not w2's job: the caller deletes t/c3
    assert store.requeue(job.id, "stopping", worker_id="w1")
    queued = store.get(job.id)
    assert queued is not None and queued.status == "IN_QUEUE"
    assert (queued.checkpoint_key, queued.checkpoint_step, queued.preview_key, queued.preview_step) == (
        "t/c2",
        2,
        "t/p2",
        2,
    )
    assert store.set_preview(job.id, "w1", "t/p3", 3) == (False, None)  # queued: nobody's
    claimed = store.claim(worker_id="w2", lease_s=30)
    assert claimed is not None and (claimed.checkpoint_key, claimed.checkpoint_step) == ("t/c2", 2)
    assert store.finish(job.id, result={"seed": 1}, worker_id="w2")
    ended = store.get(job.id)
    assert ended is not None and (
        ended.checkpoint_key,
        ended.checkpoint_step,
        ended.preview_key,
        ended.preview_step,
    ) == (None, None, None, None)


class Announcements:
    """A sink that records what the store announces, in order (SQLite calls it after each commit, PostgreSQL's
    listener as the notifications arrive)."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[str, Change]] = queue.Queue()
        self.listening = threading.Event()

    def announce(self, job_id: str, change: Change) -> None:
        self.received.put((job_id, change))

    def missed(self) -> None:
        self.listening.set()  # PostgreSQL's listener says so once it is connected

    def expect(self, job_id: str, change: Change) -> None:
        """Wait for ``change`` of ``job_id``. What comes before it may only be ``updated`` announcements (PostgreSQL
        announces a log line apart from the transition it belongs to), so a transition nobody made (an ``ended`` for
        a write that was refused) fails here."""
        while True:
            got = self.received.get(timeout=10)
            if got == (job_id, change):
                return
            assert got[1] == "updated", f"announced {got} while waiting for {(job_id, change)}"


def test_every_transition_is_announced_once_committed(store: JobStore) -> None:
    """The jobs that end have webhooks: PostgreSQL announces ``ended`` when a webhook falls due (the status change
    itself as ``updated``), SQLite for every job that ends."""
    sink = Announcements()
    store.announce_to(sink)
    if not isinstance(store, SqliteJobStore):  # PostgreSQL: once its listener is connected
        assert sink.listening.wait(10)
    job = add(store, webhook="http://hook")
    sink.expect(job.id, "queued")
    store.claim(worker_id="w1", lease_s=30)
    sink.expect(job.id, "updated")
    store.log(job.id, "step 1/2")
    sink.expect(job.id, "updated")
    store.set_control_video(job.id, "http://h/files/control.mp4")
    sink.expect(job.id, "updated")
    assert store.set_preview(job.id, "w1", "token/preview.webp", 1) == (True, None)  # a new live preview
    sink.expect(job.id, "updated")
    store.request_cancel(job.id)  # running: flagged for its worker, not ended
    sink.expect(job.id, "updated")
    assert store.heartbeat(job.id, "w1", lease_s=30)  # no transition
    assert not store.finish(job.id, result={"seed": 1}, worker_id="w2")  # refused: nothing to announce
    assert store.requeue(job.id, "stopping", worker_id="w1")
    sink.expect(job.id, "queued")
    store.claim(worker_id="w1", lease_s=30)
    assert store.finish(job.id, cancelled=True, worker_id="w1")
    sink.expect(job.id, "ended")

    queued, late, lost = add(store, webhook="http://hook"), add(store, "http://hook", start_timeout_s=0), add(store)
    for added in (queued, late, lost):
        sink.expect(added.id, "queued")
    store.request_cancel(queued.id)
    sink.expect(queued.id, "ended")
    assert store.claim(worker_id="dead", lease_s=0.01).id == lost.id  # type: ignore[union-attr]
    sink.expect(lost.id, "updated")
    time.sleep(0.05)
    assert store.expire_unstarted() == [late.id]
    sink.expect(late.id, "ended")
    assert store.requeue_expired(max_attempts=2) == [lost.id]
    sink.expect(lost.id, "queued")
