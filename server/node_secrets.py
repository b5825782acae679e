"""Where a node's two secrets live: the HMAC secret (upload tokens and webhook user ids, ``server/auth.py`` and
``server/signing.py``) and the webhook signing key (``server/signing.py``).

With a store of its own (SQLite) a server keeps them as files in its data directory, ``secret`` and
``webhook-ed25519.pem``, owner-only and made on first start, as it always has: one server, one directory.

In a fleet (a shared store) every node needs the same ones, or an upload token minted by one API node fails on
another and a webhook signed by one node fails against another node's JWKS. They live in the store instead: the
first node to start stores them (an insert that exactly one node wins), every node reads the stored ones, and none
writes them to its data directory. A node whose data directory already holds the files (a fleet set up by copying
them by hand) offers those, so the first node to start keeps the tokens it handed out and the receivers' cached
JWKS valid. Neither secret is ever served; in PostgreSQL they sit in a table of their own that only the database
role the nodes use can read.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from .jobs import JobStore
from .signing import new_signing_key

SECRET_FILE = "secret"
SIGNING_KEY_FILE = "webhook-ed25519.pem"


@runtime_checkable
class SecretKeeper(Protocol):
    """A shared store that keeps the fleet's secrets (``PostgresJobStore``)."""

    def shared_secret(self, name: str, candidate: str) -> str: ...


def node_secrets(store: JobStore, data_dir: Path) -> tuple[bytes, bytes]:
    """The HMAC secret and the webhook signing key's PEM this node uses (see the module docstring)."""
    if not store.shared:
        secret = _owner_only_file(data_dir / SECRET_FILE, _new_secret)
        return bytes.fromhex(secret.decode().strip()), _owner_only_file(data_dir / SIGNING_KEY_FILE, new_signing_key)
    if not isinstance(store, SecretKeeper):
        raise TypeError(f"{type(store).__name__} is shared but cannot keep the fleet's secrets")

    def shared(name: str, make: Callable[[], bytes]) -> bytes:
        path = data_dir / name
        offered = path.read_bytes() if path.is_file() else make()
        return store.shared_secret(name, offered.decode()).encode()

    return bytes.fromhex(shared(SECRET_FILE, _new_secret).decode().strip()), shared(SIGNING_KEY_FILE, new_signing_key)


def _new_secret() -> bytes:
    """32 random bytes as hex text (the ``secret`` file's format since the first release)."""
    return secrets.token_hex(32).encode()


def _owner_only_file(path: Path, make: Callable[[], bytes]) -> bytes:
    """The contents of ``path``, which is created (readable by its owner only) from ``make()`` when missing."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(make())
    return path.read_bytes()
