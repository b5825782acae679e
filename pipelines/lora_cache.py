"""The LoRA download cache: each distinct LoRA file downloaded once, kept on disk by content hash under a size budget.

Style and distillation LoRAs are hundreds of MB to a few GB, and the same few are named by job after job, so a
LoRA URL is fetched (through the vetted :func:`~pipelines.fetch.fetch_to_file`, like any media) only the first
time: the file is stored as ``blobs/<sha256>.safetensors`` and the URL remembered in ``urls/<sha256 of the URL>``.
The content hash also names the adapter a file becomes on the device (``pipelines.loras``), so two URLs serving the
same bytes share one adapter. Files are evicted least recently used first once the folder holds more than the
budget; a running job holds a hard link to each file it took (:meth:`LoraCache.link`), so an eviction never takes
a file from under it.

A URL is assumed to keep serving the same bytes (LoRA releases are immutable files; hub URLs can pin a commit);
deleting the cache folder forgets everything.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def sha256_file(path: Path, chunk: int = 16 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class CachedLora:
    """A LoRA file in the cache and its content hash."""

    path: Path
    sha256: str


class LoraCache:
    """A folder of downloaded LoRA files, shared by every worker of a process (and safe across processes: every
    file appears by an atomic rename)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes

    def _blob(self, digest: str) -> Path:
        return self.folder / "blobs" / f"{digest}.safetensors"

    def _url_entry(self, url: str) -> Path:
        return self.folder / "urls" / hashlib.sha256(url.encode()).hexdigest()

    def lookup(self, url: str) -> CachedLora | None:
        """The cached file ``url`` was downloaded to before, marked as just used; None when it is not here."""
        try:
            digest = self._url_entry(url).read_text().strip()
        except FileNotFoundError:
            return None
        blob = self._blob(digest)
        try:
            os.utime(blob)  # the least recently used file goes first
        except FileNotFoundError:  # evicted since
            return None
        return CachedLora(blob, digest)

    def add(self, url: str, downloaded: Path) -> CachedLora:
        """Move a fresh download of ``url`` into the cache (same filesystem or not), remember the URL and evict
        what no longer fits."""
        digest = sha256_file(downloaded)
        blob = self._blob(digest)
        for folder in (blob.parent, self._url_entry(url).parent):
            folder.mkdir(parents=True, exist_ok=True)
        if blob.is_file():
            downloaded.unlink()
            os.utime(blob)
        else:
            part = blob.with_name(f".{digest}.{os.getpid()}.{threading.get_ident()}.part")
            shutil.move(downloaded, part)  # a rename, or a copy when the job's work folder is on another disk
            os.replace(part, blob)
        entry = self._url_entry(url)
        part_entry = entry.with_name(f".{entry.name}.{os.getpid()}.{threading.get_ident()}.part")
        part_entry.write_text(digest)
        os.replace(part_entry, entry)
        self.evict()
        return CachedLora(blob, digest)

    def link(self, cached: CachedLora, workdir: Path) -> Path:
        """A second name for a cached file in a job's folder, so that evicting it while the job runs cannot take
        the bytes from under the job; the file itself when a link cannot be made (another filesystem)."""
        target = workdir / f"lora-{cached.sha256}.safetensors"
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            os.link(cached.path, target)
        except FileExistsError:
            pass
        except OSError:
            return cached.path
        return target

    def evict(self) -> list[str]:
        """Delete the least recently used files until the rest fit the budget; returns the digests deleted."""
        blobs = []
        for path in (self.folder / "blobs").glob("*.safetensors"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            blobs.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in blobs)
        deleted = []
        for _, size, path in sorted(blobs):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            deleted.append(path.stem)
            log.info("LoRA cache: evicted %s (%d bytes)", path.stem, size)
        return deleted
