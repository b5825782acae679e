"""Queue load: many queued submissions while clients poll their status, against a live ``vace serve``.

By default: 50 jobs (the smallest the schema allows: 17 frames of a 416x240 pose video, 2 steps) submitted to the
queue at once, and 10 client threads that each send one status request every 0.1 s, cycling through their share of
the unfinished jobs, like fal-client's polling. When every job has ended it fetches every result and the video it
names, and checks that none was lost. Prints queue throughput and status/submit latency percentiles.

    python bench/queue_load.py [--jobs 50] [--clients 10] [--interval 0.1] [--weights-dir DIR]

Without ``--weights-dir`` it builds tiny random-weight models in a temporary directory first.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
JOB = {"prompt": "a person dancing", "num_frames": 17, "num_inference_steps": 2, "acceleration": "none", "seed": 0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(weights: Path, data_dir: Path, port: int, log_path: Path, *flags: str) -> subprocess.Popen[bytes]:
    """``vace serve`` (plus ``flags``, e.g. an API node's) as a child process in its own session, once its /health
    answers."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--weights-dir",
                str(weights),
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                *flags,
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "VACE_API_KEYS"},
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("server did not start")


@contextlib.contextmanager
def serving(weights_dir: Path | None, prefix: str) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """A live ``vace serve`` on a free loopback port, its data in a new temporary directory (tiny random weights are
    built there unless ``weights_dir`` is given); yields its base URL, the directory and the server process, and
    stops the server afterwards."""
    from weights.tiny import build_tiny_weights

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        weights = weights_dir or build_tiny_weights(root / "weights")
        port = free_port()
        server = start_server(weights, root / "data", port, root / "serve.log")
        try:
            yield f"http://127.0.0.1:{port}", root, server
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)


def upload(client: httpx.Client, name: str, data: bytes) -> str:
    """Upload ``data`` the way @fal-ai/client does; returns its file URL."""
    urls = client.post("/storage/upload/initiate", json={"file_name": name}).json()
    client.put(urls["upload_url"], content=data).raise_for_status()
    return urls["file_url"]


def poll(
    client: httpx.Client,
    ids: list[str],
    interval: float,
    latencies: list[float],
    errors: list[str],
    deadline: float = math.inf,
) -> None:
    """One client: a status request every ``interval`` seconds, round-robin over its unfinished jobs, until all
    have completed or ``time.monotonic()`` passes ``deadline``."""
    pending = list(ids)
    i = 0
    while pending and time.monotonic() < deadline:
        job_id = pending[i % len(pending)]
        started = time.perf_counter()
        try:
            response = client.get(f"/queue/fal-ai/wan-vace-14b/requests/{job_id}/status", params={"logs": 1})
            latencies.append(time.perf_counter() - started)
            if response.status_code not in (200, 202):
                errors.append(f"{job_id}: status HTTP {response.status_code}")
            elif response.json()["status"] == "COMPLETED":
                pending.remove(job_id)
                continue
        except httpx.HTTPError as exc:
            errors.append(f"{job_id}: {exc!r}")
        i += 1
        time.sleep(max(0.0, interval - (time.perf_counter() - started)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--weights-dir", type=Path)
    args = parser.parse_args()

    from weights.tiny.samples import write_sample

    with serving(args.weights_dir, "vace-queue-bench-") as (base, root, _server):
        run(args, base, write_sample("pose", root / "pose.mp4", num_frames=17))


def run(args: argparse.Namespace, base: str, video: Path) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        video_url = upload(client, "pose.mp4", video.read_bytes())
        submit_latencies, ids, positions = [], [], []
        started = time.perf_counter()
        for _ in range(args.jobs):
            t = time.perf_counter()
            response = client.post("/queue/fal-ai/wan-vace-14b/pose", json={**JOB, "video_url": video_url})
            submit_latencies.append(time.perf_counter() - t)
            response.raise_for_status()
            ids.append(response.json()["request_id"])
            positions.append(response.json()["queue_position"])

    latencies: list[float] = []
    errors: list[str] = []
    clients = [httpx.Client(base_url=base, timeout=60) for _ in range(args.clients)]
    threads = [
        threading.Thread(target=poll, args=(clients[c], ids[c :: args.clients], args.interval, latencies, errors))
        for c in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started

    lost = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for job_id in ids:
            result = client.get(f"/queue/fal-ai/wan-vace-14b/requests/{job_id}")
            if result.status_code != 200 or client.head(result.json()["video"]["url"]).status_code != 200:
                lost.append(f"{job_id}: result HTTP {result.status_code} {result.text[:200]}")
        metrics = client.get("/metrics").text
    for c in clients:
        c.close()

    ms = [x * 1000 for x in latencies]
    submit_ms = [x * 1000 for x in submit_latencies]
    print(
        f"queue load: {args.jobs} jobs (17 frames 416x240, 2 steps, tiny weights), {args.clients} clients polling "
        f"every {args.interval:g} s, 1 worker ({os.cpu_count()} CPU cores)"
    )
    print(f"  completed: {args.jobs - len(lost)}/{args.jobs}, lost or failed: {len(lost)}, poll errors: {len(errors)}")
    print(
        f"  wall time: {elapsed:.1f} s, throughput: {args.jobs / elapsed * 60:.1f} jobs/min "
        f"({elapsed / args.jobs:.2f} s/job)"
    )
    print(
        f"  status requests: {len(ms)} ({len(ms) / elapsed:.0f}/s), latency p50 {percentile(ms, 50):.1f} ms, "
        f"p99 {percentile(ms, 99):.1f} ms, max {max(ms):.1f} ms, mean {statistics.mean(ms):.1f} ms"
    )
    print(
        f"  submit latency: p50 {percentile(submit_ms, 50):.1f} ms, p99 {percentile(submit_ms, 99):.1f} ms; "
        f"queue_position at submit: first {positions[0]}, last {positions[-1]}"
    )
    for line in metrics.splitlines():
        if line.startswith(("vace_jobs{", "vace_job_duration_seconds_sum", "vace_job_duration_seconds_count")):
            print(f"  {line}")
    for problem in (lost + errors)[:10]:
        print(f"  ! {problem}")
    if lost or errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
