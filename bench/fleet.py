"""Fleet: what running the workers in processes of their own buys, measured with real processes on one machine.

Three figures (issue 16, "Measured"), all on tiny random weights with one torch thread per process:

- throughput: the same ``--jobs`` jobs queued at once on an API node (``vace serve --no-workers``) with one
  ``vace worker`` process, then with two; the ratio of the two rates. Each rate is jobs over the span from the first
  submission to the last job's end, read from the store's own timestamps (not from the pollers).
- claim latency: ``--claims`` jobs submitted one at a time to an idle worker; the time from the job's creation
  (``created_at``, written by the process that took the request) to its claim (``started_at``, written by the
  worker). PostgreSQL: an API node and a ``vace worker`` node, woken by LISTEN/NOTIFY. SQLite: one ``vace serve``
  with its worker as a thread of the HTTP process (``--worker-threads``; a SQLite file belongs to one node, so
  ``vace worker`` cannot share it with an API node).
- status latency: ``--clients`` threads polling the unfinished jobs' status every ``--interval`` s while the
  throughput jobs run (queue_load.py's poller), on the API node with one and with two busy worker processes, against
  one ``vace serve`` whose worker runs in the HTTP process (``--worker-threads``), on the same load. (``vace serve``
  runs its worker in a process of its own by default; ``bench/soak.py`` measures that.)

The PostgreSQL server is a throw-away cluster made by the tests' own code (``tests/pg_fixtures.py``); files are a
shared directory. Prints the figures and markdown table rows for docs/BENCHMARKS.md.

    OMP_NUM_THREADS=1 python bench/fleet.py [--jobs 8] [--claims 10] [--clients 5] [--interval 0.1]
        [--weights-dir DIR]

Without ``--weights-dir`` it builds tiny random-weight models in a temporary directory first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from queue_load import JOB, REPO, free_port, percentile, poll, start_server, upload

from server.api.node_secrets import make_secrets
from server.backends import open_store
from server.config import Settings
from server.store.jobs import Job

sys.path.insert(0, str(REPO / "tests"))
from pg_fixtures import PG_BIN, PostgresCluster

SUBMIT = "/queue/fal-ai/wan-vace-14b/pose"
REQUESTS = "/queue/fal-ai/wan-vace-14b/requests"


@dataclass
class Load:
    """One run of the throughput jobs: their ids, the status latencies the pollers saw and the poll errors."""

    ids: list[str]
    status_ms: list[float]
    errors: list[str]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (a worker hands its job back and exits), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@contextlib.contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        stop(proc)


def start_worker(store: str, files: Path, weights: Path, data_dir: Path) -> subprocess.Popen[bytes]:
    """``vace worker`` as a child process, once it says it is pulling jobs."""
    log_path = data_dir.parent / f"{data_dir.name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "worker",
                "--store",
                store,
                "--files",
                str(files),
                "--weights-dir",
                str(weights),
                "--data-dir",
                str(data_dir),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 180
    while "vace worker on" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise SystemExit(f"worker did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    return proc


def submit(client: httpx.Client, video_url: str) -> str:
    response = client.post(SUBMIT, json={**JOB, "video_url": video_url})
    response.raise_for_status()
    return response.json()["request_id"]


def wait_completed(client: httpx.Client, job_id: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get(f"{REQUESTS}/{job_id}/status").json()["status"] != "COMPLETED":
        if time.monotonic() > deadline:
            raise SystemExit(f"{job_id} did not complete within {timeout_s:g} s")
        time.sleep(0.1)


def one_at_a_time(client: httpx.Client, video_url: str, n: int) -> list[str]:
    """``n`` jobs, each submitted once the one before has completed and the worker is idle again."""
    ids = []
    for _ in range(n):
        ids.append(submit(client, video_url))
        wait_completed(client, ids[-1])
        time.sleep(0.3)
    return ids


def load(base: str, video_url: str, args: argparse.Namespace) -> Load:
    """``--jobs`` jobs queued at once, their status polled by ``--clients`` threads until every one has ended."""
    with httpx.Client(base_url=base, timeout=60) as client:
        ids = [submit(client, video_url) for _ in range(args.jobs)]
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
    for c in clients:
        c.close()
    return Load(ids, [x * 1000 for x in latencies], errors)


def read_jobs(store_url: str, ids: list[str]) -> list[Job]:
    """The jobs as the store recorded them (the store's timestamps, not what a poller happened to see)."""
    store = open_store(Settings(store=store_url))
    try:
        jobs = [store.get(job_id) for job_id in ids]
    finally:
        store.close()
    missing = [job_id for job_id, job in zip(ids, jobs, strict=True) if job is None]
    if missing:
        raise SystemExit(f"jobs missing from the store: {missing}")
    return [job for job in jobs if job is not None]


def check_ok(jobs: list[Job]) -> None:
    failed = [f"{job.id}: {job.outcome} {job.failure}" for job in jobs if job.outcome != "ok"]
    if failed:
        raise SystemExit("jobs that did not complete with a video:\n" + "\n".join(failed))


def claim_ms(jobs: list[Job]) -> list[float]:
    return [((job.started_at or 0) - job.created_at) * 1000 for job in jobs]


def jobs_per_min(jobs: list[Job]) -> float:
    span = max(job.finished_at or 0 for job in jobs) - min(job.created_at for job in jobs)
    return len(jobs) / span * 60


def p50_p99(values: list[float]) -> str:
    return f"{percentile(values, 50):.1f} / {percentile(values, 99):.1f}"


def single_process(weights: Path, root: Path, video: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One ``vace serve`` with its worker in the HTTP process (``--worker-threads``), SQLite."""
    data_dir, port = root / "single", free_port()
    base = f"http://127.0.0.1:{port}"
    with running(start_server(weights, data_dir, port, root / "single.log", "--worker-threads")):
        with httpx.Client(base_url=base, timeout=60) as client:
            video_url = upload(client, "pose.mp4", video.read_bytes())
            wait_completed(client, submit(client, video_url))  # loads the model
            claims = one_at_a_time(client, video_url, args.claims)
        busy = load(base, video_url, args)
    store_url = f"sqlite:///{data_dir / 'jobs.sqlite3'}"  # read once the server has let go of the file
    claimed, loaded = read_jobs(store_url, claims), read_jobs(store_url, busy.ids)
    check_ok(claimed + loaded)
    return {"claim_ms": claim_ms(claimed), "status": busy, "rate": jobs_per_min(loaded)}


def fleet(weights: Path, root: Path, video: Path, store: str, args: argparse.Namespace) -> dict[str, Any]:
    """An API node and one, then two ``vace worker`` processes on PostgreSQL and a shared files directory."""
    files, port = root / "shared-files", free_port()
    base = f"http://127.0.0.1:{port}"
    make_secrets(root / "api-secrets")  # an API node of a fleet is given them; the workers get none
    api = start_server(
        root / "no-weights",
        root / "api",
        port,
        root / "api.log",
        "--store",
        store,
        "--files",
        str(files),
        "--no-workers",
        "--secrets-dir",
        str(root / "api-secrets"),
    )
    with running(api), running(start_worker(store, files, weights, root / "worker-1")):
        with httpx.Client(base_url=base, timeout=60) as client:
            video_url = upload(client, "pose.mp4", video.read_bytes())
            wait_completed(client, submit(client, video_url))
            claims = one_at_a_time(client, video_url, args.claims)
        one = load(base, video_url, args)
        with running(start_worker(store, files, weights, root / "worker-2")) as second:
            warm_up(base, video_url, store, second.pid)
            two = load(base, video_url, args)
    claimed, one_jobs, two_jobs = (read_jobs(store, ids) for ids in (claims, one.ids, two.ids))
    check_ok(claimed + one_jobs + two_jobs)
    busy_workers = {job.worker_id for job in two_jobs}
    if len(busy_workers) != 2:
        raise SystemExit(f"the two-worker load ran on {busy_workers}")
    return {
        "claim_ms": claim_ms(claimed),
        "one": one,
        "two": two,
        "rate_one": jobs_per_min(one_jobs),
        "rate_two": jobs_per_min(two_jobs),
    }


def warm_up(base: str, video_url: str, store: str, pid: int, rounds: int = 5) -> None:
    """Pairs of jobs until the worker node ``pid`` (its worker process, in the node's process group) has run one
    (loaded its model), so that loading is not timed."""
    with httpx.Client(base_url=base, timeout=60) as client:
        for _ in range(rounds):
            pair = [submit(client, video_url) for _ in range(2)]
            for job_id in pair:
                wait_completed(client, job_id)
            if any(
                job.worker_id and os.getpgid(int(job.worker_id.split(":")[1])) == pid for job in read_jobs(store, pair)
            ):
                return
    raise SystemExit(f"worker {pid} took none of {2 * rounds} warm-up jobs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs queued at once for each throughput run")
    parser.add_argument("--claims", type=int, default=10, help="jobs submitted one at a time to an idle worker")
    parser.add_argument("--clients", type=int, default=5, help="threads polling status during the throughput runs")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--weights-dir", type=Path)
    args = parser.parse_args()
    if PG_BIN is None:
        raise SystemExit(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
        )
    os.environ["OMP_NUM_THREADS"] = "1"  # one torch thread in every process this bench starts
    os.environ.pop("VACE_API_KEYS", None)

    from weights.tiny import build_tiny_weights
    from weights.tiny.samples import write_sample

    started = time.monotonic()
    cluster = PostgresCluster(PG_BIN)
    try:
        cluster.start()
        with tempfile.TemporaryDirectory(prefix="vace-fleet-bench-") as tmp:
            root = Path(tmp)
            weights = args.weights_dir or build_tiny_weights(root / "weights")
            video = write_sample("pose", root / "pose.mp4", num_frames=17)
            single = single_process(weights, root, video, args)
            shared = fleet(weights, root, video, cluster.new_database(), args)
    finally:
        cluster.remove()
    report(args, single, shared, time.monotonic() - started)


def report(args: argparse.Namespace, single: dict[str, Any], shared: dict[str, Any], wall_s: float) -> None:
    errors = single["status"].errors + shared["one"].errors + shared["two"].errors
    print(
        f"fleet bench: {args.jobs} jobs per throughput run (17 frames 416x240, 2 steps, tiny weights), "
        f"{args.claims} claims, {args.clients} clients polling every {args.interval:g} s, {os.cpu_count()} CPU "
        f"cores, one torch thread per process; {wall_s:.0f} s in all"
    )
    print(
        f"  throughput: 1 worker process {shared['rate_one']:.1f} jobs/min, 2 worker processes "
        f"{shared['rate_two']:.1f} jobs/min, ratio {shared['rate_two'] / shared['rate_one']:.2f}; "
        f"single process (1 in-process worker) {single['rate']:.1f} jobs/min"
    )
    print(
        f"  claim latency p50 / p99 ms: PostgreSQL (worker process) {p50_p99(shared['claim_ms'])}, "
        f"SQLite (in-process worker) {p50_p99(single['claim_ms'])}"
    )
    for name, run in (
        ("single process, worker in it", single["status"]),
        ("API node, 1 busy worker process", shared["one"]),
        ("API node, 2 busy worker processes", shared["two"]),
    ):
        print(
            f"  status latency, {name}: p50 / p99 {p50_p99(run.status_ms)} ms, max {max(run.status_ms):.1f} ms "
            f"({len(run.status_ms)} requests)"
        )
    print("\n| jobs/min, 1 worker process | 2 worker processes | ratio | single process |")
    print("|---|---|---|---|")
    print(
        f"| {shared['rate_one']:.1f} | {shared['rate_two']:.1f} | {shared['rate_two'] / shared['rate_one']:.2f} "
        f"| {single['rate']:.1f} |"
    )
    print("\n| claim latency p50 / p99 ms | PostgreSQL, worker process | SQLite, in-process worker |")
    print("|---|---|---|")
    print(f"| {args.claims} jobs | {p50_p99(shared['claim_ms'])} | {p50_p99(single['claim_ms'])} |")
    print("\n| setup | status p50 / p99 / max ms | requests |")
    print("|---|---|---|")
    for name, run in (
        ("one `vace serve` (SQLite), its worker in the HTTP process", single["status"]),
        ("API node (PostgreSQL), 1 busy `vace worker` process", shared["one"]),
        ("API node (PostgreSQL), 2 busy `vace worker` processes", shared["two"]),
    ):
        print(f"| {name} | {p50_p99(run.status_ms)} / {max(run.status_ms):.1f} | {len(run.status_ms)} |")
    for problem in errors[:10]:
        print(f"  ! {problem}")
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
