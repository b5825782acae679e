"""What one run of ``bench/gpu.py`` measures: the models, the jobs, the comparisons, and the configurations (model x
pipeline x memory mode, a "phase" each) they are measured in.

Kept apart from the code that measures so that the parent process plans and the child processes only execute: a
``Phase`` and the run's ``Settings`` travel to a child as JSON."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch

from pipelines.runtime import CUDA_ATTENTION, resolve_attention
from pipelines.step_cache import THRESHOLDS

SEED = 42
SHIFT = 5.0
PROMPT = "a person dancing in a bright studio, smooth camera pan"
MODEL_KEYS = ("wan-vace-14b", "wan-22-vace-fun-a14b")
MODEL_NAMES = {"wan-vace-14b": "Wan2.1 VACE 14B", "wan-22-vace-fun-a14b": "Wan2.2 VACE-Fun A14B"}
# name -> (width, height, frames). 480p/720p are the real jobs; the 240p ones are the CPU stand-ins (on CPU the tiny
# VAE, not the transformer, takes most of a call, so the quick run shortens the video).
JOBS: dict[str, tuple[int, int, int]] = {
    "480p": (832, 480, 81),
    "720p": (1280, 720, 81),
    "240p": (416, 240, 17),
    "240p-short": (416, 240, 9),
}
WARMUP = (320, 192, 5, 2)  # width, height, frames, steps of the warm-up call made once per loaded configuration
PARTS = ("baseline", "accel", "attention", "memory", "budget", "fastpath", "parallel")
OFFLOAD_MODES = ("fp8", "group_offload", "model_offload")
BUDGET_MODE = "group_offload"  # what memory_mode auto picks with under 40 GiB free, i.e. on a 24 GB card
# One job on a group of devices (--parallel), by device count; the 1-device row is "ours, acceleration none".
PARALLEL_SPECS = {
    2: ("cfg=2", "ulysses=2", "ring=2"),
    4: ("ulysses=4", "ring=4", "cfg=2,ulysses=2", "cfg=2,ring=2", "ring=2,ulysses=2"),
    8: ("ulysses=8", "ring=8", "cfg=2,ulysses=4", "cfg=2,ring=4", "cfg=2,ring=2,ulysses=2"),
}


@dataclass
class Settings:
    """What every configuration of one run shares."""

    weights: str
    device: str
    size: str
    jobs: list[str]
    steps: int
    warmup: bool


@dataclass
class Phase:
    """One configuration: a model loaded once by one pipeline in one memory mode, then measured on every job."""

    model: str
    pipeline: str  # "diffusers" | "ours"
    memory: str  # "full" | "fp8" | "group_offload" | "model_offload"
    accelerations: list[str] = field(default_factory=lambda: ["none"])
    attention: str = "auto"
    extra_backends: list[str] = field(default_factory=list)
    budget_gib: float | None = None
    fast_path: bool = False
    """Measure whole jobs of the LoRA fast-path recipe against the default request instead of the step matrix."""
    parallel: str | None = None
    """A ``--parallel`` spec: the job runs on a group of that many devices (cuda:0.., or CPU processes)."""

    def memory_label(self) -> str:
        return self.memory if self.budget_gib is None else f"{self.memory}, {self.budget_gib:g} GiB cap"

    def title(self) -> str:
        what = "fast path vs default request" if self.fast_path else self.pipeline
        group = f" / {self.parallel}" if self.parallel else ""
        return f"{MODEL_NAMES[self.model]} / {what} / {self.memory_label()}{group}"


def attention_backends(device: torch.device, requested: list[str] | None) -> tuple[str, list[str]]:
    """The backend ``auto`` resolves to, and the other backends to compare with it."""
    default = resolve_attention("auto", device)
    if requested is not None:
        candidates = requested
    elif device.type == "cuda":
        installed = [name for name, module in CUDA_ATTENTION if importlib.util.find_spec(module) is not None]
        candidates = [*installed, "_native_cudnn", "_native_flash", "native"]
    else:
        candidates = ["_native_math"]
    return default, [b for b in dict.fromkeys(candidates) if b != default]


def plan_phases(
    model: str, parts: list[str], extra_backends: list[str], cuda: bool, budget_gib: float, devices: int = 1
) -> list[Phase]:
    """One model's configurations for the requested ``parts``; the accelerations and the other attention backends
    share the ``full`` configuration's load (the backends are switched on the loaded transformers). ``devices``: how
    many GPUs the parallel rows may use (on CPU, two processes and no ring attention, which needs CUDA)."""
    phases = []
    if "baseline" in parts:
        phases.append(Phase(model, "diffusers", "full"))
    if {"accel", "attention", "memory"} & set(parts):
        accels = list(THRESHOLDS) if "accel" in parts else ["none"]
        extras = extra_backends if "attention" in parts else []
        phases.append(Phase(model, "ours", "full", accels, extra_backends=extras))
    if "memory" in parts:
        phases += [Phase(model, "ours", mode) for mode in OFFLOAD_MODES]
    if "budget" in parts and cuda:
        phases.append(Phase(model, "ours", BUDGET_MODE, budget_gib=budget_gib))
    if "fastpath" in parts:
        phases.append(Phase(model, "ours", "full", fast_path=True))
    if "parallel" in parts:
        limit = devices if cuda else 2
        phases += [
            Phase(model, "ours", "full", parallel=spec)
            for n, specs in PARALLEL_SPECS.items()
            if n <= limit
            for spec in specs
            if cuda or "ring" not in spec
        ]
    return phases
