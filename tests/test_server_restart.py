"""Jobs survive the server process dying: ``vace serve`` is SIGKILLed during a job and started again on the same
data directory. The job that was running is re-queued once; killed again during its second run, it is failed with
a stated reason; the job queued behind it runs to completion after the restart. Nothing is lost.

And ``vace serve`` runs its worker in a process of its own: SIGKILLed mid-job, that process is replaced and its job
handed back at once, while the server goes on answering; an idle worker process is woken by the server, not by a
poll.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
from server_fixtures import SMALL_JOB, ServeProcess, control_videos, server_weights, wait_until  # noqa: F401

REQUESTS = "/queue/fal-ai/wan-vace-14b/requests"


def status(server: ServeProcess, request_id: str) -> dict[str, Any]:
    with server.client() as c:
        return c.get(f"{REQUESTS}/{request_id}/status", params={"logs": 1}).json()


def running(server: ServeProcess, request_id: str, run: int) -> bool:
    body = status(server, request_id)
    return body["status"] == "IN_PROGRESS" and f"started on cpu (run {run})" in [x["message"] for x in body["logs"]]


def test_kill_during_a_job_and_restart(server_weights: Path, control_videos: dict[str, Path], tmp_path: Path) -> None:
    server = ServeProcess(server_weights, tmp_path / "data").start()
    try:
        with server.client() as c:
            video = c.post("/storage/upload/initiate", json={"file_name": "pose.mp4"}).json()
            assert httpx.put(video["upload_url"], content=control_videos["pose"].read_bytes()).status_code == 200
            job = {"prompt": "survivor", "video_url": video["file_url"], **SMALL_JOB}
            doomed = c.post("/queue/fal-ai/wan-vace-14b/pose", json=job).json()["request_id"]
            survivor = c.post("/queue/fal-ai/wan-vace-14b/pose", json=job).json()["request_id"]
        wait_until(lambda: running(server, doomed, 1), 60, "the first job to start")
        server.kill()

        server.start()  # same port and data directory
        assert status(server, survivor)["status"] == "IN_QUEUE"
        wait_until(lambda: running(server, doomed, 2), 60, "the interrupted job's second run")
        assert any("re-queued" in x["message"] for x in status(server, doomed)["logs"])
        server.kill()

        server.start()
        failed = status(server, doomed)
        assert failed["status"] == "COMPLETED" and failed["error_type"] == "runner_disconnected"
        with server.client() as c:
            result = c.get(f"{REQUESTS}/{doomed}")
            assert result.status_code == 503 and "2 times" in result.json()["detail"]
        done = wait_until(
            lambda: (s := status(server, survivor))["status"] == "COMPLETED" and s,
            300,
            "the queued job to run after the restart",
        )
        assert "error" not in done
        with server.client() as c:
            output = c.get(f"{REQUESTS}/{survivor}").json()
            assert output["prompt"] == "survivor" and c.get(output["video"]["url"]).content[4:8] == b"ftyp"
            metrics = c.get("/metrics").text
        assert 'vace_jobs{state="failed"} 1.0' in metrics and 'vace_jobs{state="completed"} 1.0' in metrics
    finally:
        server.stop()


def test_a_killed_worker_process_hands_its_job_back_and_is_replaced(
    server_weights: Path, control_videos: dict[str, Path], tmp_path: Path
) -> None:
    server = ServeProcess(server_weights, tmp_path / "data").start()
    try:
        video = "data:video/mp4;base64," + base64.b64encode(control_videos["pose"].read_bytes()).decode()
        with server.client() as c:
            doomed = c.post(
                "/queue/fal-ai/wan-vace-14b/pose",
                json={"prompt": "x", "video_url": video, **SMALL_JOB, "num_inference_steps": 8},
            ).json()["request_id"]

        def holder(body: dict[str, Any], run: int) -> int | None:
            """The pid of the process that holds run ``run``, from its ``worker HOST:PID:DEVICE:TOKEN`` line."""
            lines = [x["message"] for x in body["logs"] if x["message"].startswith("worker ")]
            return int(lines[run - 1].split(":")[1]) if len(lines) >= run else None

        wait_until(
            lambda: any(x["message"].startswith("step 1/") for x in status(server, doomed)["logs"]),
            120,
            "the job's first step",
        )
        worker = holder(status(server, doomed), 1)
        assert worker is not None and worker != server.proc.pid  # type: ignore[union-attr]  # not the HTTP process
        os.kill(worker, signal.SIGKILL)
        with server.client() as c:
            assert c.get("/health").status_code == 200  # the server itself goes on
        done = wait_until(
            lambda: (s := status(server, doomed))["status"] == "COMPLETED" and s,
            300,
            "the job to complete in a new worker process",
        )
        messages = [x["message"] for x in done["logs"]]
        assert "the worker process on cpu exited (killed by SIGKILL) (run 1 of at most 2); re-queued" in messages
        assert "error" not in done and sum(m.startswith("completed in") for m in messages) == 1
        replacement = holder(done, 2)
        assert replacement not in (None, worker, server.proc.pid)  # type: ignore[union-attr]
        with server.client() as c:
            assert c.get(f"{REQUESTS}/{doomed}").status_code == 200

        # The idle replacement is woken when a job comes: each job below is claimed well within the 1 s fallback
        # poll (jobs that fail at once on their input, so each takes a moment).
        waits = []
        for _ in range(5):
            time.sleep(1.2)  # the worker is idle again, waiting
            with server.client() as c:
                job = c.post(
                    "/queue/fal-ai/wan-vace-14b/pose",
                    json={"prompt": "x", **SMALL_JOB, "video_url": "data:video/mp4;base64,AAAA"},
                ).json()["request_id"]
            wait_until(lambda j=job: status(server, j)["status"] == "COMPLETED", 60, "a failing job to end")
            with contextlib.closing(
                sqlite3.connect(f"file:{tmp_path / 'data' / 'jobs.sqlite3'}?mode=ro", uri=True)
            ) as db:
                waits.append(db.execute("SELECT started_at - created_at FROM jobs WHERE id = ?", (job,)).fetchone()[0])
        assert max(waits) < 0.25, waits
    finally:
        server.stop()
