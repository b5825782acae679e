"""Wake-ups for the coroutines that wait on a job (status streams, sync requests) when the store announces a change.

The store stays the single source of truth; this only says "look again", so a missed or extra wake-up costs at
most one poll interval and never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Watch:
    """One waiter's subscription: ``wait()`` returns once the job changed since the last ``wait()``, or on timeout."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    async def wait(self, poll_s: float) -> None:
        """Return on a change or after ``poll_s``, whichever is first: the caller reads the job either way."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), poll_s)
        self.event.clear()


class Changes:
    """Thread-safe fan-out of "job X changed" to the event loop."""

    def __init__(self) -> None:
        self._watches: dict[str, set[Watch]] = {}
        self._lock = threading.Lock()

    def notify(self, job_id: str) -> None:
        """Called from any thread after the store announced a change of ``job_id``."""
        with self._lock:
            watches = list(self._watches.get(job_id, ()))
        for watch in watches:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the server is stopping
                watch.loop.call_soon_threadsafe(watch.event.set)

    @contextmanager
    def watch(self, job_id: str) -> Iterator[Watch]:
        """Subscribe before reading the job, so a change between the read and the wait is not lost."""
        watch = Watch(asyncio.get_running_loop())
        with self._lock:
            self._watches.setdefault(job_id, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                remaining = self._watches.get(job_id, set())
                remaining.discard(watch)
                if not remaining:
                    self._watches.pop(job_id, None)
