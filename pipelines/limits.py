"""Every size, time and count limit on a job's inputs, in one place.

A server takes them from its config into its ``JobContext``; the CLI uses the defaults. Each limit is checked
before any model work, and each refusal is an ``InputError`` (fal's 422 body on the server).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import InputError
from .video_io import VideoInfo

MiB = 1024**2


@dataclass(frozen=True)
class Limits:
    max_download_bytes: int = 2 * 1024**3
    download_timeout_s: float = 120.0
    max_data_uri_bytes: int = 10 * MiB
    max_redirects: int = 5
    max_video_seconds: float = 600.0
    max_video_frames: int = 20_000
    max_video_pixels: int = 3840 * 2160
    """Width x height of the decoded input video."""
    max_image_pixels: int = 8192 * 8192
    max_ref_images: int = 8
    max_prompt_chars: int = 5_000
    max_loras: int = 4
    """LoRAs one request may name."""
    max_lora_bytes: int = 4 * 1024**3
    """Size of one LoRA file: larger than media files, since a rank-128 LoRA of a 14B model is ~1.2 GB in fp32."""

    def with_settings(self, settings: list[str]) -> Limits:
        """These limits with ``NAME=VALUE`` settings applied (``vace serve --limits``); ValueError names the
        known limits when a name or value is wrong."""
        types = {f.name: f.type for f in fields(self)}
        changes: dict[str, Any] = {}  # each value of its field's type, read from the field
        for setting in settings:
            name, _, value = setting.partition("=")
            name = name.strip()
            if name not in types:
                raise ValueError(f"unknown limit {name!r}; known limits: {', '.join(types)}")
            try:
                number = (float if types[name] == "float" else int)(value)  # annotations are strings here
            except ValueError:
                raise ValueError(f"limit {name} needs a number, got {value!r}") from None
            if number <= 0:
                raise ValueError(f"limit {name} must be positive, got {value!r}")
            changes[name] = number
        return replace(self, **changes)


def check_video_limits(info: VideoInfo, limits: Limits, field: str = "video_url") -> None:
    """Limits on the decoded input video, checked right after probing (before any frame is decoded to RGB)."""
    if info.width * info.height > limits.max_video_pixels:
        raise InputError(
            field,
            f"the video is {info.width}x{info.height}, over the {limits.max_video_pixels}-pixel limit",
            "video_too_large",
        )
    if info.num_frames > limits.max_video_frames:
        raise InputError(
            field,
            f"the video has {info.num_frames} frames, over the limit of {limits.max_video_frames}",
            "video_too_long",
        )
    if info.duration > limits.max_video_seconds:
        raise InputError(
            field,
            f"the video lasts {info.duration:.1f} s, over the limit of {limits.max_video_seconds:g} s",
            "video_too_long",
        )
