"""``vace generate`` and ``vace preprocess`` for the VACE family, typed as a user types them: each command line runs
the installed ``vace`` script in a child process (tiny weights for ``generate``; ``preprocess`` of an edit task
loads no model but the mask tracker, for a mask image)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from server_fixtures import REPO

from pipelines.conditioning import GREY
from pipelines.video_io import probe_video, read_frames
from weights.tiny.samples import write_sample

VACE = Path(sys.executable).with_name("vace")
FAST = "--num-frames 17 --num-inference-steps 2 --acceleration none --seed 4"


def vace(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``vace`` with ``command`` split as a shell splits it, this checkout's code first."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(VACE), *shlex.split(command)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder holding what a user would have: a clip, a mask video for it, a letterboxed clip, a mask
    image."""
    here = tmp_path_factory.mktemp("cli-family")
    write_sample("depth", here / "clip.mp4", num_frames=17)
    write_sample("mask", here / "mask.mp4", num_frames=17)
    write_sample("letterbox", here / "letterboxed.mp4", num_frames=17)
    box = np.zeros((240, 416), np.uint8)
    box[60:180, 100:300] = 255
    Image.fromarray(box).save(here / "box.png")
    return here


def first_frames(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Frame 0 of ``src_video.mp4`` and of ``src_mask.mp4`` in the folder ``path`` (the mask's first channel)."""
    video, mask = (read_frames(path / name, [0])[0] for name in ("src_video.mp4", "src_mask.mp4"))
    return video, mask[..., 0]


def test_preprocess_writes_each_edits_conditioning_and_mask_video(folder: Path) -> None:
    """What each edit conditions the model on, as VACE's preprocessing writes it: the outpainting canvas (the clip
    top right, the left and bottom border grey and white), the reframe of a letterboxed clip (its bars found and
    cut, the picture fitted into 1:1) and an inpainting mask that follows the clip (at the job's 8 fps, every other
    frame)."""
    done = vace(
        "preprocess outpainting --video clip.mp4 --expand-left --expand-bottom --resolution 240p -o out", folder
    )
    assert done.returncode == 0, done.stderr
    assert "the source (333x192) is placed at (83, 0) on the 416x240 output" in done.stdout
    video, mask = first_frames(folder / "out")
    assert (mask[:, :80] > 200).all() and (mask[196:] > 200).all() and (mask[:188, 88:] < 50).all()
    assert (np.abs(video[:, :80].astype(int) - GREY) <= 3).all()

    done = vace("preprocess reframe --video letterboxed.mp4 --aspect-ratio 1:1 --resolution 240p -o reframed", folder)
    assert done.returncode == 0, done.stderr
    assert "reframe: bars trimmed (top 30, bottom 30, left 0, right 0 px)" in done.stdout
    info = probe_video(folder / "reframed" / "src_video.mp4")
    assert (info.width, info.height, info.num_frames, info.fps) == (320, 320, 17, 16)  # reframe's match_input_*
    _, mask = first_frames(folder / "reframed")
    kept = np.flatnonzero((mask < 128).all(axis=1))
    assert (kept[0], len(kept)) == (91, 138)  # 416x180 fitted to 320 wide, centred; the whole frame would be 185

    done = vace(
        "preprocess inpainting --video clip.mp4 --mask mask.mp4 --frames-per-second 8 --num-frames 17 -o inpainted",
        folder,
    )
    assert done.returncode == 0, done.stderr
    assert "inpainting: mask mode per frame" in done.stdout
    masks = read_frames(folder / "inpainted" / "src_mask.mp4", list(range(9)))
    drawn = read_frames(folder / "mask.mp4", list(range(17)))
    for i, plane in enumerate(masks[:9]):  # frame i at 8 fps is the clip's frame 2i, mask and video alike
        assert np.mean((plane[..., 0] >= 128) == (drawn[2 * i][..., 0] >= 128)) > 0.99


def test_preprocess_inpainting_tracks_a_mask_image(folder: Path, tiny_weights: Path) -> None:
    """``vace preprocess inpainting --mask-image`` writes the tracked masks as ``src_mask.mp4`` (the first is the
    drawn box, grown as the job grows it; the tracker is the tiny one); ``--mask-tracking static`` writes the box
    unchanged on every frame, and without the tracker's weights the image is refused naming the download."""
    done = vace(
        f"preprocess inpainting --weights-dir {tiny_weights} --video clip.mp4 --mask-image box.png "
        "--num-frames 17 -o tracked",
        folder,
    )
    assert done.returncode == 0, done.stderr
    assert "mask tracking: sam2.1-hiera-small followed the first frame's mask through 17 frames" in done.stdout
    _, mask = first_frames(folder / "tracked")
    ys, xs = np.nonzero(mask >= 128)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (50, 349, 30, 209)  # the box, 50 px wider and 30 taller
    done = vace(
        f"preprocess inpainting --weights-dir {tiny_weights} --mask-tracking static --video clip.mp4 "
        "--mask-image box.png --num-frames 17 -o static",
        folder,
    )
    assert done.returncode == 0 and "inpainting: mask mode static" in done.stdout, done.stderr
    frames = read_frames(folder / "static" / "src_mask.mp4", list(range(17)))
    assert all(
        np.mean((f[..., 0] >= 128) == (np.asarray(Image.open(folder / "box.png")) == 255)) > 0.99 for f in frames
    )
    done = vace(f"preprocess inpainting --weights-dir {folder} --video clip.mp4 --mask-image box.png -o none", folder)
    assert done.returncode == 2 and "vace weights download --models sam2.1-hiera-small" in done.stderr


def test_generate_the_base_endpoint_and_inpainting(folder: Path, tiny_weights: Path) -> None:
    """``vace generate t2v`` (the base endpoint, no video) and ``vace generate inpainting`` with a mask image, on the
    tiny models: each writes its video and prints fal's output JSON; the tracked mask's video lands beside the
    inpainted one."""
    done = vace(
        f"generate t2v --weights-dir {tiny_weights} -q --prompt 'a cat on a sofa' --resolution 240p {FAST} -o t2v.mp4",
        folder,
    )
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    assert output["prompt"] == "a cat on a sofa" and output["seed"] == 4
    info = probe_video(folder / "t2v.mp4")
    assert (info.width, info.height, info.num_frames) == (416, 240, 17)

    done = vace(
        f"generate inpainting --model wan-22-vace-fun-a14b --weights-dir {tiny_weights} --prompt 'a box' "
        f"--video clip.mp4 --mask-image box.png {FAST} -o inpainted.mp4",
        folder,
    )
    assert done.returncode == 0, done.stderr
    assert "inpainting: mask mode track (the mask image marks the first frame" in done.stderr  # the job log
    output = json.loads(done.stdout)
    assert output["video"]["url"] == (folder / "inpainted.mp4").as_uri()
    assert output["mask_video"]["url"] == (folder / "inpainted.mask.mp4").as_uri()
    assert probe_video(folder / "inpainted.mp4").num_frames == probe_video(folder / "inpainted.mask.mp4").num_frames
    assert probe_video(folder / "inpainted.mp4").num_frames == 17


def test_generate_refuses_what_a_task_cannot_run(folder: Path, tiny_weights: Path) -> None:
    """Outpainting with no side is a one-line error naming the field; a flag of another endpoint does not exist."""
    done = vace(f"generate outpainting --weights-dir {tiny_weights} --prompt p --video clip.mp4 -o x.mp4", folder)
    assert done.returncode == 2
    assert done.stderr.startswith("error: expand_left: no side to expand") and "Traceback" not in done.stderr
    done = vace(
        f"generate reframe --weights-dir {tiny_weights} --video clip.mp4 --ref_image_urls a.png -o x.mp4", folder
    )
    assert done.returncode == 2 and "unrecognized arguments: --ref_image_urls a.png" in done.stderr
