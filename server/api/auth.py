"""API keys, checked the way fal checks them (``Authorization: Key <key>``), the callers they identify, and
short-lived upload tokens bound to the key that minted them.

Auth is off when no key is configured (the CLI only allows that on a loopback address). A caller is known by its
key's ``key_id``, an HMAC of the key under the node secret (``server/api/node_secrets.py``): jobs and uploads record it,
so one key cannot read or cancel another key's jobs, and everything a key handed out (upload tokens, upload URLs)
stops working when the key is removed from the server. Keyed rather than a plain hash because the ids sit in the
job store, which in a fleet every node reads (GPU workers included) and backups copy: without the secret, which only
API nodes hold, a reader of the store can neither test a guessed key against them nor tell that two deployments
share a key. Releases before this one recorded a plain SHA-256 (:func:`legacy_key_id`); an HTTP node renames the
rows of its configured keys on start (``Auth.renamed_owners``). Admin keys (``--admin-keys``) are API keys that may
see every job.

fal-client uploads in two steps: it trades its key for a CDN token (``POST /storage/auth/token``) and then sends
``Authorization: Bearer <token>`` to ``/files/upload``. A token is ``<expiry>.<HMAC(secret, expiry, key_id)>``
under the node secret, so it survives restarts, works on every API node of a fleet, needs no table, and names no
key: checking it tries the configured keys.

Every parser here takes any header value, of any length or alphabet, and answers "not authenticated" rather than
raising: bad credentials are a 401, never a 500.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi.security import APIKeyHeader

UPLOAD_TOKEN_TTL_S = 3600
API_KEY_HEADER = APIKeyHeader(
    name="Authorization",
    auto_error=False,
    scheme_name="FalKey",
    description="`Key <your key>`, when the server has API keys",
)
"""The key as an OpenAPI security scheme; the request guard (``server/api/guard.py``) enforces it before any body."""
_TOKEN_RE = re.compile(r"([0-9]{1,12})\.([0-9a-f]{64})", re.ASCII)


def key_id(key: str, secret: bytes) -> str:
    """The stable name of an API key that jobs and uploads record as their owner, keyed by the node secret (see
    the module docstring)."""
    return hmac.new(secret, b"api-key:" + key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def legacy_key_id(key: str) -> str:
    """The owner id earlier releases recorded: an unkeyed SHA-256 of the key, kept only to rename those rows."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who sent a request: ``key_id`` is None when no valid key came with it."""

    key_id: str | None = None
    admin: bool = False


ANONYMOUS = Caller()


class Auth:
    """The server's keys: who a request's credentials name, and what that caller may see."""

    def __init__(self, api_keys: frozenset[str], secret: bytes, admin_keys: frozenset[str] = frozenset()) -> None:
        self.secret = secret
        self._ids = frozenset(key_id(k, secret) for k in api_keys | admin_keys)
        self._admin_ids = frozenset(key_id(k, secret) for k in admin_keys)
        self.renamed_owners = {legacy_key_id(k): key_id(k, secret) for k in api_keys | admin_keys}
        """The configured keys' owner ids as earlier releases recorded them -> as recorded now."""

    @property
    def enabled(self) -> bool:
        return bool(self._ids)

    def _caller(self, kid: str) -> Caller:
        return Caller(kid, admin=kid in self._admin_ids)

    def from_key(self, authorization: str) -> Caller | None:
        """The caller an ``Authorization: Key <key>`` header names, or None (auth off: everyone, as admin)."""
        if not self.enabled:
            return Caller(admin=True)
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "key":
            return None
        kid = key_id(value.strip(), self.secret)
        return self._caller(kid) if kid in self._ids else None

    def from_key_or_token(self, authorization: str) -> Caller | None:
        """The caller of ``/files/upload``: an API key or an upload token from ``/storage/auth/token``."""
        caller = self.from_key(authorization)
        if caller is not None:
            return caller
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        match = _TOKEN_RE.fullmatch(token.strip())
        if match is None or int(match[1]) < time.time():
            return None
        for kid in self._ids:
            if hmac.compare_digest(match[2], self._sign(int(match[1]), kid)):
                return self._caller(kid)
        return None

    def is_active(self, owner: str | None) -> bool:
        """Whether what ``owner`` handed out still works: its key is still configured (or auth is off)."""
        return not self.enabled or owner in self._ids

    def can_see(self, caller: Caller, owner: str | None) -> bool:
        """Whether ``caller`` may read or cancel a job of ``owner`` (jobs made with auth off have no owner)."""
        return not self.enabled or caller.admin or owner is None or caller.key_id == owner

    def _sign(self, expires: int, kid: str) -> str:
        return hmac.new(self.secret, f"upload:{expires}:{kid}".encode(), hashlib.sha256).hexdigest()

    def issue_upload_token(self, caller: Caller, base_url: str) -> dict[str, str]:
        """The body of ``/storage/auth/token``, in fal's shape, bound to ``caller``'s key."""
        expires = int(time.time()) + UPLOAD_TOKEN_TTL_S
        return {
            "token": f"{expires}.{self._sign(expires, caller.key_id or '')}",
            "token_type": "Bearer",
            "base_url": base_url,
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
        }
