"""The VACE family through ``generate()`` on tiny random weights: what each endpoint conditions the model on.

Each job's conditioning is recorded as ``generate()`` builds it (the real ``build_conditioning``, called through a
recorder in ``pipelines.tasks``), so the tests see exactly the frames and masks the pipeline got: inpainting masks
that follow the frame plan through temporal downsampling, a mask image tracked through the planned frames (and
returned as the job's mask video) or, on a server that does not track, one static mask image, the outpainting
canvas, the reframe
of a letterboxed clip (whose kept area has the trimmed picture's shape, not the whole frame's), and
first-frame-to-video without a video.
Around them, the stages that run on pose/depth run here too: interpolation, LoRAs, the step cache, the safety
checker, prompt expansion, a memory mode and a job group.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from frames_match import assert_same_frames
from PIL import Image

from pipelines import tasks as tasks_module
from pipelines.checks import check_inputs
from pipelines.conditioning import GENERATE, GREY, KEEP, Conditioning
from pipelines.context import JobContext
from pipelines.errors import InputError
from pipelines.generate import generate
from pipelines.group import job_group
from pipelines.hooks import JobHooks
from pipelines.loading import ModelManager
from pipelines.outpaint import plan_outpaint
from pipelines.parallel import ParallelSpec
from pipelines.registry import ENDPOINT_TASKS, endpoint_task, input_model
from pipelines.runtime import RuntimeConfig
from pipelines.schema import VaceOutput
from pipelines.video_io import probe_video, read_frames
from weights.tiny.samples import SAMPLES, write_sample

FAST = {"num_inference_steps": 2, "acceleration": "none", "seed": 3}
W, H = 416, 240


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """33-frame 416x240 clips at 16 fps (the depth sample, a mask following its sphere), a 17-frame letterboxed one,
    a mask image and a first frame image."""
    folder = tmp_path_factory.mktemp("family-clips")
    box = np.zeros((H, W), np.uint8)
    box[60:180, 100:300] = 255
    Image.fromarray(box).save(folder / "box.png")
    Image.fromarray(SAMPLES["depth"](W, H, 1, 16)[0]).save(folder / "first.png")
    return {
        "video": str(write_sample("depth", folder / "video.mp4")),
        "mask": str(write_sample("mask", folder / "mask.mp4")),
        "letterbox": str(write_sample("letterbox", folder / "letterbox.mp4", num_frames=17)),
        "box": str(folder / "box.png"),
        "first": str(folder / "first.png"),
    }


class Recorded:
    """A job's output, the conditioning ``generate()`` built for it and its log."""

    def __init__(self, out: VaceOutput, cond: Conditioning, log: list[str]) -> None:
        self.out, self.cond, self.log = out, cond, log
        self.masks = np.stack([np.asarray(m) for m in cond.mask])
        self.video = np.stack([np.asarray(f) for f in cond.video])

    def logged(self, start: str) -> str:
        found = [line for line in self.log if line.startswith(start)]
        assert found, f"no log line starts with {start!r}: {self.log}"
        return found[0]


def run(
    models: ModelManager,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    task: str,
    model: str = "wan-vace-14b",
    **fields: Any,
) -> Recorded:
    """One job of the endpoint ``task`` ("" = base) on ``model``, its conditioning recorded."""
    built: list[Conditioning] = []
    real = tasks_module.build_conditioning

    def recording(*args: Any, **kwargs: Any) -> Conditioning:
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(tasks_module, "build_conditioning", recording)
    app = {"wan-vace-14b": "fal-ai/wan-vace-14b", "wan-22-vace-fun-a14b": "fal-ai/wan-22-vace-fun-a14b"}[model]
    inp = input_model(app, task).model_validate({"prompt": "a ball in a room", **FAST, **fields})
    workdir = tmp_path / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    out = generate(
        inp,
        task=task,
        model=model,
        manager=models,
        workdir=workdir,
        publish=lambda p, _t: str(p),
        hooks=JobHooks(log=log.append),
    )
    return Recorded(out, built[0], log)


def video_shape(out: VaceOutput) -> tuple[int, int, int, float]:
    info = probe_video(Path(out.video.url))
    return info.width, info.height, info.num_frames, info.fps


def test_an_inpainting_mask_video_follows_the_frame_plan_through_downsampling(models, clips, tmp_path, monkeypatch):
    """33 frames with temporal_downsample_factor=1: the model gets video frames 0, 2, ..., 32 and mask frames 0, 2,
    ..., 32 with them (the mask follows the sphere, so any other pairing is visibly off); what the mask marks is grey
    in the video. FILM interpolates the output back to 33 frames."""
    job = run(
        models,
        tmp_path,
        monkeypatch,
        "inpainting",
        video_url=clips["video"],
        mask_video_url=clips["mask"],
        num_frames=33,
        temporal_downsample_factor=1,
    )
    assert video_shape(job.out) == (W, H, 33, 16)
    assert len(job.masks) == 17 and set(np.unique(job.masks)) == {KEEP, GENERATE}
    drawn = [frame[..., 0] >= 128 for frame in SAMPLES["mask"](W, H, 33, 16)]
    paired = [np.mean((mask == GENERATE) == drawn[2 * i]) for i, mask in enumerate(job.masks)]
    by_index = [np.mean((mask == GENERATE) == drawn[i]) for i, mask in enumerate(job.masks)]
    assert min(paired) > 0.995 and np.mean(by_index) < 0.95, (paired, by_index)
    assert (job.video[job.masks == GENERATE] == GREY).all()
    assert (job.video[job.masks == KEEP] != GREY).any()
    assert job.logged("inpainting: mask mode per frame")
    assert job.logged("generating 17 frames (one control frame in 2)")


def test_a_mask_image_on_two_experts_with_loras_step_cache_safety_and_expansion(
    tiny_weights, clips, tmp_path, monkeypatch
):
    """On a server that does not track masks (``--mask-tracking static``): one mask image for every frame (VACE's
    static mask mode, said in the log) and no mask video, on the two-expert model with the other per-job stages on:
    a LoRA, the step cache, the safety checker and prompt expansion; preprocess does nothing on inpainting and the
    log says so."""
    manager = ModelManager(
        tiny_weights,
        device="cpu",
        runtime=RuntimeConfig(prompt_expander="local", expander_max_tokens=8, mask_tracking="static"),
    )
    job = run(
        manager,
        tmp_path,
        monkeypatch,
        "inpainting",
        model="wan-22-vace-fun-a14b",
        video_url=clips["video"],
        mask_image_url=clips["box"],
        num_frames=17,
        preprocess=True,
        loras=[{"path": "tiny-wan22"}],
        acceleration="regular",
        num_inference_steps=4,
        enable_safety_checker=True,
        enable_prompt_expansion=True,
    )
    assert video_shape(job.out) == (W, H, 17, 16)
    assert all(m is job.cond.mask[0] for m in job.cond.mask)  # one mask image, one mask for every frame
    box = job.masks[0] == GENERATE
    assert box[60:180, 100:300].all() and box.sum() == 120 * 200
    assert job.out.mask_video is None
    for line in (
        "preprocess does nothing on inpainting",
        "inpainting: mask mode static (one mask image for every",
        "LoRA 0:",
        "step cache reused",
        "safety check: the inputs passed",
        "prompt expanded by local",
        "safety check: the generated video passed",
    ):
        job.logged(line)
    assert job.out.prompt != "a ball in a room"
    assert not any(line.startswith("preprocessing") for line in job.log)


def test_a_mask_image_is_tracked_through_the_planned_frames_and_returned_as_a_mask_video(
    models, clips, tmp_path, monkeypatch
):
    """The default server tracks: SAM2 follows the box over the 17 frames the job generates from (that they are the
    planned frames, also through temporal downsampling, is ``tests/test_mask_tracking.py``'s), every mask grown by the
    default 0.25 of its box per side (the first one is the drawn box grown: 50 px left and right, 30 up and down, where
    half the distance to the edge allows); what the masks mark is grey in the video; the masks come back as
    ``mask_video``, one frame per generated frame at the generation frame rate."""
    job = run(
        models,
        tmp_path,
        monkeypatch,
        "inpainting",
        video_url=clips["video"],
        mask_image_url=clips["box"],
        mask_video_url=None,
        num_frames=17,
    )
    assert len(job.masks) == 17
    grown = np.zeros((H, W), bool)
    grown[30:210, 50:350] = True
    assert np.array_equal(job.masks[0] == GENERATE, grown)
    assert (job.video[job.masks == GENERATE] == GREY).all()
    assert job.logged("mask tracking: sam2.1-hiera-small followed the first frame's mask through 17 frames")
    assert job.logged("inpainting: mask mode track (the mask image marks the first frame")
    mask_video = job.out.mask_video
    assert mask_video is not None and (mask_video.num_frames, mask_video.fps) == (17, 16.0)
    decoded = np.stack([frame[..., 0] >= 128 for frame in read_frames(Path(mask_video.url), list(range(17)))])
    assert np.mean(decoded == (job.masks == GENERATE)) > 0.995
    assert video_shape(job.out) == (W, H, 17, 16)


def test_a_server_that_tracks_refuses_a_mask_image_without_its_tracker(tmp_path):
    """No tracker weights: a mask image is refused up front naming the download (not applied to every frame
    instead); a mask video is fine, and a server that does not track takes the image."""
    inp = input_model("fal-ai/wan-22-vace-fun-a14b", "inpainting").model_validate(
        {"prompt": "p", "video_url": "https://e/v.mp4", "mask_image_url": "https://e/m.png"}
    )
    with pytest.raises(InputError) as err:
        check_inputs(inp, "inpainting", JobContext(), ModelManager(tmp_path, device="cpu"), model="wan-vace-14b")
    assert err.value.loc == ("mask_image_url",) and err.value.type == "not_supported"
    assert "`vace weights download --models sam2.1-hiera-small`" in err.value.msg
    assert "--mask-tracking static" in err.value.msg
    static = ModelManager(tmp_path, device="cpu", runtime=RuntimeConfig(mask_tracking="static"))
    assert check_inputs(inp, "inpainting", JobContext(), static, model="wan-vace-14b").mask.field == "mask_image_url"
    video = inp.model_copy(update={"mask_image_url": None, "mask_video_url": "https://e/m.mp4"})
    check_inputs(video, "inpainting", JobContext(), ModelManager(tmp_path, device="cpu"), model="wan-vace-14b")


def test_outpainting_places_the_source_on_the_grown_canvas_in_an_offload_mode(
    tiny_weights, clips, tmp_path, monkeypatch
):
    """Left and bottom grow by a quarter: the 520x300 canvas is scaled into the 240p tier (416x240), the source kept
    at the top right (333x192 at x=83) and the rest generated; in group_offload memory mode."""
    manager = ModelManager(tiny_weights, device="cpu", runtime=RuntimeConfig(memory_mode="group_offload"))
    job = run(
        manager,
        tmp_path,
        monkeypatch,
        "outpainting",
        video_url=clips["video"],
        num_frames=17,
        expand_left=True,
        expand_bottom=True,
        resolution="240p",
    )
    place = plan_outpaint(W, H, ("left", "bottom"), 0.25, "240p", "auto")
    assert (place.x, place.y, place.w, place.h, place.width, place.height) == (83, 0, 333, 192, W, H)
    assert video_shape(job.out) == (W, H, 17, 16)
    assert (job.masks == place.mask()).all()
    assert (job.masks[:, :, :83] == GENERATE).all() and (job.masks[:, 192:] == GENERATE).all()
    assert (job.masks[:, :192, 83:] == KEEP).all()
    assert (job.video[:, :, :83] == GREY).all() and job.video[:, :192, 83:].std() > 10  # the picture is there
    assert job.logged("outpainting: left, bottom grow by 0.25")


def test_reframe_trims_a_letterboxed_clip_and_fits_the_picture(models, clips, tmp_path, monkeypatch):
    """A 416x240 clip with 30 px bars, reframed to 1:1 at 240p (320x320): the bars are found and cut, so the kept
    area is the 416x180 picture fitted to 320 wide (138 rows), not the whole frame (185 rows); fal's reframe defaults
    (match_input_*) give the clip's own 17 frames at 16 fps, and the prompt may be left out."""
    job = run(
        models,
        tmp_path,
        monkeypatch,
        "reframe",
        model="wan-22-vace-fun-a14b",
        prompt="",
        video_url=clips["letterbox"],
        aspect_ratio="1:1",
        resolution="240p",
    )
    assert video_shape(job.out) == (320, 320, 17, 16)
    rows = np.flatnonzero((job.masks[0] == KEEP).any(axis=1))
    cols = np.flatnonzero((job.masks[0] == KEEP).any(axis=0))
    assert (rows[0], len(rows), len(cols)) == (91, 138, 320)
    assert (job.video[0][:91] == GREY).all() and job.video[0][91:229].min() >= 20  # no bar left in the picture
    assert job.logged("reframe: bars trimmed (top 30, bottom 30, left 0, right 0 px)")
    assert job.out.prompt == ""


def test_the_base_endpoint_without_video_is_first_frame_to_video(models, clips, tmp_path, monkeypatch):
    """No video_url, a first frame: grey frames under a white mask, the first frame kept (black mask); auto size
    follows the first frame's shape; match_input_* have nothing to match and are said to be ignored."""
    job = run(
        models, tmp_path, monkeypatch, "", first_frame_url=clips["first"], num_frames=17, match_input_num_frames=True
    )
    assert video_shape(job.out) == (W, H, 17, 16)
    assert (job.masks[0] == KEEP).all() and (job.masks[1:] == GENERATE).all()
    assert (job.video[1:] == GREY).all() and job.video[0].std() > 10
    job.logged("no video_url: first/last-frame-to-video")
    job.logged("match_input_num_frames ignored: there is no input video to match")
    job.logged("no input video; output 17 frames at 16 fps, 416x240")


def test_what_the_base_endpoint_makes_of_its_task(models):
    """Before any download: the base endpoint's fixed outpainting and reframe values, an annotator checked only where
    preprocess runs an annotator, and a mask without a task that uses it ignored."""

    def resolved(**fields: Any):
        inp = input_model("fal-ai/wan-vace-14b", "").model_validate({"prompt": "p", **fields})
        return check_inputs(inp, "", JobContext(), models, model="wan-vace-14b")

    out = resolved(task="outpainting", video_url="https://e/v.mp4")
    assert (out.recipe, out.sides, out.ratio) == ("outpainting", ("left", "right", "top", "bottom"), 0.25)
    frame = resolved(task="reframe", video_url="https://e/v.mp4", mask_video_url="https://e/m.mp4")
    assert (frame.recipe, frame.trim, frame.zoom) == ("reframe", True, 0.0)
    assert "task=reframe: mask_video_url is ignored (masks apply to task=inpainting)" in frame.notes
    inpaint = resolved(
        task="inpainting",
        video_url="https://e/v.mp4",
        mask_video_url="https://e/m.mp4",
        mask_image_url="https://e/m.png",
        preprocess=True,
        annotator="midas",
    )
    assert inpaint.mask is not None and inpaint.mask.field == "mask_image_url" and inpaint.control_task is None
    with pytest.raises(InputError) as err:
        resolved(task="pose", video_url="https://e/v.mp4", preprocess=True, annotator="midas")
    assert err.value.loc == ("annotator",)
    assert resolved(task="depth", video_url="https://e/v.mp4").control_task == "depth"


def zip_frames(path: str) -> list[bytes]:
    with zipfile.ZipFile(path) as z:
        return [z.read(name) for name in sorted(z.namelist())]


def test_inpainting_on_a_job_group_equals_one_process(tiny_weights, models, clips, tmp_path, monkeypatch):
    """The masked conditioning is what every rank of a job group (ulysses=2) denoises: the frames equal the
    single-process job's within the parallel tests' tolerance."""
    fields = {"video_url": clips["video"], "mask_video_url": clips["mask"], "num_frames": 17, "return_frames_zip": True}
    single = run(models, tmp_path / "single", monkeypatch, "inpainting", **fields)
    with job_group(ParallelSpec.parse("ulysses=2"), tiny_weights, RuntimeConfig()) as group:
        grouped = ModelManager(tiny_weights, device="cpu", runtime=RuntimeConfig(), group=group)
        parallel = run(grouped, tmp_path / "group", monkeypatch, "inpainting", **fields)
    assert parallel.logged("denoising: 2 steps, sampler unipc, shift 5, on 2 devices")
    assert (parallel.masks == single.masks).all()
    assert_same_frames(
        zip_frames(parallel.out.frames_zip.url), zip_frames(single.out.frames_zip.url), "inpainting ulysses=2"
    )


def test_a_stored_task_reads_back_as_its_endpoint_task() -> None:
    assert [endpoint_task(task) for task in ENDPOINT_TASKS] == list(ENDPOINT_TASKS)
    with pytest.raises(ValueError, match="no endpoint task 'posture'"):
        endpoint_task("posture")
