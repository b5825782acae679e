"""``generate()``: one job from a validated request to the fal output, shared by the CLI, the sync route and the
queue worker.

Read top to bottom, it is the whole job: fetch the media; plan frames, size and temporal downsampling and build the
endpoint's source frames and masks (``pipelines.tasks``: pose/depth, inpainting, outpainting, reframe, or no video
at all); classify the inputs when the safety checker is on, expand the prompt when asked, turn the input into a
control video when asked (pose/depth annotators), build the VACE conditioning, run the diffusers ``WanVACEPipeline``
with the requested sampler, seed, guidance and step cache (reporting every step and stopping at the next step once
cancelled), classify the generated frames (a flagged job ends before anything is encoded or published),
interpolate, encode with ffmpeg and publish the files. Where a file ends up (a path for the CLI, a served URL or a
data URI for the server) is the caller's ``publish`` function.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from diffusers import WanVACEPipeline

from preprocessors import ANNOTATORS

from .conditioning import Conditioning
from .context import JobContext
from .encode import encode_video, write_frames_zip
from .errors import InputError, JobCancelled
from .fetch import check_ref_scheme, load_image
from .group import DenoiseRequest, send
from .loading import ModelManager
from .loras import check_loras, fetch_loras
from .parallel import ParallelGroup, cfg_parallel
from .prompt_expansion import expand_prompt
from .registry import EndpointTask
from .samplers import make_scheduler
from .schema import File, JobInput, VaceOutput, VideoFile
from .step_cache import THRESHOLDS, StepCacheController, step_cache
from .tasks import TaskJob, conditioning, frame_images, prepare, resolve

Publish = Callable[[Path, str], str]
"""Turns a finished local file (path, content type) into the URL the output reports."""


def _ignore(*_args: object) -> None:
    return None


@dataclass
class JobHooks:
    """How a job talks to its caller: log lines, step progress, the cancel flag and, with ``preprocess=true``, the
    control video it made (uint8 RGB frames and their frame rate), which the server keeps for the playground."""

    log: Callable[[str], None] = _ignore
    step: Callable[[int, int], None] = _ignore
    cancelled: Callable[[], bool] = field(default=lambda: False)
    control: Callable[[list[np.ndarray], float], None] = _ignore


def check_inputs(inp: JobInput, task: EndpointTask, ctx: JobContext, models: ModelManager | None, *,
                 model: str) -> TaskJob:
    """Every check of a request that needs no download, in one place: the server runs it when a job is submitted
    (refused with a 422 before it is queued) and ``generate()`` runs it again first thing (the CLI's only check).

    Field ranges and types are the schema's; this adds what the endpoint's task makes of the request
    (``pipelines.tasks.resolve``, whose answer it returns: a 422 for one that cannot run, e.g. outpainting with no
    side) and the host's rules: input limits, media schemes, the annotator matching the task, the LoRAs fitting
    ``model`` (count, expert, installed names, a LoRA slot when compiled), and the safety checker being installed
    when asked for (running unchecked would return what the caller asked us to screen). ``models`` is None on a node
    without workers: what only the weights directory can tell (installed LoRA names, the safety checker,
    compilation) is then checked by the worker that runs the job.
    """
    job = resolve(inp, task)
    limits = ctx.limits
    if len(inp.prompt) > limits.max_prompt_chars:
        raise InputError("prompt", f"the prompt is {len(inp.prompt)} characters, over the "
                         f"{limits.max_prompt_chars}-character limit", "prompt_too_long")
    if inp.negative_prompt and len(inp.negative_prompt) > limits.max_prompt_chars:
        raise InputError("negative_prompt", f"the negative prompt is over the {limits.max_prompt_chars}-character "
                         "limit", "prompt_too_long")
    refs = getattr(inp, "ref_image_urls", None)  # reframe has none
    if refs and len(refs) > limits.max_ref_images:
        raise InputError("ref_image_urls", f"{len(refs)} reference images, over the limit of "
                         f"{limits.max_ref_images}", "too_many_reference_images")
    for loc, ref in inp.media_refs():
        check_ref_scheme(ref, loc, ctx)
    control = job.control_task
    annotator = getattr(inp, "annotator", None) if getattr(inp, "preprocess", False) else None
    if control is not None and annotator is not None and annotator not in ANNOTATORS[control]:
        raise InputError(
            "annotator", f"{annotator} is not a {control} annotator; use one of {sorted(ANNOTATORS[control])}"
        )
    check_loras(inp, model, ctx, models.weights_dir if models is not None else None)
    if models is None:
        return job
    if inp.loras and models.compiles and not models.lora_slot_rank:
        raise InputError("loras", "this server compiles its transformers (--compile) without a LoRA slot "
                         "(--lora-max-rank 0), and a LoRA would recompile them", "not_supported")
    if inp.enable_safety_checker and not models.has_safety_checker():
        raise InputError(
            "enable_safety_checker", "the safety checker's weights are not installed on this server", "not_supported"
        )
    return job


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1] to uint8 frames."""
    return np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)


def denoise(
    pipe: WanVACEPipeline,
    cond: Conditioning,
    inp: JobInput,
    *,
    prompt: str,
    width: int,
    height: int,
    seed: int,
    hooks: JobHooks,
    cache: StepCacheController | None = None,
    group: ParallelGroup | None = None,
) -> np.ndarray | None:
    """Run the diffusers pipeline, with the step cache when given; returns float frames (N, H, W, 3) in [0, 1].

    In a job group (``group``) every rank runs this with the same arguments: rank 0 decides cancellation for all
    (broadcast after each step, so every rank stops at the same step), the guidance branches are split over the
    ``cfg`` ranks when guidance is on, and only rank 0 decodes (the others return None)."""
    total = inp.num_inference_steps
    experts = {"high-noise": pipe.transformer, "low-noise": pipe.transformer_2} if pipe.transformer_2 else {
        "transformer": pipe.transformer
    }
    decodes = group is None or group.rank == 0

    def cancelled() -> bool:
        if group is None:
            return hooks.cancelled()
        flag = torch.tensor([hooks.cancelled() if group.rank == 0 else False])
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def on_step_end(_pipe: WanVACEPipeline, i: int, _t: torch.Tensor, _kw: dict) -> dict:
        hooks.step(i + 1, total)
        if cache is not None:
            cache.step = i + 1
        if cancelled():
            raise JobCancelled(f"cancelled after step {i + 1}/{total}")
        return {}

    split_cfg = group is not None and group.spec.cfg == 2 and inp.guidance_scale > 1
    with contextlib.ExitStack() as stack:
        if cache is not None:
            stack.enter_context(step_cache(experts, cache))
        if split_cfg:
            stack.enter_context(cfg_parallel(list(experts.values()), group))
        result = pipe(
            prompt=prompt,
            negative_prompt=inp.negative_prompt,
            video=cond.video,
            mask=cond.mask,
            reference_images=cond.reference_images,
            height=height,
            width=width,
            num_frames=len(cond.video),
            num_inference_steps=total,
            guidance_scale=inp.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np" if decodes else "latent",
            callback_on_step_end=on_step_end,
        )
    if cache is not None:
        hooks.log(cache.summary())
    return result.frames[0] if decodes else None


def run_denoise(models: ModelManager, request: DenoiseRequest, hooks: JobHooks | None = None,
                group: ParallelGroup | None = None) -> np.ndarray | None:
    """One request's pipeline call on ``models``, with its scheduler, LoRAs and step cache (see ``denoise``)."""
    inp = request.inp
    pipe = models.get(request.model).pipeline(make_scheduler(inp.sampler, inp.shift), request.loras)
    threshold = THRESHOLDS[inp.acceleration]
    cache = StepCacheController(threshold, inp.num_inference_steps) if threshold is not None else None
    return denoise(pipe, request.cond, inp, prompt=request.prompt, width=request.width, height=request.height,
                   seed=request.seed, hooks=hooks or JobHooks(), cache=cache, group=group)


def generate(
    inp: JobInput,
    *,
    task: EndpointTask,
    model: str,
    models: ModelManager,
    workdir: Path,
    publish: Publish,
    hooks: JobHooks | None = None,
    ctx: JobContext = JobContext(),
) -> VaceOutput:
    """Run one job of the endpoint ``task`` (``""``: the base endpoint) on ``model`` under ``ctx``'s rules; files are
    written under ``workdir`` and handed to ``publish``."""
    hooks = hooks or JobHooks()
    started = time.perf_counter()
    job = check_inputs(inp, task, ctx, models, model=model)
    checker = models.safety_checker() if inp.enable_safety_checker else None
    seed = inp.seed if inp.seed is not None else secrets.randbelow(2**31)

    for note in job.notes:  # what the endpoint makes of the request, before any download can fail
        hooks.log(note)
    hooks.log("fetching inputs")
    first, last = frame_images(inp, workdir, ctx)
    refs = [
        load_image(url, ("ref_image_urls", i), workdir, ctx)
        for i, url in enumerate(getattr(inp, "ref_image_urls", None) or [])
    ] or None
    loras = fetch_loras(inp, model, workdir, ctx, models.weights_dir)
    source = prepare(inp, job, workdir, ctx, first or last)
    timing, width, height, info, plan = source.timing, source.width, source.height, source.info, source.plan
    hooks.log(
        (f"input {info.width}x{info.height}, {info.num_frames} frames at {info.fps:g} fps; " if info else
         "no input video; ") + f"output {timing.output_frames} frames at {timing.output_fps:g} fps, {width}x{height}, "
        f"seed {seed}"
    )
    if plan is not None and plan.held_frames:
        hooks.log(f"the input ends early: its last frame is held for {plan.held_frames} frames")
    for note in (*source.notes, *timing.notes):
        hooks.log(note)
    if timing.interpolates:
        hooks.log(
            f"generating {timing.generate_frames} frames (one control frame in {timing.downsample_factor + 1}) and "
            f"interpolating {timing.n_between} between each pair with {inp.interpolator_model}"
        )
        try:  # before minutes of denoising: FILM's v1.0.0 file makes midpoints only
            models.interpolator(inp.interpolator_model).check_between(timing.n_between)
        except ValueError as e:
            raise InputError("interpolator_model", str(e)) from e

    if models.group is not None:  # before any expensive stage: a sequence the group cannot split is refused
        try:
            models.group.spec.check_tokens(timing.generate_frames, len(refs or ()), (height // 16) * (width // 16))
        except ValueError as e:
            raise InputError("num_frames", str(e), "not_supported") from e
    control = source.control
    if checker is not None:
        score = checker.check_inputs(source.video_frames, first, last, refs)
        hooks.log(f"safety check: the inputs passed (highest unsafe score {score:.2f})")
    prompt = inp.prompt
    if inp.enable_prompt_expansion:
        prompt = expand_prompt(models.prompt_expander(), inp.prompt, job.recipe, hooks.log)
    if job.control_task is not None and getattr(inp, "preprocess", False):
        preprocessor = models.preprocessor(job.control_task, getattr(inp, "annotator", None))
        hooks.log(f"preprocessing {len(control)} frames into {job.control_task} control "
                  f"({type(preprocessor).__name__})")
        control = list(preprocessor.process(control))
        hooks.control(control, timing.generate_fps)
    cond = conditioning(inp, source, control, first, last, refs)
    del control, source
    if hooks.cancelled():
        raise JobCancelled("cancelled before denoising")

    hooks.log(f"loading {model}")
    for lora in loras:
        hooks.log(f"LoRA {lora.index}: {lora.sha256[:12]} at scale {lora.scale:g} on {' and '.join(lora.experts)}")
    hooks.log(f"denoising: {inp.num_inference_steps} steps, sampler {inp.sampler}, shift {inp.shift:g}"
              + (f", on {models.group.spec.world_size} devices ({models.group.spec})" if models.group else ""))
    request = DenoiseRequest(inp, cond, prompt, width, height, seed, model, loras)
    if models.group is not None:
        send(request)
    frames = to_uint8(run_denoise(models, request, hooks, models.group))
    if checker is not None:  # before anything is encoded or published: nothing flagged leaves the job
        score = checker.check_output(frames)
        hooks.log(f"safety check: the generated video passed (highest unsafe score {score:.2f})")

    output: Iterable[np.ndarray] = frames
    if timing.interpolates:
        interpolator = models.interpolator(inp.interpolator_model)
        output = itertools.islice(interpolator.interpolate(frames, timing.n_between), timing.output_frames)
    if inp.return_frames_zip:
        output = list(output)  # encoded and zipped: materialise once rather than interpolate twice

    hooks.log(f"encoding ({inp.video_quality} quality, {inp.video_write_mode} write mode)")
    encoded = encode_video(
        output, workdir / "video.mp4", timing.output_fps, quality=inp.video_quality, write_mode=inp.video_write_mode
    )
    video = VideoFile(
        url=publish(encoded.path, "video/mp4"),
        content_type="video/mp4",
        file_name=encoded.path.name,
        file_size=encoded.file_size,
        width=encoded.width,
        height=encoded.height,
        fps=encoded.fps,
        duration=encoded.duration,
        num_frames=encoded.num_frames,
    )
    frames_zip = None
    if inp.return_frames_zip:
        zip_path = write_frames_zip(output, workdir / "frames.zip")
        zip_size = zip_path.stat().st_size
        frames_zip = File(
            url=publish(zip_path, "application/zip"),
            content_type="application/zip",
            file_name=zip_path.name,
            file_size=zip_size,
        )
    hooks.log(f"{task or f'base ({job.recipe})'} job done in {time.perf_counter() - started:.1f} s")
    return VaceOutput(video=video, prompt=prompt, seed=seed, frames_zip=frames_zip)
