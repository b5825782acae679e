"""The workers: one per device (or per job group of devices), each pulling jobs from the store and running
``generate()`` on them. A node runs its workers in processes of their own (``server/runtime/worker_process.py``, one
:class:`WorkerPool` of one worker in each) or, with ``--worker-threads``, as threads of a :class:`WorkerPool` in
its own process; either way the node sees them through :class:`Workers`.

Model work never runs on the HTTP event loop. A worker reports every log line and denoising step to the store,
which the status routes read and which announces each change to whoever waits on the job. Whatever goes wrong in
one job ends that job with a stated reason and the worker takes the next one: running the device out of memory or
the disk out of space is named as such, the job's partial files are deleted and its memory released before the
next job starts. Stopping the server interrupts a running job at its next step and puts it back in the queue
without counting that run.

While a job denoises, its worker keeps a checkpoint of the loop (every few steps or seconds) and a live preview of
the video (every few steps) in the file store (:class:`Intermediates`), each newest one recorded on the job
(``JobStore.set_checkpoint``, ``set_preview``) and the one before deleted. A job handed back (its worker died, lost
its lease or stopped, a rank of its group died) keeps both, and its next run, on any node, goes on from the
checkpoint (``pipelines.resume``); a job that ends deletes them.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from pydantic import ValidationError

from pipelines.context import JobContext
from pipelines.errors import InputError, JobCancelled
from pipelines.hooks import CheckpointSink, JobHooks, PreviewSink, Publish
from pipelines.manifest import MODELS
from pipelines.registry import endpoint_task, input_model
from pipelines.schema import EndpointInput
from pipelines.windows import WINDOWS_DIR

from ..config import Settings
from ..fal.failures import failure_of
from ..files.store import FileStore, private_dir
from ..store.jobs import Failure, Job, JobStore

if TYPE_CHECKING:  # an API node (no workers here) never loads the model stack; a worker imports it when it runs
    from pipelines.loading import ModelManager
    from pipelines.worker_group import WorkerGroup

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0
RECORD_RETRY_S = 2.0
RECENT_HINTS = 32  # runner hints a worker remembers to route later jobs with the same hint to itself
GROUP_RETRY_S = 10.0  # wait before trying again to start a job group that failed to start
MAX_CHECKPOINT_BYTES = 64 * 1024**3
"""The largest checkpoint a worker reads back (a 720p job with the step cache on holds a few GB)."""


@dataclass(frozen=True)
class Intermediates:
    """How often a running job writes a checkpoint and a live preview (the ``Settings`` of the same names)."""

    checkpoint_every_steps: int = 5
    checkpoint_every_s: float = 300.0
    preview_every_steps: int = 1

    @classmethod
    def of(cls, config: Settings) -> Intermediates:
        """This node's: from its settings."""
        return cls(config.checkpoint_every_steps, config.checkpoint_every_s, config.preview_every_steps)


@dataclass(frozen=True)
class Completed:
    """The job produced its output."""

    result: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    """The job failed: ``failure`` is what its result request answers, ``summary`` the last line of its log."""

    failure: Failure
    summary: str


@dataclass(frozen=True)
class Cancelled:
    """A user cancelled the running job."""

    reason: str


@dataclass(frozen=True)
class HandedBack:
    """The run stopped without an outcome and the job goes back to the queue: ``counted`` as a lost run under the
    attempt rules (a rank of the job group died) or not (the server is stopping)."""

    reason: str
    counted: bool


@dataclass(frozen=True)
class Lost:
    """The job is no longer this worker's (its lease ran out and another node handed it back): nothing to record."""


Ending = Completed | Failed | Cancelled | HandedBack | Lost
"""How one run of a job ended."""


class WorkerMetrics(Protocol):
    """What workers report for the node's metrics (:class:`server.runtime.metrics.Metrics`, or its relay in a worker
    process)."""

    def step(self, model: str, device: str, seconds: float) -> None: ...
    def job(self, app: str, task: str, outcome: str, seconds: float) -> None: ...
    def resumed(self, steps: int) -> None: ...
    def group_restart(self) -> None: ...
    def gpu(self, device: str, allocated: int, reserved: int, peak: int) -> None: ...


class Workers(Protocol):
    """A node's workers as the rest of the node sees them, threads of its process or processes of their own."""

    runs_jobs: bool
    """Whether this node runs jobs (False on an API node: workers elsewhere pull from the shared store)."""

    def start(self) -> None: ...
    def stop(self, timeout_s: float = 30.0) -> None: ...

    def wake(self) -> None:
        """A job became claimable: wake the idle workers."""

    def has_weights(self, model: str) -> bool:
        """Whether ``model`` can be served: its weights are here, or (an API node) workers elsewhere decide."""

    @property
    def models(self) -> ModelManager | None:
        """A model manager to check requests against and ask about installed weights (every worker's sees the same
        weights directory); None on an API node, whose weights directory says nothing about the workers'."""

    def devices(self) -> list[dict[str, Any]]:
        """Each worker's runtime (``ModelManager.describe``: device, memory mode, loaded models, ...)."""


def clear_scratch(workdir: Path, keep: str | None = None) -> None:
    """Delete a job's work directory, or everything in it but the entry ``keep``."""
    if keep is None or not (workdir / keep).exists():
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for entry in workdir.iterdir():
        if entry.name == keep:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def clear_work_dir(work_dir: Path) -> None:
    """Delete the scratch files of runs that a crash interrupted; a node does it before its workers start."""
    shutil.rmtree(work_dir, ignore_errors=True)
    private_dir(work_dir)


class WorkerPool:
    """Workers as threads of this process, and what they share: the node's workers with ``--worker-threads``, or
    the one worker of a worker process."""

    def __init__(
        self,
        *,
        store: JobStore,
        files: FileStore,
        metrics: WorkerMetrics,
        managers: list[ModelManager],
        work_dir: Path,
        ctx: JobContext,
        lease_s: float = 30.0,
        max_attempts: int = 2,
        runs_jobs: bool = True,
        models: tuple[str, ...] = (),
        switch_after_s: float = 0.0,
        group: WorkerGroup | None = None,
        intermediates: Intermediates = Intermediates(),
    ) -> None:
        """``group``: the devices form one job group, served by one worker (``managers`` then holds rank 0's)."""
        self.store = store
        self.runs_jobs = runs_jobs
        self.model_filter = models
        self.switch_after_s = switch_after_s
        """The bound on preferring jobs a worker is better placed for (``JobStore.claim``)."""
        self.ctx = ctx
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.files = files
        self.metrics = metrics
        self.work_dir = work_dir
        self.intermediates = intermediates
        self.stopping = threading.Event()
        self.workers = [Worker(self, manager, group) for manager in managers]
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="vace-heartbeat", daemon=True)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()
        self._heartbeat.start()

    def _heartbeat_loop(self) -> None:
        """Renew the running jobs' leases (a third of a lease apart; see ``server/store/jobs.py``) and the workers'
        signs of life, on a thread of its own so that it goes on while every worker is busy with a long job; report the
        devices' memory with them."""
        while True:
            try:
                for worker in self.workers:
                    worker.renew_lease()
                    self.store.worker_seen(worker.id, worker.describe())
                    if (device := worker.models.device).type == "cuda":
                        self.metrics.gpu(
                            str(device),
                            torch.cuda.memory_allocated(device),
                            torch.cuda.memory_reserved(device),
                            torch.cuda.max_memory_allocated(device),
                        )
            except Exception:  # a database restarting: the next beat comes within the lease
                log.warning("renewing the workers' leases failed; retrying", exc_info=True)
            if self.stopping.wait(self.lease_s / 3):
                return

    def wake(self) -> None:
        for worker in self.workers:
            worker.wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stopping.set()
        self.wake()
        deadline = time.monotonic() + timeout_s
        for thread in (*self.workers, self._heartbeat):
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def has_weights(self, model: str) -> bool:
        return not self.runs_jobs or self.workers[0].models.is_present(model)

    @property
    def models(self) -> ModelManager | None:
        return self.workers[0].models if self.runs_jobs else None

    def devices(self) -> list[dict[str, Any]]:
        return [worker.models.describe() for worker in self.workers] if self.runs_jobs else []


class Worker(threading.Thread):
    """Runs one job at a time on one device, or on the devices of its job group (`pipelines/worker_group.py`)."""

    def __init__(self, pool: WorkerPool, models: ModelManager, group: WorkerGroup | None = None) -> None:
        super().__init__(name=f"vace-worker-{models.device}", daemon=True)
        self.pool = pool
        self.models = models
        self.group = group
        """A job group that this worker is rank 0 of; ``models`` are then the running group's rank 0 models."""
        self.wake = threading.Event()
        self.id = f"{socket.gethostname()}:{os.getpid()}:{models.device}:{secrets.token_hex(3)}"
        """Names this worker on the job it runs (its lease); unique across processes and machines."""
        self.current: str | None = None
        self.lost: str | None = None
        """The last job whose lease this worker found lost: that job stops at its next step. A job id rather than a
        flag, so that a heartbeat for a job that has just ended cannot stop the next one."""
        self.hints: deque[str] = deque(maxlen=RECENT_HINTS)
        """The runner hints of the jobs this worker ran lately, newest last: later jobs with one of them come here
        first (fal's ``X-Fal-Runner-Hint``: the same runner as the earlier requests with that hint)."""

    def describe(self) -> dict[str, Any]:
        """What the fleet view shows of this worker (with its runtime, which a node shows of its worker processes)."""
        return {
            "node": socket.gethostname(),
            "device": str(self.models.device),
            "current_job": self.current,
            "models_present": [
                m
                for m in MODELS
                if self.models.is_present(m) and (not self.pool.model_filter or m in self.pool.model_filter)
            ],
            "models_loaded": self.models.loaded(),
            **(self.group.describe() if self.group else {"devices": [str(self.models.device)], "parallel": None}),
            "runtime": self.models.describe(),
        }

    def renew_lease(self) -> None:
        """Keep the running job's lease; if the store says the job is no longer ours (another node handed it back
        after our lease ran out, e.g. while the database was unreachable), stop it at the next step."""
        job_id = self.current
        if job_id is not None and not self.pool.store.heartbeat(job_id, self.id, self.pool.lease_s):
            if self.current == job_id:  # not a job that ended while its heartbeat was on the way
                log.warning("job %s is no longer held by %s; stopping it", job_id, self.id)
            self.lost = job_id

    def run(self) -> None:
        try:
            self._claim_loop()
        finally:
            if self.group is not None:
                self.group.close()

    def _claim_loop(self) -> None:
        while not self.pool.stopping.is_set():
            if self.group is not None:
                try:
                    self.models = self.group.ready()
                except Exception:
                    log.exception("could not start the job group; retrying in %g s", GROUP_RETRY_S)
                    self.pool.stopping.wait(GROUP_RETRY_S)
                    continue
            job = self._claim()
            if job is None:
                self.wake.wait(IDLE_POLL_S)
                self.wake.clear()
                continue
            self.current, self.lost = job.id, None
            if job.runner_hint is not None:  # remembered as the newest
                with contextlib.suppress(ValueError):
                    self.hints.remove(job.runner_hint)
                self.hints.append(job.runner_hint)
            try:
                self._run(job)
            except Exception:  # the store itself failed; keep the worker alive for the next job
                log.exception("worker error on job %s", job.id)
            self.current = None
            with contextlib.suppress(Exception):  # the store is away: the next heartbeat tells it
                self.pool.store.worker_seen(self.id, self.describe())  # the fleet view sees what the job loaded

    def _claim(self) -> Job | None:
        """The next job this worker should run (see ``JobStore.claim`` for the order), or None: none is queued, or
        the store cannot be reached right now (a database restarting), which the idle wait then rides out."""
        servable = [
            model
            for model in MODELS
            if self.models.is_present(model) and (not self.pool.model_filter or model in self.pool.model_filter)
        ]
        try:
            return self.pool.store.claim(
                worker_id=self.id,
                lease_s=self.pool.lease_s,
                models=servable,
                loaded=self.models.loaded(),
                hints=self.hints,
                switch_after_s=self.pool.switch_after_s,
            )
        except Exception as exc:  # noqa: BLE001 - whatever the store raises while away, the idle wait rides it out
            log.warning("%s could not claim a job: %s; retrying", self.id, str(exc).strip())
            return None

    def _log(self, job_id: str, message: str, level: str = "INFO") -> None:
        """Store a log line for the status routes; a line the store cannot take (a full disk) is not worth
        failing the job over, so it goes to the server's own log instead."""
        try:
            self.pool.store.log(job_id, message, level)
        except Exception:
            log.warning("job %s: could not store the log line %r", job_id, message, exc_info=True)

    def _run(self, job: Job) -> None:
        """Run ``job``, then record how it ended: two steps, so that everything the store learns of a run's end is
        written in one place (``_record``)."""
        started = time.perf_counter()
        self._log(job.id, f"started on {self.models.device} (run {job.attempts})")
        self._log(job.id, f"worker {self.id}")  # which process and machine holds the job (its lease)
        self._record(job, self._execute(job), time.perf_counter() - started)

    def _execute(self, job: Job) -> Ending:
        """Run ``job`` to its end and say how it ended. Whatever the end, the job's scratch files are deleted (but
        for the windows a long job finished, when it goes back to the queue: its next run on this node takes them,
        ``pipelines.window_outputs``) and its memory released, a job that did not complete leaves none of its
        published files behind, and a job that ended (rather than going back to the queue) leaves no checkpoint or
        preview: all before anything is written to the store, since on a full disk deleting them makes the room for
        the writes."""
        workdir = self.pool.work_dir / job.id
        published: list[str] = []  # keys of the files this job put in the store
        ending: Ending | None = None
        try:
            ending = self._generate(job, workdir, published)
            return ending
        finally:
            clear_scratch(workdir, keep=WINDOWS_DIR if isinstance(ending, HandedBack) else None)
            if not isinstance(ending, Completed):
                for key in published:
                    self._delete_file(job.id, key)
            if isinstance(ending, (Completed, Failed, Cancelled)):
                self._drop_intermediates(job)
            release_memory(self.models.device)

    def _generate(self, job: Job, workdir: Path, published: list[str]) -> Ending:
        """``generate()`` on the job, every exception turned into the ending it means."""
        from pipelines.generate import generate  # the model stack, loaded where jobs run

        try:
            workdir.mkdir(mode=0o700, exist_ok=True)
            inp = input_model(job.app, job.task).model_validate(job.input)
            output = generate(
                inp,
                task=endpoint_task(job.task),
                model=job.model,
                manager=self.models,
                workdir=workdir,
                publish=self._publisher(job, inp.sync_mode, published),
                hooks=self._hooks(job, inp, workdir),
                ctx=self.pool.ctx,
            )
            return Completed(output.model_dump(mode="json", exclude_none=True))
        except (InputError, ValidationError) as exc:  # ValidationError: a stored input this version refuses
            if isinstance(exc, InputError) and exc.type == "content_policy_violation":
                self._drop_control(job)  # nothing of a flagged job stays on the server
            failure = failure_of(exc)
            return Failed(failure, failure.message)
        except JobCancelled as exc:
            if self.lost == job.id:
                return Lost()
            if self.pool.stopping.is_set() and not self.pool.store.cancel_requested(job.id):
                return HandedBack("the server is stopping; re-queued to run after restart", counted=False)
            return Cancelled(f"cancelled ({exc})")
        except Exception as exc:  # noqa: BLE001 - any other error fails this job (failure_of types it), not the worker
            cause = self.group.interrupted() if self.group is not None else None
            if cause is not None:  # not the job's fault: it goes back under the attempt rules, as if this worker died
                return HandedBack(f"the job group lost a rank: {cause}", counted=True)
            failure = failure_of(exc, self.models.device)
            if failure.type == "internal_error":  # failure_of logged the traceback under the message's id
                log.error("job %s failed: %s", job.id, failure.message)
            return Failed(failure, f"failed: {failure.message}")

    def _hooks(self, job: Job, inp: EndpointInput, workdir: Path) -> JobHooks:
        """How ``generate()`` reports to the store while it runs: log lines, steps (timed for the metrics), the
        control video it made, and whether to stop (a cancel, the server stopping, the job lost to another node)."""
        device = self.models.device
        last: tuple[int, float] | None = None  # the last step reported and when

        def step(i: int, total: int) -> None:
            nonlocal last
            now = time.perf_counter()
            if last is not None and last[0] == i - 1:  # a resumed run's first step has no step before it here
                self.pool.metrics.step(job.model, str(device), now - last[1])
            last = (i, now)
            self._log(job.id, f"step {i}/{total}")

        hooks = JobHooks(
            log=lambda message: self._log(job.id, message),
            step=step,
            window=lambda i, n: self._log(job.id, f"window {i}/{n}"),
            cancelled=lambda: self.must_stop(job.id),
            checkpoints=self._checkpoints(job, workdir),
        )
        if not inp.sync_mode:  # sync_mode keeps nothing on the server
            hooks.control = lambda path, fps: self._keep_control(job, path, fps)
            hooks.preview = self._previews(job, workdir)
        return hooks

    def _checkpoints(self, job: Job, workdir: Path) -> CheckpointSink | None:
        """Where ``job``'s checkpoints go: the file store, the newest recorded on the job; the one it had when this
        run claimed it is the one it resumes from."""
        every = self.pool.intermediates
        if not every.checkpoint_every_steps and not every.checkpoint_every_s:
            return None
        files = self.pool.files

        def latest() -> Path | None:
            if job.checkpoint_key is None:
                return None
            return files.fetch(files.url(job.checkpoint_key, job.base_url), workdir, MAX_CHECKPOINT_BYTES)

        def keep(path: Path, step: int) -> None:
            self._replace(job, self.pool.store.set_checkpoint, files.adopt(path, "checkpoint.safetensors"), step)
            self._log(job.id, f"checkpoint at step {step}")

        return CheckpointSink(
            every_steps=every.checkpoint_every_steps,
            every_s=every.checkpoint_every_s,
            folder=workdir,
            keep=keep,
            latest=latest,
            resumed=lambda steps, _total: self.pool.metrics.resumed(steps),
        )

    def _previews(self, job: Job, workdir: Path) -> PreviewSink | None:
        """Where ``job``'s live previews go: the file store, the newest recorded on the job (its status names it)."""
        every = self.pool.intermediates.preview_every_steps
        if not every:
            return None

        def publish(path: Path, step: int) -> None:
            self._replace(job, self.pool.store.set_preview, self.pool.files.adopt(path, "preview.webp"), step)

        return PreviewSink(every_steps=every, folder=workdir, publish=publish)

    def _replace(
        self, job: Job, record: Callable[[str, str, str, int], tuple[bool, str | None]], key: str, step: int
    ) -> None:
        """Record the stored file ``key`` as ``job``'s newest of its kind and delete the one it replaces; a file the
        store did not take (the job is no longer this worker's) is deleted instead."""
        recorded, replaced = record(job.id, self.id, key, step)
        stale = replaced if recorded else key
        if stale is not None:
            self._delete_file(job.id, stale)

    def _drop_intermediates(self, job: Job) -> None:
        """Delete the checkpoint and preview of a job that ended (the store forgets them as it records the end)."""
        try:
            current = self.pool.store.get(job.id)
        except Exception:  # the store is away: retention deletes them by age once the job has ended
            log.warning("job %s: could not look up its checkpoint and preview to delete them", job.id, exc_info=True)
            return
        for key in (current.checkpoint_key, current.preview_key) if current is not None else ():
            if key is not None:
                self._delete_file(job.id, key)

    def must_stop(self, job_id: str) -> bool:
        """Whether the run of ``job_id`` stops at its next step: the server is stopping, this worker lost the job's
        lease, or a user cancelled it."""
        if self.pool.stopping.is_set() or self.lost == job_id:
            return True
        try:
            return self.pool.store.cancel_requested(job_id)
        except Exception as exc:  # noqa: BLE001 - see below
            # The store is away (a database restarting): the job goes on, and its lease says whether it still
            # belongs to this worker once the store is back.
            log.warning("job %s: could not check for a cancel: %s", job_id, str(exc).strip())
            return False

    def _record(self, job: Job, ending: Ending, seconds: float) -> None:
        """Write how the run of ``job`` ended to the store: one transition (ended, or back to the queue), or
        nothing when the job is no longer this worker's."""
        store = self.pool.store
        match ending:
            case Lost():  # whoever holds the job now records it; a second outcome would be a double completion
                log.warning("job %s: handed to another worker; stopped without recording it", job.id)
                return
            case HandedBack(reason, counted=True):  # under the attempt rules, as a job whose worker died
                log.warning("job %s: %s", job.id, reason)
                self._write(lambda: store.hand_back(job.id, self.id, self.pool.max_attempts, reason))
                return
            case HandedBack(reason, counted=False):
                self._write(lambda: store.requeue(job.id, reason, worker_id=self.id))
                return
            case Completed(result):
                line, level, outcome = f"completed in {seconds:.1f} s", "INFO", "ok"
                finish = functools.partial(store.finish, job.id, result=result, worker_id=self.id)
            case Failed(failure, summary):
                line, level, outcome = summary, "ERROR", "error"
                finish = functools.partial(store.finish, job.id, failure=failure, worker_id=self.id)
            case Cancelled(reason):
                line, level, outcome = reason, "WARN", "cancelled"
                finish = functools.partial(store.finish, job.id, cancelled=True, worker_id=self.id)
        self._log(job.id, line, level)
        if not self._write(finish):
            # The lease was lost at the last moment: the job's new holder records it.
            log.warning("job %s ended here after another worker took it over; its outcome was not recorded", job.id)
            return
        self.pool.metrics.job(job.app, job.task, outcome, seconds)

    def _write(self, write: Callable[[], bool]) -> bool:
        """Write a job's end to the store, retrying while the store cannot take it (a full disk, a database
        restarting): a job that ended must not stay "running". Returns whether the store took it (False: this
        worker no longer holds the job). Should the server stop first, the job's lease runs out (or restart
        recovery runs) and it is re-queued."""
        while True:
            try:
                return write()
            except Exception:
                log.exception("could not record a job's end; retrying in %g s", RECORD_RETRY_S)
            if self.pool.stopping.wait(RECORD_RETRY_S):
                return False

    def _keep_control(self, job: Job, path: Path, fps: float) -> None:
        """Store the control video that preprocessing made (``path``, written by the job) and put its URL on the job
        (the status body shows it).

        It is a preview for people, not part of the output: failing to keep it is logged and the job goes on.
        """
        try:
            url = self.pool.files.output_url(self.pool.files.adopt(path, "control.mp4"), job.base_url)
        except Exception as exc:  # noqa: BLE001 - a full disk, an unreachable bucket: none is worth the job
            self._log(job.id, f"could not keep the control video: {exc}", "WARN")
            return
        self.pool.store.set_control_video(job.id, url)
        self._log(job.id, f"control video kept (at {fps:g} fps)")

    def _drop_control(self, job: Job) -> None:
        """Delete the control video kept for ``job`` and take its URL off the job."""
        stored = self.pool.store.get(job.id)
        url = stored.control_video_url if stored is not None else None  # a job deleted meanwhile kept nothing
        key = self.pool.files.key_of(url) if url else None
        if key is not None:
            self._delete_file(job.id, key)
        self.pool.store.set_control_video(job.id, None)

    def _delete_file(self, job_id: str, key: str) -> None:
        """Delete a file this job stored; one the store cannot delete now (a bucket unreachable) is left to
        retention rather than failing the job's cleanup."""
        try:
            self.pool.files.delete(key)
        except Exception:
            log.warning("job %s: could not delete its file %s", job_id, key, exc_info=True)

    def _publisher(self, job: Job, sync_mode: bool, published: list[str]) -> Publish:
        """Where this job's files go: the file store (absolute or presigned URLs, each key added to ``published`` so
        a job failing after it is deleted again), or data URIs that leave nothing behind."""

        def publish(path: Path, content_type: str) -> str:
            if sync_mode:
                data = path.read_bytes()
                path.unlink()
                return f"data:{content_type};base64,{base64.b64encode(data).decode()}"
            key = self.pool.files.adopt(path, path.name)
            published.append(key)
            return self.pool.files.output_url(key, job.base_url)

        return publish


def release_memory(device: torch.device) -> None:
    """Free what a finished (or failed) job left behind: collect the reference cycles an exception's traceback
    keeps its tensors alive in, then hand cached blocks back to the CUDA driver so the next job starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
