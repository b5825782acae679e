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

from .checks import check_inputs, check_video_limits
from .conditioning import build_conditioning
from .context import JobContext
from .denoise import DenoiseRequest, run_denoise, to_uint8
from .encode import encode_video, write_frames_zip
from .errors import InputError, JobCancelled
from .fetch import fetch_to_file, load_image
from .frame_plan import plan_frames, plan_temporal
from .hooks import JobHooks, Publish
from .loading import ModelManager
from .loras import fetch_loras
from .prompt_expansion import expand_prompt
from .registry import Task
from .schema import File, VaceInput, VaceOutput, VideoFile
from .sizing import output_size
from .video_io import probe_video, read_frames


def generate(
    inp: VaceInput,
    *,
    task: Task,
    model: str,
    manager: ModelManager,
    workdir: Path,
    publish: Publish,
    hooks: JobHooks | None = None,
    ctx: JobContext = JobContext(),
) -> VaceOutput:
    """Run one ``task`` job on ``model`` under ``ctx``'s rules; files are written under ``workdir`` and handed to
    ``publish``."""
    hooks = hooks or JobHooks()
    started = time.perf_counter()
    check_inputs(inp, task, ctx, manager, model=model)
    checker = manager.safety_checker() if inp.enable_safety_checker else None
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
    loras = fetch_loras(inp, model, workdir, ctx, manager.weights_dir)

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
            manager.interpolator(inp.interpolator_model).check_between(timing.n_between)
        except ValueError as e:
            raise InputError("interpolator_model", str(e)) from e

    if manager.group is not None:  # before any expensive stage: a sequence the group cannot split is refused
        try:
            manager.group.spec.check_tokens(timing.generate_frames, len(refs or ()), (height // 16) * (width // 16))
        except ValueError as e:
            raise InputError("num_frames", str(e), "not_supported") from e
    control = read_frames(video_path, [plan.source_indices[j] for j in timing.control_indices])
    if checker is not None:
        score = checker.check_inputs(control, first, last, refs)
        hooks.log(f"safety check: the inputs passed (highest unsafe score {score:.2f})")
    prompt = inp.prompt
    if inp.enable_prompt_expansion:
        prompt = expand_prompt(manager.prompt_expander(), inp.prompt, task, hooks.log)
    if inp.preprocess:
        preprocessor = manager.preprocessor(task, inp.annotator)
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
              + (f", on {manager.group.spec.world_size} devices ({manager.group.spec})" if manager.group else ""))
    request = DenoiseRequest(inp, cond, prompt, width, height, seed, model, loras)
    if manager.group is not None:
        manager.group.send(request)
    frames = to_uint8(run_denoise(manager.get(model), request, hooks, manager.group))
    if checker is not None:  # before anything is encoded or published: nothing flagged leaves the job
        score = checker.check_output(frames)
        hooks.log(f"safety check: the generated video passed (highest unsafe score {score:.2f})")

    output: Iterable[np.ndarray] = frames
    if timing.interpolates:
        interpolator = manager.interpolator(inp.interpolator_model)
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
