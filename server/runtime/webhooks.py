"""Webhook delivery: when a job submitted with ``?fal_webhook=URL`` ends, POST fal's webhook body to that URL,
signed the way fal signs it (``server/runtime/signing.py``).

The target is vetted like media (``pipelines/fetch.py``), under its own allow-list: public addresses only (or the
``--webhook-allow`` list), checked after DNS at submission and again at every attempt, and the connection goes to
the address that was checked. Redirects are not followed: a 3xx answer is a failed attempt. Only the answer's
status is read: its body is never read nor inflated (``Accept-Encoding: identity`` is asked for anyway), so a
receiver answering a gzip bomb costs nothing. Failed deliveries are retried on fal's policy, 10 retries over about
two hours with a doubling back-off (7 s, 14 s, ... 3584 s by default). Each attempt is written to the store, with the
time of the next one, before it is sent: a restart resumes the back-off where it was, and a node that dies during
an attempt (whatever killed it) has used that attempt up, so a delivery that kills nodes ends after ``attempts`` of
them. A delivery that finally fails leaves a log line on the job and counts in ``vace_webhook_deliveries_total``.

A node delivers a webhook only while it holds the delivery's claim in the store (``JobStore.claim_webhook``): taken
before the first attempt, renewed as each one is counted (``JobStore.webhook_attempt``), and held through the
back-off until ``lease_s`` plus one attempt's ``timeout_s`` past the next attempt. So two nodes never deliver a
webhook at once, and when the node holding one dies (or loses the database), any live node takes the delivery over
once the claim runs out: every node looks for unclaimed or expired deliveries on start and then every
``lease_s / 3``. An attempt is cut off after ``timeout_s`` in all (DNS lookup, address check, connect, send, the
answer's status), so it always ends within the claim it started under.

Deliveries run on the event loop (never on a worker: a slow receiver must not hold a GPU), at most ``concurrency``
attempts at once per node; each DNS lookup has a thread of its own (see :func:`_on_own_thread`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from pipelines.context import JobContext
from pipelines.errors import InputError
from pipelines.fetch import pinned_request, url_scheme, vetted_address

from ..store.jobs import Job, JobStore
from .signing import WebhookSigner

log = logging.getLogger(__name__)
WEBHOOK_FIELD = ("query", "fal_webhook")
T = TypeVar("T")


def check_webhook_url(url: str, ctx: JobContext) -> None:
    """Refuse a webhook URL the server would never deliver to, at submission (fal's 422 shape, on the query)."""
    if url_scheme(url) not in ("http", "https"):
        raise InputError(WEBHOOK_FIELD, "must be an http(s) URL", "value_error")
    vetted_address(url, WEBHOOK_FIELD, ctx.webhook_allow)


def webhook_body(job: Job) -> dict[str, Any]:
    """``{request_id, gateway_request_id, status: OK|ERROR, payload, error}`` as fal sends it: a failure's error
    reads like fal's (``Invalid status code: 422``), its body (with our message) is the payload."""
    ok = job.outcome == "ok"
    failure = job.failure
    return {
        "request_id": job.id,
        "gateway_request_id": job.id,
        "status": "OK" if ok else "ERROR",
        "payload": job.result if ok else (failure.body if failure else None),
        "error": None if ok else f"Invalid status code: {failure.status_code if failure else 500}",
    }


class Webhooks:
    """Schedules deliveries from any thread; runs them on the loop it was started on."""

    def __init__(
        self,
        store: JobStore,
        signer: WebhookSigner,
        ctx: JobContext,
        *,
        attempts: int,
        backoff_s: float,
        timeout_s: float,
        lease_s: float,
        concurrency: int,
        on_outcome: Callable[[str], None],
    ) -> None:
        self.store = store
        self.signer = signer
        self.ctx = ctx
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.lease_s = lease_s
        self.on_outcome = on_outcome
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        """Names this node on the deliveries it claims; unique across processes and machines."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._delivering: set[str] = set()
        self._slots = asyncio.Semaphore(concurrency)
        """Attempts in flight: a flood of finished jobs (cancelling queued ones is enough) opens at most this many
        connections and DNS lookups at once; the others wait their turn (a claim that runs out meanwhile goes to
        another node, as after a death)."""

    @property
    def claim_s(self) -> float:
        """How long a claim lasts past the next attempt: that attempt, then ``lease_s`` to record its outcome."""
        return self.timeout_s + self.lease_s

    async def start(self) -> None:
        """Start on the running loop and take up the deliveries that no node is making: those a restart (or, in a
        fleet, another node's death) interrupted, now and every ``lease_s / 3``."""
        self._loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, trust_env=False)
        sweep = asyncio.ensure_future(self._sweep())
        self._tasks.add(sweep)
        sweep.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        while True:
            try:
                for job in await asyncio.to_thread(self.store.pending_webhooks):
                    self._spawn(job.id)
            except Exception:
                log.warning("looking for webhooks to deliver failed; retrying", exc_info=True)
            await asyncio.sleep(self.lease_s / 3)

    async def stop(self) -> None:
        """Stop delivering and hand this node's deliveries back, so another node (or this one's next start) resumes
        them when their back-off ends. An attempt cut off mid-request counts as made, and the next one sends the
        webhook again: webhooks are delivered at least once, as fal's are."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.to_thread(self.store.release_webhooks, self.node_id)
        except Exception:  # the database is gone: the claims run out instead
            log.warning("could not release this node's webhook deliveries", exc_info=True)
        if self._client is not None:
            await self._client.aclose()

    def schedule(self, job_id: str) -> None:
        """Deliver ``job_id``'s webhook if it has one; safe to call from a worker thread."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed; the delivery stays pending for the next start
            self._loop.call_soon_threadsafe(self._spawn, job_id)

    def _spawn(self, job_id: str) -> None:
        """Deliver ``job_id``'s webhook on this loop, unless this node is delivering it already."""
        if job_id in self._delivering:
            return
        self._delivering.add(job_id)
        task = asyncio.ensure_future(self._deliver(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _task: self._delivering.discard(job_id))

    def delay_after(self, attempt: int) -> float:
        """Seconds between failed attempt ``attempt`` (1-based) and the next."""
        return self.backoff_s * 2 ** (attempt - 1)

    async def _deliver(self, job_id: str) -> None:
        claimed = await asyncio.to_thread(self.store.claim_webhook, job_id, self.node_id, self.claim_s)
        if claimed is None or claimed.webhook_url is None:  # delivered already, or another node is delivering it
            return
        job: Job = claimed
        body = json.dumps(webhook_body(job)).encode()
        for attempt in range(job.webhook_attempts + 1, self.attempts + 1):
            if job.webhook_next_at is not None and attempt == job.webhook_attempts + 1:
                await asyncio.sleep(max(0.0, job.webhook_next_at - time.time()))  # resumed mid back-off
            last = attempt == self.attempts
            async with self._slots:
                # Counted before it is sent, with when the next is due, and the claim renewed past it: the attempt
                # ends within the claim, and a node that dies during it has used it up.
                next_at = time.time() + (0.0 if last else self.delay_after(attempt))
                if not await asyncio.to_thread(
                    self.store.webhook_attempt, job_id, attempt, next_at, node_id=self.node_id, lease_s=self.claim_s
                ):
                    log.warning("webhook for %s was taken over by another node; leaving it to that one", job_id)
                    return
                reason = await self._attempt(job, body)
            if reason is None:
                if await asyncio.to_thread(self.store.set_webhook_state, job_id, "delivered", node_id=self.node_id):
                    self.on_outcome("delivered")
                return
            log.warning("webhook for %s, attempt %d/%d failed: %s", job_id, attempt, self.attempts, reason)
            if last:
                break
            self.on_outcome("retried")
            await asyncio.sleep(max(0.0, next_at - time.time()))
        if await asyncio.to_thread(self.store.set_webhook_state, job_id, "failed", node_id=self.node_id):
            await asyncio.to_thread(
                self.store.log,
                job_id,
                f"webhook delivery to {job.webhook_url} failed after {self.attempts} attempts",
                "ERROR",
            )
            self.on_outcome("failed")

    async def _attempt(self, job: Job, body: bytes) -> str | None:
        """One signed POST to the vetted address, cut off after ``timeout_s`` in all (the DNS lookup included);
        None when delivered, else why not."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._post(job, body)
        except TimeoutError:
            return f"no answer within {self.timeout_s:g} s"

    async def _post(self, job: Job, body: bytes) -> str | None:
        assert self._client is not None and job.webhook_url is not None
        try:
            vetted = await _on_own_thread(vetted_address, job.webhook_url, WEBHOOK_FIELD, self.ctx.webhook_allow)
            headers = {"content-type": "application/json", **self.signer.headers(job.id, job.owner, body)}
            request = pinned_request(self._client, "POST", job.webhook_url, vetted, content=body, headers=headers)
            response = await self._client.send(request, stream=True)
            await response.aclose()  # the status is the answer: the body, whatever its size or coding, stays unread
        except InputError as exc:
            return exc.msg
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if response.is_success else f"HTTP {response.status_code}"


async def _on_own_thread(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on a new thread, for a DNS lookup: getaddrinfo cannot be interrupted, so a lookup that
    outlives its attempt's timeout runs on (until the system resolver gives up) on a thread that nothing else waits
    for, neither the store calls on the loop's default executor nor another delivery's lookup. There are at most
    ``concurrency`` attempts at once, so such threads stay few: a stalled one needs a whole timeout to be replaced."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function(*args))
        except Exception as exc:  # noqa: BLE001 - raised in the awaiting coroutine instead
            future.set_exception(exc)

    threading.Thread(target=run, name="vace-webhook-dns", daemon=True).start()
    return await asyncio.wrap_future(future)
