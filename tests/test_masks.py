"""Inpainting masks (``pipelines/masks.py``) and the edit conditioning they make (``build_conditioning(masks=...)``):
masks follow the frame plan, are fitted exactly like the frames, binarised at half grey, and bad masks are refused
with the field and the numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.conditioning import GENERATE, GREY, KEEP, build_conditioning, fit_frame, grey_frames
from pipelines.encode import encode_video
from pipelines.errors import InputError
from pipelines.frame_plan import plan_frames, plan_temporal
from pipelines.masks import (
    MaskRef,
    check_aspect,
    check_generates,
    choose_mask,
    fit_masks,
    mask_from_image,
    read_mask_video,
)
from pipelines.video_io import probe_video

W, H = 64, 48


def square_mask(i: int, width: int = W, height: int = H) -> np.ndarray:
    """An RGB mask frame with a white 16x16 square whose left edge moves 2 px per frame."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[16:32, 2 * i : 2 * i + 16] = 255
    return frame


@pytest.fixture(scope="module")
def mask_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 frames at 10 fps: a moving square, encoded at VACE's own quality (crf 10)."""
    path = tmp_path_factory.mktemp("mask") / "mask.mp4"
    encode_video([square_mask(i) for i in range(20)], path, 10.0, quality="maximum")
    return path


def test_precedence_follows_each_endpoints_fal_text() -> None:
    assert choose_mask("v", "i", image_wins=True) == MaskRef("mask_image_url", "i")
    assert choose_mask("v", "i", image_wins=False) == MaskRef("mask_video_url", "v")
    assert choose_mask(None, "i", image_wins=False).is_video is False
    assert choose_mask("", None, image_wins=True) is None


def test_another_aspect_ratio_is_refused_with_the_numbers() -> None:
    with pytest.raises(InputError) as err:
        check_aspect("mask_video_url", (640, 640), (832, 480))
    assert err.value.loc == ("mask_video_url",) and err.value.type == "mask_aspect_mismatch"
    assert "640x640" in err.value.msg and "832x480" in err.value.msg
    check_aspect("mask_video_url", (1920, 1088), (1920, 1080))  # encoder padding is not another shape
    check_aspect("mask_image_url", (416, 240), (832, 480))  # another size of the same shape is scaled


def test_the_mask_video_follows_the_frame_plan(mask_video: Path) -> None:
    """The source plays at 10 fps; the job runs at 5 fps with temporal downsampling: the mask frames read are the
    video frames read, index for index."""
    info = probe_video(mask_video)
    plan = plan_frames(
        info, num_frames=17, frames_per_second=5, match_input_num_frames=False, match_input_frames_per_second=False
    )
    timing = plan_temporal(plan.num_frames, plan.fps, temporal_downsample_factor=1)
    indices = [plan.source_indices[j] for j in timing.control_indices]
    stream, notes = read_mask_video(mask_video, info, info, indices)
    planes = list(stream)
    assert notes == [] and len(planes) == len(indices) == timing.generate_frames
    for index, plane in zip(indices, planes, strict=True):
        columns = np.flatnonzero(plane[24] >= 128)
        assert (columns[0], columns[-1]) == (2 * index, 2 * index + 15)
    # Held frames (the plan runs past the 20-frame video) share one plane.
    assert indices[-1] == indices[-2] == 19 and planes[-1] is planes[-2]


def test_a_short_mask_video_is_refused_with_the_numbers(mask_video: Path) -> None:
    info = probe_video(mask_video)
    longer = type(info)(info.width, info.height, info.fps, 40, 4.0)
    with pytest.raises(InputError) as err:
        read_mask_video(mask_video, info, longer, list(range(0, 40, 2)))
    assert err.value.loc == ("mask_video_url",) and err.value.type == "mask_too_short"
    assert "20 frames" in err.value.msg and "#38" in err.value.msg
    _, notes = read_mask_video(mask_video, info, longer, [0, 5, 19])
    assert "20 frames, the video 40" in notes[0]


def test_not_a_video_names_the_mask_field(tmp_path: Path) -> None:
    junk = tmp_path / "mask.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(InputError) as err:
        probe_video(junk, "mask_video_url")
    assert err.value.loc == ("mask_video_url",)


def test_fitting_binarises_at_half_grey_and_aligns_with_the_frames() -> None:
    # Source 64x48 fitted to 32x32: scaled to 43x32 (cover), then cropped in the middle, like fit_frame.
    plane = np.zeros((96, 128), np.uint8)  # the mask at twice the video's size
    plane[:, :64] = 255  # left half white
    (mask,) = fit_masks([plane], (W, H), 32, 32)
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:, :32] = 255
    fitted_frame = np.asarray(fit_frame(frame, 32, 32))[..., 0]
    assert set(np.unique(mask)) == {KEEP, GENERATE}
    assert np.array_equal(mask == GENERATE, fitted_frame >= 128)
    levels = np.array([[127, 128]], np.uint8)
    assert next(fit_masks([levels], (2, 1), 2, 1)).tolist() == [[KEEP, GENERATE]]  # VACE's model: m > 0.5


def test_one_plane_for_every_frame_is_fitted_once() -> None:
    plane = np.full((H, W), 255, np.uint8)
    plane[0, 0] = 0
    masks = list(fit_masks([plane] * 5, (W, H), W, H))
    assert all(m is masks[0] for m in masks)
    assert check_generates(masks, "mask_image_url") == pytest.approx(1 - 1 / (W * H))


def test_an_all_black_or_all_white_mask_is_refused() -> None:
    masks = fit_masks([np.zeros((H, W), np.uint8)] * 3, (W, H), W, H)
    with pytest.raises(InputError) as err:
        check_generates(masks, "mask_video_url")
    assert err.value.loc == ("mask_video_url",) and err.value.type == "mask_empty"
    with pytest.raises(InputError) as err:
        check_generates(fit_masks([np.full((H, W), 255, np.uint8)] * 3, (W, H), W, H), "mask_image_url")
    assert err.value.loc == ("mask_image_url",) and err.value.type == "mask_full"
    half = fit_masks([np.zeros((H, W), np.uint8), np.full((H, W), 255, np.uint8)], (W, H), W, H)
    assert check_generates(half, "mask_video_url") == 0.5


def test_mask_images_read_their_first_channel_and_transparency_keeps() -> None:
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[:, : W // 2] = (255, 255, 255, 255)  # opaque white on the left
    rgba[:, W // 2 :] = (255, 255, 255, 0)  # white but transparent on the right
    plane = mask_from_image(Image.fromarray(rgba, "RGBA"), (W, H))
    assert plane[:, : W // 2].min() == 255 and plane[:, W // 2 :].max() == 0
    assert mask_from_image(Image.new("L", (4, 4), 200), (8, 8)).tolist() == [[200] * 4] * 4
    with pytest.raises(InputError) as err:
        mask_from_image(Image.new("L", (4, 4)), (W, H))
    assert err.value.loc == ("mask_image_url",) and "4x4" in err.value.msg


def test_edit_conditioning_greys_what_is_generated() -> None:
    frames = [np.full((H, W, 3), 10 * (i + 1), np.uint8) for i in range(4)]
    plane = np.zeros((H, W), np.uint8)
    plane[8:24, 8:40] = 255
    masks = list(fit_masks([plane] * 4, (W, H), W, H))
    first = Image.new("RGB", (W, H), (1, 2, 3))
    cond = build_conditioning(frames, W, H, masks=masks, first_frame=first)
    arr = [np.asarray(v) for v in cond.video]
    assert tuple(arr[0][10, 10]) == (1, 2, 3) and np.asarray(cond.mask[0]).max() == KEEP  # first frame kept whole
    for i in (1, 2, 3):
        assert (arr[i][8:24, 8:40] == GREY).all() and (arr[i][30:] == 10 * (i + 1)).all()
        assert np.array_equal(np.asarray(cond.mask[i]), masks[i])
    assert cond.mask[1] is cond.mask[2] is cond.mask[3]  # one mask image for a static mask
    with pytest.raises(ValueError):
        build_conditioning(frames, W, H, masks=masks[:3])


def test_a_job_without_video_is_grey_under_a_white_mask() -> None:
    """VACE's prepare_source with no source video: zeros in [-1, 1] (grey) and an all-ones mask; first/last frames
    kept (frameref)."""
    last = Image.new("RGB", (W, H), (9, 9, 9))
    cond = build_conditioning(grey_frames(5, W, H), W, H, last_frame=last)
    assert [int(np.asarray(m).mean()) for m in cond.mask] == [GENERATE] * 4 + [KEEP]
    assert all((np.asarray(v) == GREY).all() for v in cond.video[:4])
    assert tuple(np.asarray(cond.video[4])[0, 0]) == (9, 9, 9)
