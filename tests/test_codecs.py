"""The encoder and decoder choice of a worker (``pipelines/codecs.py``) with the real bundled ffmpeg: the trial runs
are real, so on a machine without an NVIDIA driver they fail and say why, a forced ``nvenc`` refuses to start from
the command line, and ``/ready`` shows what was chosen. The NVENC and NVDEC argument lists are checked as built,
and the NV12 path NVDEC's frames take is run on the CPU to show it gives the CPU decoder's frames."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import httpx
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from server_fixtures import REPO, ThreadServer, free_port, wait_until

from pipelines.codecs import Codecs, EncoderUnavailable, choose_codecs, probe_nvdec, probe_nvenc, trial_frames
from pipelines.encode import (
    LIBX264,
    NVENC_CQ,
    NVENC_PRESET,
    NVENC_SIDES,
    QUALITY_CRF,
    WRITE_MODE_PRESET,
    Encoder,
    encode_video,
)
from pipelines.loading import ModelManager
from pipelines.schema import VideoQuality, VideoWriteMode
from pipelines.video_io import NVDEC_MIN_PIXELS, VideoInfo, decode_params, iter_frames, probe_video, read_frames
from server import cli
from server.app import create_app
from server.config import Settings

NO_CUDA = not torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="checks what a machine without an NVIDIA GPU does")


def run_vace(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The ``vace`` command line as a user runs it, in a child process."""
    environ = {name: value for name, value in os.environ.items() if name != "VACE_ENCODER"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# ---------------------------------------------------------------- the tables


def test_both_encoders_map_every_fal_level() -> None:
    qualities, modes = set(typing.get_args(VideoQuality)), set(typing.get_args(VideoWriteMode))
    assert set(QUALITY_CRF) == set(NVENC_CQ) == qualities
    assert set(WRITE_MODE_PRESET) == set(NVENC_PRESET) == modes
    nvenc = Encoder("h264_nvenc", 2)
    for quality in qualities:
        for mode in modes:
            x264 = LIBX264.codec_args(quality, mode)
            assert x264 == ["-c:v", "libx264", "-preset", WRITE_MODE_PRESET[mode], "-crf", str(QUALITY_CRF[quality])]
            args = nvenc.codec_args(quality, mode)
            flags = dict(zip(args[::2], args[1::2], strict=True))
            assert flags == {
                "-c:v": "h264_nvenc",
                "-gpu": "2",
                "-preset": NVENC_PRESET[mode],
                "-tune": "hq",
                "-rc": "vbr",
                "-cq": str(NVENC_CQ[quality]),
                "-b:v": "0",
                "-rc-lookahead": "20",
            }
    # Lower quality, higher quantiser, on both; NVENC's CQ is x264's CRF + 5 (README, "Encoding").
    order = ["maximum", "high", "medium", "low"]
    assert [QUALITY_CRF[q] for q in order] == sorted(QUALITY_CRF.values())
    assert all(NVENC_CQ[q] == QUALITY_CRF[q] + 5 for q in order)
    assert [NVENC_PRESET[m] for m in ("fast", "balanced", "small")] == ["p2", "p4", "p7"]


def test_readme_tables_are_the_codes() -> None:
    """The README's encoding table is the one the code uses, row by row."""
    readme = (REPO / "README.md").read_text()
    quality_rows = re.findall(r"^\| (low|medium|high|maximum) \| (\d+) \| (\d+) \|", readme, re.MULTILINE)
    rows = {name: (int(crf), int(cq)) for name, crf, cq in quality_rows}
    assert rows == {q: (QUALITY_CRF[q], NVENC_CQ[q]) for q in QUALITY_CRF}
    preset_rows = re.findall(r"^\| (fast|balanced|small) \| (\w+) \| (p\d) \|", readme, re.MULTILINE)
    presets = {m[0]: (m[1], m[2]) for m in preset_rows}
    assert presets == {m: (WRITE_MODE_PRESET[m], NVENC_PRESET[m]) for m in WRITE_MODE_PRESET}


def test_encoder_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="GPU index"):
        Encoder("h264_nvenc")
    with pytest.raises(ValueError, match="GPU index"):
        Encoder("libx264", 0)
    with pytest.raises(ValueError, match="quality"):
        Encoder("h264_nvenc", 0).codec_args("ultra", "fast")
    with pytest.raises(ValueError, match="write_mode"):
        LIBX264.codec_args("high", "tiny")
    assert str(Encoder("h264_nvenc", 1)) == "h264_nvenc on GPU 1" and str(LIBX264) == "libx264"


def test_sizes_nvenc_cannot_take_go_through_libx264(tmp_path: Path) -> None:
    low, high = NVENC_SIDES
    nvenc = Encoder("h264_nvenc", 0)
    assert nvenc.for_size(1280, 720) is nvenc and nvenc.for_size(low, high) is nvenc
    assert nvenc.for_size(low - 1, 720) == LIBX264 and nvenc.for_size(1280, high + 2) == LIBX264
    # A real encode: 64x48 is below NVENC's floor, so the file is libx264's whatever the machine.
    frames = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(4)]
    encoded = encode_video(frames, tmp_path / "small.mp4", 8.0, encoder=nvenc)
    assert encoded.encoder == LIBX264 and probe_video(encoded.path).num_frames == 4
    assert encoded.fallback == "h264_nvenc takes 145 to 4096 pixels a side, not 64x48"


# ---------------------------------------------------------------- the trial runs, for real


@needs_no_cuda
def test_the_trials_fail_here_and_say_why(caplog: pytest.LogCaptureFixture) -> None:
    """No NVIDIA driver on this machine: ffmpeg's own reason comes back, into the worker's log."""
    assert "libcuda" in (probe_nvenc(3) or "")
    assert "libcuda" in (probe_nvdec(3) or "")
    with caplog.at_level("INFO", logger="pipelines.codecs"):
        codecs = choose_codecs("auto", torch.device("cuda", 3))
    assert codecs.encoder == LIBX264 and codecs.nvdec_gpu is None
    assert codecs.encoder_reason.startswith("NVENC's trial encode on cuda:3 failed: ")
    assert "libcuda" in codecs.encoder_reason and "libcuda" in codecs.decoder_reason
    assert f"cuda:3: encoder libx264 ({codecs.encoder_reason})" in caplog.text
    with pytest.raises(EncoderUnavailable, match=r"--encoder nvenc: NVENC's trial encode on cuda:3 failed: .*libcuda"):
        choose_codecs("nvenc", torch.device("cuda", 3))
    assert choose_codecs("libx264", torch.device("cuda", 3)).encoder_reason == "--encoder libx264"


@needs_no_cuda
def test_an_nvenc_that_does_not_open_hands_the_frames_to_libx264(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The flags jobs use reach ffmpeg's NVENC, which fails to open here as it would on a GPU whose memory the job
    filled: libx264 then encodes every frame, the ones NVENC was sent first included, and the log says why."""
    frames = trial_frames()
    with caplog.at_level("WARNING", logger="pipelines.encode"):
        encoded = encode_video(
            iter(frames),
            tmp_path / "nv.mp4",
            8.0,
            quality="maximum",
            write_mode="small",
            encoder=Encoder("h264_nvenc", 0),
        )
    assert encoded.encoder == LIBX264 and encoded.fallback == "Cannot load libcuda.so.1"
    assert "h264_nvenc on GPU 0 did not open (Cannot load libcuda.so.1); encoding nv.mp4 with libx264" in caplog.text
    direct = encode_video(frames, tmp_path / "x264.mp4", 8.0, quality="maximum", write_mode="small")
    assert encoded.num_frames == direct.num_frames == len(frames) and encoded.fallback != direct.fallback
    back, reference = list(iter_frames(encoded.path)), list(iter_frames(direct.path))
    assert len(back) == len(frames) and all(np.array_equal(a, b) for a, b in zip(back, reference, strict=True))


def test_a_cpu_worker_uses_libx264_and_the_cpu_decoder(tmp_path: Path) -> None:
    codecs = ModelManager(tmp_path, device="cpu").codecs
    assert (codecs.encoder, codecs.nvdec_gpu) == (LIBX264, None)
    assert "runs on the CPU" in codecs.encoder_reason
    described = ModelManager(tmp_path, device="cpu").describe()
    assert described["encoder"] == "libx264" and described["decoder"] == "cpu"
    with pytest.raises(EncoderUnavailable, match="--encoder nvenc: the worker runs on the CPU"):
        choose_codecs("nvenc", torch.device("cpu"))
    with pytest.raises(ValueError, match="encoder must be one of"):
        choose_codecs("h265", torch.device("cpu"))


# ---------------------------------------------------------------- the setting, as a user gives it


def test_forcing_nvenc_refuses_to_start_the_server(tmp_path: Path) -> None:
    common = ["--weights-dir", str(tmp_path / "w"), "--data-dir", str(tmp_path / "d"), "--port", str(free_port())]
    flag = run_vace("serve", "--encoder", "nvenc", *common)
    assert flag.returncode == 2, flag.stderr
    assert "error: --encoder nvenc:" in flag.stderr and "Traceback" not in flag.stderr
    if NO_CUDA:  # the default device here is the CPU
        assert "the worker runs on the CPU" in flag.stderr
        # The environment variable, on a GPU this machine does not have: the real trial runs and ffmpeg says why.
        env = run_vace("serve", "--devices", "cuda:0", *common, env={"VACE_ENCODER": "nvenc"})
        assert env.returncode == 2, env.stderr
        assert "error: --encoder nvenc: NVENC's trial encode on cuda:0 failed: Cannot load libcuda.so.1" in env.stderr


def test_the_encoder_flag_and_variable_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VACE_ENCODER", "h265")
    assert cli.main(["serve", "--weights-dir", str(tmp_path), "--data-dir", str(tmp_path)]) == 2
    assert "encoder: Input should be 'auto', 'libx264' or 'nvenc'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["serve", "--encoder", "h265"])
    assert "invalid choice: 'h265'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    assert "--encoder {auto,libx264,nvenc}" in capsys.readouterr().out


def test_settings_take_the_encoder_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VACE_ENCODER", "libx264")
    assert Settings().runtime.encoder == "libx264"
    assert Settings(encoder="nvenc").runtime.encoder == "nvenc"  # a flag wins over the variable
    # An API node encodes nothing (it builds no model manager): a fleet-wide VACE_ENCODER=nvenc does not stop it.
    create_app(Settings(encoder="nvenc", no_workers=True, weights_dir=tmp_path / "w", data_dir=tmp_path / "d"))


def test_ready_shows_the_encoder_and_why(tmp_path: Path) -> None:
    config = Settings(weights_dir=tmp_path / "w", data_dir=tmp_path / "d", port=free_port(), encoder="libx264")
    with ThreadServer(config) as server:
        device = httpx.get(f"{server.url}/ready", timeout=30).json()["devices"][0]
        # The fleet view (what a fleet's API node shows of every worker) says the same.
        ready = wait_until(
            lambda: (r := httpx.get(f"{server.url}/ready", timeout=30).json())["workers"] and r,
            30,
            "the worker to report itself",
        )
    assert device["encoder"] == "libx264" and device["encoder_reason"] == "--encoder libx264"
    assert ready["workers"][0]["runtime"]["encoder"] == "libx264"
    assert ready["workers"][0]["runtime"]["encoder_reason"] == "--encoder libx264"
    if NO_CUDA:
        assert device["decoder"] == "cpu" and "runs on the CPU" in device["decoder_reason"]


# ---------------------------------------------------------------- decoding


def test_nvdec_arguments_and_which_inputs_take_it() -> None:
    assert decode_params(None) == ([], ["-map", "0:v:0", "-fps_mode", "passthrough"])
    assert decode_params(3) == (
        ["-hwaccel", "cuda", "-hwaccel_device", "3"],
        ["-map", "0:v:0", "-fps_mode", "passthrough", "-vf", "format=yuv420p"],
    )

    def info(width: int, height: int, codec: str = "h264", pix_fmt: str = "yuv420p") -> VideoInfo:
        return VideoInfo(width, height, 25.0, 100, 4.0, codec=codec, pix_fmt=pix_fmt)

    codecs = Codecs(nvdec_gpu=2)
    assert codecs.decode_gpu(info(1280, 720)) == 2 and codecs.decode_gpu(info(1920, 1080, "hevc")) == 2
    assert NVDEC_MIN_PIXELS == 1280 * 720 and codecs.decode_gpu(info(832, 480)) is None
    assert codecs.decode_gpu(info(1920, 1080, pix_fmt="yuv444p")) is None
    assert codecs.decode_gpu(info(1920, 1080, pix_fmt="yuvj420p")) is None
    assert codecs.decode_gpu(info(1920, 1080, codec="prores")) is None
    assert Codecs().decode_gpu(info(1920, 1080)) is None


def _decode(path: Path, vf: str | None) -> list[np.ndarray]:
    params = ["-map", "0:v:0", "-fps_mode", "passthrough"] + (["-vf", vf] if vf else [])
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=params)
    width, height = next(reader)["size"]
    return [np.frombuffer(raw, np.uint8).reshape(height, width, 3).copy() for raw in reader]


def test_nvdecs_nv12_frames_become_the_cpu_decoders(tmp_path: Path) -> None:
    """NVDEC's frames reach us as NV12 (the CPU decoder's YUV planes, interleaved); ``format=yuv420p`` puts them
    back, so the same RGB conversion gives the CPU decoder's frames exactly. Without it ffmpeg converts NV12 to
    RGB by another route (interpolated chroma) and frames change by tens of levels."""
    path = encode_video(trial_frames(), tmp_path / "clip.mp4", 8.0).path  # 320x180: coded 192 rows, cropped
    info = probe_video(path)
    assert (info.codec, info.pix_fmt, info.width, info.height) == ("h264", "yuv420p", 320, 180)
    cpu = _decode(path, None)
    through_nv12 = _decode(path, "format=nv12," + decode_params(0)[1][-1])
    assert len(cpu) == len(through_nv12) == 8
    assert all(np.array_equal(a, b) for a, b in zip(cpu, through_nv12, strict=True))
    direct = _decode(path, "format=nv12")
    assert max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(cpu, direct, strict=True)) > 10


@needs_no_cuda
def test_a_failed_nvdec_decode_is_done_again_on_the_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = encode_video(trial_frames(), tmp_path / "clip.mp4", 8.0).path
    with caplog.at_level("WARNING", logger="pipelines.video_io"):
        frames = read_frames(path, [0, 3, 3, 7, 9], nvdec_gpu=0)
    cpu = list(iter_frames(path))
    assert [f.tobytes() for f in frames] == [cpu[i].tobytes() for i in (0, 3, 3, 7, 7)]
    assert "NVDEC on GPU 0 could not decode clip.mp4" in caplog.text
