"""Scene cuts for ``fal-ai/wan-vace-apps/long-reframe``: a long video reframed scene by scene.

fal's long reframe "reframes a long video scene-by-scene" and publishes its fields, not its detector; ours is
PySceneDetect's content detector (``scenedetect.ContentDetector``), run on our own decoded frames (the frames the
job reads, so scene boundaries and frame indices agree exactly), each shrunk to at least 256 pixels wide first as
PySceneDetect's own ``SceneManager`` does by default.

**scene_threshold** (0..100, default 30; fal: "lower values detect more scenes") is the content detector's
``threshold`` as it is: the weighted mean change of hue, saturation and brightness between two frames, on a 0..255
scale, at or above which a cut is made (PySceneDetect's own default is 27). 30 finds hard cuts and passes over camera
moves; 0 cuts wherever a frame changes at all, 100 only between nearly unrelated pictures. A scene is at least 15
frames long (the detector's ``min_scene_len``): cuts closer than that are merged, as PySceneDetect does.

Each scene is then reframed on its own, as a clip of the input's own frames at its own frame rate (``scene_input``:
the request as a reframe request with ``match_input_*`` on), with its own bars trimmed and its own placement, in
windows when it is longer than one pass; the scenes' outputs are concatenated in order, so the output has the
input's frame count and frame rate.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator, Sequence
from pathlib import Path

import cv2
import numpy as np
from scenedetect import ContentDetector, FrameTimecode

from .context import JobContext
from .frame_plan import FramePlan
from .schema import LongReframeInput, ReframeInput
from .tasks import Source, TaskJob, clip, reframe_samples, temporal_plan
from .video_io import VideoInfo, iter_frames, pick_frames

MIN_SCENE_FRAMES = 15  # PySceneDetect's default min_scene_len
DETECT_WIDTH = 256  # PySceneDetect's default: frames are shrunk by an integer factor to at least this width
MAX_LOGGED = 20  # scenes the job log lists


def detect_scenes(path: Path, info: VideoInfo, threshold: float) -> list[tuple[int, int]]:
    """The scenes of the video at ``path`` as ``[start, stop)`` frame ranges covering every frame, in order."""
    detector = ContentDetector(threshold=threshold, min_scene_len=MIN_SCENE_FRAMES)
    factor = max(1, info.width // DETECT_WIDTH)
    size = (info.width // factor, info.height // factor)
    cuts: list[int] = []
    last = 0
    for i, frame in enumerate(iter_frames(path)):
        small = frame if factor == 1 else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        found = detector.process_frame(FrameTimecode(i, info.fps), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        cuts += [cut.frame_num for cut in found]
        last = i
    cuts += [cut.frame_num for cut in detector.post_process(FrameTimecode(last, info.fps))]
    edges = [0, *sorted({c for c in cuts if 0 < c <= last}), last + 1]
    return list(itertools.pairwise(edges))


def describe_scenes(scenes: Sequence[tuple[int, int]], threshold: float) -> str:
    """The job log's account of the scenes found."""
    shown = ", ".join(f"{a}-{b - 1}" for a, b in scenes[:MAX_LOGGED])
    return (
        f"{len(scenes)} scene{'s' if len(scenes) != 1 else ''} found (scene_threshold {threshold:g}), frames "
        f"{shown}{', ...' if len(scenes) > MAX_LOGGED else ''}; each is reframed on its own"
    )


def scene_sources(
    inp: ReframeInput,
    job: TaskJob,
    workdir: Path,
    ctx: JobContext,
    video_path: Path,
    info: VideoInfo,
    scenes: Sequence[tuple[int, int]],
    nvdec_gpu: int | None = None,
) -> list[Source]:
    """Each scene as a clip of its own (its frames at the input's rate, its own bars and placement), the clips
    reading the input through one decoder (on ``nvdec_gpu``'s NVDEC, or the CPU), forward, as the job takes their
    frames (``tasks.Source``)."""
    plans = [
        FramePlan(num_frames=b - a, fps=info.fps, source_indices=list(range(a, b)), held_frames=0) for a, b in scenes
    ]
    indices = []
    for plan in plans:
        timing = temporal_plan(inp, plan.num_frames, plan.fps)
        indices.append([plan.source_indices[j] for j in timing.control_indices])
    samples = grouped_frames(video_path, [[scene[p] for p in reframe_samples(len(scene))] for scene in indices])
    shared = pick_frames(video_path, [i for scene in indices for i in scene], nvdec_gpu=nvdec_gpu)
    clips: list[Source] = []
    try:
        for k, (plan, scene, (a, b)) in enumerate(zip(plans, indices, scenes, strict=True)):
            source = clip(
                inp,
                job,
                workdir,
                ctx,
                video_path,
                info,
                plan,
                frames=itertools.islice(shared, len(scene)),
                samples=next(samples),
                nvdec_gpu=nvdec_gpu,
            )
            source.decoders.append(shared)
            source.notes[:] = [f"scene {k + 1}/{len(scenes)} (frames {a}-{b - 1}): {note}" for note in source.notes]
            clips.append(source)
    except BaseException:
        shared.close()
        raise
    finally:
        samples.close()
    return clips


def scene_input(inp: LongReframeInput) -> ReframeInput:
    """The reframe request each scene runs as: the same fields, the scene's own frames at the input's frame rate."""
    fields = inp.model_dump(exclude={"scene_threshold"})
    return ReframeInput.model_validate(
        {**fields, "match_input_num_frames": True, "match_input_frames_per_second": True}
    )


def grouped_frames(path: Path, groups: Sequence[Sequence[int]]) -> Generator[list[np.ndarray], None, None]:
    """The frames at each group's indices (groups in order, indices increasing across them), one group at a time
    from one decoding pass: the bar detection samples of every scene without holding more than one scene's."""
    frames = pick_frames(path, [i for group in groups for i in group])
    try:
        for group in groups:
            yield [next(frames) for _ in group]
    finally:
        frames.close()
