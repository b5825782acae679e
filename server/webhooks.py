"""Webhook delivery: when a job submitted with ``?fal_webhook=URL`` ends, POST fal's webhook body to that URL.

Deliveries run on the event loop (never on a worker: a slow receiver must not hold a GPU), are retried with
exponential backoff a bounded number of times, and their state is kept in the store, so deliveries that a restart
interrupted are sent when the server comes back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from .jobs import Job, JobStore

log = logging.getLogger(__name__)


def webhook_body(job: Job) -> dict[str, Any]:
    """``{request_id, gateway_request_id, status: OK|ERROR, payload, error}`` as fal sends it."""
    ok = job.outcome == "ok"
    return {
        "request_id": job.id,
        "gateway_request_id": job.id,
        "status": "OK" if ok else "ERROR",
        "payload": job.result if ok else (job.failure.body if job.failure else None),
        "error": None if ok else (job.failure.message if job.failure else "unknown error"),
    }


class Webhooks:
    """Schedules deliveries from any thread; runs them on the loop it was started on."""

    def __init__(self, store: JobStore, *, attempts: int, backoff_s: float, timeout_s: float) -> None:
        self.store = store
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start on the running loop and resume the deliveries a restart interrupted."""
        self._loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(timeout=self.timeout_s)
        for job in self.store.pending_webhooks():
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

    async def _deliver(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None or job.webhook_url is None or job.status != "COMPLETED":
            return
        assert self._client is not None
        body = webhook_body(job)
        for attempt in range(1, self.attempts + 1):
            try:
                response = await self._client.post(job.webhook_url, json=body)
                if response.is_success:
                    self.store.set_webhook_state(job_id, "delivered")
                    return
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            log.warning("webhook for %s, attempt %d/%d failed: %s", job_id, attempt, self.attempts, reason)
            if attempt < self.attempts:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        self.store.set_webhook_state(job_id, "failed")
        self.store.log(job_id, f"webhook delivery to {job.webhook_url} failed after {self.attempts} attempts", "ERROR")
