"""Each finished window of a long job (``pipelines.windows``), kept where a later run of the same job finds it: the
unit a resumed job starts again from.

``WindowOutputs(workdir, identity)``: window ``i``'s new frames (the ones it adds to the output) are written, once
denoised and screened, to ``<job work dir>/windows/<key>/window_0000i.zip`` (PNG frames, the format of
``return_frames_zip``; written under a temporary name and renamed, so a file there is always whole). ``<key>`` is a
digest of everything that decides the frames (the request but for the fields that only change what is made of
them, such as the encoding: ``generate.OUTPUT_ONLY``; the endpoint, the model, the seed, the window settings).
``generate()`` asks ``load(i)`` before it denoises window ``i`` and uses what an earlier run of the job in the same
work directory left there instead (the log says so): that run's frames, so the seams stay the same. A run whose
request, seed or windows differ has another key and never sees them. ``path(i)`` is where window ``i`` lives, for a
caller that keeps the files elsewhere between runs (a file store key per window) and puts them back before the next.
The server's worker keeps this folder when a job goes back to the queue (its worker stopping, a lease lost, a rank
lost) and deletes it with the rest of the work directory when the job ends; a worker process killed outright leaves
the whole directory. So a job resumed on the same node takes the windows its last run finished and goes on from its
checkpoint (``pipelines.resume``) in the window it was in; resumed on another node, or after this node restarted
(which clears its work directories), it makes them again, the same frames as their seeds are derived from the
job's.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .encode import write_frames_zip
from .windows import WINDOWS_DIR


class WindowOutputs:
    """Each finished window's new frames, on disk where a later run of the same job finds them (see the module
    docstring)."""

    def __init__(self, workdir: Path, identity: dict[str, Any]) -> None:
        """``identity``: everything that decides the frames (JSON-serialisable); its digest names the folder."""
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = workdir / WINDOWS_DIR / key

    def path(self, index: int) -> Path:
        return self.folder / f"window_{index:05d}.zip"

    def save(self, index: int, frames: np.ndarray) -> Path:
        """Write window ``index``'s new frames (uint8, N x H x W x 3); whole or not at all."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(index)
        partial = target.with_suffix(".partial")
        write_frames_zip(frames, partial)
        partial.replace(target)
        return target

    def load(self, index: int) -> np.ndarray | None:
        """Window ``index``'s frames from an earlier run, or None when it has none."""
        path = self.path(index)
        if not path.is_file():
            return None
        with zipfile.ZipFile(path) as archive:
            names = sorted(archive.namelist())
            return np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB")) for n in names])
