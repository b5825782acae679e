"""Where generated videos, frame zips and uploads live, and how they are named.

Every file gets its own key ``<token>/<name>`` under a 192-bit random token, so its URL is unguessable and the
readable name still reaches the user's download. Uploads in progress are keyed by a second random id that is never
shown as a file URL: holding the upload URL is what authorizes the PUT, as with a presigned URL, so it expires
(``UPLOAD_URL_TTL_S``) and records the key that started it. URLs pointing at our own files are mapped back to their
key (``FileStore.key_of``) so a job reads its inputs from the store without an HTTP round trip to itself.

Two stores share these rules: a directory (:class:`LocalFileStore`, the default) and an S3 bucket
(``server/files/s3.py``). Either way upload bytes pass through the API, so the size limits, the guard's
auth-before-body and the upload URLs' expiry apply to both.

Files served on the API's own origin could run anything a browser would run (HTML, SVG, XML, scripts) with the
playground's stored API key in reach. Only passive media keep their type (:func:`served_type`); everything else
is served as an ``application/octet-stream`` download, and every file response carries ``nosniff`` and a sandbox
CSP (:func:`file_headers`). Everything on disk is written owner-only (directories 0700, files 0600), whatever the
umask: prompts, webhook URLs and tokens are nobody else's business on a shared machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import mimetypes
import os
import re
import secrets
import shutil
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import anyio
from starlette.responses import FileResponse, Response

TOKEN = r"[A-Za-z0-9_-]{32}"
NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}"
_KEY_RE = re.compile(rf"({TOKEN})/({NAME})")
_URL_PATH_RE = re.compile(rf"/files/({TOKEN})/({NAME})$")
_PART_RE = re.compile(r"part-(\d{5})")
WRITE_BATCH = 1024**2  # bytes of an upload gathered before one write to disk
UPLOAD_URL_TTL_S = 3600
MAX_PARTS = 10_000
"""Parts of one multipart upload, numbered 1 to this (S3's limit): bounds what a ``complete`` call lists and what
each part's size check reads."""
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


def open_private(path: Path) -> BinaryIO:
    """Open ``path`` for writing bytes, created readable by its owner only."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


@dataclass(frozen=True)
class PendingUpload:
    """An upload URL handed out and not yet used up: the file key it fills, who started it, until when."""

    key: str
    owner: str | None
    expires_at: float


def is_key(key: str) -> bool:
    """Whether ``key`` is a well-formed file key (an upload still being written on disk is not a file)."""
    return bool(_KEY_RE.fullmatch(key)) and not key.endswith(".partial")


class FileStore(ABC):
    """Files served under ``/files/<key>``, where a key is ``<token>/<name>``, and the uploads filling them.

    This class holds the rules every store shares (names, keys, upload markers, the size limit of an upload and of
    its parts counted together, which parts make a complete upload); :class:`LocalFileStore` keeps the bytes in a
    directory, ``server.files.store.s3.S3FileStore`` in an S3 bucket. ``open_files`` in ``server/app.py`` picks one from
    ``--files``.
    """

    max_bytes: int

    def new_key(self, file_name: str | None, content_type: str | None = None) -> str:
        return f"{secrets.token_urlsafe(24)}/{safe_name(file_name, content_type)}"

    def url(self, key: str, base_url: str) -> str:
        """The file's URL on this server (``GET /files/<key>``): what upload flows hand out, valid for as long as
        the file is kept."""
        return f"{base_url.rstrip('/')}/files/{key}"

    def output_url(self, key: str, base_url: str) -> str:
        """The URL a job's result names for a file it made; here the same as :meth:`url`."""
        return self.url(key, base_url)

    def key_of(self, ref: str) -> str | None:
        """The key an http(s) URL to our own ``/files/...`` names (any host: the token is what identifies it)."""
        path = url_path(ref)
        match = _URL_PATH_RE.search(path) if path is not None else None
        return f"{match[1]}/{match[2]}" if match and is_key(f"{match[1]}/{match[2]}") else None

    @abstractmethod
    def response(self, key: str) -> Response | None:
        """What ``GET /files/<key>`` answers, or None when there is no such file."""

    @abstractmethod
    def adopt(self, src: Path, file_name: str) -> str:
        """Move a finished file (a job's output) into the store; returns its key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete a file (gone already is fine)."""

    @abstractmethod
    def fetch(self, ref: str, workdir: Path, max_bytes: int) -> Path | None:
        """A local file with the bytes of our own file that ``ref`` names (a job's input; see
        ``JobContext.local_files``), or None when ``ref`` is not one of ours or the file is gone. A store that copies
        the file raises ``pipelines.errors.FileTooLarge`` for one over ``max_bytes`` before copying any of it."""

    @abstractmethod
    async def receive(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Store an upload body as the file ``key``; it appears only once complete. Returns its size."""

    @abstractmethod
    def sweep(self, cutoff: float, keep: set[str]) -> tuple[int, int]:
        """Delete files last written before ``cutoff`` (but those in ``keep``) and uploads whose every piece is
        that old; returns (files, uploads) deleted."""

    # Pending uploads: a presigned-style id -> the key the file will get, its owner and expiry, kept as a marker
    # next to the upload's parts, so any node sharing the store takes a PUT of an upload another node started.

    @abstractmethod
    def _write_marker(self, upload_id: str, marker: bytes) -> None: ...

    @abstractmethod
    def _read_marker(self, upload_id: str) -> bytes | None: ...

    @abstractmethod
    def end_upload(self, upload_id: str) -> None:
        """Forget an upload: its marker and any parts."""

    @abstractmethod
    def _part_sizes(self, upload_id: str) -> dict[int, int]:
        """Sizes of the parts received so far, by number (parts still being written are not among them)."""

    @abstractmethod
    async def _put_part(self, upload_id: str, part_number: int, chunks: AsyncIterator[bytes], max_bytes: int) -> str:
        """Store one part (replacing one of the same number); returns its ETag. Raises UploadTooLarge past
        ``max_bytes``, keeping nothing of it."""

    @abstractmethod
    def _delete_part(self, upload_id: str, part_number: int) -> None: ...

    @abstractmethod
    def _join(self, upload_id: str, part_numbers: list[int], key: str) -> None:
        """Write the file ``key`` from the listed parts, in that order."""

    def start_upload(self, key: str, owner: str | None = None) -> str:
        upload_id = secrets.token_urlsafe(24)
        marker = {"key": key, "owner": owner, "expires_at": time.time() + UPLOAD_URL_TTL_S}
        self._write_marker(upload_id, json.dumps(marker).encode())
        return upload_id

    def pending(self, upload_id: str) -> PendingUpload | None:
        """The upload behind ``upload_id``, or None when the id is malformed, unknown, used up or expired."""
        if not re.fullmatch(TOKEN, upload_id):
            return None
        try:
            marker = json.loads(self._read_marker(upload_id) or b"")
        except ValueError:
            return None
        upload = PendingUpload(marker["key"], marker["owner"], marker["expires_at"])
        return upload if upload.expires_at > time.time() else None

    def _parts_size(self, upload_id: str, leaving_out: int | None) -> int:
        """Bytes of the parts received so far, but part ``leaving_out``."""
        return sum(size for n, size in self._part_sizes(upload_id).items() if n != leaving_out)

    async def receive_part(self, upload_id: str, part_number: int, chunks: AsyncIterator[bytes]) -> str:
        """Store one part of a multipart upload; returns its ETag (hex MD5, as S3-style clients expect).

        The parts of one upload count together against the size limit: a part may use what the others left, a
        part that does not fit is deleted, and re-sending a part number replaces that part.
        """
        others = await anyio.to_thread.run_sync(self._parts_size, upload_id, part_number)
        etag = await self._put_part(upload_id, part_number, chunks, self.max_bytes - others)
        # Parts sent at the same time each saw room for themselves: check the sum once they are stored.
        if await anyio.to_thread.run_sync(self._parts_size, upload_id, None) > self.max_bytes:
            await anyio.to_thread.run_sync(self._delete_part, upload_id, part_number)
            raise UploadTooLarge(f"the parts of this upload add up to more than the {self.max_bytes}-byte limit")
        return etag

    def complete_upload(self, upload_id: str, part_numbers: list[int]) -> str:
        """Join the parts into the upload's file, in part-number order; returns its key.

        ``part_numbers`` must name every part received, each once: a client that lost track of a part (or sends
        one twice) gets an error instead of a file that is silently not what it uploaded. Every step is linear in the
        parts (n log n for the one sort), so a long list costs little more than reading it.
        """
        upload = self.pending(upload_id)
        if upload is None:
            raise KeyError(upload_id)
        received = self._part_sizes(upload_id)
        if not part_numbers:
            raise ValueError("no parts listed")
        listed = set(part_numbers)
        if len(listed) < len(part_numbers):
            repeated = [n for n, count in Counter(part_numbers).items() if count > 1]
            raise ValueError(f"part numbers listed more than once: {_some(repeated)}")
        missing = listed - received.keys()
        unlisted = received.keys() - listed
        if missing or unlisted:
            raise ValueError(
                f"the listed parts must be exactly the parts uploaded: not uploaded {_some(missing)}, "
                f"uploaded but not listed {_some(unlisted)}"
            )
        if sum(received.values()) > self.max_bytes:
            raise UploadTooLarge(f"upload is larger than the {self.max_bytes}-byte limit")
        self._join(upload_id, sorted(part_numbers), upload.key)
        self.end_upload(upload_id)
        return upload.key


class LocalFileStore(FileStore):
    """Files in a directory (``files/<token>/<name>``, uploads in progress under ``uploads/<id>/``), served by the
    API itself; several nodes share one by mounting it."""

    def __init__(self, files_dir: Path, uploads_dir: Path, max_bytes: int) -> None:
        self.files_dir = files_dir
        self.uploads_dir = uploads_dir
        self.max_bytes = max_bytes
        private_dir(files_dir)
        private_dir(uploads_dir)

    def path(self, key: str) -> Path | None:
        """The file behind ``key``, or None when the key is malformed or the file does not exist."""
        if not is_key(key):
            return None
        path = self.files_dir / key
        return path if path.is_file() else None

    def response(self, key: str) -> Response | None:
        path = self.path(key)
        name = key.rpartition("/")[2]
        return None if path is None else FileResponse(path, media_type=served_type(name), headers=file_headers(name))

    def adopt(self, src: Path, file_name: str) -> str:
        key = self.new_key(file_name)
        dest = self.files_dir / key
        dest.parent.mkdir(mode=0o700)
        shutil.move(src, dest)
        dest.chmod(0o600)
        return key

    def delete(self, key: str) -> None:
        if is_key(key):
            (self.files_dir / key).unlink(missing_ok=True)

    def fetch(self, ref: str, workdir: Path, max_bytes: int) -> Path | None:
        """Our own file itself, read in place: with no copy to spare, its size is left to the caller's check."""
        key = self.key_of(ref)
        return self.path(key) if key is not None else None

    async def receive(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        dest = self.files_dir / key
        await anyio.to_thread.run_sync(lambda: dest.parent.mkdir(mode=0o700, exist_ok=True))
        partial = _partial(dest)
        try:
            size, _ = await write_stream(partial, chunks, self.max_bytes)
            await anyio.to_thread.run_sync(_publish, partial, dest)
        finally:
            partial.unlink(missing_ok=True)
        return size

    def sweep(self, cutoff: float, keep: set[str]) -> tuple[int, int]:
        files = uploads = 0
        for folder in _children(self.files_dir):
            emptied = False
            for path in _children(folder):
                if f"{folder.name}/{path.name}" not in keep and _older(path, cutoff):
                    path.unlink(missing_ok=True)
                    files, emptied = files + 1, True
            if emptied or _older(folder, cutoff):  # not a fresh folder whose file is about to be moved in
                with contextlib.suppress(OSError):  # still holds a file
                    folder.rmdir()
        for folder in _children(self.uploads_dir):  # initiated or multipart uploads never completed
            if _older(folder, cutoff) and all(_older(p, cutoff) for p in _children(folder)):
                shutil.rmtree(folder, ignore_errors=True)
                uploads += 1
        return files, uploads

    def _write_marker(self, upload_id: str, marker: bytes) -> None:
        folder = self.uploads_dir / upload_id
        folder.mkdir(mode=0o700)
        with open_private(folder / "upload.json") as out:
            out.write(marker)

    def _read_marker(self, upload_id: str) -> bytes | None:
        try:
            return (self.uploads_dir / upload_id / "upload.json").read_bytes()
        except OSError:
            return None

    def end_upload(self, upload_id: str) -> None:
        shutil.rmtree(self.uploads_dir / upload_id, ignore_errors=True)

    def _part_path(self, upload_id: str, part_number: int) -> Path:
        return self.uploads_dir / upload_id / f"part-{part_number:05d}"

    def _part_sizes(self, upload_id: str) -> dict[int, int]:
        found = {}
        for path in _children(self.uploads_dir / upload_id):
            match = _PART_RE.fullmatch(path.name)
            if match:
                with contextlib.suppress(FileNotFoundError):  # replaced or deleted just now
                    found[int(match[1])] = path.stat().st_size
        return found

    async def _put_part(self, upload_id: str, part_number: int, chunks: AsyncIterator[bytes], max_bytes: int) -> str:
        final = self._part_path(upload_id, part_number)
        partial = _partial(final)
        try:
            _size, etag = await write_stream(partial, chunks, max_bytes)
            await anyio.to_thread.run_sync(partial.rename, final)
        finally:
            partial.unlink(missing_ok=True)
        return etag

    def _delete_part(self, upload_id: str, part_number: int) -> None:
        self._part_path(upload_id, part_number).unlink(missing_ok=True)

    def _join(self, upload_id: str, part_numbers: list[int], key: str) -> None:
        dest = self.files_dir / key
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        partial = _partial(dest)
        try:
            with open_private(partial) as out:
                for n in part_numbers:
                    with self._part_path(upload_id, n).open("rb") as src:
                        shutil.copyfileobj(src, out, 1024 * 1024)
            _publish(partial, dest)
        finally:
            partial.unlink(missing_ok=True)


def _partial(dest: Path) -> Path:
    """Where a file (or part) is written before it is published: a name of its own per writer (two PUTs racing on
    one upload URL never write into one file), never served (``.partial``)."""
    return dest.with_name(f"{dest.name}.{secrets.token_hex(4)}.partial")


def _publish(partial: Path, dest: Path) -> None:
    """Give the finished ``partial`` its served name, never over a file already there (``FileExistsError``): a
    file never changes once served, so a job that checked its size reads those bytes, whatever a second PUT to the
    same upload URL sends."""
    os.link(partial, dest)


def _some(numbers: Iterable[int], shown: int = 10) -> str:
    """The smallest few of ``numbers`` for an error message, which stays short however many a client sent."""
    smallest = heapq.nsmallest(shown + 1, numbers)
    return str(smallest[:shown])[:-1] + (", ...]" if len(smallest) > shown else "]")


def url_path(ref: str) -> str | None:
    """The path of an http(s) URL, or None for anything else."""
    try:
        parts = urlsplit(ref)
    except ValueError:
        return None
    return parts.path if parts.scheme in ("http", "https") else None


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


async def write_stream(path: Path, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[int, str]:
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
