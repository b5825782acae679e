"""Outpainting geometry (``pipelines/outpaint.py``) and the canvas it renders (``pipelines/canvas.py``). Parity with
VACE's own annotator is ``tests/test_vace_parity.py``."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.canvas import Placement
from pipelines.conditioning import GENERATE, GREY, KEEP
from pipelines.errors import InputError
from pipelines.outpaint import (
    SIDES,
    Expansion,
    chosen_sides,
    expansion,
    outpaint_placement,
    outpaint_size,
    plan_outpaint,
)
from pipelines.sizing import RESOLUTIONS


def test_borders_are_vaces_int_of_ratio_times_the_side() -> None:
    exp = expansion(101, 57, ("left", "bottom"), 0.3)
    assert (exp.left, exp.right, exp.top, exp.bottom) == (30, 0, 0, 17)  # int(30.3), int(17.1)
    assert (exp.canvas_w, exp.canvas_h) == (131, 74)
    assert chosen_sides(True, False, False, True) == ("left", "bottom")


def test_nothing_to_expand_is_a_422() -> None:
    with pytest.raises(InputError) as err:
        expansion(832, 480, (), 0.25)
    assert err.value.loc == ("expand_left",) and "expand_top" in err.value.msg
    with pytest.raises(InputError) as err:
        expansion(832, 480, ("left",), 0.001)
    assert err.value.loc == ("expand_ratio",) and "832x480" in err.value.msg


@pytest.mark.parametrize("sides", [("left",), ("top", "bottom"), SIDES, ("right", "top")])
@pytest.mark.parametrize("resolution", ["auto", "480p", "720p"])
def test_auto_aspect_keeps_the_canvas_shape_at_the_tier(sides, resolution) -> None:
    exp = expansion(832, 480, sides, 0.25)
    scale, width, height = outpaint_size(exp, resolution, "auto")
    assert width % 16 == 0 and height % 16 == 0
    assert 0 <= width - exp.canvas_w * scale < 16 and 0 <= height - exp.canvas_h * scale < 16  # rounded up
    if resolution != "auto":
        ref_w, ref_h = RESOLUTIONS[resolution]["16:9"]
        assert exp.canvas_w * exp.canvas_h * scale**2 == pytest.approx(ref_w * ref_h)


@pytest.mark.parametrize("sides", [("left",), ("top",), ("left", "right", "bottom")])
@pytest.mark.parametrize("aspect", ["16:9", "9:16", "1:1", "auto"])
def test_the_source_is_whole_and_the_space_goes_to_the_chosen_sides(sides, aspect) -> None:
    place = plan_outpaint(640, 360, sides, 0.5, "480p", aspect)
    assert place.x >= 0 and place.x + place.w <= place.width and place.y >= 0 and place.y + place.h <= place.height
    assert place.w / place.h == pytest.approx(640 / 360, rel=0.01)
    left, right = place.x, place.width - place.x - place.w
    top, bottom = place.y, place.height - place.y - place.h
    for side, space, other in (
        ("left", left, right),
        ("right", right, left),
        ("top", top, bottom),
        ("bottom", bottom, top),
    ):
        horizontal = side in ("left", "right")
        axis_chosen = any(s in sides for s in (("left", "right") if horizontal else ("top", "bottom")))
        if side in sides:
            assert space > 0
        elif axis_chosen:
            assert space == 0  # nothing on an unchosen side of an expanded axis
        else:
            assert abs(space - other) <= 1  # an axis nobody expanded: whatever is left is centred


def test_the_rounding_goes_to_the_chosen_sides_in_proportion() -> None:
    """VACE's KEEP_PADDING_RATIO rule at scale 1: ``left = extra * l // (l + r)``."""
    exp = Expansion(50, 32, left=15, right=5, top=0, bottom=0)  # canvas 70 wide, rounded up to 80
    place = outpaint_placement(exp, 1.0, 80, 32)
    assert (place.x, place.w, place.width - place.x - place.w) == (22, 50, 8)  # 30 * 15 // 20 = 22


def test_render_pastes_the_source_on_grey_with_a_black_rectangle() -> None:
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    place = Placement(64, 48, 8, 4, 48, 32)
    out, mask = place.render(frame), place.mask()
    assert np.array_equal(out[4:36, 8:56], frame)
    assert (out[:4] == GREY).all() and (out[36:] == GREY).all() and (out[:, :8] == GREY).all()
    assert (mask[4:36, 8:56] == KEEP).all() and (mask == GENERATE).sum() == 64 * 48 - 48 * 32
    assert place.generated_share == pytest.approx(1 - 48 * 32 / (64 * 48))
    frames = list(place.render_all([frame, frame, frame[::-1].copy()]))
    assert frames[0] is frames[1] and frames[2] is not frames[0]
