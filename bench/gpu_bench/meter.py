"""Time, per-step times, peak VRAM and peak RSS of one pipeline call.

Why not a profiler: the numbers wanted are the ones a user of the server sees (wall seconds per step with the device
synchronised, the allocator's peak, the process's resident memory), taken the same way for plain diffusers and for
this server."""

from __future__ import annotations

import abc
import contextlib
import gc
import threading
import time
from typing import Self

import psutil  # always there: accelerate, a dependency of the project, requires it
import torch


class PeakSampler(abc.ABC):
    """A peak over a block, sampled on a thread every ``interval`` seconds: subclasses say what one sample takes
    (``start``, ``sample``) and keep their own peaks."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Reset the peaks; False when there is nothing to sample (no thread is started)."""
        return True

    @abc.abstractmethod
    def sample(self) -> None:
        """Take one sample into the peaks."""

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Self:
        self._stop.clear()
        self._thread = None
        if self.start():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.sample()


class RssPeak(PeakSampler):
    """Peak resident memory of this process over a block."""

    peak = 0

    def _rss(self) -> int:
        return psutil.Process().memory_info().rss

    def start(self) -> bool:
        self.peak = self._rss()
        return True

    def sample(self) -> None:
        self.peak = max(self.peak, self._rss())


class Meter:
    """Wall time, per-step times, peak VRAM and peak RSS of one pipeline call, synchronised with the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss = RssPeak()
        self.stamps: list[float] = []
        self.start = self.end = 0.0
        self.peak_gpu: int | None = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self) -> None:
        self.sync()
        self.stamps.append(time.perf_counter())

    def __enter__(self) -> Meter:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss.__enter__()
        self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(Exception):  # after a CUDA error, syncing may raise again
            self.sync()
        self.end = time.perf_counter()
        self.rss.__exit__()
        if self.device.type == "cuda":
            self.peak_gpu = torch.cuda.max_memory_allocated(self.device)

    @property
    def s_per_step(self) -> float | None:
        """Mean of steps 2..N: the first step's stamp is the start, as step 1 carries one-time work."""
        if len(self.stamps) < 2:
            return None
        return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)


def release(device: torch.device) -> None:
    """Return freed memory between calls, so one call's peak does not carry into the next."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
