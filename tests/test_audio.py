"""The input's sound in the output (``pipelines.audio``), on small clips made with ffmpeg; no model runs here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest

from pipelines.audio import add_audio, audio_codec
from pipelines.encode import encode_video
from pipelines.errors import InputError
from pipelines.video_io import probe_video
from weights.tiny.samples import pose_frames

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def clip_with_sound(path: Path, codec: list[str], seconds: float = 3.0) -> Path:
    """Two seconds of video (testsrc) with ``seconds`` of a tone encoded as ``codec``."""
    subprocess.run(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=128x96:rate=16:duration=2",
            "-f",
            "lavfi",
            "-i",
            f"sine=duration={seconds}",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            *codec,
            str(path),
        ],
        check=True,
    )
    return path


def duration(path: Path, stream: str) -> float:
    """The duration of ``path``'s first ``stream`` (``a`` or ``v``), decoded to the end."""
    proc = subprocess.run(
        [FFMPEG, "-hide_banner", "-i", str(path), "-map", f"0:{stream}:0", "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    hours, minutes, seconds = proc.stderr.rsplit("time=", 1)[1].split()[0].split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """What a job encoded: 17 frames at 16 fps (1.0625 s), silent."""
    return encode_video(pose_frames(128, 96, 17, 16), tmp_path / "video.mp4", 16).path


def test_aac_is_copied_and_cut_to_the_video(tmp_path: Path, output: Path) -> None:
    source = clip_with_sound(tmp_path / "in.mp4", ["-c:a", "aac"])
    assert add_audio(output, source, 17 / 16).startswith("the input's sound (aac) is copied into the video")
    assert audio_codec(output) == "aac" and probe_video(output).num_frames == 17
    assert duration(output, "a") == pytest.approx(17 / 16, abs=0.05)


def test_sound_an_mp4_does_not_play_is_re_encoded_to_aac(tmp_path: Path, output: Path) -> None:
    source = clip_with_sound(tmp_path / "in.mkv", ["-c:a", "pcm_s16le"])
    assert audio_codec(source) == "pcm_s16le"
    assert add_audio(output, source, 17 / 16).startswith(
        "the input's sound (pcm_s16le, which an MP4 does not play) is re-encoded to AAC"
    )
    assert audio_codec(output) == "aac" and duration(output, "a") == pytest.approx(17 / 16, abs=0.05)


def test_a_silent_input_leaves_the_video_silent(tmp_path: Path, output: Path) -> None:
    source = encode_video(pose_frames(128, 96, 17, 16), tmp_path / "silent.mp4", 16).path
    before = output.read_bytes()
    assert add_audio(output, source, 17 / 16) == "the input has no sound: the video is silent"
    assert output.read_bytes() == before and audio_codec(output) is None


def test_an_audio_only_file_is_refused_as_no_video(tmp_path: Path) -> None:
    sound = tmp_path / "sound.m4a"
    subprocess.run(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=1",
            "-c:a",
            "aac",
            str(sound),
        ],
        check=True,
    )
    with pytest.raises(InputError) as err:
        probe_video(sound)
    assert err.value.loc == ("video_url",) and err.value.type == "video_decode_error"
    assert "no video stream" in err.value.msg
