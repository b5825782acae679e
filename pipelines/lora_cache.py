"""The LoRA download cache: each distinct LoRA file downloaded once, kept on disk by content hash under a size budget.

Style and distillation LoRAs are hundreds of MB to a few GB, and the same few are named by job after job, so a
LoRA URL is fetched (through the vetted :func:`~pipelines.fetch.fetch_to_file`, like any media) once per
``url_ttl_s``: the file is stored as ``blobs/<sha256>.safetensors`` and the URL remembered in
``urls/<sha256 of the URL>``. Only a file that passed the LoRA checks is added (``pipelines.loras``), so one that a
job would refuse never takes room or a URL entry. The content hash also names the adapter a file becomes on the
device, so two URLs serving the same bytes share one adapter. Files are evicted least recently used first once the
folder holds more than the budget; a running job holds a hard link to each file it took (:meth:`LoraCache.link`),
so an eviction never takes a file from under it.

The cache is shared by every caller of the server, so what a URL served is remembered for a bounded time only:
once its entry is older than ``url_ttl_s`` (default an hour) the next job downloads the URL again, so a file
replaced at its URL is taken up within that time, for every caller alike; unchanged bytes are then not stored
twice. Deleting the cache folder forgets everything.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

URL_TTL_S = 3600.0


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

    def __init__(self, folder: Path, max_bytes: int, url_ttl_s: float = URL_TTL_S) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.url_ttl_s = url_ttl_s

    def _blob(self, digest: str) -> Path:
        return self.folder / "blobs" / f"{digest}.safetensors"

    def _url_entry(self, url: str) -> Path:
        return self.folder / "urls" / hashlib.sha256(url.encode()).hexdigest()

    def lookup(self, url: str) -> CachedLora | None:
        """The cached file ``url`` was downloaded to within ``url_ttl_s``, marked as just used; None when it is not
        here or the download is older (the URL is then fetched again)."""
        entry = self._url_entry(url)
        try:
            if time.time() - entry.stat().st_mtime >= self.url_ttl_s:
                return None
            digest = entry.read_text().strip()
        except FileNotFoundError:
            return None
        blob = self._blob(digest)
        try:
            os.utime(blob)  # the least recently used file goes first
        except FileNotFoundError:  # evicted since
            return None
        return CachedLora(blob, digest)

    def add(self, url: str, downloaded: Path) -> CachedLora:
        """Move a fresh download of ``url``, checked by the caller, into the cache (same filesystem or not), remember
        the URL (from now: the entry's age is what ``url_ttl_s`` bounds) and evict what no longer fits."""
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
