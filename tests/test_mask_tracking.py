"""A mask image followed through the clip by SAM2.1 (``preprocessors/mask_tracking.py``, ``pipelines/tracking.py``).

The reference is transformers' own documented video-propagation recipe (``docs/source/en/model_doc/sam2_video.md``:
``init_video_session`` with the whole video, the mask as input on frame 0, ``propagate_in_video_iterator``,
``post_process_masks``), run by hand here on the same frames and the same random tiny SAM2 weights: our chunked,
history-bounded tracking must give its masks exactly, on a clip shorter than SAM2's object-pointer window and on one
longer than that window and our chunk, and inside a job that tracks only its planned frames. Growing (VACE's
``original_expand``) is off for those comparisons and checked on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Sam2VideoModel, Sam2VideoProcessor

from pipelines.conditioning import GENERATE
from pipelines.context import JobContext
from pipelines.encode import encode_video
from pipelines.errors import InputError
from pipelines.masks import expand_mask, fitted
from pipelines.schema import InpaintingFunInput
from pipelines.tasks import prepare, resolve
from pipelines.tracking import MaskTracking
from pipelines.video_io import probe_video, read_frames
from preprocessors import mask_tracking
from preprocessors.mask_tracking import CHUNK_FRAMES, Sam2Tracker
from weights.tiny.tracker import build_tiny_tracker

W, H = 160, 96  # another shape than SAM2's square input: resizing and post-processing matter


@pytest.fixture(scope="module")
def tracker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tracker(tmp_path_factory.mktemp("sam2") / "sam2.1-hiera-small", seed=3)


@pytest.fixture(scope="module")
def tracker(tracker_dir: Path) -> Sam2Tracker:
    torch.set_num_threads(1)  # the tiny model is fastest on one thread, and the cores are shared
    return Sam2Tracker.load(tracker_dir)


def clip(num_frames: int, width: int = W, height: int = H) -> list[np.ndarray]:
    """A red box moving right over a fixed noise background."""
    background = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    frames = []
    for i in range(num_frames):
        frame = background.copy()
        frame[30:70, 20 + 2 * i : 60 + 2 * i] = (230, 30, 30)
        frames.append(frame)
    return frames


def box_mask(width: int = W, height: int = H) -> np.ndarray:
    """The box on the first frame, as a mask image's values (white = regenerate), slightly off as drawn by hand."""
    plane = np.zeros((height, width), np.uint8)
    plane[28:72, 18:62] = 255
    return plane


def recipe(folder: Path, frames: list[np.ndarray], mask: np.ndarray) -> list[torch.Tensor]:
    """The mask logits of transformers' documented video propagation, as its model page writes it, with a mask as
    the input on the first frame."""
    model = Sam2VideoModel.from_pretrained(folder).eval()
    processor = Sam2VideoProcessor.from_pretrained(folder)
    session = processor.init_video_session(video=frames, inference_device="cpu")
    processor.add_inputs_to_inference_session(inference_session=session, frame_idx=0, obj_ids=1, input_masks=mask)
    model(inference_session=session, frame_idx=0)
    masks = {}
    for output in model.propagate_in_video_iterator(session):
        logits = processor.post_process_masks(
            [output.pred_masks], original_sizes=[[session.video_height, session.video_width]], binarize=False
        )[0]
        masks[output.frame_idx] = logits[0, 0]
    return [masks[i] for i in range(len(frames))]


def unexpanded(tracker: Sam2Tracker) -> MaskTracking:
    return MaskTracking("sam2.1-hiera-small", lambda: tracker, expand_ratio=0.0, threshold=0.5)


@pytest.mark.parametrize("num_frames", [5, 2 * CHUNK_FRAMES + 9])
def test_tracked_masks_are_transformers_recipe(tracker: Sam2Tracker, tracker_dir: Path, num_frames: int) -> None:
    """5 frames (fewer than SAM2's 16 object pointers: the count of frames matters there) and 25 (several chunks,
    and past the history the tracker keeps): SAM2's logits are the recipe's to the bit on every frame; the job's
    masks are those above 0 after the first, which is the mask given; and the random model's masks are neither
    empty nor full (the comparison can fail)."""
    frames = clip(num_frames)
    reference = recipe(tracker_dir, frames, box_mask() == 255)
    logits = list(tracker.logits(frames, box_mask() == 255))
    assert len(logits) == num_frames
    for i in range(num_frames):
        assert torch.equal(logits[i], reference[i]), f"frame {i}"
    log: list[str] = []
    ours = unexpanded(tracker).masks(frames, box_mask(), "mask_image_url", W, H, log.append)
    assert len(ours) == num_frames and (ours[0] == box_mask()).all()
    for i in range(1, num_frames):
        assert np.array_equal(ours[i] == GENERATE, reference[i].numpy() > 0), f"frame {i}"
    assert 0 < np.mean([r.numpy() > 0 for r in reference[1:]]) < 1
    assert f"followed the first frame's mask through {num_frames} frames" in log[0]


def test_the_session_holds_a_chunk_of_pixels_and_a_bounded_history(
    tracker: Sam2Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At no point of a 40-frame clip does the session hold more than one chunk of frame pixels or more than the
    model's history of per-frame outputs, nor a full-resolution mask logit of a frame it has passed."""
    sessions = []

    class Recorded(mask_tracking._PlannedSession):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            sessions.append(self)

    monkeypatch.setattr(mask_tracking, "_PlannedSession", Recorded)
    frames = clip(40)
    held = []
    for _ in tracker.track(frames, box_mask() == 255):
        outputs = sessions[0].output_dict_per_obj[0]["non_cond_frame_outputs"]
        held.append(
            (len(sessions[0].processed_frames), len(outputs), sum("high_res_masks" in out for out in outputs.values()))
        )
    assert len(held) == 40
    assert max(p for p, _, _ in held) <= CHUNK_FRAMES and max(o for _, o, _ in held) == tracker.history
    assert not any(logits for _, _, logits in held)


def test_a_job_tracks_only_its_planned_frames(tracker: Sam2Tracker, tracker_dir: Path, tmp_path: Path) -> None:
    """Through ``prepare``: a 24 fps clip planned at 16 fps and downsampled (every other frame generated) tracks
    exactly the frames the job generates from, and fits SAM2's masks to the output size like every mask."""
    video = tmp_path / "clip.mp4"
    encode_video(clip(50), video, 24.0, quality="maximum")
    mask_png = tmp_path / "mask.png"
    Image.fromarray(box_mask()).save(mask_png)
    inp = InpaintingFunInput(
        prompt="a ball",
        video_url=str(video),
        mask_image_url=str(mask_png),
        num_frames=33,
        temporal_downsample_factor=1,
        resolution="240p",
    )
    source = prepare(inp, resolve(inp, "inpainting"), tmp_path, JobContext(), tracking=unexpanded(tracker))
    masks = source.tracked_masks  # what the job's masks stream yields, kept whole since the job returns them too
    assert source.mask_mode == "track" and masks is not None
    plan, timing = source.plan, source.timing
    assert plan is not None and len(masks) == timing.generate_frames == 17
    indices = [plan.source_indices[j] for j in timing.control_indices]
    planned = read_frames(video, indices)
    reference = recipe(tracker_dir, planned, box_mask() == 255)
    info = probe_video(video)
    for i in range(1, len(indices)):
        expected = fitted(reference[i].numpy() > 0, (info.width, info.height), source.width, source.height)
        assert np.array_equal(masks[i], expected), f"frame {i}"
    assert any("mask mode track" in note for note in source.notes)


def test_growing_is_vaces_original_expand_at_full_strength() -> None:
    """Each side grows by the ratio of the box's width or height, at most half the way to the frame's edge."""
    mask = np.zeros((100, 200), bool)
    mask[40:60, 50:90] = True  # a 40x20 box
    grown = expand_mask(mask, 0.25)
    ys, xs = np.nonzero(grown)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (40, 99, 35, 64)  # 10 px left/right, 5 px up/down
    edge = np.zeros((100, 200), bool)
    edge[90:100, 0:20] = True  # touching the left and bottom edges
    ys, xs = np.nonzero(expand_mask(edge, 1.0))
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (0, 39, 80, 99)  # 20 right, 10 up, not into the edges
    assert expand_mask(mask, 0.0) is mask and not expand_mask(np.zeros((4, 4), bool), 0.5).any()


@pytest.mark.parametrize(
    "plane,type_", [(np.zeros((H, W), np.uint8), "mask_empty"), (np.full((H, W), 255, np.uint8), "mask_full")]
)
def test_a_mask_that_marks_nothing_or_everything_is_refused_before_the_tracker_loads(
    plane: np.ndarray, type_: str
) -> None:
    def never() -> Sam2Tracker:
        raise AssertionError("the tracker was loaded")

    tracking = MaskTracking("sam2.1-hiera-small", never, expand_ratio=0.25, threshold=0.5)
    with pytest.raises(InputError) as err:
        tracking.masks(clip(3), plane, "mask_image_url", W, H, print)
    assert err.value.loc == ("mask_image_url",) and err.value.type == type_
