"""API keys, checked the way fal checks them (``Authorization: Key <key>``), and short-lived upload tokens.

Auth is off when no key is configured (the CLI only allows that on a loopback address). fal-client uploads in two
steps: it trades its key for a CDN token (``POST /storage/auth/token``) and then sends ``Authorization: Bearer
<token>`` to ``/files/upload``; those tokens are HMACs of their expiry time under a secret kept in the data
directory, so they stay valid across restarts and need no table.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from fastapi import HTTPException, Request

UPLOAD_TOKEN_TTL_S = 3600


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Key"})


def load_secret(path: Path) -> bytes:
    """The server's signing secret, created (readable by the owner only) on first start."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


class Auth:
    """The FastAPI dependencies that guard routes."""

    def __init__(self, api_keys: frozenset[str], secret: bytes) -> None:
        self.api_keys = api_keys
        self.secret = secret

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys)

    def _has_key(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "key":
            return False
        value = value.strip().encode()
        return any(hmac.compare_digest(value, key.encode()) for key in self.api_keys)

    def require_key(self, request: Request) -> None:
        """Dependency: a valid API key, when auth is on."""
        if self.enabled and not self._has_key(request.headers.get("authorization", "")):
            raise _unauthorized("Missing or invalid API key: send the header 'Authorization: Key <your key>'")

    def require_upload_token(self, request: Request) -> None:
        """Dependency for ``/files/upload``: an API key or an upload token from ``/storage/auth/token``."""
        if not self.enabled:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if self._has_key(header) or (scheme.lower() == "bearer" and self._valid_token(token.strip())):
            return
        raise _unauthorized("Missing or expired upload token: get one from POST /storage/auth/token")

    def _sign(self, expires: int) -> str:
        return hmac.new(self.secret, f"upload:{expires}".encode(), hashlib.sha256).hexdigest()

    def issue_upload_token(self, base_url: str) -> dict[str, str]:
        """The body of ``/storage/auth/token``, in fal's shape."""
        expires = int(time.time()) + UPLOAD_TOKEN_TTL_S
        return {
            "token": f"{expires}.{self._sign(expires)}",
            "token_type": "Bearer",
            "base_url": base_url,
            "expires_at": datetime.fromtimestamp(expires, timezone.utc).isoformat(),
        }

    def _valid_token(self, token: str) -> bool:
        expires, _, signature = token.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(signature, self._sign(int(expires)))
