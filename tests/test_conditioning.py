"""The conditioning builder: frames, masks and references at the right indices, and transparency handling."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.conditioning import GENERATE, KEEP, build_conditioning, fit_frame, flatten_alpha

W, H = 64, 32


def control(n: int) -> list[np.ndarray]:
    """Control frames whose red channel encodes their index."""
    frames = []
    for i in range(n):
        f = np.zeros((H, W, 3), np.uint8)
        f[..., 0] = 10 * i
        frames.append(f)
    return frames


def half_transparent(colour=(0, 200, 0)) -> Image.Image:
    """Left half opaque ``colour``, right half fully transparent over black garbage."""
    arr = np.zeros((H, W, 4), np.uint8)
    arr[:, : W // 2, :3] = colour
    arr[:, : W // 2, 3] = 255
    return Image.fromarray(arr, "RGBA")


def test_pure_control_is_all_generate():
    cond = build_conditioning(control(5), W, H)
    assert len(cond.video) == len(cond.mask) == 5
    assert all(np.asarray(m).max() == GENERATE and np.asarray(m).min() == GENERATE for m in cond.mask)
    assert [int(np.asarray(f)[0, 0, 0]) for f in cond.video] == [0, 10, 20, 30, 40]
    assert cond.reference_images is None


def test_first_and_last_frames_are_kept_frames_with_black_masks():
    first = Image.new("RGB", (W, H), (1, 2, 3))
    last = Image.new("RGB", (W, H), (4, 5, 6))
    cond = build_conditioning(control(5), W, H, first_frame=first, last_frame=last)
    masks = [int(np.asarray(m).mean()) for m in cond.mask]
    assert masks == [KEEP, GENERATE, GENERATE, GENERATE, KEEP]
    assert tuple(np.asarray(cond.video[0])[3, 3]) == (1, 2, 3)
    assert tuple(np.asarray(cond.video[4])[3, 3]) == (4, 5, 6)
    # The generated positions keep the control frames.
    assert [int(np.asarray(f)[0, 0, 0]) for f in cond.video[1:4]] == [10, 20, 30]


def test_only_last_frame():
    cond = build_conditioning(control(3), W, H, last_frame=Image.new("RGB", (8, 8), (9, 9, 9)))
    assert [int(np.asarray(m).mean()) for m in cond.mask] == [GENERATE, GENERATE, KEEP]
    assert cond.video[2].size == (W, H)


def test_reference_images_pass_through_flattened_on_white():
    refs = [Image.new("RGB", (10, 20), (7, 8, 9)), half_transparent()]
    cond = build_conditioning(control(2), W, H, reference_images=refs)
    assert len(cond.reference_images) == 2
    assert cond.reference_images[0].size == (10, 20)
    assert np.array_equal(np.asarray(cond.reference_images[0]), np.asarray(refs[0]))
    flat = np.asarray(cond.reference_images[1])
    assert cond.reference_images[1].mode == "RGB"
    assert tuple(flat[5, W - 3]) == (255, 255, 255)


@pytest.mark.parametrize("mode,expected", [("white", (255, 255, 255)), ("black", (0, 0, 0))])
def test_flat_transparency_modes(mode, expected):
    flat = np.asarray(flatten_alpha(half_transparent(), mode))
    assert tuple(flat[5, W - 3]) == expected
    assert tuple(flat[5, 3]) == (0, 200, 0)


def test_content_aware_fills_from_the_image_content():
    flat = np.asarray(flatten_alpha(half_transparent((0, 200, 0)), "content_aware")).astype(int)
    right = flat[:, W // 2 + 2 :]
    # The hole takes the colour of the surrounding content, not a flat white or black.
    assert right[..., 1].mean() > 150 and right[..., 0].mean() < 40 and right[..., 2].mean() < 40
    assert tuple(flat[5, 3]) == (0, 200, 0)


def test_partial_alpha_is_blended():
    arr = np.zeros((H, W, 4), np.uint8)
    arr[..., :3] = 200
    arr[..., 3] = 128
    flat = np.asarray(flatten_alpha(Image.fromarray(arr, "RGBA"), "black"))
    assert abs(int(flat[0, 0, 0]) - 100) <= 1


def test_fit_frame_covers_and_crops_without_stretching():
    frame = np.zeros((100, 400, 3), np.uint8)
    frame[:, 150:250] = 255  # a centred white band, a quarter of the width
    out = np.asarray(fit_frame(frame, 100, 100))
    assert out.shape == (100, 100, 3)
    # Cover-scaling keeps the aspect: the centre crop is exactly the band.
    assert out.min() == 255
    small = np.asarray(fit_frame(np.full((10, 20, 3), 50, np.uint8), 64, 32))
    assert small.shape == (32, 64, 3) and small.mean() == pytest.approx(50, abs=1)
