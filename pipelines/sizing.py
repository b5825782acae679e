"""Output width and height from the ``resolution`` and ``aspect_ratio`` fields.

The table follows the sizes the Wan models were trained on (832x480, 1280x720 and their square equivalents of
similar pixel count); every side is a multiple of 16, as the VAE (8x) and the transformer patch (2x) require.
``aspect_ratio=auto`` keeps the input video's aspect at the tier's pixel count; ``resolution=auto`` picks the tier
whose short side is closest to the input's short side (so upscaling a tiny clip stops at 240p and a 4K clip is
generated at 720p).
"""

from __future__ import annotations

import math

# tier -> aspect ratio -> (width, height)
RESOLUTIONS: dict[str, dict[str, tuple[int, int]]] = {
    "240p": {"16:9": (416, 240), "9:16": (240, 416), "1:1": (320, 320)},
    "360p": {"16:9": (624, 352), "9:16": (352, 624), "1:1": (464, 464)},
    "480p": {"16:9": (832, 480), "9:16": (480, 832), "1:1": (624, 624)},
    "580p": {"16:9": (1024, 576), "9:16": (576, 1024), "1:1": (768, 768)},
    "720p": {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (960, 960)},
}
MULTIPLE = 16


def _round16(x: float) -> int:
    return max(MULTIPLE, round(x / MULTIPLE) * MULTIPLE)


def auto_tier(in_width: int, in_height: int) -> str:
    """The named tier whose short side is nearest the input's short side."""
    short = min(in_width, in_height)
    return min(RESOLUTIONS, key=lambda tier: (abs(min(RESOLUTIONS[tier]["16:9"]) - short), tier))


def output_size(resolution: str, aspect_ratio: str, in_width: int, in_height: int) -> tuple[int, int]:
    """(width, height) of the generated video, both multiples of 16."""
    tier = auto_tier(in_width, in_height) if resolution == "auto" else resolution
    if aspect_ratio != "auto":
        return RESOLUTIONS[tier][aspect_ratio]
    ref_w, ref_h = RESOLUTIONS[tier]["16:9"]
    area = ref_w * ref_h
    aspect = in_width / in_height
    width = _round16(math.sqrt(area * aspect))
    height = _round16(math.sqrt(area / aspect))
    return width, height
