"""What each endpoint makes of its request, up to the frames the model conditions on: the recipe, the frame plan,
the output size, the source frames and their masks. ``generate()`` runs the rest (safety checker, prompt expansion,
annotators, conditioning, denoising, interpolation, encoding) the same way for every endpoint.

Two steps, as the job runs them:

* ``resolve`` (no download; the server runs it at submission, so a request that cannot run is a 422 before it is
  queued): the *recipe* (``text``, ``pose``, ``depth``, ``inpainting``, ``outpainting``, ``reframe``) of an
  endpoint's request, the mask it uses, its outpainting sides or reframe settings, and what the job log says about
  the choices. The base endpoint's rules are ``pipelines.family``'s.
* ``prepare`` (after the download): the video and its mask fetched and probed within the input limits, the frame
  plan (``pipelines.frame_plan``) and the frames it reads (``clip``: of the whole input, or of one scene of a long
  reframe, ``pipelines.scenes``), read as the job takes them (``Source.take``, window by window), and per recipe:

  - ``pose``/``depth``: the frames as they are (the annotator, with ``preprocess``, comes later), every pixel
    generated;
  - ``inpainting``: the mask read at the very frames the plan reads of the video (``pipelines.masks``), fitted to
    the output size like the frames and binarised; what it marks is generated, the rest kept. A mask image is
    tracked from the first planned frame through the others (``pipelines.tracking``) when the job is given a
    tracker, else applied to every frame as it is;
  - ``outpainting``/``reframe``: the frames placed on the output canvas (``pipelines.outpaint``,
    ``pipelines.reframe``, ``pipelines.canvas``), whose uncovered part is generated; with ``paste_back`` the input
    frames of the output's timeline too (``paste_originals``), pasted over the output where the source lands;
  - ``text`` (no video): grey frames under an all-white mask, as VACE's ``prepare_source`` builds them: the
    timeline is ``num_frames`` at ``frames_per_second``; ``auto`` size and shape follow the first (else the last)
    frame image when there is one, else Wan's native 832x480.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from .canvas import Placement
from .codecs import Codecs
from .conditioning import Conditioning, build_conditioning, grey_frames
from .context import JobContext
from .errors import InputError
from .family import (
    BASE_RATIO,
    BASE_SIDES,
    BASE_TRIM,
    BASE_ZOOM,
    Recipe,
    base_job,
    inpainting_mask,
)
from .fetch import fetch_to_file, load_image
from .frame_plan import (
    FramePlan,
    TemporalPlan,
    plan_frames,
    plan_temporal,
    round_frames,
)
from .limits import check_video_limits
from .masks import MaskRef, check_generates, fit_masks, mask_from_image, read_mask_video
from .outpaint import Side, check_sides, chosen_sides, plan_outpaint
from .reframe import MAX_SAMPLES, plan_reframe, sample_evenly
from .registry import EndpointTask, Task
from .schema import (
    EndpointInput,
    InpaintingFunInput,
    JobInput,
    LongReframeInput,
    OutpaintingInput,
    ReframeInput,
    VaceTaskInput,
)
from .sizing import output_size
from .video_io import VideoInfo, pick_frames, probe_video, read_frames

MaskMode = Literal["track", "static", "per frame"]


class MaskFollower(Protocol):
    """How one mask image becomes a mask per planned frame: ``pipelines.tracking.MaskTracking`` follows it with SAM2
    (kept out of this module's imports: an API node validates requests without the model stack)."""

    def masks(
        self,
        frames: Sequence[np.ndarray],
        plane: np.ndarray,
        field: str,
        width: int,
        height: int,
        log: Callable[[str], None],
    ) -> list[np.ndarray]:
        """KEEP/GENERATE masks at ``width`` x ``height`` for ``frames`` (the planned frames), from the values
        ``plane`` of the mask image at its own size; a 422 on ``field`` for one it refuses."""
        ...


NATIVE_SIZE = (832, 480)  # Wan's 480p training size: what a job without video or frame image is sized from
PLACEHOLDER_PROMPT = "(conditioning only)"  # the schemas require a prompt; it plays no part in the conditioning


@dataclass(frozen=True)
class TaskJob:
    """What a request asks for, decided before any download."""

    recipe: Recipe
    mask: MaskRef | None = None  # inpainting: the mask it uses
    sides: tuple[Side, ...] = ()  # outpainting: the sides that grow, and by how much
    ratio: float = 0.0
    trim: bool = False  # reframe: trim bars, zoom
    zoom: float = 0.0
    paste_back: bool = False  # outpainting, reframe: the source's pixels pasted back over the output
    notes: tuple[str, ...] = ()  # for the job log

    @property
    def control_task(self) -> Task | None:
        """The control task whose annotator ``preprocess`` runs (pose, depth), or None when it does nothing."""
        return self.recipe if self.recipe in ("pose", "depth") else None


def resolve(inp: EndpointInput, task: EndpointTask) -> TaskJob:
    """The recipe of ``inp`` on the endpoint ``task`` (``""``: the base endpoint); a 422 for a request that cannot
    run whatever its media turn out to be."""
    if task == "":
        assert isinstance(inp, VaceTaskInput)
        base = base_job(inp)
        return TaskJob(
            base.recipe,
            base.mask,
            sides=BASE_SIDES if base.recipe == "outpainting" else (),
            ratio=BASE_RATIO,
            trim=BASE_TRIM,
            zoom=BASE_ZOOM,
            notes=base.notes + _text_notes(inp, base.recipe),
        )
    if task == "inpainting":
        assert isinstance(inp, InpaintingFunInput)
        mask, notes = inpainting_mask(inp)
        return TaskJob("inpainting", mask, notes=notes)
    if task == "outpainting":
        assert isinstance(inp, OutpaintingInput)
        sides = chosen_sides(inp.expand_left, inp.expand_right, inp.expand_top, inp.expand_bottom)
        check_sides(sides)
        return TaskJob("outpainting", sides=sides, ratio=inp.expand_ratio, paste_back=_paste_back(inp))
    if task in ("reframe", "long-reframe"):  # long-reframe: each scene is a reframe (pipelines.scenes)
        assert isinstance(inp, (ReframeInput, LongReframeInput))
        return TaskJob("reframe", trim=inp.trim_borders, zoom=inp.zoom_factor, paste_back=_paste_back(inp))
    assert task in ("pose", "depth")
    return TaskJob(task)


def _paste_back(inp: OutpaintingInput | ReframeInput | LongReframeInput) -> bool:
    """Whether the job pastes the source back; a 422 where interpolated frames between the input's would have
    nothing to paste."""
    interpolated: int = getattr(inp, "num_interpolated_frames", 0)  # long-reframe has no such field
    if inp.paste_back and interpolated:
        raise InputError(
            "paste_back",
            "paste_back keeps the source's own pixels in every output frame, and the frames "
            "num_interpolated_frames inserts between the input's have none; use one or the other",
        )
    return inp.paste_back


def _text_notes(inp: VaceTaskInput, recipe: Recipe) -> tuple[str, ...]:
    """What a job without video ignores of its request."""
    if recipe != "text":
        return ()
    ignored = [name for name in ("match_input_num_frames", "match_input_frames_per_second") if getattr(inp, name)]
    return (f"{' and '.join(ignored)} ignored: there is no input video to match",) if ignored else ()


@dataclass
class Source:
    """What the model conditions on, before the annotator and the first/last frame, read as the job takes it
    (``take``): for each generated position its control frame (uint8 RGB, at any size for ``build_conditioning`` to
    fit, or already at the output size) and its mask (KEEP/GENERATE at the output size; ``masks`` None: every pixel
    generated). The input video is decoded once, forward, as far as the frames taken so far: a long job holds one
    window of it at a time. Also the output size and the plans."""

    timing: TemporalPlan
    width: int
    height: int
    frames: Iterator[np.ndarray]
    masks: Iterator[np.ndarray] | None
    info: VideoInfo | None  # the input video's probe; None without one
    plan: FramePlan | None
    video_path: Path | None = None
    indices: list[int] = field(default_factory=list)  # the input frame of each generated position
    nvdec_gpu: int | None = None  # the GPU whose NVDEC decodes the input (``prepare``'s codecs), or the CPU
    placement: Placement | None = None  # outpainting, reframe: where the source lands on the canvas
    originals: Iterator[np.ndarray] | None = None
    """With ``paste_back``: the input frame of each output frame (``paste_originals``)."""
    decoders: list[Generator[np.ndarray, None, None]] = field(default_factory=list)
    """The decoders this source reads from (some shared with other clips), stopped by ``close``."""
    notes: list[str] = field(default_factory=list)  # what the job log says about the choices made here
    mask_mode: MaskMode | None = None  # inpainting: a tracked mask image, one for every frame, or a mask video
    tracked_masks: list[np.ndarray] | None = None  # a tracked mask image's masks, which the job returns too

    def take(self, count: int) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """The control frames and masks of the next ``count`` generated positions."""
        frames = list(itertools.islice(self.frames, count))
        masks = None if self.masks is None else list(itertools.islice(self.masks, count))
        return frames, masks

    def skip(self, count: int) -> None:
        """Pass over the next ``count`` generated positions (the playground's preview looks at the middle one)."""
        for stream in (self.frames, self.masks):
            if stream is not None:
                deque(itertools.islice(stream, count), maxlen=0)

    def input_frames(self, positions: Sequence[int]) -> list[np.ndarray]:
        """The input video's frames at generated ``positions`` (increasing), in a decoding pass of their own (what the
        safety checker samples); none for a job without video."""
        if self.video_path is None:
            return []
        return read_frames(self.video_path, [self.indices[p] for p in positions], nvdec_gpu=self.nvdec_gpu)

    def close(self) -> None:
        """Stop the decoders (the job ended, or failed, before taking every frame)."""
        for stream in (self.frames, self.masks, self.originals, *self.decoders):
            if isinstance(stream, Generator):
                stream.close()


def prepare(
    inp: JobInput,
    job: TaskJob,
    workdir: Path,
    ctx: JobContext,
    frame_image: Image.Image | None = None,
    *,
    codecs: Codecs | None = None,
    tracking: MaskFollower | None = None,
) -> Source:
    """Fetch the video (and mask), plan the frames and build ``job``'s source (rules in the module docstring).
    ``frame_image``: the first or last frame image, which sizes a job without video. ``codecs``: the worker's,
    whose NVDEC then decodes the video where it suits (``Codecs.decode_gpu``); None decodes on the CPU.
    ``tracking``: how a mask image is followed through the clip (None: it applies to every frame as it is)."""
    assert inp.frames_per_second is not None  # the schema reads null as the default
    if job.recipe == "text":
        timing = temporal_plan(inp, round_frames(inp.num_frames), float(inp.frames_per_second))
        width, height = output_size(
            inp.resolution, inp.aspect_ratio, *(frame_image.size if frame_image else NATIVE_SIZE)
        )
        return Source(timing, width, height, itertools.repeat(grey_frames(1, width, height)[0]), None, None, None)
    video_path, info = fetch_video(inp, workdir, ctx)
    plan = plan_frames(
        info,
        num_frames=inp.num_frames,
        frames_per_second=inp.frames_per_second,
        match_input_num_frames=inp.match_input_num_frames,
        match_input_frames_per_second=inp.match_input_frames_per_second,
    )
    return clip(
        inp,
        job,
        workdir,
        ctx,
        video_path,
        info,
        plan,
        tracking=tracking,
        nvdec_gpu=codecs.decode_gpu(info) if codecs else None,
    )


def fetch_video(inp: JobInput, workdir: Path, ctx: JobContext) -> tuple[Path, VideoInfo]:
    """The request's video, local and probed, within the input limits."""
    assert inp.video_url is not None  # resolve() refused a recipe with video but without one
    video_path = fetch_to_file(inp.video_url, "video_url", workdir, ctx)
    info = probe_video(video_path)
    check_video_limits(info, ctx.limits)
    return video_path, info


def clip(
    inp: JobInput,
    job: TaskJob,
    workdir: Path,
    ctx: JobContext,
    video_path: Path,
    info: VideoInfo,
    plan: FramePlan,
    *,
    frames: Iterator[np.ndarray] | None = None,
    samples: list[np.ndarray] | None = None,
    tracking: MaskFollower | None = None,
    nvdec_gpu: int | None = None,
) -> Source:
    """The source of the frames of ``video_path`` that ``plan`` reads (the whole job's, or one scene's of a long
    reframe). ``frames``: the input frames at the generated positions, from a decoder the caller shares between
    clips (default: a decoder of this clip's own); ``samples``: reframe's bar detection frames, when the caller
    read them (default: read here); ``tracking`` and ``nvdec_gpu``: as ``prepare`` takes them."""
    timing = temporal_plan(inp, plan.num_frames, plan.fps)
    indices = [plan.source_indices[j] for j in timing.control_indices]
    source = Source(
        timing,
        *output_size(inp.resolution, inp.aspect_ratio, info.width, info.height),
        pick_frames(video_path, indices, nvdec_gpu=nvdec_gpu) if frames is None else frames,
        None,
        info,
        plan,
        video_path,
        indices,
        nvdec_gpu=nvdec_gpu,
    )
    log = source.notes.append
    try:
        if job.recipe == "inpainting":
            assert job.mask is not None
            source.masks, source.mask_mode = _inpainting_masks(
                job.mask, info, source, indices, workdir, ctx, tracking, log
            )
        elif job.recipe == "outpainting":
            placement = plan_outpaint(info.width, info.height, job.sides, job.ratio, inp.resolution, inp.aspect_ratio)
            log(
                f"outpainting: {', '.join(job.sides)} grow by {job.ratio:g} of the source's width (left, right) or "
                "height (top, bottom); " + describe_placement(placement)
            )
            _place(source, placement)
        elif job.recipe == "reframe":
            if samples is None:
                samples = source.input_frames(reframe_samples(len(indices)))
            placement, bars = plan_reframe(samples, job.trim, job.zoom, inp.resolution, inp.aspect_ratio)
            if not job.trim:
                log("reframe: trim_borders is off, the bars (if any) are kept")
            elif placement.crop is None:
                log("reframe: no letterbox or pillarbox bars found")
            else:
                log(
                    f"reframe: bars trimmed (top {bars.top}, bottom {bars.bottom}, left {bars.left}, right "
                    f"{bars.right} px)"
                )
            log(f"reframe: zoom {job.zoom:g}; " + describe_placement(placement))
            if placement.generated_share == 0:
                log("reframe: the picture covers the whole canvas, nothing around it is generated")
            _place(source, placement)
    except BaseException:
        source.close()
        raise
    return source


def paste_originals(clips: Sequence[Source]) -> None:
    """Give each clip the input frames of its output timeline for ``paste_back``: one frame per output frame (no
    frames are interpolated between the input's: ``resolve`` refuses that), from one decoder the clips share (a long
    reframe's scenes follow each other through the input)."""
    head = clips[0]
    assert head.video_path is not None
    wanted = [i for c in clips if c.plan is not None for i in c.plan.source_indices]
    shared = pick_frames(head.video_path, wanted, nvdec_gpu=head.nvdec_gpu)
    for c in clips:
        assert c.placement is not None and c.plan is not None
        c.originals = itertools.islice(shared, len(c.plan.source_indices))
        c.decoders.append(shared)


def reframe_samples(positions: int) -> list[int]:
    """The generated positions (of ``positions``) whose frames reframe's bar detection looks at."""
    return sample_evenly(range(positions), MAX_SAMPLES)


def frame_images(inp: JobInput, workdir: Path, ctx: JobContext) -> tuple[Image.Image | None, Image.Image | None]:
    """The request's first and last frame images, fetched (None where not given)."""
    first = load_image(inp.first_frame_url, "first_frame_url", workdir, ctx) if inp.first_frame_url else None
    last = load_image(inp.last_frame_url, "last_frame_url", workdir, ctx) if inp.last_frame_url else None
    return first, last


def conditioning(
    inp: JobInput,
    source: Source,
    control: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None,
    first: Image.Image | None,
    last: Image.Image | None,
    refs: list[Image.Image] | None = None,
    *,
    start: int = 0,
    kept: Sequence[np.ndarray] = (),
) -> Conditioning:
    """The VACE conditioning of generated positions ``start`` .. of ``source``: the frames the output already has
    there (``kept``, a later window of a long job), then ``control`` (the source's own frames there, or the
    annotator's) under ``masks`` (None: all generated); the first/last frame images where their positions fall
    among the new frames, and the reference images."""
    timing = source.timing
    first_at, last_at = 0, timing.generate_frames - 1 - timing.held_frames
    new_from, stop = start + len(kept), start + len(kept) + len(control)
    return build_conditioning(
        control,
        source.width,
        source.height,
        masks=masks,
        first_frame=first if new_from <= first_at < stop else None,
        last_frame=last if new_from <= last_at < stop else None,
        last_index=last_at - start,
        reference_images=refs,
        transparency_mode=inp.transparency_mode,
        kept_frames=kept,
    )


def temporal_plan(inp: JobInput, frames: int, fps: float) -> TemporalPlan:
    """The request's generation and interpolation plan for a timeline of ``frames`` at ``fps``."""
    return plan_temporal(
        frames,
        fps,
        num_interpolated_frames=inp.num_interpolated_frames,
        temporal_downsample_factor=inp.temporal_downsample_factor,
        enable_auto_downsample=inp.enable_auto_downsample,
        auto_downsample_min_fps=inp.auto_downsample_min_fps,
    )


def _place(source: Source, placement: Placement) -> None:
    """Put ``source``'s frames on ``placement``'s canvas, which becomes the output size."""
    source.frames = placement.render_all(source.frames)
    source.masks = itertools.repeat(placement.mask())
    source.width, source.height = placement.width, placement.height
    source.placement = placement


def describe_placement(p: Placement) -> str:
    """The job log's account of where the source lands on the canvas."""
    return (
        f"the source ({p.w}x{p.h}) is placed at ({p.x}, {p.y}) on the {p.width}x{p.height} output; "
        f"{p.generated_share:.0%} of the canvas is generated"
    )


def _inpainting_masks(
    mask: MaskRef,
    info: VideoInfo,
    source: Source,
    indices: Sequence[int],
    workdir: Path,
    ctx: JobContext,
    tracking: MaskFollower | None,
    log: Callable[[str], None],
) -> tuple[Iterator[np.ndarray], MaskMode]:
    """The inpainting masks at the output size, one per generated frame as they are taken, and the mask mode: a mask
    video read at the video frames the plan reads (``indices``), or one mask image tracked through the planned
    frames (with ``tracking``) or applied to every one of them. A mask that generates nothing or everything is
    refused here, before any model work: a mask video is read through once for that. Tracking holds the planned
    frames and their masks while SAM2 follows the mask (its session reads them whole), so a tracked job is the one
    whose memory grows with its length."""
    width, height, size = source.width, source.height, (info.width, info.height)
    masks: Iterable[np.ndarray]
    mode: MaskMode
    if mask.is_video:
        path = fetch_to_file(mask.url, mask.field, workdir, ctx)
        mask_info = probe_video(path, mask.field)
        check_video_limits(mask_info, ctx.limits, mask.field)
        planes, notes = read_mask_video(path, mask_info, info, indices, mask.field)
        for note in notes:
            log(note)
        mode, how = "per frame", "mask video, frame for frame with the video"
        share = check_generates(fit_masks(planes, size, width, height), mask.field)
        masks = fit_masks(read_mask_video(path, mask_info, info, indices, mask.field)[0], size, width, height)
    else:
        image = load_image(mask.url, mask.field, workdir, ctx)
        plane = mask_from_image(image, size, mask.field)
        if tracking is not None:
            mode, how = "track", "the mask image marks the first frame; SAM2 follows it through the others"
            masks = source.tracked_masks = tracking.masks(
                source.input_frames(range(len(indices))), plane, mask.field, width, height, log
            )
            share = check_generates(masks, mask.field)
        else:
            mode, how = "static", "one mask image for every frame, as VACE's mask mode"
            static = next(fit_masks([plane], size, width, height))
            share = check_generates([static], mask.field)
            masks = itertools.repeat(static, len(indices))
    log(f"inpainting: mask mode {mode} ({how}); {share:.0%} of the pixels are regenerated")
    return iter(masks), mode
