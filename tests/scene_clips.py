"""A clip of three scenes for the long-reframe tests: three ffmpeg test sources one after the other, with sound."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg

SOURCES = ("testsrc2", "smptebars", "rgbtestsrc")


def write_three_scenes(path: Path, seconds: float = 1.25) -> Path:
    """Three scenes of ``seconds`` each (416x240, 16 fps: 20 frames at the default), the last with a dark bar down
    its left edge (rgbtestsrc's), and a 440 Hz tone (AAC) under them, cut to the video."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
    for source in SOURCES:
        command += ["-f", "lavfi", "-i", f"{source}=size=416x240:rate=16:duration={seconds}"]
    command += [
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:duration={3 * seconds + 1}",
        "-filter_complex",
        "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]",
        "-map",
        "[v]",
        "-map",
        "3:a",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-crf",
        "10",
        "-c:a",
        "aac",
        "-shortest",
        str(path),
    ]
    subprocess.run(command, check=True)
    return path
