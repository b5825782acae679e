"""One configuration (a ``Phase``: model x pipeline x memory mode) loaded once and measured on every job, and the
random weights built; each emits records (device, load times, rows) for the parent to collect.

Every failure (a load, a warm-up, a call, an attention backend this machine lacks) becomes a row's note instead of
an exception, so one configuration failing costs its own rows only and the matrix goes on."""

from __future__ import annotations

import contextlib
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKLWan, WanVACEPipeline

from bench.lora_fast_path import RECIPE
from pipelines.conditioning import Conditioning
from pipelines.loading import LoadedModel, ModelManager, default_dtype
from pipelines.lora_cache import sha256_file
from pipelines.loras import JobLora
from pipelines.manifest import MODELS
from pipelines.runtime import GIB, RuntimeConfig
from pipelines.samplers import make_scheduler
from pipelines.schema import VaceInput
from weights.tiny.loras import lora_weights, write_lora

from .meter import Meter, release
from .plan import JOBS, MODEL_NAMES, PROMPT, SHIFT, WARMUP, Phase, Settings
from .runners import Runner, diffusers_runner, job_input, ours_runner, pose_conditioning
from .synthetic_weights import ARCHITECTURES, write_weights

Emit = Callable[[dict[str, object]], None]
DISTILL_RANK = 64  # the rank of lightx2v's Wan2.1 distillation LoRA and of the Wan2.2 Lightning pair


@dataclass
class Row:
    """One line of the results table; ``key()`` names what a later measurement of the same thing replaces."""

    model: str
    job: str
    pipeline: str
    attention: str
    memory: str
    s_per_step: float | None = None
    e2e_s: float | None = None
    peak_gpu_gib: float | None = None
    peak_rss_gib: float | None = None
    reused: str = "-"
    note: str = ""

    def key(self) -> tuple[str, ...]:
        return (self.model, self.job, self.pipeline, self.attention, self.memory)

    def record(self) -> dict[str, object]:
        return {"type": "row", **asdict(self)}


def job_label(job: str, steps: int) -> str:
    width, height, frames = JOBS[job]
    return f"{job} {width}x{height}x{frames}, {steps} steps"


def short_error(exc: BaseException) -> str:
    """A failure as a table cell: the exception's first line, cut short."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of memory"
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"error: {type(exc).__name__}: {first[:140]}"


def quiet_libraries() -> None:
    # diffusers 0.42 prefers `dtype=` but still takes `torch_dtype=`, which pipelines/loading.py uses too.
    warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def device_record(device: torch.device) -> dict[str, object]:
    """The device as the report names it: the GPU and its memory, or the CPU model and torch's thread count."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "device", "name": f"{props.name}, {props.total_memory / GIB:.0f} GiB"}
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"type": "device", "name": f"CPU ({model}), {torch.get_num_threads()} threads"}


def bench_config(
    settings: Settings,
    phase: Phase,
    runner: Runner,
    attention: str,
    accelerations: list[str],
    conds: dict[str, Conditioning],
    emit: Emit,
    note_of: Callable[[], str] | None = None,
) -> None:
    """Warm up once, then measure every job at every acceleration level for one loaded configuration; ``note_of``
    says what a successful call adds to its row's note (a group's per-GPU peaks)."""
    device = torch.device(settings.device)
    rows = []
    for job in settings.jobs:
        for accel in accelerations:
            pipeline = "diffusers" if phase.pipeline == "diffusers" else f"ours, acceleration {accel}"
            if phase.parallel:
                pipeline += f", {phase.parallel}"
            label = job_label(job, settings.steps)
            row = Row(MODEL_NAMES[phase.model], label, pipeline, attention, phase.memory_label())
            rows.append((row, job, accel))
    if settings.warmup:
        width, height, frames, steps = WARMUP
        try:
            warm = pose_conditioning(width, height, frames)
            runner(warm, job_input(steps, "none", frames), width, height, lambda: None)
        except Exception as exc:  # noqa: BLE001 - one configuration failing must not stop the matrix
            for row, _job, _accel in rows:
                row.note = f"warm-up failed, {short_error(exc)}"
                emit(row.record())
            release(device)
            return
    for row, job, accel in rows:
        measure(row, runner, conds[job], job_input(settings.steps, accel, JOBS[job][2]), job, device, emit, note_of)


def measure(
    row: Row,
    runner: Runner,
    cond: Conditioning,
    inp: VaceInput,
    job: str,
    device: torch.device,
    emit: Emit,
    note_of: Callable[[], str] | None = None,
) -> None:
    """One pipeline call measured into ``row`` (a failure becomes its note; ``note_of`` adds to a success's),
    then emitted."""
    width, height, _frames = JOBS[job]
    meter = Meter(device)
    cache = None
    try:
        with meter:
            cache = runner(cond, inp, width, height, meter.step)
    except Exception as exc:  # noqa: BLE001
        row.note = short_error(exc)
    else:
        row.s_per_step = meter.s_per_step
        row.e2e_s = meter.end - meter.start
        if cache is not None:
            row.reused = f"{sum(len(v) for v in cache.skipped.values())}/{cache.calls}"
        if note_of is not None:
            row.note = note_of()
    row.peak_gpu_gib = None if meter.peak_gpu is None else meter.peak_gpu / GIB
    row.peak_rss_gib = meter.rss.peak / GIB
    emit(row.record())
    release(device)


def distill_stand_ins(loaded: LoadedModel, folder: Path) -> list[JobLora]:
    """Random LoRAs in the place of the recipe's distillation LoRAs: rank 64 on every linear layer of the blocks,
    like lightx2v's (one on the 14B) and the Lightning pair (one per A14B expert). Their values do not matter for
    speed; small ones keep the activations in range."""
    experts = [("transformer",), ("transformer_2",)] if loaded.transformer_2 is not None else [("transformer",)]
    loras = []
    for index, expert in enumerate(experts):
        path = write_lora(
            folder / f"distill-{index}.safetensors",
            lora_weights(getattr(loaded.pipe, expert[0]), seed=index, rank=DISTILL_RANK, std=0.01),
            rank=DISTILL_RANK,
        )
        loras.append(JobLora(index, path, sha256_file(path), 1.0, expert))
    return loras


def bench_fast_path(
    settings: Settings, phase: Phase, loaded: LoadedModel, attention: str, conds: dict[str, Conditioning], emit: Emit
) -> None:
    """Seconds per job of the README's fast path (4 steps, guidance 1, unipc, shift 5, a distillation LoRA; here a
    random stand-in of the same rank and layers) against the default request (30 steps, guidance 5, the default
    step cache), each job whole with the models loaded. The LoRAs are put on first and stay on for the recipe's rows,
    as on a server that serves the recipe job after job; the default rows then run with them taken off."""
    device = torch.device(settings.device)
    default = VaceInput(prompt=PROMPT, video_url="-")
    requests = [
        ("fast path: 4 steps, guidance 1, distill LoRA", True, RECIPE),
        (
            f"default request: {default.num_inference_steps} steps, guidance {default.guidance_scale:g}, "
            f"acceleration {default.acceleration}",
            False,
            {},
        ),
    ]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        loras = distill_stand_ins(loaded, Path(folder))
        loaded.pipeline(make_scheduler("unipc", SHIFT), loras)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        emit(
            {
                "type": "load",
                "what": f"{MODEL_NAMES[phase.model]}: making and loading the rank-{DISTILL_RANK} LoRA stand-in(s)",
                "seconds": time.perf_counter() - started,
            }
        )
        runs = []
        for label, with_loras, fields in requests:
            for job in settings.jobs:
                inp = job_input(default.num_inference_steps, default.acceleration, JOBS[job][2], fields)
                row = Row(
                    MODEL_NAMES[phase.model],
                    job_label(job, inp.num_inference_steps),
                    f"ours, {label}",
                    attention,
                    phase.memory_label(),
                )
                runs.append((row, ours_runner(loaded, loras if with_loras else ()), inp, job))
        if settings.warmup:
            width, height, frames, steps = WARMUP
            warm = job_input(steps, "none", frames, RECIPE | {"num_inference_steps": steps})
            try:
                ours_runner(loaded, loras)(pose_conditioning(width, height, frames), warm, width, height, lambda: None)
            except Exception as exc:  # noqa: BLE001 - one configuration failing must not stop the matrix
                for row, _runner, _inp, _job in runs:
                    row.note = f"warm-up failed, {short_error(exc)}"
                    emit(row.record())
                return
        for row, runner, inp, job in runs:
            measure(row, runner, conds[job], inp, job, device, emit)


def run_phase(settings: Settings, phase: Phase, emit: Emit) -> None:
    """Load one configuration and measure its rows; every failure becomes a row's note. A configuration on a job
    group (``phase.parallel``) is ``multi.run_group_phase``'s."""
    quiet_libraries()
    device = torch.device(settings.device)
    emit(device_record(device))
    if phase.budget_gib is not None:  # before anything is allocated, as on a card of that size
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, phase.budget_gib * GIB / total), device)
    conds = {job: pose_conditioning(*JOBS[job]) for job in settings.jobs}
    folder = Path(settings.weights) / MODELS[phase.model].folder
    manager: ModelManager | None = None
    pipe: WanVACEPipeline | None = None
    started = time.perf_counter()
    try:
        if phase.pipeline == "diffusers":
            vae = AutoencoderKLWan.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
            pipe = WanVACEPipeline.from_pretrained(folder, vae=vae, torch_dtype=default_dtype(device)).to(device)
            pipe.set_progress_bar_config(disable=True)
            runner, attention = diffusers_runner(pipe), "native (diffusers default)"
        else:
            runtime = RuntimeConfig(memory_mode=phase.memory, attention=phase.attention)
            manager = ModelManager(Path(settings.weights), device=device, max_models=1, runtime=runtime)
            loaded = manager.get(phase.model)
            runner, attention = ours_runner(loaded), manager.attention
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        emit({"type": "load", "what": phase.title(), "seconds": time.perf_counter() - started})
    except Exception as exc:  # noqa: BLE001
        row = Row(MODEL_NAMES[phase.model], "-", phase.pipeline, phase.attention, phase.memory_label())
        row.note = f"load failed, {short_error(exc)}"
        emit(row.record())
        return
    if phase.fast_path:
        bench_fast_path(settings, phase, loaded, attention, conds, emit)
        return
    bench_config(settings, phase, runner, attention, phase.accelerations, conds, emit)
    if manager is not None and phase.extra_backends:
        experts = [t for t in (loaded.transformer, loaded.transformer_2) if t is not None]
        for backend in phase.extra_backends:
            try:
                for transformer in experts:
                    transformer.set_attention_backend(backend)
            except Exception as exc:  # noqa: BLE001 - not usable here (package, GPU generation)
                for job in settings.jobs:
                    label = job_label(job, settings.steps)
                    row = Row(MODEL_NAMES[phase.model], label, "ours, acceleration none", backend, phase.memory_label())
                    row.note = f"unavailable, {short_error(exc)}"
                    emit(row.record())
                continue
            bench_config(settings, phase, runner, backend, ["none"], conds, emit)
        # set_attention_backend also sets diffusers' process-wide default: put back what the manager chose, so a
        # later in-process configuration (CPU runs) sees what it would have seen alone.
        for transformer in experts:
            transformer.set_attention_backend(manager.attention)


def run_build(settings: Settings, seed: int, emit: Emit) -> None:
    """Write the random weights of ``settings.size`` into ``settings.weights`` and report how long it took."""
    quiet_libraries()
    device = torch.device(settings.device)
    emit(device_record(device))
    started = time.perf_counter()
    write_weights(Path(settings.weights), ARCHITECTURES[settings.size], device, seed)
    seconds = time.perf_counter() - started
    emit({"type": "load", "what": f"building and saving the {settings.size} random weights", "seconds": seconds})
