"""``generate()``: one job from a validated request to the fal output, shared by the CLI, the sync route and the
queue worker.

Read top to bottom, it is the whole job: fetch the media, plan frames, size and temporal downsampling, classify the
inputs when the safety checker is on, expand the prompt when asked, turn the input into a control video when asked
(pose/depth annotators), build the VACE conditioning, run the diffusers ``WanVACEPipeline`` with the requested
sampler, seed, guidance and step cache (reporting every step and stopping at the next step once cancelled), classify
the generated frames (a flagged job ends before anything is encoded or published), interpolate, encode with ffmpeg
and publish the files. Where a file ends up (a path for the CLI, a served URL or a data URI for the server) is the
caller's ``publish`` function.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .conditioning import build_conditioning
from .context import JobContext
from .denoise import DenoiseRequest, run_denoise, to_uint8
from .encode import encode_video, write_frames_zip
from .errors import InputError, JobCancelled
from .fetch import check_ref_scheme, fetch_to_file, load_image
from .frame_plan import plan_frames, plan_temporal
from .hooks import JobHooks, Publish
from .limits import Limits
from .loading import ModelManager
from .loras import check_loras, fetch_loras
from .manifest import TASK_ANNOTATORS
from .prompt_expansion import expand_prompt
from .registry import Task
from .schema import File, VaceInput, VaceOutput, VideoFile
from .sizing import output_size
from .video_io import VideoInfo, probe_video, read_frames


def check_inputs(inp: VaceInput, task: Task, ctx: JobContext, models: ModelManager | None, *,
                 model: str) -> None:
    """Every check of a request that needs no download, in one place: the server runs it when a job is submitted
    (refused with a 422 before it is queued) and ``generate()`` runs it again first thing (the CLI's only check).

    Field ranges and types are the schema's; this adds the host's rules: input limits, media schemes, the
    annotator matching the task, the LoRAs fitting ``model`` (count, expert, installed names, a LoRA slot when
    compiled), and the safety checker being installed when asked for (running unchecked would return what the
    caller asked us to screen). ``models`` is None on a node without workers: what only the weights directory can
    tell (installed LoRA names, the safety checker, compilation) is then checked by the worker that runs the job.
    """
    limits = ctx.limits
    if len(inp.prompt) > limits.max_prompt_chars:
        raise InputError("prompt", f"the prompt is {len(inp.prompt)} characters, over the "
                         f"{limits.max_prompt_chars}-character limit", "prompt_too_long")
    if inp.negative_prompt and len(inp.negative_prompt) > limits.max_prompt_chars:
        raise InputError("negative_prompt", f"the negative prompt is over the {limits.max_prompt_chars}-character "
                         "limit", "prompt_too_long")
    if inp.ref_image_urls and len(inp.ref_image_urls) > limits.max_ref_images:
        raise InputError("ref_image_urls", f"{len(inp.ref_image_urls)} reference images, over the limit of "
                         f"{limits.max_ref_images}", "too_many_reference_images")
    for loc, ref in inp.media_refs():
        check_ref_scheme(ref, loc, ctx)
    if inp.preprocess and inp.annotator is not None and inp.annotator not in TASK_ANNOTATORS[task]:
        raise InputError(
            "annotator", f"{inp.annotator} is not a {task} annotator; use one of {sorted(TASK_ANNOTATORS[task])}"
        )
    check_loras(inp, model, ctx, models.weights_dir if models is not None else None)
    if models is None:
        return
    if inp.loras and models.compiles and not models.lora_slot_rank:
        raise InputError("loras", "this server compiles its transformers (--compile) without a LoRA slot "
                         "(--lora-max-rank 0), and a LoRA would recompile them", "not_supported")
    if inp.enable_safety_checker and not models.has_safety_checker():
        raise InputError(
            "enable_safety_checker", "the safety checker's weights are not installed on this server", "not_supported"
        )


def check_video_limits(info: VideoInfo, limits: Limits, field: str = "video_url") -> None:
    """Limits on the decoded input video, checked right after probing (before any frame is decoded to RGB)."""
    if info.width * info.height > limits.max_video_pixels:
        raise InputError(field, f"the video is {info.width}x{info.height}, over the {limits.max_video_pixels}-pixel "
                         "limit", "video_too_large")
    if info.num_frames > limits.max_video_frames:
        raise InputError(field, f"the video has {info.num_frames} frames, over the limit of "
                         f"{limits.max_video_frames}", "video_too_long")
    if info.duration > limits.max_video_seconds:
        raise InputError(field, f"the video lasts {info.duration:.1f} s, over the limit of "
                         f"{limits.max_video_seconds:g} s", "video_too_long")


def generate(
    inp: VaceInput,
    *,
    task: Task,
    model: str,
    models: ModelManager,
    workdir: Path,
    publish: Publish,
    hooks: JobHooks | None = None,
    ctx: JobContext = JobContext(),
) -> VaceOutput:
    """Run one ``task`` job on ``model`` under ``ctx``'s rules; files are written under ``workdir`` and handed to
    ``publish``."""
    hooks = hooks or JobHooks()
    started = time.perf_counter()
    check_inputs(inp, task, ctx, models, model=model)
    checker = models.safety_checker() if inp.enable_safety_checker else None
    seed = inp.seed if inp.seed is not None else secrets.randbelow(2**31)

    hooks.log("fetching inputs")
    video_path = fetch_to_file(inp.video_url, "video_url", workdir, ctx)
    info = probe_video(video_path)
    check_video_limits(info, ctx.limits)
    first = load_image(inp.first_frame_url, "first_frame_url", workdir, ctx) if inp.first_frame_url else None
    last = load_image(inp.last_frame_url, "last_frame_url", workdir, ctx) if inp.last_frame_url else None
    refs = [
        load_image(url, ("ref_image_urls", i), workdir, ctx) for i, url in enumerate(inp.ref_image_urls or [])
    ] or None
    loras = fetch_loras(inp, model, workdir, ctx, models.weights_dir)

    plan = plan_frames(
        info,
        num_frames=inp.num_frames,
        frames_per_second=inp.frames_per_second,
        match_input_num_frames=inp.match_input_num_frames,
        match_input_frames_per_second=inp.match_input_frames_per_second,
    )
    timing = plan_temporal(
        plan.num_frames,
        plan.fps,
        num_interpolated_frames=inp.num_interpolated_frames,
        temporal_downsample_factor=inp.temporal_downsample_factor,
        enable_auto_downsample=inp.enable_auto_downsample,
        auto_downsample_min_fps=inp.auto_downsample_min_fps,
    )
    width, height = output_size(inp.resolution, inp.aspect_ratio, info.width, info.height)
    hooks.log(
        f"input {info.width}x{info.height}, {info.num_frames} frames at {info.fps:g} fps; "
        f"output {timing.output_frames} frames at {timing.output_fps:g} fps, {width}x{height}, seed {seed}"
    )
    if plan.held_frames:
        hooks.log(f"the input ends early: its last frame is held for {plan.held_frames} frames")
    for note in timing.notes:
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
    control = read_frames(video_path, [plan.source_indices[j] for j in timing.control_indices])
    if checker is not None:
        score = checker.check_inputs(control, first, last, refs)
        hooks.log(f"safety check: the inputs passed (highest unsafe score {score:.2f})")
    prompt = inp.prompt
    if inp.enable_prompt_expansion:
        prompt = expand_prompt(models.prompt_expander(), inp.prompt, task, hooks.log)
    if inp.preprocess:
        preprocessor = models.preprocessor(task, inp.annotator)
        hooks.log(f"preprocessing {len(control)} frames into {task} control ({type(preprocessor).__name__})")
        control = list(preprocessor.process(control))
        hooks.control(control, timing.generate_fps)
    cond = build_conditioning(
        control,
        width,
        height,
        first_frame=first,
        last_frame=last,
        last_index=timing.generate_frames - 1 - timing.held_frames,
        reference_images=refs,
        transparency_mode=inp.transparency_mode,
    )
    del control
    if hooks.cancelled():
        raise JobCancelled("cancelled before denoising")

    hooks.log(f"loading {model}")
    for lora in loras:
        hooks.log(f"LoRA {lora.index}: {lora.sha256[:12]} at scale {lora.scale:g} on {' and '.join(lora.experts)}")
    hooks.log(f"denoising: {inp.num_inference_steps} steps, sampler {inp.sampler}, shift {inp.shift:g}"
              + (f", on {models.group.spec.world_size} devices ({models.group.spec})" if models.group else ""))
    request = DenoiseRequest(inp, cond, prompt, width, height, seed, model, loras)
    if models.group is not None:
        models.group.send(request)
    frames = to_uint8(run_denoise(models.get(model), request, hooks, models.group))
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
    hooks.log(f"{task} job done in {time.perf_counter() - started:.1f} s")
    return VaceOutput(video=video, prompt=prompt, seed=seed, frames_zip=frames_zip)
