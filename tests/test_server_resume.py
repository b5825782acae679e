"""Resume and live previews through the server: ``vace serve`` (a child process, a worker process per device, tiny
weights, one torch thread) runs a 4-step job that checkpoints after every step; its worker process is SIGKILLed after
a checkpoint, the replacement process takes the job back and goes on from that checkpoint, and the frames equal
those of the same request run uninterrupted, bit for bit. On the way: the live preview is served to the job's key
(and 404 to another key), named in the status body, and gone with the job; the checkpoint and preview files are
deleted when the jobs end; ``/metrics`` counts the resumed job and the steps it saved.

The store's part on its own: retention keeps the checkpoint and preview of a job waiting to run again, and sweeps
what a job that ended elsewhere left.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import signal
import sqlite3
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry, Counter
from server_fixtures import ServeProcess, control_videos, server_weights, wait_until  # noqa: F401

from server.files.store import LocalFileStore
from server.runtime.retention import Retention
from server.store.jobs import SqliteJobStore

REQUESTS = "/queue/fal-ai/wan-vace-14b/requests"
KEY, OTHER_KEY = "resume-key", "someone-else"
STEPS = 4


def status(client: Any, request_id: str) -> dict[str, Any]:
    return client.get(f"{REQUESTS}/{request_id}/status", params={"logs": 1}).json()


def messages(body: dict[str, Any]) -> list[str]:
    return [line["message"] for line in body["logs"]]


def checkpoint_step(data_dir: Path, request_id: str) -> int | None:
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / 'jobs.sqlite3'}?mode=ro", uri=True)) as db:
        return db.execute("SELECT checkpoint_step FROM jobs WHERE id = ?", (request_id,)).fetchone()[0]


def frames(client: Any, output: dict[str, Any]) -> np.ndarray:
    """The output's frames from its frames zip (lossless PNGs)."""
    with zipfile.ZipFile(io.BytesIO(client.get(output["frames_zip"]["url"]).content)) as archive:
        return np.stack([np.asarray(Image.open(io.BytesIO(archive.read(name)))) for name in sorted(archive.namelist())])


def test_a_killed_worker_process_resumes_at_its_checkpoint_with_the_same_frames(
    server_weights: Path, control_videos: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = ServeProcess(
        server_weights, data, api_key=KEY, extra_args=["--api-key", OTHER_KEY, "--checkpoint-every-steps", "1"]
    ).start()
    try:
        video = "data:video/mp4;base64," + base64.b64encode(control_videos["pose"].read_bytes()).decode()
        job = {
            "prompt": "a dancer",
            "video_url": video,
            "num_frames": 17,
            "num_inference_steps": STEPS,
            "acceleration": "regular",
            "seed": 3,
            "return_frames_zip": True,
        }
        with server.client() as c:
            doomed = c.post("/queue/fal-ai/wan-vace-14b/pose", json=job).json()["request_id"]
            running = wait_until(
                lambda: (s := status(c, doomed)).get("preview_url") and (checkpoint_step(data, doomed) or 0) >= 2 and s,
                300,
                "a preview and a checkpoint after step 2",
            )
            worker = int(next(m for m in messages(running) if m.startswith("worker ")).split(":")[1])
            os.kill(worker, signal.SIGKILL)
            saved = checkpoint_step(data, doomed)

            # The preview: the job's key gets an animated WebP, another key the 404 of a job it cannot see.
            assert running["preview_url"] == f"{server.url}{REQUESTS}/{doomed}/preview"
            assert 1 <= running["preview_step"] <= STEPS
            preview = c.get(f"{REQUESTS}/{doomed}/preview")
            assert preview.status_code == 200 and preview.headers["content-type"] == "image/webp"
            assert preview.content[:4] == b"RIFF" and preview.content[8:12] == b"WEBP"
            with Image.open(io.BytesIO(preview.content)) as image:
                assert image.is_animated and image.n_frames == 5 and image.size == (312, 180)
            other = c.get(f"{REQUESTS}/{doomed}/preview", headers={"authorization": f"Key {OTHER_KEY}"})
            assert other.status_code == 404

            done = wait_until(
                lambda: (s := status(c, doomed))["status"] == "COMPLETED" and s,
                300,
                "the job to complete in the replacement worker process",
            )
            lines = messages(done)
            assert "error" not in done and f"resumed at step {saved}/{STEPS}" in lines
            second_run = lines[lines.index(f"resumed at step {saved}/{STEPS}") :]
            assert [m for m in second_run if re.fullmatch(r"step \d+/\d+", m)] == [
                f"step {i}/{STEPS}" for i in range(saved + 1, STEPS + 1)
            ]
            assert "preview_url" not in done and c.get(f"{REQUESTS}/{doomed}/preview").status_code == 404

            # The same request, uninterrupted.
            whole = c.post("/queue/fal-ai/wan-vace-14b/pose", json=job).json()["request_id"]
            wait_until(lambda: status(c, whole)["status"] == "COMPLETED", 300, "the uninterrupted job")
            assert not any(m.startswith("resumed") for m in messages(status(c, whole)))
            assert np.array_equal(
                frames(c, c.get(f"{REQUESTS}/{doomed}").json()), frames(c, c.get(f"{REQUESTS}/{whole}").json())
            )
            metrics = c.get("/metrics").text
        assert "vace_resumed_jobs_total 1.0" in metrics
        assert f"vace_resume_steps_saved_total {float(saved)}" in metrics
        left = {p.name for p in (data / "files").rglob("*") if p.is_file()}
        assert not left & {"checkpoint.safetensors", "preview.webp"}, left
        assert checkpoint_step(data, doomed) is None
    finally:
        server.stop()


def test_retention_keeps_the_checkpoint_of_a_job_waiting_to_run_again(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    files = LocalFileStore(tmp_path / "files", tmp_path / "uploads", max_bytes=1 << 20)
    try:
        job = store.add(
            app="fal-ai/wan-vace-14b",
            task="pose",
            model="wan-vace-14b",
            input={"prompt": "x"},
            base_url="http://127.0.0.1",
            webhook_url=None,
        )
        assert store.claim(worker_id="w", lease_s=30) is not None
        keys = {}
        for kind, record in (("checkpoint", store.set_checkpoint), ("preview", store.set_preview)):
            source = tmp_path / kind
            source.write_bytes(b"x")
            keys[kind] = files.adopt(source, f"{kind}.bin")
            assert record(job.id, "w", keys[kind], 2) == (True, None)
        assert store.set_checkpoint(job.id, "another worker", "k", 3) == (False, None)  # not its job
        assert store.requeue(job.id, "the server is stopping", worker_id="w")
        orphan = tmp_path / "orphan"
        orphan.write_bytes(b"x")
        orphan_key = files.adopt(orphan, "checkpoint.safetensors")  # a job's that ended elsewhere

        retention = Retention(
            store,
            files,
            max_age_s=1,
            interval_s=60,
            deleted=Counter("deleted", "test", ["kind"], registry=CollectorRegistry()),
        )
        swept = retention.sweep(now=time.time() + 10)
        assert swept.files == 1 and files.path(orphan_key) is None
        assert all(files.path(key) is not None for key in keys.values())
        queued = store.get(job.id)
        assert (queued.status, queued.checkpoint_key, queued.checkpoint_step) == ("IN_QUEUE", keys["checkpoint"], 2)

        assert store.claim(worker_id="w2", lease_s=30) is not None
        assert store.finish(job.id, result={}, worker_id="w2")  # an end forgets both
        ended = store.get(job.id)
        assert (ended.checkpoint_key, ended.preview_key, ended.preview_step) == (None, None, None)
    finally:
        store.close()
