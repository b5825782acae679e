"""generate() end to end on tiny random weights: sizes, frame counts, fps, seeds, and equality with diffusers."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanVACEPipeline
from PIL import Image

from pipelines.encode import encode_video
from pipelines.errors import InputError, JobCancelled
from pipelines.generate import generate
from pipelines.hooks import JobHooks
from pipelines.interpolation import weights_path
from pipelines.loading import ModelManager
from pipelines.schema import DEFAULT_NEGATIVE_PROMPT, VaceInput, VaceOutput
from pipelines.video_io import probe_video, read_frames
from weights.tiny.film import build_tiny_film
from weights.tiny.samples import pose_frames

FAST = {"num_inference_steps": 2, "acceleration": "none"}


def run_job(
    models: ModelManager,
    tmp_path: Path,
    model: str = "wan-vace-14b",
    task: str = "pose",
    hooks: JobHooks | None = None,
    **fields,
) -> VaceOutput:
    """Run generate() with files published into ``tmp_path/out``; URLs are the published paths."""
    out_dir = tmp_path / "out"
    out_dir.mkdir(parents=True, exist_ok=True)

    def publish(path: Path, _content_type: str) -> str:
        target = out_dir / path.name
        path.replace(target)
        return str(target)

    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    inp = VaceInput(**{"prompt": "a person dancing", **FAST, **fields})
    return generate(inp, task=task, model=model, manager=models, workdir=work, publish=publish, hooks=hooks)


def zip_frames(url: str) -> np.ndarray:
    with zipfile.ZipFile(url) as zf:
        names = sorted(zf.namelist())
        return np.stack([np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n in names])


@pytest.mark.parametrize(
    "model,task,sampler,quality,write_mode,fps,seed",
    [
        ("wan-vace-14b", "pose", "unipc", "high", "balanced", 16, 11),
        ("wan-vace-14b", "depth", "dpm++", "low", "fast", 24, None),
        ("wan-22-vace-fun-a14b", "pose", "euler", "maximum", "small", 16, 11),
        ("wan-22-vace-fun-a14b", "depth", "unipc", "medium", "balanced", 8, 11),
    ],
)
def test_families_tasks_samplers_and_encodings(
    models, tmp_path, pose_video, depth_video, model, task, sampler, quality, write_mode, fps, seed
):
    video = pose_video if task == "pose" else depth_video
    log: list[str] = []
    out = run_job(
        models,
        tmp_path,
        model,
        task,
        hooks=JobHooks(log=log.append),
        video_url=str(video),
        num_frames=17,
        frames_per_second=fps,
        sampler=sampler,
        video_quality=quality,
        video_write_mode=write_mode,
        seed=seed,
    )
    info = probe_video(Path(out.video.url))
    assert (info.width, info.height, info.num_frames) == (416, 240, 17)
    assert info.fps == pytest.approx(fps)
    assert (out.video.width, out.video.height, out.video.num_frames, out.video.fps) == (416, 240, 17, fps)
    assert out.video.duration == pytest.approx(17 / fps)
    assert out.video.file_size == Path(out.video.url).stat().st_size
    assert out.video.content_type == "video/mp4"
    assert out.seed == seed if seed is not None else 0 <= out.seed < 2**31  # a random seed is always returned
    assert any(f"seed {out.seed}" in line for line in log)
    assert out.prompt == "a person dancing"
    assert out.frames_zip is None


def test_auto_resolution_follows_a_portrait_input(models, tmp_path):
    portrait = tmp_path / "portrait.mp4"
    encode_video(pose_frames(144, 256, 17, 16), portrait, 16)
    out = run_job(models, tmp_path, video_url=str(portrait), num_frames=17)
    assert (out.video.width, out.video.height) == (240, 416)


def test_named_resolution_and_aspect_ratio(models, tmp_path, pose_video):
    out = run_job(models, tmp_path, video_url=str(pose_video), num_frames=17, resolution="240p", aspect_ratio="1:1")
    info = probe_video(Path(out.video.url))
    assert (info.width, info.height) == (320, 320)


def test_match_input_frames_and_fps(models, tmp_path):
    clip = tmp_path / "clip24.mp4"
    encode_video(pose_frames(416, 240, 30, 24), clip, 24)
    out = run_job(
        models, tmp_path, video_url=str(clip), match_input_num_frames=True, match_input_frames_per_second=True
    )
    info = probe_video(Path(out.video.url))
    assert info.num_frames == 30 and out.video.num_frames == 30  # exactly the input's: 33 generated, 3 cut
    assert info.fps == pytest.approx(24)


def test_longest_video_241_frames(models, tmp_path, pose_video):
    out = run_job(models, tmp_path, video_url=str(pose_video), num_frames=241, video_write_mode="fast")
    info = probe_video(Path(out.video.url))
    assert info.num_frames == 241 and out.video.num_frames == 241
    assert out.video.duration == pytest.approx(241 / 16)


def test_seed_reproducibility_and_equality_with_plain_diffusers(models, tmp_path, tiny_weights, pose_video):
    common = {"video_url": str(pose_video), "num_frames": 17, "return_frames_zip": True}
    a = run_job(models, tmp_path / "a", seed=7, **common)
    b = run_job(models, tmp_path / "b", seed=7, **common)
    c = run_job(models, tmp_path / "c", seed=8, **common)
    frames_a, frames_b, frames_c = (zip_frames(o.frames_zip.url) for o in (a, b, c))
    assert frames_a.shape == (17, 240, 416, 3)
    assert np.array_equal(frames_a, frames_b)
    assert np.abs(frames_a.astype(int) - frames_c.astype(int)).mean() > 1.0

    # The same job as a direct diffusers call, loaded independently of our loader.
    pipe = WanVACEPipeline.from_pretrained(tiny_weights / "wan2.1-vace-14b")
    pipe.scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=5.0
    )
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(
        prompt="a person dancing",
        negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        video=[Image.fromarray(f) for f in read_frames(pose_video, range(17))],
        height=240,
        width=416,
        num_frames=17,
        num_inference_steps=2,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    ).frames[0]
    assert np.array_equal(frames_a, np.clip(np.round(direct * 255.0), 0, 255).astype(np.uint8))


def test_reference_images_and_first_last_frames(models, tmp_path, pose_video, monkeypatch):
    ref = tmp_path / "ref.png"
    Image.new("RGB", (100, 160), (200, 30, 30)).save(ref)
    first = tmp_path / "first.png"
    rgba = np.zeros((240, 416, 4), np.uint8)
    rgba[:, :208] = (30, 200, 30, 255)  # right half fully transparent
    Image.fromarray(rgba, "RGBA").save(first)
    last = tmp_path / "last.png"
    Image.new("RGB", (416, 240), (30, 30, 200)).save(last)
    calls: list[dict] = []
    pipeline_call = WanVACEPipeline.__call__

    def recording_call(self, *args, **kwargs):
        calls.append(kwargs)
        return pipeline_call(self, *args, **kwargs)

    monkeypatch.setattr(WanVACEPipeline, "__call__", recording_call)
    common = {"video_url": str(pose_video), "num_frames": 17, "return_frames_zip": True, "seed": 3}
    plain = run_job(models, tmp_path / "plain", **common)
    refs = run_job(models, tmp_path / "refs", ref_image_urls=[str(ref), str(ref)], **common)
    ends = run_job(
        models,
        tmp_path / "ends",
        first_frame_url=str(first),
        last_frame_url=str(last),
        transparency_mode="white",
        **common,
    )
    outputs = [zip_frames(o.frames_zip.url) for o in (plain, refs, ends)]
    # Reference images become extra latent frames that are removed before decoding.
    assert [probe_video(Path(o.video.url)).num_frames for o in (plain, refs, ends)] == [17, 17, 17]
    assert all(f.shape == (17, 240, 416, 3) for f in outputs)
    # Each input changes the generated video (same seed): none of them is ignored on the way to the pipeline.
    assert np.abs(outputs[1].astype(int) - outputs[0]).mean() > 0.5
    assert np.abs(outputs[2].astype(int) - outputs[0]).mean() > 0.5

    given_plain, given_refs, given_ends = calls
    assert given_plain["reference_images"] is None
    assert [np.asarray(r).tolist()[0][0] for r in given_refs["reference_images"]] == [[200, 30, 30]] * 2
    video, mask = given_ends["video"], [np.asarray(m) for m in given_ends["mask"]]
    first_given, last_given = np.asarray(video[0]), np.asarray(video[16])
    assert (first_given[:, :208] == (30, 200, 30)).all() and (first_given[:, 210:] == 255).all()  # white fill
    assert (last_given == (30, 30, 200)).all()
    assert mask[0].max() == 0 and mask[16].max() == 0  # kept (black), the frames between generated (white)
    assert all(m.min() == 255 for m in mask[1:16])
    pairs = zip(video[1:16], given_plain["video"][1:16], strict=True)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)


def test_progress_and_cancel_at_the_next_step(models, tmp_path, pose_video):
    steps: list[tuple[int, int]] = []
    hooks = JobHooks(step=lambda i, n: steps.append((i, n)), cancelled=lambda: len(steps) >= 2)
    with pytest.raises(JobCancelled):
        run_job(models, tmp_path, video_url=str(pose_video), num_frames=17, num_inference_steps=6, hooks=hooks)
    assert steps == [(1, 6), (2, 6)]
    assert not list((tmp_path / "out").iterdir())  # nothing published


@pytest.mark.parametrize(
    "fields,loc,kind",
    [
        ({"video_url": "/no/such/video.mp4"}, ("video_url",), "file_download_error"),
        ({"video_url": "NOT_A_VIDEO"}, ("video_url",), "video_decode_error"),
        ({"first_frame_url": "NOT_AN_IMAGE"}, ("first_frame_url",), "image_load_error"),
        ({"ref_image_urls": ["AN_IMAGE", "NOT_AN_IMAGE"]}, ("ref_image_urls", 1), "image_load_error"),
        ({"preprocess": True, "annotator": "midas"}, ("annotator",), "value_error"),
    ],
)
def test_bad_media_gives_a_clear_input_error(models, tmp_path, pose_video, fields, loc, kind):
    junk = tmp_path / "junk.txt"
    junk.write_text("this is not media")
    image = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(image)
    swap = {"NOT_A_VIDEO": str(junk), "NOT_AN_IMAGE": str(junk), "AN_IMAGE": str(image)}
    resolved = {
        k: ([swap.get(x, x) for x in v] if isinstance(v, list) else swap.get(v, v) if isinstance(v, str) else v)
        for k, v in {"video_url": str(pose_video), **fields}.items()
    }
    with pytest.raises(InputError) as err:
        run_job(models, tmp_path, **resolved)
    assert err.value.loc == loc and err.value.type == kind
    assert err.value.detail()[0]["loc"] == ["body", *loc]


def test_interpolated_frames_keep_the_generated_ones_in_place(models, tmp_path, pose_video):
    common = {"video_url": str(pose_video), "num_frames": 17, "return_frames_zip": True, "seed": 9}
    plain = run_job(models, tmp_path / "plain", **common)
    doubled = run_job(models, tmp_path / "rife", num_interpolated_frames=2, interpolator_model="rife", **common)
    info = probe_video(Path(doubled.video.url))
    assert (info.num_frames, info.fps) == (49, 48)  # (17 - 1) * 3 + 1 frames at 16 * 3 fps: same duration
    assert (info.num_frames - 1) / info.fps == pytest.approx((17 - 1) / 16)  # the same span of time
    frames_plain, frames_doubled = zip_frames(plain.frames_zip.url), zip_frames(doubled.frames_zip.url)
    assert len(frames_doubled) == 49
    assert np.array_equal(frames_doubled[::3], frames_plain)


def test_temporal_downsampling_generates_fewer_frames_and_restores_the_length(models, tmp_path, pose_video):
    log: list[str] = []
    out = run_job(
        models,
        tmp_path,
        hooks=JobHooks(log=log.append),
        video_url=str(pose_video),
        num_frames=49,
        temporal_downsample_factor=2,
        interpolator_model="film",
    )
    info = probe_video(Path(out.video.url))
    assert (info.num_frames, info.fps) == (49, 16)
    assert any("generating 17 frames (one control frame in 3)" in line for line in log)


def test_auto_downsample_picks_the_smallest_factor_that_fits(models, tmp_path, pose_video):
    log: list[str] = []
    out = run_job(
        models,
        tmp_path,
        hooks=JobHooks(log=log.append),
        video_url=str(pose_video),
        num_frames=97,
        enable_auto_downsample=True,
        auto_downsample_min_fps=8,
        interpolator_model="film",
    )
    assert (out.video.num_frames, out.video.fps) == (97, 16)
    assert any("f=1" in line for line in log)
    assert any("generating 49 frames" in line for line in log)


@pytest.mark.parametrize(
    "model,task,annotator",
    [("wan-vace-14b", "pose", None), ("wan-22-vace-fun-a14b", "depth", "depth_anything_v2")],
)
def test_preprocess_turns_the_input_into_the_control_video(models, tmp_path, model, task, annotator):
    rgb = tmp_path / "rgb.mp4"
    gradient = np.linspace(0, 255, 416, dtype=np.uint8)[None, :, None].repeat(240, 0).repeat(3, 2)
    encode_video([np.roll(gradient, 8 * i, axis=1) for i in range(17)], rgb, 16)
    log: list[str] = []
    out = run_job(
        models,
        tmp_path,
        model,
        task,
        hooks=JobHooks(log=log.append),
        video_url=str(rgb),
        num_frames=17,
        preprocess=True,
        annotator=annotator,
    )
    assert (out.video.num_frames, out.video.width, out.video.height) == (17, 416, 240)
    expected = "DWPosePreprocessor" if task == "pose" else "DepthAnythingPreprocessor"
    assert any(f"into {task} control ({expected})" in line for line in log)


def test_film_v100_file_refuses_a_count_it_cannot_make_before_denoising(tiny_weights, tmp_path, pose_video):
    """The v1.0.0 FILM file makes midpoints only: n = 2 between frames is refused as an input error up front."""
    weights = tmp_path / "weights"
    weights.mkdir()
    for folder in tiny_weights.iterdir():
        if folder.name != "interpolation":
            (weights / folder.name).symlink_to(folder)
    build_tiny_film(weights_path("film", weights), layout="v1.0.0")
    log: list[str] = []
    with pytest.raises(InputError, match=r"v1\.0\.0 layout") as err:
        run_job(
            ModelManager(weights, device="cpu"),
            tmp_path,
            hooks=JobHooks(log=log.append),
            video_url=str(pose_video),
            num_frames=17,
            num_interpolated_frames=2,
            interpolator_model="film",
        )
    assert err.value.loc == ("interpolator_model",)
    assert not any("denoising" in line for line in log)
