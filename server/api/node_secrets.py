"""Who holds the node secret and the webhook signing key, and where they come from.

The node secret keys the HMACs of ``server/api/auth.py`` and ``server/runtime/signing.py``: the owner ids that jobs and
uploads record for API keys, upload tokens, webhook user ids. The signing key signs webhooks. Both are needed only by
the nodes that answer HTTP, and they are kept from everything else:

- A server with a store of its own (SQLite, the zero-setup default) keeps them as owner-only files in its data
  directory, ``secret`` and ``webhook-ed25519.pem``, made on first start: one server, one directory.
- An API node of a fleet (a shared store) reads the same two files from ``--secrets-dir`` (default: its data
  directory). The operator makes them once (``vace secrets DIR``) and hands the same ones to every API node, as a
  Kubernetes Secret mounted there or a compose secret, so that an upload token minted by one node works on another
  and a webhook signed by one verifies against any node's JWKS. Such a node never makes them (nodes that each made
  their own would refuse each other's tokens): without them it refuses to start, saying what to do.
- A worker node (``vace worker``) holds neither: it authenticates nobody, signs nothing (its output URLs are the
  file store's: unguessable names, or URLs presigned with the bucket's own credentials) and delivers no webhooks
  (the API nodes do, woken by the store when a job's webhook falls due).
- The database holds neither. Every node, GPU workers included, connects with the role that reads its tables, so a
  secret stored there is every node's (and every backup's); earlier releases kept them in a table ``secrets``,
  which schema step 7 (``server/store/postgres.py``) drops.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..files.store import private_dir
from ..runtime.signing import WebhookSigner, new_signing_key

SECRET_FILE = "secret"
SIGNING_KEY_FILE = "webhook-ed25519.pem"
MIN_SECRET_BYTES = 32


class SecretsError(ValueError):
    """The secrets an API node needs are missing or unreadable; the message says what to do."""


@dataclass(frozen=True)
class NodeSecrets:
    """What an HTTP node signs and checks with."""

    secret: bytes
    """The HMAC key of owner ids, upload tokens and webhook user ids."""
    signer: WebhookSigner


def make_secrets(folder: Path) -> list[str]:
    """Write the missing ones of the two files into ``folder``, readable by their owner only; returns the names
    written (files already there are kept: replacing them would void every token and key handed out)."""
    private_dir(folder)
    makers: dict[str, Callable[[], bytes]] = {SECRET_FILE: _new_secret, SIGNING_KEY_FILE: new_signing_key}
    written = []
    for name, make in makers.items():
        if not (folder / name).is_file():
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(make())
            written.append(name)
    return written


def load_secrets(folder: Path, *, shared_store: bool) -> NodeSecrets:
    """The secrets of an HTTP node from ``folder``: made there first when the node has a store of its own, never
    made for a fleet's API node (see the module docstring)."""
    if not shared_store:
        make_secrets(folder)
    missing = [name for name in (SECRET_FILE, SIGNING_KEY_FILE) if not (folder / name).is_file()]
    if missing:
        raise SecretsError(
            f"an API node of a fleet (a shared --store) needs the fleet's secrets, and {folder} has no "
            f"{' and no '.join(missing)}: make them once with `vace secrets DIR`, give that folder to every API node "
            "(a Kubernetes Secret or compose secret mounted there) and start them with --secrets-dir DIR "
            "(VACE_SECRETS_DIR); worker nodes need none"
        )
    path = folder / SECRET_FILE
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretsError(
            f"{path} must hold at least {MIN_SECRET_BYTES} random bytes as hex (`vace secrets DIR` "
            "writes one; so does `openssl rand -hex 32`)"
        )
    path = folder / SIGNING_KEY_FILE
    try:
        return NodeSecrets(secret, WebhookSigner(path.read_bytes(), secret))
    except (ValueError, TypeError) as exc:
        raise SecretsError(
            f"{path} is not an unencrypted ED25519 private key in PEM ({exc}); `vace secrets DIR` "
            "writes one, so does `openssl genpkey -algorithm ed25519`"
        ) from None


def _new_secret() -> bytes:
    """32 random bytes as hex text (the ``secret`` file's format since the first release)."""
    return secrets.token_hex(MIN_SECRET_BYTES).encode()
