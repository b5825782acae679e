"""The workers: one thread per device, each pulling jobs from the store and running ``generate()`` on them.

Model work never runs on the HTTP event loop. A worker reports every log line and denoising step to the store
(which the status routes read) and wakes the coroutines waiting on the job. Whatever goes wrong in one job ends that
job with a stated reason and the worker takes the next one. Stopping the server interrupts a running job at its
next step and puts it back in the queue without counting that run.
"""

from __future__ import annotations

import base64
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from pipelines.encode import encode_video
from pipelines.errors import InputError, JobCancelled
from pipelines.generate import JobHooks, Publish, generate
from pipelines.loading import ModelManager
from pipelines.schema import VaceInput

from .events import Changes
from .files import FileStore
from .jobs import Failure, Job, JobStore
from .metrics import Metrics
from .protocol import validation_detail

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0


class WorkerPool:
    """The workers of this process and what they share."""

    def __init__(
        self,
        *,
        store: JobStore,
        files: FileStore,
        changes: Changes,
        metrics: Metrics,
        managers: list[ModelManager],
        work_dir: Path,
        on_finished: Callable[[str], None],
    ) -> None:
        self.store = store
        self.files = files
        self.changes = changes
        self.metrics = metrics
        self.work_dir = work_dir
        self.on_finished = on_finished
        self.stopping = threading.Event()
        self.workers = [Worker(self, manager) for manager in managers]

    def start(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)  # inputs of runs that a crash interrupted
        self.work_dir.mkdir(parents=True)
        for worker in self.workers:
            worker.start()

    def notify(self) -> None:
        """A job was queued: wake the idle workers."""
        for worker in self.workers:
            worker.wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stopping.set()
        self.notify()
        deadline = time.monotonic() + timeout_s
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def has_weights(self, model: str) -> bool:
        return self.workers[0].models.is_present(model)

    def loaded_models(self) -> set[str]:
        return {key for worker in self.workers for key in worker.models.loaded()}


class Worker(threading.Thread):
    """Runs one job at a time on one device."""

    def __init__(self, pool: WorkerPool, models: ModelManager) -> None:
        super().__init__(name=f"vace-worker-{models.device}", daemon=True)
        self.pool = pool
        self.models = models
        self.wake = threading.Event()

    def run(self) -> None:
        while not self.pool.stopping.is_set():
            job = self.pool.store.claim()
            if job is None:
                self.wake.wait(IDLE_POLL_S)
                self.wake.clear()
                continue
            try:
                self._run(job)
            except Exception:  # the store itself failed; keep the worker alive for the next job
                log.exception("worker error on job %s", job.id)

    def _log(self, job_id: str, message: str, level: str = "INFO") -> None:
        self.pool.store.log(job_id, message, level)
        self.pool.changes.notify(job_id)

    def _run(self, job: Job) -> None:
        store, device = self.pool.store, self.models.device
        started = time.perf_counter()
        self._log(job.id, f"started on {device} (run {job.attempts})")
        workdir = self.pool.work_dir / job.id
        workdir.mkdir(parents=True, exist_ok=True)
        last_step = [0.0]

        def on_step(i: int, total: int) -> None:
            now = time.perf_counter()
            if i > 1:
                self.pool.metrics.step_seconds.labels(job.model, str(device)).observe(now - last_step[0])
            last_step[0] = now
            self._log(job.id, f"step {i}/{total}")

        hooks = JobHooks(
            log=lambda message: self._log(job.id, message),
            step=on_step,
            cancelled=lambda: self.pool.stopping.is_set() or store.cancel_requested(job.id),
        )
        outcome = "error"
        try:
            inp = VaceInput.model_validate(job.input)
            if not inp.sync_mode:  # sync_mode keeps nothing on the server
                hooks.control = lambda frames, fps: self._keep_control(job, workdir, frames, fps)
            output = generate(
                inp, task=job.task, model=job.model, models=self.models, workdir=workdir,  # type: ignore[arg-type]
                publish=self._publisher(job, inp.sync_mode), hooks=hooks,
            )
            self._log(job.id, f"completed in {time.perf_counter() - started:.1f} s")
            store.finish(job.id, result=output.model_dump(mode="json", exclude_none=True))
            outcome = "ok"
        except InputError as exc:
            self._log(job.id, str(exc), "ERROR")
            if exc.type == "content_policy_violation":
                self._drop_control(job)  # nothing of a flagged job stays on the server
            store.finish(job.id, failure=Failure(422, {"detail": exc.detail()}, str(exc), exc.type))
        except ValidationError as exc:  # a stored input that this version's schema no longer accepts
            detail = validation_detail([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
            self._log(job.id, f"invalid input: {detail}", "ERROR")
            store.finish(job.id, failure=Failure(422, {"detail": detail}, "invalid input", detail[0]["type"]))
        except JobCancelled as exc:
            if self.pool.stopping.is_set() and not store.cancel_requested(job.id):
                store.requeue(job.id, "the server is stopping; re-queued to run after restart")
                self.pool.changes.notify(job.id)
                return
            self._log(job.id, f"cancelled ({exc})", "WARNING")
            store.finish(job.id, cancelled=True)
            outcome = "cancelled"
        except Exception as exc:
            log.exception("job %s failed", job.id)
            message = f"{type(exc).__name__}: {exc}"
            self._log(job.id, f"failed: {message}", "ERROR")
            store.finish(job.id, failure=Failure(500, {"detail": message}, message, "internal_error"))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        self.pool.metrics.job_seconds.labels(job.app, job.task, outcome).observe(time.perf_counter() - started)
        self.pool.changes.notify(job.id)
        self.pool.on_finished(job.id)

    def _keep_control(self, job: Job, workdir: Path, frames: list[np.ndarray], fps: float) -> None:
        """Store the control video that preprocessing made and put its URL on the job (the status body shows it).

        It is a preview for people, not part of the output: failing to keep it is logged and the job goes on.
        """
        try:
            even = (frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2] for frame in frames)
            encoded = encode_video(even, workdir / "control.mp4", fps, quality="high", write_mode="fast")
            url = self.pool.files.url(self.pool.files.adopt(encoded.path, "control.mp4"), job.base_url)
        except (OSError, RuntimeError, ValueError) as exc:
            self._log(job.id, f"could not keep the control video: {exc}", "WARNING")
            return
        self.pool.store.set_control_video(job.id, url)
        self._log(job.id, f"control video kept ({encoded.num_frames} frames at {fps:g} fps)")

    def _drop_control(self, job: Job) -> None:
        """Delete the control video kept for ``job`` and take its URL off the job."""
        url = self.pool.store.get(job.id).control_video_url
        path = self.pool.files.local_path(url) if url else None
        if path is not None:
            path.unlink(missing_ok=True)
        self.pool.store.set_control_video(job.id, None)

    def _publisher(self, job: Job, sync_mode: bool) -> Publish:
        """Where this job's files go: the file store (absolute URLs), or data URIs that leave nothing behind."""

        def publish(path: Path, content_type: str) -> str:
            if sync_mode:
                data = path.read_bytes()
                path.unlink()
                return f"data:{content_type};base64,{base64.b64encode(data).decode()}"
            return self.pool.files.url(self.pool.files.adopt(path, path.name), job.base_url)

        return publish
