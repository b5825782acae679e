"""``generate()``: one job from a validated request to the fal output, shared by the CLI, the sync route and the
queue worker.

It reads like a diffusers pipeline's ``__call__``, in numbered stages:

1. check: every check that needs no download (``checks.check_inputs``; the server ran it at submission too); and
   the job's last checkpoint read, when its caller keeps them and the run before this one left one (``pipelines.
   resume``: a job handed back after its worker died or stopped goes on from that step of that window);
2. fetch and plan: the media and LoRAs made local (each within its limits); the endpoint's source frames and masks
   planned (``pipelines.tasks``: pose/depth, inpainting, outpainting, reframe, or no video at all) with the frames,
   size, temporal downsampling and windows (``pipelines.windows``) planned; the inputs, when asked, screened by the
   safety checker. Then what the generation runs on is resolved, once (``JobParts``: the loaded model and, as the
   request asks, the annotator, interpolator and prompt expander, and the job group), as a diffusers pipeline is
   built from its components; after that the job asks the model manager for nothing. It comes this late so that a
   broken or flagged input loads no model. The late checks, which need the plan and those parts, follow in one
   call (``checks.check_plan``);
3. condition: prompt expansion, then per window the annotator (``preprocess``) and the VACE conditioning;
4. denoise: per window the ``WanVACEPipeline`` call (``pipelines.denoise``), on every rank of the job group when
   there is one (the checkpoint's window from its step, once the checkpoint is known to fit the weights and the
   group; the windows before it taken from ``pipelines.window_outputs`` where this node still has them), and the
   safety checker on what it made;
5. finish: interpolation, ffmpeg encoding (and the input's sound) and publishing; an inpainting job that tracked its
   mask image also returns the masks it tracked, as ``mask_video`` (an extension of fal's output).

Stages 3 to 5 run as one stream (``Denoiser``): the encoder pulls the output frames, which pulls windows through
the denoiser, which reads the input video as far as the window needs. A long job so holds one window of frames at a
time, whatever its length: the input is decoded, conditioned and encoded as it goes, the frames zip and the control
video are written as they come. Nothing is published before the last frame is encoded, so a flagged, cancelled or
failed job leaves nothing behind.

Where a file ends up (a path for the CLI, a served URL or a data URI for the server) is the caller's ``publish``.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from preprocessors.base import Preprocessor

from .audio import add_audio
from .checks import check_inputs, check_plan
from .context import JobContext
from .denoise import DenoiseRequest, run_denoise, to_uint8
from .encode import EncodedVideo, Encoder, FramesZip, encode_video, write_control_video, write_mask_video
from .errors import JobCancelled
from .fetch import load_image
from .hooks import JobHooks, Publish
from .interpolation import FrameInterpolator
from .loading import LoadedModel, ModelManager
from .loras import JobLora, fetch_loras
from .parallel import GroupMember
from .prompt_expansion import PromptExpander, expand_prompt
from .registry import EndpointTask
from .resume import DenoiseState, Identity, code_version, job_weights, load_resume, refuse, request_digest
from .safety import SafetyChecker, sample_frames
from .scenes import describe_scenes, detect_scenes, scene_input, scene_sources
from .schema import (
    EndpointInput,
    File,
    JobInput,
    LongReframeInput,
    LongReframeOutput,
    VaceOutput,
    VideoFile,
)
from .streams import FrameSink
from .tasks import (
    Source,
    TaskJob,
    conditioning,
    fetch_video,
    frame_images,
    paste_originals,
    prepare,
)
from .video_io import read_frames
from .window_outputs import WindowOutputs
from .windows import Window, describe_windows, plan_windows, window_seed

MASK_VIDEO_FILE = "mask.mp4"  # the file name ``publish`` gets for the tracked masks (the CLI writes it beside -o)
OUTPUT_ONLY = {"keep_audio", "return_frames_zip", "sync_mode", "video_quality", "video_write_mode", "paste_back"}
"""Request fields that change what is made of the generated frames, not the frames: a later run of a job with
other values of these takes the windows an earlier run left (``pipelines.window_outputs``)."""


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


class ControlVideo:
    """The control video a ``preprocess=true`` job makes, encoded window by window as the annotator makes it and
    handed to ``hooks.control`` once whole (the server keeps it for the playground). A preview for people, not part
    of the output: when it cannot be written, the job says so and goes on."""

    def __init__(self, path: Path, fps: float, hooks: JobHooks, encoder: Encoder) -> None:
        self.path, self.fps, self.hooks = path, fps, hooks
        self.sink: FrameSink[EncodedVideo] | None = FrameSink(
            lambda frames: write_control_video(frames, path, fps, encoder=encoder), name="vace-control-video"
        )

    def add(self, frames: Sequence[np.ndarray], last: bool) -> None:
        """The annotator's frames of one window; ``last``: the job's last window, the video is whole."""
        if self.sink is None:
            return
        try:
            for frame in frames:
                self.sink.put(frame)
            if last:
                encoded, self.sink = self.sink.close(), None
                assert self.hooks.control is not None
                self.hooks.control(encoded.path, self.fps)
        except Exception as exc:  # noqa: BLE001 - a full disk, an encoder error: a preview is not worth the job
            self.hooks.log(f"could not keep the control video: {exc}")
            self.abort()

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.abort()
            self.sink = None
            self.path.unlink(missing_ok=True)


@dataclass
class Denoiser:
    """Stages 3 and 4 of one job: its windows (``pipelines.windows``) one after the other, each conditioned,
    denoised (on every rank of the job group when there is one) and, with the safety checker, screened."""

    parts: JobParts
    inp: JobInput
    prompt: str
    width: int
    height: int
    seed: int
    model: str
    loras: Sequence[JobLora]
    hooks: JobHooks
    checker: SafetyChecker | None
    control_video: ControlVideo | None
    total: int
    """Windows in the whole job (all scenes of a long reframe): the progress says ``window i/total``."""
    outputs: WindowOutputs
    """Where each finished window is kept, and found again by a later run of the job."""
    identity: Identity
    """What this job's checkpoints are valid for."""
    resume: DenoiseState | None
    """The checkpoint the job goes on from: its window from its step, the windows before it finished."""
    highest: float = 0.0
    """The highest unsafe score the safety checker gave a window so far."""

    def frames(
        self,
        source: Source,
        windows: Sequence[Window],
        *,
        first: Image.Image | None,
        last: Image.Image | None,
        refs: list[Image.Image] | None,
    ) -> Iterator[np.ndarray]:
        """The generated frames of ``source``, in order, window by window as they are taken. Each window after the
        first keeps the frames the output already has in its overlap (the very arrays yielded before) and yields
        only its new ones."""
        recent: deque[np.ndarray] = deque(maxlen=max(w.kept for w in windows) or 1)
        group, hooks, annotator = self.parts.group, self.hooks, self.parts.annotator
        resume = self.resume
        for w in windows:
            if self.total > 1:
                hooks.window(w.index + 1, self.total)
            if hooks.cancelled():
                raise JobCancelled(f"cancelled before window {w.index + 1}/{self.total}")
            control, masks = source.take(w.new)
            if annotator is not None:
                control = list(annotator.process(control))
                if self.control_video is not None:
                    self.control_video.add(control, last=w.index + 1 == self.total)
            kept = list(recent)[len(recent) - w.kept :] if w.kept else []
            new = self.outputs.load(w.index)
            if new is not None:
                hooks.log(f"window {w.index + 1}: its frames from an earlier run of this job are used")
            elif resume is not None and w.index < resume.window:
                hooks.log(
                    f"window {w.index + 1} was finished by an earlier run, whose frames are not on this node: "
                    "made again (its seed makes the same frames)"
                )
            if new is None:
                cond = conditioning(self.inp, source, control, masks, first, last, refs, start=w.start, kept=kept)
                del control, masks
                request = DenoiseRequest(
                    self.inp,
                    cond,
                    self.prompt,
                    self.width,
                    self.height,
                    window_seed(self.seed, w.index),
                    self.model,
                    self.loras,
                    fps=source.timing.generate_fps,
                    identity=self.identity,
                    resume=resume if resume is not None and resume.window == w.index else None,
                    window=w.index,
                )
                if group is not None:
                    assert group.send is not None, "generate() runs on rank 0 of a job group"
                    group.send(request)
                denoised = run_denoise(self.parts.model, request, hooks, group)
                assert denoised is not None  # rank 0 decodes
                new = to_uint8(denoised)[w.kept :]
                del cond, request
                if self.checker is not None:  # before its frames go on to be encoded: nothing flagged leaves the job
                    self.highest = max(self.highest, self.checker.check_output(list(new)))
                self.outputs.save(w.index, new)
            if self.checker is not None and w.index + 1 == self.total:  # said here: the stream may stop at its end
                hooks.log(f"safety check: the generated video passed (highest unsafe score {self.highest:.2f})")
            recent.extend(new)
            yield from new


def _zipped(frames: Iterable[np.ndarray], archive: FramesZip) -> Iterator[np.ndarray]:
    """``frames`` as they pass, each also added to ``archive``."""
    for frame in frames:
        archive.add(frame)
        yield frame


def generate(
    inp: EndpointInput,
    *,
    task: EndpointTask,
    model: str,
    manager: ModelManager,
    workdir: Path,
    publish: Publish,
    hooks: JobHooks | None = None,
    ctx: JobContext = JobContext(),
) -> VaceOutput | LongReframeOutput:
    """Run one job of the endpoint ``task`` (``""``: the base endpoint) on ``model`` (a served model's key) with
    ``manager``'s models under ``ctx``'s rules; files are written under ``workdir`` and handed to ``publish``."""
    hooks = hooks or JobHooks()
    started = time.perf_counter()

    # 1. Check: everything that needs no download. A long reframe runs each scene as a reframe request.
    job = check_inputs(inp, task, ctx, manager, model=model)
    request_id = request_digest(task, model, inp.model_dump(mode="json"))
    resume = load_resume(hooks.checkpoints, request=request_id, window=None, log=hooks.log)
    seed = inp.seed if inp.seed is not None else resume.seed if resume is not None else secrets.randbelow(2**31)
    for note in job.notes:  # what the endpoint makes of the request, before any download can fail
        hooks.log(note)
    clip_inp: JobInput
    if isinstance(inp, LongReframeInput):
        scene_inp = clip_inp = scene_input(inp)
    else:
        scene_inp, clip_inp = None, inp

    # 2. Fetch, plan and screen; then resolve the job's parts and run the late checks.
    hooks.log("fetching inputs")
    first, last = frame_images(clip_inp, workdir, ctx)
    refs = [
        load_image(url, ("ref_image_urls", i), workdir, ctx)
        for i, url in enumerate(getattr(clip_inp, "ref_image_urls", None) or [])  # reframe has none
    ] or None
    loras = fetch_loras(clip_inp, model, workdir, ctx, manager.weights_dir)
    if isinstance(inp, LongReframeInput) and scene_inp is not None:
        video_path, info = fetch_video(scene_inp, workdir, ctx)
        scenes = detect_scenes(video_path, info, inp.scene_threshold)
        hooks.log(describe_scenes(scenes, inp.scene_threshold))
        clips = scene_sources(
            scene_inp, job, workdir, ctx, video_path, info, scenes, nvdec_gpu=manager.codecs.decode_gpu(info)
        )
    else:
        clips = [
            prepare(clip_inp, job, workdir, ctx, first or last, codecs=manager.codecs, tracking=manager.mask_tracking())
        ]
    identity = {
        "input": inp.model_dump(mode="json", exclude=OUTPUT_ONLY),
        "task": task,
        "model": model,
        "seed": seed,
        "windows": dataclasses.asdict(ctx.windows),
    }
    try:
        return _generate(
            clip_inp,
            task,
            job,
            clips,
            seed=seed,
            first=first,
            last=last,
            refs=refs,
            loras=loras,
            model=model,
            manager=manager,
            workdir=workdir,
            publish=publish,
            hooks=hooks,
            ctx=ctx,
            started=started,
            outputs=WindowOutputs(workdir, identity),
            request_id=request_id,
            resume=resume,
            long_reframe=isinstance(inp, LongReframeInput),
        )
    finally:
        for source in clips:
            source.close()


def _generate(
    inp: JobInput,
    task: EndpointTask,
    job: TaskJob,
    clips: list[Source],
    *,
    seed: int,
    first: Image.Image | None,
    last: Image.Image | None,
    refs: list[Image.Image] | None,
    loras: Sequence[JobLora],
    model: str,
    manager: ModelManager,
    workdir: Path,
    publish: Publish,
    hooks: JobHooks,
    ctx: JobContext,
    started: float,
    outputs: WindowOutputs,
    request_id: str,
    resume: DenoiseState | None,
    long_reframe: bool,
) -> VaceOutput | LongReframeOutput:
    """``generate()`` from its planned clips on (the rest of stage 2 and stages 3 to 5): one clip, or a long
    reframe's scenes, whose outputs follow each other in one video."""
    head = clips[0]
    width, height, info, video_path = head.width, head.height, head.info, head.video_path
    output_frames = sum(source.timing.output_frames for source in clips)
    output_fps = head.timing.output_fps
    hooks.log(
        (
            f"input {info.width}x{info.height}, {info.num_frames} frames at {info.fps:g} fps; "
            if info
            else "no input video; "
        )
        + f"output {output_frames} frames at {output_fps:g} fps, {width}x{height}, seed {seed}"
    )
    windows: list[list[Window]] = []
    for source in clips:
        timing, plan = source.timing, source.plan
        if plan is not None and plan.held_frames:
            hooks.log(f"the input ends early: its last frame is held for {plan.held_frames} frames")
        for note in (*source.notes, *timing.notes):
            hooks.log(note)
        if timing.interpolates:
            hooks.log(
                f"generating {timing.generate_frames} frames (one control frame in {timing.downsample_factor + 1}) "
                f"and interpolating {timing.n_between} between each pair with {inp.interpolator_model}"
            )
        windows.append(plan_windows(timing.generate_frames, ctx.windows, sum(map(len, windows))))
    checker = manager.safety_checker() if inp.enable_safety_checker else None
    if checker is not None:
        used = [i for source in clips for i in source.indices]  # every input frame the job reads, in order
        samples = read_frames(video_path, sample_frames(used)) if video_path is not None else []
        score = checker.check_inputs(samples, first, last, refs)
        hooks.log(f"safety check: the inputs passed (highest unsafe score {score:.2f})")
    hooks.log(f"loading {model}")
    parts = resolve_parts(manager, inp, job, model, interpolates=any(s.timing.interpolates for s in clips))
    for source, planned in zip(clips, windows, strict=True):
        check_plan(
            source.timing,
            width=width,
            height=height,
            extra_latent_frames=len(refs or ()),
            interpolator=parts.interpolator,
            group=parts.group,
            window_lengths={w.length for w in planned},
        )
    if job.paste_back:
        paste_originals(clips)

    # 3 and 4. Condition and denoise, window by window (a job of one window is the single pass), as stage 5 takes
    # the frames.
    prompt = inp.prompt
    if resume is not None:  # the prompt the checkpoint's steps were denoised with, expanded or not
        prompt = resume.prompt
    elif inp.enable_prompt_expansion:
        prompt = expand_prompt(parts.prompt_expander, inp.prompt, job.recipe, hooks.log)
    total = sum(map(len, windows))
    control_video = None
    if parts.annotator is not None:
        hooks.log(
            f"preprocessing {head.timing.generate_frames} frames into {job.control_task} control "
            f"({type(parts.annotator).__name__})" + (", window by window" if total > 1 else "")
        )
        if hooks.control is not None:
            control_video = ControlVideo(
                workdir / "control.mp4", head.timing.generate_fps, hooks, manager.codecs.encoder
            )
    for lora in loras:
        hooks.log(f"LoRA {lora.index}: {lora.sha256[:12]} at scale {lora.scale:g} on {' and '.join(lora.experts)}")
    group = parts.group
    hooks.log(
        f"denoising: {inp.num_inference_steps} steps, sampler {inp.sampler}, shift {inp.shift:g}"
        + (f", on {group.spec.world_size} devices ({group.spec})" if group else "")
    )
    for planned in windows:
        if len(planned) > 1:
            hooks.log(describe_windows(planned, ctx.windows) + f"; window seeds derived from seed {seed}")
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
            + (f" of window {resume.window + 1}/{total}" if total > 1 else "")
            + (f" (the {resume.expert} expert ran the step before)" if resume.expert != "transformer" else "")
        )
        hooks.checkpoints.resumed(resume.step, resume.total)
    denoiser = Denoiser(
        parts,
        inp,
        prompt,
        width,
        height,
        seed,
        model,
        loras,
        hooks,
        checker,
        control_video,
        total,
        outputs,
        identity,
        resume,
    )

    # 5. Finish: each clip's output interpolated over its whole timeline, cut to it and pasted back onto; the clips
    # one after the other, encoded (and zipped) as they come; the input's sound added.
    def clip_output(source: Source, planned: list[Window]) -> Iterator[np.ndarray]:
        frames: Iterable[np.ndarray] = denoiser.frames(source, planned, first=first, last=last, refs=refs)
        if source.timing.interpolates:
            assert parts.interpolator is not None
            frames = parts.interpolator.interpolate(frames, source.timing.n_between)
        frames = itertools.islice(frames, source.timing.output_frames)  # generated past the timeline's end: cut
        if source.originals is not None:
            assert source.placement is not None
            frames = map(source.placement.paste, frames, source.originals)
        return iter(frames)

    output: Iterable[np.ndarray] = itertools.chain.from_iterable(map(clip_output, clips, windows))
    archive = FramesZip(workdir / "frames.zip") if inp.return_frames_zip else None
    if archive is not None:
        output = _zipped(output, archive)
    encoder = manager.codecs.encoder.for_size(width, height)
    hooks.log(
        f"encoding with {encoder} as the frames come ({inp.video_quality} quality, {inp.video_write_mode} write mode)"
    )
    try:
        encoded = encode_video(
            output,
            workdir / "video.mp4",
            output_fps,
            quality=inp.video_quality,
            write_mode=inp.video_write_mode,
            encoder=encoder,
        )
    finally:
        if control_video is not None:
            control_video.abort()  # a job that failed before its last window: the control video is not whole
        if archive is not None:
            archive.close()
    if encoded.fallback:
        hooks.log(f"{encoder} did not open ({encoded.fallback}): encoded with {encoded.encoder} instead")
    if video_path is not None and inp.keep_audio:
        hooks.log(add_audio(encoded.path, video_path, encoded.duration))
    video = _video_file(encoded, publish)
    frames_zip = None
    if archive is not None:
        zip_path = archive.path
        zip_size = zip_path.stat().st_size  # before publishing, which may move the file
        frames_zip = File(
            url=publish(zip_path, "application/zip"),
            content_type="application/zip",
            file_name=zip_path.name,
            file_size=zip_size,
        )
    mask_video = None
    if head.tracked_masks is not None:
        masks = write_mask_video(
            head.tracked_masks, workdir / MASK_VIDEO_FILE, head.timing.generate_fps, encoder=encoder
        )
        mask_video = _video_file(masks, publish)
    hooks.log(f"{task or f'base ({job.recipe})'} job done in {time.perf_counter() - started:.1f} s")
    if long_reframe:
        return LongReframeOutput(video=video, frames_zip=frames_zip)
    return VaceOutput(video=video, prompt=prompt, seed=seed, frames_zip=frames_zip, mask_video=mask_video)


def _video_file(encoded: EncodedVideo, publish: Publish) -> VideoFile:
    """The output's description of an encoded video, published (its size read before ``publish`` may move the
    file, and after the sound went in)."""
    size = encoded.path.stat().st_size
    return VideoFile(
        url=publish(encoded.path, "video/mp4"),
        content_type="video/mp4",
        file_name=encoded.path.name,
        file_size=size,
        width=encoded.width,
        height=encoded.height,
        fps=encoded.fps,
        duration=encoded.duration,
        num_frames=encoded.num_frames,
    )
