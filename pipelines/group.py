"""A job group on one host: rank 0 is the caller's process (the CLI, or a server's worker); ranks 1.. are local
processes started here that only denoise.

Rank 0 alone fetches media, runs the safety checker, prompt expansion and annotators, builds the conditioning, and
then hands the denoising request (conditioning frames, prompt, size, seed, model, LoRA files) to every rank over a
pipe of its own, through the ``send`` of the ``GroupMember`` that ``Followers.start`` returns (the model manager
carries that member to ``generate()``; nothing of a group is held in a module global). Every rank then runs the
same diffusers pipeline call: the text encoder and the VAE's encoding of the control video run on each rank, on
identical inputs, rather than once on rank 0 with the embeddings and latents broadcast after: they take a small
part of a job, the ranks run them at the same time (no wall time lost), and the pipeline stays one unmodified call.
Only rank 0 decodes the final latents (the others stop at ``output_type="latent"``), since decoding is the expensive
VAE half and only rank 0 encodes and publishes.

Requests go over pipes, not a collective, because a collective waits at most the process group's timeout: an idle
group (a server with no jobs for an hour) must not time out, while a job must not wait forever on a rank that died.
A follower answers each request when it has finished it, so rank 0 can tell a group in step (every follower back
in its loop) from one whose followers are still inside a job that rank 0 left (rank 0 failed mid-job).

A follower that dies mid-job: on gloo its sockets close and every collective of rank 0 raises at once (measured:
0.1 s); on NCCL a collective would wait for the peer, so a watcher thread of rank 0 aborts the process group the
moment a follower process exits. A follower alive but stuck is bounded by the process group's timeout
(``COLLECTIVE_TIMEOUT``). Either way rank 0's job raises, and its owner closes the group and starts a new one.

On CPU the group talks over gloo on loopback; on CUDA, rank ``r`` uses ``devices[r]`` and NCCL, with gloo beside it
for the small size exchanges diffusers makes on the CPU (its backend string ``cpu:gloo,cuda:nccl``).

Nothing of a group is reachable from the network. The ranks meet in a ``FileStore`` in a private (0700) temporary
directory rather than in PyTorch's TCP store: ``tcp://127.0.0.1:PORT`` still makes that store listen on every
interface, where anyone on the LAN could read and overwrite its keys, and a port picked free then bound later could
be taken in between. gloo's and NCCL's own sockets (between the ranks, and NCCL's bootstrap) bind the interface of
the host name unless told otherwise, so every rank names the loopback interface (``GLOO_SOCKET_IFNAME``,
``NCCL_SOCKET_IFNAME``) before it joins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator, Sequence
from multiprocessing import connection
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .denoise import DenoiseRequest, run_denoise
from .errors import JobCancelled
from .loading import ModelManager
from .parallel import GroupMember, ParallelSpec, init_group
from .runtime import RuntimeConfig

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
"""How long a rank waits in one collective: the bound on a follower that is alive but stuck. Generous, since the
ranks of a job load its model (minutes for a 14B one) and the first collective waits for the slowest of them."""
STOP_WAIT_S = 30.0


def backend(device_type: str) -> str:
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "cpu:gloo"


def loopback_interface() -> str | None:
    """The name of this machine's loopback interface (``lo`` on Linux, ``lo0`` on macOS), or None without one."""
    names = {name for _index, name in socket.if_nameindex()}
    return next((name for name in ("lo", "lo0") if name in names), None)


def _join(rank: int, spec: ParallelSpec, store_path: Path, device: str) -> GroupMember:
    """Join the group whose ranks meet in the file ``store_path``; on loopback only (see the module docstring)."""
    device_type = torch.device(device).type
    if device_type == "cuda":
        torch.cuda.set_device(torch.device(device))
    loopback = loopback_interface()
    if loopback is not None:  # read by gloo and NCCL for every process group they make, subgroups included
        os.environ["GLOO_SOCKET_IFNAME"] = os.environ["NCCL_SOCKET_IFNAME"] = loopback
    store = dist.FileStore(str(store_path), spec.world_size)
    store.set_timeout(COLLECTIVE_TIMEOUT)
    dist.init_process_group(
        backend(device_type), store=store, rank=rank, world_size=spec.world_size, timeout=COLLECTIVE_TIMEOUT
    )
    return init_group(spec, device_type)


def _follower(
    index: int,
    spec: ParallelSpec,
    store_path: Path,
    weights_dir: Path,
    devices: Sequence[str],
    runtime: RuntimeConfig,
    pipes: Sequence[Connection],
) -> None:
    """Ranks 1..: load models on their device and run every request rank 0 sends, answering each when done, until
    rank 0 sends None or its process is gone. Any other error ends the process: rank 0 then restarts the group."""
    rank, pipe = index + 1, pipes[index]
    group = _join(rank, spec, store_path, devices[rank])
    manager = ModelManager(weights_dir, device=devices[rank], runtime=runtime, group=group)
    try:
        while True:
            try:
                request = pipe.recv()
            except EOFError:  # rank 0's process ended without a word
                return
            if request is None:
                return
            with contextlib.suppress(JobCancelled):  # rank 0 decided it, every rank stops at the same step
                run_denoise(manager.get(request.model), request, group=group)
            pipe.send(rank)
    finally:
        dist.destroy_process_group()


class Followers:
    """Ranks 1.. of ``spec``'s group as local processes, this process as rank 0; ``devices`` (one per rank) default
    to the CPU. ``start`` joins the group, ``close`` ends it; a group that failed is closed and a new one started.

    A process has one default process group, so it is rank 0 of one group at a time (``start`` refuses a second)."""

    def __init__(
        self, spec: ParallelSpec, weights_dir: Path, runtime: RuntimeConfig, devices: Sequence[str] | None = None
    ) -> None:
        self.devices = list(devices or ["cpu"] * spec.world_size)
        spec.check_devices(len(self.devices))
        spec.check_device_type(torch.device(self.devices[0]).type)
        self.spec, self.weights_dir, self.runtime = spec, Path(weights_dir), runtime
        self.processes: list[BaseProcess] = []
        self._store_dir: Path | None = None  # the private directory of the running group's FileStore
        self._pipes: list[Connection] = []
        self._unfinished = 0  # requests sent that the followers have not all answered yet
        self._closing = threading.Event()
        self._joined = False

    def start(self) -> GroupMember:
        """Start the followers and join the group; the member returned sends each request to them (``send``)."""
        if dist.is_initialized():
            raise RuntimeError("this process already runs a job group")
        self._store_dir = Path(tempfile.mkdtemp(prefix="vace-group-"))  # mode 0700
        store_path = self._store_dir / "store"
        ends = [mp.Pipe() for _ in range(self.spec.world_size - 1)]
        self._pipes = [ours for ours, _ in ends]
        context = mp.start_processes(
            _follower,
            args=(self.spec, store_path, self.weights_dir, self.devices, self.runtime, [t for _, t in ends]),
            nprocs=self.spec.world_size - 1,
            join=False,
            start_method="spawn",
        )
        self.processes = list(context.processes)
        for _, theirs in ends:
            theirs.close()
        try:
            group = _join(0, self.spec, store_path, self.devices[0])
        except BaseException:
            for process in self.processes:
                process.kill()
            self._remove_store()
            raise
        self._joined = True
        if torch.device(self.devices[0]).type == "cuda":
            threading.Thread(target=self._abort_when_a_follower_exits, name="vace-group-watch", daemon=True).start()
        return dataclasses.replace(group, send=self.send)

    def send(self, request: DenoiseRequest) -> None:
        """Hand the next request to every follower."""
        for pipe in self._pipes:
            pipe.send(request)
        self._unfinished += 1

    def failed(self, wait_s: float = 0.0) -> str | None:
        """Which follower exited (waiting up to ``wait_s`` for one to), or None while all run."""
        connection.wait([p.sentinel for p in self.processes], timeout=wait_s)
        for rank, process in enumerate(self.processes, start=1):
            if not process.is_alive():
                return f"rank {rank} ({self.devices[rank]}) exited with code {process.exitcode}"
        return None

    def in_step(self, wait_s: float) -> bool:
        """Whether every follower finished every request sent (waiting up to ``wait_s`` for their answers): False
        when rank 0 left a job that the followers are still inside (it failed mid-job), so they would never take
        the next request."""
        while self._unfinished:
            for pipe in self._pipes:
                if not pipe.poll(wait_s):
                    return False
                pipe.recv()
            self._unfinished -= 1
        return True

    def _abort_when_a_follower_exits(self) -> None:
        """NCCL waits on a dead peer until its timeout: abort the communicators so rank 0's job raises now."""
        connection.wait([p.sentinel for p in self.processes])
        if not self._closing.is_set():
            dist.distributed_c10d._abort_process_group()

    def close(self) -> None:
        """End the group: a group in step is asked to stop, one that failed has its followers killed."""
        self._closing.set()
        healthy = self.failed() is None and self.in_step(wait_s=1.0)
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                if healthy:
                    pipe.send(None)
                pipe.close()
        for process in self.processes:
            process.join(STOP_WAIT_S if healthy else 0)
            if process.is_alive():
                process.kill()
                process.join()
        if self._joined:
            self._joined = False
            dist.destroy_process_group()
        self._remove_store()

    def _remove_store(self) -> None:
        if self._store_dir is not None:
            shutil.rmtree(self._store_dir, ignore_errors=True)
            self._store_dir = None


@contextlib.contextmanager
def job_group(
    spec: ParallelSpec, weights_dir: Path, runtime: RuntimeConfig, devices: Sequence[str] | None = None
) -> Iterator[GroupMember]:
    """Run ``spec``'s group for the duration of the block, this process as rank 0 (see ``Followers``)."""
    followers = Followers(spec, weights_dir, runtime, devices)
    try:
        yield followers.start()
    finally:
        followers.close()
