"""Webhook signatures the way fal makes them, so a receiver written for fal verifies ours by changing only the
JWKS URL.

fal signs each delivery with ED25519 over four lines joined by ``\\n``: the request id, the user id, the Unix
timestamp (seconds) and the hex SHA-256 of the raw body; the signature goes in ``X-Fal-Webhook-Signature`` as hex,
the other three in ``X-Fal-Webhook-Request-Id``, ``X-Fal-Webhook-User-Id`` and ``X-Fal-Webhook-Timestamp``;
receivers fetch the public keys as a JWKS document (``kty: OKP``, ``crv: Ed25519``, ``x`` base64url) and refuse
timestamps more than five minutes off. Ours: the key pair is made on first start and kept (owner-only) in the data
directory, or given to a fleet's API nodes by the operator (``server/api/node_secrets.py``); the public key is served
at ``/.well-known/jwks.json``. The user id is a keyed hash of the submitting API key's id: stable per key, and no
clue to the key itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The bytes fal's signature covers."""
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()


def new_signing_key() -> bytes:
    """A new ED25519 private key, as unencrypted PKCS#8 PEM (what ``WebhookSigner`` takes)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class WebhookSigner:
    """The server's webhook key pair: signs deliveries and publishes the public half."""

    def __init__(self, key_pem: bytes, secret: bytes) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the webhook signing key is not an ED25519 private key")
        self._key = key
        self._secret = secret
        self._public = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.kid = hashlib.sha256(self._public).hexdigest()[:16]

    def jwks(self) -> dict[str, Any]:
        """The JWKS document of ``/.well-known/jwks.json``."""
        x = base64.urlsafe_b64encode(self._public).rstrip(b"=").decode()
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}

    def user_id(self, owner: str | None) -> str:
        """The ``X-Fal-Webhook-User-Id`` of a job submitted with the key ``owner`` (None: auth off)."""
        return hmac.new(self._secret, f"webhook-user:{owner or ''}".encode(), hashlib.sha256).hexdigest()[:32]

    def headers(self, request_id: str, owner: str | None, body: bytes, now: float | None = None) -> dict[str, str]:
        """The four signature headers of one delivery of ``body``."""
        timestamp = str(int(time.time() if now is None else now))
        user_id = self.user_id(owner)
        signature = self._key.sign(signed_message(request_id, user_id, timestamp, body)).hex()
        return {
            "x-fal-webhook-request-id": request_id,
            "x-fal-webhook-user-id": user_id,
            "x-fal-webhook-timestamp": timestamp,
            "x-fal-webhook-signature": signature,
        }
