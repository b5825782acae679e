"""Soak: 200 mixed requests against a live ``vace serve`` while clients poll their status; none may be lost.

queue_load.py measures the happy path. A server that stays up for days also gets requests it must refuse, inputs
that only fail inside the worker, and cancels that land while a job waits or while it runs; this bench sends all of
them, interleaved in a seeded random order, and checks that every accepted request ends COMPLETED with the outcome
its kind must have:

- valid: the smallest valid job (17 frames of the 416x240 pose sample, 2 steps, acceleration none). Result 200, and
  the video URL it names downloads as an MP4.
- rejected: refused at submission with fal's 422 list (bad field types, out-of-range values, ``file://`` and other
  non-http URLs, a missing or empty prompt, a body that is not an object). Never queued.
- failing: accepted, then failing in the worker (uploads named .mp4 that hold random bytes, nothing, the first KiB
  of an MP4 or an HTML page; a data URI of random bytes; a loopback URL, which the fetcher refuses). Result 422 in
  fal's shape.
- cancel-queued: a valid job cancelled right after its submission, while the jobs ahead of it keep it queued.
- cancel-running: a valid job cancelled as soon as its status says IN_PROGRESS.
  Both cancelled kinds must answer 499 ``{"detail": "Request was cancelled", "error_type": "client_cancelled"}``, or,
  where the job finished before the cancel landed, the normal output (counted apart).

Meanwhile ``--clients`` threads poll the status of their unfinished jobs every ``--interval`` s (queue_load.py's
poller). An accepted request that does not end within ``--timeout`` s, or ends with another outcome, is lost: the
bench prints it and exits 1, as it does for any 5xx. Reports the outcome counts, status and submit latency
percentiles, wall time, and the server's resident memory (VmRSS of its process group) after startup, at its peak
(sampled every 0.5 s) and after the last job; then the same numbers as a markdown table row for docs/BENCHMARKS.md.

    OMP_NUM_THREADS=1 python bench/soak.py [--valid 30] [--rejected 60] [--failing 40] [--cancel-queued 40]
        [--cancel-running 30] [--clients 10] [--interval 0.1] [--seed 0] [--timeout 1800] [--weights-dir DIR]

Without ``--weights-dir`` it builds tiny random-weight models in a temporary directory first.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from queue_load import JOB, percentile, poll, serving, upload

SUBMIT = "/queue/fal-ai/wan-vace-14b/pose"
REQUESTS = "/queue/fal-ai/wan-vace-14b/requests"
CANCELLED = {"detail": "Request was cancelled", "error_type": "client_cancelled"}
KINDS = ("valid", "rejected", "failing", "cancel-queued", "cancel-running")


@dataclass
class Request:
    kind: str
    body: Any
    request_id: str | None = None
    outcome: str = ""  # what the end check found; see check()


def rejected_bodies(video_url: str) -> list[Any]:
    """Bodies the submit route must refuse with 422, one per way of getting the input wrong."""
    job = {**JOB, "video_url": video_url}
    return [
        {**job, "num_frames": "many"},
        {**job, "num_inference_steps": [2]},
        {**job, "enable_safety_checker": {"on": True}},
        {**job, "num_frames": 999},
        {**job, "num_inference_steps": 1},
        {**job, "guidance_scale": 50},
        {**job, "seed": -1},
        {**job, "acceleration": "turbo"},
        {**job, "video_url": "file:///etc/passwd"},
        {**job, "video_url": "/etc/passwd"},
        {**job, "video_url": "ftp://127.0.0.1/x.mp4"},
        {**job, "ref_image_urls": ["file:///etc/hostname"]},
        {k: v for k, v in job.items() if k != "prompt"},
        {**job, "prompt": ""},
        [job],
    ]


def failing_urls(client: httpx.Client, base: str, video: bytes, rng: random.Random) -> list[str]:
    """Video URLs the submit route accepts but the worker cannot read."""
    noise = rng.randbytes(4096)
    return [
        upload(client, "x.mp4", noise),
        upload(client, "empty.mp4", b""),
        upload(client, "truncated.mp4", video[:1024]),  # a longer prefix decodes: its first frames are used
        upload(client, "page.mp4", b"<html><body>404 Not Found</body></html>"),
        "data:video/mp4;base64," + base64.b64encode(noise).decode(),
        f"{base}/files/no-such-token/x.mp4",
    ]


def plan(args: argparse.Namespace, video_url: str, bad_urls: list[str], rng: random.Random) -> list[Request]:
    counts = {
        "valid": args.valid,
        "rejected": args.rejected,
        "failing": args.failing,
        "cancel-queued": args.cancel_queued,
        "cancel-running": args.cancel_running,
    }
    kinds = [kind for kind, n in counts.items() for _ in range(n)]
    rng.shuffle(kinds)
    bad_bodies, seen = rejected_bodies(video_url), Counter[str]()
    requests = []
    for kind in kinds:
        i = seen[kind]
        seen[kind] += 1
        if kind == "rejected":
            body = bad_bodies[i % len(bad_bodies)]
        elif kind == "failing":
            body = {**JOB, "video_url": bad_urls[i % len(bad_urls)]}
        else:
            body = {**JOB, "video_url": video_url}
        requests.append(Request(kind, body))
    return requests


def rss_kib(pgid: int) -> int:
    """Resident memory of every live process in process group ``pgid`` (the server and any children), in KiB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):  # the process ended while being read
            continue
    return total


def sample_rss(pgid: int, stop: threading.Event, peak: list[int]) -> None:
    while not stop.wait(0.5):
        peak[0] = max(peak[0], rss_kib(pgid))


def cancel_when_running(client: httpx.Client, requests: list[Request], deadline: float, errors: list[str]) -> None:
    """Cancel each request as soon as its status says IN_PROGRESS (they run in submission order, one at a time)."""
    for req in requests:
        while time.monotonic() < deadline:
            status = client.get(f"{REQUESTS}/{req.request_id}/status")
            if status.status_code not in (200, 202):
                errors.append(f"{req.request_id}: status HTTP {status.status_code} {status.text[:200]}")
            elif status.json()["status"] == "IN_PROGRESS":
                cancel = client.put(f"{REQUESTS}/{req.request_id}/cancel")
                if cancel.status_code not in (202, 400):  # 400: it ended between the two requests
                    errors.append(f"{req.request_id}: cancel HTTP {cancel.status_code} {cancel.text[:200]}")
                break
            elif status.json()["status"] == "COMPLETED":
                break  # ended before it was seen running; check() judges its outcome like any other
            time.sleep(0.02)


def is_fal_422(response: httpx.Response) -> bool:
    """A 422 whose body is fal's ``{"detail": [{"loc": [...], "msg": ..., "type": ...}, ...]}``."""
    if response.status_code != 422:
        return False
    detail = response.json().get("detail")
    return (
        isinstance(detail, list)
        and bool(detail)
        and all(
            isinstance(d.get("loc"), list) and isinstance(d.get("msg"), str) and isinstance(d.get("type"), str)
            for d in detail
        )
    )


def video_ok(client: httpx.Client, result: httpx.Response) -> bool:
    if result.status_code != 200:
        return False
    video = client.get(result.json()["video"]["url"])
    return video.status_code == 200 and video.content[4:8] == b"ftyp"


def check(client: httpx.Client, req: Request) -> str:
    """The outcome of an accepted request, or a description of what went wrong (anything starting with '!')."""
    status = client.get(f"{REQUESTS}/{req.request_id}/status")
    if status.status_code != 200 or status.json()["status"] != "COMPLETED":
        return f"! never completed: status HTTP {status.status_code} {status.text[:200]}"
    ran = "inference_time" in status.json().get("metrics", {})
    result = client.get(f"{REQUESTS}/{req.request_id}")
    if req.kind == "valid" and video_ok(client, result):
        return "ok"
    if req.kind == "failing" and is_fal_422(result) and status.json().get("error_type"):
        return "failed (422)"
    if req.kind.startswith("cancel"):
        if result.status_code == 499 and result.json() == CANCELLED:
            return "cancelled while running" if ran else "cancelled before running"
        if video_ok(client, result):
            return "finished before the cancel"
    return f"! unexpected result HTTP {result.status_code} {result.text[:200]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--valid", type=int, default=30)
    parser.add_argument("--rejected", type=int, default=60, help="refused at submission (422)")
    parser.add_argument("--failing", type=int, default=40, help="accepted, failing in the worker (422 result)")
    parser.add_argument("--cancel-queued", type=int, default=40)
    parser.add_argument("--cancel-running", type=int, default=30)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the accepted jobs get to end")
    parser.add_argument("--weights-dir", type=Path)
    args = parser.parse_args()

    from weights.tiny.samples import write_sample

    with serving(args.weights_dir, "vace-soak-") as (base, root, server):
        video = write_sample("pose", root / "pose.mp4", num_frames=17).read_bytes()
        run(args, base, video, server.pid)


def run(args: argparse.Namespace, base: str, video: bytes, pgid: int) -> None:
    rng = random.Random(args.seed)
    rss_start = rss_kib(pgid)
    peak, stop = [rss_start], threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(pgid, stop, peak))
    sampler.start()
    errors: list[str] = []  # 5xx and other protocol errors, besides lost requests
    submit_latencies: list[float] = []
    with httpx.Client(base_url=base, timeout=60) as client:
        requests = plan(args, upload(client, "pose.mp4", video), failing_urls(client, base, video, rng), rng)
        started = time.perf_counter()
        deadline = time.monotonic() + args.timeout
        for req in requests:
            t = time.perf_counter()
            response = client.post(SUBMIT, json=req.body)
            submit_latencies.append(time.perf_counter() - t)
            if req.kind == "rejected":
                req.outcome = (
                    "rejected (422)"
                    if is_fal_422(response)
                    else (f"! submission answered HTTP {response.status_code} {response.text[:200]}")
                )
                continue
            if response.status_code != 200:
                req.outcome = f"! submission answered HTTP {response.status_code} {response.text[:200]}"
                continue
            req.request_id = response.json()["request_id"]
            if req.kind == "cancel-queued":
                cancel = client.put(f"{REQUESTS}/{req.request_id}/cancel")
                if cancel.status_code not in (202, 400):
                    errors.append(f"{req.request_id}: cancel HTTP {cancel.status_code} {cancel.text[:200]}")

    accepted = [req for req in requests if req.request_id is not None]
    latencies: list[float] = []
    clients = [httpx.Client(base_url=base, timeout=60) for _ in range(args.clients + 1)]
    ids = [req.request_id for req in accepted]
    threads = [
        threading.Thread(
            target=poll, args=(clients[c], ids[c :: args.clients], args.interval, latencies, errors, deadline)
        )
        for c in range(args.clients)
    ]
    running = [req for req in accepted if req.kind == "cancel-running"]
    threads.append(threading.Thread(target=cancel_when_running, args=(clients[-1], running, deadline, errors)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    rss_end = rss_kib(pgid)
    stop.set()
    sampler.join()

    with httpx.Client(base_url=base, timeout=60) as client:
        for req in accepted:
            req.outcome = check(client, req)
    for c in clients:
        c.close()
    report(args, requests, errors, latencies, submit_latencies, elapsed, (rss_start, peak[0], rss_end))


def report(
    args: argparse.Namespace,
    requests: list[Request],
    errors: list[str],
    latencies: list[float],
    submit_latencies: list[float],
    elapsed: float,
    rss: tuple[int, int, int],
) -> None:
    outcomes = Counter((req.kind, req.outcome) for req in requests if not req.outcome.startswith("!"))
    lost = [req for req in requests if req.outcome.startswith("!")]
    ms = [x * 1000 for x in latencies]
    submit_ms = [x * 1000 for x in submit_latencies]
    mib = [x / 1024 for x in rss]
    kinds = Counter(req.kind for req in requests)
    print(
        f"soak: {len(requests)} requests ({', '.join(f'{kinds[k]} {k}' for k in KINDS)}; seed {args.seed}), "
        f"{args.clients} clients polling every {args.interval:g} s, 1 worker ({os.cpu_count()} CPU cores)"
    )
    for (kind, outcome), n in sorted(outcomes.items(), key=lambda item: KINDS.index(item[0][0])):
        print(f"  {kind:15} {outcome:27} {n}")
    print(f"  lost: {len(lost)}, other errors (5xx, bad status or cancel answers): {len(errors)}")
    print(f"  wall time: {elapsed:.1f} s")
    print(
        f"  status requests: {len(ms)} ({len(ms) / elapsed:.0f}/s), latency p50 {percentile(ms, 50):.1f} ms, "
        f"p99 {percentile(ms, 99):.1f} ms, max {max(ms):.1f} ms"
    )
    print(f"  submit latency: p50 {percentile(submit_ms, 50):.1f} ms, p99 {percentile(submit_ms, 99):.1f} ms")
    print(f"  server RSS: {mib[0]:.0f} MiB after startup, {mib[1]:.0f} MiB peak, {mib[2]:.0f} MiB after the last job")
    for req in lost[:10]:
        print(f"  ! {req.kind} {req.request_id}: {req.outcome[2:]}")
    for problem in errors[:10]:
        print(f"  ! {problem}")

    def count(kind: str, *names: str) -> int:
        return sum(outcomes[kind, name] for name in names)

    cancelled = ("cancelled before running", "cancelled while running")
    early = count("cancel-queued", "finished before the cancel") + count("cancel-running", "finished before the cancel")
    print(
        "\n| requests | valid ok | rejected 422 | failed 422 | cancelled (queued / running kind) "
        "| finished before cancel | lost | status p50 / p99 / max ms | submit p50 / p99 ms | wall s "
        "| RSS start / peak / end MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {len(requests)} | {count('valid', 'ok')} | {count('rejected', 'rejected (422)')} "
        f"| {count('failing', 'failed (422)')} "
        f"| {count('cancel-queued', *cancelled)} / {count('cancel-running', *cancelled)} "
        f"| {early} | {len(lost)} | {percentile(ms, 50):.1f} / {percentile(ms, 99):.1f} / {max(ms):.1f} "
        f"| {percentile(submit_ms, 50):.1f} / {percentile(submit_ms, 99):.1f} | {elapsed:.0f} "
        f"| {mib[0]:.0f} / {mib[1]:.0f} / {mib[2]:.0f} |"
    )
    if lost or errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
