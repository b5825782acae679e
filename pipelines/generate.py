"""``generate()``: one job from a validated request to the fal output, shared by the CLI, the sync route and the
queue worker.

It reads like a diffusers pipeline's ``__call__``, in numbered stages:

1. check: every check that needs no download (``checks.check_inputs``; the server ran it at submission too); and
   the job's last checkpoint read, when its caller keeps them and the run before this one left one (``pipelines.
   resume``: a job handed back after its worker died or stopped goes on from that step);
2. fetch and plan: the media and LoRAs made local (each within its limits); the endpoint's source frames and masks
   built (``pipelines.tasks``: pose/depth, inpainting, outpainting, reframe, or no video at all) with the frames,
   size and temporal downsampling planned; the inputs, when asked, screened by the safety checker. Then
   what the generation runs on is resolved, once (``JobParts``: the loaded model and, as the request asks, the
   annotator, interpolator and prompt expander, and the job group), as a diffusers pipeline is built from its
   components; after that the job asks the model manager for nothing. It comes this late so that a broken or
   flagged input loads no model. The late checks, which need the plan and those parts, follow in one call
   (``checks.check_plan``);
3. condition: prompt expansion, the annotator (``preprocess``), the VACE conditioning;
4. denoise: the ``WanVACEPipeline`` call (``pipelines.denoise``), on every rank of the job group when there is one,
   from step 0 or from the checkpoint's step once the checkpoint is known to fit the weights and the group;
5. finish: the safety checker on the output (a flagged job ends before anything is encoded or published),
   interpolation, ffmpeg encoding and publishing; an inpainting job that tracked its mask image also returns the
   masks it tracked, as ``mask_video`` (an extension of fal's output).

Where a file ends up (a path for the CLI, a served URL or a data URI for the server) is the caller's ``publish``.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocessors.base import Preprocessor

from .checks import check_inputs, check_plan
from .context import JobContext
from .denoise import DenoiseRequest, run_denoise, to_uint8
from .encode import EncodedVideo, encode_video, write_frames_zip, write_mask_video
from .errors import JobCancelled
from .fetch import load_image
from .hooks import JobHooks, Publish
from .interpolation import FrameInterpolator
from .loading import LoadedModel, ModelManager
from .loras import fetch_loras
from .parallel import GroupMember
from .prompt_expansion import PromptExpander, expand_prompt
from .registry import EndpointTask
from .resume import Identity, code_version, job_weights, load_resume, refuse, request_digest
from .schema import File, JobInput, VaceOutput, VideoFile
from .tasks import TaskJob, conditioning, frame_images, prepare

MASK_VIDEO_FILE = "mask.mp4"  # the file name ``publish`` gets for the tracked masks (the CLI writes it beside -o)


@dataclass(frozen=True)
class JobParts:
    """What one job's generation runs on, resolved once before its expensive stages. (The safety checker is not
    among them: it screens the inputs before any of these loads, and is resolved where it does.)"""

    model: LoadedModel
    annotator: Preprocessor | None
    """With ``preprocess`` on a pose or depth job: its annotator (the request's, else the server's default)."""
    interpolator: FrameInterpolator | None
    """When the plan interpolates (``num_interpolated_frames``, temporal downsampling)."""
    prompt_expander: PromptExpander | None
    """With ``enable_prompt_expansion``: the server's expander; None also when it has none (the prompt stays)."""
    group: GroupMember | None
    """Rank 0's place in a job group: every rank runs the denoising, handed to the others with ``group.send``."""


def resolve_parts(manager: ModelManager, inp: JobInput, job: TaskJob, model: str, *, interpolates: bool) -> JobParts:
    """Load (or take from ``manager``, which keeps them) what the job needs, and nothing it does not."""
    preprocess = job.control_task if getattr(inp, "preprocess", False) else None
    return JobParts(
        model=manager.get(model),
        annotator=manager.preprocessor(preprocess, getattr(inp, "annotator", None)) if preprocess else None,
        interpolator=manager.interpolator(inp.interpolator_model) if interpolates else None,
        prompt_expander=manager.prompt_expander() if inp.enable_prompt_expansion else None,
        group=manager.group,
    )


def generate(
    inp: JobInput,
    *,
    task: EndpointTask,
    model: str,
    manager: ModelManager,
    workdir: Path,
    publish: Publish,
    hooks: JobHooks | None = None,
    ctx: JobContext = JobContext(),
) -> VaceOutput:
    """Run one job of the endpoint ``task`` (``""``: the base endpoint) on ``model`` (a served model's key) with
    ``manager``'s models under ``ctx``'s rules; files are written under ``workdir`` and handed to ``publish``."""
    hooks = hooks or JobHooks()
    started = time.perf_counter()

    # 1. Check: everything that needs no download. Read the last run's checkpoint, if it left one.
    job = check_inputs(inp, task, ctx, manager, model=model)
    request_id = request_digest(task, model, inp.model_dump(mode="json"))
    resume = load_resume(hooks.checkpoints, request=request_id, log=hooks.log)
    seed = inp.seed if inp.seed is not None else resume.seed if resume is not None else secrets.randbelow(2**31)
    for note in job.notes:  # what the endpoint makes of the request, before any download can fail
        hooks.log(note)

    # 2. Fetch, plan and screen; then resolve the job's parts and run the late checks.
    hooks.log("fetching inputs")
    first, last = frame_images(inp, workdir, ctx)
    refs = [
        load_image(url, ("ref_image_urls", i), workdir, ctx)
        for i, url in enumerate(getattr(inp, "ref_image_urls", None) or [])  # reframe has none
    ] or None
    loras = fetch_loras(inp, model, workdir, ctx, manager.weights_dir)
    source = prepare(inp, job, workdir, ctx, first or last, codecs=manager.codecs, tracking=manager.mask_tracking())
    timing, width, height, info, plan = source.timing, source.width, source.height, source.info, source.plan
    hooks.log(
        (
            f"input {info.width}x{info.height}, {info.num_frames} frames at {info.fps:g} fps; "
            if info
            else "no input video; "
        )
        + f"output {timing.output_frames} frames at {timing.output_fps:g} fps, {width}x{height}, "
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
    checker = manager.safety_checker() if inp.enable_safety_checker else None
    if checker is not None:
        score = checker.check_inputs(source.video_frames, first, last, refs)
        hooks.log(f"safety check: the inputs passed (highest unsafe score {score:.2f})")
    hooks.log(f"loading {model}")
    parts = resolve_parts(manager, inp, job, model, interpolates=timing.interpolates)
    check_plan(
        timing,
        width=width,
        height=height,
        extra_latent_frames=len(refs or ()),
        interpolator=parts.interpolator,
        group=parts.group,
    )

    # 3. Condition: the prompt expanded, the control video made, the VACE conditioning built.
    prompt = inp.prompt
    if resume is not None:  # the prompt the checkpoint's steps were denoised with, expanded or not
        prompt = resume.prompt
    elif inp.enable_prompt_expansion:
        prompt = expand_prompt(parts.prompt_expander, inp.prompt, job.recipe, hooks.log)
    control = source.control
    if parts.annotator is not None:
        hooks.log(
            f"preprocessing {len(control)} frames into {job.control_task} control ({type(parts.annotator).__name__})"
        )
        control = list(parts.annotator.process(control))
        hooks.control(control, timing.generate_fps)
    cond = conditioning(inp, source, control, first, last, refs)
    tracked = source.masks if source.mask_mode == "track" else None  # returned as the job's mask video
    del control, source
    if hooks.cancelled():
        raise JobCancelled("cancelled before denoising")

    # 4. Denoise, on every rank of the job group when there is one.
    for lora in loras:
        hooks.log(f"LoRA {lora.index}: {lora.sha256[:12]} at scale {lora.scale:g} on {' and '.join(lora.experts)}")
    group = parts.group
    hooks.log(
        f"denoising: {inp.num_inference_steps} steps, sampler {inp.sampler}, shift {inp.shift:g}"
        + (f", on {group.spec.world_size} devices ({group.spec})" if group else "")
    )
    identity = Identity(
        request_id,
        job_weights(parts.model.version, (lora.sha256 for lora in loras)),
        code_version(),
        str(group.spec) if group else "none",
    )
    resume = refuse(resume, identity, hooks.log)
    if resume is not None and hooks.checkpoints is not None:
        hooks.log(
            f"resumed at step {resume.step}/{resume.total}"
            + (f" (the {resume.expert} expert ran the step before)" if resume.expert != "transformer" else "")
        )
        hooks.checkpoints.resumed(resume.step, resume.total)
    request = DenoiseRequest(
        inp, cond, prompt, width, height, seed, model, loras, fps=timing.generate_fps, identity=identity, resume=resume
    )
    if group is not None:
        assert group.send is not None, "generate() runs on rank 0 of a job group"
        group.send(request)
    denoised = run_denoise(parts.model, request, hooks, group)
    assert denoised is not None  # rank 0 decodes
    frames = to_uint8(denoised)

    # 5. Finish: the output screened, interpolated, encoded and published.
    if checker is not None:  # before anything is encoded or published: nothing flagged leaves the job
        score = checker.check_output(list(frames))
        hooks.log(f"safety check: the generated video passed (highest unsafe score {score:.2f})")
    output: Iterable[np.ndarray] = frames
    if parts.interpolator is not None:
        output = itertools.islice(parts.interpolator.interpolate(frames, timing.n_between), timing.output_frames)
    if inp.return_frames_zip:
        output = list(output)  # encoded and zipped: materialise once rather than interpolate twice
    encoder = manager.codecs.encoder.for_size(width, height)
    hooks.log(f"encoding with {encoder} ({inp.video_quality} quality, {inp.video_write_mode} write mode)")
    encoded = encode_video(
        output,
        workdir / "video.mp4",
        timing.output_fps,
        quality=inp.video_quality,
        write_mode=inp.video_write_mode,
        encoder=encoder,
    )
    if encoded.fallback:
        hooks.log(f"{encoder} did not open ({encoded.fallback}): encoded with {encoded.encoder} instead")
    video = _video_file(encoded, publish)
    frames_zip = None
    if inp.return_frames_zip:
        zip_path = write_frames_zip(output, workdir / "frames.zip")
        zip_size = zip_path.stat().st_size  # before publishing, which may move the file
        frames_zip = File(
            url=publish(zip_path, "application/zip"),
            content_type="application/zip",
            file_name=zip_path.name,
            file_size=zip_size,
        )
    mask_video = None
    if tracked is not None:
        masks = write_mask_video(tracked, workdir / MASK_VIDEO_FILE, timing.generate_fps, encoder=encoder)
        mask_video = _video_file(masks, publish)
    hooks.log(f"{task or f'base ({job.recipe})'} job done in {time.perf_counter() - started:.1f} s")
    return VaceOutput(video=video, prompt=prompt, seed=seed, frames_zip=frames_zip, mask_video=mask_video)


def _video_file(encoded: EncodedVideo, publish: Publish) -> VideoFile:
    """The output's description of an encoded video, published (size and length read before ``publish`` may
    move the file)."""
    return VideoFile(
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
