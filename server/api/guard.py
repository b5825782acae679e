"""The checks every HTTP request passes before any route runs and before any of its body is read.

FastAPI reads and parses a JSON body before it resolves a route's dependencies, so a key check written as a
dependency comes too late: an unauthenticated client could make the server buffer a body of any size the limit
allows, on every route. This ASGI middleware decides from the request line and headers alone:

1. the ``Host`` header is one the server accepts (DNS rebinding; see :class:`HostPolicy`);
2. the caller is authenticated as the route requires (:data:`RULES`; everything not listed needs an API key, so a
   route added later is closed by default); on an upload URL, its upload id must be open (not expired, used up,
   or handed out to a key since removed);
3. the body fits the route's limit (JSON, upload bytes, or a ``complete`` call's part list): a declared
   ``Content-Length`` over it is refused at once, a chunked body is counted as the app reads it and cut off;
4. a JSON route's body is read as JSON whatever its ``Content-Type`` when the request carries an
   ``Authorization`` header (fal's own curl examples send ``-d`` bodies as a form). A browser cannot add that
   header to a cross-site request without a CORS preflight, so this opens no cross-site request forgery; without
   the header, a body that is not typed as JSON is refused here with a 415: a page on another site can send a
   form, ``text/plain`` or an untyped body to an auth-off server without a preflight, and only JSON, which needs
   one, drives the API. Checked here rather than left to FastAPI, which refuses such bodies only since 0.132.

Why not FastAPI's own ``max_body_size``: for a declared ``Content-Length`` over the limit, Starlette's limiter
replaces whatever the app answers with a plain-text ``Content Too Large``, so clients would lose fal's error shape
(``detail`` items with ``loc``, ``msg``, ``type``). Counting ``receive`` messages here keeps the shape and keeps the
limits next to the access rules they belong to.

The caller it found is left in ``scope["state"]["caller"]`` for the routes (``request.state.caller``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from enum import Enum

import anyio
from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import ANONYMOUS, Auth


class Body(Enum):
    JSON = "json"  # the server's JSON limit (``--max-body-bytes``)
    UPLOAD = "upload"  # file bytes: the upload limit (the file store also counts the parts of an upload together)
    PARTS = "parts"  # a multipart ``complete`` call's list of parts


class Access(Enum):
    OPEN = "open"  # anyone; a valid key still identifies its caller (``/ready`` shows it more)
    UPLOAD_URL = "upload_url"  # the random upload id in the path is the grant, as with a presigned URL
    UPLOAD_TOKEN = "upload_token"  # an API key or an upload token from /storage/auth/token
    KEY = "key"  # an API key


_READ = frozenset({"GET", "HEAD"})
_PUT = frozenset({"PUT"})
_POST = frozenset({"POST"})
RULES: list[tuple[frozenset[str], re.Pattern[str], Access, Body]] = [
    (
        _READ,
        re.compile(r"/(health|ready|metrics|openapi\.json|docs|docs/oauth2-redirect|redoc|playground/config)?"),
        Access.OPEN,
        Body.JSON,
    ),
    (_READ, re.compile(r"/static/.*"), Access.OPEN, Body.JSON),
    (_READ, re.compile(r"/\.well-known/jwks\.json"), Access.OPEN, Body.JSON),
    (_READ, re.compile(r"/files/[^/]+/[^/]+"), Access.OPEN, Body.JSON),
    (_PUT, re.compile(r"/storage/upload/(?P<upload_id>[^/]+)(/[^/]+)?"), Access.UPLOAD_URL, Body.UPLOAD),
    (_POST, re.compile(r"/storage/upload/(?P<upload_id>[^/]+)/complete"), Access.UPLOAD_URL, Body.PARTS),
    (_PUT, re.compile(r"/files/[^/]+/[^/]+/multipart/(?P<upload_id>[^/]+)/[^/]+"), Access.UPLOAD_URL, Body.UPLOAD),
    (_POST, re.compile(r"/files/[^/]+/[^/]+/multipart/(?P<upload_id>[^/]+)/complete"), Access.UPLOAD_URL, Body.PARTS),
    (_POST, re.compile(r"/files/upload"), Access.UPLOAD_TOKEN, Body.UPLOAD),
    (_POST, re.compile(r"/files/upload/multipart"), Access.UPLOAD_TOKEN, Body.JSON),
]


def rule_of(method: str, path: str) -> tuple[Access, Body, str | None]:
    """What a request must present, what its body is, and the upload id in its path when that is its grant."""
    for methods, pattern, access, body in RULES:
        match = pattern.fullmatch(path) if method in methods else None
        if match:
            return access, body, match.groupdict().get("upload_id")
    return Access.KEY, Body.JSON, None


class BodyTooLarge(HTTPException):
    """A body past its limit, in fal's error shape; an HTTPException, so FastAPI's body reader passes it on to
    the app's handlers instead of calling it a parse error."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, [{"loc": ["body"], "msg": f"request body is over the {limit}-byte limit", "type": "request_too_large"}]
        )


class HostPolicy:
    """Which ``Host`` headers the server answers; ``allowed=None`` answers any.

    A page on another site whose name an attacker re-points at 127.0.0.1 (DNS rebinding) reaches a loopback
    server with its own name in ``Host``; refusing unknown hosts stops it driving an auth-off server and keeps
    the URLs we build from ``Host`` on names the operator chose.
    """

    def __init__(self, allowed: Iterable[str] | None) -> None:
        self.allowed = None if allowed is None else frozenset(h.lower().strip("[]") for h in allowed)

    def allows(self, host_header: str | None) -> bool:
        if self.allowed is None:
            return True
        return host_header is not None and _hostname(host_header) in self.allowed


def _hostname(host_header: str) -> str:
    """``example.com:8000`` -> ``example.com``; ``[::1]:8000`` -> ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class RequestGuard:
    """ASGI middleware: host and credentials, checked before the app sees the request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: Auth,
        hosts: HostPolicy,
        upload_is_open: Callable[[str], bool],
        limits: dict[Body, int],
    ) -> None:
        self.app = app
        self.auth = auth
        self.hosts = hosts
        self.upload_is_open = upload_is_open
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self.hosts.allows(headers.get("host")):
            host = headers.get("host", "")
            message = (
                f"Host {host!r} is not accepted by this server: start it with --allowed-hosts "
                f"{_hostname(host) or 'NAME'} (or --public-url URL) to serve requests addressed to it"
            )
            await JSONResponse({"detail": message}, status_code=400)(scope, receive, send)
            return
        access, body, upload_id = rule_of(scope["method"], scope["path"])
        if upload_id is not None and not await anyio.to_thread.run_sync(self.upload_is_open, upload_id):
            await JSONResponse({"detail": "unknown, expired or finished upload"}, status_code=404)(scope, receive, send)
            return
        authorization = headers.get("authorization", "")
        if access is Access.UPLOAD_TOKEN:
            caller = self.auth.from_key_or_token(authorization)
        else:
            caller = self.auth.from_key(authorization)
        if caller is None and access in (Access.KEY, Access.UPLOAD_TOKEN):
            message = (
                "Missing or invalid API key or upload token: send 'Authorization: Key <your key>' or a "
                "token from POST /storage/auth/token"
                if access is Access.UPLOAD_TOKEN
                else "Missing or invalid API key: send the header 'Authorization: Key <your key>'"
            )
            await JSONResponse({"detail": message}, status_code=401, headers={"WWW-Authenticate": "Key"})(
                scope, receive, send
            )
            return
        scope.setdefault("state", {})["caller"] = caller or ANONYMOUS
        if body is not Body.UPLOAD and authorization and not _is_json(headers.get("content-type", "")):
            _set_header(scope, b"content-type", b"application/json")
        elif body is Body.JSON and _has_body(headers) and not _is_json(headers.get("content-type", "")):
            detail = [
                {
                    "loc": ["header", "content-type"],
                    "type": "unsupported_media_type",
                    "msg": "a JSON body needs 'Content-Type: application/json' (or an Authorization header)",
                }
            ]
            await JSONResponse({"detail": detail}, status_code=415)(scope, receive, send)
            return
        limit = self.limits[body]
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            exc = BodyTooLarge(limit)
            await JSONResponse({"detail": exc.detail}, status_code=exc.status_code)(scope, receive, send)
            return
        await self.app(scope, _counting(receive, limit), send)


def _has_body(headers: Headers) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("", "0")


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _set_header(scope: Scope, name: bytes, value: bytes) -> None:
    scope["headers"] = [(k, v) for k, v in scope["headers"] if k != name] + [(name, value)]


def _counting(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises :class:`BodyTooLarge` once the body read so far passes ``limit``."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return counted
