"""The node secret and the webhook signing key (``server/api/node_secrets.py``): owner-only files made on first start by
a server with a store of its own; given by the operator to a fleet's API nodes (the same files on each, so a token
minted by one node works on another and a webhook signed by one verifies against any node's JWKS), never made by
them; held by no worker node and kept out of the database, where every node and every backup could read them. The
owner ids jobs record are keyed by the node secret, so a reader of the database cannot test a key against them."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import httpx
import psycopg
import pytest
from server_fixtures import ThreadServer, free_port, verify_like_fals_docs

from server import cli, commands
from server.api.auth import Auth, key_id, legacy_key_id
from server.api.node_secrets import SECRET_FILE, SIGNING_KEY_FILE, SecretsError, load_secrets
from server.app import create_app
from server.config import Settings
from server.runtime.signing import new_signing_key
from server.store.jobs import SqliteJobStore
from server.store.postgres import PostgresJobStore, migrate

KEY, OTHER_KEY = "key-of-a-user", "key-of-another-user"
REQUESTS = "/queue/fal-ai/wan-vace-14b/requests"


def api_node(tmp_path: Path, store: str, secrets_dir: Path | None, name: str = "api") -> Settings:
    """An API node of a fleet on ``store`` (HTTP only: it needs no weights)."""
    return Settings(
        weights_dir=tmp_path / "no-weights",
        data_dir=tmp_path / name,
        port=free_port(),
        store=store,
        no_workers=True,
        api_keys=frozenset({KEY, OTHER_KEY}),
        secrets_dir=secrets_dir,
    )


def test_a_server_of_its_own_makes_them_as_owner_only_files(tmp_path: Path) -> None:
    first = load_secrets(tmp_path, shared_store=False)
    for name in (SECRET_FILE, SIGNING_KEY_FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    again = load_secrets(tmp_path, shared_store=False)  # a restart
    assert again.secret == first.secret and again.signer.jwks() == first.signer.jwks()


def test_a_fleet_api_node_without_them_refuses_to_start(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SecretsError, match="vace secrets DIR"):
        create_app(api_node(tmp_path, pg_url, None))
    assert not (tmp_path / "api" / SECRET_FILE).exists()  # nothing made: another node would have others
    assert commands.serve(api_node(tmp_path, pg_url, tmp_path / "empty")) == 1
    error = capsys.readouterr().err
    assert "needs the fleet's secrets" in error and "--secrets-dir" in error and "worker nodes need none" in error
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / SECRET_FILE).write_text("ab" * 8)  # 8 bytes: too short to key anything
    (folder / SIGNING_KEY_FILE).write_bytes(new_signing_key())
    with pytest.raises(SecretsError, match="at least 32 random bytes"):
        load_secrets(folder, shared_store=True)
    (folder / SECRET_FILE).write_text("ab" * 32)
    (folder / SIGNING_KEY_FILE).write_text("not a key")
    with pytest.raises(SecretsError, match="not an unencrypted ED25519 private key"):
        load_secrets(folder, shared_store=True)


def test_api_nodes_given_the_same_files_accept_each_others_tokens_and_signatures(tmp_path: Path) -> None:
    folder = tmp_path / "fleet-secrets"
    assert cli.main(["secrets", str(folder)]) == 0
    made = {name: (folder / name).read_bytes() for name in (SECRET_FILE, SIGNING_KEY_FILE)}
    assert all(stat.S_IMODE((folder / name).stat().st_mode) == 0o600 for name in made)
    assert cli.main(["secrets", str(folder)]) == 0  # run again: the files handed out are kept
    assert {name: (folder / name).read_bytes() for name in made} == made

    node_a, node_b = load_secrets(folder, shared_store=True), load_secrets(folder, shared_store=True)
    auth_a, auth_b = Auth(frozenset({KEY}), node_a.secret), Auth(frozenset({KEY}), node_b.secret)
    caller = auth_a.from_key(f"Key {KEY}")
    assert caller is not None and caller == auth_b.from_key(f"Key {KEY}")
    token = auth_a.issue_upload_token(caller, "http://a")["token"]
    assert auth_b.from_key_or_token(f"Bearer {token}") == caller
    body = b'{"status": "OK"}'
    headers = node_a.signer.headers("request-1", caller.key_id, body)
    assert verify_like_fals_docs(headers, body, node_b.signer.jwks())
    other = load_secrets(tmp_path / "another-server", shared_store=False)  # made on its own: a different fleet
    assert not verify_like_fals_docs(headers, body, other.signer.jwks())
    assert Auth(frozenset({KEY}), other.secret).from_key_or_token(f"Bearer {token}") is None


def database_text(url: str) -> str:
    """Every row of every table of the database, as a reader with the nodes' role sees them."""
    rows = []
    with psycopg.connect(url) as conn:
        tables = [
            t for (t,) in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        ]
        for table in tables:
            rows += [repr(row) for row in conn.execute(f'SELECT * FROM "{table}"')]  # our own table names
    return "\n".join(tables + rows)


def unkeyed_hashes(key: str) -> set[str]:
    """What a reader could compute from a guessed key without any secret."""
    data = key.encode()
    return {hashlib.new(name, data).hexdigest() for name in hashlib.algorithms_guaranteed if "shake" not in name}


def test_a_database_reader_finds_no_secrets_and_cannot_match_keys_to_jobs(pg_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "fleet-secrets"
    commands.make_secrets(folder)
    config = api_node(tmp_path, pg_url, folder).model_copy(update={"webhook_allow": ("127.0.0.1:9",)})
    with ThreadServer(config) as node:
        submitted = {}
        for key in (KEY, OTHER_KEY):
            answer = httpx.post(
                f"{node.url}/queue/fal-ai/wan-vace-14b/pose",
                params={"fal_webhook": "http://127.0.0.1:9/hook"},
                json={"prompt": "x", "video_url": "https://example.com/v.mp4"},
                headers={"authorization": f"Key {key}"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            submitted[key] = answer.json()["request_id"]
        token = httpx.post(
            f"{node.url}/storage/auth/token", headers={"authorization": f"Key {KEY}"}, timeout=30
        ).json()["token"]

    dump = database_text(pg_url)
    secret_hex = (folder / SECRET_FILE).read_text().strip()
    pem_body = "".join((folder / SIGNING_KEY_FILE).read_text().splitlines()[1:-1])
    secret = bytes.fromhex(secret_hex)
    for material in (secret_hex, secret_hex.upper(), pem_body, token.split(".")[1], KEY, OTHER_KEY):
        assert material not in dump
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('secrets')").fetchone() == (None,)
        owners = dict(conn.execute("SELECT id, owner FROM jobs").fetchall())
    for key, request_id in submitted.items():
        assert not unkeyed_hashes(key) & set(owners.values())
        assert owners[request_id] == key_id(key, secret)  # only the node secret maps a key to its jobs
        assert owners[request_id] != key_id(key, secret[::-1])


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_jobs_recorded_under_an_earlier_releases_unkeyed_hash_stay_their_keys(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A database of the release that kept secrets in PostgreSQL and recorded owners as a plain SHA-256: the first
    HTTP node of this release drops the secrets and renames its keys' jobs, whose owner checks keep working."""
    folder = tmp_path / "fleet-secrets"
    commands.make_secrets(folder)
    url = request.getfixturevalue("pg_url") if engine == "postgres" else None
    config = api_node(tmp_path, "", folder).model_copy(update={"store": url})
    if url is not None:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, to_version=6)
            conn.execute("INSERT INTO secrets (name, value, created_at) VALUES ('secret', %s, 0)", ("cd" * 32,))
    old = PostgresJobStore(url) if url is not None else SqliteJobStore(config.jobs_db)
    try:
        ids = {
            name: old.add(
                app="fal-ai/wan-vace-14b",
                task="pose",
                model="wan-vace-14b",
                input={"prompt": "x"},
                base_url="http://h",
                webhook_url=None,
                owner=legacy_key_id(key),
            ).id
            for name, key in (("mine", KEY), ("theirs", OTHER_KEY), ("gone", "a key no longer configured"))
        }
    finally:
        old.close()
    with ThreadServer(config) as node:

        def status(name: str, key: str) -> int:
            return httpx.get(
                f"{node.url}{REQUESTS}/{ids[name]}/status", headers={"authorization": f"Key {key}"}, timeout=30
            ).status_code

        assert (status("mine", KEY), status("theirs", OTHER_KEY)) == (202, 202)
        assert (status("mine", OTHER_KEY), status("theirs", KEY), status("gone", KEY)) == (404, 404, 404)
    store = PostgresJobStore(url) if url is not None else SqliteJobStore(config.jobs_db)
    try:
        secret = bytes.fromhex((folder / SECRET_FILE).read_text())
        assert store.get(ids["mine"]).owner == key_id(KEY, secret)  # type: ignore[union-attr]
        assert store.get(ids["gone"]).owner == legacy_key_id("a key no longer configured")  # type: ignore[union-attr]
    finally:
        store.close()
    if url is not None:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('secrets')").fetchone() == (None,)
