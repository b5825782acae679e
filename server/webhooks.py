"""Webhook delivery: when a job submitted with ``?fal_webhook=URL`` ends, POST fal's webhook body to that URL,
signed the way fal signs it (``server/signing.py``).

The target is vetted like media (``pipelines/fetch.py``): public addresses only (or the ``--fetch-allow`` list),
checked after DNS at submission and again at every attempt, and the connection goes to the address that was
checked. Redirects are not followed: a 3xx answer is a failed attempt. Failed deliveries are retried on fal's
policy, 10 retries over about two hours with a doubling back-off (7 s, 14 s, ... 3584 s by default); each failure
is written to the store with the time of the next attempt, so a restart resumes the back-off where it was. A
delivery that finally fails leaves a log line on the job and counts in ``vace_webhook_deliveries_total``.

Deliveries run on the event loop (never on a worker: a slow receiver must not hold a GPU).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from pipelines.context import JobContext
from pipelines.errors import InputError
from pipelines.fetch import pinned_request, url_scheme, vetted_address

from .jobs import Job, JobStore
from .signing import WebhookSigner

log = logging.getLogger(__name__)
WEBHOOK_FIELD = ("query", "fal_webhook")


def check_webhook_url(url: str, ctx: JobContext) -> None:
    """Refuse a webhook URL the server would never deliver to, at submission (fal's 422 shape, on the query)."""
    if url_scheme(url) not in ("http", "https"):
        raise InputError(WEBHOOK_FIELD, "must be an http(s) URL", "value_error")
    vetted_address(url, WEBHOOK_FIELD, ctx)


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

    def __init__(self, store: JobStore, signer: WebhookSigner, ctx: JobContext, *, attempts: int, backoff_s: float,
                 timeout_s: float, on_outcome: Callable[[str], None]) -> None:
        self.store = store
        self.signer = signer
        self.ctx = ctx
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.on_outcome = on_outcome
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start on the running loop and resume the deliveries a restart interrupted (with a store of its own:
        in a shared store the pending deliveries may be another live node's)."""
        self._loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, trust_env=False)
        if not self.store.shared:
            for job in await asyncio.to_thread(self.store.pending_webhooks):
                self._spawn(job.id)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def schedule(self, job_id: str) -> None:
        """Deliver ``job_id``'s webhook if it has one; safe to call from a worker thread."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._spawn, job_id)
        except RuntimeError:  # the loop has closed; the delivery stays pending for the next start
            pass

    def _spawn(self, job_id: str) -> None:
        task = asyncio.ensure_future(self._deliver(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def delay_after(self, attempt: int) -> float:
        """Seconds between failed attempt ``attempt`` (1-based) and the next."""
        return self.backoff_s * 2 ** (attempt - 1)

    async def _deliver(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.get, job_id)
        if job is None or job.webhook_url is None or job.status != "COMPLETED":
            return
        body = json.dumps(webhook_body(job)).encode()
        for attempt in range(job.webhook_attempts + 1, self.attempts + 1):
            if job.webhook_next_at is not None and attempt == job.webhook_attempts + 1:
                await asyncio.sleep(max(0.0, job.webhook_next_at - time.time()))  # resumed after a restart
            reason = await self._attempt(job, body)
            if reason is None:
                await asyncio.to_thread(self.store.set_webhook_state, job_id, "delivered")
                self.on_outcome("delivered")
                return
            log.warning("webhook for %s, attempt %d/%d failed: %s", job_id, attempt, self.attempts, reason)
            if attempt == self.attempts:
                break
            self.on_outcome("retried")
            delay = self.delay_after(attempt)
            await asyncio.to_thread(self.store.webhook_retry, job_id, attempt, time.time() + delay)
            await asyncio.sleep(delay)
        await asyncio.to_thread(self.store.set_webhook_state, job_id, "failed")
        await asyncio.to_thread(self.store.log, job_id, f"webhook delivery to {job.webhook_url} failed after "
                                f"{self.attempts} attempts", "ERROR")
        self.on_outcome("failed")

    async def _attempt(self, job: Job, body: bytes) -> str | None:
        """One signed POST to the vetted address; None when delivered, else why not."""
        assert self._client is not None and job.webhook_url is not None
        try:
            vetted = await asyncio.to_thread(vetted_address, job.webhook_url, WEBHOOK_FIELD, self.ctx)
            headers = {"content-type": "application/json", **self.signer.headers(job.id, job.owner, body)}
            request = pinned_request(self._client, "POST", job.webhook_url, vetted, content=body, headers=headers)
            response = await self._client.send(request)
        except InputError as exc:
            return exc.msg
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if response.is_success else f"HTTP {response.status_code}"
