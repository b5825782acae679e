"""Frame interpolation between generated frames: one streaming interface over RIFE and FILM.

``load_interpolator(kind, weights_dir, device)`` loads the manifest's ``rife`` file (``flownet.pkl``, Practical-RIFE
4.x, our IFNet) or its ``film`` file (``film_net_fp32.pt``, FILM TorchScript) and returns a
``FrameInterpolator``. Its ``interpolate(frames, n_between)`` takes an iterable of uint8 HxWx3 RGB frames and yields
every input frame (the same array objects, unchanged) with ``n_between`` new frames after each one but the last,
at t = 1/(n+1) .. n/(n+1). It reads and emits ``batch_size`` pairs at a time, so it can sit between the decoder of
the generated video and the encoder without holding the whole video.

Precision: RIFE runs fp16 on CUDA (its warps use a float32 grid) and fp32 on CPU; FILM runs fp32 everywhere (see
``film.py``). Frames are padded with zeros to the network's multiple (64 for both) and cropped back, each as its
reference inference script does: right and bottom for RIFE (Practical-RIFE), centred for FILM (the port's
``pad_batch``); the padding reaches into the frame through the networks' receptive fields, so the side matters.

uint8 conversion: the new frames are rounded to the nearest grey level, where both reference scripts truncate
(``(x * 255).byte()``). We keep rounding on purpose: truncation makes every interpolated frame about half a grey
level darker than the untouched original frames around it (the mean of the discarded fraction), a bias that
alternates frame by frame in the output; rounding has none. Each uint8 value differs from the references' by at
most one level, and only where the fraction is at least 0.5.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from preprocessors.frames import check_frame

from ..manifest import FILM, FILM_FILE, RIFE, RIFE_FILE, WeightEntry
from .film import PAD_MULTIPLE as FILM_PAD_MULTIPLE
from .film import FilmModel, film_frames_between, load_film
from .rife import load_rife, rife_frames_between

__all__ = ["FrameInterpolator", "InterpolatorKind", "load_interpolator", "weights_path"]

InterpolatorKind = Literal["rife", "film"]

_WEIGHTS: dict[str, tuple[WeightEntry, str]] = {RIFE.key: (RIFE, RIFE_FILE), FILM.key: (FILM, FILM_FILE)}

# Pairs per batch, by (kind, device type). GPU batches keep the device busy; FILM's decoder runs at full resolution
# with hundreds of channels where RIFE's blocks run at 1/4 and below, hence its smaller batch. On CPU batching gains
# little and costs memory.
_BATCH = {("rife", "cuda"): 16, ("film", "cuda"): 4, ("rife", "cpu"): 2, ("film", "cpu"): 2}

M = TypeVar("M", bound=nn.Module)
Between = Callable[[M, Tensor, Tensor, int, int], Tensor]
"""A network's frames between pairs: ``between(model, img0, img1, n, max_batch)``."""


def weights_path(kind: InterpolatorKind, weights_dir: Path) -> Path:
    """Where ``kind``'s weights file lives in a weights directory."""
    if kind not in _WEIGHTS:
        raise ValueError(f"unknown interpolator {kind!r}; expected one of {sorted(_WEIGHTS)}")
    entry, name = _WEIGHTS[kind]
    return entry.path(weights_dir, name)


class FrameInterpolator(Generic[M]):
    """A loaded interpolation network plus the streaming, batching, padding and uint8 conversion around it.

    ``batch_size`` is both the number of pairs read before the network runs and the most frames one network call
    makes, which bounds memory either way. ``pad_centred`` pads as FILM's port does (centred) rather than right and
    bottom as RIFE does.
    """

    def __init__(
        self,
        kind: InterpolatorKind,
        model: M,
        between: Between[M],
        *,
        device: torch.device,
        dtype: torch.dtype,
        pad_multiple: int,
        batch_size: int,
        pad_centred: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.kind, self.model, self._between = kind, model, between
        self.device, self.dtype, self.pad_multiple, self.batch_size = device, dtype, pad_multiple, batch_size
        self.pad_centred = pad_centred

    def check_between(self, n_between: int) -> None:
        """Raise ValueError, before any work, when this network cannot make ``n_between`` frames between a pair
        (FILM's v1.0.0 file makes midpoints only)."""
        if isinstance(self.model, FilmModel):
            self.model.check_between(n_between)

    def interpolate(self, frames: Iterable[np.ndarray], n_between: int) -> Iterator[np.ndarray]:
        """Yield ``frames`` with ``n_between`` interpolated frames between consecutive ones.

        N input frames give ``(N - 1) * (n_between + 1) + 1`` output frames; input frame ``i`` is yielded as is at
        position ``i * (n_between + 1)``. ``n_between == 0`` passes the frames through without touching the model.
        """
        if n_between < 0:
            raise ValueError(f"n_between must be >= 0, got {n_between}")
        it = iter(frames)
        if n_between == 0:
            yield from it
            return
        self.check_between(n_between)
        pending: list[np.ndarray] = []
        for frame in it:
            pending.append(frame)
            if len(pending) > self.batch_size:  # batch_size pairs, plus the frame that starts the next batch
                yield from self._pairs(pending, n_between)
                pending = pending[-1:]
        if len(pending) > 1:
            yield from self._pairs(pending, n_between)
        if pending:
            yield pending[-1]

    def _pairs(self, frames: list[np.ndarray], n: int) -> Iterator[np.ndarray]:
        """Each frame but the last, followed by the ``n`` frames between it and the next."""
        h, w = check_frame(frames[0])
        for f in frames[1:]:
            check_frame(f, (h, w))
        x = torch.from_numpy(np.stack(frames)).to(self.device).permute(0, 3, 1, 2).to(self.dtype) / 255
        ph, pw = -h % self.pad_multiple, -w % self.pad_multiple
        top, left = (ph // 2, pw // 2) if self.pad_centred else (0, 0)
        x = F.pad(x, (left, pw - left, top, ph - top))
        mids = self._between(self.model, x[:-1], x[1:], n, self.batch_size)[..., top : top + h, left : left + w]
        made = (mids.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
        for frame, between in zip(frames[:-1], made, strict=True):
            yield frame
            yield from between


def load_interpolator(
    kind: InterpolatorKind, weights_dir: Path, device: torch.device | str = "cpu", *, batch_size: int | None = None
) -> FrameInterpolator[Any]:
    """Load ``kind``'s weights from ``weights_dir`` onto ``device``.

    Raises FileNotFoundError when the file is absent and ValueError (naming the file) when it is not a valid
    checkpoint of that network.
    """
    path = weights_path(kind, weights_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{kind} weights not found at {path} (run `vace weights download` or `vace weights tiny`)"
        )
    device = torch.device(device)
    size = batch_size or _BATCH[(kind, "cuda" if device.type == "cuda" else "cpu")]
    if kind == "rife":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        rife = load_rife(path).to(device=device, dtype=dtype)
        return FrameInterpolator(
            kind,
            rife,
            rife_frames_between,
            device=device,
            dtype=dtype,
            pad_multiple=rife.config.pad_multiple,
            batch_size=size,
        )
    film = load_film(path).to(device=device, dtype=torch.float32)
    return FrameInterpolator(
        kind,
        film,
        film_frames_between,
        device=device,
        dtype=torch.float32,
        pad_multiple=FILM_PAD_MULTIPLE,
        batch_size=size,
        pad_centred=True,
    )
