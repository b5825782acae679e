"""Live previews while a job denoises: the current prediction of the clean video, as a small animated WebP.

After a step the loop has the model's prediction of the clean latents (``LoopScheduler.prediction``: ``x0`` from the
flow-matching output, not the noisy latents, which stay mostly noise until the last steps). :func:`latent_rgb` turns
it into RGB with a fixed linear map of the 16 latent channels plus a bias, per latent pixel, at latent resolution
(on the device; only those few pixels are copied to the host); :func:`write_webp` upscales them bilinearly by a whole
factor to about ``TARGET_SIDE`` pixels on the long side and writes an animated WebP at the latent frame rate (one
latent frame covers four video frames: 4 fps for a 16 fps video), beside the loop.

The map's numbers are ComfyUI's (``comfy/latent_formats.py``, class ``Wan21``: ``latent_rgb_factors``, 16 x 3, and
``latent_rgb_factors_bias``), which its latent previews use for the Wan 2.1 VAE; both of our model families use that
VAE. They apply to the normalised latents (``(z - mean) / std``, the space the pipeline denoises in, as ComfyUI's
model-space latents are) and give RGB in about [-1, 1].

Why not a decoder: the Wan VAE's own decoder costs a sizeable share of a step; a tiny distilled one (TAEHV's
``taew2_1``) would give sharper previews, but its weights are not among the ones this server installs, so the
projection is what runs. Cost: x0 and the projection are about 130 FLOPs per latent pixel (2 x 10^7 for a 480p,
81-frame latent; ``bench/resume_cost.py``, ``docs/BENCHMARKS.md``) against the ~5 x 10^15 of a step; the upscaling
and encoding run beside the loop (``pipelines.background``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

WAN21_LATENT_RGB = torch.tensor(
    [
        [-0.1299, -0.1692, 0.2932],
        [0.0671, 0.0406, 0.0442],
        [0.3568, 0.2548, 0.1747],
        [0.0372, 0.2344, 0.1420],
        [0.0313, 0.0189, -0.0328],
        [0.0296, -0.0956, -0.0665],
        [-0.3477, -0.4059, -0.2925],
        [0.0166, 0.1902, 0.1975],
        [-0.0412, 0.0267, -0.1364],
        [-0.1293, 0.0740, 0.1636],
        [0.0680, 0.3019, 0.1128],
        [0.0032, 0.0581, 0.0639],
        [-0.1251, 0.0927, 0.1699],
        [0.0060, -0.0633, 0.0005],
        [0.3477, 0.2275, 0.2950],
        [0.1984, 0.0913, 0.1861],
    ]
)
"""Latent channel -> (R, G, B): ComfyUI ``comfy/latent_formats.py`` ``Wan21.latent_rgb_factors``."""
WAN21_LATENT_RGB_BIAS = torch.tensor([-0.1835, -0.0868, -0.3360])
"""ComfyUI ``comfy/latent_formats.py`` ``Wan21.latent_rgb_factors_bias``."""
TARGET_SIDE = 320
"""About how many pixels the long side of a preview has: 312 x 180 at 480p, 320 x 180 at 720p."""
TEMPORAL_COMPRESSION = 4
"""Video frames per latent frame (the Wan VAE's), which sets the preview's frame rate."""
WEBP_QUALITY = 60


def latent_rgb(latents: torch.Tensor, skip_frames: int = 0) -> np.ndarray:
    """Normalised latents (1, 16, F, H, W) as uint8 RGB frames (F - ``skip_frames``, H, W, 3) at latent resolution;
    ``skip_frames`` leading latent frames (the reference images) are left out. Runs on the latents' device; only the
    small result is copied to the host."""
    x = latents[0, :, skip_frames:].float()
    rgb = torch.einsum("cfhw,cr->fhwr", x, WAN21_LATENT_RGB.to(x.device)) + WAN21_LATENT_RGB_BIAS.to(x.device)
    return ((rgb + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).cpu().numpy()


def write_webp(frames: np.ndarray, path: Path, video_fps: float) -> Path:
    """Write latent-resolution ``frames`` as a looping animated WebP at the latent frame rate of a ``video_fps``
    video, each upscaled bilinearly by a whole factor towards ``TARGET_SIDE``."""
    height, width = frames.shape[1:3]
    scale = max(1, round(TARGET_SIDE / max(height, width)))
    size = (width * scale, height * scale)
    images = [Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR) for frame in frames]
    duration_ms = round(1000 * TEMPORAL_COMPRESSION / video_fps)
    images[0].save(
        path,
        format="WEBP",
        save_all=True,
        append_images=images[1:],
        duration=duration_ms,
        loop=0,
        quality=WEBP_QUALITY,
        method=0,
    )
    return path
