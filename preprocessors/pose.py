"""Pose control frames: DWPose the way VACE's pose annotator makes them, and OpenPose as the alternative.

VACE (ali-vilab/VACE ``vace/annotators/pose.py``, ``PoseBodyFaceVideoAnnotator``) runs DWPose in onnxruntime, one
frame at a time:

1. the RGB frame is flipped to BGR (both networks were trained on OpenCV-decoded images) and resized so its short
   side is 1024, both sides rounded to multiples of 64;
2. YOLOX-L (``yolox_l.onnx``) sees it letterboxed into 640x640 (top-left, grey 114 padding); its anchors are
   decoded on the stride 8/16/32 grids, class-0 ("person") boxes scoring over 0.1 go through NMS at IoU 0.45
   and those scoring over 0.3 are people. With no person the whole image is used as the one box;
3. each box, padded by 1.25 and widened to 3:4, is warped to a 288x384 crop, normalised with ImageNet statistics
   (in BGR order, as VACE does) and given to RTMPose-L whole-body (``dw-ll_ucoco_384.onnx``), whose SimCC output
   is one 1-D classification per keypoint and axis, with two bins per pixel;
4. the 133 COCO-WholeBody keypoints get a neck (mean of the shoulders, visible when both are over 0.3), the body
   is reordered to OpenPose-18, body keypoints over 0.3 and face keypoints from 0.3 are drawn at the 1024 scale
   (limbs, then joints, then face; no hands, no feet), and the drawing is flipped back to RGB (so VACE's first
   limb, drawn as (255, 0, 0), ends up blue) and resized to the input size.

We do the same arithmetic, with the same dtypes, so a frame's output matches VACE's, but per batch: the per-frame
OpenCV work runs on the worker threads, the detector sees all frames of a batch in one call where its batch
dimension is dynamic, and the pose network sees every person of the batch together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import cv2
import numpy as np
import onnxruntime as ort
import torch

from .aux_modules import aux_module
from .base import Preprocessor, require_weights, vace_resize

log = logging.getLogger(__name__)

RESIZE_SHORT_SIDE = 1024
DET_SIZE = 640
DET_STRIDES = (8, 16, 32)
DET_PAD_VALUE = 114
DET_CANDIDATE_SCORE = 0.1  # YOLOX's own pre-NMS floor; only boxes over PERSON_SCORE are kept afterwards
NMS_IOU = 0.45
PERSON_SCORE = 0.3
POSE_WIDTH, POSE_HEIGHT = 288, 384
BOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
KEYPOINT_SCORE = 0.3
# RTMPose's training normalisation (listed for RGB; VACE feeds BGR through it, and so do we).
POSE_MEAN = np.array([123.675, 116.28, 103.53])
POSE_STD = np.array([58.395, 57.12, 57.375])
MAX_CROPS_PER_CALL = 32  # people per pose-network call when its batch dimension is dynamic

NUM_WHOLEBODY = 133  # COCO-WholeBody: 17 body, 6 feet, 68 face, 2 x 21 hands
NECK = 17  # where the neck is inserted, right after COCO's 17 body keypoints
# OpenPose-18 order (nose, neck, right arm, left arm, right leg, left leg, eyes, ears) as indices into COCO-17
# with the neck appended at NECK.
OPENPOSE_FROM_COCO = [0, NECK, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
BODY = slice(0, 18)
FACE = slice(24, 92)  # after OpenPose-18 and the 6 feet keypoints

OPENPOSE_RESOLUTION = 512  # controlnet-aux's default detect resolution; its network rescales to 184 px anyway


class OnnxSession(Protocol):
    """The part of ``onnxruntime.InferenceSession`` we use (tests pass stand-ins with known outputs)."""

    def get_inputs(self) -> list[Any]: ...

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def onnx_session(path: Path, device: str | torch.device) -> ort.InferenceSession:
    """An onnxruntime session on the CUDA execution provider when ``device`` is a GPU and the provider exists."""
    device = torch.device(device)
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        else:
            log.warning("onnxruntime lacks the CUDA execution provider (onnxruntime-gpu); %s runs on CPU", path.name)
    return ort.InferenceSession(str(path), providers=providers)


def run_session(
    session: OnnxSession, inputs: np.ndarray, max_batch: int, output_names: list[str] | None = None
) -> list[np.ndarray]:
    """Run ``inputs`` (N, ...) through ``session`` in as few calls as the model allows.

    A model exported with a fixed batch size gets chunks of exactly that size (the last one zero-padded and the
    padding dropped from the outputs); one with a dynamic batch dimension gets up to ``max_batch`` rows per call.
    """
    first = session.get_inputs()[0]
    fixed = first.shape[0] if isinstance(first.shape[0], int) and first.shape[0] > 0 else None
    step = fixed or max_batch
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(inputs), step):
        chunk = inputs[start : start + step]
        rows = len(chunk)
        if fixed and rows < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - rows, *chunk.shape[1:]), chunk.dtype)])
        parts.append([out[:rows] for out in session.run(output_names, {first.name: chunk})])
    return [np.concatenate(outs) for outs in zip(*parts, strict=True)]


def _anchor_grid() -> tuple[np.ndarray, np.ndarray]:
    """YOLOX's anchor order: stride 8, 16, 32, each grid row-major; cell (x, y) and stride of every anchor."""
    cells, strides = [], []
    for stride in DET_STRIDES:
        side = DET_SIZE // stride
        ys, xs = np.mgrid[0:side, 0:side]
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((side * side, 1), stride))
    return np.concatenate(cells).astype(np.float64), np.concatenate(strides).astype(np.float64)


ANCHOR_CELLS, ANCHOR_STRIDES = _anchor_grid()


def letterbox(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The detector input (3x640x640 float32, raw 0..255 pixels) and the scale from ``image`` to it."""
    height, width = image.shape[:2]
    ratio = min(DET_SIZE / height, DET_SIZE / width)
    new_w, new_h = int(width * ratio), int(height * ratio)
    canvas = np.full((DET_SIZE, DET_SIZE, 3), DET_PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), ratio


def decode_detections(raw: np.ndarray, ratio: float) -> np.ndarray:
    """Person boxes (n, 4) x0 y0 x1 y1, best first, in the image that was letterboxed, from one YOLOX output
    (8400, 85) and that image's letterbox ``ratio``.

    Each anchor row is (dx, dy, log w, log h) in stride units, then objectness and 80 class probabilities. Only
    class 0 matters: NMS is per class, so the other classes cannot change which people survive.

    Decoding and NMS run in float32 as in VACE; the kept boxes are float64, because VACE's NMS returns them joined
    with float64 class ids (``np.concatenate``), so its box centre and scale (and with them the crop's affine map
    and every keypoint) are computed in float64. In float32 the centre can move by ~1e-5 px, which shifts a
    crop pixel by a grey level now and then, flips SimCC argmax near-ties and moves a keypoint by up to ~140 px.
    """
    centers = ((raw[:, :2] + ANCHOR_CELLS) * ANCHOR_STRIDES).astype(np.float32)
    sizes = (np.exp(raw[:, 2:4]) * ANCHOR_STRIDES).astype(np.float32)
    person = raw[:, 4] * raw[:, 5]
    candidates = person > DET_CANDIDATE_SCORE
    boxes = np.concatenate([centers - sizes / 2.0, centers + sizes / 2.0], axis=1)[candidates] / ratio
    scores = person[candidates]
    keep = [i for i in nms(boxes, scores, NMS_IOU) if scores[i] > PERSON_SCORE]
    return boxes[keep].astype(np.float64)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression with YOLOX's inclusive pixel areas (+1); indices of kept boxes, best first."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]) + 1)
        inter = inter_w * inter_h
        order = rest[inter / (areas[best] + areas[rest] - inter) <= iou]
    return keep


def person_boxes(raw: np.ndarray, ratio: float, height: int, width: int) -> np.ndarray:
    """The boxes the pose network sees (float64, as VACE's): the detected people, or the whole image when there are
    none."""
    boxes = decode_detections(raw, ratio)
    return boxes if len(boxes) else np.array([[0, 0, width, height]], dtype=np.float64)


class Crop(NamedTuple):
    """One person as the pose network sees it: ``pixels`` (3x384x288 float32) show the 3:4 region of ``size``
    (w, h) around ``center`` (x, y) of the detection image."""

    pixels: np.ndarray
    center: np.ndarray
    size: np.ndarray


def crop_person(image: np.ndarray, box: np.ndarray) -> Crop:
    """The pose network's input for one box, padded by 1.25 and widened to 3:4."""
    center = (box[:2] + box[2:]) * 0.5
    width, height = (box[2:] - box[:2]) * BOX_PADDING
    aspect = POSE_WIDTH / POSE_HEIGHT
    size = np.array([width, width / aspect] if width > height * aspect else [height * aspect, height], box.dtype)
    # Three point pairs fix the affine map: the centre, the point half a crop-width above it, and the point half a
    # crop-width left of that. Built in float32 like VACE's so the warp (and every keypoint) is the same.
    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + np.array([0.0, size[0] * -0.5])
    up = src[0] - src[1]
    src[2] = src[1] + np.array([-up[1], up[0]], dtype=np.float32)
    half_w, half_h = POSE_WIDTH * 0.5, POSE_HEIGHT * 0.5
    dst = np.array([[half_w, half_h], [half_w, half_h - half_w], [0.0, half_h - half_w]], dtype=np.float32)
    warp = cv2.getAffineTransform(src, dst)
    crop = cv2.warpAffine(image, warp, (POSE_WIDTH, POSE_HEIGHT), flags=cv2.INTER_LINEAR)
    normalised = (crop - POSE_MEAN) / POSE_STD
    return Crop(np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32), center, size)


def decode_simcc(
    simcc_x: np.ndarray, simcc_y: np.ndarray, centers: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (n, K, 2) in image pixels and their scores (n, K) from SimCC outputs (n, K, bins).

    The strongest bin of each axis is the position (in half pixels of the 288x384 crop); the weaker of the two
    maxima is the score, and a keypoint without a positive score is put at bin -1.
    """
    locations = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], axis=-1).astype(np.float32)
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
    locations[scores <= 0] = -1
    locations /= SIMCC_SPLIT_RATIO
    sizes, centers = sizes[:, None, :], centers[:, None, :]
    keypoints = locations / np.array([POSE_WIDTH, POSE_HEIGHT]) * sizes + centers - sizes / 2
    return keypoints, scores


def to_openpose(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-WholeBody (n, 133) to VACE's 134-point layout: OpenPose-18 body (with neck), feet, face, hands.

    Scores become float64, as in VACE, so the 0.3 thresholds compare the same numbers.
    """
    scores = scores.astype(np.float64)
    neck = keypoints[:, [5, 6]].mean(axis=1)
    neck_visible = ((scores[:, 5] > KEYPOINT_SCORE) & (scores[:, 6] > KEYPOINT_SCORE)).astype(np.float64)
    points = np.insert(keypoints, NECK, neck, axis=1)
    point_scores = np.insert(scores, NECK, neck_visible, axis=1)
    points[:, BODY] = points[:, OPENPOSE_FROM_COCO]
    point_scores[:, BODY] = point_scores[:, OPENPOSE_FROM_COCO]
    return points, point_scores


def draw_pose(points: np.ndarray, scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """VACE's body + face drawing of 134-point poses on a black ``height`` x ``width`` canvas, BGR as drawn.

    Body keypoints count when over 0.3, face keypoints from 0.3 (VACE hides face points below 0.3). Drawn with
    controlnet-aux's DWPose utilities, the same drawing code VACE ships: limbs dimmed to 60%, joints on top.
    """
    util = aux_module("dwpose.util")
    people = len(points)
    normalised = points / np.array([float(width), float(height)])
    body = normalised[:, BODY].reshape(people * 18, 2)
    body_index = np.where(scores[:, BODY] > KEYPOINT_SCORE, np.arange(people * 18).reshape(people, 18), -1)
    faces = np.where((scores[:, FACE] >= KEYPOINT_SCORE)[..., None], normalised[:, FACE], -1.0)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas = util.draw_bodypose(canvas, body, body_index)
    return util.draw_facepose(canvas, faces)


def to_output(canvas: np.ndarray, height: int, width: int) -> np.ndarray:
    """A canvas drawn at the detection scale, as the RGB control frame at the input size (VACE's flip + resize)."""
    upscale = height * width > canvas.shape[0] * canvas.shape[1]
    resized = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_LANCZOS4 if upscale else cv2.INTER_AREA)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


class DWPosePreprocessor(Preprocessor):
    """DWPose (YOLOX-L + RTMPose-L whole-body) in onnxruntime, VACE's default pose annotator."""

    task = "pose"
    default_batch_size = 8

    def __init__(
        self, detector: OnnxSession, estimator: OnnxSession, batch_size: int | None = None, workers: int | None = None
    ) -> None:
        super().__init__(batch_size, workers)
        self.detector = detector
        self.estimator = estimator

    @classmethod
    def load(
        cls, detector: Path, estimator: Path, device: str | torch.device = "cpu", batch_size: int | None = None
    ) -> DWPosePreprocessor:
        """From the two ONNX files: the YOLOX-L detector and the RTMPose estimator."""
        detector, estimator = require_weights(detector), require_weights(estimator)
        return cls(onnx_session(detector, device), onnx_session(estimator, device), batch_size=batch_size)

    def process_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        images = self.map(_detection_image, frames)
        det_inputs = self.map(letterbox, images)
        raw = run_session(self.detector, np.stack([pixels for pixels, _ in det_inputs]), self.batch_size)[0]
        boxes = [
            person_boxes(r, ratio, *image.shape[:2])
            for r, (_, ratio), image in zip(raw, det_inputs, images, strict=True)
        ]
        per_frame = self.map(lambda image, people: [crop_person(image, box) for box in people], images, boxes)
        crops = [crop for frame_crops in per_frame for crop in frame_crops]
        simcc_x, simcc_y = run_session(
            self.estimator, np.stack([c.pixels for c in crops]), MAX_CROPS_PER_CALL, ["simcc_x", "simcc_y"]
        )
        keypoints, scores = decode_simcc(
            simcc_x, simcc_y, np.stack([c.center for c in crops]), np.stack([c.size for c in crops])
        )
        points, point_scores = to_openpose(keypoints, scores)
        splits = np.cumsum([len(frame_crops) for frame_crops in per_frame])[:-1]
        return self.map(_draw_frame, np.split(points, splits), np.split(point_scores, splits), images, frames)


def _draw_frame(points: np.ndarray, scores: np.ndarray, image: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """One frame's people drawn at the detection scale, returned at the frame's size."""
    return to_output(draw_pose(points, scores, *image.shape[:2]), *frame.shape[:2])


def _detection_image(frame: np.ndarray) -> np.ndarray:
    """The frame as both networks see it: BGR, short side 1024."""
    return vace_resize(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), RESIZE_SHORT_SIDE)


class OpenPosePreprocessor(Preprocessor):
    """OpenPose body-only through controlnet-aux's ``OpenposeDetector``, one frame per network call.

    controlnet-aux's OpenPose post-processing (peak search, limb matching) is per image, so frames are not batched
    through the network; frames of a batch run side by side on the worker threads instead. Like DWPose in VACE,
    the network gets BGR and the drawing is flipped back, so both pose annotators use the same colours.
    """

    task = "pose"
    default_batch_size = 4

    def __init__(self, detector: Any, batch_size: int | None = None, workers: int | None = None) -> None:
        super().__init__(batch_size, workers)
        self.detector = detector

    @classmethod
    def load(
        cls, body_model: Path, device: str | torch.device = "cpu", batch_size: int | None = None
    ) -> OpenPosePreprocessor:
        """From controlnet-aux's OpenPose body checkpoint."""
        open_pose = aux_module("open_pose")
        body = open_pose.Body(str(require_weights(body_model)))
        body.to(torch.device(device))
        return cls(open_pose.OpenposeDetector(body), batch_size=batch_size)

    def process_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.map(self.annotate, frames)

    def annotate(self, frame: np.ndarray) -> np.ndarray:
        """One frame through controlnet-aux's detector, as a control frame of the frame's size."""
        canvas = self.detector(
            cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
            detect_resolution=OPENPOSE_RESOLUTION,
            image_resolution=OPENPOSE_RESOLUTION,
            include_body=True,
            include_hand=False,
            include_face=False,
            output_type="np",
        )
        return to_output(canvas, *frame.shape[:2])
