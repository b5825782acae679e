"""Denoising speed and memory of Wan VACE: a plain diffusers ``WanVACEPipeline.__call__`` against this server's
path (``ModelManager`` + ``denoise()``), in one run, written to ``docs/BENCHMARKS.md``.

Why: the server's claims (step cache, attention backends, memory modes that fit a 24 GB card) need numbers at the
real model size, measured the same way each time, next to what plain diffusers does with the same weights and inputs.
No model hub is reachable where this runs, so the models are the real architectures with random weights: the same
shapes and FLOPs as Wan2.1 VACE 14B / Wan2.2 VACE-Fun A14B, the UMT5-XXL text encoder and the Wan VAE.

What one run measures, for each model and each job (480p = 832x480 and 720p = 1280x720, 81 frames):

* ``diffusers``: ``WanVACEPipeline.from_pretrained(folder, vae=<fp32 VAE>, torch_dtype=bf16).to("cuda")`` (the
  diffusers documentation's recipe), default attention, ``UniPCMultistepScheduler(flow_prediction, flow_shift=5)``;
* ours at acceleration none / low / regular (the step cache of ``pipelines/step_cache.py``), memory mode ``full``
  and the attention backend ``auto`` resolves to;
* ours at acceleration none with every other attention backend available (switched on the loaded transformers
  with diffusers' ``set_attention_backend``, the call ``ModelManager`` makes when it loads);
* ours at acceleration none in memory modes ``fp8``, ``group_offload``, ``model_offload``, and ``group_offload``
  under a 24 GiB cap (``torch.cuda.set_per_process_memory_fraction``, set before loading).

Columns: seconds per denoising step (mean of steps 2..N; step 1 carries one-time work), end-to-end seconds of one
pipeline call (text encoding, VAE encoding of the control video, denoising, VAE decoding; models are loaded and
warmed up before), peak VRAM (``torch.cuda.max_memory_allocated``, reset before each job), peak process RSS
(psutil, sampled every 20 ms) and the transformer calls the step cache reused.

How "ours" is loaded: the random modules are built once and saved with ``save_pretrained`` into a temporary weights
directory in the layout of ``weights/LAYOUT.md``; every configuration then goes through the server's own
``ModelManager(weights_dir, runtime=RuntimeConfig(...)).get(key).pipeline(scheduler)``, so the loading code under test
is the code that serves real weights (``ModelManager`` has no public way to take ready modules). Disk: the A14B
folder's ``transformer`` and ``transformer_2`` are relative symlinks to the 14B's ``transformer`` folder, so both
experts load the same random weights as two separate modules (memory and compute of two experts, one 35 GB copy on
disk). Total on disk: ~35 GB transformer + ~11.4 GB text encoder + 0.5 GB VAE = ~47 GB.

Each configuration (model x pipeline x memory mode) runs in its own child process on CUDA, so memory is returned
between configurations, peaks are not inflated by an earlier one, and a crash (host out of memory, a broken kernel)
costs that configuration's rows only; on CPU they run in this process, where starting Python costs more than a tiny
job (``--isolate yes`` forces children there too). Rows are written to the markdown section after every
configuration, so an interrupted run still leaves what it measured.

Run on a GPU (real size; needs CUDA, ~100 GB of VRAM for the full matrix: the A14B in ``full`` mode holds ~81 GB of
weights; ~50 GB free disk for the weights (``--weights-dir``); ~128 GB host RAM, which the A14B's offload modes need;
and the project's Python dependencies, diffusers 0.42 among them)::

    python bench/gpu.py                     # the whole matrix: both models, 480p and 720p, 6 steps
    python bench/gpu.py --quick             # the 14B at 480p, 4 steps (~10 pipeline calls)
    python bench/gpu.py --models wan-vace-14b --jobs 480p --parts baseline accel --weights-dir /data/w --keep-weights
    python bench/gpu.py --append --models wan-22-vace-fun-a14b --weights-dir /data/w --keep-weights

The whole matrix is ~40 pipeline calls at real size plus ~12 model loads: about two hours on one H200 by the FLOP
count (~7 s per step at 480p, ~30 s at 720p with CFG), more in the offload modes; ``--quick`` about a quarter hour
including writing the weights. Where a command may run only minutes, run slices: keep the weights between calls with
``--weights-dir DIR --keep-weights`` (reused when DIR holds this script's weights) and merge the slices' rows into
one block with ``--append``.

Run on CPU (tiny models of ``weights/tiny/wan.py``; checks the script end to end; its numbers say nothing about GPU
speed). ``--quick`` (416x240, 9 frames, 3 steps, no warm-up, the A14B only for diffusers vs the accelerations) takes
about five minutes on two busy cores; without it (17 frames, 4 steps, the whole matrix) about three times that::

    .venv/bin/python bench/gpu.py --quick

The section between ``<!-- bench/gpu.py start -->`` and ``<!-- bench/gpu.py end -->`` holds one block per device
kind (cuda, cpu): a run replaces its own kind's block and leaves the other, and the rest of the file untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/gpu.py` without the project installed
    sys.path.insert(0, str(ROOT))

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanVACEPipeline,
    WanVACETransformer3DModel,
)
from transformers import UMT5Config, UMT5EncoderModel  # noqa: E402

from pipelines.conditioning import Conditioning, build_conditioning  # noqa: E402
from pipelines.generate import JobHooks, denoise  # noqa: E402
from pipelines.loading import LoadedModel, ModelManager, default_dtype  # noqa: E402
from pipelines.manifest import MODELS, SHARED_FOLDER  # noqa: E402
from pipelines.runtime import CUDA_ATTENTION, RuntimeConfig, resolve_attention  # noqa: E402
from pipelines.samplers import make_scheduler  # noqa: E402
from pipelines.schema import VaceInput  # noqa: E402
from pipelines.step_cache import THRESHOLDS, StepCacheController  # noqa: E402
from weights.shared_links import link_shared  # noqa: E402
from weights.tiny import wan as tiny  # noqa: E402
from weights.tiny.samples import pose_frames  # noqa: E402

try:
    import psutil
except ImportError:  # peak RSS then falls back to the process's lifetime maximum
    psutil = None

GIB = 1024**3
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
PARTS = ("baseline", "accel", "attention", "memory", "budget")
OFFLOAD_MODES = ("fp8", "group_offload", "model_offload")
BUDGET_MODE = "group_offload"  # what memory_mode auto picks with under 40 GiB free, i.e. on a 24 GB card
DOC = ROOT / "docs" / "BENCHMARKS.md"
START, END = "<!-- bench/gpu.py start -->", "<!-- bench/gpu.py end -->"
DATA_PREFIX, DATA_SUFFIX = "<!-- bench/gpu.py data: ", " -->"
MARKER_FILE = ".bench-gpu.json"
WEIGHTS_FORMAT = 1


# --- the models ------------------------------------------------------------------------------------------------


def real_transformer() -> WanVACETransformer3DModel:
    """Wan2.1 VACE 14B (also each expert of Wan2.2 VACE-Fun A14B): 17.3 B parameters."""
    return WanVACETransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=40,
        attention_head_dim=128,
        in_channels=16,
        out_channels=16,
        text_dim=4096,
        freq_dim=256,
        ffn_dim=13824,
        num_layers=40,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
        vace_layers=[0, 5, 10, 15, 20, 25, 30, 35],
        vace_in_channels=96,
    ).eval()


def real_text_encoder(_vocab_size: int) -> UMT5EncoderModel:
    """UMT5-XXL's encoder: 5.7 B parameters (the stand-in tokenizer's ids all fall inside its vocabulary)."""
    config = UMT5Config(
        vocab_size=256384,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def real_vae() -> AutoencoderKLWan:
    return AutoencoderKLWan().eval()


@dataclass(frozen=True)
class Architecture:
    name: str
    transformer: Callable[[], WanVACETransformer3DModel]
    text_encoder: Callable[[int], UMT5EncoderModel]
    vae: Callable[[], AutoencoderKLWan]
    dtype: torch.dtype  # what the transformer and text encoder are saved in (the VAE is always fp32)


ARCHITECTURES = {
    "real": Architecture("real", real_transformer, real_text_encoder, real_vae, torch.bfloat16),
    "tiny": Architecture("tiny", tiny.build_transformer, tiny.build_text_encoder, tiny.build_vae, torch.float32),
}


@contextlib.contextmanager
def building(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype`` (a 17 B model initialises in seconds on a GPU)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def weight_bytes(arch: Architecture) -> dict[str, int]:
    """Bytes each saved component takes, counted on the meta device (nothing is allocated)."""
    item = torch.tensor([], dtype=arch.dtype).element_size()
    with building("meta", torch.float32):
        sizes = {
            "transformer": _numel(arch.transformer()) * item,
            "text_encoder": _numel(arch.text_encoder(len(tiny.build_tokenizer()))) * item,
            "vae": _numel(arch.vae()) * 4,
        }
    return sizes


def write_weights(root: Path, arch: Architecture, device: torch.device, seed: int) -> None:
    """Random weights for both models in the layout of ``weights/LAYOUT.md``; the A14B's experts link to the 14B's
    transformer folder and every model folder links the shared text encoder, tokenizer and VAE."""
    shared = root / SHARED_FOLDER
    torch.manual_seed(seed)
    tokenizer = tiny.build_tokenizer()  # the UMT5 tokenizer cannot be fetched offline; prompts pad to 512 anyway
    tokenizer.save_pretrained(shared / "tokenizer")
    with building(device, arch.dtype):
        text_encoder = arch.text_encoder(len(tokenizer))
    text_encoder.save_pretrained(shared / "text_encoder")
    with building(device, torch.float32):
        vae = arch.vae()
    vae.save_pretrained(shared / "vae")
    with building(device, arch.dtype):
        transformer = arch.transformer()
    owner = MODELS[MODEL_KEYS[0]].folder
    for key in MODEL_KEYS:
        entry = MODELS[key]
        folder = root / entry.folder
        folder.mkdir(parents=True, exist_ok=True)
        pipe = WanVACEPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            scheduler=make_scheduler("unipc", SHIFT),
            transformer=transformer,
            transformer_2=transformer if entry.two_experts else None,
            boundary_ratio=entry.boundary_ratio,
        )
        pipe.save_config(folder)  # model_index.json, naming each component's class (and boundary_ratio)
        pipe.scheduler.save_pretrained(folder / "scheduler")
        experts = ("transformer", "transformer_2") if entry.two_experts else ("transformer",)
        for name in experts:
            if entry.folder == owner and name == "transformer":
                transformer.save_pretrained(folder / name)
            else:
                os.symlink(Path("..") / owner / "transformer", folder / name)
        link_shared(folder, root)
    (root / MARKER_FILE).write_text(json.dumps(weights_marker(arch, seed)))


def weights_marker(arch: Architecture, seed: int) -> dict[str, object]:
    return {"format": WEIGHTS_FORMAT, "size": arch.name, "seed": seed}


# --- measuring -------------------------------------------------------------------------------------------------


@dataclass
class Row:
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


class RssPeak:
    """Peak resident memory of this process over a block, sampled on a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        if psutil is not None:
            return psutil.Process().memory_info().rss
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB, lifetime maximum

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssPeak:
        self.peak = self._rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._rss())


class Meter:
    """Wall time, per-step times, peak VRAM and peak RSS of one pipeline call, synchronised with the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss = RssPeak()
        self.stamps: list[float] = []
        self.start = self.end = 0.0
        self.peak_gpu: int | None = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self) -> None:
        self.sync()
        self.stamps.append(time.perf_counter())

    def __enter__(self) -> Meter:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss.__enter__()
        self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(Exception):  # after a CUDA error, syncing may raise again
            self.sync()
        self.end = time.perf_counter()
        self.rss.__exit__()
        if self.device.type == "cuda":
            self.peak_gpu = torch.cuda.max_memory_allocated(self.device)

    @property
    def s_per_step(self) -> float | None:
        if len(self.stamps) < 2:
            return None
        return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def short_error(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of memory"
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"error: {type(exc).__name__}: {first[:140]}"


Runner = Callable[[Conditioning, VaceInput, int, int, Callable[[], None]], StepCacheController | None]


def job_input(steps: int, acceleration: str, num_frames: int) -> VaceInput:
    """The request fields ``denoise()`` reads; everything else keeps the fal schema's defaults (CFG 5, unipc)."""
    return VaceInput(
        prompt=PROMPT,
        video_url="synthetic:pose",  # not fetched: the control frames are made here
        num_frames=max(17, num_frames),
        num_inference_steps=steps,
        seed=SEED,
        acceleration=acceleration,
        shift=SHIFT,
    )


def pose_conditioning(width: int, height: int, frames: int) -> Conditioning:
    return build_conditioning(pose_frames(width, height, frames, 16.0), width, height)


def diffusers_runner(pipe: WanVACEPipeline) -> Runner:
    """Plain diffusers: one ``__call__`` with the scheduler the brief fixes and no hooks."""

    def run(cond: Conditioning, inp: VaceInput, width: int, height: int, step: Callable[[], None]) -> None:
        pipe.scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=inp.shift
        )

        def on_step_end(_pipe: WanVACEPipeline, _i: int, _t: torch.Tensor, _kwargs: dict) -> dict:
            step()
            return {}

        pipe(
            prompt=inp.prompt,
            negative_prompt=inp.negative_prompt,
            video=cond.video,
            mask=cond.mask,
            reference_images=cond.reference_images,
            height=height,
            width=width,
            num_frames=len(cond.video),
            num_inference_steps=inp.num_inference_steps,
            guidance_scale=inp.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="np",
            callback_on_step_end=on_step_end,
        )
        return None

    return run


def ours_runner(loaded: LoadedModel) -> Runner:
    """This server: the job's scheduler and step cache exactly as ``generate()`` makes them, then ``denoise()``."""

    def run(
        cond: Conditioning, inp: VaceInput, width: int, height: int, step: Callable[[], None]
    ) -> StepCacheController | None:
        pipe = loaded.pipeline(make_scheduler(inp.sampler, inp.shift))
        threshold = THRESHOLDS[inp.acceleration]
        cache = StepCacheController(threshold, inp.num_inference_steps) if threshold is not None else None
        hooks = JobHooks(step=lambda _i, _n: step())
        denoise(pipe, cond, inp, prompt=inp.prompt, width=width, height=height, seed=SEED, hooks=hooks, cache=cache)
        return cache

    return run


# --- one configuration (a "phase": model x pipeline x memory mode), in-process or in a child -------------------


@dataclass
class Settings:
    weights: str
    device: str
    size: str
    jobs: list[str]
    steps: int
    warmup: bool


@dataclass
class Phase:
    model: str
    pipeline: str  # "diffusers" | "ours"
    memory: str  # "full" | "fp8" | "group_offload" | "model_offload"
    accelerations: list[str] = field(default_factory=lambda: ["none"])
    attention: str = "auto"
    extra_backends: list[str] = field(default_factory=list)
    budget_gib: float | None = None

    def memory_label(self) -> str:
        return self.memory if self.budget_gib is None else f"{self.memory}, {self.budget_gib:g} GiB cap"

    def title(self) -> str:
        return f"{MODEL_NAMES[self.model]} / {self.pipeline} / {self.memory_label()}"


Emit = Callable[[dict[str, object]], None]


def quiet_libraries() -> None:
    # diffusers 0.42 prefers `dtype=` but still takes `torch_dtype=`, which pipelines/loading.py uses too.
    warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def device_record(device: torch.device) -> dict[str, object]:
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
) -> None:
    """Warm up once, then measure every job at every acceleration level for one loaded configuration."""
    device = torch.device(settings.device)
    rows = []
    for job in settings.jobs:
        width, height, frames = JOBS[job]
        for accel in accelerations:
            pipeline = "diffusers" if phase.pipeline == "diffusers" else f"ours, acceleration {accel}"
            label = f"{job} {width}x{height}x{frames}, {settings.steps} steps"
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
                emit({"type": "row", **asdict(row)})
            release(device)
            return
    for row, job, accel in rows:
        width, height, frames = JOBS[job]
        inp = job_input(settings.steps, accel, frames)
        meter = Meter(device)
        cache = None
        try:
            with meter:
                cache = runner(conds[job], inp, width, height, meter.step)
        except Exception as exc:  # noqa: BLE001
            row.note = short_error(exc)
        else:
            row.s_per_step = meter.s_per_step
            row.e2e_s = meter.end - meter.start
            if cache is not None:
                row.reused = f"{sum(len(v) for v in cache.skipped.values())}/{cache.calls}"
        row.peak_gpu_gib = None if meter.peak_gpu is None else meter.peak_gpu / GIB
        row.peak_rss_gib = meter.rss.peak / GIB
        emit({"type": "row", **asdict(row)})
        release(device)


def run_phase(settings: Settings, phase: Phase, emit: Emit) -> None:
    """Load one configuration and measure its rows; every failure becomes a row's note."""
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
        emit({"type": "row", **asdict(row)})
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
                    width, height, frames = JOBS[job]
                    label = f"{job} {width}x{height}x{frames}, {settings.steps} steps"
                    row = Row(MODEL_NAMES[phase.model], label, "ours, acceleration none", backend, phase.memory_label())
                    row.note = f"unavailable, {short_error(exc)}"
                    emit({"type": "row", **asdict(row)})
                continue
            bench_config(settings, phase, runner, backend, ["none"], conds, emit)
        # set_attention_backend also sets diffusers' process-wide default: put back what the manager chose, so a
        # later in-process configuration (CPU runs) sees what it would have seen alone.
        for transformer in experts:
            transformer.set_attention_backend(manager.attention)


def run_build(settings: Settings, arch_name: str, seed: int, emit: Emit) -> None:
    quiet_libraries()
    device = torch.device(settings.device)
    emit(device_record(device))
    started = time.perf_counter()
    write_weights(Path(settings.weights), ARCHITECTURES[arch_name], device, seed)
    seconds = time.perf_counter() - started
    emit({"type": "load", "what": f"building and saving the {arch_name} random weights", "seconds": seconds})


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    settings = Settings(**spec["settings"])
    out = Path(spec["out"])

    def emit(record: dict[str, object]) -> None:
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if record["type"] == "row":
            print("  " + " | ".join(row_cells(record)), flush=True)

    if spec["kind"] == "build":
        run_build(settings, settings.size, spec["seed"], emit)
    else:
        run_phase(settings, Phase(**spec["phase"]), emit)


def execute(
    kind: str, settings: Settings, phase: Phase | None, seed: int, isolate: bool, scratch: Path
) -> tuple[list[dict], str]:
    """Run one build or phase (in a child process when ``isolate``); returns its records and a failure note."""
    handle, name = tempfile.mkstemp(prefix=f"{kind}-", suffix=".jsonl", dir=scratch)
    os.close(handle)
    out = Path(name)
    spec = {
        "kind": kind,
        "settings": asdict(settings),
        "phase": asdict(phase) if phase else None,
        "seed": seed,
        "out": str(out),
    }
    failure = ""
    if isolate:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
        code = subprocess.run(command, env=env).returncode
        if code != 0:
            killed = " (killed: host out of memory?)" if code in (-9, 137) else ""
            failure = f"process ended with code {code}{killed}"
    else:
        try:
            child_main(json.dumps(spec))
        except Exception as exc:  # noqa: BLE001
            failure = short_error(exc)
        finally:
            release(torch.device(settings.device))
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    out.unlink()
    return records, failure


# --- the report ------------------------------------------------------------------------------------------------

COLUMNS = (
    "model", "job", "pipeline", "attention", "memory",
    "s/step", "end-to-end s", "peak GPU GiB", "peak RSS GiB", "cache reused", "note",
)


def _num(value: object, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row_cells(row: dict) -> list[str]:
    return [
        str(row["model"]), str(row["job"]), str(row["pipeline"]), str(row["attention"]), str(row["memory"]),
        _num(row["s_per_step"], 3), _num(row["e2e_s"]), _num(row["peak_gpu_gib"]), _num(row["peak_rss_gib"]),
        str(row["reused"]), str(row["note"]),
    ]


def text_table(rows: list[dict]) -> str:
    table = [list(COLUMNS)] + [row_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table)


COMMON_NOTES = (
    "The step cache's decisions depend on how the transformer's input changes from step to step, which random "
    "weights do not reproduce: the acceleration low/regular rows show the mechanism working and what a reused call "
    "saves, not the speed-up real weights give (measure that with real weights).",
    "Wan2.2 VACE-Fun A14B: both experts load the same random transformer files (the A14B folder links to the 14B's; "
    "one copy on disk) as two separate modules, so memory and compute are those of two experts; boundary_ratio 0.875.",
    "The tokenizer is a small word-level stand-in (UMT5's cannot be fetched offline); prompts are padded to 512 "
    "tokens as with the real one, so text encoding costs the same. CFG 5 (two transformer calls per step), UniPC, "
    "shift 5, seed 42, a synthetic pose control video, no mask (pure control).",
    "s/step: mean of steps 2..N (step 1 carries one-time work). End-to-end: one pipeline call (text encoding, VAE "
    "encoding of the control video, denoising, VAE decoding) with the models already loaded; media fetching and MP4 "
    "encoding are not included.",
    "diffusers: `WanVACEPipeline.from_pretrained(folder, vae=<fp32 AutoencoderKLWan>, torch_dtype=...)` moved to the "
    "device, default attention, `UniPCMultistepScheduler(prediction_type='flow_prediction', use_flow_sigmas=True, "
    "flow_shift=5)`. Ours: `ModelManager(weights, runtime=RuntimeConfig(memory_mode, attention)).get(model)"
    ".pipeline(scheduler)` and `denoise()` from `pipelines/generate.py`; the other attention backends are switched "
    "on the loaded transformers with `set_attention_backend`.",
    "Peak GPU: `torch.cuda.max_memory_allocated` (tensors; the allocator's cache and the CUDA context come on top). "
    "Peak RSS: the process's resident memory sampled every 20 ms (pinned host copies of offloaded weights count).",
)


def notes(data: dict) -> list[str]:
    """What only this block's run needs said; ``COMMON_NOTES`` hold for every block."""
    if data["size"] == "real":
        out = [
            "Random weights in the real architectures (Wan VACE 14B transformer 17.3 B parameters, UMT5-XXL encoder "
            "5.7 B, Wan VAE): shapes and FLOPs are those of the real models, so time and memory are representative; "
            "the videos are noise."
        ]
    else:
        out = [
            "Tiny models (`weights/tiny/wan.py`): this block shows that the script runs end to end; its numbers say "
            "nothing about GPU speed or memory."
        ]
    out.append(
        "Each configuration was warmed up with one 2-step 320x192x5 call." if data.get("warmup", True)
        else "No warm-up call: the first row of each configuration includes first-call costs."
    )
    if data["kind"] == "cuda":
        out.append(
            "GiB cap: `torch.cuda.set_per_process_memory_fraction(cap / total)` before loading, with memory mode "
            f"{BUDGET_MODE} (what `auto` picks with under 40 GiB free); the CUDA context (~0.5 GiB) is outside the "
            "cap, so a real 24 GB card has slightly less."
        )
    else:
        out.append("The 24 GiB-cap rows need CUDA (`torch.cuda.set_per_process_memory_fraction`) and are skipped here.")
    return out


def render_block(data: dict) -> str:
    title = "GPU, real-size models" if data["kind"] == "cuda" else "CPU, tiny models (smoke run)"
    lines = [f"### {title}", ""]
    lines += [f"Command (from the repository root): `{cmd}`" for cmd in data["commands"]]
    lines += [
        "",
        f"Device: {data['device']}. torch {data['versions']['torch']}, diffusers {data['versions']['diffusers']}, "
        f"transformers {data['versions']['transformers']}. {data['date']}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row_cells(r)) + " |" for r in data["rows"]]
    if data["loads"]:
        lines += ["", "Loading: " + "; ".join(f"{ld['what']} {ld['seconds']:.1f} s" for ld in data["loads"]) + "."]
    lines += [""] + [f"- {n}" for n in notes(data)]
    payload = json.dumps(data, separators=(",", ":")).replace("--", "-\\u002d")  # no "--" inside an HTML comment
    lines += ["", DATA_PREFIX + payload + DATA_SUFFIX]
    return "\n".join(lines)


def read_blocks(text: str) -> list[dict]:
    if START not in text or END not in text:
        return []
    section = text[text.index(START) : text.index(END)]
    blocks = []
    for line in section.splitlines():
        if line.startswith(DATA_PREFIX) and line.endswith(DATA_SUFFIX):
            with contextlib.suppress(json.JSONDecodeError):
                blocks.append(json.loads(line[len(DATA_PREFIX) : -len(DATA_SUFFIX)]))
    return blocks


def write_doc(path: Path, data: dict) -> None:
    """Replace this device kind's block inside the marked section; everything else in the file stays."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    blocks = [b for b in read_blocks(text) if b.get("kind") != data["kind"]] + [data]
    blocks.sort(key=lambda b: b["kind"] != "cuda")  # GPU first
    section = "\n".join(
        [
            START,
            "## Denoising: plain diffusers vs this server (`bench/gpu.py`)",
            "",
            "Written by `bench/gpu.py` (its docstring says what is measured and how); do not edit by hand.",
            "",
            *[f"- {n}" for n in COMMON_NOTES],
            "",
            "\n\n".join(render_block(b) for b in blocks),
            END,
        ]
    )
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- the run ---------------------------------------------------------------------------------------------------


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


def plan_phases(model: str, parts: list[str], extra_backends: list[str], cuda: bool, budget_gib: float) -> list[Phase]:
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
    return phases


def display_command() -> str:
    exe = Path(sys.executable)
    try:
        python = str(exe.relative_to(ROOT))
    except ValueError:
        python = exe.name
    return shlex.join([python, *sys.argv])


def prepare_weights(
    args: argparse.Namespace, settings: Settings, arch: Architecture, isolate: bool, scratch: Path
) -> tuple[list[dict], bool]:
    """Reuse ``--weights-dir`` when it holds this script's weights, else build them there (after a disk check).
    Returns the build's records and whether this run created the folder's contents (only those are deleted)."""
    root = Path(settings.weights)
    marker = root / MARKER_FILE
    if marker.is_file() and json.loads(marker.read_text()) == weights_marker(arch, args.seed):
        print(f"reusing the random weights in {root}")
        return [], False
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty and holds no weights of this script: give an empty or new --weights-dir")
    sizes = weight_bytes(arch)
    need = sum(sizes.values())
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    print(
        f"writing {arch.name} random weights to {root}: transformer {sizes['transformer'] / GIB:.1f} GiB (shared by "
        f"both models' folders), text encoder {sizes['text_encoder'] / GIB:.1f} GiB, VAE {sizes['vae'] / GIB:.2f} GiB; "
        f"{free / GIB:.0f} GiB free"
    )
    if free < need * 1.03 + GIB:
        raise SystemExit(f"not enough disk in {root}: need ~{need / GIB:.0f} GiB, {free / GIB:.0f} GiB free")
    records, failure = execute("build", settings, None, args.seed, isolate, scratch)
    if failure:
        shutil.rmtree(root, ignore_errors=True)
        raise SystemExit(f"building the weights failed: {failure}")
    return records, True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Denoising speed and memory of Wan VACE: plain diffusers vs this server, in one run "
        "(real-size random-weight models on CUDA, tiny ones on CPU; the module docstring has the details)."
    )
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="smaller matrix: GPU the 14B at 480p, 4 steps; CPU 9 frames, 3 steps, no warm-up, the A14B only "
        "diffusers and the accelerations",
    )
    add("--size", choices=sorted(ARCHITECTURES), help="model size (default: real on CUDA, tiny on CPU)")
    add("--device", help="torch device (default: cuda if available, else cpu)")
    add("--models", nargs="+", choices=MODEL_KEYS, help="default: both")
    add("--jobs", nargs="+", choices=list(JOBS), help="default: 480p 720p (real); 240p, --quick 240p-short (tiny)")
    add("--steps", type=int, help="denoising steps per job (default: 6 real, 4 tiny; --quick 4 / 3)")
    add("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which comparisons (default: all)")
    add("--backends", nargs="*", help="attention backends to compare with auto's choice (default: the available)")
    add("--budget-gib", type=float, default=24.0, help="the memory cap of the budget rows")
    add("--weights-dir", type=Path, help="where the random weights go (default: a temporary folder)")
    add("--keep-weights", action="store_true", help="keep --weights-dir for a later run")
    add("--doc", type=Path, default=DOC, help="markdown file to write the section into")
    add("--no-doc", action="store_true", help="print only")
    add("--append", action="store_true", help="merge rows into this device kind's block instead of replacing it")
    add("--json", type=Path, help="also write the block's data (rows, loads) as JSON here")
    add("--isolate", choices=("auto", "yes", "no"), default="auto", help="a process per configuration (auto: CUDA)")
    add("--no-warmup", action="store_true")
    add("--seed", type=int, default=0, help="seed of the random weights")
    add("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.keep_weights and args.weights_dir is None:
        raise SystemExit("--keep-weights needs --weights-dir")
    if args.child:
        child_main(args.child)
        return
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    size = args.size or ("real" if cuda else "tiny")
    if size == "real" and not cuda:
        sys.exit("real-size models need a CUDA device; on CPU run the tiny matrix (the default)")
    real = size == "real"
    if real:
        jobs = args.jobs or (["480p"] if args.quick else ["480p", "720p"])
    else:
        jobs = args.jobs or (["240p-short"] if args.quick else ["240p"])
    steps = args.steps or ((4 if args.quick else 6) if real else (3 if args.quick else 4))
    models = args.models or (list(MODEL_KEYS[:1]) if args.quick and real else list(MODEL_KEYS))
    isolate = cuda if args.isolate == "auto" else args.isolate == "yes"
    default_backend, extras = attention_backends(device, args.backends)
    quiet_libraries()

    scratch = Path(tempfile.mkdtemp(prefix="vace-bench-"))
    weights_dir = args.weights_dir.resolve() if args.weights_dir else scratch / "weights"
    warmup = not args.no_warmup and not (args.quick and not real)  # on CPU a warm-up call costs more than it fixes
    settings = Settings(str(weights_dir), str(device), size, jobs, steps, warmup)
    phases = []
    for i, model in enumerate(models):
        # A quick CPU run compares the second model's two experts only through diffusers vs the step cache.
        parts = [p for p in args.parts if p in ("baseline", "accel")] if args.quick and not real and i else args.parts
        phases += plan_phases(model, parts, extras, cuda, args.budget_gib)
    print(
        f"bench/gpu.py: {size} models on {device}; models {', '.join(models)}; jobs {', '.join(jobs)}; {steps} steps; "
        f"attention auto={default_backend}, also {', '.join(extras) or 'none'}; {len(phases)} configurations"
        + (" (one process each)" if isolate else "")
    )

    existing = read_blocks(args.doc.read_text()) if args.doc.exists() else []
    previous = [b for b in existing if b.get("kind") == device.type]
    data: dict = {
        "kind": device.type,
        "size": size,
        "warmup": warmup,
        "device": str(device),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "commands": [display_command()],
        "rows": [],
        "loads": [],
    }
    if args.append and previous:
        data["commands"] = [*previous[0]["commands"], *data["commands"]]
        data["rows"], data["loads"] = previous[0]["rows"], previous[0]["loads"]

    def absorb(records: list[dict]) -> None:
        for record in records:
            if record["type"] == "device":
                data["device"] = record["name"]
            elif record["type"] == "load":
                data["loads"].append({"what": record["what"], "seconds": record["seconds"]})
            elif record["type"] == "row":
                row = {k: v for k, v in record.items() if k != "type"}
                key = Row(**row).key()
                data["rows"] = [r for r in data["rows"] if Row(**r).key() != key] + [row]

    def save() -> None:
        if not args.no_doc:
            write_doc(args.doc, data)
        if args.json:
            args.json.write_text(json.dumps(data, indent=1))

    started = time.perf_counter()
    built = False
    try:
        records, built = prepare_weights(args, settings, ARCHITECTURES[size], isolate, scratch)
        absorb(records)
        for phase in phases:
            print(f"- {phase.title()}", flush=True)
            records, failure = execute("phase", settings, phase, args.seed, isolate, scratch)
            absorb(records)
            if failure:
                row = Row(MODEL_NAMES[phase.model], "-", phase.pipeline, phase.attention, phase.memory_label())
                row.note = failure
                absorb([{"type": "row", **asdict(row)}])
            save()
    finally:
        if args.keep_weights:
            print(f"weights kept in {weights_dir} (reuse them: --weights-dir {weights_dir} --keep-weights)")
        elif built and args.weights_dir is not None:
            shutil.rmtree(weights_dir, ignore_errors=True)  # only what this run wrote
        shutil.rmtree(scratch, ignore_errors=True)  # the default weights folder lives here

    print()
    print(text_table(data["rows"]))
    print()
    for note in (*notes(data), *COMMON_NOTES):
        print(f"* {note}")
    where = "" if args.no_doc else f"; written to {args.doc}"
    print(f"\n{len(phases)} configurations in {time.perf_counter() - started:.0f} s{where}")


if __name__ == "__main__":
    main()
