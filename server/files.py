"""Where generated videos, frame zips and uploads live, and how they are named.

Every file gets its own directory named by a 192-bit random token (``files/<token>/<name>``), so its URL is
unguessable and the readable name still reaches the user's download. Uploads in progress live under ``uploads/``,
keyed by a second random id that is never shown as a file URL: holding the upload URL is what authorizes the PUT,
as with a presigned URL, so it expires (``UPLOAD_URL_TTL_S``) and records the key that started it. URLs pointing at
our own files are mapped back to disk (``local_path``) so a job reads its inputs without an HTTP round trip to
itself.

Files are served on the API's own origin, so anything a browser would run (HTML, SVG, XML, scripts) would run with
the playground's stored API key in reach. Only passive media keep their type (:func:`served_type`); everything else
is served as an ``application/octet-stream`` download, and every file response carries ``nosniff`` and a sandbox
CSP (:func:`file_headers`). Everything is written owner-only (directories 0700, files 0600), whatever the umask:
prompts, webhook URLs and tokens are nobody else's business on a shared machine.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio

_TOKEN = r"[A-Za-z0-9_-]{32}"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}"
_KEY_RE = re.compile(rf"({_TOKEN})/({_NAME})")
_URL_PATH_RE = re.compile(rf"/files/({_TOKEN})/({_NAME})$")
_PART_RE = re.compile(r"part-(\d{5})")
WRITE_BATCH = 1024**2  # bytes of an upload gathered before one write to disk
UPLOAD_URL_TTL_S = 3600
"""How long an upload URL (and each part URL of a multipart upload) accepts bytes after it was handed out."""
_PASSIVE_PREFIXES = ("video/", "image/", "audio/")
_PASSIVE_EXACT = frozenset({"application/zip", "application/octet-stream"})
DOWNLOAD = "application/octet-stream"


class UploadTooLarge(ValueError):
    """An upload exceeded the server's size limit."""


def safe_name(file_name: str | None, content_type: str | None = None) -> str:
    """A file name that is safe in a path and a URL; gets an extension from ``content_type`` when it has none."""
    base = Path(file_name or "").name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-")[:100] or "upload"
    if not Path(name).suffix and content_type:
        name += mimetypes.guess_extension(content_type.split(";")[0].strip().lower()) or ""
    if name.endswith(".partial"):  # reserved for uploads in progress, which are never served
        name += "_"
    return name


def served_type(name: str) -> str:
    """The content type a file is served with: its own for passive media (video, image, audio, zip), else a
    download. SVG and other XML images are documents that run scripts, so they are not passive."""
    guessed = mimetypes.guess_type(name)[0] or DOWNLOAD
    passive = guessed in _PASSIVE_EXACT or (guessed.startswith(_PASSIVE_PREFIXES) and "xml" not in guessed)
    return guessed if passive else DOWNLOAD


def file_headers(name: str) -> dict[str, str]:
    """Headers of every file response: never sniffed into something active, sandboxed if opened anyway, and
    anything that is not passive media offered as a download."""
    headers = {"x-content-type-options": "nosniff", "content-security-policy": "sandbox"}
    if served_type(name) == DOWNLOAD:
        headers["content-disposition"] = f'attachment; filename="{name}"'
    return headers


def private_dir(path: Path) -> Path:
    """``path`` (and missing parents) as a directory only its owner can enter, whatever the umask."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def open_private(path: Path, mode: str = "wb"):  # type: ignore[no-untyped-def]
    """Open ``path`` for writing, created readable by its owner only."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), mode)


@dataclass(frozen=True)
class PendingUpload:
    """An upload URL handed out and not yet used up: the file key it fills, who started it, until when."""

    key: str
    owner: str | None
    expires_at: float


class FileStore:
    """Files served under ``/files/<key>``, where a key is ``<token>/<name>``."""

    def __init__(self, files_dir: Path, uploads_dir: Path, max_bytes: int) -> None:
        self.files_dir = files_dir
        self.uploads_dir = uploads_dir
        self.max_bytes = max_bytes
        private_dir(files_dir)
        private_dir(uploads_dir)

    def new_key(self, file_name: str | None, content_type: str | None = None) -> str:
        return f"{secrets.token_urlsafe(24)}/{safe_name(file_name, content_type)}"

    def path(self, key: str) -> Path | None:
        """The file behind ``key``, or None when the key is malformed or the file does not exist."""
        if not _KEY_RE.fullmatch(key) or key.endswith(".partial"):  # an upload still being written is not a file
            return None
        path = self.files_dir / key
        return path if path.is_file() else None

    def url(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/files/{key}"

    def adopt(self, src: Path, file_name: str) -> str:
        """Move a finished file (a job's output) into the store; returns its key."""
        key = self.new_key(file_name)
        dest = self.files_dir / key
        dest.parent.mkdir(mode=0o700)
        shutil.move(src, dest)
        dest.chmod(0o600)
        return key

    def local_path(self, ref: str) -> Path | None:
        """The file an http(s) URL to our own ``/files/...`` names (any host: the token is what identifies it)."""
        try:
            parts = urlsplit(ref)
        except ValueError:
            return None
        if parts.scheme not in ("http", "https"):
            return None
        match = _URL_PATH_RE.search(parts.path)
        return self.path(f"{match[1]}/{match[2]}") if match else None

    async def receive(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Write an upload body to the file ``key``; it appears only once complete. Returns its size."""
        dest = self.files_dir / key
        await anyio.to_thread.run_sync(lambda: dest.parent.mkdir(mode=0o700, exist_ok=True))
        partial = dest.with_name(dest.name + ".partial")
        try:
            size, _ = await _write(partial, chunks, self.max_bytes)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        await anyio.to_thread.run_sync(partial.rename, dest)
        return size

    # Pending uploads: a presigned-style id -> the key the file will get, its owner and expiry.

    def start_upload(self, key: str, owner: str | None = None) -> str:
        upload_id = secrets.token_urlsafe(24)
        folder = self.uploads_dir / upload_id
        folder.mkdir(mode=0o700)
        marker = {"key": key, "owner": owner, "expires_at": time.time() + UPLOAD_URL_TTL_S}
        with open_private(folder / "upload.json", "w") as out:
            json.dump(marker, out)
        return upload_id

    def pending(self, upload_id: str) -> PendingUpload | None:
        """The upload behind ``upload_id``, or None when the id is malformed, unknown, used up or expired."""
        if not re.fullmatch(_TOKEN, upload_id):
            return None
        try:
            marker = json.loads((self.uploads_dir / upload_id / "upload.json").read_text())
        except (OSError, ValueError):
            return None
        upload = PendingUpload(marker["key"], marker["owner"], marker["expires_at"])
        return upload if upload.expires_at > time.time() else None

    def end_upload(self, upload_id: str) -> None:
        shutil.rmtree(self.uploads_dir / upload_id, ignore_errors=True)

    def _parts(self, upload_id: str) -> dict[int, Path]:
        """The parts received so far, by number (parts still being written are not among them)."""
        found = {}
        for path in (self.uploads_dir / upload_id).iterdir():
            match = _PART_RE.fullmatch(path.name)
            if match:
                found[int(match[1])] = path
        return found

    def _parts_size(self, upload_id: str, leaving_out: int | None) -> int:
        """Bytes of the parts received so far, but part ``leaving_out``."""
        return sum(p.stat().st_size for n, p in self._parts(upload_id).items() if n != leaving_out)

    async def receive_part(self, upload_id: str, part_number: int, chunks: AsyncIterator[bytes]) -> str:
        """Store one part of a multipart upload; returns its ETag (hex MD5, as S3-style clients expect).

        The parts of one upload count together against the size limit: a part may use what the others left, a
        part that does not fit is deleted, and re-sending a part number replaces that part.
        """
        others = await anyio.to_thread.run_sync(self._parts_size, upload_id, part_number)
        final = self.uploads_dir / upload_id / f"part-{part_number:05d}"
        partial = final.with_name(f"{final.name}.{secrets.token_hex(4)}.partial")
        try:
            _size, etag = await _write(partial, chunks, self.max_bytes - others)
            await anyio.to_thread.run_sync(partial.rename, final)
        finally:
            partial.unlink(missing_ok=True)
        # Parts sent at the same time each saw room for themselves: check the sum once they are on disk.
        if await anyio.to_thread.run_sync(self._parts_size, upload_id, None) > self.max_bytes:
            final.unlink(missing_ok=True)
            raise UploadTooLarge(f"the parts of this upload add up to more than the {self.max_bytes}-byte limit")
        return etag

    def complete_upload(self, upload_id: str, part_numbers: list[int]) -> str:
        """Join the parts into the upload's file, in part-number order; returns its key.

        ``part_numbers`` must name every part received, each once: a client that lost track of a part (or sends
        one twice) gets an error instead of a file that is silently not what it uploaded.
        """
        upload = self.pending(upload_id)
        if upload is None:
            raise KeyError(upload_id)
        received = self._parts(upload_id)
        if not part_numbers:
            raise ValueError("no parts listed")
        repeated = sorted({n for n in part_numbers if part_numbers.count(n) > 1})
        if repeated:
            raise ValueError(f"part numbers listed more than once: {repeated}")
        missing = sorted(set(part_numbers) - received.keys())
        unlisted = sorted(received.keys() - set(part_numbers))
        if missing or unlisted:
            raise ValueError(f"the listed parts must be exactly the parts uploaded: not uploaded {missing}, "
                             f"uploaded but not listed {unlisted}")
        parts = [received[n] for n in sorted(part_numbers)]
        if sum(p.stat().st_size for p in parts) > self.max_bytes:
            raise UploadTooLarge(f"upload is larger than the {self.max_bytes}-byte limit")
        dest = self.files_dir / upload.key
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        with open_private(partial) as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1024 * 1024)
        partial.rename(dest)
        self.end_upload(upload_id)
        return upload.key


async def _write(path: Path, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[int, str]:
    """Stream ``chunks`` to ``path``; returns (size, md5 hex). Raises UploadTooLarge past ``max_bytes``.

    The disk writes (and the open and close) run in a worker thread, a MiB at a time, so a slow disk never stalls
    the event loop that answers every other request."""
    size = 0
    digest = hashlib.md5(usedforsecurity=False)
    pending: list[bytes] = []
    out = await anyio.to_thread.run_sync(open_private, path)
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise UploadTooLarge(f"upload is larger than the {max_bytes}-byte limit")
            digest.update(chunk)
            pending.append(chunk)
            if sum(map(len, pending)) >= WRITE_BATCH:
                await anyio.to_thread.run_sync(out.write, b"".join(pending))
                pending.clear()
        if pending:
            await anyio.to_thread.run_sync(out.write, b"".join(pending))
    finally:
        await anyio.to_thread.run_sync(out.close)
    return size, digest.hexdigest()
