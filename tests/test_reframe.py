"""Reframe (``pipelines/reframe.py``): bar detection on clean, noisy and really encoded video, what it must not take
for a bar, and where the trimmed picture lands on the new canvas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.conditioning import GENERATE, KEEP
from pipelines.encode import encode_video
from pipelines.reframe import Bars, detect_bars, plan_reframe, reframe_placement
from pipelines.sizing import output_size
from pipelines.video_io import probe_video, read_frames

W, H = 208, 120
rng = np.random.default_rng(7)


def picture(n: int = 12, width: int = W, height: int = H) -> list[np.ndarray]:
    """Moving textured content: smooth gradients plus noise, different in every frame."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n):
        base = np.stack([(xx * 3 + i * 7) % 256, (yy * 5 + i * 11) % 256, (xx + yy + i * 13) % 256], axis=2)
        frames.append(np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8))
    return frames


def with_bars(frames: list[np.ndarray], top=0, bottom=0, left=0, right=0, colour=(0, 0, 0), noise=0):
    """``frames`` with flat bars painted over their edges, plus up to ``noise`` levels of noise in the bars."""
    out = []
    for f in frames:
        h, w = f.shape[:2]
        bars = np.zeros((h, w), bool)
        bars[:top], bars[h - bottom :], bars[:, :left], bars[:, w - right :] = True, True, True, True
        flat = np.clip(np.asarray(colour) + rng.integers(0, noise + 1, f.shape), 0, 255).astype(np.uint8)
        out.append(np.where(bars[..., None], flat, f))
    return out


def test_letterbox_and_pillarbox_bars_are_found_through_noise() -> None:
    assert detect_bars(with_bars(picture(), top=14, bottom=14, noise=10)) == Bars(top=14, bottom=14)
    assert detect_bars(with_bars(picture(), left=30, right=26, colour=(12, 12, 14))) == Bars(left=30, right=26)
    assert detect_bars(picture()) == Bars()


def test_a_flat_colour_is_a_bar_only_when_both_edges_have_it() -> None:
    white = with_bars(picture(), top=10, bottom=10, colour=(250, 250, 250))
    assert detect_bars(white) == Bars(top=10, bottom=10)
    sky = with_bars(picture(), top=20, colour=(90, 160, 230))  # a clear sky at the top edge only
    assert detect_bars(sky) == Bars()
    dark_top_only = with_bars(picture(), top=20)  # a dark bar alone is still a bar
    assert detect_bars(dark_top_only) == Bars(top=20)


def test_a_bar_must_be_there_in_every_sampled_frame() -> None:
    frames = picture(16)
    frames[3:6] = with_bars(frames[3:6], top=40, bottom=40)  # a few frames darken at the edges (a vignette)
    assert detect_bars(with_bars(frames, top=8, bottom=8)) == Bars(top=8, bottom=8)


def test_a_flat_clip_is_not_trimmed_away() -> None:
    black = [np.zeros((H, W, 3), np.uint8)] * 5
    assert detect_bars(black) == Bars()
    grey = [np.full((H, W, 3), 128, np.uint8)] * 5
    assert detect_bars(grey) == Bars()


def test_bars_of_an_encoded_letterboxed_video(tmp_path: Path) -> None:
    """Through x264 and back: the bars are found to within the blur of the edge between bar and picture."""
    path = tmp_path / "letterbox.mp4"
    encode_video(with_bars(picture(24, 320, 240), top=30, bottom=30), path, 16.0, quality="medium")
    info = probe_video(path)
    frames = read_frames(path, list(range(info.num_frames)))
    bars = detect_bars(frames)
    assert 28 <= bars.top <= 30 and 28 <= bars.bottom <= 30 and bars.left == bars.right == 0
    place, found = plan_reframe(frames, True, 0.0, "240p", "auto")
    assert found == bars and (place.width, place.height) == output_size("240p", "auto", 320, 240)
    assert place.mask()[: place.y].min() == GENERATE and place.crop == bars.crop(320, 240)
    untrimmed, none = plan_reframe(frames, False, 0.0, "240p", "auto")
    assert none == Bars() and untrimmed.generated_share == 0  # the bars are kept as picture


def test_auto_aspect_fills_the_bars_and_a_clean_clip_is_left_whole() -> None:
    width, height = output_size("auto", "auto", 832, 480)
    place = reframe_placement(832, 480, Bars(top=60, bottom=60), width, height, 0.0)
    assert (place.x, place.w, place.crop) == (0, width, (0, 60, 832, 420))
    assert place.mask()[:60].min() == GENERATE and place.mask()[60:420].max() == KEEP
    clean = reframe_placement(854, 480, Bars(), *output_size("auto", "auto", 854, 480), 0.0)
    assert clean.generated_share == 0  # rounding to 16 leaves no sliver to generate: the picture fills it


def test_a_new_aspect_ratio_generates_the_rest_and_zoom_cuts_the_edges() -> None:
    width, height = output_size("480p", "9:16", 832, 480)
    tall = reframe_placement(832, 480, Bars(), width, height, 0.0)
    assert (tall.x, tall.w) == (0, width) and tall.h == round(480 * width / 832)
    assert tall.y == (height - tall.h) // 2 and tall.mask()[0].min() == GENERATE
    zoomed = reframe_placement(832, 480, Bars(), width, height, 0.5)
    assert zoomed.w == round(832 * width / 832 * 1.5) and zoomed.x < 0  # half as large again, edges cut
    assert zoomed.generated_share < tall.generated_share
    frame = picture(1, 832, 480)[0]
    out = zoomed.render(frame)
    assert out.shape == (height, width, 3)
    full = reframe_placement(832, 480, Bars(), 832, 480, 0.9)
    assert full.generated_share == 0 and full.mask().max() == KEEP


@pytest.mark.parametrize("src", [(1920, 1080), (1280, 536), (720, 1280), (640, 480), (854, 480), (1000, 1000)])
@pytest.mark.parametrize("resolution", ["auto", "240p", "480p", "720p"])
def test_only_rounding_is_never_generated(src, resolution) -> None:
    """The rounding_gap bound holds: an untrimmed clip at aspect auto has nothing to generate at any tier."""
    width, height = output_size(resolution, "auto", *src)
    assert reframe_placement(*src, Bars(), width, height, 0.0).generated_share == 0
