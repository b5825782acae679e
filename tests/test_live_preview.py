"""Live previews (``pipelines.live_preview``): the Wan 2.1 latent-to-RGB map, the prediction it is applied to (x0 from
the flow-matching output, as each sampler computes it), the animated WebP, the cadence of the loop's previews, and
``vace generate --preview FILE`` typed as a user types it. The served preview is in ``tests/test_server_resume.py``,
the playground's in ``tests/test_playground.py``."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from server_fixtures import REPO

from pipelines.conditioning import build_conditioning
from pipelines.denoise import denoise
from pipelines.hooks import JobHooks, PreviewSink
from pipelines.live_preview import WAN21_LATENT_RGB, WAN21_LATENT_RGB_BIAS, latent_rgb, write_webp
from pipelines.resume import LoopScheduler
from pipelines.samplers import make_scheduler
from pipelines.schema import VaceInput

VACE = Path(sys.executable).with_name("vace")


def test_each_latent_channel_maps_to_its_row_of_the_wan21_factors():
    latents = torch.zeros(1, 16, 3, 4, 5)
    for channel in range(16):
        one = latents.clone()
        one[0, channel] = 0.5
        rgb = latent_rgb(one, skip_frames=1)
        want = (0.5 * WAN21_LATENT_RGB[channel] + WAN21_LATENT_RGB_BIAS + 1) * 127.5
        assert rgb.shape == (2, 4, 5, 3)  # the reference frame left out
        assert np.abs(rgb.astype(float) - want.numpy()).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("sampler", ["unipc", "dpm++", "euler"])
def test_the_prediction_is_the_samplers_own_x0(sampler):
    """UniPC and DPM++ keep their x0 prediction as their last model output; Euler's last step lands on its x0."""
    generator = torch.Generator().manual_seed(1)
    scheduler = LoopScheduler(make_scheduler(sampler, 5.0))
    scheduler.set_timesteps(4)
    sample = torch.randn(1, 16, 2, 3, 4, generator=generator)
    for t in scheduler.timesteps:
        sample = scheduler.step(torch.randn(sample.shape, generator=generator), t, sample).prev_sample
        if sampler != "euler":
            assert torch.equal(scheduler.prediction(), scheduler.inner.model_outputs[-1])
    if sampler == "euler":
        assert torch.allclose(scheduler.prediction(), sample, atol=1e-6)


def test_write_webp_is_an_animated_webp_upscaled_at_the_latent_frame_rate(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 30, 52, 3), dtype=np.uint8)  # 416x240 latents
    path = write_webp(frames, tmp_path / "p.webp", video_fps=16)
    with Image.open(path) as image:
        assert image.format == "WEBP" and image.is_animated and image.n_frames == 5
        assert image.size == (312, 180)  # 6x: the whole factor nearest to 320 pixels on the long side
        image.load()
        assert image.info["duration"] == 250  # four video frames of a 16 fps video per latent frame


def test_the_loop_previews_every_n_steps_and_the_last(models, tmp_path):
    rng = np.random.default_rng(0)
    cond = build_conditioning([rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(5)], 64, 48)
    inp = VaceInput(prompt="p", video_url="https://example.com/v.mp4", num_inference_steps=5)
    published: list[tuple[int, tuple[int, int], int]] = []

    def publish(path: Path, step: int) -> None:
        with Image.open(path) as image:
            published.append((step, image.size, image.n_frames))

    hooks = JobHooks(preview=PreviewSink(every_steps=2, folder=tmp_path, publish=publish))
    pipe = models.get("wan-vace-14b").pipeline(make_scheduler("unipc", inp.shift))
    denoise(pipe, cond, inp, prompt="p", width=64, height=48, seed=1, hooks=hooks)
    assert [step for step, _, _ in published] in ([2, 4, 5], [2, 5])  # one still being written is skipped
    assert all(size == (320, 240) and n == 2 for _, size, n in published)  # 8x6 latents, 40x; 5 frames: 2 latent


def test_vace_generate_writes_the_preview_file(tiny_weights, pose_video, tmp_path):
    command = (
        f"generate pose --video {pose_video} --prompt 'a dancer' --weights-dir {tiny_weights} "
        "--num-frames 17 --num-inference-steps 2 --acceleration none --seed 4 --preview live.webp -o out.mp4"
    )
    done = subprocess.run(
        [str(VACE), *shlex.split(command)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with Image.open(tmp_path / "live.webp") as image:
        assert image.is_animated and image.n_frames == 5 and image.size == (312, 180)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.webp", "out.mp4"]  # no half-written preview left
