"""``vace demo`` / ``make demo``: the whole generation path on a fresh machine, no downloads.

Builds tiny random-weight models, draws a pose control video (a walking stick figure in OpenPose colours) and a
depth control video (a sphere moving over a receding floor), and runs one pose job on Wan2.1 VACE 14B and one depth
job on Wan2.2 VACE-Fun A14B through ``generate()``. With random weights the output is noise shaped like a video;
the point is that every real stage (fetch, decode, plan, conditioning, denoising, VAE decode, encode) runs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pipelines.manifest import SHARED_FOLDER
from pipelines.registry import DEFAULT_MODEL_FOR_TASK
from weights.tiny.samples import write_sample


def run_demo(weights_dir: Path, out_dir: Path) -> list[Path]:
    """Build tiny weights if needed, then run one pose and one depth job; returns the videos written."""
    from pipelines.generate import generate
    from pipelines.hooks import JobHooks
    from pipelines.loading import ModelManager
    from pipelines.schema import VaceInput
    from weights.tiny import build_tiny_weights

    if not (weights_dir / SHARED_FOLDER).is_dir():
        build_tiny_weights(weights_dir)
        print(f"built tiny random-weight models in {weights_dir}")
    out_dir = out_dir.resolve()  # output URLs are file:// URIs, which need absolute paths
    out_dir.mkdir(parents=True, exist_ok=True)
    models = ModelManager(weights_dir)
    written = []
    for task, model in DEFAULT_MODEL_FOR_TASK.items():
        control = write_sample(task, out_dir / f"{task}-control.mp4")
        target = out_dir / f"{task}-{model}.mp4"
        inp = VaceInput(
            prompt="a person dancing in a park, cinematic" if task == "pose" else "a golden ball rolling in a room",
            video_url=str(control),
            num_frames=33,
            num_inference_steps=4,
            seed=42,
            acceleration="none",
        )

        def publish(path: Path, _content_type: str, target: Path = target) -> str:
            shutil.move(path, target)
            return target.as_uri()

        hooks = JobHooks(log=lambda m, task=task: print(f"[{task}] {m}"))
        with tempfile.TemporaryDirectory(prefix="vace-demo-") as workdir:
            result = generate(
                inp, task=task, model=model, manager=models, workdir=Path(workdir), publish=publish, hooks=hooks
            )
        print(f"{task} on {model}: {target} ({result.video.width}x{result.video.height}, "
              f"{result.video.num_frames} frames at {result.video.fps:g} fps, seed {result.seed})")
        print(f"  control video: {control}")
        written.append(target)
    return written
