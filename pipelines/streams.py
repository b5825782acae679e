"""Frames as streams: ``FrameSink`` hands frames one at a time to a writer that reads them from an iterable, and
``once_each`` converts a stream without redoing the work for a run of one repeated frame.

The writers (``encode.encode_video``, ``encode.write_control_video``) pull their frames from an iterable, which is how
a job's output reaches the encoder: it is the one stream that drives the job. A second video made along the way (the
control video a long job's annotator makes window by window) has no loop of its own to pull it; a sink runs its writer
on a thread of its own and feeds it from a small queue, so the frames are encoded as they come and never pile up.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")
_END = object()  # the stream ends: the writer finishes
_ABORT = object()  # the job failed: the writer is stopped (its iterable raises) and leaves nothing behind


class SinkAborted(Exception):
    """What the writer's frames raise when the job that fed them failed."""


class FrameSink(Generic[T]):
    """Runs ``write(frames)`` on a thread, ``frames`` being what ``put`` hands over; ``close`` returns its result.

    At most ``depth`` frames wait in the queue: ``put`` blocks while the writer catches up, so memory stays bounded
    whatever the length. A writer that fails makes the next ``put`` (or ``close``) raise its error."""

    def __init__(self, write: Callable[[Iterator[np.ndarray]], T], depth: int = 8, name: str = "vace-sink") -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._result: T | None = None
        self._error: BaseException | None = None
        self._ended = False  # the job's end of the stream (``close`` or ``abort``) has been taken from the queue
        self._thread = threading.Thread(target=self._run, args=(write,), name=name, daemon=True)
        self._thread.start()

    def _frames(self) -> Iterator[np.ndarray]:
        while True:
            item = self._queue.get()
            if item is _END or item is _ABORT:
                self._ended = True
                if item is _ABORT:
                    raise SinkAborted("the job stopped before this video was complete")
                return
            yield item  # type: ignore[misc]

    def _run(self, write: Callable[[Iterator[np.ndarray]], T]) -> None:
        try:
            self._result = write(self._frames())
        except BaseException as exc:  # noqa: BLE001 - whatever the writer raised is the job's: put/close re-raise it
            self._error = exc
        while not self._ended:  # a writer that stopped early: take what the job still hands over, up to its end
            item = self._queue.get()
            self._ended = item is _END or item is _ABORT

    def _hand(self, item: object) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        self._raise()

    def _raise(self) -> None:
        if self._error is not None and not isinstance(self._error, SinkAborted):
            raise self._error

    def put(self, frame: np.ndarray) -> None:
        self._hand(frame)
        self._raise()

    def close(self) -> T:
        """End the stream and wait for the writer's result."""
        self._hand(_END)
        self._thread.join()
        self._raise()
        assert self._result is not None
        return self._result

    def abort(self) -> None:
        """Stop the writer after a failure of the job (it cleans up as on any error of its frames)."""
        self._hand(_ABORT)
        self._thread.join()


def once_each(convert: Callable[[np.ndarray], np.ndarray], arrays: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """``convert`` of each array, computed once for a run of the same array (a held frame, one mask image for every
    frame): the run shares one result, as it shared one input."""
    last: tuple[np.ndarray, np.ndarray] | None = None
    for arr in arrays:
        if last is None or last[0] is not arr:
            last = arr, convert(arr)
        yield last[1]
