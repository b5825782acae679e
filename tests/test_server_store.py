"""The SQLite job store on its own: ordering, queue positions, cancel, crash recovery and persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.jobs import Failure, SqliteJobStore, StoreLockedError


def add(store: SqliteJobStore, webhook: str | None = None):
    return store.add(app="fal-ai/wan-vace-14b", task="pose", model="wan-vace-14b", input={"prompt": "x"},
                     base_url="http://h", webhook_url=webhook)


def test_fifo_claim_and_queue_positions(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    a, b, c = add(store), add(store), add(store)
    assert [store.queue_position(j) for j in (a, b, c)] == [0, 1, 2]
    claimed = store.claim()
    assert claimed is not None and claimed.id == a.id and claimed.status == "IN_PROGRESS" and claimed.attempts == 1
    assert [store.queue_position(j) for j in (b, c)] == [0, 1]
    assert store.counts() == {"queued": 2, "running": 1, "completed": 0, "failed": 0, "cancelled": 0}


def test_cancel_queued_never_runs_and_running_is_flagged(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    running, queued = add(store), add(store, webhook="http://hook")
    assert store.claim().id == running.id  # type: ignore[union-attr]
    assert store.request_cancel(queued.id).status == "IN_QUEUE"  # type: ignore[union-attr]
    after = store.get(queued.id)
    assert after.status == "COMPLETED" and after.outcome == "cancelled"  # type: ignore[union-attr]
    assert after.failure.type == "client_cancelled"  # type: ignore[union-attr]
    assert [j.id for j in store.pending_webhooks()] == [queued.id]
    assert store.claim() is None  # the cancelled job is not handed out
    store.request_cancel(running.id)
    assert store.cancel_requested(running.id) and store.get(running.id).status == "IN_PROGRESS"  # type: ignore[union-attr]
    store.finish(running.id, cancelled=True)
    assert store.request_cancel(running.id).status == "COMPLETED"  # type: ignore[union-attr]
    assert store.request_cancel("no-such-id") is None


def test_crash_recovery_requeues_once_then_fails_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path)
    job, behind = add(store), add(store)
    store.claim()
    store.close()  # the process dies with the job running

    store = SqliteJobStore(path)
    assert store.recover(max_attempts=2) == [job.id]
    again = store.get(job.id)
    assert again.status == "IN_QUEUE" and store.queue_position(again) == 0  # type: ignore[union-attr,arg-type]
    assert "re-queued" in store.logs(job.id)[-1].message
    assert store.claim().attempts == 2  # type: ignore[union-attr]
    store.close()  # ... and dies again

    store = SqliteJobStore(path)
    assert store.recover(max_attempts=2) == [job.id]
    failed = store.get(job.id)
    assert failed.status == "COMPLETED" and failed.outcome == "error"  # type: ignore[union-attr]
    assert failed.failure.status_code == 503 and "2 times" in failed.failure.body["detail"]  # type: ignore[union-attr]
    assert store.get(behind.id).status == "IN_QUEUE"  # type: ignore[union-attr]
    assert store.recover(max_attempts=2) == []


def test_graceful_requeue_does_not_count_the_run(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    job = add(store)
    store.claim()
    store.requeue(job.id, "stopping")
    assert store.get(job.id).attempts == 0 and store.claim().attempts == 1  # type: ignore[union-attr]


def test_results_logs_and_failures_persist(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path)
    ok, bad = add(store), add(store)
    store.claim()
    store.log(ok.id, "step 1/2")
    store.finish(ok.id, result={"video": {"url": "u"}, "seed": 1, "prompt": "x"})
    store.claim()
    store.finish(bad.id, failure=Failure(422, {"detail": [{"loc": ["body", "video_url"]}]}, "bad", "video_decode_error"))
    store.close()
    store = SqliteJobStore(path)
    assert store.get(ok.id).result["seed"] == 1  # type: ignore[union-attr,index]
    assert [line.message for line in store.logs(ok.id)] == ["step 1/2"]
    assert store.get(bad.id).failure.status_code == 422  # type: ignore[union-attr]
    assert store.counts()["completed"] == 1 and store.counts()["failed"] == 1


def test_one_server_per_database(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    with pytest.raises(StoreLockedError):
        SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.close()
    SqliteJobStore(tmp_path / "jobs.sqlite3").close()
