"""The one door through which every media input (video, mask, reference and first/last-frame images) comes in.

fal accepts local paths, ``file://``, ``http(s)://`` and ``data:`` URIs in any ``*_url`` field. Resolving them all
here gives every failure the same shape, ``InputError(field, ..., "file_download_error")``, which the server turns
into fal's 422 body and the CLI into one line, and puts the size and time limits in a single place.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import mimetypes
import os
import re
import socket
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit
from urllib.request import url2pathname

import httpx
from PIL import Image, ImageOps

from .answers import IDENTITY, AnswerTooLarge, read_answer
from .context import JobContext, allows
from .errors import Field, FileTooLarge, InputError

DOWNLOAD_ERROR = "file_download_error"
IMAGE_ERROR = "image_load_error"


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is an ordinary internet address (not private, loopback, link-local incl. cloud metadata,
    multicast, reserved, unspecified, shared/CGNAT, ...); IPv4-mapped/compatible IPv6 is judged as its IPv4."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _public(ip.ipv4_mapped)
        if ip.sixtofour is not None and not _public(ip.sixtofour):
            return False
        if ip.teredo is not None:
            return False
        if int(ip) >> 32 == 0:  # deprecated IPv4-compatible ::a.b.c.d, and :: / ::1
            return False
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_private
    )


def vetted_address(url: str, field: Field, allow: tuple[str, ...]) -> tuple[str, str, int]:
    """Resolve ``url``'s host once and check every address (public, or in the allow-list ``allow``); returns
    ``(host, address to connect to, port)``, so the caller connects to exactly the address that was checked."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise InputError(field, f"only http and https URLs can be downloaded: {_brief(url)}", DOWNLOAD_ERROR)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise InputError(field, f"malformed URL: {_brief(url)}", DOWNLOAD_ERROR) from None
    if not host:
        raise InputError(field, f"URL has no host: {_brief(url)}", DOWNLOAD_ERROR)
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        raise InputError(field, f"cannot resolve host {host!r}: {_brief(url)}", DOWNLOAD_ERROR) from None
    addresses = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not (_public(ip) or allows(allow, host.lower(), ip, port)):
            raise InputError(
                field, f"refusing to download from a non-public address ({ip}): {_brief(url)}", DOWNLOAD_ERROR
            )
        addresses.append(str(ip))
    if not addresses:
        raise InputError(field, f"cannot resolve host {host!r}: {_brief(url)}", DOWNLOAD_ERROR)
    return host, addresses[0], port


def pinned_request(
    client: httpx.Client | httpx.AsyncClient, method: str, url: str, vetted: tuple[str, str, int], **kwargs: Any
) -> httpx.Request:
    """A request for ``url`` that connects to the address :func:`vetted_address` checked, not to whatever a second
    DNS answer says, while the Host header and the TLS server name stay the URL's own host. It asks for the answer
    as stored (``Accept-Encoding: identity``), never compressed (:mod:`pipelines.answers`)."""
    host, address, _port = vetted
    target = httpx.URL(url).copy_with(host=address)
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    extensions = {"sni_hostname": host} if urlsplit(url).scheme.lower() == "https" else {}
    headers = {**IDENTITY, **kwargs.pop("headers", {}), "host": netloc}
    return client.build_request(method, target, headers=headers, extensions=extensions, **kwargs)


def check_ref_scheme(ref: str, field: Field, ctx: JobContext) -> None:
    """Refuse refs that would make a server read its own disk: with ``ctx.local_paths`` off, only http(s) URLs
    (ours included, which are then read from the file store) and data URIs are inputs."""
    if not ctx.local_paths and url_scheme(ref) not in ("http", "https", "data"):
        raise InputError(
            field,
            "only http(s) URLs and data URIs are accepted; upload local files first "
            "(POST /storage/upload/initiate, or fal_client.upload_file)",
            DOWNLOAD_ERROR,
        )


def url_scheme(url: str) -> str:
    """``url``'s scheme in lower case ("" for a plain path or a URL too malformed to split)."""
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return ""


def fetch_to_file(
    ref: str,
    field: Field,
    workdir: Path,
    ctx: JobContext,
    *,
    max_bytes: int | None = None,
    timeout_s: float | None = None,
) -> Path:
    """Return a local file holding the bytes ``ref`` points to.

    Local paths and ``file://`` URLs (when ``ctx`` permits them) are returned in place (never copied, so callers
    must not delete them); downloads and ``data:`` URIs are written to a new file in ``workdir``. Every failure the
    caller can fix raises ``InputError(field, ..., "file_download_error")``. Limits default to ``ctx.limits``;
    downloads go to public addresses only (or ones in ``ctx.fetch_allow``), checked on every redirect.
    """
    limits = ctx.limits
    max_bytes = limits.max_download_bytes if max_bytes is None else max_bytes
    timeout_s = limits.download_timeout_s if timeout_s is None else timeout_s
    own = own_file(ref, field, workdir, ctx, max_bytes)
    if own is not None:
        return own
    check_ref_scheme(ref, field, ctx)
    try:
        parts = urlsplit(ref)
    except ValueError:
        raise InputError(field, f"malformed URL: {_brief(ref)}", DOWNLOAD_ERROR) from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return _download(ref, field, workdir, max_bytes, timeout_s, ctx)
    if scheme == "data":
        return _decode_data_uri(ref, field, workdir, min(max_bytes, limits.max_data_uri_bytes))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InputError(field, f"file URL is not on this machine: {_brief(ref)}", DOWNLOAD_ERROR)
        return _checked_local(Path(url2pathname(parts.path)), ref, field, max_bytes)
    if scheme and len(scheme) > 1:  # one letter is a Windows drive, i.e. a plain path
        raise InputError(field, f"unsupported URL scheme {scheme!r}: {_brief(ref)}", DOWNLOAD_ERROR)
    return _checked_local(Path(ref).expanduser(), ref, field, max_bytes)


def own_file(ref: str, field: Field, workdir: Path, ctx: JobContext, max_bytes: int) -> Path | None:
    """The local file holding ``ref`` when it names one of the server's own files (``ctx.local_files``), within
    ``max_bytes``; None for any other ref."""
    try:
        resolved = ctx.local_files(ref, workdir, max_bytes) if ctx.local_files is not None else None
    except FileTooLarge:
        raise _too_large(ref, field, max_bytes) from None
    return _checked_local(resolved, ref, field, max_bytes) if resolved is not None else None


def load_image(ref: str, field: Field, workdir: Path, ctx: JobContext) -> Image.Image:
    """Fetch and decode an image, upright per its EXIF orientation.

    Returns RGBA only when the image really has transparent pixels (the caller then applies
    ``transparency_mode``), otherwise RGB, so downstream code handles exactly two modes.
    """
    path = fetch_to_file(ref, field, workdir, ctx)
    max_pixels = ctx.limits.max_image_pixels
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > max_pixels:  # checked from the header, before decoding
                raise InputError(
                    field, f"image is {width}x{height}, over the {max_pixels}-pixel limit", "image_too_large"
                )
            opened.load()
            img = ImageOps.exif_transpose(opened)
    except InputError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError):
        raise InputError(field, f"not a readable image: {_brief(ref)}", IMAGE_ERROR) from None
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        # PIL's stubs type getextrema() for images of any band count; one band gives (min, max).
        if rgba.getchannel("A").getextrema()[0] < 255:  # type: ignore[operator]
            return rgba
    return img.convert("RGB")


def _brief(ref: str, limit: int = 100) -> str:
    """A short form of ``ref`` for messages: data URIs can be megabytes long."""
    if ref.startswith("data:"):
        return f"{ref.partition(',')[0]},... ({len(ref)} chars)"
    return ref if len(ref) <= limit else ref[: limit - 3] + "..."


def _checked_local(path: Path, ref: str, field: Field, max_bytes: int) -> Path:
    if not path.is_file():
        raise InputError(field, f"file not found: {_brief(ref)}", DOWNLOAD_ERROR)
    _check_size(path.stat().st_size, ref, field, max_bytes)
    return path


def _check_size(size: int, ref: str, field: Field, max_bytes: int) -> None:
    if size == 0:
        raise InputError(field, f"file is empty: {_brief(ref)}", DOWNLOAD_ERROR)
    if size > max_bytes:
        raise _too_large(ref, field, max_bytes)


def _too_large(ref: str, field: Field, max_bytes: int) -> InputError:
    return InputError(field, f"file is larger than the {max_bytes}-byte limit: {_brief(ref)}", DOWNLOAD_ERROR)


def _new_file(workdir: Path, field: Field, suffix: str) -> Path:
    """A fresh, uniquely named file in ``workdir``; the field name in it helps when reading a job's workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    name = field if isinstance(field, str) else "-".join(map(str, field))
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", name) + "-"
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


def _download(url: str, field: Field, workdir: Path, max_bytes: int, timeout_s: float, ctx: JobContext) -> Path:
    """Stream ``url`` to a file, enforcing ``max_bytes`` on the bytes as they inflate (a compressed answer is undone
    piece by piece: :func:`~pipelines.answers.read_answer`) and an overall deadline (httpx's timeout is per read).

    Redirects are followed here, a bounded number of times, and every hop's host is resolved once, checked, and
    connected to by that checked address (the Host header and TLS name stay the original host), so a DNS answer
    that changes between check and connect cannot reach a private address.
    """
    deadline = time.monotonic() + timeout_s
    dest: Path | None = None
    original = url
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
            for _hop in range(ctx.limits.max_redirects + 1):
                request = pinned_request(client, "GET", url, vetted_address(url, field, ctx.fetch_allow))
                resp = client.send(request, stream=True)
                try:
                    if resp.is_redirect:
                        location = resp.headers.get("location", "")
                        url = urljoin(url, location)
                        continue
                    if resp.status_code >= 400:
                        raise InputError(
                            field, f"download failed with HTTP {resp.status_code}: {_brief(original)}", DOWNLOAD_ERROR
                        )
                    declared = resp.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise _too_large(original, field, max_bytes)
                    dest = _new_file(workdir, field, _suffix(urlsplit(url).path, resp.headers.get("content-type")))
                    with dest.open("wb") as out:
                        for piece in read_answer(resp, max_bytes, deadline):
                            out.write(piece)
                finally:
                    resp.close()
                _check_size(dest.stat().st_size, original, field, max_bytes)
                return dest
            raise InputError(field, f"too many redirects: {_brief(original)}", DOWNLOAD_ERROR)
    except InputError:
        _discard(dest)
        raise
    except AnswerTooLarge:
        _discard(dest)
        raise _too_large(original, field, max_bytes) from None
    except httpx.TimeoutException:
        _discard(dest)
        raise InputError(
            field, f"download timed out after {timeout_s:g} s: {_brief(original)}", DOWNLOAD_ERROR
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        _discard(dest)
        reason = str(exc)[:120] or type(exc).__name__
        raise InputError(field, f"download failed ({reason}): {_brief(original)}", DOWNLOAD_ERROR) from None


def _discard(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def _decode_data_uri(ref: str, field: Field, workdir: Path, max_bytes: int) -> Path:
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
