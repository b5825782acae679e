"""Faults a long-running server meets: a job that runs the device out of memory, a disk that fills up while a job
writes, SIGTERM during a job, a heartbeat that comes back after its job ended, and the retention sweep. The affected
job ends with a stated reason and leaves nothing half-written behind; the server frees what the job held and goes on
with the next one.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from diffusers import WanVACETransformer3DModel
from prometheus_client import CollectorRegistry, Counter
from s3_fixtures import FILE_STORES, files_setting, s3_server, stored_names  # noqa: F401
from server_fixtures import (  # noqa: F401
    SMALL_JOB,
    ServeProcess,
    ThreadServer,
    control_videos,
    free_port,
    require,
    server_weights,
    wait_until,
)

from pipelines.context import JobContext
from pipelines.encode import encode_video
from pipelines.loading import ModelManager
from server import cli
from server.config import Settings
from server.fal.failures import failure_of
from server.files.store import LocalFileStore
from server.runtime.metrics import Metrics
from server.runtime.retention import Retention, Swept
from server.runtime.worker import WorkerPool
from server.store.jobs import Failure, SqliteJobStore

QUEUE = "/queue/fal-ai/wan-vace-14b/pose"
REQUESTS = "/queue/fal-ai/wan-vace-14b/requests"


def upload(client: httpx.Client, path: Path) -> str:
    urls = client.post("/storage/upload/initiate", json={"file_name": path.name, "content_type": "video/mp4"}).json()
    assert httpx.put(urls["upload_url"], content=path.read_bytes()).status_code == 200
    return urls["file_url"]


def submit(client: httpx.Client, video_url: str, prompt: str, **fields: Any) -> str:
    response = client.post(QUEUE, json={"prompt": prompt, "video_url": video_url, **SMALL_JOB, **fields})
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def status(client: httpx.Client, request_id: str) -> dict[str, Any]:
    return client.get(f"{REQUESTS}/{request_id}/status", params={"logs": 1}).json()


def finished(client: httpx.Client, request_id: str, timeout_s: float = 300) -> dict[str, Any]:
    return wait_until(
        lambda: (s := status(client, request_id))["status"] == "COMPLETED" and s, timeout_s, f"job {request_id} to end"
    )


def messages(body: dict[str, Any]) -> list[str]:
    return [line["message"] for line in body["logs"]]


def test_out_of_memory_fails_alone_frees_memory_and_the_next_job_runs(
    server_weights: Path,
    control_videos: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first denoising call raises CUDA's out-of-memory error while holding a block of memory, as a job too
    big for the device does; the job fails with a reason that says what to change, the block is freed, and the job
    queued behind it completes on the same worker."""
    held: list[weakref.ref[torch.Tensor]] = []
    forward = WanVACETransformer3DModel.forward

    def out_of_memory_once(self: WanVACETransformer3DModel, *args: Any, **kwargs: Any) -> Any:
        if not held:
            block = torch.empty(4 * 1024**2)  # 16 MiB that the failing job holds when it raises
            held.append(weakref.ref(block))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 23.5 GiB total)")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(WanVACETransformer3DModel, "forward", out_of_memory_once)
    data = tmp_path / "data"
    config = Settings(weights_dir=server_weights, data_dir=data, port=free_port())
    with ThreadServer(config) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        video = upload(client, control_videos["pose"])
        too_big = submit(client, video, "too big")
        fits = submit(client, video, "fits")

        failed = finished(client, too_big)
        assert failed["error_type"] == "runner_server_error" and failed["error"].startswith("out of memory")
        result = client.get(f"{REQUESTS}/{too_big}")
        assert result.status_code == 500
        assert result.json()["detail"].startswith("out of memory") and "--memory-mode" in result.json()["detail"]
        assert "Tried to allocate" not in result.text  # torch's text (other processes on the GPU) is logged only
        assert held and held[0]() is None, "the failed job's memory is still referenced"

        done = finished(client, fits)
        assert "error_type" not in done and "started on cpu (run 1)" in messages(done)
        output = client.get(f"{REQUESTS}/{fits}").json()
        assert client.get(output["video"]["url"]).content[4:8] == b"ftyp"
        assert stored_names(None, data) == ["pose.mp4", "video.mp4"]  # the failed job left nothing
        assert not any((data / "work").iterdir())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs: a real file system that runs out of space (mounting needs root, which CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    require(os.geteuid() == 0, "mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Take all free space on ``disk`` but ``leave_bytes``."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    with filler.open("wb") as out:
        remaining = stats.f_bavail * stats.f_frsize - leave_bytes
        while remaining > 0:
            remaining -= out.write(b"\xff" * min(remaining, 1024**2))
    return filler


@pytest.mark.parametrize("file_store", FILE_STORES)
def test_a_full_disk_fails_the_job_cleanly_and_the_server_goes_on(
    file_store: str,
    request: pytest.FixtureRequest,
    server_weights: Path,
    control_videos: dict[str, Path],
    small_disk: Path,
) -> None:
    """The server's whole data directory (job store, scratch and, for the directory store, files) sits on a small
    disk. With 1 MiB left (besides the job's copy of its input), a job that also returns its frames as a zip of PNGs
    fills the disk while writing the zip: it fails as "out of disk space" (fal's ``runner_server_error``), its video
    already published (in the directory or the bucket) is deleted again, and once space is freed the same job
    succeeds."""
    data = small_disk / "data"
    files = files_setting(file_store, request)
    config = Settings(weights_dir=server_weights, data_dir=data, port=free_port(), files=files)
    with ThreadServer(config) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        video = upload(client, control_videos["pose"])
        copied = control_videos["pose"].stat().st_size if files else 0  # a job copies its input from a bucket
        filler = fill(small_disk, leave_bytes=1024**2 + copied)
        job = submit(client, video, "no room", return_frames_zip=True, video_quality="maximum")
        failed = finished(client, job)
        assert failed["error_type"] == "runner_server_error", failed
        result = client.get(f"{REQUESTS}/{job}")
        assert result.status_code == 500 and result.json()["detail"].startswith("out of disk space")
        assert result.json()["error_type"] == "runner_server_error"
        assert any(line.startswith("encoding") for line in messages(failed))
        assert stored_names(files, data) == ["pose.mp4"] and not any((data / "work").iterdir())

        filler.unlink()
        again = finished(client, submit(client, video, "room again", return_frames_zip=True, video_quality="maximum"))
        assert "error_type" not in again
        assert stored_names(files, data) == ["frames.zip", "pose.mp4", "video.mp4"]


def test_full_disk_errors_are_named_wherever_they_come_from(small_disk: Path) -> None:
    """ffmpeg's own "No space left on device" becomes ENOSPC, and SQLite's "disk is full", even as the cause of
    another error, is a full disk too; other errors stay internal errors."""
    fill(small_disk, leave_bytes=0)
    noise = np.random.default_rng(0).integers(0, 256, (240, 416, 3), np.uint8)
    with pytest.raises(OSError) as encoding:
        encode_video([noise] * 17, small_disk / "video.mp4", 16.0, quality="maximum")
    assert encoding.value.errno == errno.ENOSPC and not (small_disk / "video.mp4").exists()
    assert failure_of(encoding.value, torch.device("cpu")).message.startswith("out of disk space")
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as cause:
            raise RuntimeError("could not store the log line") from cause
    except RuntimeError as chained:
        assert failure_of(chained, torch.device("cpu")).message.startswith("out of disk space")
    assert failure_of(RuntimeError("boom"), torch.device("cpu")).type == "internal_error"


def test_sigterm_during_a_job_requeues_it_and_it_runs_after_restart(
    server_weights: Path,
    control_videos: dict[str, Path],
    tmp_path: Path,
) -> None:
    """SIGTERM stops the real ``vace serve`` process cleanly within seconds, even mid-job: the
    running job goes back to the queue without its interrupted run counting, and runs with the queued one after
    the restart."""
    server = ServeProcess(server_weights, tmp_path / "data").start()
    try:
        with server.client() as client:
            video = upload(client, control_videos["pose"])
            running = submit(client, video, "interrupted", num_inference_steps=20)
            queued = submit(client, video, "waiting")
            wait_until(lambda: "step 1/20" in messages(status(client, running)), 120, "the first job's first step")
        assert server.proc is not None
        sent = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        # uvicorn shuts down (workers stopped, store closed), then re-raises the signal so supervisors see it.
        assert server.proc.wait(60) == -signal.SIGTERM and "Application shutdown complete" in server.output()
        assert time.monotonic() - sent < 30

        server.start()
        with server.client() as client:
            requeued = messages(status(client, running))
            assert "the server is stopping; re-queued to run after restart" in requeued
            done = finished(client, running)
            assert "error_type" not in done and messages(done).count("started on cpu (run 1)") == 2
            assert "error_type" not in finished(client, queued)
            assert client.get(f"{REQUESTS}/{running}").json()["prompt"] == "interrupted"
    finally:
        server.stop()


def test_a_heartbeat_for_a_job_that_just_ended_does_not_stop_the_next(tmp_path: Path, models: ModelManager) -> None:
    """A worker renews its running job's lease on a thread of its own. When the job ends while a renewal is on its
    way (slow while the database restarts), the renewal finds the job no longer running: that must stop nothing but
    that job, not the one the worker took next (which would then be left running, unrecorded, until its lease ran
    out; twice, and it failed as runner_disconnected)."""
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    pool = WorkerPool(
        store=store,
        files=LocalFileStore(tmp_path / "files", tmp_path / "uploads", 1024),
        metrics=Metrics(store),
        managers=[models],
        work_dir=tmp_path / "work",
        ctx=JobContext(),
    )
    worker = pool.workers[0]
    try:
        ended, following = (
            store.add(
                app="fal-ai/wan-vace-14b",
                task="pose",
                model="wan-vace-14b",
                input={"prompt": "x"},
                base_url="http://h",
                webhook_url=None,
            )
            for _ in range(2)
        )
        assert store.claim(worker_id=worker.id, lease_s=30).id == ended.id  # type: ignore[union-attr]
        worker.current = ended.id  # the heartbeat thread reads it ...
        assert store.finish(ended.id, result={"seed": 1}, worker_id=worker.id)
        assert store.claim(worker_id=worker.id, lease_s=30).id == following.id  # type: ignore[union-attr]
        worker.renew_lease()  # ... and its renewal comes back after the job ended and the worker took the next one
        worker.current = following.id
        assert worker.must_stop(ended.id) and not worker.must_stop(following.id)
        store.request_cancel(following.id)
        assert worker.must_stop(following.id)
    finally:
        store.close()


def test_retention_deletes_old_files_uploads_and_finished_jobs(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    files = LocalFileStore(tmp_path / "files", tmp_path / "uploads", max_bytes=1024)
    registry = CollectorRegistry()
    deleted = Counter("deleted", "test", ["kind"], registry=registry)
    retention = Retention(store, files, max_age_s=3600, interval_s=60, deleted=deleted)

    def stored(name: str) -> tuple[str, Path]:
        key = files.new_key(name)
        (files.files_dir / key).parent.mkdir(parents=True)
        (files.files_dir / key).write_bytes(b"x")
        return files.url(key, "http://vace.test"), files.files_dir / key

    def add(video_url: str, webhook_url: str | None = None) -> str:
        return store.add(
            app="fal-ai/wan-vace-14b",
            task="pose",
            model="wan-vace-14b",
            input={"prompt": "x", "video_url": video_url},
            base_url="http://vace.test",
            webhook_url=webhook_url,
        ).id

    old_output_url, old_output = stored("video.mp4")
    _, fresh_output = stored("fresh.mp4")
    input_url, queued_input = stored("input.mp4")
    done, hooked, waiting = add(old_output_url), add(old_output_url, "http://hook.test"), add(input_url)
    for job_id in (done, hooked):
        claimed = store.claim()
        assert claimed is not None and claimed.id == job_id
        store.log(job_id, "a log line")
        store.finish(job_id, failure=Failure(500, {"detail": "x"}, "x", "internal_error"))
    abandoned = files.start_upload(files.new_key("never.mp4"))
    now = time.time() + 7200  # two hours on: everything above is one hour past the limit
    os.utime(fresh_output, (now, now))

    assert retention.sweep(now) == Swept(files=1, uploads=1, jobs=1)
    assert store.get(done) is None and store.logs(done) == []
    assert store.get(hooked) is not None, "a job whose webhook is still due must stay"
    assert store.get(waiting) is not None and queued_input.exists(), "a queued job's input must stay"
    assert not old_output.exists() and not old_output.parent.exists()
    assert fresh_output.exists() and files.pending(abandoned) is None
    assert registry.get_sample_value("deleted_total", {"kind": "file"}) == 1
    assert retention.sweep(now) == Swept()  # nothing twice
    store.close()


def test_retention_runs_in_the_live_server(
    server_weights: Path,
    tmp_path: Path,
) -> None:
    """With a two-second retention, a failed job and the upload it read disappear from the running server."""
    config = Settings(
        weights_dir=server_weights, data_dir=tmp_path / "data", port=free_port(), retention_s=2.0, retention_sweep_s=0.2
    )
    with ThreadServer(config) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        urls = client.post("/storage/upload/initiate", json={"file_name": "bad.mp4"}).json()
        assert httpx.put(urls["upload_url"], content=b"not a video").status_code == 200
        job = submit(client, urls["file_url"], "x")
        assert finished(client, job, 120)["error_type"] == "video_decode_error"
        wait_until(lambda: client.get(f"{REQUESTS}/{job}/status").status_code == 404, 30, "the job to expire")
        assert client.get(urls["file_url"]).status_code == 404
        metrics = client.get("/metrics").text
        assert 'vace_retention_deleted_total{kind="job"} 1.0' in metrics
        assert 'vace_retention_deleted_total{kind="file"} 1.0' in metrics


def test_serve_flags_for_limits_and_retention(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    seen: list[Settings] = []
    monkeypatch.setattr("server.app.serve", lambda config, **_: seen.append(config))
    monkeypatch.delenv("VACE_LIMITS", raising=False)
    args = [
        "serve",
        "--weights-dir",
        "/nonexistent",
        "--retention-s",
        "1800",
        "--limits",
        "max_video_seconds=120",
        "max_ref_images=2",
    ]
    assert cli.main(args) == 0
    assert seen[0].retention_s == 1800 and seen[0].limits.max_video_seconds == 120
    assert seen[0].limits.max_ref_images == 2 and seen[0].limits.max_prompt_chars == 5000
    assert cli.main(["serve", "--weights-dir", "/nonexistent", "--limits", "max_frames=3"]) == 2
    assert "unknown limit 'max_frames'" in capsys.readouterr().err
