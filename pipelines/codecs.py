"""Which ffmpeg codecs a worker's jobs use: NVENC and NVDEC on the worker's own GPU where they run, else libx264
and the CPU decoder, each with the reason, for the log and ``/ready``.

The bundled ffmpeg lists ``h264_nvenc`` and the ``cuda`` hwaccel whether or not they can run: they need the NVIDIA
driver's ``libcuda``, ``libnvidia-encode`` and ``libnvcuvid`` at run time, a driver new enough for the ffmpeg
build's NVENC API, and a GPU with the engine (A100, H100 and H200 have NVDEC but no NVENC). So each is tried once
per process and GPU, with a tiny trial run through the same code jobs use, and the answer is kept: by the node's
process when it starts (its model managers, one per device, say what the workers will have, so ``--encoder nvenc``
is refused there, before any worker starts) and by each worker process for its own GPU.

The ``--encoder`` setting: ``auto`` (NVENC where its trial encode passes, else libx264), ``libx264``, or ``nvenc``,
which refuses to start a worker where NVENC cannot run (:class:`EncoderUnavailable`) rather than quietly encoding
on the CPU. NVDEC needs no setting: it is used for the inputs where it pays and gives the CPU decoder's frames
(``video_io.nvdec_suits``), on GPUs where its trial decode gives exactly the CPU decoder's frames.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from .encode import LIBX264, EncodeError, Encoder, encode_video, failure_reason
from .errors import InputError
from .runtime import ENCODER_SETTINGS
from .video_io import VideoInfo, iter_frames, nvdec_suits, probe_video

log = logging.getLogger(__name__)

# The trial clip: above NVENC's smallest frame (145 px), and 180 rows, which H.264 codes as 192 and crops, as it
# does 1080p; a few frames so B-frames and lookahead are exercised.
TRIAL_SIZE, TRIAL_FRAMES, TRIAL_FPS = (320, 180), 8, 8.0
TRIAL_TIMEOUT_S = 60.0
USE_INSTEAD = "use --encoder auto (NVENC where it runs, else libx264) or --encoder libx264"


class EncoderUnavailable(ValueError):
    """``--encoder nvenc`` where NVENC cannot run: the worker does not start."""


@dataclass(frozen=True)
class Codecs:
    """How one worker's jobs encode their outputs and decode their inputs, and why."""

    encoder: Encoder = LIBX264
    encoder_reason: str = "the default"
    nvdec_gpu: int | None = None
    """The CUDA device whose NVDEC decodes large inputs; None: every input is decoded on the CPU."""
    decoder_reason: str = "the default"

    def decode_gpu(self, info: VideoInfo) -> int | None:
        """The NVDEC device for an input like ``info``, or None to decode it on the CPU."""
        return self.nvdec_gpu if self.nvdec_gpu is not None and nvdec_suits(info) else None

    def describe(self) -> dict[str, object]:
        """What ``/ready`` shows per device."""
        decoder = "cpu" if self.nvdec_gpu is None else f"nvdec on GPU {self.nvdec_gpu} (inputs of 720p and more)"
        return {
            "encoder": str(self.encoder),
            "encoder_reason": self.encoder_reason,
            "decoder": decoder,
            "decoder_reason": self.decoder_reason,
        }


def choose_codecs(setting: str, device: torch.device) -> Codecs:
    """The codecs of a worker on ``device`` under ``--encoder setting``; runs the trials (once per process and GPU).

    A worker only ever uses its own GPU: NVENC and NVDEC get ``device``'s index (``-gpu N``, ``-hwaccel_device N``).
    """
    if setting not in ENCODER_SETTINGS:
        raise ValueError(f"encoder must be one of {ENCODER_SETTINGS}, got {setting!r}")
    if device.type != "cuda":
        why = f"the worker runs on the {device.type.upper()}; NVENC and NVDEC are NVIDIA GPU engines"
        if setting == "nvenc":
            raise EncoderUnavailable(f"--encoder nvenc: {why}; {USE_INSTEAD}")
        codecs = Codecs(LIBX264, "--encoder libx264" if setting == "libx264" else why, None, why)
        log.info("%s: encoder %s (%s); decoder cpu", device, codecs.encoder, codecs.encoder_reason)
        return codecs
    gpu = device.index if device.index is not None else 0
    nvdec_failure = probe_nvdec(gpu)
    if nvdec_failure is None:
        nvdec_gpu, decoder_reason = gpu, f"NVDEC's trial decode on {device} gave the CPU decoder's frames"
    else:
        nvdec_gpu, decoder_reason = None, f"NVDEC's trial decode on {device} failed: {nvdec_failure}"
    if setting == "libx264":
        encoder, encoder_reason = LIBX264, "--encoder libx264"
    elif (nvenc_failure := probe_nvenc(gpu)) is None:
        encoder, encoder_reason = Encoder("h264_nvenc", gpu), f"NVENC's trial encode on {device} passed"
    else:
        encoder_reason = f"NVENC's trial encode on {device} failed: {nvenc_failure}"
        if setting == "nvenc":
            raise EncoderUnavailable(f"--encoder nvenc: {encoder_reason}; {USE_INSTEAD}")
        encoder = LIBX264
    codecs = Codecs(encoder, encoder_reason, nvdec_gpu, decoder_reason)
    level = logging.WARNING if encoder == LIBX264 and setting == "auto" else logging.INFO
    log.log(level, "%s: encoder %s (%s)", device, encoder, encoder_reason)
    log.log(
        logging.INFO if nvdec_gpu is not None else logging.WARNING,
        "%s: decoder %s (%s)",
        device,
        "nvdec" if nvdec_gpu is not None else "cpu",
        decoder_reason,
    )
    return codecs


def trial_frames() -> list[np.ndarray]:
    """A moving, textured clip: content for the encoder to work on, frames that differ for the decoder check."""
    width, height = TRIAL_SIZE
    base = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return [np.roll(base, 5 * i, axis=1) for i in range(TRIAL_FRAMES)]


@functools.cache
def probe_nvenc(gpu: int) -> str | None:
    """Why NVENC cannot encode on CUDA device ``gpu`` (ffmpeg's own words), or None when it can: a trial encode
    through ``encode_video`` with the flags jobs use, which NVENC must write, every frame of it."""
    with tempfile.TemporaryDirectory(prefix="vace-nvenc-") as folder:
        path = Path(folder) / "trial.mp4"
        try:
            encoded = encode_video(trial_frames(), path, TRIAL_FPS, encoder=Encoder("h264_nvenc", gpu))
            frames = probe_video(path).num_frames
        except EncodeError as exc:
            return exc.reason
        except (OSError, InputError) as exc:  # a full disk; a file ffmpeg wrote but cannot read
            return str(exc)
    if encoded.fallback is not None:
        return encoded.fallback
    if frames != encoded.num_frames:
        return f"the trial file holds {frames} of {encoded.num_frames} frames"
    return None


@functools.cache
def probe_nvdec(gpu: int) -> str | None:
    """Why NVDEC cannot decode on CUDA device ``gpu``, or None when it can: a trial H.264 clip must decode with
    its frames kept on the GPU (``-hwaccel_output_format cuda``: no silent fallback to the CPU decoder), and
    through the jobs' path (``iter_frames``) to exactly the CPU decoder's frames."""
    with tempfile.TemporaryDirectory(prefix="vace-nvdec-") as folder:
        path = encode_video(trial_frames(), Path(folder) / "trial.mp4", TRIAL_FPS).path
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-hwaccel",
            "cuda",
            "-hwaccel_device",
            str(gpu),
            "-hwaccel_output_format",
            "cuda",
            "-i",
            str(path),
            "-vf",
            "hwdownload,format=nv12",
            "-f",
            "null",
            "-",
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TRIAL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return f"ffmpeg did not finish within {TRIAL_TIMEOUT_S:g} s"
        if done.returncode != 0:
            return failure_reason(done.stderr)
        try:
            cpu = list(iter_frames(path))
            gpu_frames = list(iter_frames(path, nvdec_gpu=gpu))
        except InputError as exc:
            return exc.msg
    if len(gpu_frames) != len(cpu) or any(not np.array_equal(a, b) for a, b in zip(cpu, gpu_frames, strict=True)):
        return "its frames differ from the CPU decoder's"
    return None
