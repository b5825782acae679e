"""One configuration on a job group (``Phase.parallel``): the server's own group and denoising path on 2, 4 or 8
devices, measured like every other configuration, plus the peak memory of each device of the group.

Rank 0 runs in the configuration's process (as a server's worker does), the other ranks are the group's spawned
followers; each call hands the request to them and runs ``run_denoise`` on rank 0, as ``generate()`` does. The
followers' memory is not visible to rank 0's allocator, so each GPU's peak is the device-wide memory in use
(``torch.cuda.device_memory_used``, NVML), sampled every 20 ms during the call: allocator caches and CUDA contexts
included, which is what decides whether a job fits."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from pipelines.conditioning import Conditioning
from pipelines.denoise import DenoiseRequest, run_denoise
from pipelines.group import Followers
from pipelines.hooks import JobHooks
from pipelines.loading import ModelManager
from pipelines.parallel import GroupMember, ParallelSpec
from pipelines.runtime import GIB, RuntimeConfig
from pipelines.schema import VaceInput

from .meter import PeakSampler
from .phases import Emit, Row, bench_config, device_record, quiet_libraries, short_error
from .plan import JOBS, MODEL_NAMES, SEED, Phase, Settings
from .runners import Runner, pose_conditioning


class DevicePeaks(PeakSampler):
    """Peak device-wide memory in use of each CUDA device over a block."""

    def __init__(self, devices: list[str], interval: float = 0.02) -> None:
        super().__init__(interval)
        self.indices = [torch.device(d).index for d in devices if torch.device(d).type == "cuda"]
        self.peaks = [0] * len(self.indices)

    def start(self) -> bool:
        self.peaks = [0] * len(self.indices)
        return bool(self.indices)

    def sample(self) -> None:
        self.peaks = [max(p, torch.cuda.device_memory_used(i)) for p, i in zip(self.peaks, self.indices, strict=True)]

    def note(self) -> str:
        if not self.indices:
            return ""
        return "peak GiB per GPU (device-wide): " + ", ".join(f"{p / GIB:.1f}" for p in self.peaks)


def group_runner(manager: ModelManager, group: GroupMember, model: str, peaks: DevicePeaks) -> Runner:
    """The server's group path: the request to every rank, then ``run_denoise`` on rank 0 (its step cache too)."""
    send = group.send
    assert send is not None  # rank 0's member

    def run(cond: Conditioning, inp: VaceInput, width: int, height: int, step: Callable[[], None]) -> None:
        request = DenoiseRequest(inp, cond, inp.prompt, width, height, SEED, model, ())
        with peaks:
            send(request)
            run_denoise(manager.get(model), request, JobHooks(step=lambda _i, _n: step()), group)

    return run


def run_group_phase(settings: Settings, phase: Phase, emit: Emit) -> None:
    """Start the group, load the model on rank 0 (the followers load theirs on the warm-up call), measure."""
    quiet_libraries()
    assert phase.parallel is not None
    spec = ParallelSpec.parse(phase.parallel)
    device = torch.device(settings.device)
    devices = [f"cuda:{i}" for i in range(spec.world_size)] if device.type == "cuda" else ["cpu"] * spec.world_size
    emit(device_record(device))
    conds = {job: pose_conditioning(*JOBS[job]) for job in settings.jobs}
    runtime = RuntimeConfig(memory_mode=phase.memory, attention=phase.attention)
    followers = Followers(spec, Path(settings.weights), runtime, devices)
    started = time.perf_counter()
    try:
        group = followers.start()
        manager = ModelManager(Path(settings.weights), device=devices[0], max_models=1, runtime=runtime, group=group)
        manager.get(phase.model)
        emit({"type": "load", "what": f"{phase.title()} (rank 0)", "seconds": time.perf_counter() - started})
        peaks = DevicePeaks(devices)
        bench_config(
            settings,
            phase,
            group_runner(manager, group, phase.model, peaks),
            manager.attention,
            ["none"],
            conds,
            emit,
            note_of=peaks.note,
        )
    except Exception as exc:  # noqa: BLE001 - one configuration failing must not stop the matrix
        row = Row(MODEL_NAMES[phase.model], "-", f"ours, {phase.parallel}", phase.attention, phase.memory_label())
        row.note = f"group failed, {short_error(exc)}"
        emit(row.record())
    finally:
        followers.close()
