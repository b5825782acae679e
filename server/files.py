"""Where generated videos, frame zips and uploads live, and how they are named.

Every file gets its own directory named by a 192-bit random token (``files/<token>/<name>``), so its URL is
unguessable and the readable name still reaches the user's download. Uploads in progress live under ``uploads/``,
keyed by a second random id that is never shown as a file URL: holding the upload URL is what authorizes the PUT,
as with a presigned URL. URLs pointing at our own files are mapped back to disk (``local_path``) so a job reads its
inputs without an HTTP round trip to itself.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

_TOKEN = r"[A-Za-z0-9_-]{32}"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}"
_KEY_RE = re.compile(rf"({_TOKEN})/({_NAME})")
_URL_PATH_RE = re.compile(rf"/files/({_TOKEN})/({_NAME})$")


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


def content_type_of(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class FileStore:
    """Files served under ``/files/<key>``, where a key is ``<token>/<name>``."""

    def __init__(self, files_dir: Path, uploads_dir: Path, max_bytes: int) -> None:
        self.files_dir = files_dir
        self.uploads_dir = uploads_dir
        self.max_bytes = max_bytes
        files_dir.mkdir(parents=True, exist_ok=True)
        uploads_dir.mkdir(parents=True, exist_ok=True)

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
        dest.parent.mkdir(parents=True)
        shutil.move(src, dest)
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
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        try:
            size, _ = await _write(partial, chunks, self.max_bytes)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.rename(dest)
        return size

    # Pending uploads: a presigned-style id -> the key the file will get.

    def start_upload(self, key: str) -> str:
        upload_id = secrets.token_urlsafe(24)
        folder = self.uploads_dir / upload_id
        folder.mkdir(parents=True)
        (folder / "key").write_text(key)
        return upload_id

    def pending_key(self, upload_id: str) -> str | None:
        if not re.fullmatch(_TOKEN, upload_id):
            return None
        marker = self.uploads_dir / upload_id / "key"
        return marker.read_text() if marker.is_file() else None

    def end_upload(self, upload_id: str) -> None:
        shutil.rmtree(self.uploads_dir / upload_id, ignore_errors=True)

    async def receive_part(self, upload_id: str, part_number: int, chunks: AsyncIterator[bytes]) -> str:
        """Store one part of a multipart upload; returns its ETag (hex MD5, as S3-style clients expect)."""
        _size, etag = await _write(self.uploads_dir / upload_id / f"part-{part_number:05d}", chunks, self.max_bytes)
        return etag

    def complete_upload(self, upload_id: str, part_numbers: list[int]) -> str:
        """Join the parts, in the given order, into the upload's file; returns its key."""
        key = self.pending_key(upload_id)
        if key is None:
            raise KeyError(upload_id)
        parts = [self.uploads_dir / upload_id / f"part-{n:05d}" for n in part_numbers]
        missing = [n for n, p in zip(part_numbers, parts) if not p.is_file()]
        if not parts or missing:
            raise ValueError(f"missing parts: {missing or 'none uploaded'}")
        if sum(p.stat().st_size for p in parts) > self.max_bytes:
            raise UploadTooLarge(f"upload is larger than the {self.max_bytes}-byte limit")
        dest = self.files_dir / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1024 * 1024)
        partial.rename(dest)
        self.end_upload(upload_id)
        return key


async def _write(path: Path, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[int, str]:
    """Stream ``chunks`` to ``path``; returns (size, md5 hex). Raises UploadTooLarge past ``max_bytes``."""
    size = 0
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("wb") as out:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise UploadTooLarge(f"upload is larger than the {max_bytes}-byte limit")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()
