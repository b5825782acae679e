"""Queue upkeep: the clockwork of the job queue, a service of every node (API node, worker node, ``vace serve``).

Two things happen to jobs with nobody asking: a queued job whose start timeout (``X-Fal-Request-Timeout``) passes
ends with fal's 504, and a running job whose lease ran out (its worker died; see ``server/store/jobs.py``) goes back to
the queue. Neither may depend on a worker being alive here: a fleet whose workers are all down (scaled to zero,
crashed) must still answer a timed-out request and hand a dead worker's job back for the next one. So every node
runs this loop, on a thread of its own (store calls block). Several nodes running it at once is safe: each sweep is
one transaction that skips the rows another node's sweep holds (``JobStore.expire_unstarted``,
``JobStore.requeue_expired``), and the store announces what a sweep changed, like any other transition.
"""

from __future__ import annotations

import logging
import threading

from ..store.jobs import JobStore

log = logging.getLogger(__name__)

UPKEEP_INTERVAL_S = 0.5
"""How often queued jobs are checked against their start timeout, and running ones against their lease."""


class Upkeep:
    """Runs the sweeps every ``interval_s`` until stopped."""

    def __init__(self, store: JobStore, *, max_attempts: int, interval_s: float = UPKEEP_INTERVAL_S) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vace-queue-upkeep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.store.expire_unstarted()
                self.store.requeue_expired(self.max_attempts)
            except Exception:  # a database restarting: the next sweep catches up
                log.warning("queue upkeep failed; retrying", exc_info=True)
