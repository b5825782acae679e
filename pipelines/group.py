"""A job group on one host: rank 0 is the caller's process (the CLI); ranks 1.. are local processes started here
that only denoise.

Rank 0 alone fetches media, runs the safety checker, prompt expansion and annotators, builds the conditioning, and
then hands the denoising request (conditioning frames, prompt, size, seed, model, LoRA files) to every rank with one
``broadcast_object_list``. Every rank then runs the same diffusers pipeline call: the text encoder and the VAE's
encoding of the control video run on each rank, on identical inputs, rather than once on rank 0 with the embeddings
and latents broadcast after: they take a small part of a job, the ranks run them at the same time (no wall time
lost), and the pipeline stays one unmodified call. Only rank 0 decodes the final latents (the others stop at
``output_type="latent"``), since decoding is the expensive VAE half and only rank 0 encodes and publishes.

On CPU the group talks over gloo on loopback; on CUDA, rank ``r`` uses ``devices[r]`` and NCCL, with gloo beside it
for the small size exchanges diffusers makes on the CPU (its backend string ``cpu:gloo,cuda:nccl``).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .conditioning import Conditioning
from .errors import JobCancelled
from .loras import JobLora
from .parallel import ParallelGroup, ParallelSpec, init_group
from .runtime import RuntimeConfig
from .schema import VaceInput


@dataclass
class DenoiseRequest:
    """Everything a rank needs to run one job's pipeline call."""

    inp: VaceInput
    cond: Conditioning
    prompt: str
    width: int
    height: int
    seed: int
    model: str
    loras: Sequence[JobLora]


def backend(device_type: str) -> str:
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "cpu:gloo"


def send(request: DenoiseRequest | None) -> None:
    """Rank 0: hand the next request to the other ranks (None: the group is done)."""
    dist.broadcast_object_list([request], src=0)


def _receive() -> DenoiseRequest | None:
    box: list[DenoiseRequest | None] = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, spec: ParallelSpec, port: int, device: str) -> ParallelGroup:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device_type = torch.device(device).type
    if device_type == "cuda":
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend(device_type), rank=rank, world_size=spec.world_size)
    return init_group(spec, device_type)


def _follower(index: int, spec: ParallelSpec, port: int, weights_dir: Path, devices: Sequence[str],
              runtime: RuntimeConfig) -> None:
    """Ranks 1..: load models on their device and run every request rank 0 sends until it sends None."""
    from .generate import run_denoise
    from .loading import ModelManager

    rank = index + 1
    group = _join(rank, spec, port, devices[rank])
    models = ModelManager(weights_dir, device=devices[rank], runtime=runtime, group=group)
    try:
        while (request := _receive()) is not None:
            with contextlib.suppress(JobCancelled):  # rank 0 decided it, every rank stops at the same step
                run_denoise(models, request, group=group)
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def local_group(spec: ParallelSpec, weights_dir: Path, runtime: RuntimeConfig,
                devices: Sequence[str] | None = None) -> Iterator[ParallelGroup]:
    """Start ranks 1.. as local processes and make this process rank 0 of ``spec``'s group, for the duration of
    the block; ``devices`` (one per rank) default to the CPU."""
    devices = list(devices or ["cpu"] * spec.world_size)
    spec.check_devices(len(devices))
    spec.check_device_type(torch.device(devices[0]).type)
    port = _free_port()
    followers = mp.start_processes(
        _follower, args=(spec, port, Path(weights_dir), devices, runtime), nprocs=spec.world_size - 1,
        join=False, start_method="spawn",
    )
    group = _join(0, spec, port, devices[0])
    try:
        yield group
    finally:
        send(None)
        dist.destroy_process_group()
        while not followers.join():
            pass
