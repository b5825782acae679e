"""Frame plan, output size and schema validation: pure functions, no models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipelines.frame_plan import plan_frames, round_frames
from pipelines.schema import VaceInput
from pipelines.sizing import RESOLUTIONS, output_size
from pipelines.video_io import VideoInfo


def info(num_frames: int, fps: float, width: int = 832, height: int = 480) -> VideoInfo:
    return VideoInfo(width=width, height=height, fps=fps, num_frames=num_frames, duration=num_frames / fps)


@pytest.mark.parametrize(
    "n,expected", [(17, 17), (18, 17), (20, 17), (21, 21), (81, 81), (84, 81), (241, 241), (5, 17), (999, 241)]
)
def test_round_frames_to_4k_plus_1(n, expected):
    assert round_frames(n) == expected


def test_resampling_to_a_lower_fps_keeps_real_speed():
    plan = plan_frames(
        info(90, 30),
        num_frames=33,
        frames_per_second=15,
        match_input_num_frames=False,
        match_input_frames_per_second=False,
    )
    assert plan.num_frames == 33 and plan.fps == 15
    assert plan.source_indices[:4] == [0, 2, 4, 6] and plan.source_indices[-1] == 64
    assert plan.held_frames == 0


def test_short_input_holds_its_last_frame():
    plan = plan_frames(
        info(10, 16),
        num_frames=17,
        frames_per_second=16,
        match_input_num_frames=False,
        match_input_frames_per_second=False,
    )
    assert plan.source_indices == list(range(10)) + [9] * 7
    assert plan.held_frames == 7


def test_match_input_num_frames_covers_the_input_at_output_fps():
    plan = plan_frames(
        info(90, 30),
        num_frames=81,
        frames_per_second=16,
        match_input_num_frames=True,
        match_input_frames_per_second=False,
    )
    assert plan.num_frames == 48  # 3 s at 16 fps, exactly: the generation plan rounds, not the timeline
    assert plan.fps == 16 and plan.held_frames == 0 and plan.source_indices[-1] == 88


def test_match_both_keeps_the_input_timeline():
    plan = plan_frames(
        info(50, 25),
        num_frames=81,
        frames_per_second=16,
        match_input_num_frames=True,
        match_input_frames_per_second=True,
    )
    assert plan.num_frames == 50 and plan.fps == 25  # the input's own frame count, as fal's field promises
    assert plan.source_indices == list(range(50))


def test_match_input_of_a_short_input_is_its_own_length():
    plan = plan_frames(
        info(10, 16),
        num_frames=81,
        frames_per_second=16,
        match_input_num_frames=True,
        match_input_frames_per_second=True,
    )
    assert (plan.num_frames, plan.held_frames, plan.source_indices) == (10, 0, list(range(10)))


def test_match_input_fps_only():
    plan = plan_frames(
        info(300, 24),
        num_frames=81,
        frames_per_second=16,
        match_input_num_frames=False,
        match_input_frames_per_second=True,
    )
    assert (plan.num_frames, plan.fps) == (81, 24)
    assert plan.source_indices == list(range(81))


@pytest.mark.parametrize(
    "resolution,aspect,in_size,expected",
    [
        ("480p", "16:9", (100, 100), (832, 480)),
        ("720p", "9:16", (1920, 1080), (720, 1280)),
        ("580p", "1:1", (640, 480), (768, 768)),
        ("auto", "auto", (832, 480), (832, 480)),
        ("auto", "auto", (1080, 1920), (720, 1280)),
        ("auto", "auto", (144, 256), (240, 416)),
        ("auto", "auto", (3840, 2160), (1280, 720)),
        ("480p", "auto", (640, 480), (736, 544)),
        ("auto", "1:1", (640, 352), (464, 464)),
    ],
)
def test_output_size(resolution, aspect, in_size, expected):
    assert output_size(resolution, aspect, *in_size) == expected


def test_every_size_is_a_multiple_of_16():
    for table in RESOLUTIONS.values():
        for width, height in table.values():
            assert width % 16 == 0 and height % 16 == 0


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_frames", 16),
        ("num_frames", 242),
        ("frames_per_second", 31),
        ("guidance_scale", 0.5),
        ("num_inference_steps", 51),
        ("shift", 16),
        ("sampler", "ddim"),
        ("resolution", "1080p"),
        ("aspect_ratio", "4:3"),
        ("num_interpolated_frames", 6),
        ("video_quality", "ultra"),
        ("seed", -1),
        ("num_frames", "many"),
    ],
)
def test_out_of_range_fields_are_rejected_with_their_location(field, value):
    with pytest.raises(ValidationError) as err:
        VaceInput(prompt="p", video_url="v.mp4", **{field: value})
    assert err.value.errors()[0]["loc"] == (field,)


def test_defaults_follow_fal():
    inp = VaceInput(prompt="p", video_url="v.mp4")
    assert (inp.num_frames, inp.frames_per_second, inp.num_inference_steps, inp.guidance_scale, inp.shift) == (
        81,
        16,
        30,
        5.0,
        5.0,
    )
    assert (inp.sampler, inp.resolution, inp.aspect_ratio, inp.acceleration) == ("unipc", "auto", "auto", "regular")
    assert (inp.video_quality, inp.video_write_mode, inp.interpolator_model) == ("high", "balanced", "film")
    assert inp.seed is None and inp.negative_prompt
