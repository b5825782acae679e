"""A server whose two CPU devices form one job group (``--devices cpu cpu --parallel ulysses=2``), tiny weights.

The worker's thread is rank 0 (in this test process, inside the in-process server); the other rank is a spawned
process talking gloo on loopback. A job's frames equal a single-device server's for the same request and seed
(within the tolerance of ``frames_match``); SIGKILL of the follower mid-job hands the job back under the attempt rules,
the group restarts with a new follower and completes the job, again with the same frames. Each group start costs the
follower's imports (~17 s here), so one test runs the whole story on one group server.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from frames_match import assert_same_frames
from server_fixtures import SMALL_JOB, ThreadServer, control_videos, free_port, server_weights, wait_until  # noqa: F401

from server.config import Settings

POSE = "/queue/fal-ai/wan-vace-14b/pose"
REQUESTS = "/queue/fal-ai/wan-vace-14b/requests"


def messages(server: ThreadServer, request_id: str) -> tuple[str, list[str]]:
    body = httpx.get(f"{server.url}{REQUESTS}/{request_id}/status", params={"logs": 1}, timeout=30).json()
    return body["status"], [line["message"] for line in body["logs"]]


def frames_of(server: ThreadServer, request_id: str) -> list[bytes]:
    """The completed job's frames: the PNG files of its frames zip, in order."""
    wait_until(lambda: messages(server, request_id)[0] == "COMPLETED", 300, f"job {request_id}", interval_s=0.5)
    result = httpx.get(f"{server.url}{REQUESTS}/{request_id}", timeout=30)
    assert result.status_code == 200, result.text
    archive = httpx.get(result.json()["frames_zip"]["url"], timeout=30).content
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return [z.read(name) for name in sorted(z.namelist())]


@pytest.fixture(scope="module")
def job(control_videos: dict[str, Path]) -> dict[str, Any]:
    video = "data:video/mp4;base64," + base64.b64encode(control_videos["pose"].read_bytes()).decode()
    # Enough steps that the follower can be killed mid-job after the first step is seen.
    return {"prompt": "a dancer", "video_url": video, **SMALL_JOB, "num_inference_steps": 8, "return_frames_zip": True}


def test_settings_refuse_a_group_that_cannot_form() -> None:
    for settings, words in (
        ({"parallel": "ulysses=2"}, "--parallel needs --devices"),
        ({"parallel": "cfg=2,ulysses=2", "devices": ["cpu", "cpu"]}, "needs 4 devices"),
        ({"parallel": "ulysses=2", "devices": ["cpu", "cuda:0"]}, "all of one kind"),
        ({"parallel": "ring=2", "devices": ["cpu", "cpu"]}, "ring attention needs CUDA"),
    ):
        with pytest.raises(ValueError, match=words):
            Settings(**settings)


def test_a_group_serves_jobs_with_single_device_frames_and_recovers_from_a_lost_rank(
    server_weights: Path, job: dict[str, Any], tmp_path: Path
) -> None:
    with ThreadServer(Settings(weights_dir=server_weights, data_dir=tmp_path / "single", port=free_port())) as one:
        submitted = httpx.post(f"{one.url}{POSE}", json=job, timeout=30).json()["request_id"]
        single = frames_of(one, submitted)
    assert len(single) == 17

    config = Settings(
        weights_dir=server_weights,
        data_dir=tmp_path / "group",
        port=free_port(),
        devices=["cpu", "cpu"],
        parallel="ulysses=2",
    )
    with ThreadServer(config) as server:
        ready = wait_until(
            lambda: (r := httpx.get(f"{server.url}/ready", timeout=30).json())["workers"] and r,
            30,
            "the worker's sign of life",
        )
        assert [(w["devices"], w["parallel"]) for w in ready["workers"]] == [(["cpu", "cpu"], "ulysses=2")]
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert 'vace_group_devices{devices="cpu,cpu",parallel="ulysses=2"} 2.0' in metrics

        first = httpx.post(f"{server.url}{POSE}", json=job, timeout=30).json()["request_id"]
        assert_same_frames(frames_of(server, first), single, "group job")
        assert any("on 2 devices (ulysses=2)" in m for m in messages(server, first)[1])

        group = server.app.state.pool.workers[0].group
        follower = group.followers.processes[0]
        doomed = httpx.post(f"{server.url}{POSE}", json=job, timeout=30).json()["request_id"]
        wait_until(lambda: any(m.startswith("step 1/") for m in messages(server, doomed)[1]), 120, "a step")
        os.kill(follower.pid, signal.SIGKILL)
        assert_same_frames(frames_of(server, doomed), single, "job re-run on the new group")
        logs = messages(server, doomed)[1]
        lost = [m for m in logs if "the job group lost a rank" in m]
        assert lost == ["the job group lost a rank: rank 1 (cpu) exited with code -9 (run 1 of at most 2); re-queued"]
        assert [m for m in logs if m.startswith("started on")] == ["started on cpu (run 1)", "started on cpu (run 2)"]
        assert group.followers.processes[0].pid != follower.pid
        assert "vace_group_restarts_total 1.0" in httpx.get(f"{server.url}/metrics", timeout=30).text
