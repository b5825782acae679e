"""Pose and depth preprocessors: the full path on tiny random weights, and the decoding and drawing on known inputs.

The decoding and drawing tests replace the networks with stand-ins whose outputs are built by hand (a YOLOX
output whose anchors decode to chosen boxes, SimCC arrays whose maxima sit on chosen pixels), so the geometry
and colours of the drawn skeleton can be checked exactly, without real weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from pipelines.annotators import LOADERS, make_preprocessor
from pipelines.encode import encode_video
from pipelines.manifest import DEFAULT_ANNOTATORS, TASK_ANNOTATORS
from pipelines.video_io import iter_frames, probe_video
from preprocessors.depth import MidasPreprocessor, normalize_depth
from preprocessors.pose import (
    BOX_PADDING,
    DET_SIZE,
    DET_STRIDES,
    NUM_WHOLEBODY,
    DWPosePreprocessor,
    crop_person,
    decode_detections,
    decode_simcc,
    draw_pose,
    person_boxes,
    run_session,
    to_openpose,
    to_output,
)
from weights.tiny.annotators import build_tiny_annotators

# VACE's OpenPose palette, as drawn (limb i and joint i share colour i). VACE flips the drawing from BGR to RGB,
# so the control frame shows each colour reversed: the first limb, drawn (255, 0, 0), is blue.
VACE_PALETTE = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
]  # fmt: skip
# OpenPose-18 limbs as (from, to), 0-based, in VACE's drawing order (the last two, ear-shoulder, are not drawn).
LIMBS = [
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
]  # fmt: skip


def joint_rgb(i: int) -> tuple[int, ...]:
    return VACE_PALETTE[i][::-1]


def limb_rgb(i: int) -> tuple[int, ...]:
    return tuple(int(c * 0.6) for c in VACE_PALETTE[i][::-1])


@pytest.fixture(scope="module")
def annotator_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_annotators(tmp_path_factory.mktemp("annotators"))


def smooth_frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Blurry random frames: structure at several scales, so the random detector finds a few 'people'."""
    rng = np.random.default_rng(seed)
    return [
        cv2.resize(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
        for _ in range(count)
    ]


# ---------------------------------------------------------------------------------------------------------------
# The full path on tiny weights


def test_make_preprocessor_defaults_and_errors(annotator_weights: Path, tmp_path: Path) -> None:
    assert DEFAULT_ANNOTATORS == {"pose": "dwpose", "depth": "midas"}
    assert set(LOADERS) == {name for names in TASK_ANNOTATORS.values() for name in names}
    assert type(make_preprocessor("pose", None, annotator_weights)) is DWPosePreprocessor
    assert type(make_preprocessor("depth", None, annotator_weights)) is MidasPreprocessor
    with pytest.raises(ValueError, match="unknown preprocessing task"):
        make_preprocessor("canny", None, annotator_weights)
    with pytest.raises(ValueError, match="unknown pose annotator"):
        make_preprocessor("pose", "midas", annotator_weights)
    for task in ("pose", "depth"):
        with pytest.raises(FileNotFoundError, match="annotators/"):
            make_preprocessor(task, None, tmp_path)


@pytest.mark.parametrize(
    ("task", "annotator", "num_frames"),
    [("pose", "dwpose", 4), ("pose", "openpose", 2), ("depth", "midas", 2), ("depth", "depth_anything_v2", 2)],
)
def test_video_keeps_frame_count_size_and_fps(
    annotator_weights: Path, tmp_path: Path, task: str, annotator: str, num_frames: int
) -> None:
    source = encode_video(smooth_frames(num_frames, 64, 64), tmp_path / "in.mp4", fps=12.0)
    info = probe_video(source.path)
    preprocessor = make_preprocessor(task, annotator, annotator_weights)
    frames = []
    for frame in preprocessor.process(iter_frames(source.path)):
        assert frame.dtype == np.uint8 and frame.shape == (64, 64, 3)
        frames.append(frame)
    encode_video(frames, tmp_path / "control.mp4", fps=info.fps)
    control = probe_video(tmp_path / "control.mp4")
    assert (control.num_frames, control.width, control.height) == (num_frames, 64, 64)
    assert control.fps == pytest.approx(12.0)


@pytest.mark.parametrize("annotator", ["dwpose", "openpose"])
def test_pose_at_the_default_batch_equals_one_at_a_time(annotator_weights: Path, annotator: str) -> None:
    """Batch-size invariance, exact: DWPose's networks see the frames' people together, OpenPose runs per frame."""
    frames = [*smooth_frames(5, 64, 96, seed=1), np.zeros((64, 96, 3), np.uint8)]  # the last has nobody in it
    preprocessor = make_preprocessor("pose", annotator, annotator_weights)
    assert preprocessor.batch_size == type(preprocessor).default_batch_size > 1
    batched = list(preprocessor.process(frames))
    preprocessor.batch_size = 1
    single = list(preprocessor.process(frames))
    if annotator == "dwpose":
        assert any(frame.any() for frame in batched)  # the tiny networks draw something
    for one, expected in zip(single, batched, strict=True):
        np.testing.assert_array_equal(one, expected)


@pytest.mark.parametrize("annotator", ["midas", "depth_anything_v2"])
def test_depth_is_min_max_gray_and_batch_independent(annotator_weights: Path, annotator: str) -> None:
    """Batch-size invariance at the default batch (4). MiDaS runs its network one frame per call, so it is exact;
    Depth Anything V2 runs batched and may differ by one grey level in a few pixels: a batch changes the summation
    order of the network's matrix products (MKL/oneDNN on CPU, cuBLAS/cuDNN on GPU), which now and then moves a
    value across a rounding boundary. 64x64 frames are MiDaS's own input size (short side 64, multiples of 64), so
    no resize softens the 0 and 255 extremes."""
    frames = smooth_frames(5, 64, 64, seed=2)
    preprocessor = make_preprocessor("depth", annotator, annotator_weights)
    batched = list(preprocessor.process(frames))
    preprocessor.batch_size = 1
    single = list(preprocessor.process(frames))
    for depth, one in zip(batched, single, strict=True):
        assert depth.dtype == np.uint8 and depth.shape == (64, 64, 3)
        assert np.array_equal(depth[..., 0], depth[..., 1]) and np.array_equal(depth[..., 0], depth[..., 2])
        assert depth.min() == 0 and depth.max() == 255
        difference = np.abs(depth.astype(int) - one)
        assert difference.max() <= (0 if annotator == "midas" else 1) and (difference > 0).mean() < 0.01


# ---------------------------------------------------------------------------------------------------------------
# Depth normalisation and streaming, with a stand-in network


class RedIsDepth(torch.nn.Module):
    """A 'depth network' whose depth is the red channel of its input."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels[:, 0]


def test_normalize_depth_is_per_frame_min_max() -> None:
    depth = torch.stack([torch.linspace(-3, 5, 64).reshape(8, 8), torch.full((8, 8), 7.0), torch.rand(8, 8) * 1e-3])
    out = normalize_depth(depth)
    assert out.dtype == torch.uint8
    assert (out[0].min(), out[0].max()) == (0, 255) and (out[2].min(), out[2].max()) == (0, 255)
    assert torch.equal(out[0].flatten(), out[0].flatten().sort().values)  # order-preserving
    assert int(out[1].max()) == 0  # no variation: black, not a division by zero


def test_depth_frames_normalised_each_on_its_own_range() -> None:
    ramp = np.repeat(np.linspace(0, 1, 128)[None, :], 64, axis=0)
    dim = np.stack([20 + 30 * ramp, np.zeros_like(ramp), np.zeros_like(ramp)], axis=-1).astype(np.uint8)
    bright = np.stack([250 - 150 * ramp, np.zeros_like(ramp), np.zeros_like(ramp)], axis=-1).astype(np.uint8)
    flat = np.full((64, 128, 3), 90, np.uint8)
    preprocessor = MidasPreprocessor(RedIsDepth(), batch_size=3)
    out_dim, out_bright, out_flat = preprocessor.process([dim, bright, flat])
    for out in (out_dim, out_bright):
        assert (out.min(), out.max()) == (0, 255)
        assert np.array_equal(out[..., 0], out[..., 2])
    assert out_dim[0, 0, 0] == 0 and out_dim[0, -1, 0] == 255  # dark-to-light ramp
    assert out_bright[0, 0, 0] == 255 and out_bright[0, -1, 0] == 0  # reversed ramp, same full range
    assert not out_flat.any()


def test_process_streams_a_batch_at_a_time() -> None:
    pulled = 0

    def frames() -> Iterator[np.ndarray]:
        nonlocal pulled
        for _ in range(10):
            pulled += 1
            yield np.zeros((64, 64, 3), np.uint8)

    outputs = MidasPreprocessor(RedIsDepth(), batch_size=3).process(frames())
    next(outputs)
    assert pulled == 3
    assert sum(1 for _ in outputs) == 9


def test_frames_must_be_uint8_rgb() -> None:
    preprocessor = MidasPreprocessor(RedIsDepth())
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        list(preprocessor.process([np.zeros((64, 64, 3), np.float32)]))
    with pytest.raises(ValueError, match="same size"):
        list(preprocessor.process([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 128, 3), np.uint8)]))


# ---------------------------------------------------------------------------------------------------------------
# DWPose decoding, with hand-built network outputs


def anchor_index(stride: int, cell_x: int, cell_y: int) -> int:
    offset = sum((DET_SIZE // s) ** 2 for s in DET_STRIDES[: DET_STRIDES.index(stride)])
    return offset + cell_y * (DET_SIZE // stride) + cell_x


def yolox_output(people: list[tuple[tuple[float, float, float, float], float, float]]) -> np.ndarray:
    """A (8400, 85) YOLOX output in which each (cx, cy, w, h box in detector pixels, objectness, class-0 score)
    comes from the stride-32 anchor of the cell holding its centre; every other anchor scores 0."""
    raw = np.zeros((8400, 85), np.float32)
    for (cx, cy, w, h), objectness, person in people:
        cell_x, cell_y = int(cx // 32), int(cy // 32)
        row = anchor_index(32, cell_x, cell_y)
        raw[row, :4] = [cx / 32 - cell_x, cy / 32 - cell_y, math.log(w / 32), math.log(h / 32)]
        raw[row, 4], raw[row, 5] = objectness, person
    return raw


def test_decode_detections_nms_and_thresholds() -> None:
    ratio = 0.5
    raw = yolox_output([
        ((200, 200, 100, 200), 0.95, 0.95),  # best person
        ((230, 210, 100, 200), 0.9, 0.9),  # overlaps the best one (IoU 0.5): suppressed by NMS
        ((480, 400, 120, 160), 0.8, 0.8),  # a second person
        ((100, 500, 60, 60), 0.5, 0.5),  # 0.25: a candidate (> 0.1) but not a person (<= 0.3)
    ])  # fmt: skip
    other_class = anchor_index(32, 15, 3)  # confident, but class 1
    raw[other_class, :4] = [0.5, 0.5, 1.0, 1.0]
    raw[other_class, 4], raw[other_class, 6] = 0.99, 0.99
    boxes = decode_detections(raw, ratio)
    expected = np.array([[150, 100, 250, 300], [420, 320, 540, 480]]) / ratio
    np.testing.assert_allclose(boxes, expected, rtol=1e-5)
    assert boxes.dtype == np.float64  # as VACE's NMS output; see the near-tie test below


def test_no_person_means_the_whole_image() -> None:
    boxes = person_boxes(np.zeros((8400, 85), np.float32), 0.4, height=1024, width=1536)
    np.testing.assert_array_equal(boxes, [[0, 0, 1536, 1024]])


def test_run_session_respects_fixed_and_dynamic_batches() -> None:
    class Recorder:
        def __init__(self, batch: int | str) -> None:
            self.batch, self.calls = batch, list[int]()

        def get_inputs(self) -> list[SimpleNamespace]:
            return [SimpleNamespace(name="x", shape=[self.batch, 2])]

        def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            self.calls.append(len(feed["x"]))
            return [feed["x"] * 10, feed["x"][:, :1]]

    inputs = np.arange(14, dtype=np.float32).reshape(7, 2)
    cases: list[tuple[int | str, int, list[int]]] = [(1, 8, [1] * 7), (4, 8, [4, 4]), ("batch", 3, [3, 3, 1])]
    for batch, max_batch, calls in cases:
        session = Recorder(batch)
        scaled, first = run_session(session, inputs, max_batch)
        assert session.calls == calls
        np.testing.assert_array_equal(scaled, inputs * 10)
        np.testing.assert_array_equal(first, inputs[:, :1])


def simcc_for(points: dict[int, tuple[float, float, float]], people: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """SimCC arrays whose maxima put COCO-WholeBody keypoint k at crop pixel (x, y) with score s; every other
    keypoint scores 0 (not visible)."""
    simcc_x = np.zeros((people, NUM_WHOLEBODY, 576), np.float32)
    simcc_y = np.zeros((people, NUM_WHOLEBODY, 768), np.float32)
    for k, (x, y, score) in points.items():
        simcc_x[:, k, round(2 * x)] = score
        simcc_y[:, k, round(2 * y)] = score
    return simcc_x, simcc_y


def test_decode_simcc_maps_crop_bins_to_image_pixels() -> None:
    # A 288x384 crop showing a 576x768 region centred on (500, 600): one crop pixel is two image pixels.
    simcc_x, simcc_y = simcc_for({0: (144, 192, 0.9), 1: (10.5, 300, 0.6)})
    simcc_y[0, 1, 600] = 0.8  # the score is the weaker of the two axes' maxima
    keypoints, scores = decode_simcc(simcc_x, simcc_y, np.array([[500.0, 600.0]]), np.array([[576.0, 768.0]]))
    np.testing.assert_allclose(keypoints[0, 0], [500, 600])
    np.testing.assert_allclose(keypoints[0, 1], [500 - 288 + 21, 600 - 384 + 600])
    np.testing.assert_allclose(scores[0, :2], [0.9, 0.6])
    assert scores[0, 2] == 0  # all-zero rows: score 0, never drawn


def test_crop_and_decode_are_inverse() -> None:
    """A bright dot in the image shows up in the crop where the decoded keypoint maps back to the dot."""
    image = np.zeros((1024, 1536, 3), np.uint8)
    dot = (900, 380)
    cv2.circle(image, dot, 2, (255, 255, 255), -1)
    box = np.array([700, 200, 1100, 800], np.float32)
    crop, center, size = crop_person(image, box)
    assert crop.shape == (3, 384, 288) and crop.dtype == np.float32
    assert size[1] / size[0] == pytest.approx(384 / 288) and size[1] == pytest.approx(600 * 1.25)
    y, x = np.unravel_index(crop[0].argmax(), crop[0].shape)
    simcc_x, simcc_y = simcc_for({0: (x, y, 1.0)})
    keypoints, _ = decode_simcc(simcc_x, simcc_y, center[None], size[None])
    np.testing.assert_allclose(keypoints[0, 0], dot, atol=size[0] / 288 + 1)


def test_to_openpose_adds_neck_and_reorders() -> None:
    keypoints = np.zeros((2, NUM_WHOLEBODY, 2))
    scores = np.full((2, NUM_WHOLEBODY), 0.9, np.float32)
    keypoints[:, 5], keypoints[:, 6], keypoints[:, 8] = [300, 100], [200, 100], [190, 180]  # l/r shoulder, r elbow
    scores[1, 5] = 0.2  # second person: left shoulder hidden, so no neck
    points, point_scores = to_openpose(keypoints, scores)
    assert points.shape == (2, 134, 2) and point_scores.dtype == np.float64
    np.testing.assert_array_equal(points[:, 1], [[250, 100], [250, 100]])  # neck between the shoulders
    np.testing.assert_array_equal(point_scores[:, 1], [1.0, 0.0])
    np.testing.assert_array_equal(points[0, 2], [200, 100])  # OpenPose 2: right shoulder (COCO 6)
    np.testing.assert_array_equal(points[0, 3], [190, 180])  # OpenPose 3: right elbow (COCO 8)
    np.testing.assert_array_equal(points[0, 5], [300, 100])  # OpenPose 5: left shoulder (COCO 5)


# ---------------------------------------------------------------------------------------------------------------
# Drawing: geometry, colours, what is left out

# A T-pose on a 1536x1024 canvas: OpenPose-18 positions, spread so no limb crosses another.
T_POSE = [
    (768, 180), (768, 300), (600, 300), (600, 450), (600, 600), (936, 300), (936, 450), (936, 600), (680, 600),
    (680, 780), (680, 950), (856, 600), (856, 780), (856, 950), (720, 150), (816, 150), (680, 170), (856, 170),
]  # fmt: skip


def pose_arrays(body: list[tuple[int, int]], body_scores: list[float]) -> tuple[np.ndarray, np.ndarray]:
    points, scores = np.zeros((1, 134, 2)), np.zeros((1, 134))
    points[0, :18], scores[0, :18] = body, body_scores
    return points, scores


def test_limb_and_joint_colours_follow_vace_order() -> None:
    points, scores = pose_arrays(T_POSE, [0.9] * 18)
    frame = to_output(draw_pose(points, scores, 1024, 1536), 1024, 1536)
    for i, (a, b) in enumerate(LIMBS):
        mid_x, mid_y = (np.array(T_POSE[a]) + T_POSE[b]) // 2
        assert tuple(frame[mid_y, mid_x]) == limb_rgb(i), f"limb {i}"
    for i, (x, y) in enumerate(T_POSE):
        assert tuple(frame[y, x]) == joint_rgb(i), f"joint {i}"


def test_skeleton_stays_between_its_points_and_skips_hidden_ones() -> None:
    scores = [0.9] * 18
    scores[6] = 0.3  # left elbow at the threshold: hidden (VACE draws body points strictly over 0.3)
    points, point_scores = pose_arrays(T_POSE, scores)
    points[0, 24:92], point_scores[0, 24:92] = (500, 100), 0.2  # face points below 0.3: hidden
    points[0, 24], point_scores[0, 24] = (760, 120), 0.3  # one face point at 0.3: drawn (white)
    points[0, 18:24], point_scores[0, 18:24] = (1200, 900), 1.0  # feet: never drawn
    points[0, 92:134], point_scores[0, 92:134] = (1200, 300), 1.0  # hands: never drawn
    frame = to_output(draw_pose(points, point_scores, 1024, 1536), 1024, 1536)

    drawn = np.argwhere(frame.any(axis=2))[:, ::-1]  # (x, y) of every non-black pixel
    visible = [(T_POSE[a], T_POSE[b]) for a, b in LIMBS if 6 not in (a, b)]
    visible += [(p, p) for i, p in enumerate(T_POSE) if i != 6]  # joints, drawn even without a limb
    distance = np.min([segment_distance(drawn, a, b) for a, b in visible], axis=0)
    distance = np.minimum(distance, np.hypot(*(drawn - (760, 120)).T))  # the one face point
    assert distance.max() <= 6  # stick half-width 4, +1 for the centre truncated to whole pixels, +1 rasterising
    assert tuple(frame[120, 760]) == (255, 255, 255)
    for hidden in [T_POSE[6], (500, 100), (1200, 900), (1200, 300)]:  # elbow, dim face, feet, hands
        x, y = hidden
        assert not frame[y - 8 : y + 9, x - 8 : x + 9].any()
    mid_x, mid_y = (np.array(T_POSE[5]) + T_POSE[6]) // 2
    assert not frame[mid_y, mid_x].any()  # no limb to the hidden elbow


def segment_distance(points: np.ndarray, a: tuple[int, int], b: tuple[int, int]) -> np.ndarray:
    a_, b_ = np.array(a, float), np.array(b, float)
    t = np.clip(((points - a_) @ (b_ - a_)) / max((b_ - a_) @ (b_ - a_), 1e-9), 0, 1)  # a == b: a joint
    return np.hypot(*(points - (a_ + t[:, None] * (b_ - a_))).T)


class StandIn:
    """An onnxruntime session stand-in: fixed batch 1 (like yolox_l.onnx) or dynamic, fixed outputs."""

    def __init__(self, name: str, batch: int | str, outputs: Callable[[np.ndarray], list[np.ndarray]]) -> None:
        self.name, self.batch, self.outputs = name, batch, outputs

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=self.name, shape=[self.batch])]

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.outputs(feed[self.name])


def test_dwpose_end_to_end_with_known_network_outputs() -> None:
    """A 1536x1024 frame (already VACE's detection size, so nothing is resized) with one detected person."""
    ratio = DET_SIZE / 1536
    # Box 400x614.4 centred on (768, 512): padded by 1.25 and widened to 3:4 it is 576x768, twice the crop size,
    # so a keypoint at crop pixel (x, y) lands on image pixel 2 * (x, y) + (768 - 288, 512 - 384).
    person = ((768 * ratio, 512 * ratio, 400 * ratio, 614.4 * ratio), 0.9, 0.9)
    detector = StandIn("images", 1, lambda x: [yolox_output([person])[None].repeat(len(x), 0)])
    offset = np.array([768 - 288, 512 - 384])
    image_points = {6: (700, 400), 5: (840, 400), 8: (700, 560), 7: (840, 560), 0: (770, 300), 100: (900, 700)}
    crop_points = {k: (*((np.array(p) - offset) / 2), 0.9) for k, p in image_points.items()}
    crop_points[7] = (*crop_points[7][:2], 0.2)  # left elbow: low score
    simcc = simcc_for(crop_points)
    estimator = StandIn("input", "batch", lambda x: [np.repeat(a, len(x), axis=0) for a in simcc])
    (out,) = DWPosePreprocessor(detector, estimator).process([np.zeros((1024, 1536, 3), np.uint8)])

    neck = (770, 400)
    expected_limbs = {0: (neck, (700, 400)), 1: (neck, (840, 400)), 2: ((700, 400), (700, 560)), 12: (neck, (770, 300))}
    for limb, (a, b) in expected_limbs.items():
        mid_x, mid_y = (np.array(a) + b) // 2
        assert tuple(out[mid_y, mid_x]) == limb_rgb(limb), f"limb {limb}"
    for joint, (x, y) in {0: (770, 300), 1: neck, 2: (700, 400), 3: (700, 560), 5: (840, 400)}.items():
        assert tuple(out[y, x]) == joint_rgb(joint), f"joint {joint}"
    assert not out[560 - 8 : 560 + 9, 840 - 8 : 840 + 9].any()  # low-score left elbow
    assert not out[700 - 8 : 700 + 9, 900 - 8 : 900 + 9].any()  # a hand keypoint (COCO-WholeBody 100)
    drawn = np.argwhere(out.any(axis=2))[:, ::-1]
    segments = [*expected_limbs.values()]
    assert np.min([segment_distance(drawn, a, b) for a, b in segments], axis=0).max() <= 6


def test_dwpose_box_centre_and_scale_are_float64_like_vace() -> None:
    """A near tie: with this box, the nose's x is 547.99997 when the box centre and scale are computed in float64
    (as VACE's NMS output, joined with float64 class ids, makes them) and exactly 548.0 in float32, so the drawn
    joint moves by a pixel if the boxes go back to float32."""
    ratio = DET_SIZE / 1536
    person = ((301.5755, 300.0, 150.3, 250.0), 0.9, 0.9)
    detector = StandIn("images", 1, lambda x: [yolox_output([person])[None].repeat(len(x), 0)])
    simcc = simcc_for({0: (54.0, 192.0, 0.9)})  # nose at crop pixel (54, 192)
    estimator = StandIn("input", "batch", lambda x: [np.repeat(a, len(x), axis=0) for a in simcc])
    (out,) = DWPosePreprocessor(detector, estimator).process([np.zeros((1024, 1536, 3), np.uint8)])

    x0, _, x1, _ = decode_detections(yolox_output([person]), ratio)[0]
    for dtype, nose_x in ((np.float64, 547), (np.float32, 548)):  # VACE's arithmetic, and the float32 one
        a, b = dtype(x0), dtype(x1)
        centre, width = (a + b) * dtype(0.5), (b - a) * dtype(BOX_PADDING)
        height = dtype(600 * BOX_PADDING)
        crop_width = width if width > height * (288 / 384) else height * (288 / 384)
        assert int(54.0 / 288 * crop_width + centre - crop_width / 2) == nose_x
    ys, xs = np.nonzero((out == joint_rgb(0)).all(axis=2))
    assert len(xs) and (xs.min() + xs.max()) / 2 == 547 and (ys.min() + ys.max()) / 2 == 720
