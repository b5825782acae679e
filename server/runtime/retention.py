"""Retention: a background sweep that deletes served files, abandoned uploads and finished jobs past a configured age.

A server that runs for months would otherwise fill its disk with outputs nobody fetches again and its job store
with finished jobs. Age is measured from a file's last write and from a job's end. Files that a queued or running
job still reads (an upload it names as input) are kept whatever their age, and a job whose webhook is still being
delivered stays until it is. The checkpoint and the live preview of a job that is queued or running are kept too
(a job handed back resumes from its checkpoint however long it waits); a job's worker deletes them when the job
ends, and what a job that ended elsewhere left (failed after its last lost run, cancelled while queued) is swept
here by age like any file. The same rules apply to a directory and to an S3 bucket (``FileStore.sweep``: an
object's age is its last write). The sweep runs on its own thread: it touches the disk, the bucket and the job
store, which must not block the HTTP event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from prometheus_client import Counter
from pydantic import ValidationError

from pipelines.registry import input_model

from ..files.store import FileStore
from ..store.jobs import JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swept:
    """What one sweep deleted."""

    files: int = 0
    uploads: int = 0
    jobs: int = 0


class Retention:
    """Deletes what is older than ``max_age_s`` every ``interval_s`` seconds (never, when ``max_age_s`` is 0)."""

    def __init__(
        self, store: JobStore, files: FileStore, *, max_age_s: float, interval_s: float, deleted: Counter
    ) -> None:
        self.store, self.files = store, files
        self.max_age_s, self.interval_s = max_age_s, interval_s
        self.deleted = deleted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vace-retention", daemon=True)

    def start(self) -> None:
        if self.max_age_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                swept = self.sweep()
            except Exception:  # a failed sweep (say, a file vanishing under us) must not end the next ones
                log.exception("retention sweep failed")
                continue
            if swept != Swept():
                log.info(
                    "retention: deleted %d files, %d abandoned uploads, %d finished jobs",
                    swept.files,
                    swept.uploads,
                    swept.jobs,
                )

    def sweep(self, now: float | None = None) -> Swept:
        """Delete everything older than the cutoff once; returns the counts."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        files, uploads = self.files.sweep(cutoff, keep=self._in_use())
        jobs = self.store.purge(finished_before=cutoff)
        for kind, n in (("file", files), ("upload", uploads), ("job", jobs)):
            self.deleted.labels(kind).inc(n)
        return Swept(files, uploads, jobs)

    def _in_use(self) -> set[str]:
        """The keys of our files that queued and running jobs name as inputs, and their checkpoints and previews."""
        in_use = set()
        for job in self.store.unfinished():
            in_use |= {key for key in (job.checkpoint_key, job.preview_key) if key is not None}
            try:
                refs = input_model(job.app, job.task).model_validate(job.input).media_refs()
            except (ValidationError, KeyError):  # an input (or endpoint) this version refuses: the job reads nothing
                continue
            in_use |= {key for _, ref in refs if (key := self.files.key_of(ref)) is not None}
        return in_use
