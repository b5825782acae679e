"""The one door through which every media input (video, mask, reference and first/last-frame images) comes in.

fal accepts local paths, ``file://``, ``http(s)://`` and ``data:`` URIs in any ``*_url`` field. Resolving them all
here gives every failure the same shape, ``InputError(field, ..., "file_download_error")``, which the server turns
into fal's 422 body and the CLI into one line, and puts the size and time limits in a single place.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, unquote_to_bytes, urlsplit
from urllib.request import url2pathname

import httpx
from PIL import Image, ImageOps

from .errors import InputError

DOWNLOAD_ERROR = "file_download_error"
IMAGE_ERROR = "image_load_error"

_LOCAL_RESOLVERS: list[Callable[[str], Path | None]] = []


def register_local_resolver(fn: Callable[[str], Path | None]) -> None:
    """Let ``fn`` map refs to files on this machine first (the server's own ``/files/...`` URLs), so they are
    read from disk instead of downloaded from ourselves. ``fn`` returns None for refs it does not own."""
    _LOCAL_RESOLVERS.append(fn)


def fetch_to_file(
    ref: str, field: str, workdir: Path, *, max_bytes: int = 2 * 1024**3, timeout_s: float = 120.0
) -> Path:
    """Return a local file holding the bytes ``ref`` points to.

    Local paths and ``file://`` URLs are returned in place (never copied, so callers must not delete them);
    downloads and ``data:`` URIs are written to a new file in ``workdir``. Every failure the caller can fix
    raises ``InputError(field, ..., "file_download_error")``.
    """
    for resolve in _LOCAL_RESOLVERS:
        resolved = resolve(ref)
        if resolved is not None:
            return _checked_local(resolved, ref, field, max_bytes)
    try:
        parts = urlsplit(ref)
    except ValueError:
        raise InputError(field, f"malformed URL: {_brief(ref)}", DOWNLOAD_ERROR) from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return _download(ref, field, workdir, max_bytes, timeout_s)
    if scheme == "data":
        return _decode_data_uri(ref, field, workdir, max_bytes)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InputError(field, f"file URL is not on this machine: {_brief(ref)}", DOWNLOAD_ERROR)
        return _checked_local(Path(url2pathname(parts.path)), ref, field, max_bytes)
    if scheme and len(scheme) > 1:  # one letter is a Windows drive, i.e. a plain path
        raise InputError(field, f"unsupported URL scheme {scheme!r}: {_brief(ref)}", DOWNLOAD_ERROR)
    return _checked_local(Path(ref).expanduser(), ref, field, max_bytes)


def load_image(ref: str, field: str, workdir: Path) -> Image.Image:
    """Fetch and decode an image, upright per its EXIF orientation.

    Returns RGBA only when the image really has transparent pixels (the caller then applies
    ``transparency_mode``), otherwise RGB, so downstream code handles exactly two modes.
    """
    path = fetch_to_file(ref, field, workdir)
    try:
        with Image.open(path) as opened:
            opened.load()
            img = ImageOps.exif_transpose(opened)
    except (OSError, ValueError, Image.DecompressionBombError):
        raise InputError(field, f"not a readable image: {_brief(ref)}", IMAGE_ERROR) from None
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            return rgba
    return img.convert("RGB")


def _brief(ref: str, limit: int = 100) -> str:
    """A short form of ``ref`` for messages: data URIs can be megabytes long."""
    if ref.startswith("data:"):
        return f"{ref.partition(',')[0]},... ({len(ref)} chars)"
    return ref if len(ref) <= limit else ref[: limit - 3] + "..."


def _checked_local(path: Path, ref: str, field: str, max_bytes: int) -> Path:
    if not path.is_file():
        raise InputError(field, f"file not found: {_brief(ref)}", DOWNLOAD_ERROR)
    _check_size(path.stat().st_size, ref, field, max_bytes)
    return path


def _check_size(size: int, ref: str, field: str, max_bytes: int) -> None:
    if size == 0:
        raise InputError(field, f"file is empty: {_brief(ref)}", DOWNLOAD_ERROR)
    if size > max_bytes:
        raise _too_large(ref, field, max_bytes)


def _too_large(ref: str, field: str, max_bytes: int) -> InputError:
    return InputError(field, f"file is larger than the {max_bytes}-byte limit: {_brief(ref)}", DOWNLOAD_ERROR)


def _new_file(workdir: Path, field: str, suffix: str) -> Path:
    """A fresh, uniquely named file in ``workdir``; the field name in it helps when reading a job's workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", field) + "-"
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=workdir)
    os.close(fd)
    return Path(name)


def _suffix(url_path: str, mime: str | None) -> str:
    """File suffix from the URL path, else from the MIME type; some decoders use it as a format hint."""
    suffix = PurePosixPath(unquote(url_path)).suffix.lower()
    if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix):
        return suffix
    if mime:
        return mimetypes.guess_extension(mime.split(";")[0].strip().lower()) or ""
    return ""


def _download(url: str, field: str, workdir: Path, max_bytes: int, timeout_s: float) -> Path:
    """Stream ``url`` to a file, enforcing ``max_bytes`` and an overall deadline (httpx's timeout is per read)."""
    deadline = time.monotonic() + timeout_s
    dest: Path | None = None
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout_s) as resp:
            if resp.status_code >= 400:
                raise InputError(field, f"download failed with HTTP {resp.status_code}: {_brief(url)}", DOWNLOAD_ERROR)
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(url, field, max_bytes)
            dest = _new_file(workdir, field, _suffix(resp.url.path, resp.headers.get("content-type")))
            size = 0
            with dest.open("wb") as out:
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise _too_large(url, field, max_bytes)
                    if time.monotonic() > deadline:
                        raise httpx.TimeoutException("deadline exceeded")
                    out.write(chunk)
        _check_size(size, url, field, max_bytes)
        return dest
    except InputError:
        _discard(dest)
        raise
    except httpx.TimeoutException:
        _discard(dest)
        raise InputError(field, f"download timed out after {timeout_s:g} s: {_brief(url)}", DOWNLOAD_ERROR) from None
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        _discard(dest)
        reason = str(exc)[:120] or type(exc).__name__
        raise InputError(field, f"download failed ({reason}): {_brief(url)}", DOWNLOAD_ERROR) from None


def _discard(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def _decode_data_uri(ref: str, field: str, workdir: Path, max_bytes: int) -> Path:
    """Decode ``data:<mime>[;base64],<payload>``; base64 padding and whitespace are forgiven, bad data is not."""
    header, comma, payload = ref[len("data:") :].partition(",")
    if not comma:
        raise InputError(field, f"malformed data URI: {_brief(ref)}", DOWNLOAD_ERROR)
    if header.lower().endswith(";base64"):
        payload = re.sub(r"\s+", "", payload)
        if len(payload) * 3 // 4 > max_bytes:
            raise _too_large(ref, field, max_bytes)
        try:
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        except binascii.Error:
            raise InputError(field, f"invalid base64 in data URI: {_brief(ref)}", DOWNLOAD_ERROR) from None
    else:
        data = unquote_to_bytes(payload)
    _check_size(len(data), ref, field, max_bytes)
    dest = _new_file(workdir, field, _suffix("", header.split(";")[0]))
    dest.write_bytes(data)
    return dest
