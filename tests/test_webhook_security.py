"""Outbound requests against hostile servers (#28): webhook receivers that answer a gzip bomb, never answer (a node
that dies mid-attempt), or are many at once; a resolver that stalls; and media, LoRA and prompt-expander answers
whose ``Content-Encoding`` inflates past every limit.

Loopback only. Memory is measured with tracemalloc, which sees every Python allocation on every thread (response
bodies and decompressed bytes are Python objects), so the bounds are exact counts, not a noisy process RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from server_fixtures import ThreadServer, free_port, server_weights  # noqa: F401

from pipelines.context import JobContext
from pipelines.errors import InputError
from pipelines.fetch import fetch_to_file
from pipelines.limits import Limits
from pipelines.prompt_expansion import OpenAIExpander, expand_prompt
from server.config import Settings
from server.runtime.signing import WebhookSigner, new_signing_key
from server.runtime.webhooks import Webhooks, check_webhook_url
from server.store.jobs import Job, SqliteJobStore
from server.store.postgres import PostgresJobStore

pytestmark = pytest.mark.serial  # deadlines and latencies: run with no other test beside it (Makefile)

MiB = 1024**2
BOMB_BYTES = 64 * MiB
"""What a receiver's gzip answer inflates to: far past any bound below, so reading it shows at once."""
MEMORY_BOUND = 8 * MiB
"""The most a probe may allocate in all; a bomb read whole would need BOMB_BYTES."""
T = TypeVar("T")


def compressed(data: bytes, coding: str) -> bytes:
    """``data`` under one content coding (gzip: the gzip format; deflate: the zlib format, as RFC 9110 says)."""
    if coding == "identity":
        return data
    packer = zlib.compressobj(9, zlib.DEFLATED, 31 if coding in ("gzip", "x-gzip") else 15)
    return packer.compress(data) + packer.flush()


@cache
def bomb(codings: str, size: int = BOMB_BYTES) -> bytes:
    """``size`` zero bytes under ``codings`` (a Content-Encoding value: applied in the order listed)."""
    data = b"\0" * size
    for coding in codings.split(","):
        data = compressed(data, coding.strip())
    return data


def allocation_peak(run: Callable[[], T]) -> tuple[T, int]:
    """``run()``'s result and the most memory it held allocated at once, over every thread."""
    tracemalloc.start()
    try:
        return run(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class Hostile:
    """A loopback server whose first path segment picks its answer.

    POST (webhooks, chat): ``/bomb-STATUS`` answers STATUS with a gzip bomb; ``/hang`` never answers (until the
    server closes); ``/slow`` answers 200 after 0.3 s; anything else 200. It counts the requests in flight at once.
    GET (media): ``/media?encoding=CODINGS`` answers a bomb under CODINGS; with ``&text=T``, T under CODINGS.
    Every request's path and headers are recorded."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.active = self.most_active = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                kind, _, status = urlsplit(self.path).path.split("/")[1].partition("-")
                with hostile.counted(self):
                    if kind == "hang":
                        hostile.closing.wait()
                        return
                    if kind == "slow":
                        time.sleep(0.3)
                    self.answer(int(status or 200), bomb("gzip") if kind == "bomb" else b"", "gzip")

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                encoding = query["encoding"][0]
                text = query.get("text", [""])[0]
                with hostile.counted(self):
                    body = bomb(encoding) if not text else text.encode()
                    if text:
                        for coding in encoding.split(","):
                            body = compressed(body, coding.strip())
                    self.answer(200, body, encoding)

            def answer(self, status: int, body: bytes, encoding: str) -> None:
                self.send_response(status)
                if body:
                    self.send_header("content-encoding", encoding)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client read the status and left
                    self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    @contextmanager
    def counted(self, handler: BaseHTTPRequestHandler) -> Iterator[None]:
        """Records ``handler``'s request and counts it in flight while it is answered."""
        with self.lock:
            self.requests.append((handler.path, {k.lower(): v for k, v in handler.headers.items()}))
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            yield
        finally:
            with self.lock:
                self.active -= 1

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(path.startswith(prefix) for path, _ in self.requests)

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()


Store = SqliteJobStore | PostgresJobStore


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A job store of each kind: both must count an attempt before it is sent."""
    if request.param == "sqlite":
        opened: Store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    else:
        opened = PostgresJobStore(request.getfixturevalue("pg_url"))
    yield opened
    opened.close()


def finished(store: Store, webhook_url: str) -> Job:
    """A job that has ended, its webhook due."""
    job = store.add(
        app="fal-ai/wan-vace-14b",
        task="pose",
        model="wan-vace-14b",
        input={"prompt": "x"},
        base_url="http://h",
        webhook_url=webhook_url,
    )
    claimed = store.claim()
    assert claimed is not None and claimed.id == job.id
    store.finish(job.id, result={"seed": 1})
    return job


def node(store: Store, outcomes: list[str], *allow: str, **settings: Any) -> Webhooks:
    """A node's webhook sender that may deliver to ``allow`` (and nothing else on loopback)."""
    options: dict[str, Any] = {
        "attempts": 1,
        "backoff_s": 0.05,
        "timeout_s": 5.0,
        "lease_s": 1.0,
        "concurrency": 16,
        **settings,
    }
    return Webhooks(
        store,
        WebhookSigner(new_signing_key(), b"secret"),
        JobContext(webhook_allow=allow),
        on_outcome=outcomes.append,
        **options,
    )


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Wait on the loop for ``predicate``; returns how long it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"waited {timeout_s:g} s for {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


# ------------------------------------------------------------------------------------------- webhook answers


@pytest.mark.parametrize("status", [200, 503])
def test_a_receivers_gzip_bomb_is_never_read(hostile: Hostile, tmp_path: Path, status: int) -> None:
    """The answer's status decides the attempt; its body (64 MiB once inflated) is neither read nor inflated."""
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    job = finished(store, f"{hostile.base}/bomb-{status}/hook")
    bomb("gzip")  # made before measuring
    outcomes: list[str] = []
    sender = node(store, outcomes, f"127.0.0.1:{hostile.port}")

    async def deliver() -> None:
        await sender.start()
        sender.schedule(job.id)
        await until(lambda: bool(outcomes), 30, "the delivery's outcome")
        await sender.stop()

    try:
        _, peak = allocation_peak(lambda: asyncio.run(deliver()))
        assert peak < MEMORY_BOUND, f"delivering held {peak / MiB:.1f} MiB at once"
        assert outcomes == ["delivered" if status == 200 else "failed"]
        assert store.pending_webhooks() == [] and store.claim_webhook(job.id, "anyone", 30) is None  # recorded
        assert hostile.requests[0][1]["accept-encoding"] == "identity"
    finally:
        store.close()


def test_an_attempt_is_counted_before_it_is_sent(hostile: Hostile, store: Store) -> None:
    """While the POST is in flight (the receiver never answers) the store already counts it, with the time of the
    next attempt: a node that dies now has used up one attempt."""
    job = finished(store, f"{hostile.base}/hang/hook")
    sender = node(store, [], f"127.0.0.1:{hostile.port}", attempts=3)

    async def while_sending() -> Job | None:
        before = time.time()
        await sender.start()
        sender.schedule(job.id)
        await until(lambda: hostile.count("/hang") == 1, 10, "the POST")
        seen = await asyncio.to_thread(store.get, job.id)
        await sender.stop()
        assert seen is not None and seen.webhook_next_at is not None and seen.webhook_next_at > before
        return seen

    seen = asyncio.run(while_sending())
    assert seen is not None and seen.webhook_attempts == 1


def test_nodes_that_die_mid_attempt_use_up_the_attempts(hostile: Hostile, store: Store) -> None:
    """Each node that takes the delivery dies while its POST is in flight (the receiver never answers; nothing
    releases the claim). Each death counts, so after ``attempts`` of them the next node records the delivery as
    failed without sending it again, instead of every node in turn dying on it."""
    attempts = 3
    job = finished(store, f"{hostile.base}/hang/hook")
    outcomes: list[str] = []
    for life in range(1, attempts + 2):
        sender = node(store, outcomes, f"127.0.0.1:{hostile.port}", attempts=attempts, timeout_s=1.0, lease_s=0.3)

        async def live(life: int = life, sender: Webhooks = sender) -> None:
            await sender.start()  # its sweep takes the delivery over once the dead node's claim has run out
            await until(lambda: hostile.count("/hang") >= life or bool(outcomes), 15, f"life {life}'s attempt")
            # and dies here: asyncio.run cancels the POST in flight, and the claim stays until it runs out

        asyncio.run(live())
    assert hostile.count("/hang") == attempts
    assert outcomes == ["failed"]
    assert store.pending_webhooks() == [] and store.claim_webhook(job.id, "anyone", 30) is None
    assert f"failed after {attempts} attempts" in store.logs(job.id)[-1].message


def test_at_most_the_cap_of_deliveries_run_at_once(hostile: Hostile, tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    jobs = [finished(store, f"{hostile.base}/slow/hook") for _ in range(6)]
    outcomes: list[str] = []
    sender = node(store, outcomes, f"127.0.0.1:{hostile.port}", concurrency=2)

    async def deliver() -> None:
        await sender.start()
        for job in jobs:
            sender.schedule(job.id)
        await until(lambda: len(outcomes) == len(jobs), 30, "every delivery")
        await sender.stop()

    try:
        asyncio.run(deliver())
        assert outcomes == ["delivered"] * len(jobs)
        assert hostile.most_active == 2
    finally:
        store.close()
    assert Settings.model_fields["webhook_concurrency"].default == 16


def test_a_stalled_resolver_holds_up_only_its_own_deliveries(
    hostile: Hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four deliveries whose host name never resolves (getaddrinfo cannot be interrupted) do not hold up a fifth,
    nor the store calls on the loop's executor (two threads here, as on a small machine); each of their attempts
    still ends within the timeout, the lookup included."""
    stalled = threading.Event()  # set at the end, so the lookups still waiting return
    resolve = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "stalled.test":
            stalled.wait()
            host = "127.0.0.1"
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    slow = [finished(store, f"http://stalled.test:{hostile.port}/hook") for _ in range(4)]
    outcomes: list[str] = []
    timeout_s = 1.0
    sender = node(
        store, outcomes, f"127.0.0.1:{hostile.port}", "stalled.test", attempts=2, timeout_s=timeout_s, backoff_s=30.0
    )

    async def deliver() -> tuple[float, float]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
        try:
            await sender.start()
            started = time.monotonic()
            for job in slow:
                sender.schedule(job.id)
            await asyncio.sleep(0.2)  # their lookups are under way
            healthy = await asyncio.to_thread(finished, store, f"{hostile.base}/hook")
            sender.schedule(healthy.id)
            took = await until(lambda: "delivered" in outcomes, 5 * timeout_s, "the healthy delivery")
            await until(lambda: outcomes.count("retried") == len(slow), 5 * timeout_s, "the stalled attempts to end")
            return took, time.monotonic() - started
        finally:
            stalled.set()
            await sender.stop()

    try:
        took, cut_off = asyncio.run(deliver())
        assert took < timeout_s  # not after the stalled attempts ended
        assert cut_off < timeout_s + 1.0
        assert all(store.get(job.id).webhook_attempts == 1 for job in slow)  # type: ignore[union-attr]
    finally:
        store.close()


def test_webhook_targets_have_their_own_allow_list(hostile: Hostile, tmp_path: Path) -> None:
    """``--fetch-allow`` (media) no longer lets a webhook reach a non-public address, at submission or at delivery,
    and ``--webhook-allow`` lets no media come from one."""
    hook = f"{hostile.base}/hook"
    media_only = JobContext(fetch_allow=("127.0.0.1",))
    hooks_only = JobContext(webhook_allow=("127.0.0.1",))
    with pytest.raises(InputError) as refused:
        check_webhook_url(hook, media_only)
    assert refused.value.loc == ("query", "fal_webhook") and "non-public" in refused.value.msg
    check_webhook_url(hook, hooks_only)
    with pytest.raises(InputError) as exc:
        fetch_to_file(f"{hostile.base}/media?encoding=gzip&text=hi", "video_url", tmp_path, hooks_only)
    assert "non-public" in exc.value.msg

    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    job = finished(store, hook)  # accepted by a node that allowed it; delivered by one that allows media only
    outcomes: list[str] = []
    sender = Webhooks(
        store,
        WebhookSigner(new_signing_key(), b"secret"),
        media_only,
        attempts=1,
        backoff_s=0.05,
        timeout_s=5.0,
        lease_s=1.0,
        concurrency=4,
        on_outcome=outcomes.append,
    )

    async def deliver() -> None:
        await sender.start()
        sender.schedule(job.id)
        await until(lambda: bool(outcomes), 10, "the delivery's outcome")
        await sender.stop()

    try:
        asyncio.run(deliver())
        assert outcomes == ["failed"] and hostile.requests == []
    finally:
        store.close()
    assert Settings(fetch_allow=("10.0.0.0/8",)).webhook_allow == ()


# ---------------------------------------------------------------------------------------------- downloads


@pytest.mark.parametrize("encoding", ["gzip", "gzip, gzip", "x-gzip", "deflate", "deflate, gzip"])
def test_a_compressed_download_is_counted_as_it_inflates(hostile: Hostile, tmp_path: Path, encoding: str) -> None:
    """A few KB that inflate to 64 MiB under a 1 MiB limit: the usual download error, quickly, holding a few
    pieces of the answer at a time, and the request asked for no encoding at all."""
    bomb(encoding)
    ctx = JobContext(fetch_allow=("127.0.0.1",), limits=Limits(max_download_bytes=MiB))
    url = f"{hostile.base}/media?encoding={quote(encoding)}"

    def download() -> InputError:
        with pytest.raises(InputError) as exc:
            fetch_to_file(url, "video_url", tmp_path / "work", ctx)
        return exc.value

    started = time.monotonic()
    error, peak = allocation_peak(download)
    assert peak < MEMORY_BOUND, f"the download held {peak / MiB:.1f} MiB at once"
    assert error.type == "file_download_error" and "limit" in error.msg
    assert time.monotonic() - started < 10
    assert list((tmp_path / "work").glob("*")) == []
    assert hostile.requests[0][1]["accept-encoding"] == "identity"
    # A LoRA's larger limit is enforced the same way.
    with pytest.raises(InputError) as lora:
        fetch_to_file(url, ("loras", 0, "path"), tmp_path / "work", ctx, max_bytes=2 * MiB)
    assert "2097152-byte limit" in lora.value.msg


def test_an_encoded_download_that_fits_is_decoded_and_an_unknown_coding_refused(
    hostile: Hostile, tmp_path: Path
) -> None:
    ctx = JobContext(fetch_allow=("127.0.0.1",))
    for encoding in ("gzip", "deflate", "gzip, deflate", "identity"):
        url = f"{hostile.base}/media.txt?text=hello&encoding={quote(encoding)}"
        assert fetch_to_file(url, "video_url", tmp_path, ctx).read_bytes() == b"hello", encoding
    with pytest.raises(InputError) as exc:
        fetch_to_file(f"{hostile.base}/media?encoding=br", "video_url", tmp_path / "br", ctx)
    assert exc.value.type == "file_download_error" and "br" in exc.value.msg


def test_the_server_refuses_a_compressed_bomb_with_the_usual_422(
    server_weights: Path, hostile: Hostile, tmp_path: Path
) -> None:
    config = Settings(
        weights_dir=server_weights,
        data_dir=tmp_path / "data",
        port=free_port(),
        fetch_allow=(f"127.0.0.1:{hostile.port}",),
        limits=Limits(max_download_bytes=MiB),
    )
    bomb("gzip, gzip")
    with ThreadServer(config) as server:
        started = time.monotonic()
        answer = httpx.post(
            f"{server.url}/fal-ai/wan-vace-14b/pose",
            timeout=60,
            json={
                "prompt": "x",
                "video_url": f"{hostile.base}/media?encoding={quote('gzip, gzip')}",
                "num_frames": 17,
                "num_inference_steps": 2,
            },
        )
        assert time.monotonic() - started < 20
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"][0]
    assert detail["loc"] == ["body", "video_url"] and detail["type"] == "file_download_error"
    assert "limit" in detail["msg"]


def test_a_prompt_expanders_bomb_is_refused_unread(hostile: Hostile) -> None:
    bomb("gzip")
    expander = OpenAIExpander(f"{hostile.base}/bomb-200/v1", "chat", timeout_s=5)
    log: list[str] = []
    kept, peak = allocation_peak(lambda: expand_prompt(expander, "a cat", "pose", log.append))
    assert peak < MEMORY_BOUND, f"expanding held {peak / MiB:.1f} MiB at once"
    assert kept == "a cat" and "larger than" in log[0]
    assert hostile.requests[0][1]["accept-encoding"] == "identity"
