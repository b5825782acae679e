"""Files in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Cloudflare R2, ...): ``--files s3://bucket/prefix``.

The connection comes only from the standard AWS settings boto3 reads itself (``AWS_ENDPOINT_URL`` for a store that
is not AWS, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, profiles, instance roles): an operator
configures it the way every other S3 tool is configured, and we keep no endpoint flags of our own.

Objects under the prefix: ``files/<token>/<name>`` (served files) and ``uploads/<id>/upload.json`` plus
``uploads/<id>/part-NNNNN`` (uploads in progress). The markers and parts live in the bucket, not on a node, so any
API node takes any PUT or ``complete`` of an upload another node started.

Upload bytes stream through the API node into the bucket rather than to presigned PUT URLs: the server's size
limits, the guard's auth-before-body, the upload URLs' expiry and their binding to one key all still apply, and the
bucket needs no CORS and no public write. Each body (or part) is spooled to a temporary file in the node's data
directory while it is counted against the limit, then put with boto3 (retries, parallel parts for large files);
the parts of a multipart upload are separate objects, joined through the node at ``complete``.

Reading: ``GET /files/<key>`` answers a 307 redirect to a fresh presigned GET URL (or the public base URL), so the
``/files/`` URLs that uploads hand out stay valid however long the file is kept; a job's output URLs are presigned
(``--files-url-ttl-s``, at most SigV4's 7 days) or public-base URLs. Objects are stored with the type they are served
with (:func:`server.files.store.served_type`) and, unless passive media, an attachment disposition, and presigned URLs
ask for the same again; the bucket is another origin than the API, so even a file opened anyway runs nowhere near
the playground's API key. Jobs read their inputs (our ``/files/`` URLs, presigned or public URLs of our objects)
with boto3 into their work directory, never through a public round trip.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlsplit

import anyio
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from starlette.responses import RedirectResponse, Response

from pipelines.errors import FileTooLarge

from .store import (
    NAME,
    TOKEN,
    FileStore,
    file_headers,
    is_key,
    open_private,
    private_dir,
    served_type,
    url_path,
    write_stream,
)

if TYPE_CHECKING:  # the S3 API's shapes, from the boto3 stubs of the `dev` extra
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef, ObjectTypeDef

_DELETE_BATCH = 1000  # keys per DeleteObjects call, S3's maximum


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket/prefix``; the prefix is empty or ends with ``/``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _own_spool(root: Path) -> tuple[Path, int]:
    """A spool directory of this process's own under ``root`` and the descriptor locking it, after deleting the
    directories (and the loose files) that processes which have ended left there.

    Processes sharing a data directory (``vace serve --no-workers`` and ``vace worker`` on one host) share ``root``,
    so a new process cannot just empty it. Each holds an exclusive ``flock`` on its directory's lock file for as long
    as it runs, which the kernel drops however the process ends: a lock that can be taken marks a crashed process's
    bodies, never a live one's."""
    for lock in root.glob("*.lock"):
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:  # another starting process cleaned it up just now
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a running process's
        finally:
            os.close(fd)
        shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
        lock.unlink(missing_ok=True)
    for loose in root.iterdir():
        if loose.is_file() and loose.suffix != ".lock":
            loose.unlink(missing_ok=True)
    own = private_dir(root / secrets.token_hex(8))
    pending = own / "lock"  # locked before it is moved where other processes look for locks
    fd = os.open(pending, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    pending.rename(own.with_suffix(".lock"))
    return own, fd


def _copy_at_most(src: Any, out: BinaryIO, limit: int) -> int:
    """Copy from the stream ``src`` to ``out`` until it ends or ``limit`` bytes are copied; returns the count."""
    copied = 0
    while copied < limit and (chunk := src.read(min(1024**2, limit - copied))):
        out.write(chunk)
        copied += len(chunk)
    return copied


class S3FileStore(FileStore):
    """Files and uploads in one bucket under one prefix, shared by every node that names it."""

    def __init__(
        self, url: str, *, max_bytes: int, spool_dir: Path, url_ttl_s: int, public_url: str | None = None
    ) -> None:
        """``url_ttl_s``: how long presigned URLs live, within SigV4's seven days (``Settings.files_url_ttl_s`` checks
        the operator's setting)."""
        self.bucket, self.prefix = parse_s3_url(url)
        self.max_bytes = max_bytes
        self.url_ttl_s = url_ttl_s
        self.public_url = public_url.rstrip("/") if public_url else None
        self.spool_dir, self._spool_lock = _own_spool(private_dir(spool_dir))
        # SigV4 for presigned URLs (SigV2 ones are refused by most stores and cap nothing); standard retries ride
        # out a store that throttles or restarts.
        self.client = boto3.client("s3", config=Config(signature_version="s3v4", retries={"mode": "standard"}))
        self.client.head_bucket(Bucket=self.bucket)  # a wrong bucket or credentials fail at startup, not per job
        self._object_path = re.compile(rf"/{re.escape(quote(self.prefix))}files/({TOKEN})/({NAME})$")

    def _object(self, key: str) -> str:
        return f"{self.prefix}files/{key}"

    def _upload_object(self, upload_id: str, name: str = "") -> str:
        return f"{self.prefix}uploads/{upload_id}/{name}"

    def _link(self, key: str) -> str:
        """A URL the bucket serves ``key`` at: the public base URL's, else presigned for ``url_ttl_s``."""
        if self.public_url:
            return f"{self.public_url}/{quote(self._object(key))}"
        name = key.rpartition("/")[2]
        params = {"Bucket": self.bucket, "Key": self._object(key), "ResponseContentType": served_type(name)}
        disposition = file_headers(name).get("content-disposition")
        if disposition:
            params["ResponseContentDisposition"] = disposition
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.url_ttl_s)

    def _object_args(self, name: str) -> dict[str, str]:
        """How a file is stored: the type it is served with, and a download unless it is passive media."""
        args = {"ContentType": served_type(name)}
        disposition = file_headers(name).get("content-disposition")
        if disposition:
            args["ContentDisposition"] = disposition
        return args

    def output_url(self, key: str, base_url: str) -> str:
        return self._link(key)

    def key_of(self, ref: str) -> str | None:
        """Also presigned and public URLs of our objects (any host, as for ``/files/``: the token identifies it)."""
        found = super().key_of(ref)
        path = url_path(ref) if found is None else None
        match = self._object_path.search(path) if path is not None else None
        return f"{match[1]}/{match[2]}" if match and is_key(f"{match[1]}/{match[2]}") else found

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as exc:
            if _missing(exc):
                return False
            raise
        return True

    def response(self, key: str) -> Response | None:
        if not is_key(key) or not self._exists(key):
            return None
        return RedirectResponse(self._link(key), status_code=307)

    def adopt(self, src: Path, file_name: str) -> str:
        key = self.new_key(file_name)
        self.client.upload_file(
            str(src), self.bucket, self._object(key), ExtraArgs=self._object_args(key.rpartition("/")[2])
        )
        src.unlink()
        return key

    def delete(self, key: str) -> None:
        if is_key(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._object(key))

    def fetch(self, ref: str, workdir: Path, max_bytes: int) -> Path | None:
        """Our object, downloaded into ``workdir`` (which the job deletes when it ends) once its size, asked first,
        is within ``max_bytes``: an oversized input costs one request, not a download. The download itself stops
        past ``max_bytes`` too: a second PUT to the object's upload URL may replace it after the size was asked."""
        key = self.key_of(ref)
        if key is None:
            return None
        dest = workdir / key.replace("/", "-")
        try:
            size = self.client.head_object(Bucket=self.bucket, Key=self._object(key))["ContentLength"]
            if size > max_bytes:
                raise FileTooLarge(f"{key} is {size} bytes, over {max_bytes}")
            body = self.client.get_object(Bucket=self.bucket, Key=self._object(key))["Body"]
            with contextlib.closing(body), open_private(dest) as out:
                copied = _copy_at_most(body, out, max_bytes + 1)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        if copied > max_bytes:
            dest.unlink()
            raise FileTooLarge(f"{key} grew over {max_bytes} bytes while it was read")
        return dest

    @contextlib.asynccontextmanager
    async def _spooled(self, chunks: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[tuple[Path, int, str]]:
        """The body in a temporary file of the node, counted against ``max_bytes``: (path, size, md5 hex)."""
        path = self.spool_dir / secrets.token_hex(12)
        try:
            size, etag = await write_stream(path, chunks, max_bytes)
            yield path, size, etag
        finally:
            path.unlink(missing_ok=True)

    async def receive(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        async with self._spooled(chunks, self.max_bytes) as (path, size, _etag):
            await anyio.to_thread.run_sync(
                lambda: self.client.upload_file(
                    str(path), self.bucket, self._object(key), ExtraArgs=self._object_args(key.rpartition("/")[2])
                )
            )
        return size

    def _objects(self, prefix: str) -> Iterator[ObjectTypeDef]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _delete_all(self, names: list[str]) -> None:
        for start in range(0, len(names), _DELETE_BATCH):
            batch: list[ObjectIdentifierTypeDef] = [{"Key": name} for name in names[start : start + _DELETE_BATCH]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def sweep(self, cutoff: float, keep: set[str]) -> tuple[int, int]:
        files_prefix = f"{self.prefix}files/"
        old_files = [
            obj["Key"]
            for obj in self._objects(files_prefix)
            if obj["LastModified"].timestamp() < cutoff and obj["Key"][len(files_prefix) :] not in keep
        ]
        uploads: dict[str, bool] = {}  # upload id -> whether every piece of it is past the cutoff
        uploads_prefix = f"{self.prefix}uploads/"
        for obj in self._objects(uploads_prefix):
            upload_id = obj["Key"][len(uploads_prefix) :].partition("/")[0]
            uploads[upload_id] = uploads.get(upload_id, True) and obj["LastModified"].timestamp() < cutoff
        abandoned = [upload_id for upload_id, old in uploads.items() if old]
        self._delete_all(old_files)
        for upload_id in abandoned:
            self.end_upload(upload_id)
        return len(old_files), len(abandoned)

    def _write_marker(self, upload_id: str, marker: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._upload_object(upload_id, "upload.json"), Body=marker)

    def _read_marker(self, upload_id: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._upload_object(upload_id, "upload.json"))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return answer["Body"].read()

    def end_upload(self, upload_id: str) -> None:
        self._delete_all([obj["Key"] for obj in self._objects(self._upload_object(upload_id))])

    def _part_object(self, upload_id: str, part_number: int) -> str:
        return self._upload_object(upload_id, f"part-{part_number:05d}")

    def _part_sizes(self, upload_id: str) -> dict[int, int]:
        first = len(self._upload_object(upload_id, "part-"))
        return {
            int(obj["Key"][first:]): obj["Size"]
            for obj in self._objects(self._upload_object(upload_id, "part-"))
            if obj["Key"][first:].isdigit()
        }

    async def _put_part(self, upload_id: str, part_number: int, chunks: AsyncIterator[bytes], max_bytes: int) -> str:
        async with self._spooled(chunks, max_bytes) as (path, _size, etag):
            await anyio.to_thread.run_sync(
                self.client.upload_file, str(path), self.bucket, self._part_object(upload_id, part_number)
            )
        return etag

    def _delete_part(self, upload_id: str, part_number: int) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._part_object(upload_id, part_number))

    def _join(self, upload_id: str, part_numbers: list[int], key: str) -> None:
        joined = self.spool_dir / secrets.token_hex(12)
        try:
            with open_private(joined) as out:
                for n in part_numbers:  # appended in turn (download_fileobj writes at offsets from the start)
                    body = self.client.get_object(Bucket=self.bucket, Key=self._part_object(upload_id, n))["Body"]
                    shutil.copyfileobj(body, out, 1024 * 1024)
            self.client.upload_file(
                str(joined), self.bucket, self._object(key), ExtraArgs=self._object_args(key.rpartition("/")[2])
            )
        finally:
            joined.unlink(missing_ok=True)
