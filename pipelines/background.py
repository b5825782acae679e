"""Work beside the denoising loop: writing a checkpoint or a live preview, one piece at a time on a thread of its own.

The loop copies what the work needs to the host (a few tensors, a few small frames) and goes on with the next step
while the file is written, encoded and stored, so a step waits for a disk or a bucket only when the previous piece
of the same kind is still being written. A piece that fails is logged and dropped: checkpoints and previews serve
the job, they never end it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Background:
    """One piece of work at a time, on a thread of its own; ``what`` names the kind in the log line of a failure."""

    def __init__(self, what: str, log: Callable[[str], None]) -> None:
        self.what, self.log = what, log
        self._thread: threading.Thread | None = None

    def busy(self) -> bool:
        """Whether the last piece is still running."""
        return self._thread is not None and self._thread.is_alive()

    def run(self, work: Callable[[], None]) -> None:
        """Start ``work`` once the last piece has finished."""
        self.wait()
        self._thread = threading.Thread(target=self._guarded, args=(work,), name=f"vace-{self.what}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Until the last piece has finished."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - a full disk, an unreachable bucket: the next piece may fare better
            self.log(f"could not write a {self.what}: {exc}")
