"""A node's workers in processes of their own: one per device (one per job group with ``--parallel``), all on the
node's job store and file store.

Why: the node's process answers HTTP on its event loop. A worker thread in the same process decodes, denoises and
encodes holding the interpreter lock for long stretches, which delays every status answer behind it; in a process of
its own it shares nothing with the event loop (vLLM runs its engine core apart from its API server for the same
reason), and a crash in a native library takes down only that worker.

The node starts each worker process as ``python -m server.runtime.worker_process FD`` with one end of a socket pair,
over which the two exchange newline-delimited JSON messages (:class:`Channel`):

- **Setup.** The node's first message gives the process its settings and its devices. The process opens the store
  and files as the node does (``server/backends.py``; a SQLite file as a member of the node that owns it), runs one
  :class:`~server.runtime.worker.WorkerPool` of one worker, and says which worker ids it runs.
- **Wake-ups.** When a job becomes claimable, the node's sink (``server/app.py``) wakes its worker processes over
  their sockets: no polling, and no latency beyond a local socket.
- **Announcements.** A SQLite store announces a transition in the process that wrote it (``server/store/jobs.py``), so a
  worker process relays its store's announcements to the node, which announces them there
  (``JobStore.relayed``). PostgreSQL's triggers reach the node on their own; nothing is relayed then.
- **Metrics.** The worker's reports (step and job times, resumed jobs, group restarts, GPU memory) are relayed to
  the node's :class:`~server.runtime.metrics.Metrics`, so the node's ``/metrics`` shows them.
- **Ends.** The node stops a worker process by closing its side of the socket, as the process stops when its node is
  gone: like a stopping server, the process hands its running job back (the run not counted) and exits. A worker
  process that dies instead (SIGKILL, a crash) closes its socket without saying so: the node hands the job it held
  back at once, under the attempt rules (``JobStore.hand_back``), rather than after its lease, and starts a new
  process in its place, after a pause that doubles while new processes keep dying young.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from pipelines.loading import ModelManager
from pipelines.parallel import ParallelSpec
from pipelines.worker_group import WorkerGroup

from ..backends import job_context, open_files, open_store
from ..config import Settings
from ..store.jobs import Change, JobStore
from .metrics import Metrics
from .worker import Intermediates, WorkerPool

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
"""The pause before a worker process that died is replaced; doubled (up to ``MAX_RESTART_DELAY_S``) while the new
ones die within ``STABLE_S`` of their start, so that a process that cannot start does not spin."""
MAX_RESTART_DELAY_S = 60.0
STABLE_S = 60.0


class Channel:
    """Newline-delimited JSON messages over a stream socket: sent from any thread, received on one."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._reader = sock.makefile("rb")

    def send(self, **message: Any) -> None:
        """Send ``message``; one the other side can no longer take (it is gone) is dropped, as that side's end is
        handled where its socket closes."""
        data = (json.dumps(message) + "\n").encode()
        with self._lock, contextlib.suppress(OSError):
            self._sock.sendall(data)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The messages received, until the other side closes its end (or dies)."""
        for line in self._reader:
            yield json.loads(line)

    def close_sending(self) -> None:
        """Tell the other side that no more messages come (it stops), while still reading what it sends."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._reader.close()
        self._sock.close()


class WorkerProcesses:
    """The node's worker processes (:class:`~server.runtime.worker.Workers`): started, supervised and replaced here."""

    runs_jobs = True

    def __init__(self, config: Settings, store: JobStore, metrics: Metrics, managers: list[ModelManager]) -> None:
        """``managers``: one per device, never loading anything here: they check requests against the weights
        directory and the runtime the worker processes will have."""
        self.config, self.store, self.metrics, self.managers = config, store, metrics, managers
        self.stopping = threading.Event()
        slots = [list(config.devices)] if config.parallel else [[str(m.device)] for m in managers]
        self._children = [_Child(self, devices) for devices in slots]

    def start(self) -> None:
        for child in self._children:
            child.thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every worker process (each hands its running job back) and wait for them, killing what is left
        after ``timeout_s``."""
        self.stopping.set()
        for child in self._children:
            child.stop()
        deadline = time.monotonic() + timeout_s
        for child in self._children:
            child.thread.join(max(0.0, deadline - time.monotonic()))
        for child in self._children:
            child.kill()

    def wake(self) -> None:
        for child in self._children:
            child.send(wake=True)

    def has_weights(self, model: str) -> bool:
        return self.managers[0].is_present(model)

    @property
    def models(self) -> ModelManager:
        return self.managers[0]

    def devices(self) -> list[dict[str, Any]]:
        """As the worker processes last told the store (with their signs of life, and after each job)."""
        ours = {worker_id for child in self._children for worker_id in child.worker_ids}
        live = self.store.live_workers(time.time() - self.config.lease_s)
        return [worker["runtime"] for worker in live if worker["id"] in ours]


class _Child:
    """One worker process slot: the process running now, its channel, and the thread that supervises it."""

    def __init__(self, processes: WorkerProcesses, devices: list[str]) -> None:
        self.processes = processes
        self.devices = devices
        self.worker_ids: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: Channel | None = None
        self.thread = threading.Thread(
            target=self._supervise, name=f"vace-worker-process-{'+'.join(devices)}", daemon=True
        )

    def send(self, **message: Any) -> None:
        if (channel := self.channel) is not None:
            channel.send(**message)

    def stop(self) -> None:
        if (channel := self.channel) is not None:
            channel.close_sending()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            log.warning("the worker process on %s did not stop in time; killing it", "+".join(self.devices))
            self.proc.kill()

    def _supervise(self) -> None:
        stopping = self.processes.stopping
        delay = RESTART_DELAY_S
        while not stopping.is_set():
            started = time.monotonic()
            self._spawn()
            assert self.proc is not None and self.channel is not None
            self._serve(self.channel)
            code = self.proc.wait()
            self.channel.close()
            if stopping.is_set():
                return
            self._hand_back(f"the worker process on {'+'.join(self.devices)} exited ({_exit_status(code)})")
            delay = RESTART_DELAY_S if time.monotonic() - started > STABLE_S else min(2 * delay, MAX_RESTART_DELAY_S)
            stopping.wait(delay)

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.runtime.worker_process", str(theirs.fileno())], pass_fds=(theirs.fileno(),)
        )
        theirs.close()
        self.worker_ids = []
        self.channel = Channel(ours)
        self.channel.send(
            settings=self.processes.config.model_dump(mode="json"),
            devices=self.devices,
            log_level=logging.getLogger().getEffectiveLevel() or logging.WARNING,
        )

    def _serve(self, channel: Channel) -> None:
        """Take the process's messages until its socket closes."""
        metrics, store = self.processes.metrics, self.processes.store
        for message in channel:
            match message:
                case {"hello": list(worker_ids)}:
                    self.worker_ids = worker_ids
                case {"announce": [str(job_id), ("queued" | "updated" | "ended") as change]}:
                    store.relayed(job_id, change)
                case {"step": [str(model), str(device), float(seconds)]}:
                    metrics.step(model, device, seconds)
                case {"job": [str(app), str(task), str(outcome), float(seconds)]}:
                    metrics.job(app, task, outcome, seconds)
                case {"resumed": int(steps)}:
                    metrics.resumed(steps)
                case {"group_restart": _}:
                    metrics.group_restart()
                case {"gpu": [str(device), int(allocated), int(reserved), int(peak)]}:
                    metrics.gpu(device, allocated, reserved, peak)

    def _hand_back(self, cause: str) -> None:
        """The process died: the job it held goes back now (the store's upkeep would after its lease)."""
        log.warning("%s; starting a new one", cause)
        for worker_id in self.worker_ids:
            try:
                self.processes.store.hand_back(None, worker_id, self.processes.config.max_attempts, cause)
            except Exception:  # the store is away: the lease runs out instead
                log.warning("could not hand back the jobs of %s", worker_id, exc_info=True)


def _exit_status(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


class Relay:
    """A worker process's line to its node: the store's announcements (a SQLite store's) and the worker's metrics
    go over the channel (a :class:`~server.store.jobs.ChangeSink` and a
    :class:`~server.runtime.worker.WorkerMetrics`)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def announce(self, job_id: str, change: Change) -> None:
        self.channel.send(announce=[job_id, change])

    def missed(self) -> None:
        """Never called: a SQLite store misses nothing, and PostgreSQL's announcements are not relayed."""

    def step(self, model: str, device: str, seconds: float) -> None:
        self.channel.send(step=[model, device, seconds])

    def job(self, app: str, task: str, outcome: str, seconds: float) -> None:
        self.channel.send(job=[app, task, outcome, seconds])

    def resumed(self, steps: int) -> None:
        self.channel.send(resumed=steps)

    def group_restart(self) -> None:
        self.channel.send(group_restart=True)

    def gpu(self, device: str, allocated: int, reserved: int, peak: int) -> None:
        self.channel.send(gpu=[device, allocated, reserved, peak])


def main(fd: int) -> None:
    """A worker process: set up from the node's first message, run until the node closes the channel (or goes
    away), then stop as a stopping server does (the running job goes back to the queue).

    SIGINT and SIGTERM are ignored: sent to the whole process group (a terminal's Ctrl-C, a service manager
    stopping the service) they reach the node too, which stops its worker processes in order; a worker process that
    must go at once is killed, and its node replaces it.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    channel = Channel(socket.socket(fileno=fd))
    messages = iter(channel)
    setup = next(messages)
    logging.basicConfig(level=setup["log_level"], format="%(levelname)s %(message)s")
    config = Settings.model_validate(setup["settings"])
    devices: list[str] = setup["devices"]
    relay = Relay(channel)
    store = open_store(config, owner=False)
    files = open_files(config)
    group = None
    if config.parallel:
        group = WorkerGroup(
            ParallelSpec.parse(config.parallel),
            devices,
            config.weights_dir,
            config.runtime,
            config.max_models,
            on_restart=lambda _cause: relay.group_restart(),
        )
    models = ModelManager(config.weights_dir, device=devices[0], max_models=config.max_models, runtime=config.runtime)
    pool = WorkerPool(
        store=store,
        files=files,
        metrics=relay,
        managers=[models],
        work_dir=config.work_dir,
        ctx=job_context(config, files),
        lease_s=config.lease_s,
        max_attempts=config.max_attempts,
        models=config.models,
        switch_after_s=config.switch_after_s,
        group=group,
        intermediates=Intermediates.of(config),
    )
    if not config.shared_store:  # a fleet's store reaches the node by itself
        store.announce_to(relay)
    channel.send(hello=[worker.id for worker in pool.workers])
    pool.start()
    for message in messages:
        if message.get("wake"):
            pool.wake()
    pool.stop()  # the node closed the channel, or is gone
    store.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
