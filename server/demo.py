"""``vace demo`` / ``make demo``: the whole generation path on a fresh machine, no downloads.

Builds tiny random-weight models, draws its inputs (a walking stick figure in OpenPose colours, a sphere moving over a
receding floor, a mask image of the sphere on the first frame, the same clip letterboxed) and runs one job of every
endpoint through ``generate()``: pose on Wan2.1 VACE 14B and depth on Wan2.2 VACE-Fun A14B (33 frames each), then
inpainting (the mask image tracked through the clip by the tiny SAM2.1), outpainting, reframe and the base
endpoint's text-to-video (17 frames at 240p each, to keep the demo to a few minutes on two cores). With random
weights the output is noise shaped like a video; the point is that every real stage (fetch, decode, plan, masks,
mask tracking and canvases, conditioning, denoising, VAE decode, encode) runs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.manifest import SHARED_FOLDER
from pipelines.registry import APPS, DEFAULT_MODEL_FOR_TASK, EndpointTask
from weights.tiny.samples import SAMPLES, write_sample

EDIT = {"num_frames": 17, "resolution": "240p"}
# name -> (endpoint task, the samples it reads as {field: sample}, its other fields)
JOBS: dict[str, tuple[EndpointTask, dict[str, str], dict[str, Any]]] = {
    "pose": ("pose", {"video_url": "pose"}, {"prompt": "a person dancing in a park, cinematic", "num_frames": 33}),
    "depth": ("depth", {"video_url": "depth"}, {"prompt": "a golden ball rolling in a room", "num_frames": 33}),
    "inpainting": (
        "inpainting",
        {"video_url": "depth", "mask_image_url": "mask-image"},
        {"prompt": "a red apple rolling in a room", "mask_video_url": None, **EDIT},
    ),
    "outpainting": (
        "outpainting",
        {"video_url": "depth"},
        {"prompt": "a ball rolling in a wide hall", "expand_left": True, "expand_right": True, **EDIT},
    ),
    "reframe": ("reframe", {"video_url": "letterbox"}, {"aspect_ratio": "9:16", **EDIT}),
    "t2v": ("", {}, {"prompt": "a cat asleep on a sofa, morning light", **EDIT}),
}


def run_demo(weights_dir: Path, out_dir: Path) -> list[Path]:
    """Build tiny weights if needed, then run one job per endpoint; returns the videos written."""
    from pipelines.generate import MASK_VIDEO_FILE, generate
    from pipelines.hooks import JobHooks
    from pipelines.loading import ModelManager
    from pipelines.registry import input_model
    from pipelines.schema import VaceOutput
    from weights.tiny import build_tiny_weights

    if not (weights_dir / SHARED_FOLDER).is_dir():
        build_tiny_weights(weights_dir)
        print(f"built tiny random-weight models in {weights_dir}")
    out_dir = out_dir.resolve()  # output URLs are file:// URIs, which need absolute paths
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = {kind: write_sample(kind, out_dir / f"input-{kind}.mp4") for kind in ("pose", "depth")}
    inputs["mask-image"] = out_dir / "input-mask.png"  # the sphere on the first frame, which the job tracks
    Image.fromarray(SAMPLES["mask"](416, 240, 1, 16)[0]).save(inputs["mask-image"])
    # reframe covers its whole input by default (fal's match_input_*): a clip as short as the other edits' jobs
    inputs["letterbox"] = write_sample("letterbox", out_dir / "input-letterbox.mp4", num_frames=17)
    models = ModelManager(weights_dir)
    written = []
    for name, (task, media, fields) in JOBS.items():
        model = DEFAULT_MODEL_FOR_TASK[task]
        target = out_dir / f"{name}-{model}.mp4"
        app = next(app for app, key in APPS.items() if key == model)
        inp = input_model(app, task).model_validate(
            {
                **{field: str(inputs[kind]) for field, kind in media.items()},
                "num_inference_steps": 4,
                "seed": 42,
                "acceleration": "none",
                **fields,
            }
        )

        def publish(path: Path, _content_type: str, target: Path = target) -> str:
            destination = target.with_suffix(".mask.mp4") if path.name == MASK_VIDEO_FILE else target
            shutil.move(path, destination)
            return destination.as_uri()

        def log(message: str, name: str = name) -> None:
            print(f"[{name}] {message}")

        hooks = JobHooks(log=log)
        with tempfile.TemporaryDirectory(prefix="vace-demo-") as workdir:
            result = generate(
                inp, task=task, model=model, manager=models, workdir=Path(workdir), publish=publish, hooks=hooks
            )
        assert isinstance(result, VaceOutput)  # the demo runs no long reframe
        print(
            f"{name} on {model}: {target} ({result.video.width}x{result.video.height}, "
            f"{result.video.num_frames} frames at {result.video.fps:g} fps, seed {result.seed})"
        )
        if result.mask_video is not None:
            print(f"  the tracked mask: {result.mask_video.url}")
        for field, kind in media.items():
            print(f"  {field}: {inputs[kind]}")
        written.append(target)
    return written
