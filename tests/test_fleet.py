"""A fleet on one machine: two API nodes (``vace serve --no-workers``, in-process) and two worker processes
(``vace worker``) sharing one PostgreSQL job store and one S3 bucket for files (moto's S3 server), tiny weights.

The API nodes share the secrets they are given (``vace secrets``); the workers run without any, and the API nodes
deliver the webhooks of the jobs they end. The real fal-client submits to node A and reads status and results through
node B; a worker killed with SIGKILL in
the middle of a job loses nothing: the other worker takes the job over when its lease runs out and completes it,
exactly once; a cancel sent to node B stops a job running in a worker process at its next step; PostgreSQL restarted
with jobs queued and running loses nothing either: every node reconnects and every job completes exactly once.
An API node alone, with no worker alive anywhere, still keeps the queue: it ends a job whose start timeout passed
and hands a dead worker's job back.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from s3_fixtures import S3Server, s3_server  # noqa: F401
from server_fixtures import (  # noqa: F401
    REPO,
    SMALL_JOB,
    Receiver,
    ThreadServer,
    control_videos,
    free_port,
    server_weights,
    verify_like_fals_docs,
    wait_until,
)

from server.api.node_secrets import SECRET_FILE, SIGNING_KEY_FILE
from server.commands import make_secrets
from server.config import Settings
from server.falclient import use_server
from server.store.postgres import PostgresJobStore

POSE = "fal-ai/wan-vace-14b/pose"
REQUESTS = "/queue/fal-ai/wan-vace-14b/requests"
LEASE_S = 3.0


class WorkerProcess:
    """``vace worker`` as a child process (the real CLI) in a process group of its own, with its worker process, which
    a test can kill outright."""

    def __init__(self, store: str, files: str, weights: Path, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}-worker.log"
        args = [
            sys.executable,
            "-m",
            "server.cli",
            "worker",
            "--store",
            store,
            "--files",
            files,
            "--weights-dir",
            str(weights),
            "--data-dir",
            str(data_dir),
            "--lease-s",
            str(LEASE_S),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
            )
        wait_until(lambda: "vace worker on" in self.output() or self.proc.poll() is not None, 120, "vace worker")
        assert self.proc.poll() is None, self.output()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def runs(self, worker_id: str) -> bool:
        """Whether the worker ``HOST:PID:DEVICE:TOKEN`` is one of this node's (its process is in this group)."""
        try:
            return os.getpgid(int(worker_id.split(":")[1])) == self.proc.pid
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    hooks = Receiver()
    yield hooks
    hooks.close()


@pytest.fixture(scope="module")
def fleet(
    server_weights: Path,
    pg_cluster: Any,
    s3_server: S3Server,
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ThreadServer, ThreadServer, list[WorkerProcess]]]:
    root = tmp_path_factory.mktemp("fleet")
    store, files = pg_cluster.new_database(), s3_server.new_bucket()  # the workers inherit the AWS_* settings
    make_secrets(root / "api-secrets")  # what the operator hands to every API node, and to no worker

    def api_node(name: str) -> ThreadServer:
        return ThreadServer(
            Settings(
                weights_dir=root / "no-weights",
                data_dir=root / name,
                port=free_port(),
                store=store,
                files=files,
                no_workers=True,
                lease_s=LEASE_S,
                secrets_dir=root / "api-secrets",
                webhook_allow=(f"127.0.0.1:{receiver.port}",),
            )
        )

    with api_node("api-a") as node_a, api_node("api-b") as node_b:
        workers = [WorkerProcess(store, files, server_weights, root / f"worker-{i}") for i in (1, 2)]
        try:
            yield node_a, node_b, workers
        finally:
            for worker in workers:
                worker.stop()


def status(node: ThreadServer, request_id: str) -> dict[str, Any]:
    return httpx.get(f"{node.url}{REQUESTS}/{request_id}/status", params={"logs": 1}, timeout=30).json()


def messages(body: dict[str, Any]) -> list[str]:
    return [line["message"] for line in body["logs"]]


def test_fal_client_on_one_node_results_on_another(
    fleet: Any, control_videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fal_client
    import fal_client.client as fal_module

    node_a, node_b, workers = fleet

    def fleet_view() -> dict[str, Any] | None:  # an API node has no weights: its readiness is the workers'
        answer = httpx.get(f"{node_b.url}/ready", timeout=30)
        return answer.json() if answer.status_code == 200 and len(answer.json()["workers"]) == 2 else None

    ready = wait_until(fleet_view, 60, "both workers in the fleet view")
    assert all(e["weights_present"] for e in ready["endpoints"].values())
    assert all(any(w.runs(h["id"]) for h in ready["workers"]) for w in workers)
    for name in ("RUN_URL_FORMAT", "QUEUE_URL_FORMAT", "REST_URL", "CDN_URL", "REALTIME_URL_FORMAT"):
        monkeypatch.setattr(fal_module, name, getattr(fal_module, name))
    use_server(node_a.url)
    client = fal_client.SyncClient()
    video_url = client.upload(control_videos["pose"].read_bytes(), "video/mp4", file_name="pose.mp4")
    uploaded = httpx.get(video_url.replace(node_a.url, node_b.url), follow_redirects=True, timeout=30)
    assert uploaded.content == control_videos["pose"].read_bytes()  # node A put it in the bucket; B redirects there
    handle = client.submit(POSE, {"prompt": "a dancer", "video_url": video_url, **SMALL_JOB})
    with httpx.stream("GET", f"{node_b.url}{REQUESTS}/{handle.request_id}/status/stream", timeout=300) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert '"COMPLETED"' in events[-1]
    result = httpx.get(f"{node_b.url}{REQUESTS}/{handle.request_id}", timeout=30)
    assert result.status_code == 200
    output_url = result.json()["video"]["url"]
    assert output_url.startswith(os.environ["AWS_ENDPOINT_URL"] + "/") and "X-Amz-Signature=" in output_url
    video = httpx.get(output_url, timeout=30)
    assert video.content[4:8] == b"ftyp"  # a worker process put it in the bucket, which serves it


def test_workers_hold_no_secrets_and_the_api_nodes_deliver_their_webhooks(
    fleet: Any,
    receiver: Receiver,
    control_videos: dict[str, Path],
) -> None:
    node_a, node_b, workers = fleet
    video = "data:video/mp4;base64," + base64.b64encode(control_videos["pose"].read_bytes()).decode()
    answer = httpx.post(
        f"{node_a.url}/queue/{POSE}",
        params={"fal_webhook": receiver.url},
        json={"prompt": "x", "video_url": video, **SMALL_JOB},
        timeout=30,
    )
    request_id = answer.json()["request_id"]
    done = wait_until(lambda: (s := status(node_b, request_id))["status"] == "COMPLETED" and s, 300, "the job")
    assert any(m.startswith("worker ") for m in messages(done))  # a worker process ran it
    ((headers, body),) = wait_until(lambda: receiver.for_job(request_id), 30, "the webhook")
    assert json.loads(body)["status"] == "OK"
    for node in (node_a, node_b):  # signed with the key both API nodes were given
        assert verify_like_fals_docs(headers, body, httpx.get(f"{node.url}/.well-known/jwks.json").json())
    for worker in workers:
        assert not {p.name for p in worker.data_dir.rglob("*")} & {SECRET_FILE, SIGNING_KEY_FILE}


def test_a_killed_worker_loses_nothing_and_a_cancel_reaches_a_worker(
    fleet: Any, control_videos: dict[str, Path]
) -> None:
    node_a, node_b, workers = fleet
    video = "data:video/mp4;base64," + base64.b64encode(control_videos["pose"].read_bytes()).decode()
    long_job = {"prompt": "x", "video_url": video, **SMALL_JOB, "num_inference_steps": 20}
    doomed = httpx.post(f"{node_a.url}/queue/{POSE}", json=long_job, timeout=30).json()["request_id"]
    running = wait_until(
        lambda: next((m for m in messages(status(node_b, doomed)) if m.startswith("worker ")), None),
        120,
        "the job to start",
    )
    victim = next(w for w in workers if w.runs(running.removeprefix("worker ")))
    wait_until(lambda: any(m.startswith("step 2/") for m in messages(status(node_b, doomed))), 120, "step 2")
    victim.kill()
    done = wait_until(lambda: (s := status(node_b, doomed))["status"] == "COMPLETED" and s, 300, "the takeover")
    assert done.get("error_type") is None, done
    starts = [m for m in messages(done) if m.startswith("started on")]
    holders = [m for m in messages(done) if m.startswith("worker ")]
    assert starts[-1].endswith("(run 2)") and len(holders) == 2
    assert any(w is not victim and w.runs(holders[1].removeprefix("worker ")) for w in workers)
    assert sum(m.startswith("completed in") for m in messages(done)) == 1
    assert httpx.get(f"{node_a.url}{REQUESTS}/{doomed}", timeout=30).status_code == 200

    survivor = next(w for w in workers if w is not victim)
    cancelled = httpx.post(
        f"{node_a.url}/queue/{POSE}", json={**long_job, "num_inference_steps": 50}, timeout=30
    ).json()["request_id"]
    wait_until(lambda: any(m.startswith("step 1/") for m in messages(status(node_b, cancelled))), 120, "a step")
    assert httpx.put(f"{node_b.url}{REQUESTS}/{cancelled}/cancel", timeout=30).status_code == 202
    ended = wait_until(lambda: (s := status(node_a, cancelled))["status"] == "COMPLETED" and s, 60, "the cancel")
    steps = [int(m.split()[1].split("/")[0]) for m in messages(ended) if m.startswith("step ")]
    assert ended["error_type"] == "client_cancelled" and max(steps) < 50
    assert survivor.proc.poll() is None


def test_a_postgresql_restart_under_load_loses_nothing(
    fleet: Any, pg_cluster: Any, control_videos: dict[str, Path]
) -> None:
    node_a, node_b, workers = fleet
    alive = [w for w in workers if w.proc.poll() is None]  # an earlier test may have killed one
    video = "data:video/mp4;base64," + base64.b64encode(control_videos["pose"].read_bytes()).decode()
    job = {"prompt": "x", "video_url": video, **SMALL_JOB, "num_inference_steps": 4}
    ids = [httpx.post(f"{node_a.url}/queue/{POSE}", json=job, timeout=30).json()["request_id"] for _ in range(3)]
    wait_until(
        lambda: any(m.startswith("step 2/") for i in ids for m in messages(status(node_b, i))), 120, "a job running"
    )
    pg_cluster.restart()  # every connection of both API nodes and both workers drops, mid-job and with jobs queued

    def ended(request_id: str) -> dict[str, Any] | None:
        try:  # an API node answers again once its pool has reconnected
            body = status(node_b, request_id)
        except (httpx.HTTPError, ValueError):
            return None
        return body if body.get("status") == "COMPLETED" else None

    # A job submitted after the restart runs too: the API node and the workers' wake-ups reconnected.
    ids.append(wait_until(lambda: _submit(node_a, job), 60, "a submission after the restart"))
    done = [wait_until(lambda i=i: ended(i), 300, f"job {i} to end") for i in ids]
    for body in done:
        assert body.get("error_type") is None, messages(body)
        assert sum(m.startswith("completed in") for m in messages(body)) == 1
    assert all(httpx.get(f"{node_a.url}{REQUESTS}/{i}", timeout=30).status_code == 200 for i in ids)
    assert all(w.proc.poll() is None for w in alive)


def _submit(node: ThreadServer, job: dict[str, Any]) -> str | None:
    """The request id of ``job`` submitted to ``node``, or None while the node cannot take it."""
    try:
        answer = httpx.post(f"{node.url}/queue/{POSE}", json=job, timeout=30)
    except httpx.HTTPError:
        return None
    return answer.json()["request_id"] if answer.status_code == 200 else None


def test_an_api_node_alone_keeps_the_queue(pg_url: str, control_videos: dict[str, Path], tmp_path: Path) -> None:
    """The fleet's workers are all down (scaled to zero): no worker process is alive, one died holding a job. The
    API node still answers a request whose start timeout passed with fal's 504 (``X-Fal-Request-Timeout-Type:
    user``, on the queue and the sync route) and hands the dead worker's job back once its lease ran out (#23)."""
    video = "data:video/mp4;base64," + base64.b64encode(control_videos["pose"].read_bytes()).decode()
    job = {"prompt": "x", "video_url": video, **SMALL_JOB}
    dead_worker = PostgresJobStore(pg_url)
    try:
        lost = dead_worker.add(
            app="fal-ai/wan-vace-14b",
            task="pose",
            model="wan-vace-14b",
            input=job,
            base_url="http://h",
            webhook_url=None,
        )
        assert dead_worker.claim(worker_id="dead-worker", lease_s=LEASE_S).id == lost.id  # type: ignore[union-attr]
        make_secrets(tmp_path / "api-secrets")
        config = Settings(
            weights_dir=tmp_path / "no-weights",
            data_dir=tmp_path / "api",
            port=free_port(),
            store=pg_url,
            no_workers=True,
            lease_s=LEASE_S,
            secrets_dir=tmp_path / "api-secrets",
        )
        with ThreadServer(config) as node:
            timeout = {"x-fal-request-timeout": "1"}
            queued = httpx.post(f"{node.url}/queue/{POSE}", json=job, headers=timeout, timeout=30)
            request_id = queued.json()["request_id"]
            sync = httpx.post(f"{node.url}/{POSE}", json=job, headers=timeout, timeout=30)
            assert sync.status_code == 504 and sync.json()["error_type"] == "request_timeout"
            assert sync.headers["x-fal-request-timeout-type"] == "user"
            ended = wait_until(
                lambda: (s := status(node, request_id))["status"] == "COMPLETED" and s, 10, "the queued job to time out"
            )
            assert ended["error_type"] == "request_timeout"
            result = httpx.get(f"{node.url}{REQUESTS}/{request_id}", timeout=30)
            assert result.status_code == 504 and result.headers["x-fal-request-timeout-type"] == "user"

            back = wait_until(
                lambda: (s := status(node, lost.id))["status"] == "IN_QUEUE" and s,
                3 * LEASE_S,
                "the dead worker's job to be handed back",
            )
            assert "stopped renewing its lease (run 1 of at most 2); re-queued" in messages(back)[-1]
    finally:
        dead_worker.close()
