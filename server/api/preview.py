"""The playground's preview of what a job would condition the model on, before it is run.

``POST /playground/preview?endpoint=ID`` takes an endpoint's request body and answers with what its job would make
of it: the output size, the frame plan, the job log's notes (the mask mode, the bars trimmed, where the source lands
on the canvas, what is ignored) and one frame from the middle of the clip with its mask (white = generated), as PNG
data URIs the page overlays: the mask over the video for inpainting, the source on its grown canvas for
outpainting, the trimmed and zoomed picture on the new frame for reframe. A mask image on a server that tracks masks
is shown on the first frame instead, as the job grows it there: what the tracker makes of the later frames only the
job itself can show (its ``mask_video``). It runs the job's own steps
(``check_inputs`` and ``pipelines.tasks.prepare``: the same fetch rules, limits, frame plan, masks and geometry), so a
request the job would refuse is refused here with the same 422 naming the field (a mask that is all black, too
short, of another shape), and nothing is drawn twice in JavaScript. A long reframe finds its scenes as the job does
and shows the scene around the middle of the video, with that scene's own framing. It needs an API key like the job
routes, loads no model and keeps nothing.
"""

from __future__ import annotations

import base64
import io
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydantic import ValidationError

from pipelines.checks import check_inputs
from pipelines.conditioning import GENERATE, fit_frame
from pipelines.context import JobContext
from pipelines.masks import expand_mask, fitted, mask_prompt
from pipelines.registry import APP_TASKS, APPS, ENDPOINT_IDS, EndpointTask, endpoint_id, input_model
from pipelines.scenes import describe_scenes, detect_scenes, scene_input, scene_sources
from pipelines.schema import EndpointInput, LongReframeInput
from pipelines.tasks import PLACEHOLDER_PROMPT, fetch_video, frame_images, prepare

from ..fal.failures import RequestFailed, failure_of
from .deps import JobContextDep, SettingsDep

router = APIRouter(include_in_schema=False)
_ENDPOINTS: dict[str, tuple[str, EndpointTask]] = {endpoint_id(a, t): (a, t) for a in APPS for t in APP_TASKS[a]}


@dataclass(frozen=True)
class FirstFrameOfTracking:
    """What the preview can show of a mask the job will track without running the tracker: the first frame's mask,
    which is the mask image grown as the job grows every tracked mask (``pipelines.tracking``), for every frame."""

    expand_ratio: float

    def masks(
        self,
        frames: Sequence[np.ndarray],
        plane: np.ndarray,
        field: str,
        width: int,
        height: int,
        log: Callable[[str], None],
    ) -> list[np.ndarray]:
        video_size = (frames[0].shape[1], frames[0].shape[0])
        first = fitted(expand_mask(mask_prompt(plane, video_size, field), self.expand_ratio), video_size, width, height)
        log(
            f"mask tracking: the preview shows the first frame, where the mask image applies grown by "
            f"{self.expand_ratio:g} of its box per side; the job follows it through the clip with SAM2"
        )
        return [first] * len(frames)


def _png(array: np.ndarray | Image.Image) -> str:
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@router.post("/playground/preview")
async def preview(
    ctx: JobContextDep,
    settings: SettingsDep,
    endpoint: Annotated[str, Query()],
    body: Annotated[dict[str, Any], Body()],
) -> dict[str, Any]:
    """What a job of ``endpoint`` with request ``body`` would condition the model on (module docstring); a prompt
    may be left out, as it plays no part in that."""
    if endpoint not in _ENDPOINTS:
        raise HTTPException(404, f"unknown endpoint {endpoint[:100]}; this server serves {', '.join(ENDPOINT_IDS)}")
    app, task = _ENDPOINTS[endpoint]
    if not str(body.get("prompt") or "").strip():
        body = {**body, "prompt": PLACEHOLDER_PROMPT}
    try:
        inp = input_model(app, task).model_validate(body)
    except ValidationError as exc:
        raise RequestFailed(failure_of(exc)) from None
    runtime = settings.runtime
    tracking = FirstFrameOfTracking(runtime.mask_expand_ratio) if runtime.mask_tracking == "track" else None
    return await run_in_threadpool(_preview, inp, task, APPS[app], ctx, tracking)


def _preview(
    inp: EndpointInput, task: EndpointTask, model: str, ctx: JobContext, tracking: FirstFrameOfTracking | None
) -> dict[str, Any]:
    job = check_inputs(inp, task, ctx, None, model=model)
    notes = list(job.notes)
    with tempfile.TemporaryDirectory(prefix="vace-preview-") as workdir:
        if isinstance(inp, LongReframeInput):
            clip_inp = scene_input(inp)
            video_path, info = fetch_video(clip_inp, Path(workdir), ctx)
            scenes = detect_scenes(video_path, info, inp.scene_threshold)
            notes.append(describe_scenes(scenes, inp.scene_threshold))
            scene = next(s for s in scenes if s[0] <= info.num_frames // 2 < s[1])
            source = scene_sources(clip_inp, job, Path(workdir), ctx, video_path, info, [scene])[0]
        else:
            first, last = frame_images(inp, Path(workdir), ctx)
            source = prepare(inp, job, Path(workdir), ctx, first or last, tracking=tracking)
        shown = 0 if source.mask_mode == "track" else source.timing.generate_frames // 2
        try:
            source.skip(shown)
            frames, masks = source.take(1)
        finally:
            source.close()
    timing = source.timing
    answer: dict[str, Any] = {
        "recipe": job.recipe,
        "width": source.width,
        "height": source.height,
        "generated_frames": timing.generate_frames,
        "output_frames": timing.output_frames,
        "output_fps": timing.output_fps,
        "notes": [*notes, *source.notes, *timing.notes],
    }
    if source.info is not None:
        mask = masks[0] if masks is not None else np.full((source.height, source.width), GENERATE, np.uint8)
        answer |= {
            "frame_index": shown,
            "frame": _png(fit_frame(frames[0], source.width, source.height)),
            "mask": _png(mask),
            "generated_share": float(np.mean(mask == GENERATE)),
        }
    return answer
