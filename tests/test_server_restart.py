"""Jobs survive the server process dying: ``vace serve`` is SIGKILLed during a job and started again on the same
data directory. The job that was running is re-queued once; killed again during its second run, it is failed with
a stated reason; the job queued behind it runs to completion after the restart. Nothing is lost.
"""

from __future__ import annotations

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


def test_kill_during_a_job_and_restart(server_weights: Path, control_videos: dict[str, Path],  # noqa: F811
                                       tmp_path: Path) -> None:
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
        done = wait_until(lambda: (s := status(server, survivor))["status"] == "COMPLETED" and s, 300,
                          "the queued job to run after the restart")
        assert "error" not in done
        with server.client() as c:
            output = c.get(f"{REQUESTS}/{survivor}").json()
            assert output["prompt"] == "survivor" and c.get(output["video"]["url"]).content[4:8] == b"ftyp"
            metrics = c.get("/metrics").text
        assert 'vace_jobs{state="failed"} 1.0' in metrics and 'vace_jobs{state="completed"} 1.0' in metrics
    finally:
        server.stop()

