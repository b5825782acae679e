"""Videos longer than one pass, window by window (``pipelines.windows``), on tiny random weights.

The window plan and seeds are pure functions. The jobs run with windows of 17 frames overlapping by 5 (the server
setting's smallest values), so a 33-frame clip is three windows: each job's conditioning is recorded as
``generate()`` builds it (the real ``build_conditioning``, through a recorder in ``pipelines.tasks``), and its
output frames come back through ``return_frames_zip`` (PNG, lossless), so the seams are checked bit for bit.
"""

from __future__ import annotations

import io
import itertools
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from scene_clips import write_three_scenes
from test_resume import Kept

from pipelines import tasks as tasks_module
from pipelines.audio import audio_codec
from pipelines.conditioning import GENERATE, KEEP, Conditioning, fit_frame
from pipelines.context import JobContext
from pipelines.errors import JobCancelled
from pipelines.generate import generate
from pipelines.hooks import JobHooks
from pipelines.loading import ModelManager
from pipelines.reframe import detect_bars, reframe_placement
from pipelines.registry import input_model
from pipelines.scenes import detect_scenes
from pipelines.schema import LongReframeOutput
from pipelines.video_io import probe_video, read_frames
from pipelines.window_outputs import WindowOutputs
from pipelines.windows import Window, WindowSettings, plan_windows, window_seed
from weights.tiny.samples import write_sample

FAST = {"num_inference_steps": 2, "acceleration": "none", "seed": 5, "return_frames_zip": True}
SMALL_WINDOWS = WindowSettings(frames=17, overlap=5)


# The plan -----------------------------------------------------------------------------------------------------------


def test_one_pass_is_one_window_and_a_long_job_overlaps_its_windows() -> None:
    assert plan_windows(81, WindowSettings()) == [Window(0, 0, 81, 0)]
    assert plan_windows(145, WindowSettings()) == [Window(0, 0, 81, 0), Window(1, 64, 145, 17)]
    # The end of the job: a window never runs past it, and is never shorter than the model's 17 frames.
    assert plan_windows(33, SMALL_WINDOWS) == [Window(0, 0, 17, 0), Window(1, 12, 29, 5), Window(2, 16, 33, 13)]
    for total in range(17, 1202, 4):
        windows = plan_windows(total, WindowSettings())
        assert windows[-1].stop == total and windows[0].start == 0
        assert all(w.length % 4 == 1 and 17 <= w.length <= 81 for w in windows)
        assert all(b.start + b.kept == a.stop and b.kept >= 17 for a, b in itertools.pairwise(windows))
        assert sum(w.new for w in windows) == total  # every position generated once


@pytest.mark.parametrize("frames,overlap", [(80, 17), (16, 5), (245, 17), (81, 81), (81, 16), (81, 0)])
def test_window_settings_the_model_cannot_run_are_refused(frames: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="4k\\+1"):
        WindowSettings(frames=frames, overlap=overlap)


def test_window_seeds_are_derived_and_reproducible() -> None:
    assert window_seed(7, 0) == 7  # a one-window job is the single pass it always was
    seeds = [window_seed(7, i) for i in range(1, 50)]
    assert seeds == [window_seed(7, i) for i in range(1, 50)] and len(set(seeds)) == 49
    assert all(0 <= s < 2**63 for s in seeds) and not set(seeds) & {window_seed(8, i) for i in range(1, 50)}


# Jobs -------------------------------------------------------------------------------------------------------------


class Job:
    """A job's output, the conditioning of each of its windows, its output frames (from the zip) and its log."""

    def __init__(self, out: Any, conds: list[Conditioning], log: list[str]) -> None:
        self.out, self.conds, self.log = out, conds, log
        with zipfile.ZipFile(out.frames_zip.url) as archive:
            self.frames = np.stack(
                [np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB")) for n in sorted(archive.namelist())]
            )

    def video(self, i: int) -> np.ndarray:
        return np.stack([np.asarray(f) for f in self.conds[i].video])

    def masks(self, i: int) -> np.ndarray:
        return np.stack([np.asarray(m) for m in self.conds[i].mask])


def run(
    models: ModelManager,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    task: str,
    windows: WindowSettings = SMALL_WINDOWS,
    hooks: JobHooks | None = None,
    app: str = "fal-ai/wan-vace-14b",
    **fields: Any,
) -> Job:
    conds: list[Conditioning] = []
    real = tasks_module.build_conditioning

    def recording(*args: Any, **kwargs: Any) -> Conditioning:
        conds.append(real(*args, **kwargs))
        return conds[-1]

    monkeypatch.setattr(tasks_module, "build_conditioning", recording)
    inp = input_model(app, task).model_validate({"prompt": "a walk", **FAST, **fields})
    workdir = tmp_path / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    hooks = hooks or JobHooks()
    hooks.log = log.append
    out = generate(
        inp,
        task=task,
        model="wan-vace-14b",
        manager=models,
        workdir=workdir,
        publish=lambda p, _t: str(p),
        hooks=hooks,
        ctx=JobContext(windows=windows),
    )
    return Job(out, conds, log)


def frame_times(path: str) -> list[float]:
    """The presentation time of every frame of an encoded video, as ffmpeg's showinfo filter reports them."""
    proc = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", path, "-vf", "showinfo", "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [float(t) for t in re.findall(r"pts_time:([0-9.]+)", proc.stderr)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """33 frames of the walking pose sample, 416x240 at 16 fps."""
    return write_sample("pose", tmp_path_factory.mktemp("long") / "pose33.mp4", num_frames=33)


def test_each_window_continues_the_output_bit_for_bit(models, clip, tmp_path, monkeypatch) -> None:
    """33 frames in windows of 17 overlapping by 5: three windows (0-16, 12-28, 16-32); each later window is
    conditioned on the output's own frames in its overlap (kept: black mask) and generates the rest from the control
    video's frames at those positions (white mask), each position's control frame exactly once; the encoded video
    has the 33 frames the output has, one per 1/16 s. Each finished window is kept, and a second run of the job
    takes them instead of denoising."""
    windows: list[tuple[int, int]] = []
    job = run(
        models,
        tmp_path,
        monkeypatch,
        "pose",
        video_url=str(clip),
        match_input_num_frames=True,
        hooks=JobHooks(window=lambda i, n: windows.append((i, n))),
    )
    assert windows == [(1, 3), (2, 3), (3, 3)] and len(job.conds) == 3
    assert any(line.startswith("33 frames in 3 windows of up to 17") for line in job.log)
    control = [np.asarray(fit_frame(f, 416, 240)) for f in read_frames(clip, list(range(33)))]
    for cond, window in enumerate(plan_windows(33, SMALL_WINDOWS)):
        video, masks = job.video(cond), job.masks(cond)
        assert len(video) == window.length
        assert np.array_equal(video[: window.kept], job.frames[window.start : window.start + window.kept])
        assert (masks[: window.kept] == KEEP).all() and (masks[window.kept :] == GENERATE).all()
        assert np.array_equal(video[window.kept :], np.stack(control[window.start + window.kept : window.stop]))
    assert (job.out.video.num_frames, probe_video(Path(job.out.video.url)).num_frames, len(job.frames)) == (33, 33, 33)
    assert frame_times(job.out.video.url) == pytest.approx([i / 16 for i in range(33)], abs=1e-3)
    # The unit of resume: a second run of the job in the same work directory denoises nothing, takes the three
    # windows the first left there and makes the same frames; another seed is another key.
    assert len(list((tmp_path / "work" / "windows").glob("*/window_*.zip"))) == 3
    again = run(models, tmp_path, monkeypatch, "pose", video_url=str(clip), match_input_num_frames=True)
    assert again.conds == [] and np.array_equal(again.frames, job.frames)
    assert [line for line in again.log if "earlier run" in line] == [
        f"window {i}: its frames from an earlier run of this job are used" for i in (1, 2, 3)
    ]
    identity = {"input": {"video_url": str(clip)}, "seed": 5}
    assert WindowOutputs(tmp_path, identity).folder != WindowOutputs(tmp_path, {**identity, "seed": 6}).folder


def test_an_inpainting_mask_and_temporal_downsampling_follow_the_whole_timeline(models, tmp_path, monkeypatch) -> None:
    """49 frames with temporal_downsample_factor=1: 25 generated frames (video and mask frames 0, 2, ..., 48) in two
    windows (0-16, 8-24), FILM interpolating over the whole timeline back to 49 frames, none doubled or dropped at
    the seam: the second window's new frames take the mask frames of their own positions, its kept ones none."""
    folder = tmp_path / "clips"
    folder.mkdir()
    video, mask = (str(write_sample(kind, folder / f"{kind}.mp4", num_frames=49)) for kind in ("depth", "mask"))
    job = run(
        models,
        tmp_path,
        monkeypatch,
        "inpainting",
        video_url=video,
        mask_video_url=mask,
        num_frames=49,
        temporal_downsample_factor=1,
        interpolator_model="film",
    )
    assert [len(c.video) for c in job.conds] == [17, 17]
    drawn = [np.asarray(fit_frame(f, 416, 240))[..., 0] >= 128 for f in read_frames(Path(mask), range(49))]
    second = job.masks(1)
    assert (second[:9] == KEEP).all()
    assert all(np.mean((m == GENERATE) == drawn[2 * p]) > 0.995 for m, p in zip(second[9:], range(17, 25), strict=True))
    assert np.array_equal(job.video(1)[:9], job.frames[16:49:2][:9])  # the output's generated frames 16..32 (8-16)
    assert (len(job.frames), job.out.video.num_frames, job.out.video.fps) == (49, 49, 16)
    assert frame_times(job.out.video.url) == pytest.approx([i / 16 for i in range(49)], abs=1e-3)


def test_cancel_stops_at_the_next_step_of_the_current_window_and_the_job_resumes_there(
    models, clip, tmp_path, monkeypatch
) -> None:
    """25 frames in two windows: a stop after step 1 of window 2 leaves nothing published and a checkpoint of that
    window's loop (``pipelines.resume``); the next run takes window 1 from the work directory and denoises only
    window 2's step 2."""
    steps: list[tuple[int, int]] = []
    windows: list[tuple[int, int]] = []
    kept = Kept(tmp_path / "checkpoints", every_steps=5)
    hooks = JobHooks(
        step=lambda i, n: steps.append((i, n)),
        window=lambda i, n: windows.append((i, n)),
        cancelled=lambda: len(windows) == 2 and len(steps) >= 3,
        checkpoints=kept.sink,
    )
    with pytest.raises(JobCancelled, match="after step 1/2"):
        run(models, tmp_path, monkeypatch, "pose", hooks=hooks, video_url=str(clip), num_frames=25)
    assert windows == [(1, 2), (2, 2)] and steps == [(1, 2), (2, 2), (1, 2)]
    assert not list((tmp_path / "work").glob("*.mp4"))  # the partial video is gone, nothing was published
    assert kept.steps == [1]  # written as the job stopped: window 2 after its step 1
    steps.clear()
    job = run(
        models,
        tmp_path,
        monkeypatch,
        "pose",
        hooks=JobHooks(step=lambda i, n: steps.append((i, n)), checkpoints=kept.sink),
        video_url=str(clip),
        num_frames=25,
    )
    assert steps == [(2, 2)] and len(job.frames) == 25 and kept.resumes == [(1, 2)]
    assert "window 1: its frames from an earlier run of this job are used" in job.log
    assert any(line.startswith("resumed at step 1/2 of window 2/2") for line in job.log)


# Long reframe, scene by scene, with the input's sound ---------------------------------------------------------------


@pytest.fixture(scope="module")
def three_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three ffmpeg test sources of 20 frames each (416x240, 16 fps) with a tone (AAC) under them."""
    return write_three_scenes(tmp_path_factory.mktemp("scenes") / "three_scenes.mp4")


def test_three_scenes_are_found_and_the_default_threshold_maps_to_the_detector(three_scenes) -> None:
    info = probe_video(three_scenes)
    assert detect_scenes(three_scenes, info, 30) == [(0, 20), (20, 40), (40, 60)]
    assert detect_scenes(three_scenes, info, 100) == [(0, 60)]  # nothing is that different


def test_long_reframe_reframes_each_scene_keeps_the_length_and_the_sound(
    models, three_scenes, tmp_path, monkeypatch
) -> None:
    """Reframed to 1:1 at 240p (320x320) with fal's long-reframe defaults (auto downsample, which 20-frame scenes
    do not need; paste_back): three scenes, each with its own framing (the third's bar trimmed) and two windows
    (21 frames generated, cut to 20), 60 frames out of 60 in, the source's own pixels where it lands, and the
    input's AAC sound copied in, cut to the video's 3.75 s."""
    request = {"video_url": str(three_scenes), "aspect_ratio": "1:1", "resolution": "240p"}
    request["app"] = "fal-ai/wan-vace-apps"
    job = run(models, tmp_path, monkeypatch, "long-reframe", **request)
    assert isinstance(job.out, LongReframeOutput)
    assert any(line.startswith("3 scenes found (scene_threshold 30), frames 0-19, 20-39, 40-59") for line in job.log)
    assert any(
        line.startswith("scene 3/3 (frames 40-59): reframe: bars trimmed (top 0, bottom 0, left 42") for line in job.log
    )
    video = job.out.video
    assert (video.num_frames, video.fps, video.width, video.height) == (60, 16, 320, 320)
    assert len(job.conds) == 6 and all(len(c.video) == 17 for c in job.conds)
    source = read_frames(three_scenes, range(60))
    for a, b in ((0, 20), (20, 40), (40, 60)):
        place = reframe_placement(416, 240, detect_bars(source[a:b]), 320, 320, 0.0)
        keep = place.mask() == KEEP
        for i in range(a, b):
            assert np.array_equal(job.frames[i][keep], place.render(source[i])[keep])
    assert audio_codec(Path(job.out.video.url)) == "aac"
    assert any(line.startswith("the input's sound (aac) is copied into the video, cut to 3.75 s") for line in job.log)
    # Again without the sound (keep_audio=false): the windows of the first run are taken (the encoding is no part of
    # what decides them), the video is silent.
    silent = run(models, tmp_path, monkeypatch, "long-reframe", **request, keep_audio=False)
    assert silent.conds == [] and np.array_equal(silent.frames, job.frames)
    assert audio_codec(Path(silent.out.video.url)) is None
