"""The node's secrets (``server/node_secrets.py``): files in the data directory with a store of its own, the shared
store's in a fleet, so that an upload token minted by one node works on another and a webhook signed by one node
verifies against any node's JWKS."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import psycopg
import pytest

from server.auth import Auth, Caller, key_id
from server.jobs import SqliteJobStore
from server.node_secrets import SECRET_FILE, SIGNING_KEY_FILE, node_secrets
from server.pg_store import PostgresJobStore
from server.signing import WebhookSigner, new_signing_key
from server_fixtures import verify_like_fals_docs

KEY = "key-of-a-user"


def test_a_server_of_its_own_keeps_them_as_owner_only_files(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    try:
        first = node_secrets(store, tmp_path)
        for name in (SECRET_FILE, SIGNING_KEY_FILE):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
        assert node_secrets(store, tmp_path) == first  # the same after a restart
    finally:
        store.close()


def test_fleet_nodes_share_them_through_the_store(pg_url: str, tmp_path: Path) -> None:
    stores = [PostgresJobStore(pg_url) for _ in range(4)]
    try:
        found: list[tuple[bytes, bytes]] = []
        starts = [threading.Thread(target=lambda s=s, n=n: found.append(node_secrets(s, tmp_path / f"node-{n}")))
                  for n, s in enumerate(stores)]  # four nodes starting at once race to store theirs: one wins
        for thread in starts:
            thread.start()
        for thread in starts:
            thread.join()
        assert len(found) == 4 and len(set(found)) == 1
        assert not any((tmp_path / f"node-{n}" / SECRET_FILE).exists() for n in range(4))  # nothing on disk

        (secret_a, pem_a), (secret_b, pem_b) = found[0], found[1]
        node_a, node_b = Auth(frozenset({KEY}), secret_a), Auth(frozenset({KEY}), secret_b)
        token = node_a.issue_upload_token(Caller(key_id(KEY)), "http://a")["token"]
        assert node_b.from_key_or_token(f"Bearer {token}") == Caller(key_id(KEY))
        signer_a, signer_b = WebhookSigner(pem_a, secret_a), WebhookSigner(pem_b, secret_b)
        body = b'{"status": "OK"}'
        headers = signer_a.headers("request-1", key_id(KEY), body)
        assert verify_like_fals_docs(headers, body, signer_b.jwks()) and signer_a.jwks() == signer_b.jwks()
        assert not verify_like_fals_docs(headers, body, WebhookSigner(new_signing_key(), secret_a).jwks())
    finally:
        for store in stores:
            store.close()


def test_a_fleet_set_up_by_copying_the_files_keeps_them(pg_url: str, tmp_path: Path) -> None:
    copied = tmp_path / "old-node"
    copied.mkdir()
    (copied / SECRET_FILE).write_text("ab" * 32)
    (copied / SIGNING_KEY_FILE).write_bytes(pem := new_signing_key())
    store = PostgresJobStore(pg_url)
    try:
        assert node_secrets(store, copied) == (bytes.fromhex("ab" * 32), pem)
        assert node_secrets(store, tmp_path / "new-node") == (bytes.fromhex("ab" * 32), pem)
    finally:
        store.close()


def test_other_database_roles_cannot_read_them(pg_url: str, tmp_path: Path) -> None:
    store = PostgresJobStore(pg_url)
    try:
        node_secrets(store, tmp_path)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("DROP ROLE IF EXISTS snoop")
            admin.execute("CREATE ROLE snoop LOGIN")
        with psycopg.connect(pg_url.replace("//vace@", "//snoop@")) as snoop:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                snoop.execute("SELECT value FROM secrets")
    finally:
        store.close()
